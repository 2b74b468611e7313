//! The current IRQL and the debug-build check that every lock and paged-memory path makes.
//!
//! Push locks, paged pool and paged contexts may only be touched at `IRQL <= APC_LEVEL`
//! (`docs/kernel-rules.md`, "IRQL"); on Windows, touching paged memory at `DISPATCH_LEVEL` bugchecks
//! (`IRQL_NOT_LESS_OR_EQUAL`), but only when the page happens to be out, so the bug can hide for a
//! long time. Every such path therefore starts with [`assert_at_most`] (or [`paged_code!`](crate::paged_code), the
//! counterpart of the WDK's `PAGED_CODE()`), which fails at once in debug builds, naming the routine
//! and the IRQL seen, and compiles to nothing in release builds.
//!
//! Where the IRQL comes from:
//! - x64 Windows: a read of CR8 (what the WDK's inline `KeGetCurrentIrql` does; it is not an import
//!   of ntoskrnl.exe on x64).
//! - other targets (host builds): windows-sys's `KeGetCurrentIrql`, which the simulator `fltsim`
//!   resolves to the calling thread's simulated IRQL.

use core::fmt;

/// An interrupt request level: the priority a processor runs at. Ordered, so `irql <= Irql::APC`
/// reads as the documented rule.
///
/// ```
/// use iotally::irql::Irql;
/// assert!(Irql::PASSIVE < Irql::APC && Irql::APC < Irql::DISPATCH);
/// assert_eq!(Irql::DISPATCH.raw(), 2);
/// assert_eq!(Irql::from_raw(1), Irql::APC);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Irql(u8);

impl Irql {
    /// `PASSIVE_LEVEL` (0): normal thread execution.
    ///
    /// ```
    /// assert_eq!(iotally::irql::Irql::PASSIVE.raw(), 0);
    /// ```
    pub const PASSIVE: Self = Self(0);
    /// `APC_LEVEL` (1): APCs masked; the highest level at which paged memory and push locks may be used.
    ///
    /// ```
    /// assert_eq!(iotally::irql::Irql::APC.raw(), 1);
    /// ```
    pub const APC: Self = Self(1);
    /// `DISPATCH_LEVEL` (2): the scheduler is off; no paged memory, no waiting.
    ///
    /// ```
    /// assert_eq!(iotally::irql::Irql::DISPATCH.raw(), 2);
    /// ```
    pub const DISPATCH: Self = Self(2);

    /// The IRQL with the numeric value `raw` (as `KeGetCurrentIrql` returns it).
    ///
    /// ```
    /// assert_eq!(iotally::irql::Irql::from_raw(2), iotally::irql::Irql::DISPATCH);
    /// ```
    #[must_use]
    pub const fn from_raw(raw: u8) -> Self {
        Self(raw)
    }

    /// The numeric value (`KIRQL`).
    ///
    /// ```
    /// assert_eq!(iotally::irql::Irql::APC.raw(), 1);
    /// ```
    #[must_use]
    pub const fn raw(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Irql {
    /// The WDK name and the number, e.g. `DISPATCH_LEVEL (2)`; device IRQLs print as `IRQL n`.
    ///
    /// ```
    /// use iotally::irql::Irql;
    /// assert_eq!(Irql::APC.to_string(), "APC_LEVEL (1)");
    /// assert_eq!(Irql::from_raw(5).to_string(), "IRQL 5");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("PASSIVE_LEVEL (0)"),
            1 => f.write_str("APC_LEVEL (1)"),
            2 => f.write_str("DISPATCH_LEVEL (2)"),
            n => write!(f, "IRQL {n}"),
        }
    }
}

/// The calling processor's current IRQL.
///
/// On x64 Windows this reads CR8; in host builds it is the simulated IRQL of the calling thread.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::irql::{current, Irql};
/// assert_eq!(current(), Irql::PASSIVE);
/// let _raised = fltsim::irql::raise(fltsim::irql::DISPATCH_LEVEL);
/// assert_eq!(current(), Irql::DISPATCH);
/// ```
#[must_use]
#[inline]
pub fn current() -> Irql {
    Irql(read_irql())
}

