//! Reading callgrind profiles (valgrind's "Callgrind Format Specification") and counting the
//! instructions spent in a driver's own code, excluding the simulator's.
//!
//! A profile lists, per function, its own cost lines and its calls (`calls=` followed by the
//! callee's inclusive cost for those calls). [`Profile::parse`] keeps, per function, its name, its
//! file and its own instruction count (`Ir`), and the call graph. [`Profile::own_cost`] then sums
//! the own cost of every function reachable from an entry point without passing through an
//! excluded function (the simulator's): the code that ran on the driver's behalf, whatever was
//! inlined into what. If a function is reached both that way and from an excluded function, its
//! cost cannot be split, and the count is refused; run callgrind with `--separate-callers` so
//! that such shared helpers (`memcpy`, allocator shims) appear once per caller.

use std::collections::{BTreeSet, HashMap};

/// One function of a profile (one caller context of it, with `--separate-callers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The demangled name, with callgrind's `'caller` suffixes if contexts are separated.
    pub name: String,
    /// The source file callgrind names for it (`fl=`).
    pub file: String,
    /// Instructions executed in the function itself (inlined code included).
    pub own: u64,
}

/// A parsed profile: functions and the calls between them.
#[derive(Debug, Default)]
pub struct Profile {
    functions: Vec<Function>,
    by_name: HashMap<String, usize>,
    /// `caller -> callees`, with the calls' inclusive cost.
    calls: HashMap<usize, HashMap<usize, u64>>,
    /// The sum of every function's own cost.
    pub total: u64,
}

/// Compressed names (`(12) name` defines id 12, `(12)` refers to it), one table per kind.
#[derive(Default)]
struct Names(HashMap<String, String>);

impl Names {
    fn resolve(&mut self, value: &str) -> Result<String, String> {
        let Some(rest) = value.strip_prefix('(') else {
            return Ok(value.to_owned());
        };
        let (id, name) = rest
            .split_once(')')
            .ok_or_else(|| format!("bad compressed name {value:?}"))?;
        let name = name.strip_prefix(' ').unwrap_or(name);
        if name.is_empty() {
            self.0
                .get(id)
                .cloned()
                .ok_or_else(|| format!("name id ({id}) used before it is defined"))
        } else {
            self.0.insert(id.to_owned(), name.to_owned());
            Ok(name.to_owned())
        }
    }
}

impl Profile {
    /// Parses a profile whose first event is `Ir`.
    ///
    /// # Errors
    /// The text is not a callgrind profile this reader understands.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut profile = Self::default();
        let (mut files, mut functions) = (Names::default(), Names::default());
        let mut positions = 1;
        let mut file = String::new();
        let mut current: Option<usize> = None;
        let mut call_target: Option<usize> = None;
        let mut in_call = false;
        for (number, line) in text.lines().enumerate() {
            let fail = |what: String| format!("line {}: {what}", number + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(value) = line.strip_prefix("positions:") {
                positions = value.split_whitespace().count();
            } else if let Some(value) = line.strip_prefix("events:") {
                if value.split_whitespace().next() != Some("Ir") {
                    return Err(fail(format!("the first event must be Ir, not {value:?}")));
                }
            } else if let Some(value) = line.strip_prefix("fl=") {
                file = files.resolve(value).map_err(fail)?;
            } else if let Some(value) = ["fi=", "fe=", "cfi=", "cfl="]
                .iter()
                .find_map(|prefix| line.strip_prefix(prefix))
            {
                // Inlined or callee files: only the names need recording.
                files.resolve(value).map_err(fail)?;
            } else if let Some(value) = line.strip_prefix("fn=") {
                let name = functions.resolve(value).map_err(fail)?;
                current = Some(profile.function(name, &file));
            } else if let Some(value) = line.strip_prefix("cfn=") {
                let name = functions.resolve(value).map_err(fail)?;
                call_target = Some(profile.function(name, ""));
            } else if line.starts_with("calls=") {
                in_call = true;
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                let cost = line
                    .split_whitespace()
                    .nth(positions)
                    .map_or(Ok(0), str::parse::<u64>)
                    .map_err(|e| fail(format!("bad cost: {e}")))?;
                let function = current.ok_or_else(|| fail("cost before any fn=".into()))?;
                if std::mem::take(&mut in_call) {
                    let callee = call_target.ok_or_else(|| fail("calls= without cfn=".into()))?;
                    *profile
                        .calls
                        .entry(function)
                        .or_default()
                        .entry(callee)
                        .or_default() += cost;
                } else {
                    profile.functions[function].own += cost;
                    profile.total += cost;
                }
            }
            // Other lines (headers, ob=, cob=, jump=, summary:, totals:) carry nothing needed here.
        }
        Ok(profile)
    }

