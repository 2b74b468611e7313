//! Filter Manager objects seen from outside a callback: `FltEnumerateInstances`,
//! `FltObjectReference`, `FltObjectDereference` and `FltGetFileSystemType`.
//!
//! A rundown reference ("`FltObjectReference` function (fltkernel.h)": it "prevents the object from
//! being freed") is counted per handle. An instance's teardown waits for its references to go
//! before its contexts are deleted ([`wait_for_rundown`]); a reference never released would make
//! the teardown, and so `FltUnregisterFilter`, hang on Windows: fltsim's bound on waits reports it.

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{PFLT_FILTER, PFLT_INSTANCE, PFLT_VOLUME};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_FLT_DELETING_OBJECT, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FILESYSTEM_TYPE, FLT_FSTYPE_UNKNOWN,
};

use crate::irql::{APC_LEVEL, DISPATCH_LEVEL};
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, FilterState, InstanceState, World};

/// What kind of object a handle is, and whether it is being torn down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Object {
    Filter { deleting: bool },
    Instance { deleting: bool },
    Volume { deleting: bool },
}

fn object(w: &mut World, handle: isize) -> Option<Object> {
    if let Some(filter) = w.filter_by_handle(handle) {
        return Some(Object::Filter {
            deleting: filter.state == FilterState::Unregistered,
        });
    }
    if let Some(instance) = w.instances.get(&handle) {
        return Some(Object::Instance {
            deleting: instance.state != InstanceState::Attached,
        });
    }
    w.volume(handle).map(|v| Object::Volume {
        deleting: v.removed,
    })
}

