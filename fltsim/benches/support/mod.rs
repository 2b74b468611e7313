//! A minimal minifilter and a volume of `n` files, shared by the scale benchmark
//! (`benches/scale.rs`) and the callgrind workload (`examples/read_scale.rs`).
//!
//! The filter does what a tally filter does per operation: post-create gives the stream a context,
//! pre-read looks it up (`FltGetStreamContext`) and releases it. Every file of the volume is opened
//! (one handle and one stream context each) before reads are measured, so the measurement shows the
//! cost of a read with `n` files, `n` handles and `n` contexts in the simulator's tables.

#![allow(dead_code, clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicIsize, Ordering};

use fltsim::{FileHandle, FileSystem, OpenOptions, Sim, VolumeSpec};
use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_END, FLT_CONTEXT_REGISTRATION, FLT_OPERATION_REGISTRATION,
    FLT_POSTOP_CALLBACK_STATUS, FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_CALLBACK_STATUS,
    FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_REGISTRATION, FLT_REGISTRATION_VERSION, FLT_RELATED_OBJECTS,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT, FLTFL_POST_OPERATION_DRAINING,
    FltAllocateContext, FltGetStreamContext, FltRegisterFilter, FltReleaseContext,
    FltSetStreamContext, FltStartFiltering, FltUnregisterFilter, IRP_MJ_OPERATION_END,
    PFLT_CONTEXT,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_CREATE, IRP_MJ_READ};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS, UNICODE_STRING};

/// The filter handle, for `FltUnregisterFilter` and `FltAllocateContext`.
static FILTER: AtomicIsize = AtomicIsize::new(0);
/// The stream context's pool tag.
const TAG: u32 = u32::from_le_bytes(*b"BnSc");
/// The stream context's size.
const CONTEXT_SIZE: usize = 16;

/// `FLT_STREAM_CONTEXT` as a context type.
#[allow(clippy::cast_possible_truncation)] // context types are 16-bit
const STREAM_CONTEXT: u16 = FLT_STREAM_CONTEXT as u16;

/// Plain data registered in a static.
struct Static<T>(T);
// SAFETY: immutable registration data: function pointers and NULL reserved pointers only.
unsafe impl<T> Sync for Static<T> {}

#[allow(clippy::cast_possible_truncation)]
static OPERATIONS: Static<[FLT_OPERATION_REGISTRATION; 3]> = Static([
    FLT_OPERATION_REGISTRATION {
        MajorFunction: IRP_MJ_CREATE as u8,
        Flags: 0,
        PreOperation: None,
        PostOperation: Some(post_create),
        Reserved1: ptr::null_mut(),
    },
    FLT_OPERATION_REGISTRATION {
        MajorFunction: IRP_MJ_READ as u8,
        Flags: 0,
        PreOperation: Some(pre_read),
        PostOperation: None,
        Reserved1: ptr::null_mut(),
    },
    FLT_OPERATION_REGISTRATION {
        MajorFunction: IRP_MJ_OPERATION_END as u8,
        Flags: 0,
        PreOperation: None,
        PostOperation: None,
        Reserved1: ptr::null_mut(),
    },
]);

#[allow(clippy::cast_possible_truncation)]
static CONTEXTS: Static<[FLT_CONTEXT_REGISTRATION; 2]> = Static([
    FLT_CONTEXT_REGISTRATION {
        ContextType: STREAM_CONTEXT,
        Flags: 0,
        ContextCleanupCallback: None,
        Size: CONTEXT_SIZE,
        PoolTag: TAG,
        ContextAllocateCallback: None,
        ContextFreeCallback: None,
        Reserved1: ptr::null_mut(),
    },
    FLT_CONTEXT_REGISTRATION {
        ContextType: FLT_CONTEXT_END as u16,
        Flags: 0,
        ContextCleanupCallback: None,
        Size: 0,
        PoolTag: 0,
        ContextAllocateCallback: None,
        ContextFreeCallback: None,
        Reserved1: ptr::null_mut(),
    },
]);

