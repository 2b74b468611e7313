//! Everything Filter Manager calls: registration, load and unload.
//!
//! The `unsafe extern "system"` callbacks live in this module tree and stay thin: they translate raw
//! callback data into safe calls into the rest of the crate.

mod bypass_io;
mod config;
mod context;
mod instance;
mod operations;
mod registration;

use core::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

pub(crate) use instance::InstanceContext;

use crate::flt::{FltRegisterFilter, FltStartFiltering, FltUnregisterFilter};
use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_FILTER;
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS};

/// The filter handle returned by `FltRegisterFilter`; 0 while not registered.
///
/// Only `load` and `unregister` use it. Callbacks never do: they take the handle from
/// `FltObjects->Filter`, because Filter Manager keeps calling them while `FilterUnload` runs, until
/// each instance's teardown starts inside `FltUnregisterFilter` (which tears the instances down:
/// "`FltUnregisterFilter` function (fltkernel.h)"). The handle stays valid until
/// `FltUnregisterFilter` has returned; only then is it cleared.
static FILTER: AtomicIsize = AtomicIsize::new(0);

/// Set by whoever unregisters first, so that `FltUnregisterFilter` runs exactly once.
static UNREGISTERING: AtomicBool = AtomicBool::new(false);

/// The `MaxEntriesPerInstance` setting in force.
pub(crate) fn max_entries_per_instance() -> usize {
    config::max_entries_per_instance()
}

/// The instance context of `instance`, referenced, if it has one.
pub(crate) fn instance_context(
    instance: windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_INSTANCE,
) -> Option<context::ContextRef<InstanceContext>> {
    context::instance_context(instance)
}

/// Registers with Filter Manager and starts filtering (`DriverEntry`'s work).
///
/// If starting fails, the filter is unregistered again before the status is returned.
pub(crate) fn load(driver: *mut DRIVER_OBJECT) -> NTSTATUS {
    config::load(driver);
    let mut filter: PFLT_FILTER = 0;
    // SAFETY: `driver` is the driver object of this driver's entry point; the registration is a
    // static that lives as long as the driver image, as FltRegisterFilter requires.
    let status = unsafe { FltRegisterFilter(driver, registration::get(), &raw mut filter) };
    if status < 0 {
        crate::log_error!("FltRegisterFilter failed: {status:#x}");
        return status;
    }
    UNREGISTERING.store(false, Ordering::Release);
    FILTER.store(filter, Ordering::Release);
    let status = crate::port::create(filter);
    if status < 0 {
        crate::log_error!("FltCreateCommunicationPort failed: {status:#x}");
        crate::port::close();
        unregister();
        return status;
    }
    // SAFETY: `filter` was just returned by a successful FltRegisterFilter.
    let status = unsafe { FltStartFiltering(filter) };
    if status < 0 {
        crate::log_error!("FltStartFiltering failed: {status:#x}");
        crate::port::close();
        unregister();
        return status;
    }
    crate::log_info!(
        "filtering; at most {} files tallied per volume",
        config::max_entries_per_instance()
    );
    status
}

/// Unregisters the filter if it is registered; a second call does nothing.
///
/// The handle is cleared only after `FltUnregisterFilter` returns: until then Filter Manager may
/// still run callbacks, and anything they reach must stay valid.
fn unregister() {
    let filter = FILTER.load(Ordering::Acquire);
    if filter == 0 || UNREGISTERING.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: `filter` came from FltRegisterFilter and is unregistered by this call only (the flag
    // was clear). Callers run at PASSIVE_LEVEL (DriverEntry, FilterUnload).
    unsafe { FltUnregisterFilter(filter) };
    FILTER.store(0, Ordering::Release);
}

/// `FilterUnloadCallback`: Filter Manager calls it at `PASSIVE_LEVEL` for `fltmc unload` (optional
/// unload) and at system shutdown or service stop (mandatory unload). iotally never refuses.
unsafe extern "system" fn filter_unload(_flags: u32) -> NTSTATUS {
    // The server port first: FltUnregisterFilter does not return while it is open.
    crate::port::close();
    unregister();
    STATUS_SUCCESS
}
