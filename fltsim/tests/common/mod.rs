//! A small test minifilter, written against windows-sys only, whose behaviour each test chooses.
//!
//! Every callback records an [`Event`] (with the IRQL it ran at and its flags) and then runs the
//! test's hook for it, if any, or a default. Tests change [`Config`] before loading the driver.

#![allow(dead_code, clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fltsim as _;

use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, FILE_OBJECT, NonPagedPool, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_END, FLT_CONTEXT_REGISTRATION, FLT_INSTANCE_CONTEXT,
    FLT_OPERATION_REGISTRATION, FLT_POSTOP_CALLBACK_STATUS, FLT_POSTOP_FINISHED_PROCESSING,
    FLT_PREOP_CALLBACK_STATUS, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_REGISTRATION,
    FLT_REGISTRATION_VERSION, FLT_RELATED_OBJECTS, FLT_STREAM_CONTEXT, FLT_VOLUME_CONTEXT,
    FltRegisterFilter, FltStartFiltering, FltUnregisterFilter, IRP_MJ_OPERATION_END, PFLT_CONTEXT,
    PFLT_FILTER,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_READ, IRP_MJ_WRITE,
};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS, UNICODE_STRING};
use windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;

/// Pool tag of the test filter's instance contexts.
pub const INSTANCE_TAG: u32 = u32::from_le_bytes(*b"TfIc");
/// Pool tag of the test filter's stream contexts.
pub const STREAM_TAG: u32 = u32::from_le_bytes(*b"TfSc");
/// Pool tag of the test filter's volume contexts.
pub const VOLUME_TAG: u32 = u32::from_le_bytes(*b"TfVc");
/// Size of the fixed-size contexts.
pub const CONTEXT_SIZE: usize = 64;

/// `IRP_MJ_CREATE` as `FLT_IO_PARAMETER_BLOCK.MajorFunction` holds it.
#[allow(clippy::cast_possible_truncation)] // IRP major function codes are below 28
pub const CREATE: u8 = IRP_MJ_CREATE as u8;
/// `IRP_MJ_READ`.
#[allow(clippy::cast_possible_truncation)]
pub const READ: u8 = IRP_MJ_READ as u8;
/// `IRP_MJ_WRITE`.
#[allow(clippy::cast_possible_truncation)]
pub const WRITE: u8 = IRP_MJ_WRITE as u8;
/// `IRP_MJ_CLEANUP`.
#[allow(clippy::cast_possible_truncation)]
pub const CLEANUP: u8 = IRP_MJ_CLEANUP as u8;
/// `IRP_MJ_CLOSE`.
#[allow(clippy::cast_possible_truncation)]
pub const CLOSE: u8 = IRP_MJ_CLOSE as u8;
/// `FLT_INSTANCE_CONTEXT` as a context type.
#[allow(clippy::cast_possible_truncation)] // context types are 16-bit
pub const INSTANCE: u16 = FLT_INSTANCE_CONTEXT as u16;
/// `FLT_STREAM_CONTEXT` as a context type.
#[allow(clippy::cast_possible_truncation)]
pub const STREAM: u16 = FLT_STREAM_CONTEXT as u16;
/// `FLT_VOLUME_CONTEXT` as a context type.
#[allow(clippy::cast_possible_truncation)]
pub const VOLUME: u16 = FLT_VOLUME_CONTEXT as u16;

/// A registration-editing hook.
pub type RegistrationHook = Arc<dyn Fn(&mut FLT_REGISTRATION) + Send + Sync>;

/// What a callback saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `DriverEntry` ran with this registry path.
    DriverEntry(String),
    /// `InstanceSetup`: flags, device type, file-system type, IRQL.
    Setup {
        flags: u32,
        device_type: u32,
        fs_type: FLT_FILESYSTEM_TYPE,
        irql: u8,
    },
    /// `InstanceQueryTeardown`: flags.
    QueryTeardown(u32),
    /// `InstanceTeardownStart`: reason.
    TeardownStart(u32),
    /// `InstanceTeardownComplete`: reason.
    TeardownComplete(u32),
    /// `FilterUnload`: flags.
    Unload(u32),
    /// A pre-op: major function, IRP flags, IRQL.
    Pre { major: u8, irp_flags: u32, irql: u8 },
    /// A post-op: major function, flags, IRQL, status, completion context.
    Post {
        major: u8,
        flags: u32,
        irql: u8,
        status: NTSTATUS,
        context: usize,
    },
    /// A context cleanup callback: type, IRQL.
    Cleanup { context_type: u16, irql: u8 },
}

