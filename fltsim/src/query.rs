//! `FltQueryInformationFile`: what a minifilter can ask the simulated file systems about an open
//! file.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_INSTANCE;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_ID_INFORMATION, FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION,
    FILE_STANDARD_INFORMATION, FILE_STREAM_INFORMATION, FileIdInformation, FileInternalInformation,
    FileStandardInformation, FileStreamInformation,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_OVERFLOW, STATUS_INFO_LENGTH_MISMATCH, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS,
};
use windows_sys::Win32::Storage::FileSystem::FILE_ID_128;

use crate::file::{CLUSTER, stream_index};
use crate::irql::PASSIVE_LEVEL;
use crate::verifier::{irql_at_most, violation};
use crate::volume::{FileIdAnswer, FileSystem};
use crate::world::{self, InstanceState};

/// What a query may learn about the stream behind an open file object.
struct Facts {
    id: u128,
    /// The file object is open on a directory (not on one of its named streams).
    directory: bool,
    /// End of file of the stream.
    size: u64,
    /// Names of the node.
    links: usize,
    /// The name the file object was opened by, or its named stream, is deleted.
    delete_pending: bool,
    /// The node's data streams, as `FileStreamInformation` lists them: name and size.
    streams: Vec<(String, u64)>,
}

/// What a query may look at: the stream behind an open file object on `instance`'s volume.
fn open_node(
    routine: &str,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Result<(Facts, FileSystem, u64, FileIdAnswer), NTSTATUS> {
    world::with(|w| {
        let Some(inst) = w.instances.get(&instance).filter(|i| i.state != InstanceState::Gone) else {
            return Err(Err(format!("fltsim: invalid handle: {routine} got instance {instance:#x}, which is not a live instance")));
        };
        let volume = inst.volume;
        if let Some(v) = w.volume(volume) {
            v.counters.query_information += 1;
        }
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
        let (key, link, stream) = (state.node, state.link, state.stream.map(stream_index));
        let v = w.volume(volume).ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        let fs = v.spec.file_system;
        let serial = v.spec.serial;
        let answer = v.spec.file_ids;
        let node = key.and_then(|k| v.files.node(k)).ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        let index = stream.unwrap_or(0);
        let named = node.stream(index);
        let mut streams: Vec<(String, u64)> = Vec::new();
        if !node.directory {
            streams.push((String::new(), node.data.size()));
        }
        streams.extend(node.streams().map(|(_, s)| (s.name.clone(), s.data.size())));
        let facts = Facts {
            id: node.id,
            directory: node.directory && index == 0,
            size: node.data_of(index).map_or(0, crate::data::Data::size),
            links: node.link_count(),
            delete_pending: named.is_some_and(|s| s.delete_pending)
                || link.and_then(|l| node.link(l)).is_some_and(|l| l.delete_pending),
            streams,
        };
        Ok((facts, fs, serial, answer))
    })
    .map_err(|e| match e {
        Ok(status) => status,
        Err(message) => {
            violation(message);
            STATUS_INVALID_PARAMETER
        }
    })
}

/// `FltQueryInformationFile`: `FileInternalInformation`, `FileStandardInformation` (of the stream
/// the file object is open on: its size, the file's number of names, whether the name or stream it
/// was opened by is deleted), `FileIdInformation` and `FileStreamInformation` (NTFS and `ReFS`
/// only). `PASSIVE_LEVEL`. Every call is counted in the volume's [`crate::Counters`].
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
                NumberOfLinks: u32::try_from(node.links).unwrap_or(u32::MAX),
                DeletePending: node.delete_pending,
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
        () if class == FileStreamInformation && fs.has_named_streams() => {
            // SAFETY: the caller's buffer holds `length` bytes.
            let (status, written) =
                unsafe { store_streams(fileinformation, length, &node.streams) };
            if !lengthreturned.is_null() {
                // SAFETY: the caller's optional output variable, checked non-null.
                unsafe { lengthreturned.write(u32::try_from(written).unwrap_or(u32::MAX)) };
            }
            return status;
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

// The entries laid out by `store_streams`: 24 bytes, then the name.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(offset_of!(FILE_STREAM_INFORMATION, StreamName) == 24);

/// Writes `FileStreamInformation`'s entries for `streams` into the caller's buffer: one
/// `FILE_STREAM_INFORMATION` per stream, 8-byte aligned, named `::$DATA` for the unnamed stream and
/// `:name:$DATA` for the others, as NTFS names them ("`FILE_STREAM_INFORMATION` structure
/// (ntifs.h)"). Returns the status and the bytes written: `STATUS_INFO_LENGTH_MISMATCH` if not even
/// the fixed part of an entry fits, `STATUS_BUFFER_OVERFLOW` (with the entries that fit) if not all
/// do (MS-FSA 2.1.5.11.29, "`FileStreamInformation`").
///
/// # Safety
/// `buffer` must be valid for `length` bytes.
unsafe fn store_streams(
    buffer: *mut c_void,
    length: usize,
    streams: &[(String, u64)],
) -> (NTSTATUS, usize) {
    let fixed = offset_of!(FILE_STREAM_INFORMATION, StreamName);
    if length < fixed {
        return (STATUS_INFO_LENGTH_MISMATCH, 0);
    }
    if !buffer.cast::<FILE_STREAM_INFORMATION>().is_aligned() {
        violation(format!(
            "fltsim: FltQueryInformationFile: FileInformation {:#x} is not aligned for its structure",
            buffer as usize
        ));
        return (STATUS_INVALID_PARAMETER, 0);
    }
    // The entries are laid out in a byte vector (little-endian, as on x64), then copied.
    let mut bytes: Vec<u8> = Vec::new();
    let mut previous = None::<usize>;
    let mut status = STATUS_SUCCESS;
    for (name, size) in streams {
        let units: Vec<u16> = format!(":{name}:$DATA").encode_utf16().collect();
        let start = bytes.len().next_multiple_of(8);
        if start + fixed + units.len() * 2 > length {
            status = STATUS_BUFFER_OVERFLOW;
            break;
        }
        bytes.resize(start, 0);
        if let Some(previous) = previous {
            let offset = u32::try_from(start - previous).unwrap_or(u32::MAX);
            bytes[previous..previous + 4].copy_from_slice(&offset.to_le_bytes());
        }
        let allocation = size.div_ceil(CLUSTER) * CLUSTER;
        bytes.extend_from_slice(&0_u32.to_le_bytes());
        bytes.extend_from_slice(
            &u32::try_from(units.len() * 2)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        bytes.extend_from_slice(&i64::try_from(*size).unwrap_or(i64::MAX).to_le_bytes());
        bytes.extend_from_slice(&i64::try_from(allocation).unwrap_or(i64::MAX).to_le_bytes());
        bytes.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        previous = Some(start);
    }
    // SAFETY: the caller's buffer holds `length` bytes, and `bytes` is no longer (checked per
    // entry).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len()) };
    (status, bytes.len())
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
