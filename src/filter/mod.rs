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

use core::sync::atomic::{AtomicIsize, Ordering};

pub(crate) use instance::InstanceContext;

use crate::flt::{FltRegisterFilter, FltStartFiltering, FltUnregisterFilter};
use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_FILTER;
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS};

/// The filter handle returned by `FltRegisterFilter`; 0 while not registered.
///
/// Taken (swapped to 0) by whoever unregisters, so that `FltUnregisterFilter` runs exactly once.
static FILTER: AtomicIsize = AtomicIsize::new(0);

/// The filter handle, for routines that need it (`FltAllocateContext`).
pub(crate) fn filter_handle() -> PFLT_FILTER {
    FILTER.load(Ordering::Acquire)
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
    FILTER.store(filter, Ordering::Release);
    // SAFETY: `filter` was just returned by a successful FltRegisterFilter.
    let status = unsafe { FltStartFiltering(filter) };
    if status < 0 {
        crate::log_error!("FltStartFiltering failed: {status:#x}");
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
fn unregister() {
    let filter = FILTER.swap(0, Ordering::AcqRel);
    if filter != 0 {
        // SAFETY: `filter` came from FltRegisterFilter and, having been swapped out, is
        // unregistered by this call only. Callers run at PASSIVE_LEVEL (DriverEntry, FilterUnload).
        unsafe { FltUnregisterFilter(filter) };
    }
}

/// `FilterUnloadCallback`: Filter Manager calls it at `PASSIVE_LEVEL` for `fltmc unload` (optional
/// unload) and at system shutdown or service stop (mandatory unload). iotally never refuses.
unsafe extern "system" fn filter_unload(_flags: u32) -> NTSTATUS {
    unregister();
    STATUS_SUCCESS
}
