//! `cargo xtask perf` and `cargo xtask budget`: the driver's costs as instruction and byte counts,
//! and the budgets they must stay within.
//!
//! The measurements come from `benches/workload.rs` (fixed, seeded workloads), built with the
//! `callgrind` profile (release code generation, no LTO, line tables):
//! - **instructions** ([`SCENARIOS`]): the workload runs under callgrind, which collects only inside
//!   one driver entry point (`--toggle-collect`); [`crate::callgrind`] then counts the instructions
//!   of the driver's own code, fltsim's functions excluded, per operation (and, for scenarios with
//!   one dump per operation, the largest single one);
//! - **bytes** ([`NATIVE`]): the workload runs natively and prints fltsim's per-tag pool accounting;
//! - the size of `target/package/iotally.sys` (from `cargo xtask package`).
//!
//! Every figure is a count, never a time, so the budgets ([`BUDGETS`]) hold on any machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One workload run under callgrind.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The figure name prefix.
    pub name: &'static str,
    /// What it measures, for the report.
    pub what: &'static str,
    /// The workload's arguments.
    pub args: &'static [&'static str],
    /// The function collected (the driver's callback, or the workload's marker).
    pub entry: &'static str,
    /// The number of measured operations.
    pub ops: u64,
    /// Whether the workload dumps after every operation (so the largest one is known).
    pub per_op: bool,
}

/// The callgrind scenarios.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "read",
        what: "tracked read (pre-read), 64 open files",
        args: &["read", "64", "20000"],
        entry: "iotally::filter::operations::pre_read",
        ops: 20_000,
        per_op: false,
    },
    Scenario {
        name: "write",
        what: "tracked write (pre-write), 64 open files",
        args: &["write", "64", "20000"],
        entry: "iotally::filter::operations::pre_write",
        ops: 20_000,
        per_op: false,
    },
    Scenario {
        name: "reopen",
        what: "open of a file whose stream is open (post-create, shared lock)",
        args: &["reopen", "64", "2000"],
        entry: "iotally::filter::operations::post_create",
        ops: 2_000,
        per_op: false,
    },
    Scenario {
        name: "driver-evict-1k",
        what: "new-file open into a full driver table of 1,000 (post-create)",
        args: &["driver-evict", "1000", "200"],
        entry: "iotally::filter::operations::post_create",
        ops: 200,
        per_op: true,
    },
    Scenario {
        name: "table-evict-1k",
        what: "new-file open into a full table of 1,000 (Table::record_open)",
        args: &["table-evict", "1000", "200"],
        entry: "workload::measured_open",
        ops: 200,
        per_op: true,
    },
    Scenario {
        name: "table-evict-1m",
        what: "new-file open into a full table of 1,000,000 (Table::record_open)",
        args: &["table-evict", "1000000", "200"],
        entry: "workload::measured_open",
        ops: 200,
        per_op: true,
    },
];

/// The workloads run natively, for pool accounting and sizes.
pub const NATIVE: [&[&str]; 5] = [
    &["table-memory", "1000"],
    &["table-memory", "1000000"],
    &["driver-memory", "1000"],
    &["driver-memory", "1000000"],
    &["sizes"],
];

/// Figures by name (`read.own-per-op`, `table-memory.full.paged-per-entry@1000000`, ...).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures(pub BTreeMap<String, f64>);

impl Figures {
    /// Adds the `figure <name> <value>` lines of a workload's output; names get `@<suffix>` if given.
    ///
    /// # Errors
    /// A figure line whose value is not a number.
    pub fn add_output(&mut self, output: &str, suffix: Option<&str>) -> Result<(), String> {
        for line in output.lines() {
            let Some(rest) = line.strip_prefix("figure ") else {
                continue;
            };
            let (name, value) = rest
                .split_once(' ')
                .ok_or_else(|| format!("bad figure line {line:?}"))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("bad figure value in {line:?}"))?;
            let name = match suffix {
                Some(suffix) => format!("{name}@{suffix}"),
                None => name.to_owned(),
            };
            self.0.insert(name, value);
        }
        Ok(())
    }

    /// The figure `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The largest of the figures named.
    fn max_of(&self, names: &[&str]) -> Option<f64> {
        names
            .iter()
            .map(|name| self.get(name))
            .try_fold(f64::MIN, |max, value| value.map(|v| max.max(v)))
    }
}

/// What one scenario's callgrind run measured: the driver's own instructions per operation.
///
/// # Errors
/// `per_op` costs were expected but there are not `ops` of them.
pub fn scenario_figures(
    scenario: &Scenario,
    per_op_costs: &[u64],
    figures: &mut Figures,
) -> Result<(), String> {
    if per_op_costs.is_empty() {
        return Err(format!("{}: no measurement", scenario.name));
    }
    if scenario.per_op && per_op_costs.len() as u64 != scenario.ops {
        return Err(format!(
            "{}: {} per-operation dumps, expected {}",
            scenario.name,
            per_op_costs.len(),
            scenario.ops
        ));
    }
    let total: u64 = per_op_costs.iter().sum();
    #[allow(clippy::cast_precision_loss)] // instruction counts far below 2^52
    let mean = total as f64 / scenario.ops as f64;
    figures
        .0
        .insert(format!("{}.own-per-op", scenario.name), mean);
    if scenario.per_op {
        let max = per_op_costs.iter().copied().max().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        figures
            .0
            .insert(format!("{}.own-max", scenario.name), max as f64);
    }
    Ok(())
}

