//! The pre → file system → post pipeline of one operation, with the callback data Filter Manager
//! builds, and the routines that act on an operation in flight (`FltDoCompletionProcessingWhenSafe`,
//! `FltCompletePendedPreOperation`).
//!
//! IRQLs are the OS's: pre-operations at `PASSIVE_LEVEL` (`APC_LEVEL` for paging I/O); post-operations
//! at the setting of [`crate::Sim::set_post_irql`] (`DISPATCH_LEVEL` by default, the worst case Windows
//! allows) except for create, fast I/O and operations the pre-op synchronized, whose post-op runs on
//! the issuing thread at the pre-op's IRQL.

use std::ffi::c_void;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_IO_PARAMETER_BLOCK, FLT_PARAMETERS, FLT_POSTOP_CALLBACK_STATUS,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_POSTOP_MORE_PROCESSING_REQUIRED, FLT_PREOP_CALLBACK_STATUS,
    FLT_PREOP_COMPLETE, FLT_PREOP_DISALLOW_FASTIO, FLT_PREOP_PENDING,
    FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SYNCHRONIZE,
    FLT_RELATED_OBJECTS, FLTFL_CALLBACK_DATA_FAST_IO_OPERATION, FLTFL_CALLBACK_DATA_IRP_OPERATION,
    FLTFL_OPERATION_REGISTRATION_SKIP_CACHED_IO, FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
    FLTFL_POST_OPERATION_DRAINING, PFLT_POST_OPERATION_CALLBACK,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_NOCACHE, IRP_PAGING_IO,
};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_PENDING};

use crate::abi::{PostOperation, PreOperation};
use crate::callback::{call_at, call_for, hex, related_objects};
use crate::irql::{APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::verifier::{irql_at_most, violation};
use crate::world::{
    self, CallbackDataState, FilterState, InstanceState, PendingPost, PostIrql, PostState, Wait,
};

/// `UserMode` (`KPROCESSOR_MODE`).
const USER_MODE: i8 = 1;
/// `KernelMode` (`KPROCESSOR_MODE`).
const KERNEL_MODE: i8 = 0;

/// One operation to send down the volume's stack.
pub(crate) struct Operation {
    /// `IRP_MJ_*`.
    pub major: u8,
    /// `IRP_MN_*`.
    pub minor: u8,
    /// `IRP_PAGING_IO`, `IRP_NOCACHE`, ...
    pub irp_flags: u32,
    /// The I/O stack location's `Flags`, which filters see as
    /// `FLT_IO_PARAMETER_BLOCK.OperationFlags` (e.g. `SL_OPEN_TARGET_DIRECTORY`).
    pub stack_flags: u8,
    /// A fast I/O operation rather than an IRP.
    pub fast_io: bool,
    /// The target file object.
    pub file_object: *mut FILE_OBJECT,
    /// The volume it is on.
    pub volume: isize,
    /// The operation's parameters.
    pub parameters: FLT_PARAMETERS,
}

/// What came back from the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Completed with this status and `Information`.
    Done(NTSTATUS, usize),
    /// A fast I/O operation the filter disallowed: reissue it as an IRP.
    FastIoDisallowed,
}

/// The structures Filter Manager hands to callbacks, kept at one address for the operation.
struct Frame {
    data: FLT_CALLBACK_DATA,
    iopb: FLT_IO_PARAMETER_BLOCK,
    objects: FLT_RELATED_OBJECTS,
}

/// How the filter takes part in an operation.
struct Filtering {
    instance: isize,
    pre: Option<PreOperation>,
    post: Option<PostOperation>,
    filter: isize,
}