/// A pre-operation hook: returns the callback status and sets the completion context.
pub type PreHook = Arc<
    dyn Fn(
            *mut FLT_CALLBACK_DATA,
            &FLT_RELATED_OBJECTS,
            &mut *mut c_void,
        ) -> FLT_PREOP_CALLBACK_STATUS
        + Send
        + Sync,
>;
/// A post-operation hook.
pub type PostHook = Arc<
    dyn Fn(
            *mut FLT_CALLBACK_DATA,
            &FLT_RELATED_OBJECTS,
            *const c_void,
            u32,
        ) -> FLT_POSTOP_CALLBACK_STATUS
        + Send
        + Sync,
>;
/// An `InstanceSetup` hook.
pub type SetupHook =
    Arc<dyn Fn(&FLT_RELATED_OBJECTS, FLT_FILESYSTEM_TYPE) -> NTSTATUS + Send + Sync>;
/// A hook with the related objects only (teardown callbacks).
pub type ObjectsHook = Arc<dyn Fn(&FLT_RELATED_OBJECTS) + Send + Sync>;
/// `FilterUnload` hook: gets the flags, returns the status (the default unregisters and succeeds).
pub type UnloadHook = Arc<dyn Fn(u32) -> NTSTATUS + Send + Sync>;
/// `DriverEntry` hook, run after registration (and before start unless it returns an error).
pub type EntryHook = Arc<dyn Fn(PFLT_FILTER) -> NTSTATUS + Send + Sync>;

/// A registration array (plain data holding function pointers and a reserved NULL pointer).
#[derive(Clone)]
pub struct Table<T>(pub Vec<T>);

// SAFETY: the arrays hold function pointers and NULL reserved pointers only; nothing is shared.
unsafe impl<T> Send for Table<T> {}

/// How the test filter behaves.
#[derive(Default)]
pub struct Config {
    /// Overrides of the registration (applied to the default one before `FltRegisterFilter`).
    pub registration: Option<RegistrationHook>,
    /// Operation array to register instead of create/read/write/cleanup/close.
    pub operations: Option<Table<FLT_OPERATION_REGISTRATION>>,
    /// Context array to register instead of the default (instance, stream, volume).
    pub contexts: Option<Table<FLT_CONTEXT_REGISTRATION>>,
    pub entry: Option<EntryHook>,
    pub setup: Option<SetupHook>,
    pub query_teardown: Option<Arc<dyn Fn(u32) -> NTSTATUS + Send + Sync>>,
    pub teardown_start: Option<ObjectsHook>,
    pub teardown_complete: Option<ObjectsHook>,
    pub unload: Option<UnloadHook>,
    pub pre: Option<PreHook>,
    pub post: Option<PostHook>,
    /// Leave `FilterUnloadCallback` NULL.
    pub no_unload_callback: bool,
    /// Leave `InstanceQueryTeardownCallback` NULL.
    pub no_query_teardown: bool,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
static EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());
static FILTER: Mutex<PFLT_FILTER> = Mutex::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The service name every test loads the test minifilter as.
pub const SERVICE: &str = "testflt";

/// Installs `config` and forgets earlier events, and installs the test minifilter's service keys
/// (one instance at altitude 370000) as its INF would. Call after `Sim::new`.
pub fn configure(config: Config) {
    fltsim::service::install_minifilter(SERVICE, "370000");
    *lock(&CONFIG) = Some(config);
    lock(&EVENTS).clear();
    *lock(&FILTER) = 0;
}