/// A budget: a figure (computed from others) and its limit.
pub struct Budget {
    /// What is bounded.
    pub what: &'static str,
    /// The largest value allowed.
    pub limit: f64,
    /// The value measured, if the figures it needs are there.
    pub value: fn(&Figures) -> Option<f64>,
}

/// The budgets (issue 12, "Performance at scale").
pub const BUDGETS: [Budget; 7] = [
    Budget {
        what: "driver-own instructions per tracked read",
        limit: 150.0,
        value: |f| f.get("read.own-per-op"),
    },
    Budget {
        what: "driver-own instructions per tracked write",
        limit: 150.0,
        value: |f| f.get("write.own-per-op"),
    },
    Budget {
        what: "paged bytes per entry, names excluded (1K and 1M: table, driver)",
        limit: 96.0,
        value: |f| {
            f.max_of(&[
                "table-memory.full.paged-per-entry@1000",
                "table-memory.limit.paged-per-entry@1000",
                "table-memory.full.paged-per-entry@1000000",
                "table-memory.limit.paged-per-entry@1000000",
                "driver-memory.paged-per-entry@1000",
                "driver-memory.paged-per-entry@1000000",
            ])
        },
    },
    Budget {
        what: "nonpaged bytes per entry",
        limit: 0.0,
        value: |f| {
            f.max_of(&[
                "table-memory.full.nonpaged-per-entry@1000000",
                "table-memory.limit.nonpaged-per-entry@1000000",
                "driver-memory.nonpaged-per-entry@1000",
                "driver-memory.nonpaged-per-entry@1000000",
            ])
        },
    },
    Budget {
        what: "largest paged allocation (bytes)",
        limit: 1_048_576.0,
        value: |f| {
            f.max_of(&[
                "table-memory.largest-paged@1000000",
                "driver-memory.largest-paged@1000",
                "driver-memory.largest-paged@1000000",
            ])
        },
    },
    Budget {
        what: "iotally.sys (bytes)",
        limit: 65_536.0,
        value: |f| f.get("image.bytes"),
    },
    Budget {
        what: "worst new-file open into a full table, 1M / 1K (instructions)",
        limit: 4.0,
        value: |f| Some(f.get("table-evict-1m.own-max")? / f.get("table-evict-1k.own-max")?),
    },
];

/// The report: every figure, then every budget with its verdict; and whether all budgets hold.
#[must_use]
pub fn report(figures: &Figures) -> (String, bool) {
    let mut text = String::from("figures:\n");
    for (name, value) in &figures.0 {
        let _ = writeln!(text, "  {name:<56} {value:>14.2}");
    }
    text.push_str("budgets:\n");
    let mut all_hold = true;
    for budget in &BUDGETS {
        let (verdict, shown) = match (budget.value)(figures) {
            Some(value) if value <= budget.limit => ("ok  ", format!("{value:.2}")),
            Some(value) => {
                all_hold = false;
                ("OVER", format!("{value:.2}"))
            }
            None => {
                all_hold = false;
                ("MISSING", "-".to_owned())
            }
        };
        let _ = writeln!(
            text,
            "  {verdict} {:<72} {shown:>10} <= {}",
            budget.what, budget.limit
        );
    }
    (text, all_hold)
}

#[cfg(test)]
mod tests {
    use super::{BUDGETS, Figures, SCENARIOS, report, scenario_figures};

    #[test]
    fn figure_lines_are_read_and_suffixed() {
        let mut figures = Figures::default();
        figures
            .add_output("noise\nfigure a.b 12.5\nfigure c 3\n", Some("1000"))
            .unwrap();
        assert_eq!(figures.get("a.b@1000"), Some(12.5));
        assert_eq!(figures.get("c@1000"), Some(3.0));
        assert!(figures.add_output("figure x y\n", None).is_err());
    }

    #[test]
    fn per_operation_dumps_give_mean_and_max() {
        let scenario = SCENARIOS.iter().find(|s| s.per_op).unwrap();
        let mut figures = Figures::default();
        let mut costs = vec![100; usize::try_from(scenario.ops).unwrap()];
        costs[3] = 500;
        scenario_figures(scenario, &costs, &mut figures).unwrap();
        assert_eq!(
            figures.get(&format!("{}.own-max", scenario.name)),
            Some(500.0)
        );
        assert!(scenario_figures(scenario, &costs[1..], &mut figures).is_err());
    }

    #[test]
    fn a_budget_over_or_missing_fails_the_report() {
        let mut figures = Figures::default();
        let (_, holds) = report(&figures);
        assert!(!holds, "missing figures fail");
        figures.0.insert("read.own-per-op".into(), 151.0);
        let (text, _) = report(&figures);
        assert!(text.contains("OVER"), "{text}");
        assert_eq!(BUDGETS.len(), 7);
    }
}