/// `FltEnumerateInstances` ("`FltEnumerateInstances` function (fltkernel.h)"): the instances of
/// `filter` (or of every filter) on `volume` (or on every volume), each with a rundown reference
/// the caller releases with `FltObjectDereference`. IRQL <= `APC_LEVEL`.
///
/// `STATUS_INVALID_PARAMETER` when both are NULL. When `instancelistsize` is too small:
/// `STATUS_BUFFER_TOO_SMALL` with the number of matching instances in
/// `*numberinstancesreturned`, nothing written and nothing referenced. Instances whose teardown
/// started are not listed. fltsim lists them in the order their volumes were mounted.
///
/// # Safety
/// `instancelist` must be valid for `instancelistsize` writes; `numberinstancesreturned` for one.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltEnumerateInstances(
    volume: PFLT_VOLUME,
    filter: PFLT_FILTER,
    instancelist: *mut PFLT_INSTANCE,
    instancelistsize: u32,
    numberinstancesreturned: *mut u32,
) -> NTSTATUS {
    if !irql_at_most("FltEnumerateInstances", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if volume == 0 && filter == 0 {
        return STATUS_INVALID_PARAMETER;
    }
    if numberinstancesreturned.is_null() {
        violation("fltsim: FltEnumerateInstances: NumberInstancesReturned is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    let found = world::with(|w| {
        if filter != 0 && !matches!(object(w, filter), Some(Object::Filter { deleting: false })) {
            return Err(("filter", filter));
        }
        if volume != 0 && !matches!(object(w, volume), Some(Object::Volume { .. })) {
            return Err(("volume", volume));
        }
        let order: Vec<isize> = w.volumes.iter().map(|v| v.anchor.handle()).collect();
        let mut listed: Vec<(usize, isize)> = w
            .instances
            .iter()
            .filter(|(_, i)| i.state == InstanceState::Attached)
            .filter(|(_, i)| volume == 0 || i.volume == volume)
            .map(|(&h, i)| (order.iter().position(|&v| v == i.volume).unwrap_or(0), h))
            .collect();
        listed.sort_unstable();
        let count = u32::try_from(listed.len()).unwrap_or(u32::MAX);
        if count > instancelistsize {
            return Ok((count, Vec::new()));
        }
        let handles: Vec<isize> = listed.into_iter().map(|(_, h)| h).collect();
        for &h in &handles {
            *w.object_references.entry(h).or_default() += 1;
        }
        Ok((count, handles))
    });
    let (count, handles) = match found {
        Ok(found) => found,
        Err((kind, handle)) => {
            invalid_handle("FltEnumerateInstances", kind, handle);
            return STATUS_INVALID_PARAMETER;
        }
    };
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { numberinstancesreturned.write(count) };
    if handles.len() < count as usize {
        return STATUS_BUFFER_TOO_SMALL;
    }
    if instancelist.is_null() && !handles.is_empty() {
        violation("fltsim: FltEnumerateInstances: InstanceList is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    for (i, handle) in handles.into_iter().enumerate() {
        // SAFETY: `i < count <= instancelistsize`: within the caller's array.
        unsafe { instancelist.add(i).write(handle) };
    }
    STATUS_SUCCESS
}

/// `FltObjectReference`: adds a rundown reference to a filter, instance or volume;
/// `STATUS_FLT_DELETING_OBJECT` once it is being torn down. IRQL <= `DISPATCH_LEVEL`.
#[unsafe(no_mangle)]
pub extern "system" fn FltObjectReference(fltobject: *mut core::ffi::c_void) -> NTSTATUS {
    if !irql_at_most("FltObjectReference", DISPATCH_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let handle = fltobject.addr().cast_signed();
    let outcome = world::with(|w| {
        let deleting = match object(w, handle)? {
            Object::Filter { deleting }
            | Object::Instance { deleting }
            | Object::Volume { deleting } => deleting,
        };
        if !deleting {
            *w.object_references.entry(handle).or_default() += 1;
        }
        Some(deleting)
    });
    match outcome {
        None => {
            invalid_handle("FltObjectReference", "filter, instance or volume", handle);
            STATUS_INVALID_PARAMETER
        }
        Some(true) => STATUS_FLT_DELETING_OBJECT,
        Some(false) => STATUS_SUCCESS,
    }
}

/// `FltObjectDereference`: removes a rundown reference added by `FltObjectReference` or
/// `FltEnumerateInstances`. IRQL <= `DISPATCH_LEVEL`. One more dereference than references is a
/// violation.
#[unsafe(no_mangle)]
pub extern "system" fn FltObjectDereference(fltobject: *mut core::ffi::c_void) {
    if !irql_at_most("FltObjectDereference", DISPATCH_LEVEL) {
        return;
    }
    let handle = fltobject.addr().cast_signed();
    let released = world::with(|w| match w.object_references.get_mut(&handle) {
        Some(count) if *count > 0 => {
            *count -= 1;
            if *count == 0 {
                w.object_references.remove(&handle);
            }
            true
        }
        _ => false,
    });
    if released {
        world::notify();
    } else {
        violation(format!(
            "fltsim: FltObjectDereference({handle:#x}): the object has no rundown reference left \
             (dereferenced more often than referenced)"
        ));
    }
}

/// `FltGetFileSystemType` ("`FltGetFileSystemType` function (fltkernel.h)"): the file system of a
/// volume, or of an instance's volume. `STATUS_INVALID_PARAMETER` with `FLT_FSTYPE_UNKNOWN` for
/// another object. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `filesystemtype` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetFileSystemType(
    fltobject: *const core::ffi::c_void,
    filesystemtype: *mut FLT_FILESYSTEM_TYPE,
) -> NTSTATUS {
    if !irql_at_most("FltGetFileSystemType", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if filesystemtype.is_null() {
        violation("fltsim: FltGetFileSystemType: FileSystemType is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    let handle = fltobject.addr().cast_signed();
    let found = world::with(|w| {
        let volume = w.instances.get(&handle).map_or(handle, |i| i.volume);
        w.volume(volume).map(|v| v.spec.file_system.flt_type())
    });
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { filesystemtype.write(found.unwrap_or(FLT_FSTYPE_UNKNOWN)) };
    if found.is_some() {
        STATUS_SUCCESS
    } else {
        STATUS_INVALID_PARAMETER
    }
}

/// Waits until `instance` has no rundown reference left (its teardown cannot finish before); a
/// reference never released is reported as the hang it is on Windows (see [`crate::hang`]).
pub(crate) fn wait_for_rundown(instance: isize) {
    world::wait_for(&world::Wait::Rundown { instance }, |w| {
        (!w.object_references.contains_key(&instance)).then_some(())
    });
}

/// Rundown references still held, as `(handle, count)`, for the report.
pub(crate) fn outstanding() -> Vec<(isize, usize)> {
    let mut rows: Vec<(isize, usize)> =
        world::with(|w| w.object_references.iter().map(|(&h, &n)| (h, n)).collect());
    rows.sort_unstable();
    rows
}

const _: [unsafe extern "system" fn(
    PFLT_VOLUME,
    PFLT_FILTER,
    *mut PFLT_INSTANCE,
    u32,
    *mut u32,
) -> NTSTATUS; 2] = [
    FltEnumerateInstances,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltEnumerateInstances,
];
const _: [unsafe extern "system" fn(*mut core::ffi::c_void) -> NTSTATUS; 2] = [
    FltObjectReference,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltObjectReference,
];
const _: [unsafe extern "system" fn(*mut core::ffi::c_void); 2] = [
    FltObjectDereference,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltObjectDereference,
];
const _: [unsafe extern "system" fn(
    *const core::ffi::c_void,
    *mut FLT_FILESYSTEM_TYPE,
) -> NTSTATUS; 2] = [
    FltGetFileSystemType,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetFileSystemType,
];