/// Finds the filter's callbacks for `op` and counts the pre-op as running on the instance.
fn filtering_for(op: &Operation) -> Option<Filtering> {
    world::with(|w| {
        let filter = w
            .filter
            .as_ref()
            .filter(|f| matches!(f.state, FilterState::Started | FilterState::Unregistering))?;
        let entry = *filter.operations.get(&op.major)?;
        let filter_handle = filter.anchor.handle();
        let paging = op.irp_flags & IRP_PAGING_IO != 0;
        let cached = !paging && op.irp_flags & IRP_NOCACHE == 0;
        if (paging && entry.flags & FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO != 0)
            || (cached
                && !is_create(op.major)
                && entry.flags & FLTFL_OPERATION_REGISTRATION_SKIP_CACHED_IO != 0)
        {
            return None;
        }
        if entry.pre.is_none() && entry.post.is_none() {
            return None;
        }
        let instance = w.instance_on(op.volume)?;
        let inst = w.instances.get_mut(&instance)?;
        if inst.state != InstanceState::Attached {
            return None;
        }
        inst.active += 1;
        Some(Filtering {
            instance,
            pre: entry.pre,
            post: entry.post,
            filter: filter_handle,
        })
    })
}

fn is_create(major: u8) -> bool {
    u32::from(major) == IRP_MJ_CREATE
}

/// Marks one callback of `instance` finished.
fn leave(instance: isize) {
    world::with(|w| {
        if let Some(i) = w.instances.get_mut(&instance) {
            i.active -= 1;
        }
    });
    world::notify();
}

/// Waits while the file system holds I/O ([`crate::Sim::hold_io`]).
fn file_system_gate() {
    let held = world::with(|w| {
        if w.hold_io {
            w.held += 1;
        }
        w.hold_io
    });
    if held {
        world::notify();
        world::wait_for(&Wait::HeldIo, |w| (!w.hold_io).then(|| w.held -= 1));
    }
}

/// Sends `op` through the filter (if attached and registered for it) and the file system.
///
/// `file_system` performs the operation with the parameters as the filter left them.
pub(crate) fn perform(
    op: &Operation,
    file_system: &mut dyn FnMut(&FLT_PARAMETERS) -> (NTSTATUS, usize),
) -> Outcome {
    let Some(filtering) = filtering_for(op) else {
        file_system_gate();
        let (status, information) = file_system(&op.parameters);
        return Outcome::Done(status, information);
    };
    let paging = op.irp_flags & IRP_PAGING_IO != 0;
    let mut frame = Box::new(Frame {
        // SAFETY: FLT_CALLBACK_DATA is plain data for which all-zero bytes are valid.
        data: unsafe { std::mem::zeroed() },
        iopb: FLT_IO_PARAMETER_BLOCK {
            IrpFlags: op.irp_flags,
            MajorFunction: op.major,
            MinorFunction: op.minor,
            OperationFlags: op.stack_flags,
            Reserved: 0,
            TargetFileObject: op.file_object,
            TargetInstance: filtering.instance,
            Parameters: op.parameters,
        },
        objects: related_objects(
            filtering.filter,
            op.volume,
            filtering.instance,
            op.file_object,
        ),
    });
    frame.data.Flags = if op.fast_io {
        FLTFL_CALLBACK_DATA_FAST_IO_OPERATION
    } else {
        FLTFL_CALLBACK_DATA_IRP_OPERATION
    };
    frame.data.Iopb = &raw const frame.iopb;
    frame.data.RequestorMode = if paging { KERNEL_MODE } else { USER_MODE };
    let data: *mut FLT_CALLBACK_DATA = &raw mut frame.data;
    let objects: *const FLT_RELATED_OBJECTS = &raw const frame.objects;
    world::with(|w| {
        w.callback_data.insert(
            data as usize,
            CallbackDataState {
                file_object: op.file_object as usize,
                major: op.major,
                irp_flags: op.irp_flags,
                fast_io: op.fast_io,
                post: false,
                status: 0,
            },
        );
    });
    let outcome = run(op, &filtering, data, objects, file_system);
    world::with(|w| w.callback_data.remove(&(data as usize)));
    drop(frame);
    outcome
}

