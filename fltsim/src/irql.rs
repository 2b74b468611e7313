//! Simulated IRQL, one per thread.
//!
//! Threads start at `PASSIVE_LEVEL`. The simulator raises the IRQL around callbacks the way the OS
//! would (post-operation callbacks at `DISPATCH_LEVEL`, paging I/O pre-operations at `APC_LEVEL`);
//! tests raise it with [`raise`] to check that a routine with an IRQL ceiling catches the violation.

use std::cell::Cell;

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u8 = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: u8 = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

thread_local! {
    static IRQL: Cell<u8> = const { Cell::new(PASSIVE_LEVEL) };
}

/// The calling thread's simulated IRQL.
#[must_use]
pub fn current() -> u8 {
    IRQL.with(Cell::get)
}

/// Sets the calling thread's IRQL to `level`: what a `mov cr8, r64` in a driver image does
/// (`KeRaiseIrql`/`KeLowerIrql` are inline CR8 writes on x64). Called from a signal handler: it
/// touches only the thread-local `Cell`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn set(level: u8) {
    IRQL.with(|irql| irql.set(level));
}

/// Restores the previous IRQL when dropped (`KeLowerIrql`).
#[must_use = "the IRQL is lowered again when the guard is dropped"]
pub struct IrqlGuard {
    previous: u8,
}

impl Drop for IrqlGuard {
    fn drop(&mut self) {
        IRQL.with(|irql| irql.set(self.previous));
    }
}

/// Sets the calling thread's IRQL to `level` until the guard drops (`KeRaiseIrql`/`KeLowerIrql`).
///
/// # Panics
/// If `level` is below the current IRQL: `KeRaiseIrql` to a lower level bugchecks
/// (`IRQL_NOT_GREATER_OR_EQUAL`).
pub fn raise(level: u8) -> IrqlGuard {
    let previous = current();
    assert!(
        level >= previous,
        "fltsim: IRQL_NOT_GREATER_OR_EQUAL: KeRaiseIrql to {level} from higher IRQL {previous}"
    );
    IRQL.with(|irql| irql.set(level));
    IrqlGuard { previous }
}

/// Panics, naming `routine`, if the calling thread's IRQL is above `ceiling`.
///
/// # Panics
/// When the documented IRQL ceiling of `routine` is exceeded (a bugcheck on Windows), unless the
/// IRQL checks are off ([`crate::Sim::set_irql_checks`]).
#[track_caller]
pub fn check_max(routine: &str, ceiling: u8) {
    let now = current();
    assert!(
        now <= ceiling || !crate::verifier::irql_checks(),
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: {routine} called at IRQL {now}, its ceiling is {ceiling}"
    );
}

/// `KeGetCurrentIrql`: on x64 Windows a read of CR8, here the thread's simulated IRQL.
#[unsafe(no_mangle)]
pub extern "system" fn KeGetCurrentIrql() -> u8 {
    current()
}

const _: [unsafe extern "system" fn() -> u8; 2] = [
    KeGetCurrentIrql,
    windows_sys::Wdk::System::SystemServices::KeGetCurrentIrql,
];