/// Replaces the post-operation hook of the installed config (the driver may be loaded).
pub fn set_post(hook: PostHook) {
    if let Some(config) = lock(&CONFIG).as_mut() {
        config.post = Some(hook);
    }
}

/// The events recorded so far.
pub fn events() -> Vec<Event> {
    lock(&EVENTS).clone()
}

/// The filter handle `DriverEntry` got.
pub fn filter() -> PFLT_FILTER {
    *lock(&FILTER)
}

fn record(event: Event) {
    lock(&EVENTS).push(event);
}

fn irql() -> u8 {
    // SAFETY: KeGetCurrentIrql has no preconditions.
    unsafe { windows_sys::Wdk::System::SystemServices::KeGetCurrentIrql() }
}

/// Clones a hook out of the config, so that it runs without the config locked (hooks call simulated
/// routines, which call other callbacks of this filter).
fn hook<H>(pick: impl FnOnce(&Config) -> Option<H>) -> Option<H> {
    with_config(pick)
}

/// Runs `f` with the config (not across driver-visible calls that could re-enter it).
fn with_config<R>(f: impl FnOnce(&Config) -> R) -> R {
    let guard = lock(&CONFIG);
    f(guard.as_ref().expect("configure() the test filter first"))
}

/// The default operation array: create, read, write, cleanup, close with pre and post callbacks.
pub fn default_operations() -> Vec<FLT_OPERATION_REGISTRATION> {
    let op = |major: u32| FLT_OPERATION_REGISTRATION {
        MajorFunction: u8::try_from(major).unwrap(),
        Flags: 0,
        PreOperation: Some(pre_operation),
        PostOperation: Some(post_operation),
        Reserved1: ptr::null_mut(),
    };
    vec![
        op(IRP_MJ_CREATE),
        op(IRP_MJ_READ),
        op(IRP_MJ_WRITE),
        op(IRP_MJ_CLEANUP),
        op(IRP_MJ_CLOSE),
        end_operation(),
    ]
}

/// The operation array terminator.
pub fn end_operation() -> FLT_OPERATION_REGISTRATION {
    FLT_OPERATION_REGISTRATION {
        MajorFunction: u8::try_from(IRP_MJ_OPERATION_END).unwrap(),
        Flags: 0,
        PreOperation: None,
        PostOperation: None,
        Reserved1: ptr::null_mut(),
    }
}

/// One context registration entry with the test filter's cleanup callback.
pub fn context_entry(context_type: u32, size: usize, tag: u32) -> FLT_CONTEXT_REGISTRATION {
    FLT_CONTEXT_REGISTRATION {
        ContextType: u16::try_from(context_type).unwrap(),
        Flags: 0,
        ContextCleanupCallback: Some(context_cleanup),
        Size: size,
        PoolTag: tag,
        ContextAllocateCallback: None,
        ContextFreeCallback: None,
        Reserved1: ptr::null_mut(),
    }
}

/// The default context array: instance, stream and volume contexts of [`CONTEXT_SIZE`] bytes.
pub fn default_contexts() -> Vec<FLT_CONTEXT_REGISTRATION> {
    let mut end = context_entry(FLT_CONTEXT_END, 0, 0);
    end.ContextCleanupCallback = None;
    vec![
        context_entry(FLT_INSTANCE_CONTEXT, CONTEXT_SIZE, INSTANCE_TAG),
        context_entry(FLT_STREAM_CONTEXT, CONTEXT_SIZE, STREAM_TAG),
        context_entry(FLT_VOLUME_CONTEXT, CONTEXT_SIZE, VOLUME_TAG),
        end,
    ]
}