/// The pre-op, its verdict, the file system and the post-op of one filtered operation.
fn run(
    op: &Operation,
    filtering: &Filtering,
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    file_system: &mut dyn FnMut(&FLT_PARAMETERS) -> (NTSTATUS, usize),
) -> Outcome {
    let paging = op.irp_flags & IRP_PAGING_IO != 0;
    let pre_irql = if paging { APC_LEVEL } else { PASSIVE_LEVEL };
    let mut completion_context: *mut c_void = std::ptr::null_mut();
    // The filter may complete a pended operation from another thread before its pre-op returns.
    world::with(|w| w.pended.insert(data as usize, None));
    let mut verdict = match filtering.pre {
        Some(pre) => call_for(filtering.instance, pre_irql, "PreOperationCallback", || {
            // SAFETY: the driver's pre-op with callback data, related objects and a context slot
            // that stay valid for the call.
            unsafe { pre.call(data, objects, &raw mut completion_context) }
        }),
        None => FLT_PREOP_SUCCESS_WITH_CALLBACK,
    };
    (verdict, completion_context) = settle(op, data, verdict, completion_context);
    let mut synchronized = false;
    let wants_post = match verdict {
        FLT_PREOP_SUCCESS_WITH_CALLBACK => filtering.post.is_some(),
        FLT_PREOP_SUCCESS_NO_CALLBACK => false,
        FLT_PREOP_SYNCHRONIZE => {
            synchronized = true;
            if filtering.post.is_none() {
                violation(
                    "fltsim: FLT_PREOP_SYNCHRONIZE returned for an operation that has no \
                     post-operation callback"
                        .into(),
                );
            }
            filtering.post.is_some()
        }
        FLT_PREOP_COMPLETE => {
            leave(filtering.instance);
            return completed_by_filter(op, data);
        }
        FLT_PREOP_DISALLOW_FASTIO => {
            leave(filtering.instance);
            if op.fast_io {
                return Outcome::FastIoDisallowed;
            }
            violation(
                "fltsim: FLT_PREOP_DISALLOW_FASTIO returned for an IRP operation (Filter Verifier: \
                 only valid for fast I/O)"
                    .into(),
            );
            return run_file_system(file_system, &op.parameters);
        }
        other => {
            violation(format!(
                "fltsim: a pre-operation callback returned invalid status {other}"
            ));
            false
        }
    };
    let post_irql = if synchronized || op.fast_io || is_create(op.major) {
        pre_irql
    } else {
        completion_irql()
    };
    let post = filtering.post.filter(|_| wants_post);
    world::with(|w| {
        if let Some(i) = w.instances.get_mut(&filtering.instance) {
            if let Some(post) = post {
                i.posts.insert(
                    data as usize,
                    PendingPost {
                        state: PostState::Pending,
                        post,
                        objects: objects as usize,
                        completion_context: completion_context as usize,
                        irql: post_irql,
                    },
                );
            }
            i.active -= 1;
        }
    });
    world::notify();
    file_system_gate();
    // SAFETY: `data` is live; its Iopb points at this operation's parameter block.
    let parameters = unsafe { (*(*data).Iopb).Parameters };
    let (status, information) = file_system(&parameters);
    let Some(post) = post else {
        return Outcome::Done(status, information);
    };
    let pending = PendingPost {
        state: PostState::Completing,
        post,
        objects: objects as usize,
        completion_context: completion_context as usize,
        irql: post_irql,
    };
    complete(filtering.instance, data, &pending, status, information)
}

/// Completion of an operation below the filter: runs its post-op unless a draining teardown did.
fn complete(
    instance: isize,
    data: *mut FLT_CALLBACK_DATA,
    pending: &PendingPost,
    status: NTSTATUS,
    information: usize,
) -> Outcome {
    if !claim_post(instance, data as usize) {
        return Outcome::Done(status, information);
    }
    // SAFETY: the post-op is ours (claimed): nobody else touches the callback data now.
    unsafe {
        (*data).IoStatus.Anonymous.Status = status;
        (*data).IoStatus.Information = information;
    }
    world::with(|w| {
        if let Some(state) = w.callback_data.get_mut(&(data as usize)) {
            state.post = true;
            state.status = status;
        }
    });
    let result = call_for(instance, pending.irql, "PostOperationCallback", || {
        // SAFETY: the driver's post-op with this operation's live callback data, related objects
        // and the completion context its pre-op returned.
        unsafe {
            pending.post.call(
                data,
                pending.objects as *const FLT_RELATED_OBJECTS,
                pending.completion_context as *const c_void,
                0,
            )
        }
    });
    finish_post(data as usize, result);
    world::with(|w| {
        if let Some(i) = w.instances.get_mut(&instance) {
            i.posts.remove(&(data as usize));
            i.active -= 1;
        }
    });
    world::notify();
    // SAFETY: `data` is live; the post-op may have changed the final status.
    unsafe {
        Outcome::Done(
            (*data).IoStatus.Anonymous.Status,
            (*data).IoStatus.Information,
        )
    }
}

