//! Calling into the driver the way Filter Manager does: at a chosen IRQL, checking afterwards that
//! the callback restored the IRQL and re-enabled the normal kernel APCs it disabled.

use std::mem::size_of;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_RELATED_OBJECTS;

use crate::verifier::violation;

/// Runs `callback` (a driver routine named `name`) at `irql` on this thread.
///
/// Records `APC_INDEX_MISMATCH` if the callback returned with more normal kernel APC disables than
/// it started with (a push lock still held), and `IRQL_NOT_LESS_OR_EQUAL`-style mismatch if it
/// returned at another IRQL.
pub(crate) fn call_at<R>(irql: u8, name: &'static str, callback: impl FnOnce() -> R) -> R {
    run(None, irql, name, callback)
}

/// [`call_at`] for an operation callback of `instance`: while it runs, a teardown of the instance
/// waits for this thread (which the wait-for graph of [`crate::hang`] knows).
pub(crate) fn call_for<R>(
    instance: isize,
    irql: u8,
    name: &'static str,
    callback: impl FnOnce() -> R,
) -> R {
    run(Some(instance), irql, name, callback)
}

fn run<R>(
    instance: Option<isize>,
    irql: u8,
    name: &'static str,
    callback: impl FnOnce() -> R,
) -> R {
    let _running = crate::hang::InCallback::enter(name, instance);
    let _raised = (irql > crate::irql::current()).then(|| crate::irql::raise(irql));
    let apcs_before = crate::apc::normal_kernel_apcs_disabled();
    let level_before = crate::irql::current();
    let result = callback();
    let apcs_after = crate::apc::normal_kernel_apcs_disabled();
    let level_after = crate::irql::current();
    if apcs_after != apcs_before {
        violation(format!(
            "fltsim: APC_INDEX_MISMATCH: {name} returned with normal kernel APCs disabled \
             {apcs_after} time(s), {apcs_before} on entry (a push lock still held?)"
        ));
    }
    if level_after != level_before {
        violation(format!(
            "fltsim: IRQL_UNEXPECTED_VALUE: {name} was called at IRQL {level_before} and returned at \
             IRQL {level_after}"
        ));
    }
    result
}

/// A `FLT_RELATED_OBJECTS` for `filter`, `volume`, `instance` and `file_object`.
pub(crate) fn related_objects(
    filter: isize,
    volume: isize,
    instance: isize,
    file_object: *const FILE_OBJECT,
) -> FLT_RELATED_OBJECTS {
    FLT_RELATED_OBJECTS {
        Size: u16::try_from(size_of::<FLT_RELATED_OBJECTS>()).unwrap_or(u16::MAX),
        TransactionContext: 0,
        Filter: filter,
        Volume: volume,
        Instance: instance,
        FileObject: file_object,
        Transaction: std::ptr::null(),
    }
}

/// Formats an `NTSTATUS` as Windows tools do.
pub(crate) fn hex(status: i32) -> String {
    format!("{:#010x}", u32::from_ne_bytes(status.to_ne_bytes()))
}
