//! Filter registration, start and unregistration: `FltRegisterFilter`, `FltStartFiltering`,
//! `FltUnregisterFilter`, and the driver's load (`DriverEntry`) and unload (`FilterUnload`).

use std::collections::HashMap;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CONTEXT_END, FLT_CONTEXT_REGISTRATION, FLT_FILE_CONTEXT, FLT_INSTANCE_CONTEXT,
    FLT_OPERATION_REGISTRATION, FLT_REGISTRATION, FLT_REGISTRATION_VERSION_0200,
    FLT_REGISTRATION_VERSION_0203, FLT_SECTION_CONTEXT, FLT_STREAM_CONTEXT,
    FLT_STREAMHANDLE_CONTEXT, FLT_TRANSACTION_CONTEXT, FLT_VOLUME_CONTEXT,
    FLTFL_FILTER_UNLOAD_MANDATORY, FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT,
    FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD, FLTFL_INSTANCE_TEARDOWN_MANDATORY_FILTER_UNLOAD,
    IRP_MJ_OPERATION_END, PFLT_FILTER,
};
use windows_sys::Wdk::System::SystemServices::IRP_MJ_MAXIMUM_FUNCTION;
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_INVALID_CONTEXT_REGISTRATION, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_SUCCESS, UNICODE_STRING,
};

use crate::abi::{
    ContextAllocate, ContextCleanup, ContextFree, DriverEntryFn, FilterUnload,
    InstanceQueryTeardown, InstanceSetup, InstanceTeardown, PostOperation, PreOperation,
};
use crate::callback::{call_at, hex};
use crate::context::FLT_VARIABLE_SIZED_CONTEXTS;
use crate::irql::{APC_LEVEL, PASSIVE_LEVEL};
use crate::pause::Point;
use crate::verifier::{irql_at_most, violation};
use crate::world::{self, Anchor, ContextEntry, Filter, FilterState, OperationEntry};

/// The lowest Filter-Manager-defined major function (`IRP_MJ_VOLUME_DISMOUNT`, `(UCHAR)-20`).
const LOWEST_FLT_MAJOR: u8 = 0xEC;

/// Array entries read before deciding that an operation or context array has no terminator.
const MAX_ENTRIES: usize = 256;