/// Waits until the filter completes a pended pre-op; returns its verdict and completion context.
///
/// The instance keeps counting the operation as active meanwhile, so a teardown waits for the
/// filter to complete it (as Filter Manager's does).
fn wait_for_completion(data: *mut FLT_CALLBACK_DATA) -> (FLT_PREOP_CALLBACK_STATUS, *mut c_void) {
    let (status, context) = world::wait_for(&Wait::PendedPreOp, |w| {
        match w.pended.get(&(data as usize)) {
            Some(Some(done)) => {
                let done = *done;
                w.pended.remove(&(data as usize));
                Some(done)
            }
            _ => None,
        }
    });
    let allowed = [
        FLT_PREOP_SUCCESS_WITH_CALLBACK,
        FLT_PREOP_SUCCESS_NO_CALLBACK,
        FLT_PREOP_COMPLETE,
    ];
    if !allowed.contains(&status) {
        violation(format!(
            "fltsim: FltCompletePendedPreOperation with status {status}: only \
             FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SUCCESS_NO_CALLBACK or FLT_PREOP_COMPLETE \
             are allowed"
        ));
        return (FLT_PREOP_SUCCESS_NO_CALLBACK, context as *mut c_void);
    }
    (status, context as *mut c_void)
}

/// Checks the pre-op's verdict and, for `FLT_PREOP_PENDING`, waits for the driver to complete the
/// operation: the verdict and completion context the operation goes on with.
fn settle(
    op: &Operation,
    data: *mut FLT_CALLBACK_DATA,
    verdict: FLT_PREOP_CALLBACK_STATUS,
    completion_context: *mut c_void,
) -> (FLT_PREOP_CALLBACK_STATUS, *mut c_void) {
    check_verdict(op, verdict, completion_context);
    if verdict == FLT_PREOP_PENDING && op.fast_io {
        // Reported by check_verdict: fast I/O cannot be pended; carry on as if not pended.
        world::with(|w| w.pended.remove(&(data as usize)));
        return (FLT_PREOP_SUCCESS_NO_CALLBACK, std::ptr::null_mut());
    }
    if verdict == FLT_PREOP_PENDING {
        return wait_for_completion(data);
    }
    if world::with(|w| w.pended.remove(&(data as usize)))
        .flatten()
        .is_some()
    {
        violation(
            "fltsim: FltCompletePendedPreOperation called for an operation whose pre-op did not \
             return FLT_PREOP_PENDING"
                .into(),
        );
    }
    (verdict, completion_context)
}

/// The pre-op return rules of "`PFLT_PRE_OPERATION_CALLBACK` callback function (fltkernel.h)":
/// `CompletionContext` is set only with `FLT_PREOP_SUCCESS_WITH_CALLBACK` or `FLT_PREOP_SYNCHRONIZE`
/// ("Otherwise, it must be NULL"), and `FLT_PREOP_PENDING` "can only be returned for IRP-based I/O
/// operations".
fn check_verdict(op: &Operation, verdict: FLT_PREOP_CALLBACK_STATUS, context: *mut c_void) {
    let may_have_context = matches!(
        verdict,
        FLT_PREOP_SUCCESS_WITH_CALLBACK | FLT_PREOP_SYNCHRONIZE
    );
    if !context.is_null() && !may_have_context {
        violation(format!(
            "fltsim: a pre-operation callback returned {} with a non-NULL CompletionContext: it \
             must be NULL unless the status is FLT_PREOP_SUCCESS_WITH_CALLBACK or \
             FLT_PREOP_SYNCHRONIZE",
            preop_name(verdict)
        ));
    }
    if verdict == FLT_PREOP_PENDING && op.fast_io {
        violation(
            "fltsim: a pre-operation callback returned FLT_PREOP_PENDING for a fast I/O operation: \
             only IRP-based operations can be pended"
                .into(),
        );
    }
}

