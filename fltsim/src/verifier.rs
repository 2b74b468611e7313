//! Rule violations and the Verifier-style report.
//!
//! A simulated export cannot panic: it is an `extern "system"` function, and a panic unwinding out
//! of one aborts the whole process ("panic in a function that cannot unwind"), which would also kill
//! the test harness. So an export that detects a broken rule (where Windows would bugcheck or hang)
//! calls `violation`, which records the first message and returns; the export then fails the call
//! as harmlessly as it can. The simulator panics with the recorded message, from ordinary Rust code,
//! as soon as control is back in it: after every driver callback it runs, at the start and end of
//! every [`crate::Sim`] method, and when the `Sim` is dropped. Tests see the panic with
//! `#[should_panic(expected = "fltsim: ...")]`.
//!
//! That is how Filter Manager routines report a broken contract (Filter Verifier's checks). The kernel
//! routines whose misuse leaves nothing sane to return — pool, push locks, registry handles — instead
//! stop the process, as a bugcheck stops the machine; tests of those use
//! [`crate::bugcheck::expect_bugcheck`].

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::world::lock_ignoring_poison;

/// The first rule violation recorded since the last [`check`], if any.
static VIOLATION: Mutex<Option<String>> = Mutex::new(None);

/// Records a broken rule. `message` starts with `fltsim: ` and names the rule.
pub(crate) fn violation(message: String) {
    eprintln!("{message}");
    let mut slot = lock_ignoring_poison(&VIOLATION);
    if slot.is_none() {
        *slot = Some(message);
    }
}

/// Whether simulated routines check their callers' IRQL ([`crate::Sim::set_irql_checks`]).
static IRQL_CHECKS: AtomicBool = AtomicBool::new(true);

/// Forgets any recorded violation and turns IRQL checks back on: called when a new
/// [`crate::Sim`] starts.
pub(crate) fn reset() {
    *lock_ignoring_poison(&VIOLATION) = None;
    IRQL_CHECKS.store(true, Ordering::Relaxed);
}

/// Turns the IRQL ceiling checks of the simulated routines on or off.
pub(crate) fn set_irql_checks(enabled: bool) {
    IRQL_CHECKS.store(enabled, Ordering::Relaxed);
}

/// Whether a routine's IRQL ceiling is checked now.
pub(crate) fn irql_checks() -> bool {
    IRQL_CHECKS.load(Ordering::Relaxed)
}

/// Panics with the first recorded violation, if any.
///
/// # Panics
/// When a simulated routine recorded a broken rule.
#[track_caller]
pub(crate) fn check() {
    let recorded = lock_ignoring_poison(&VIOLATION).take();
    if let Some(message) = recorded {
        panic!("{message}");
    }
}

/// Whether a violation is recorded (without clearing it).
pub(crate) fn pending() -> bool {
    lock_ignoring_poison(&VIOLATION).is_some()
}

/// Records that `routine` got a `kind` handle (filter, instance, volume, port, context, ...) that
/// the simulator never handed out or that is no longer valid.
pub(crate) fn invalid_handle(routine: &str, kind: &str, handle: isize) {
    violation(format!(
        "fltsim: invalid handle: {routine} got {kind} {handle:#x}, which is not a live {kind}"
    ));
}

/// Checks `routine`'s documented IRQL ceiling without panicking: records a violation and returns
/// `false` when the calling thread's IRQL is above it.
pub(crate) fn irql_at_most(routine: &str, ceiling: u8) -> bool {
    let now = crate::irql::current();
    if now > ceiling && irql_checks() {
        violation(format!(
            "fltsim: IRQL_NOT_LESS_OR_EQUAL: {routine} called at IRQL {now}, its ceiling is {ceiling}"
        ));
        return false;
    }
    true
}

/// What Driver Verifier and Filter Verifier would report about the driver now.
///
/// Produced by [`crate::Sim::verifier_report`], and automatically when the driver unloads and when a
/// [`crate::Sim`] is dropped with the driver still loaded (printed to stderr then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Outstanding pool allocations: `(tag, bytes, count)`, sorted by tag.
    pub leaked_pool: Vec<(u32, usize, usize)>,
    /// One line per finding, pool leaks included, each starting with what was found.
    pub lines: Vec<String>,
}

impl Report {
    /// Whether nothing was found.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.lines.is_empty()
    }

    /// Panics with the whole report unless it is clean: the helper that fails a test.
    ///
    /// # Panics
    /// When the report lists any finding.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(
            self.is_clean(),
            "fltsim: verifier report is not clean:\n{self}"
        );
    }

    /// Whether some line contains `needle`.
    #[must_use]
    pub fn mentions(&self, needle: &str) -> bool {
        self.lines.iter().any(|line| line.contains(needle))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return writeln!(f, "fltsim verifier report: clean");
        }
        writeln!(f, "fltsim verifier report: {} finding(s)", self.lines.len())?;
        for line in &self.lines {
            writeln!(f, "  - {line}")?;
        }
        Ok(())
    }
}

/// Formats a pool tag the way `!poolused` shows it: four characters, lowest byte first.
#[must_use]
pub fn tag_text(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}
