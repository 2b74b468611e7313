//! BypassIO: iotally declares it (`SupportedFeatures` 0x8 in the INF) and lets every
//! `FSCTL_MANAGE_BYPASS_IO` pass, so that volumes it attaches to keep BypassIO (`DirectStorage`'s fast
//! read path). A handle with BypassIO enabled sends its non-cached reads past every filter: iotally
//! cannot tally them, and counts instead each enable the file system grants
//! ([`crate::stats::Stat::BypassIoEnables`]), so that a report says how many handles read untallied.
//!
//! Rules (`docs/kernel-rules.md`, "Volume features"; "Supporting BypassIO operations",
//! "`FSCTL_MANAGE_BYPASS_IO` IOCTL (ntifs.h)"): the request is `IRP_MJ_FILE_SYSTEM_CONTROL` with an
//! `FS_BPIO_INPUT` in the system buffer (`METHOD_BUFFERED`); the file system's verdict is the
//! `OpStatus` of the `FS_BPIO_OUTPUT` it returns. Only `FS_BPIO_OP_ENABLE` asks for a post-op, and
//! synchronized (`FLT_PREOP_SYNCHRONIZE`): the post-op then runs at the pre-op's IRQL
//! (`<= APC_LEVEL`), where the paged table may be touched. Every other file-system control passes
//! with no callback.

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_IO_PARAMETER_BLOCK, FLT_POSTOP_CALLBACK_STATUS,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_CALLBACK_STATUS, FLT_PREOP_SUCCESS_NO_CALLBACK,
    FLT_PREOP_SYNCHRONIZE, FLT_RELATED_OBJECTS, FLTFL_POST_OPERATION_DRAINING,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MN_KERNEL_CALL, IRP_MN_USER_FS_REQUEST};
use windows_sys::Win32::System::Ioctl::{
    FS_BPIO_INPUT, FS_BPIO_OP_ENABLE, FS_BPIO_OUTPUT, FSCTL_MANAGE_BYPASS_IO,
};

use super::context;
use super::instance::InstanceContext;

/// The system buffer of a buffered `FSCTL_MANAGE_BYPASS_IO`, with its lengths.
struct Request {
    buffer: *const u8,
    input_length: usize,
    output_length: usize,
}

/// The request `iopb` describes, if it is a buffered `FSCTL_MANAGE_BYPASS_IO`.
///
/// # Safety
/// `iopb` must be the parameter block of an `IRP_MJ_FILE_SYSTEM_CONTROL` operation in progress.
unsafe fn manage_bypass_io(iopb: &FLT_IO_PARAMETER_BLOCK) -> Option<Request> {
    let minor = u32::from(iopb.MinorFunction);
    if minor != IRP_MN_USER_FS_REQUEST && minor != IRP_MN_KERNEL_CALL {
        return None;
    }
    // SAFETY: for the user and kernel FSCTL minor codes the FileSystemControl arm of the parameters
    // union is the one Filter Manager fills (the caller's contract).
    let control = unsafe { iopb.Parameters.FileSystemControl };
    // SAFETY: Buffered is the METHOD_BUFFERED view of that arm, which FSCTL_MANAGE_BYPASS_IO uses;
    // its first three fields are the same in every view, so the code check below is valid for any.
    let buffered = unsafe { control.Buffered };
    if buffered.FsControlCode != FSCTL_MANAGE_BYPASS_IO || buffered.SystemBuffer.is_null() {
        return None;
    }
    Some(Request {
        buffer: buffered.SystemBuffer.cast::<u8>().cast_const(),
        input_length: usize::try_from(buffered.InputBufferLength).ok()?,
        output_length: usize::try_from(buffered.OutputBufferLength).ok()?,
    })
}

/// `PreOperation` for `IRP_MJ_FILE_SYSTEM_CONTROL`: asks for a synchronized post-op for BypassIO
/// enable requests only; never vetoes, never completes.
pub(super) unsafe extern "system" fn pre_file_system_control(
    data: *mut FLT_CALLBACK_DATA,
    _objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut core::ffi::c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager passes valid callback data for the duration of the callback.
    let data = unsafe { &*data };
    // SAFETY: its Iopb describes this operation and is valid as long.
    let iopb = unsafe { &*data.Iopb };
    // SAFETY: this is the pre-op of IRP_MJ_FILE_SYSTEM_CONTROL (the registration says so).
    let Some(request) = (unsafe { manage_bypass_io(iopb) }) else {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    };
    if request.input_length < size_of::<FS_BPIO_INPUT>() {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    // SAFETY: the system buffer is kernel memory holding the caller's input, at least an
    // FS_BPIO_INPUT (checked); it need not be aligned for it.
    let input = unsafe { request.buffer.cast::<FS_BPIO_INPUT>().read_unaligned() };
    if input.Operation == FS_BPIO_OP_ENABLE {
        FLT_PREOP_SYNCHRONIZE
    } else {
        FLT_PREOP_SUCCESS_NO_CALLBACK
    }
}

/// `PostOperation` for `IRP_MJ_FILE_SYSTEM_CONTROL`, called only for BypassIO enables, synchronized
/// (`<= APC_LEVEL`): counts the enable if the file system granted it.
pub(super) unsafe extern "system" fn post_file_system_control(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const core::ffi::c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: Filter Manager passes valid callback data and related objects for the callback.
    let data = unsafe { &*data };
    // SAFETY: as above.
    let objects = unsafe { &*objects };
    // SAFETY: the final status is in the `Status` arm of the IO_STATUS_BLOCK union.
    let status = unsafe { data.IoStatus.Anonymous.Status };
    if status < 0 || !granted(data) {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    if let Some(owner) = context::instance_context::<InstanceContext>(objects.Instance) {
        owner.tallies().read().record_bypass_io_enable();
        crate::log_trace!("BypassIO enabled on a handle: its non-cached reads are not tallied");
    }
    FLT_POSTOP_FINISHED_PROCESSING
}

/// Whether the completed request's `FS_BPIO_OUTPUT` says the enable was granted.
fn granted(data: &FLT_CALLBACK_DATA) -> bool {
    // SAFETY: Filter Manager keeps Iopb valid through the post-op; it is the FSCTL's block.
    let iopb = unsafe { &*data.Iopb };
    // SAFETY: the post-op of IRP_MJ_FILE_SYSTEM_CONTROL (the registration says so).
    let Some(request) = (unsafe { manage_bypass_io(iopb) }) else {
        return false;
    };
    let returned = data.IoStatus.Information;
    if request.output_length < size_of::<FS_BPIO_OUTPUT>() || returned < size_of::<FS_BPIO_OUTPUT>()
    {
        return false;
    }
    // SAFETY: on completion the system buffer holds the `returned` bytes of output, at least an
    // FS_BPIO_OUTPUT (checked), possibly unaligned.
    let output = unsafe { request.buffer.cast::<FS_BPIO_OUTPUT>().read_unaligned() };
    // SAFETY: for FS_BPIO_OP_ENABLE the union's Enable arm holds the results.
    let op_status = unsafe { output.Anonymous.Enable.OpStatus };
    output.Operation == FS_BPIO_OP_ENABLE && op_status == 0
}