unsafe extern "system" fn unload(_flags: u32) -> NTSTATUS {
    // SAFETY: the handle FltRegisterFilter returned, unregistered once.
    unsafe { FltUnregisterFilter(FILTER.swap(0, Ordering::AcqRel)) };
    STATUS_SUCCESS
}

unsafe extern "system" fn post_create(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's callback data, valid for the callback; the status arm of the union.
    let status = unsafe { (*data).IoStatus.Anonymous.Status };
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 || status < 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: a registered context type and size; `context` is a valid out pointer.
    let status = unsafe {
        FltAllocateContext(
            FILTER.load(Ordering::Acquire),
            STREAM_CONTEXT,
            CONTEXT_SIZE,
            PagedPool,
            &raw mut context,
        )
    };
    if status >= 0 {
        // SAFETY: the post-create's related objects; our reference on the new context.
        unsafe {
            FltSetStreamContext(
                (*objects).Instance,
                (*objects).FileObject,
                FLT_SET_CONTEXT_KEEP_IF_EXISTS,
                context,
                ptr::null_mut(),
            );
        }
        // SAFETY: releases the allocation's reference (the link keeps its own).
        unsafe { FltReleaseContext(context) };
    }
    FLT_POSTOP_FINISHED_PROCESSING
}

unsafe extern "system" fn pre_read(
    _data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: the pre-read's related objects; `context` is a valid out pointer.
    let status = unsafe {
        FltGetStreamContext((*objects).Instance, (*objects).FileObject, &raw mut context)
    };
    if status >= 0 {
        // SAFETY: the reference FltGetStreamContext returned.
        unsafe { FltReleaseContext(context) };
    }
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// The minifilter's `DriverEntry`.
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *const UNICODE_STRING,
) -> NTSTATUS {
    #[allow(clippy::cast_possible_truncation)]
    let registration = FLT_REGISTRATION {
        Size: size_of::<FLT_REGISTRATION>() as u16,
        Version: FLT_REGISTRATION_VERSION as u16,
        Flags: 0,
        ContextRegistration: CONTEXTS.0.as_ptr(),
        OperationRegistration: OPERATIONS.0.as_ptr(),
        FilterUnloadCallback: Some(unload),
        InstanceSetupCallback: None,
        InstanceQueryTeardownCallback: None,
        InstanceTeardownStartCallback: None,
        InstanceTeardownCompleteCallback: None,
        GenerateFileNameCallback: None,
        NormalizeNameComponentCallback: None,
        NormalizeContextCleanupCallback: None,
        TransactionNotificationCallback: None,
        NormalizeNameComponentExCallback: None,
        SectionNotificationCallback: None,
    };
    let mut filter = 0;
    // SAFETY: fltsim copies the registration during the call.
    let status = unsafe { FltRegisterFilter(driver, &raw const registration, &raw mut filter) };
    if status < 0 {
        return status;
    }
    FILTER.store(filter, Ordering::Release);
    // SAFETY: the handle just registered.
    unsafe { FltStartFiltering(filter) }
}

/// Runs `measure` with the filter loaded on one NTFS volume of `files` 4 KiB files, every one of
/// them open (so with as many handles and stream contexts), then closes them and unloads.
pub fn with_open_files<R>(files: usize, measure: impl FnOnce(&mut [FileHandle<'_>]) -> R) -> R {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    sim.create_directory(volume, r"\data");
    sim.create_files(volume, (0..files).map(|i| (name(i), 4096)));
    assert_eq!(sim.load("scale", driver_entry), STATUS_SUCCESS);
    let mut handles: Vec<FileHandle<'_>> = (0..files)
        .map(|i| {
            sim.open(volume, &name(i), OpenOptions::open())
                .expect("open")
        })
        .collect();
    let result = measure(&mut handles);
    drop(handles);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    result
}

/// The path of file `i`.
fn name(i: usize) -> String {
    format!(r"\data\file-{i:07}.bin")
}