/// The name of a pre-op status, for messages.
fn preop_name(status: FLT_PREOP_CALLBACK_STATUS) -> String {
    match status {
        FLT_PREOP_SUCCESS_WITH_CALLBACK => "FLT_PREOP_SUCCESS_WITH_CALLBACK".into(),
        FLT_PREOP_SUCCESS_NO_CALLBACK => "FLT_PREOP_SUCCESS_NO_CALLBACK".into(),
        FLT_PREOP_PENDING => "FLT_PREOP_PENDING".into(),
        FLT_PREOP_DISALLOW_FASTIO => "FLT_PREOP_DISALLOW_FASTIO".into(),
        FLT_PREOP_COMPLETE => "FLT_PREOP_COMPLETE".into(),
        FLT_PREOP_SYNCHRONIZE => "FLT_PREOP_SYNCHRONIZE".into(),
        other => format!("status {other}"),
    }
}

/// The outcome of an operation the pre-op completed (`FLT_PREOP_COMPLETE`): its final status may
/// not be `STATUS_PENDING`, and a cleanup or close cannot fail ("`PFLT_PRE_OPERATION_CALLBACK`
/// callback function (fltkernel.h)", Returning `FLT_PREOP_COMPLETE`).
fn completed_by_filter(op: &Operation, data: *mut FLT_CALLBACK_DATA) -> Outcome {
    // SAFETY: `data` is the live callback data of this operation.
    let (status, information) = unsafe {
        (
            (*data).IoStatus.Anonymous.Status,
            (*data).IoStatus.Information,
        )
    };
    if status == STATUS_PENDING {
        violation(
            "fltsim: FLT_PREOP_COMPLETE with IoStatus.Status STATUS_PENDING: a completed operation \
             needs its final status"
                .into(),
        );
    } else if status < 0 && matches!(u32::from(op.major), IRP_MJ_CLEANUP | IRP_MJ_CLOSE) {
        violation(format!(
            "fltsim: FLT_PREOP_COMPLETE of an IRP_MJ_{} with failure status {}: cleanup and close \
             cannot fail",
            if u32::from(op.major) == IRP_MJ_CLOSE {
                "CLOSE"
            } else {
                "CLEANUP"
            },
            hex(status)
        ));
    }
    Outcome::Done(status, information)
}

/// The IRQL of post-ops that Windows may run at `DISPATCH_LEVEL`, per [`crate::Sim::set_post_irql`].
fn completion_irql() -> u8 {
    match world::with(|w| w.post_irql) {
        PostIrql::Dispatch => DISPATCH_LEVEL,
        PostIrql::Passive => PASSIVE_LEVEL,
    }
}

/// Runs the file system without a filter (after a verdict fltsim reported as invalid).
fn run_file_system(
    file_system: &mut dyn FnMut(&FLT_PARAMETERS) -> (NTSTATUS, usize),
    parameters: &FLT_PARAMETERS,
) -> Outcome {
    file_system_gate();
    let (status, information) = file_system(parameters);
    Outcome::Done(status, information)
}

/// Takes the right to run the post-op of `data`; `false` if a draining teardown called it.
fn claim_post(instance: isize, data: usize) -> bool {
    world::wait_for(&Wait::DrainingPost { instance }, |w| {
        let i = w.instances.get_mut(&instance)?;
        let Some(post) = i.posts.get_mut(&data) else {
            return Some(false);
        };
        match post.state {
            PostState::Pending => {
                post.state = PostState::Completing;
                i.active += 1;
                Some(true)
            }
            PostState::Draining | PostState::Completing => None,
            PostState::Drained => {
                i.posts.remove(&data);
                Some(false)
            }
        }
    })
}