/// x64 Windows: `KeGetCurrentIrql` is `(KIRQL)__readcr8()` in wdm.h.
#[cfg(all(windows, target_arch = "x86_64"))]
#[inline]
fn read_irql() -> u8 {
    let cr8: u64;
    // SAFETY: reading CR8 (the task-priority register) is allowed at CPL 0, where a driver runs; it
    // has no side effects, touches no memory and leaves the flags alone.
    unsafe {
        core::arch::asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack, preserves_flags));
    }
    // CR8 holds the IRQL in its low 4 bits; the upper bits are reserved and read as zero.
    #[expect(clippy::cast_possible_truncation, reason = "CR8 holds a 4-bit value")]
    let irql = cr8 as u8;
    irql
}

/// Other targets: windows-sys's `KeGetCurrentIrql`, resolved by the simulator in host builds.
#[cfg(not(all(windows, target_arch = "x86_64")))]
#[inline]
fn read_irql() -> u8 {
    // SAFETY: `KeGetCurrentIrql` takes no arguments and only reads the current IRQL.
    unsafe { windows_sys::Wdk::System::SystemServices::KeGetCurrentIrql() }
}

/// Debug builds: panics if the current IRQL is above `max`, naming `routine` and the IRQL seen.
/// Release builds: compiles to nothing (the IRQL is not even read).
///
/// Call it first in every routine that touches a push lock, paged pool or a paged context, with
/// `Irql::APC` as `max`. The panic message reads
/// `iotally: IRQL_NOT_LESS_OR_EQUAL: {routine} called at IRQL {seen}, its ceiling is {max}`.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::irql::{assert_at_most, Irql};
/// assert_at_most(Irql::APC, "Table::insert"); // at PASSIVE_LEVEL: fine
/// ```
///
/// At `DISPATCH_LEVEL` the same call panics in a debug build of the driver (the unit tests of this
/// module check both builds).
#[inline]
#[track_caller]
pub fn assert_at_most(max: Irql, routine: &str) {
    if cfg!(debug_assertions) {
        let seen = current();
        if seen > max {
            irql_too_high(routine, seen, max);
        }
    }
}

/// The failure path of [`assert_at_most`], out of line to keep callers small.
#[cold]
#[inline(never)]
#[track_caller]
fn irql_too_high(routine: &str, seen: Irql, max: Irql) -> ! {
    panic!(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: {routine} called at IRQL {seen}, its ceiling is {max}"
    );
}

/// `PAGED_CODE()` for Rust: asserts, in debug builds only, that the current IRQL is at most
/// `APC_LEVEL`, naming the routine given (a `&str`).
///
/// Equivalent to `iotally::irql::assert_at_most(Irql::APC, routine)`.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// fn lookup() {
///     iotally::paged_code!("Table::lookup");
///     // ... touch paged memory ...
/// }
/// lookup();
/// ```
#[macro_export]
macro_rules! paged_code {
    ($routine:expr) => {
        $crate::irql::assert_at_most($crate::irql::Irql::APC, $routine)
    };
}

#[cfg(test)]
mod tests {
    use super::{Irql, assert_at_most, current};
    use fltsim::irql::{APC_LEVEL, DISPATCH_LEVEL, raise};

    #[test]
    fn reads_the_simulated_irql() {
        let _sim = fltsim::Sim::new();
        assert_eq!(current(), Irql::PASSIVE);
        let _apc = raise(APC_LEVEL);
        assert_eq!(current(), Irql::APC);
        assert_at_most(Irql::APC, "at APC_LEVEL");
    }

    /// Debug builds: the violation panics, naming the routine and both levels. Release builds: the
    /// check is compiled away, so the same call returns.
    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(
            expected = "iotally: IRQL_NOT_LESS_OR_EQUAL: Table::insert called at IRQL DISPATCH_LEVEL (2), its ceiling is APC_LEVEL (1)"
        )
    )]
    fn above_the_ceiling_panics_in_debug_builds_only() {
        let _sim = fltsim::Sim::new();
        let _dispatch = raise(DISPATCH_LEVEL);
        assert_at_most(Irql::APC, "Table::insert");
    }

    #[test]
    fn levels_are_ordered_and_named() {
        assert!(Irql::PASSIVE < Irql::APC && Irql::APC < Irql::DISPATCH);
        assert_eq!(std::format!("{}", Irql::from_raw(2)), "DISPATCH_LEVEL (2)");
        assert_eq!(std::format!("{}", Irql::from_raw(12)), "IRQL 12");
    }
}
