//! The `FLT_REGISTRATION` that iotally hands to `FltRegisterFilter`, and the tables it points to.

use core::ptr;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CONTEXT_END, FLT_CONTEXT_REGISTRATION, FLT_OPERATION_REGISTRATION, FLT_REGISTRATION,
    FLT_REGISTRATION_VERSION, FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
    FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME, IRP_MJ_OPERATION_END, PFLT_CONTEXT_CLEANUP_CALLBACK,
    PFLT_POST_OPERATION_CALLBACK, PFLT_PRE_OPERATION_CALLBACK,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_CREATE, IRP_MJ_FILE_SYSTEM_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
};

use super::bypass_io;
use super::context::Context;
use super::instance::{self, InstanceContext};
use super::operations::{self, StreamContext};
use crate::pool::tags;

/// A registration structure in a static: it holds raw pointers, so it is not `Sync` by itself.
struct Registration(FLT_REGISTRATION);

// SAFETY: the registration is immutable and only holds pointers to other immutable statics and to
// functions, so sharing it between threads cannot race.
unsafe impl Sync for Registration {}

/// The operation array, ending with `IRP_MJ_OPERATION_END` as Filter Manager requires.
struct Operations([FLT_OPERATION_REGISTRATION; 7]);

// SAFETY: as for `Registration`: immutable, pointers to functions only.
unsafe impl Sync for Operations {}

/// The operations iotally filters. Reads and writes skip paging I/O: Filter Manager then never calls
/// iotally for it (the cache manager's and memory manager's I/O is not what a user asked for). Their
/// post-ops run for fast I/O only (the pre-op asks for them only then); the fast-I/O MDL operations
/// are tallied like fast reads and writes, and their completions are not registered (see
/// `operations`). File-system controls are watched for BypassIO enables ([`bypass_io`]).
static OPERATIONS: Operations = Operations([
    operation(IRP_MJ_CREATE, 0, None, Some(operations::post_create)),
    operation(
        IRP_MJ_READ,
        FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
        Some(operations::pre_read),
        Some(operations::post_read),
    ),
    operation(
        IRP_MJ_WRITE,
        FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
        Some(operations::pre_write),
        Some(operations::post_write),
    ),
    operation(
        operations::MDL_READ as u32,
        0,
        Some(operations::pre_fast_mdl),
        Some(operations::post_mdl_read),
    ),
    operation(
        operations::PREPARE_MDL_WRITE as u32,
        0,
        Some(operations::pre_fast_mdl),
        Some(operations::post_prepare_mdl_write),
    ),
    operation(
        IRP_MJ_FILE_SYSTEM_CONTROL,
        0,
        Some(bypass_io::pre_file_system_control),
        Some(bypass_io::post_file_system_control),
    ),
    #[allow(clippy::cast_possible_truncation)]
    operation(IRP_MJ_OPERATION_END as u32, 0, None, None),
]);

/// One entry of the operation array.
#[allow(clippy::cast_possible_truncation)]
const fn operation(
    major: u32,
    flags: u32,
    pre: PFLT_PRE_OPERATION_CALLBACK,
    post: PFLT_POST_OPERATION_CALLBACK,
) -> FLT_OPERATION_REGISTRATION {
    FLT_OPERATION_REGISTRATION {
        MajorFunction: major as u8,
        Flags: flags,
        PreOperation: pre,
        PostOperation: post,
        Reserved1: ptr::null_mut(),
    }
}

/// The context array, ending with `FLT_CONTEXT_END`.
struct Contexts([FLT_CONTEXT_REGISTRATION; 3]);

// SAFETY: as for `Registration`: immutable, pointers to functions only.
unsafe impl Sync for Contexts {}

/// The contexts iotally uses, both in paged pool (allowed for every type but volume contexts).
static CONTEXTS: Contexts = Contexts([
    context(
        InstanceContext::TYPE,
        size_of::<InstanceContext>(),
        tags::INSTANCE_CONTEXT.raw(),
        Some(instance::cleanup),
    ),
    context(
        StreamContext::TYPE,
        size_of::<StreamContext>(),
        tags::STREAM_CONTEXT.raw(),
        Some(operations::stream_cleanup),
    ),
    #[allow(clippy::cast_possible_truncation)]
    context(FLT_CONTEXT_END as u16, 0, 0, None),
]);

/// One entry of the context array: a fixed size, charged to `tag` (the pool type is chosen at
/// `FltAllocateContext`: paged for both of iotally's contexts).
const fn context(
    context_type: u16,
    size: usize,
    tag: u32,
    cleanup: PFLT_CONTEXT_CLEANUP_CALLBACK,
) -> FLT_CONTEXT_REGISTRATION {
    FLT_CONTEXT_REGISTRATION {
        ContextType: context_type,
        Flags: 0,
        ContextCleanupCallback: cleanup,
        Size: size,
        PoolTag: tag,
        ContextAllocateCallback: None,
        ContextFreeCallback: None,
        Reserved1: ptr::null_mut(),
    }
}

/// iotally attaches to direct-access (DAX) volumes too: it counts only non-paging reads and writes,
/// which mean the same there (mapped files on DAX generate no paging I/O, which iotally skips
/// anyway), and Filter Manager would otherwise leave those volumes untallied.
#[allow(clippy::cast_possible_truncation)]
static REGISTRATION: Registration = Registration(FLT_REGISTRATION {
    Size: size_of::<FLT_REGISTRATION>() as u16,
    Version: FLT_REGISTRATION_VERSION as u16,
    Flags: FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME,
    ContextRegistration: CONTEXTS.0.as_ptr(),
    OperationRegistration: OPERATIONS.0.as_ptr(),
    FilterUnloadCallback: Some(super::filter_unload),
    InstanceSetupCallback: Some(instance::setup),
    InstanceQueryTeardownCallback: Some(instance::query_teardown),
    InstanceTeardownStartCallback: None,
    InstanceTeardownCompleteCallback: None,
    GenerateFileNameCallback: None,
    NormalizeNameComponentCallback: None,
    NormalizeContextCleanupCallback: None,
    TransactionNotificationCallback: None,
    NormalizeNameComponentExCallback: None,
    SectionNotificationCallback: None,
});

/// The registration to pass to `FltRegisterFilter`.
pub(super) fn get() -> &'static FLT_REGISTRATION {
    &REGISTRATION.0
}