    /// The index of `name`, added if new; `file` is kept from the first `fn=` that names it.
    fn function(&mut self, name: String, file: &str) -> usize {
        if let Some(&index) = self.by_name.get(&name) {
            if self.functions[index].file.is_empty() {
                file.clone_into(&mut self.functions[index].file);
            }
            return index;
        }
        self.functions.push(Function {
            name: name.clone(),
            file: file.to_owned(),
            own: 0,
        });
        self.by_name.insert(name, self.functions.len() - 1);
        self.functions.len() - 1
    }

    /// The functions, in the order first seen.
    #[must_use]
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    fn callees(&self, caller: usize) -> impl Iterator<Item = usize> + '_ {
        self.calls
            .get(&caller)
            .into_iter()
            .flat_map(|callees| callees.keys().copied())
    }

    /// The own cost of everything reachable from the functions named `entry` (their base name, before
    /// any `'caller` suffix) without entering an `excluded` function, and the names of those functions.
    ///
    /// # Errors
    /// No function is named `entry`, or a counted function is also reached from an excluded one (its
    /// cost cannot be attributed: separate callers further).
    pub fn own_cost(
        &self,
        entry: &str,
        excluded: impl Fn(&Function) -> bool,
    ) -> Result<(u64, BTreeSet<String>), String> {
        let roots: Vec<usize> = (0..self.functions.len())
            .filter(|&f| base_name(&self.functions[f].name) == entry)
            .collect();
        if roots.is_empty() {
            return Err(format!("no function {entry} in the profile"));
        }
        let mut counted = BTreeSet::new();
        let mut boundary = Vec::new();
        let mut stack = roots.clone();
        while let Some(f) = stack.pop() {
            if excluded(&self.functions[f]) {
                boundary.push(f);
            } else if counted.insert(f) {
                stack.extend(self.callees(f));
            }
        }
        let mut behind = BTreeSet::new();
        while let Some(f) = boundary.pop() {
            if behind.insert(f) {
                boundary.extend(self.callees(f));
            }
        }
        if let Some(&shared) = counted
            .iter()
            .find(|f| behind.contains(f) && !roots.contains(f))
        {
            return Err(format!(
                "{} is run both by the driver and by excluded code: its cost cannot be attributed \
                 (raise --separate-callers)",
                self.functions[shared].name
            ));
        }
        let cost = counted.iter().map(|&f| self.functions[f].own).sum();
        let names = counted
            .iter()
            .map(|&f| self.functions[f].name.clone())
            .collect();
        Ok((cost, names))
    }
}

/// A function's name without callgrind's `'caller` context suffixes.
fn base_name(name: &str) -> &str {
    name.split('\'').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::Profile;

    /// A driver callback `pre` that inlines work (12 own), calls the simulator's `Sim` (which
    /// calls `memcpy'Sim`) and its own helper `memcpy'pre`; the harness around it is excluded.
    const PROFILE: &str = "\
# callgrind format
version: 1
positions: line
events: Ir
summary: 140

fl=(1) /src/harness.rs
fn=(1) harness
10 3
cfn=(2) pre
calls=1 20
10 60
fl=(2) /src/driver.rs
fn=(2)
20 12
cfn=(3) Sim
calls=2 30
+1 40
cfn=(4) memcpy'pre
calls=1 0
+2 8
fl=(3) /sim/src/lib.rs
fn=(3)
30 30
cfn=(5) memcpy'Sim
calls=1 0
* 10
fl=(4) memcpy.c
fn=(4)
0 8
fn=(5)
0 10
";

    fn simulator(f: &super::Function) -> bool {
        f.file.contains("/sim/src/") || f.name == "harness"
    }

    #[test]
    fn counts_the_driver_and_its_own_helpers_only() {
        let profile = Profile::parse(PROFILE).unwrap();
        assert_eq!(profile.total, 3 + 12 + 30 + 8 + 10);
        let (cost, names) = profile.own_cost("pre", simulator).unwrap();
        assert_eq!(cost, 12 + 8);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["memcpy'pre", "pre"]);
    }

    #[test]
    fn a_helper_shared_with_excluded_code_is_refused() {
        let shared = PROFILE
            .replace("memcpy'pre", "memcpy")
            .replace("memcpy'Sim", "memcpy");
        let profile = Profile::parse(&shared).unwrap();
        let error = profile.own_cost("pre", simulator).unwrap_err();
        assert!(error.starts_with("memcpy is run both"), "{error}");
    }

    #[test]
    fn unknown_entries_and_other_events_are_errors() {
        let profile = Profile::parse(PROFILE).unwrap();
        assert!(profile.own_cost("post", simulator).is_err());
        assert!(Profile::parse("events: Dr Ir\n").is_err());
        assert!(Profile::parse("fn=(7)\n").is_err());
    }
}