/// The test filter's `DriverEntry`.
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *const UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the loader passes a valid registry path.
    let path = unsafe { text(&*registry_path) };
    record(Event::DriverEntry(path));
    let (operations, contexts, no_unload, no_query) = with_config(|c| {
        (
            c.operations
                .clone()
                .map_or_else(default_operations, |t| t.0),
            c.contexts.clone().map_or_else(default_contexts, |t| t.0),
            c.no_unload_callback,
            c.no_query_teardown,
        )
    });
    let mut registration = FLT_REGISTRATION {
        Size: u16::try_from(size_of::<FLT_REGISTRATION>()).unwrap(),
        Version: u16::try_from(FLT_REGISTRATION_VERSION).unwrap(),
        Flags: 0,
        ContextRegistration: contexts.as_ptr(),
        OperationRegistration: operations.as_ptr(),
        FilterUnloadCallback: if no_unload { None } else { Some(filter_unload) },
        InstanceSetupCallback: Some(instance_setup),
        InstanceQueryTeardownCallback: if no_query { None } else { Some(query_teardown) },
        InstanceTeardownStartCallback: Some(teardown_start),
        InstanceTeardownCompleteCallback: Some(teardown_complete),
        GenerateFileNameCallback: None,
        NormalizeNameComponentCallback: None,
        NormalizeContextCleanupCallback: None,
        TransactionNotificationCallback: None,
        NormalizeNameComponentExCallback: None,
        SectionNotificationCallback: None,
    };
    if let Some(edit) = hook(|c| c.registration.clone()) {
        edit(&mut registration);
    }
    let mut filter: PFLT_FILTER = 0;
    // SAFETY: valid driver object, registration and output variable.
    let status = unsafe { FltRegisterFilter(driver, &raw const registration, &raw mut filter) };
    if status < 0 {
        return status;
    }
    *lock(&FILTER) = filter;
    let entry_status = hook(|c| c.entry.clone()).map_or(STATUS_SUCCESS, |hook| hook(filter));
    if entry_status < 0 {
        return entry_status;
    }
    // SAFETY: the filter just registered.
    let status = unsafe { FltStartFiltering(filter) };
    if status < 0 {
        // SAFETY: registered above, unregistered once on this failure path.
        unsafe { FltUnregisterFilter(filter) };
    }
    status
}

/// Converts a `UNICODE_STRING` to a `String`.
///
/// # Safety
/// The string's buffer must hold `Length` bytes.
pub unsafe fn text(s: &UNICODE_STRING) -> String {
    if s.Buffer.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    let units = unsafe { std::slice::from_raw_parts(s.Buffer, usize::from(s.Length / 2)) };
    String::from_utf16_lossy(units)
}

unsafe extern "system" fn filter_unload(flags: u32) -> NTSTATUS {
    record(Event::Unload(flags));
    if let Some(hook) = hook(|c| c.unload.clone()) {
        return hook(flags);
    }
    // SAFETY: the filter registered in DriverEntry, unregistered once here.
    unsafe { FltUnregisterFilter(filter()) };
    STATUS_SUCCESS
}

unsafe extern "system" fn instance_setup(
    objects: *const FLT_RELATED_OBJECTS,
    flags: u32,
    device_type: u32,
    fs_type: FLT_FILESYSTEM_TYPE,
) -> NTSTATUS {
    record(Event::Setup {
        flags,
        device_type,
        fs_type,
        irql: irql(),
    });
    match hook(|c| c.setup.clone()) {
        // SAFETY: Filter Manager passes valid related objects.
        Some(hook) => hook(unsafe { &*objects }, fs_type),
        None => STATUS_SUCCESS,
    }
}

unsafe extern "system" fn query_teardown(
    _objects: *const FLT_RELATED_OBJECTS,
    flags: u32,
) -> NTSTATUS {
    record(Event::QueryTeardown(flags));
    hook(|c| c.query_teardown.clone()).map_or(STATUS_SUCCESS, |hook| hook(flags))
}

unsafe extern "system" fn teardown_start(objects: *const FLT_RELATED_OBJECTS, reason: u32) {
    record(Event::TeardownStart(reason));
    if let Some(hook) = hook(|c| c.teardown_start.clone()) {
        // SAFETY: Filter Manager passes valid related objects.
        hook(unsafe { &*objects });
    }
}

unsafe extern "system" fn teardown_complete(objects: *const FLT_RELATED_OBJECTS, reason: u32) {
    record(Event::TeardownComplete(reason));
    if let Some(hook) = hook(|c| c.teardown_complete.clone()) {
        // SAFETY: Filter Manager passes valid related objects.
        hook(unsafe { &*objects });
    }
}

