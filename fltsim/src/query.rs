//! `FltQueryInformationFile`: what a minifilter can ask the simulated file systems about an open
//! file.

use std::ffi::c_void;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_INSTANCE;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_ID_INFORMATION, FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION,
    FILE_STANDARD_INFORMATION, FileIdInformation, FileInternalInformation, FileStandardInformation,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_INFO_LENGTH_MISMATCH, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};
use windows_sys::Win32::Storage::FileSystem::FILE_ID_128;

use crate::file::CLUSTER;
use crate::fs::FileNode;
use crate::irql::PASSIVE_LEVEL;
use crate::verifier::{irql_at_most, violation};
use crate::volume::{FileIdAnswer, FileSystem};
use crate::world::{self, InstanceState};

/// What a query may look at: the node behind an open file object on `instance`'s volume.
fn open_node(
    routine: &str,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Result<(FileNode, FileSystem, u64, FileIdAnswer), NTSTATUS> {
    world::with(|w| {
        let Some(inst) = w.instances.get(&instance).filter(|i| i.state != InstanceState::Gone) else {
            return Err(Err(format!("fltsim: invalid handle: {routine} got instance {instance:#x}, which is not a live instance")));
        };
        let volume = inst.volume;
        let Some(state) = w.file_objects.get(&(file_object as usize)) else {
            return Err(Err(format!("fltsim: invalid handle: {routine} got file object {:#x}, which is not a live file object", file_object as usize)));
        };
        if state.volume != volume {
            return Err(Err(format!("fltsim: {routine}: the file object is on another volume than the instance")));
        }
        if !state.open {
            return Err(Err(format!(
                "fltsim: {routine} on a file object that is not open (in pre-create, after a failed \
                 create, or after close): the file system has no file behind it"
            )));
        }
        if state.volume_open {
            return Err(Ok(STATUS_INVALID_PARAMETER));
        }
        let key = state.node;
        let v = w.volume(volume).ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        let fs = v.spec.file_system;
        let serial = v.spec.serial;
        let answer = v.spec.file_ids;
        let node = key.and_then(|k| v.files.node(k)).cloned().ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        Ok((node, fs, serial, answer))
    })
    .map_err(|e| match e {
        Ok(status) => status,
        Err(message) => {
            violation(message);
            STATUS_INVALID_PARAMETER
        }
    })
}

/// `FltQueryInformationFile`: `FileInternalInformation`, `FileStandardInformation`,
/// `FileIdInformation` (NTFS and `ReFS` only). `PASSIVE_LEVEL`.
///
/// Other classes, and `FileIdInformation` on FAT, exFAT and CDFS, return
/// `STATUS_INVALID_PARAMETER`; a buffer shorter than the class's structure returns
/// `STATUS_INFO_LENGTH_MISMATCH`. On `ReFS` `FileInternalInformation` gives the low 64 bits of the
/// 128-bit id. "`FltQueryInformationFile` function (fltkernel.h)": callers run "at IRQL =
/// `PASSIVE_LEVEL` and with APCs enabled", and not "with a non-NULL top level IRP value, as this can
/// cause a system deadlock": a call with normal kernel APCs disabled (a push lock held across a call
/// that re-enters the file system) or with the top-level IRP set is reported.
///
/// # Safety
/// `fileinformation` must be valid for `length` bytes and 8-byte aligned; `lengthreturned` NULL or
/// valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltQueryInformationFile(
    instance: PFLT_INSTANCE,
    fileobject: *const FILE_OBJECT,
    fileinformation: *mut c_void,
    length: u32,
    fileinformationclass: FILE_INFORMATION_CLASS,
    lengthreturned: *mut u32,
) -> NTSTATUS {
    if !irql_at_most("FltQueryInformationFile", PASSIVE_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if crate::apc::normal_kernel_apcs_disabled() > 0 {
        violation(
            "fltsim: FltQueryInformationFile called with normal kernel APCs disabled: callers must \
             run with APCs enabled (a push lock held across a call that re-enters the file system \
             can deadlock)"
                .into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    if crate::kernel::top_level_irp_set() {
        violation(
            "fltsim: FltQueryInformationFile called with the thread's top-level IRP set (file \
             system recursion from there can deadlock)"
                .into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    let (node, fs, serial, answer) =
        match open_node("FltQueryInformationFile", instance, fileobject) {
            Ok(found) => found,
            Err(status) => return status,
        };
    if fileinformation.is_null() {
        violation("fltsim: FltQueryInformationFile: FileInformation is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    let length = usize::try_from(length).unwrap_or(0);
    let class = fileinformationclass;
    let written = match () {
        () if class == FileInternalInformation => {
            let info = FILE_INTERNAL_INFORMATION {
                IndexNumber: i64::from_ne_bytes(u64::to_ne_bytes(low_64(node.id))),
            };
            // SAFETY: the caller's buffer holds `length` bytes, checked against the size.
            unsafe { store(fileinformation, length, info) }
        }
        () if class == FileStandardInformation => {
            let allocation = node.size.div_ceil(CLUSTER) * CLUSTER;
            let info = FILE_STANDARD_INFORMATION {
                AllocationSize: i64::try_from(allocation).unwrap_or(i64::MAX),
                EndOfFile: i64::try_from(node.size).unwrap_or(i64::MAX),
                NumberOfLinks: 1,
                DeletePending: false,
                Directory: node.directory,
            };
            // SAFETY: as above.
            unsafe { store(fileinformation, length, info) }
        }
        () if class == FileIdInformation && fs.has_file_id_information() => {
            let info = FILE_ID_INFORMATION {
                VolumeSerialNumber: serial,
                FileId: FILE_ID_128 {
                    Identifier: match answer {
                        FileIdAnswer::Ids => node.id,
                        FileIdAnswer::Zero => 0,
                        FileIdAnswer::AllOnes => u128::MAX,
                    }
                    .to_le_bytes(),
                },
            };
            // SAFETY: as above.
            unsafe { store(fileinformation, length, info) }
        }
        () => return STATUS_INVALID_PARAMETER,
    };
    let Some(written) = written else {
        return STATUS_INFO_LENGTH_MISMATCH;
    };
    if !lengthreturned.is_null() {
        // SAFETY: the caller's optional output variable, checked non-null.
        unsafe { lengthreturned.write(u32::try_from(written).unwrap_or(u32::MAX)) };
    }
    STATUS_SUCCESS
}

/// The 64-bit id a file system reports in `FileInternalInformation`.
fn low_64(id: u128) -> u64 {
    u64::try_from(id & u128::from(u64::MAX)).unwrap_or(u64::MAX)
}

/// Writes `value` into the caller's buffer if it fits; returns the bytes written.
///
/// # Safety
/// `buffer` must be valid for `length` bytes and aligned for `T`.
unsafe fn store<T>(buffer: *mut c_void, length: usize, value: T) -> Option<usize> {
    if length < size_of::<T>() {
        return None;
    }
    if buffer.cast::<T>().is_aligned() {
        // SAFETY: fits (checked) and aligned (checked); the caller's buffer.
        unsafe { buffer.cast::<T>().write(value) };
    } else {
        violation(format!(
            "fltsim: FltQueryInformationFile: FileInformation {:#x} is not aligned for its structure",
            buffer as usize
        ));
        return None;
    }
    Some(size_of::<T>())
}

const _: [unsafe extern "system" fn(
    PFLT_INSTANCE,
    *const FILE_OBJECT,
    *mut c_void,
    u32,
    FILE_INFORMATION_CLASS,
    *mut u32,
) -> NTSTATUS; 2] = [
    FltQueryInformationFile,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltQueryInformationFile,
];