/// Handles the status a post-op returned; joins deferred safe post-processing.
fn finish_post(data: usize, result: FLT_POSTOP_CALLBACK_STATUS) {
    let deferred = world::with(|w| w.deferred.remove(&data));
    match (result, deferred) {
        (FLT_POSTOP_FINISHED_PROCESSING, None) => {}
        (FLT_POSTOP_MORE_PROCESSING_REQUIRED, Some(worker)) => match worker.join() {
            Ok(FLT_POSTOP_FINISHED_PROCESSING) => {}
            Ok(other) => violation(format!(
                "fltsim: not modeled: a safe post-op callback returned {} \
                 (FltCompletePendedPostOperation is not simulated)",
                hex(other)
            )),
            Err(_) => {
                violation("fltsim: the safe post-op callback's worker thread panicked".into());
            }
        },
        (FLT_POSTOP_MORE_PROCESSING_REQUIRED, None) => violation(
            "fltsim: not modeled: FLT_POSTOP_MORE_PROCESSING_REQUIRED without \
             FltDoCompletionProcessingWhenSafe (FltCompletePendedPostOperation is not simulated)"
                .into(),
        ),
        (FLT_POSTOP_FINISHED_PROCESSING, Some(worker)) => {
            let _ = worker.join();
            violation(
                "fltsim: a post-operation callback returned FLT_POSTOP_FINISHED_PROCESSING after \
                 FltDoCompletionProcessingWhenSafe queued its work: it must return the status that \
                 routine gave (FLT_POSTOP_MORE_PROCESSING_REQUIRED)"
                    .into(),
            );
        }
        (other, deferred) => {
            if let Some(worker) = deferred {
                let _ = worker.join();
            }
            violation(format!(
                "fltsim: a post-operation callback returned invalid status {other}"
            ));
        }
    }
}

/// The state of a live callback data, reporting unknown ones for `routine`.
fn callback_data_state(routine: &str, data: *const FLT_CALLBACK_DATA) -> Option<CallbackDataState> {
    let state = world::with(|w| w.callback_data.get(&(data as usize)).copied());
    if state.is_none() {
        violation(format!(
            "fltsim: invalid handle: {routine} got callback data {:#x}, which is not an operation \
             in progress",
            data as usize
        ));
    }
    state
}

/// `FltDoCompletionProcessingWhenSafe` ("`FltDoCompletionProcessingWhenSafe` function
/// (fltkernel.h)"). Any IRQL; only in a post-op, for an IRP-based operation, never while draining.
///
/// At IRQL <= `APC_LEVEL` it calls `SafePostCallback` at once, on this thread, stores its status in
/// `RetPostOperationStatus` and returns TRUE. At `DISPATCH_LEVEL` it posts the callback to a worker
/// thread at `PASSIVE_LEVEL`, stores `FLT_POSTOP_MORE_PROCESSING_REQUIRED` (which the post-op must
/// return) and returns TRUE, the operation completing when the worker is done; paging I/O cannot be
/// posted: it stores `FLT_POSTOP_FINISHED_PROCESSING` and returns FALSE. Calling it for fast I/O, with
/// `FLTFL_POST_OPERATION_DRAINING`, or outside a post-op is reported.
///
/// # Safety
/// The arguments must be the post-op's own.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltDoCompletionProcessingWhenSafe(
    data: *const FLT_CALLBACK_DATA,
    fltobjects: *const FLT_RELATED_OBJECTS,
    completioncontext: *const c_void,
    flags: u32,
    safepostcallback: PFLT_POST_OPERATION_CALLBACK,
    retpostoperationstatus: *mut FLT_POSTOP_CALLBACK_STATUS,
) -> bool {
    const ROUTINE: &str = "FltDoCompletionProcessingWhenSafe";
    let Some(state) = callback_data_state(ROUTINE, data) else {
        return false;
    };
    let Some(safe) = PostOperation::from_driver(safepostcallback) else {
        violation(format!("fltsim: {ROUTINE}: SafePostCallback is NULL"));
        return false;
    };
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 {
        violation(format!(
            "fltsim: {ROUTINE} called with FLTFL_POST_OPERATION_DRAINING set: it must never be \
             called while the instance drains"
        ));
        return false;
    }
    if !state.post || retpostoperationstatus.is_null() {
        violation(format!(
            "fltsim: {ROUTINE} may only be called from a post-operation callback, with \
             RetPostOperationStatus"
        ));
        return false;
    }
    if state.fast_io {
        violation(format!(
            "fltsim: {ROUTINE} called for a fast I/O operation: it can only be called for \
             IRP-based operations"
        ));
        return false;
    }
    let data = data.cast_mut();
    if crate::irql::current() <= APC_LEVEL {
        let status = call_at(crate::irql::current(), "SafePostCallback", || {
            // SAFETY: the post-op's own arguments, valid for the call.
            unsafe { safe.call(data, fltobjects, completioncontext, flags) }
        });
        // SAFETY: checked non-null; the caller's output variable.
        unsafe { retpostoperationstatus.write(status) };
        return true;
    }
    if state.irp_flags & IRP_PAGING_IO != 0 {
        // SAFETY: checked non-null; the caller's output variable.
        unsafe { retpostoperationstatus.write(FLT_POSTOP_FINISHED_PROCESSING) };
        return false;
    }
    let (data_address, objects, context) = (
        data as usize,
        fltobjects as usize,
        completioncontext as usize,
    );
    let worker = std::thread::spawn(move || {
        call_at(PASSIVE_LEVEL, "SafePostCallback", || {
            // SAFETY: the operation waits for this worker before it completes, so its callback
            // data and related objects stay valid.
            unsafe {
                safe.call(
                    data_address as *mut FLT_CALLBACK_DATA,
                    objects as *const FLT_RELATED_OBJECTS,
                    context as *const c_void,
                    flags,
                )
            }
        })
    });
    world::with(|w| w.deferred.insert(data_address, worker));
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { retpostoperationstatus.write(FLT_POSTOP_MORE_PROCESSING_REQUIRED) };
    true
}

