//! What a person reads: tables with humanized sizes and local times, and the `OpenMetrics` text.

use std::fmt::Write as _;

use bytesize::ByteSize;
use chrono::{DateTime, Local};
use comfy_table::{CellAlignment, Table, presets};

use crate::client::{Files, Instance};

/// 100 ns intervals between 1601-01-01 (Windows system time) and 1970-01-01.
const EPOCH_DIFFERENCE_100NS: i64 = 116_444_736_000_000_000;

/// Bytes with a binary unit (`2.6 MiB`).
#[must_use]
pub fn size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

/// A Windows system time as local time (`2026-12-02 18:41:19`); `-` for 0.
#[must_use]
pub fn local_time(system_time: i64) -> String {
    if system_time <= 0 {
        return "-".into();
    }
    let since_unix = system_time - EPOCH_DIFFERENCE_100NS;
    let seconds = since_unix.div_euclid(10_000_000);
    let nanos = u32::try_from(since_unix.rem_euclid(10_000_000) * 100).unwrap_or(0);
    DateTime::from_timestamp(seconds, nanos).map_or_else(
        || "-".into(),
        |t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// How long before `now` `then` was, humanized (`12 s ago`, `3 min ago`).
#[must_use]
pub fn ago(now: i64, then: i64) -> String {
    if then <= 0 {
        return "-".into();
    }
    let seconds = (now - then).max(0) / 10_000_000;
    match seconds {
        0 => "just now".into(),
        1..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

fn table(header: &[&str], right_from: usize) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).force_no_tty();
    table.set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        if i >= right_from {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// A table's text, without the trailing blanks of its last column.
fn text(table: &Table) -> String {
    let mut out = String::new();
    for line in table.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A volume's label: its drive letter and device name.
fn volume_label(instance: &Instance) -> String {
    match &instance.drive {
        Some(drive) => format!("{drive} {}", instance.volume),
        None => instance.volume.clone(),
    }
}

/// `instances`: one row per instance, then every statistic of each by name.
#[must_use]
pub fn instances(instances: &[Instance]) -> String {
    let mut t = table(
        &[
            "volume", "fs", "files", "max", "opens", "reads", "writes", "read", "written",
        ],
        2,
    );
    for i in instances {
        t.add_row(vec![
            volume_label(i),
            i.file_system.clone(),
            i.entries.to_string(),
            i.max_entries.to_string(),
            i.totals.opens.to_string(),
            i.totals.reads.to_string(),
            i.totals.writes.to_string(),
            size(i.totals.bytes_read),
            size(i.totals.bytes_written),
        ]);
    }
    let mut out = text(&t);
    for i in instances {
        let stats: Vec<String> = i
            .stats
            .iter()
            .map(|s| format!("{} {}", s.name.replace('_', " "), s.value))
            .collect();
        let _ = writeln!(out, "{}: {}", volume_label(i), stats.join(", "));
    }
    if instances.is_empty() {
        out = "iotally is attached to no volume\n".into();
    }
    out
}

/// `name` without the volume's device name (`\src\a.rs`), or whole if it is on another volume.
fn relative<'a>(name: &'a str, volume: &str) -> &'a str {
    name.get(..volume.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(volume))
        .map_or(name, |_| &name[volume.len()..])
}

/// `top` and `dump`: one row per file, names relative to `volume`.
#[must_use]
pub fn files(files: &Files, volume: &str) -> String {
    let mut t = table(
        &[
            "file",
            "opens",
            "reads",
            "writes",
            "read",
            "written",
            "last seen",
        ],
        1,
    );
    for f in &files.files {
        t.add_row(vec![
            relative(&f.name, volume).to_owned(),
            f.opens.to_string(),
            f.reads.to_string(),
            f.writes.to_string(),
            size(f.bytes_read),
            size(f.bytes_written),
            ago(files.system_time, f.last_seen),
        ]);
    }
    format!(
        "{volume}: {} of {} files tallied\n{}",
        files.files.len(),
        files.total,
        text(&t)
    )
}

/// `file`: every field of each match.
#[must_use]
pub fn file_details(files: &Files) -> String {
    if files.files.is_empty() {
        return "no tallied file has that name\n".into();
    }
    let mut out = String::new();
    for f in &files.files {
        let rows: [(&str, String); 9] = [
            ("file", f.name.clone()),
            ("file id", f.file_id.clone()),
            ("opens", f.opens.to_string()),
            ("reads", f.reads.to_string()),
            ("writes", f.writes.to_string()),
            (
                "read",
                format!("{} ({} bytes)", size(f.bytes_read), f.bytes_read),
            ),
            (
                "written",
                format!("{} ({} bytes)", size(f.bytes_written), f.bytes_written),
            ),
            ("first seen", local_time(f.first_seen)),
            (
                "last seen",
                format!(
                    "{} ({})",
                    local_time(f.last_seen),
                    ago(files.system_time, f.last_seen)
                ),
            ),
        ];
        for (label, value) in rows {
            let _ = writeln!(out, "{label:>10}  {value}");
        }
        out.push('\n');
    }
    if files.total as usize > files.files.len() {
        let _ = writeln!(
            out,
            "({} matches in all; the driver returns the first {})",
            files.total,
            files.files.len()
        );
    }
    out
}

/// The text format `metrics` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsFormat {
    /// `OpenMetrics` 1.0 (`application/openmetrics-text`): counter families without `_total`, their
    /// samples with it, and `# EOF` at the end.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 that textfile collectors parse (counters named with
    /// `_total` in `# TYPE` too, no `# EOF`).
    Prometheus,
}

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// One metric family: its samples, one per instance.
struct Family<'a> {
    name: String,
    kind: &'static str,
    help: String,
    samples: Vec<(&'a Instance, u64)>,
}

/// `metrics`: per instance, the table's size and sums (gauges) and every statistic (counters,
/// named `iotally_<stat name>`), labelled with the volume, drive and file system.
#[must_use]
pub fn metrics(instances: &[Instance], format: MetricsFormat) -> String {
    let gauge = |name: &str, help: &str, value: fn(&Instance) -> u64| Family {
        name: format!("iotally_{name}"),
        kind: "gauge",
        help: help.into(),
        samples: instances.iter().map(|i| (i, value(i))).collect(),
    };
    let mut families = vec![
        gauge("files", "Files in the instance's table.", |i| i.entries),
        gauge(
            "max_files",
            "The table's bound on files (MaxEntriesPerInstance).",
            |i| i.max_entries,
        ),
        gauge(
            "tallied_opens",
            "Opens of the files now in the table.",
            |i| i.totals.opens,
        ),
        gauge(
            "tallied_reads",
            "Reads of the files now in the table.",
            |i| i.totals.reads,
        ),
        gauge(
            "tallied_writes",
            "Writes of the files now in the table.",
            |i| i.totals.writes,
        ),
        gauge(
            "tallied_read_bytes",
            "Bytes requested by reads of the files now in the table.",
            |i| i.totals.bytes_read,
        ),
        gauge(
            "tallied_written_bytes",
            "Bytes requested by writes of the files now in the table.",
            |i| i.totals.bytes_written,
        ),
    ];
    let mut stat_names: Vec<(String, String)> = Vec::new();
    for i in instances {
        for s in &i.stats {
            if !stat_names.iter().any(|(n, _)| *n == s.name) {
                stat_names.push((s.name.clone(), s.description.clone()));
            }
        }
    }
    for (name, description) in stat_names {
        families.push(Family {
            name: format!("iotally_{name}"),
            kind: "counter",
            help: if description.is_empty() {
                format!("The driver's statistic {name}.")
            } else {
                format!("{}{}.", description[..1].to_uppercase(), &description[1..])
            },
            samples: instances
                .iter()
                .filter_map(|i| {
                    i.stats
                        .iter()
                        .find(|s| s.name == name)
                        .map(|s| (i, s.value))
                })
                .collect(),
        });
    }
    let mut out = String::new();
    for family in families {
        let sample_name = if family.kind == "counter" {
            format!("{}_total", family.name)
        } else {
            family.name.clone()
        };
        let typed = match format {
            MetricsFormat::OpenMetrics => &family.name,
            MetricsFormat::Prometheus => &sample_name,
        };
        let _ = writeln!(out, "# TYPE {typed} {}", family.kind);
        let _ = writeln!(out, "# HELP {typed} {}", label(&family.help));
        for (i, value) in family.samples {
            let _ = writeln!(
                out,
                "{sample_name}{{volume=\"{}\",drive=\"{}\",fs=\"{}\"}} {value}",
                label(&i.volume),
                label(i.drive.as_deref().unwrap_or("")),
                label(&i.file_system)
            );
        }
    }
    if format == MetricsFormat::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// One frame of `watch`: the instances with per-second rates since the previous frame.
#[must_use]
pub fn watch_frame(
    now: i64,
    current: &[Instance],
    previous: Option<(i64, &[Instance])>,
    top: Option<(&Files, &str)>,
) -> String {
    let mut t = table(
        &[
            "volume",
            "files",
            "opens/s",
            "reads/s",
            "writes/s",
            "read/s",
            "written/s",
        ],
        1,
    );
    for i in current {
        let before = previous.and_then(|(at, list)| {
            list.iter()
                .find(|p| p.volume == i.volume)
                .map(|p| (at, p.totals))
        });
        let rates = before.map(|(at, b)| crate::rate::totals(at, &b, now, &i.totals));
        let show = |value: Option<f64>| value.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        let show_bytes = |value: Option<f64>| {
            value.map_or_else(
                || "-".into(),
                |v| {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // v >= 0
                    let bytes = v as u64;
                    format!("{}/s", size(bytes))
                },
            )
        };
        t.add_row(vec![
            volume_label(i),
            i.entries.to_string(),
            show(rates.map(|r| r.opens)),
            show(rates.map(|r| r.reads)),
            show(rates.map(|r| r.writes)),
            show_bytes(rates.map(|r| r.bytes_read)),
            show_bytes(rates.map(|r| r.bytes_written)),
        ]);
    }
    let mut out = format!("iotally at {}\n{}", local_time(now), text(&t));
    if let Some((files, volume)) = top {
        out.push('\n');
        out.push_str(&self::files(files, volume));
    }
    out
}
