//! Normal kernel APC disabling, per thread (`KTHREAD.KernelApcDisable`).
//!
//! `KeEnterCriticalRegion` disables normal kernel APCs for the calling thread and
//! `KeLeaveCriticalRegion` re-enables them; the disables nest. The `FltAcquirePushLock*` routines
//! disable normal kernel APCs themselves and `FltReleasePushLock` re-enables them
//! (`docs/kernel-rules.md`, "Push locks"), which is why a push lock must be released on the thread that acquired it.
//!
//! Windows counts disables downwards in a signed `SHORT`; the simulator counts them upwards.
//! Returning to user mode with a non-zero count bugchecks with `APC_INDEX_MISMATCH` (0x1): the
//! Filter Manager simulation compares [`normal_kernel_apcs_disabled`] before and after each
//! callback to report the same.

use std::cell::Cell;

use crate::irql::{self, APC_LEVEL};

thread_local! {
    static DISABLED: Cell<u32> = const { Cell::new(0) };
}

/// How many times the calling thread has disabled normal kernel APCs without re-enabling them
/// (0 when they are enabled).
#[must_use]
pub fn normal_kernel_apcs_disabled() -> u32 {
    DISABLED.with(Cell::get)
}

/// Disables normal kernel APCs once more for the calling thread.
pub(crate) fn disable() {
    DISABLED.with(|count| count.set(count.get() + 1));
}

/// Re-enables normal kernel APCs once for the calling thread, on behalf of `routine`.
///
/// # Panics
/// If they were not disabled: an unbalanced re-enable bugchecks with `APC_INDEX_MISMATCH` on Windows
/// (when the thread returns to user mode with a non-zero `KernelApcDisable`).
#[track_caller]
pub(crate) fn enable(routine: &str) {
    DISABLED.with(|count| {
        let now = count.get();
        assert!(
            now > 0,
            "fltsim: APC_INDEX_MISMATCH: {routine} re-enables normal kernel APCs that this thread \
             did not disable (no matching KeEnterCriticalRegion or push-lock acquire)"
        );
        count.set(now - 1);
    });
}

/// `KeEnterCriticalRegion`: disables normal kernel APCs for the calling thread.
/// IRQL <= `APC_LEVEL`.
#[unsafe(no_mangle)]
pub extern "system" fn KeEnterCriticalRegion() {
    irql::check_max("KeEnterCriticalRegion", APC_LEVEL);
    disable();
}

/// `KeLeaveCriticalRegion`: re-enables normal kernel APCs disabled by `KeEnterCriticalRegion`.
/// IRQL <= `APC_LEVEL`.
#[unsafe(no_mangle)]
pub extern "system" fn KeLeaveCriticalRegion() {
    irql::check_max("KeLeaveCriticalRegion", APC_LEVEL);
    enable("KeLeaveCriticalRegion");
}

const _: [unsafe extern "system" fn(); 2] = [
    KeEnterCriticalRegion,
    windows_sys::Wdk::System::SystemServices::KeEnterCriticalRegion,
];
const _: [unsafe extern "system" fn(); 2] = [
    KeLeaveCriticalRegion,
    windows_sys::Wdk::System::SystemServices::KeLeaveCriticalRegion,
];
