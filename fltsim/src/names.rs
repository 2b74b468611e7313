//! File names: `FltGetFileNameInformation`, `FltReferenceFileNameInformation`,
//! `FltReleaseFileNameInformation` and `FltParseFileNameInformation`.

use std::mem::size_of;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_SHORT,
    FLTFL_FILE_NAME_PARSED_EXTENSION, FLTFL_FILE_NAME_PARSED_FINAL_COMPONENT,
    FLTFL_FILE_NAME_PARSED_PARENT_DIR, FLTFL_FILE_NAME_PARSED_STREAM,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_PAGING_IO};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_INVALID_NAME_REQUEST, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED,
    STATUS_SUCCESS, UNICODE_STRING,
};

use crate::filter::unicode;
use crate::irql::APC_LEVEL;
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, NameInfo};

/// Owns a `FLT_FILE_NAME_INFORMATION` and the buffer its strings point into.
pub(crate) struct NameStorage {
    info: Box<FLT_FILE_NAME_INFORMATION>,
    buffer: Box<[u16]>,
    /// Length in UTF-16 units of the volume part.
    volume_units: usize,
}

// SAFETY: the storage is plain memory; the strings point into `buffer`, owned alongside.
unsafe impl Send for NameStorage {}

impl NameStorage {
    fn new(volume_name: &str, path: &str, format: u32) -> Self {
        let buffer: Box<[u16]> = format!("{volume_name}{path}").encode_utf16().collect();
        let volume_units = volume_name.encode_utf16().count();
        let empty = UNICODE_STRING {
            Length: 0,
            MaximumLength: 0,
            Buffer: std::ptr::null_mut(),
        };
        let mut info = Box::new(FLT_FILE_NAME_INFORMATION {
            Size: u16::try_from(size_of::<FLT_FILE_NAME_INFORMATION>()).unwrap_or(u16::MAX),
            NamesParsed: 0,
            Format: format,
            Name: unicode(&buffer),
            Volume: unicode(&buffer[..volume_units]),
            Share: empty,
            Extension: empty,
            Stream: empty,
            FinalComponent: empty,
            ParentDir: empty,
        });
        info.Volume.MaximumLength = info.Volume.Length;
        Self {
            info,
            buffer,
            volume_units,
        }
    }

    fn address(&self) -> usize {
        std::ptr::from_ref::<FLT_FILE_NAME_INFORMATION>(&self.info) as usize
    }

    /// Fills `FinalComponent`, `Extension`, `ParentDir` and `Stream` (`FltParseFileNameInformation`).
    fn parse(&mut self) {
        let path = &self.buffer[self.volume_units..];
        let slash = u16::from(b'\\');
        let dot = u16::from(b'.');
        let last = path.iter().rposition(|&c| c == slash).map_or(0, |i| i + 1);
        let base = self.volume_units;
        let part = |from: usize, to: usize| UNICODE_STRING {
            Length: u16::try_from((to - from) * 2).unwrap_or(u16::MAX),
            MaximumLength: u16::try_from((to - from) * 2).unwrap_or(u16::MAX),
            Buffer: if to > from {
                self.buffer[base + from..].as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            },
        };
        self.info.ParentDir = part(0, last);
        self.info.FinalComponent = part(last, path.len());
        self.info.Extension = match path[last..].iter().rposition(|&c| c == dot) {
            Some(i) => part(last + i + 1, path.len()),
            None => part(0, 0),
        };
        self.info.Stream = part(0, 0);
        self.info.NamesParsed = u16::try_from(
            FLTFL_FILE_NAME_PARSED_FINAL_COMPONENT
                | FLTFL_FILE_NAME_PARSED_EXTENSION
                | FLTFL_FILE_NAME_PARSED_STREAM
                | FLTFL_FILE_NAME_PARSED_PARENT_DIR,
        )
        .unwrap_or(0);
    }
}

/// Name format flags (`FLT_FILE_NAME_*` formats) mask.
const FORMAT_MASK: u32 = 0xFF;
/// Query method flags mask.
const QUERY_MASK: u32 = 0xFF00;