/// `FltRegisterFilter`: validates and copies the registration. IRQL <= `APC_LEVEL`
/// ("`FltRegisterFilter` function (fltkernel.h)").
///
/// Returns `STATUS_INVALID_PARAMETER` for a wrong `Size`/`Version`, an operation array with an
/// invalid or duplicate major function, and `STATUS_FLT_INVALID_CONTEXT_REGISTRATION` for an invalid
/// context array, as Filter Manager does.
///
/// # Safety
/// `registration` must point to a valid `FLT_REGISTRATION` whose arrays are terminated.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltRegisterFilter(
    driver: *const DRIVER_OBJECT,
    registration: *const FLT_REGISTRATION,
    retfilter: *mut PFLT_FILTER,
) -> NTSTATUS {
    if !irql_at_most("FltRegisterFilter", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if driver.is_null() || registration.is_null() || retfilter.is_null() {
        violation("fltsim: FltRegisterFilter: a required pointer argument is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-null, and the caller passes its FLT_REGISTRATION, valid for the call.
    let registration = unsafe { &*registration };
    let mut filter = match parse_registration(registration) {
        Ok(filter) => filter,
        Err(status) => return status,
    };
    // Filter Manager reads the service's instance definitions and features from the registry: no
    // service key or no registered instance is STATUS_OBJECT_NAME_NOT_FOUND (`docs/kernel-rules.md`,
    // "Registration and unload"; "FltRegisterFilter function (fltkernel.h)").
    // SAFETY: checked non-null; the caller passes its driver object.
    let Some(service) = (unsafe { crate::service::service_of(driver) }) else {
        violation("fltsim: FltRegisterFilter: Driver is not a loaded driver's object".into());
        return STATUS_INVALID_PARAMETER;
    };
    match crate::service::filter_settings(&service) {
        Ok(settings) => {
            filter.supported_features = settings.supported_features;
            filter.service = service;
        }
        Err(status) => return status,
    }
    let handle = filter.anchor.handle();
    let accepted = world::with(|w| {
        if w.filter
            .as_ref()
            .is_some_and(|f| f.state != FilterState::Unregistered)
        {
            return false;
        }
        w.filter = Some(filter);
        true
    });
    if !accepted {
        violation(
            "fltsim: not modeled: a second FltRegisterFilter while a filter is registered".into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller provides the output variable.
    unsafe { retfilter.write(handle) };
    STATUS_SUCCESS
}

/// Checks and copies `registration` into a new [`Filter`].
fn parse_registration(registration: &FLT_REGISTRATION) -> Result<Filter, NTSTATUS> {
    if usize::from(registration.Size) != size_of::<FLT_REGISTRATION>() {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let version = u32::from(registration.Version);
    if !(FLT_REGISTRATION_VERSION_0200..=FLT_REGISTRATION_VERSION_0203).contains(&version) {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: the registration's arrays are valid until their terminator (caller's contract).
    let operations = unsafe { parse_operations(registration.OperationRegistration) }?;
    // SAFETY: as above.
    let contexts = unsafe { parse_contexts(registration.ContextRegistration) }?;
    Ok(Filter {
        anchor: Anchor::new(),
        state: FilterState::Registered,
        operations,
        contexts,
        unload: FilterUnload::from_driver(registration.FilterUnloadCallback),
        setup: InstanceSetup::from_driver(registration.InstanceSetupCallback),
        query_teardown: InstanceQueryTeardown::from_driver(
            registration.InstanceQueryTeardownCallback,
        ),
        teardown_start: InstanceTeardown::from_driver(registration.InstanceTeardownStartCallback),
        teardown_complete: InstanceTeardown::from_driver(
            registration.InstanceTeardownCompleteCallback,
        ),
        flags: registration.Flags,
        supported_features: 0,
        service: String::new(),
    })
}

/// Whether `major` is an IRP major function or one of Filter Manager's own (`IRP_MJ_ACQUIRE_FOR_*`,
/// fast I/O and mount codes).
fn valid_major(major: u8) -> bool {
    u32::from(major) <= IRP_MJ_MAXIMUM_FUNCTION || major >= LOWEST_FLT_MAJOR
}

/// Reads the operation array up to `IRP_MJ_OPERATION_END`.
///
/// # Safety
/// `array` is null or points to entries up to a terminator.
unsafe fn parse_operations(
    array: *const FLT_OPERATION_REGISTRATION,
) -> Result<HashMap<u8, OperationEntry>, NTSTATUS> {
    let mut operations = HashMap::new();
    if array.is_null() {
        return Ok(operations);
    }
    for index in 0..MAX_ENTRIES {
        // SAFETY: within the array up to its terminator (caller's contract; we stop at it).
        let entry = unsafe { &*array.add(index) };
        if u16::from(entry.MajorFunction) == IRP_MJ_OPERATION_END {
            return Ok(operations);
        }
        if !valid_major(entry.MajorFunction) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let op = OperationEntry {
            flags: entry.Flags,
            pre: PreOperation::from_driver(entry.PreOperation),
            post: PostOperation::from_driver(entry.PostOperation),
        };
        if operations.insert(entry.MajorFunction, op).is_some() {
            return Err(STATUS_INVALID_PARAMETER);
        }
    }
    violation(format!(
        "fltsim: FltRegisterFilter: operation array has no IRP_MJ_OPERATION_END in its first \
         {MAX_ENTRIES} entries"
    ));
    Err(STATUS_INVALID_PARAMETER)
}

/// Reads the context array up to `FLT_CONTEXT_END`, with the rules of "`FLT_CONTEXT_REGISTRATION`
/// structure (fltkernel.h)": a known `ContextType`; `Size` any value ("Zero is a valid size") or
/// `FLT_VARIABLE_SIZED_CONTEXTS`; a non-zero `PoolTag` unless a `ContextAllocateCallback` is given;
/// an entry with `ContextAllocateCallback` is the only one of its type; at most one variable-size
/// and three fixed-size entries per type. An allocate callback needs a free callback and the other
/// way round (fltsim's reading: Filter Manager cannot free what it did not allocate). Identical
/// entries are ignored after the first, as documented.
///
/// # Safety
/// `array` is null or points to entries up to a terminator.
unsafe fn parse_contexts(
    array: *const FLT_CONTEXT_REGISTRATION,
) -> Result<Vec<ContextEntry>, NTSTATUS> {
    const TYPES: [u32; 7] = [
        FLT_VOLUME_CONTEXT,
        FLT_INSTANCE_CONTEXT,
        FLT_FILE_CONTEXT,
        FLT_STREAM_CONTEXT,
        FLT_STREAMHANDLE_CONTEXT,
        FLT_TRANSACTION_CONTEXT,
        FLT_SECTION_CONTEXT,
    ];
    let mut contexts: Vec<ContextEntry> = Vec::new();
    let mut seen: Vec<[usize; 7]> = Vec::new();
    if array.is_null() {
        return Ok(contexts);
    }
    for index in 0..MAX_ENTRIES {
        // SAFETY: within the array up to its terminator (caller's contract; we stop at it).
        let entry = unsafe { &*array.add(index) };
        if u32::from(entry.ContextType) == FLT_CONTEXT_END {
            return Ok(contexts);
        }
        let custom_allocator = entry.ContextAllocateCallback.is_some();
        let valid = TYPES.contains(&u32::from(entry.ContextType))
            && custom_allocator == entry.ContextFreeCallback.is_some()
            && (custom_allocator || entry.PoolTag != 0);
        if !valid {
            return Err(STATUS_FLT_INVALID_CONTEXT_REGISTRATION);
        }
        let new = ContextEntry {
            context_type: entry.ContextType,
            cleanup: ContextCleanup::from_driver(entry.ContextCleanupCallback),
            size: entry.Size,
            tag: entry.PoolTag,
            allocate: ContextAllocate::from_driver(entry.ContextAllocateCallback),
            free: ContextFree::from_driver(entry.ContextFreeCallback),
        };
        let same_type: Vec<&ContextEntry> = contexts
            .iter()
            .filter(|e| e.context_type == new.context_type)
            .collect();
        let raw = [
            usize::from(entry.ContextType),
            usize::from(entry.Flags),
            entry.ContextCleanupCallback.map_or(0, |f| f as usize),
            entry.Size,
            entry.PoolTag as usize,
            entry.ContextAllocateCallback.map_or(0, |f| f as usize),
            entry.ContextFreeCallback.map_or(0, |f| f as usize),
        ];
        if seen.contains(&raw) {
            continue;
        }
        seen.push(raw);
        let variable = |e: &&ContextEntry| e.size == FLT_VARIABLE_SIZED_CONTEXTS;
        let too_many = if custom_allocator {
            !same_type.is_empty()
        } else if new.size == FLT_VARIABLE_SIZED_CONTEXTS {
            same_type.iter().any(variable)
        } else {
            same_type.iter().filter(|e| !variable(e)).count() >= 3
        };
        if too_many || same_type.iter().any(|e| e.allocate.is_some()) {
            return Err(STATUS_FLT_INVALID_CONTEXT_REGISTRATION);
        }
        contexts.push(new);
    }
    violation(format!(
        "fltsim: FltRegisterFilter: context array has no FLT_CONTEXT_END in its first \
         {MAX_ENTRIES} entries"
    ));
    Err(STATUS_FLT_INVALID_CONTEXT_REGISTRATION)
}

/// `FltStartFiltering`: starts filtering and attaches instances to the volumes already mounted
/// (instance setup with `FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT`). IRQL <= `APC_LEVEL`
/// ("`FltStartFiltering` function (fltkernel.h)"); the setups themselves run at `PASSIVE_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown handle is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltStartFiltering(filter: PFLT_FILTER) -> NTSTATUS {
    if !irql_at_most("FltStartFiltering", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let state = world::with(|w| w.filter_by_handle(filter).map(|f| f.state));
    match state {
        None => {
            crate::verifier::invalid_handle("FltStartFiltering", "filter", filter);
            return STATUS_INVALID_PARAMETER;
        }
        Some(FilterState::Registered) => {}
        Some(other) => {
            violation(format!(
                "fltsim: FltStartFiltering called on a filter that is {other:?}, not just registered"
            ));
            return STATUS_INVALID_PARAMETER;
        }
    }
    let volumes = world::with(|w| {
        if let Some(f) = w.filter_by_handle(filter) {
            f.state = FilterState::Started;
        }
        w.volumes
            .iter()
            .filter(|v| !v.removed)
            .map(|v| v.anchor.handle())
            .collect::<Vec<_>>()
    });
    for volume in volumes {
        crate::instance::setup(volume, FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT);
    }
    STATUS_SUCCESS
}

/// `FltUnregisterFilter`: tears down every instance (`FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD`),
/// deletes their contexts, and unregisters the filter. IRQL <= `APC_LEVEL`.
///
/// Call it exactly once. With a communication server port still open it would hang on Windows:
/// fltsim reports that and does not unregister.
///
/// On entry the thread passes [`Point::Unregister`], where a test can stop it while operations and
/// mounts still reach the filter. Then the filter is being torn down ("`FltUnregisterFilter` function
/// (fltkernel.h)"): instances are torn down one by one, each receiving operations until its own
/// teardown starts; volumes mounted from then on are not offered to the filter; and
/// `FltAllocateContext` returns `STATUS_FLT_DELETING_OBJECT` ("`FltAllocateContext` function
/// (fltkernel.h)": the filter "is being torn down").
///
/// # Safety
/// None beyond the routine's contract; an unknown handle is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltUnregisterFilter(filter: PFLT_FILTER) {
    if !irql_at_most("FltUnregisterFilter", APC_LEVEL) {
        return;
    }
    let state = world::with(|w| w.filter_by_handle(filter).map(|f| f.state));
    match state {
        None => {
            crate::verifier::invalid_handle("FltUnregisterFilter", "filter", filter);
            return;
        }
        Some(FilterState::Unregistered | FilterState::Unregistering) => {
            violation(
                "fltsim: FltUnregisterFilter called twice for the same filter (call it exactly once)"
                    .into(),
            );
            return;
        }
        Some(_) => {}
    }
    crate::pause::reach(Point::Unregister);
    let open_ports: Vec<String> = world::with(|w| {
        w.server_ports
            .values()
            .filter(|p| p.open)
            .map(|p| p.name.clone())
            .collect()
    });
    if !open_ports.is_empty() {
        violation(format!(
            "fltsim: FltUnregisterFilter with communication server port(s) {open_ports:?} still \
             open: unload hangs on Windows (close the port with FltCloseCommunicationPort first)"
        ));
        return;
    }
    let (instances, mandatory) = world::with(|w| {
        if let Some(f) = w.filter_by_handle(filter) {
            f.state = FilterState::Unregistering;
        }
        let mut instances: Vec<isize> = w
            .instances
            .iter()
            .filter(|(_, i)| i.state == world::InstanceState::Attached)
            .map(|(&h, _)| h)
            .collect();
        instances.sort_unstable();
        (instances, w.unloading_mandatory)
    });
    let mut reason = FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD;
    if mandatory {
        reason |= FLTFL_INSTANCE_TEARDOWN_MANDATORY_FILTER_UNLOAD;
    }
    for instance in instances {
        crate::instance::teardown(instance, reason);
    }
    let clients = crate::port::disconnect_all_clients();
    crate::port::notify_disconnects(clients);
    world::with(|w| {
        if let Some(f) = w.filter_by_handle(filter) {
            f.state = FilterState::Unregistered;
        }
    });
}

const _: [unsafe extern "system" fn(
    *const DRIVER_OBJECT,
    *const FLT_REGISTRATION,
    *mut PFLT_FILTER,
) -> NTSTATUS; 2] = [
    FltRegisterFilter,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltRegisterFilter,
];
const _: [unsafe extern "system" fn(PFLT_FILTER) -> NTSTATUS; 2] = [
    FltStartFiltering,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltStartFiltering,
];
const _: [unsafe extern "system" fn(PFLT_FILTER); 2] = [
    FltUnregisterFilter,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltUnregisterFilter,
];

/// What `DriverEntry` sees: a zeroed `DRIVER_OBJECT` and the service's registry path.
pub(crate) struct DriverImage {
    object: Box<DRIVER_OBJECT>,
    registry_path: Box<[u16]>,
    driver_name: Box<[u16]>,
}

// SAFETY: the image is plain memory owned by the `Sim`; the driver reaches it only through the
// pointers passed to DriverEntry, during the load, on the loading thread.
unsafe impl Send for DriverImage {}

/// A `UNICODE_STRING` over `buffer` (no terminator counted).
pub(crate) fn unicode(buffer: &[u16]) -> UNICODE_STRING {
    let bytes = u16::try_from(buffer.len() * 2).unwrap_or(0xFFFE);
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: buffer.as_ptr().cast_mut(),
    }
}

/// Calls `entry` like the I/O manager loads a driver named `name`.
pub(crate) fn load(name: &str, entry: DriverEntryFn) -> (NTSTATUS, DriverImage) {
    let registry: Vec<u16> =
        format!("\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\{name}")
            .encode_utf16()
            .collect();
    let driver_name: Vec<u16> = format!("\\FileSystem\\{name}").encode_utf16().collect();
    let mut image = DriverImage {
        // SAFETY: DRIVER_OBJECT is plain data (integers, pointers, optional fn pointers) for which
        // all-zero bytes are valid.
        object: Box::new(unsafe { std::mem::zeroed() }),
        registry_path: registry.into_boxed_slice(),
        driver_name: driver_name.into_boxed_slice(),
    };
    image.object.Type = 4; // IO_TYPE_DRIVER
    image.object.Size = i16::try_from(size_of::<DRIVER_OBJECT>()).unwrap_or(i16::MAX);
    image.object.DriverName = unicode(&image.driver_name);
    let path = unicode(&image.registry_path);
    let object: *mut DRIVER_OBJECT = &raw mut *image.object;
    let status = call_at(PASSIVE_LEVEL, "DriverEntry", || {
        // SAFETY: `object` and `path` are valid for the call; the driver's entry point contract.
        unsafe { entry.call(object, &raw const path) }
    });
    if status >= 0 {
        world::with(|w| w.driver_loaded = true);
    } else {
        let left = world::with(|w| {
            w.filter
                .as_ref()
                .is_some_and(|f| f.state != FilterState::Unregistered)
        });
        if left {
            world::with(|w| {
                w.findings.push(format!(
                    "DriverEntry failed with {} but left its filter registered \
                     (FltUnregisterFilter missing on the failure path)",
                    hex(status)
                ));
            });
        }
    }
    (status, image)
}

/// Calls the driver's `FilterUnload` with `FLTFL_FILTER_UNLOAD_MANDATORY` or 0.
pub(crate) fn unload(mandatory: bool) -> NTSTATUS {
    let callback = world::with(|w| {
        if !w.driver_loaded {
            return Err("fltsim: Sim::unload: no driver is loaded");
        }
        match &w.filter {
            Some(f) if f.state != FilterState::Unregistered => Ok(f.unload),
            _ => Err("fltsim: Sim::unload: the driver has no registered filter"),
        }
    });
    let callback = match callback {
        Ok(callback) => callback,
        Err(message) => panic!("{message}"),
    };
    // Without FilterUnloadCallback Filter Manager cannot unload the filter (`docs/kernel-rules.md`, "Registration and unload").
    let Some(callback) = callback else {
        return STATUS_NOT_SUPPORTED;
    };
    world::with(|w| w.unloading_mandatory = mandatory);
    let flags = if mandatory {
        FLTFL_FILTER_UNLOAD_MANDATORY
    } else {
        0
    };
    let status = call_at(PASSIVE_LEVEL, "FilterUnload", || {
        // SAFETY: the driver's registered FilterUnloadCallback, called with its documented flags.
        unsafe { callback.call(flags) }
    });
    world::with(|w| w.unloading_mandatory = false);
    let unregistered = world::with(|w| {
        w.filter
            .as_ref()
            .is_none_or(|f| f.state == FilterState::Unregistered)
    });
    if status < 0 {
        if mandatory {
            violation(format!(
                "fltsim: FilterUnload returned {} for a mandatory unload: only non-mandatory unloads \
                 may be refused",
                hex(status)
            ));
        } else if unregistered {
            violation(format!(
                "fltsim: FilterUnload returned {} after calling FltUnregisterFilter: the driver \
                 would stay loaded with no filter",
                hex(status)
            ));
        }
        return status;
    }
    if !unregistered {
        violation(
            "fltsim: FilterUnload returned success without calling FltUnregisterFilter: the image \
             would unload with Filter Manager still calling into it"
                .into(),
        );
        return status;
    }
    world::with(|w| w.driver_loaded = false);
    status
}