/// The test filter's pre-operation callback.
pub unsafe extern "system" fn pre_operation(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager passes valid callback data with a valid Iopb.
    let iopb = unsafe { &*(*data).Iopb };
    record(Event::Pre {
        major: iopb.MajorFunction,
        irp_flags: iopb.IrpFlags,
        irql: irql(),
    });
    match hook(|c| c.pre.clone()) {
        // SAFETY: valid related objects and completion-context slot from Filter Manager.
        Some(hook) => hook(data, unsafe { &*objects }, unsafe { &mut *context }),
        None => FLT_PREOP_SUCCESS_WITH_CALLBACK,
    }
}

/// The test filter's post-operation callback.
pub unsafe extern "system" fn post_operation(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager passes valid callback data with a valid Iopb.
    let (major, status) = unsafe {
        (
            (*(*data).Iopb).MajorFunction,
            (*data).IoStatus.Anonymous.Status,
        )
    };
    record(Event::Post {
        major,
        flags,
        irql: irql(),
        status,
        context: context as usize,
    });
    match hook(|c| c.post.clone()) {
        // SAFETY: valid related objects from Filter Manager.
        Some(hook) => hook(data, unsafe { &*objects }, context, flags),
        None => FLT_POSTOP_FINISHED_PROCESSING,
    }
}

/// The test filter's context cleanup callback.
pub unsafe extern "system" fn context_cleanup(_context: PFLT_CONTEXT, context_type: u16) {
    record(Event::Cleanup {
        context_type,
        irql: irql(),
    });
}

/// Allocates a context of `context_type` for the registered filter (paged unless a volume context).
pub fn allocate(context_type: u32) -> Result<PFLT_CONTEXT, NTSTATUS> {
    let pool = if context_type == FLT_VOLUME_CONTEXT {
        NonPagedPool
    } else {
        PagedPool
    };
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid filter handle and output variable.
    let status = unsafe {
        windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAllocateContext(
            filter(),
            u16::try_from(context_type).unwrap(),
            CONTEXT_SIZE,
            pool,
            &raw mut context,
        )
    };
    if status < 0 { Err(status) } else { Ok(context) }
}

/// The file object of an operation.
///
/// # Safety
/// `data` must be valid callback data.
pub unsafe fn file_object(data: *mut FLT_CALLBACK_DATA) -> *mut FILE_OBJECT {
    // SAFETY: the caller's contract.
    unsafe { (*(*data).Iopb).TargetFileObject }
}

/// The major function of an operation.
pub fn major_of(data: *const FLT_CALLBACK_DATA) -> u8 {
    // SAFETY: callback data from Filter Manager, valid during the callback.
    let iopb = unsafe { (*data).Iopb };
    // SAFETY: its parameter block, valid as long as the callback data.
    unsafe { (*iopb).MajorFunction }
}

/// The `IoStatus.Status` of an operation (its final status in a post-op).
pub fn status_of(data: *const FLT_CALLBACK_DATA) -> NTSTATUS {
    // SAFETY: callback data from Filter Manager, valid during the callback.
    let io = unsafe { (*data).IoStatus };
    // SAFETY: `Status` is the member Filter Manager and the file system set.
    unsafe { io.Anonymous.Status }
}

/// Sets the `IoStatus.Status` of an operation (a pre-op completing it).
pub fn set_status(data: *mut FLT_CALLBACK_DATA, status: NTSTATUS) {
    // SAFETY: callback data from Filter Manager, valid during the callback.
    let io = unsafe { &raw mut (*data).IoStatus };
    // SAFETY: a valid IO_STATUS_BLOCK (writing a union member reads nothing).
    unsafe { (*io).Anonymous.Status = status };
}

/// Number of events matching `predicate`.
pub fn count(predicate: impl Fn(&Event) -> bool) -> usize {
    events().iter().filter(|e| predicate(e)).count()
}