/// `FltGetFileNameInformation`: normalized or opened names, allocated and reference-counted by
/// fltsim (release each with `FltReleaseFileNameInformation`; leaks are reported). IRQL <= `APC_LEVEL`.
///
/// `STATUS_FLT_INVALID_NAME_REQUEST` for paging I/O, in post-close, and in a post-create whose
/// create failed; `STATUS_INVALID_PARAMETER` without exactly one format and one query method;
/// `FLT_FILE_NAME_SHORT` is not modeled (`STATUS_NOT_SUPPORTED`). No name cache is simulated:
/// every query method queries the file system.
///
/// # Safety
/// `filenameinformation` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetFileNameInformation(
    callbackdata: *const FLT_CALLBACK_DATA,
    nameoptions: u32,
    filenameinformation: *mut *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS {
    if !irql_at_most("FltGetFileNameInformation", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if filenameinformation.is_null() {
        violation("fltsim: FltGetFileNameInformation: FileNameInformation is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { filenameinformation.write(std::ptr::null_mut()) };
    let state = world::with(|w| w.callback_data.get(&(callbackdata as usize)).copied());
    let Some(state) = state else {
        violation(format!(
            "fltsim: invalid handle: FltGetFileNameInformation got callback data {:#x}, which is not \
             an operation in progress",
            callbackdata as usize
        ));
        return STATUS_INVALID_PARAMETER;
    };
    let format = nameoptions & FORMAT_MASK;
    let method = nameoptions & QUERY_MASK;
    if !(FLT_FILE_NAME_NORMALIZED..=FLT_FILE_NAME_SHORT).contains(&format) || method == 0 {
        return STATUS_INVALID_PARAMETER;
    }
    if format == FLT_FILE_NAME_SHORT {
        return STATUS_NOT_SUPPORTED;
    }
    let post_close = state.post && u32::from(state.major) == IRP_MJ_CLOSE;
    let failed_create = state.post && u32::from(state.major) == IRP_MJ_CREATE && state.status < 0;
    if state.irp_flags & IRP_PAGING_IO != 0 || post_close || failed_create {
        return STATUS_FLT_INVALID_NAME_REQUEST;
    }
    let names = world::with(|w| {
        let fo = w.file_objects.get(&state.file_object)?;
        let (volume, node, opened_path) = (fo.volume, fo.node, fo.path.clone());
        let v = w.volume(volume)?;
        let stored = node
            .and_then(|key| v.files.node(key))
            .map(|f| f.path.clone());
        Some((v.spec.name.clone(), opened_path, stored))
    });
    let Some((volume_name, opened_path, stored)) = names else {
        return STATUS_INVALID_PARAMETER;
    };
    let path = if format == FLT_FILE_NAME_NORMALIZED {
        stored.unwrap_or(opened_path)
    } else {
        opened_path
    };
    let storage = NameStorage::new(&volume_name, &path, format);
    let address = storage.address();
    world::with(|w| {
        w.names.insert(
            address,
            NameInfo {
                references: 1,
                storage,
            },
        )
    });
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { filenameinformation.write(address as *mut FLT_FILE_NAME_INFORMATION) };
    STATUS_SUCCESS
}

/// Adjusts the references of a name information; `None` if it is not live.
fn name_reference(address: usize, delta: isize) -> Option<()> {
    world::with(|w| {
        let info = w.names.get_mut(&address)?;
        info.references = info.references.checked_add_signed(delta)?;
        if info.references == 0 {
            w.names.remove(&address);
        }
        Some(())
    })
}

/// `FltReleaseFileNameInformation`. IRQL <= `APC_LEVEL` (the structure is paged).
///
/// # Safety
/// None beyond the routine's contract; an unknown or over-released structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReleaseFileNameInformation(
    filenameinformation: *const FLT_FILE_NAME_INFORMATION,
) {
    if !irql_at_most("FltReleaseFileNameInformation", APC_LEVEL) {
        return;
    }
    if name_reference(filenameinformation as usize, -1).is_none() {
        violation(format!(
            "fltsim: FltReleaseFileNameInformation: {:#x} is not a live FLT_FILE_NAME_INFORMATION \
             (released more times than referenced)",
            filenameinformation as usize
        ));
    }
}

/// `FltReferenceFileNameInformation`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReferenceFileNameInformation(
    filenameinformation: *const FLT_FILE_NAME_INFORMATION,
) {
    if !irql_at_most("FltReferenceFileNameInformation", APC_LEVEL) {
        return;
    }
    if name_reference(filenameinformation as usize, 1).is_none() {
        invalid_handle(
            "FltReferenceFileNameInformation",
            "name information",
            filenameinformation as isize,
        );
    }
}

/// `FltParseFileNameInformation`: fills the parsed components. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltParseFileNameInformation(
    filenameinformation: *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS {
    if !irql_at_most("FltParseFileNameInformation", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let parsed = world::with(|w| {
        w.names
            .get_mut(&(filenameinformation as usize))
            .map(|n| n.storage.parse())
    });
    if parsed.is_none() {
        invalid_handle(
            "FltParseFileNameInformation",
            "name information",
            filenameinformation as isize,
        );
        return STATUS_INVALID_PARAMETER;
    }
    STATUS_SUCCESS
}

const _: [unsafe extern "system" fn(
    *const FLT_CALLBACK_DATA,
    u32,
    *mut *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS; 2] = [
    FltGetFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetFileNameInformation,
];
const _: [unsafe extern "system" fn(*const FLT_FILE_NAME_INFORMATION); 4] = [
    FltReleaseFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleaseFileNameInformation,
    FltReferenceFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReferenceFileNameInformation,
];
const _: [unsafe extern "system" fn(*mut FLT_FILE_NAME_INFORMATION) -> NTSTATUS; 2] = [
    FltParseFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltParseFileNameInformation,
];