/// `FltCompletePendedPreOperation` ("`FltCompletePendedPreOperation` function (fltkernel.h)"):
/// resumes an operation whose pre-op returned `FLT_PREOP_PENDING` (possibly before that pre-op has
/// returned). IRQL <= `DISPATCH_LEVEL` with `FLT_PREOP_COMPLETE`, else <= `APC_LEVEL`; `Context`
/// must be NULL unless the status is `FLT_PREOP_SUCCESS_WITH_CALLBACK`.
///
/// # Safety
/// `callbackdata` must be the pended operation's.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltCompletePendedPreOperation(
    callbackdata: *const FLT_CALLBACK_DATA,
    callbackstatus: FLT_PREOP_CALLBACK_STATUS,
    context: *const c_void,
) {
    const ROUTINE: &str = "FltCompletePendedPreOperation";
    let ceiling = if callbackstatus == FLT_PREOP_COMPLETE {
        DISPATCH_LEVEL
    } else {
        APC_LEVEL
    };
    if !irql_at_most(ROUTINE, ceiling) {
        return;
    }
    if !context.is_null() && callbackstatus != FLT_PREOP_SUCCESS_WITH_CALLBACK {
        violation(format!(
            "fltsim: {ROUTINE} with status {callbackstatus} and a non-NULL Context: Context must \
             be NULL unless the status is FLT_PREOP_SUCCESS_WITH_CALLBACK"
        ));
    }
    let done = world::with(|w| match w.pended.get_mut(&(callbackdata as usize)) {
        Some(slot @ None) => {
            *slot = Some((callbackstatus, context as usize));
            true
        }
        _ => false,
    });
    if done {
        world::notify();
    } else {
        violation(format!(
            "fltsim: {ROUTINE}: callback data {:#x} is not a pended operation (not pended, or \
             completed twice)",
            callbackdata as usize
        ));
    }
}

const _: [unsafe extern "system" fn(
    *const FLT_CALLBACK_DATA,
    *const FLT_RELATED_OBJECTS,
    *const c_void,
    u32,
    PFLT_POST_OPERATION_CALLBACK,
    *mut FLT_POSTOP_CALLBACK_STATUS,
) -> bool; 2] = [
    FltDoCompletionProcessingWhenSafe,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDoCompletionProcessingWhenSafe,
];
const _: [unsafe extern "system" fn(
    *const FLT_CALLBACK_DATA,
    FLT_PREOP_CALLBACK_STATUS,
    *const c_void,
); 2] = [
    FltCompletePendedPreOperation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCompletePendedPreOperation,
];

// The callback data fltsim builds has the x64 layout drivers expect (x64-layouts.txt).
#[cfg(target_pointer_width = "64")]
const _: () =
    assert!(size_of::<FLT_CALLBACK_DATA>() == 88 && size_of::<FLT_RELATED_OBJECTS>() == 48);
