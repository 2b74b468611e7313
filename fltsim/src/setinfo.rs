//! Renames and deletes, sent through the filter as `IRP_MJ_SET_INFORMATION` as the I/O manager
//! sends them ("`IRP_MJ_SET_INFORMATION` (IFS)"): `FileRenameInformation` with a
//! `FILE_RENAME_INFORMATION` buffer, `FileDispositionInformation` with a
//! `FILE_DISPOSITION_INFORMATION` buffer.
//!
//! The file systems' rules: a rename to an existing name fails with `STATUS_OBJECT_NAME_COLLISION`
//! unless `ReplaceIfExists` is set (then a file there is deleted; a directory there, or a file
//! someone has open, fails with `STATUS_ACCESS_DENIED`); the target's directory must exist
//! (`STATUS_OBJECT_PATH_NOT_FOUND`). A deleted file's name stays until its last handle closes
//! ("`FILE_DISPOSITION_INFORMATION` structure (ntddk.h)": the file is deleted when the last handle
//! is closed), and meanwhile it cannot be opened (`STATUS_DELETE_PENDING`); a directory that holds
//! anything cannot be deleted (`STATUS_DIRECTORY_NOT_EMPTY`).
//!
//! Not modeled: the target-directory open (`SL_OPEN_TARGET_DIRECTORY`) the I/O manager issues
//! before a rename: `ParentOfTarget` is NULL and `FileName` is the target's path from the volume
//! root.

use std::mem::{offset_of, size_of};

use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PARAMETERS;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_DISPOSITION_INFORMATION, FILE_RENAME_INFORMATION, FileDispositionInformation,
    FileRenameInformation,
};
use windows_sys::Wdk::System::SystemServices::IRP_MJ_SET_INFORMATION;
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_DIRECTORY_NOT_EMPTY, STATUS_INVALID_PARAMETER,
    STATUS_MEDIA_WRITE_PROTECTED, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID,
    STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SUCCESS, STATUS_VOLUME_DISMOUNTED,
};

use crate::Sim;
use crate::file::{
    FileHandle, IoResult, OpenOptions, default_stream, is_directory_path_valid, major,
};
use crate::io::{Operation, Outcome, perform};
use crate::volume::Volume;
use crate::world;

impl FileHandle<'_> {
    /// Renames (or moves) the file to `new_path`, a path from the volume root:
    /// `IRP_MJ_SET_INFORMATION` with `FileRenameInformation`.
    pub fn rename(&mut self, new_path: &str, replace_if_exists: bool) -> IoResult {
        let _exit = crate::session::checked();
        let name: Vec<u16> = new_path.encode_utf16().collect();
        let name_offset = offset_of!(FILE_RENAME_INFORMATION, FileName);
        let length = name_offset + name.len() * 2;
        // u64 words keep the buffer aligned for the structure.
        let mut buffer = vec![
            0_u64;
            length
                .div_ceil(8)
                .max(size_of::<FILE_RENAME_INFORMATION>() / 8)
        ];
        let info = buffer.as_mut_ptr().cast::<FILE_RENAME_INFORMATION>();
        // SAFETY: the buffer is aligned and holds the header and the name.
        unsafe {
            (*info).Anonymous.ReplaceIfExists = replace_if_exists;
            (*info).FileNameLength = u32::try_from(name.len() * 2).unwrap_or(u32::MAX);
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                info.cast::<u16>().add(name_offset / 2),
                name.len(),
            );
        }
        let mut parameters = FLT_PARAMETERS::default();
        parameters.SetFileInformation.Length = u32::try_from(length).unwrap_or(u32::MAX);
        parameters.SetFileInformation.FileInformationClass = FileRenameInformation;
        parameters
            .SetFileInformation
            .Anonymous
            .Anonymous
            .ReplaceIfExists = replace_if_exists;
        parameters.SetFileInformation.InfoBuffer = info.cast();
        let result = self.set_information(parameters);
        drop(buffer);
        result
    }

    /// Deletes the file (its name goes when the last handle closes): `IRP_MJ_SET_INFORMATION` with
    /// `FileDispositionInformation`.
    pub fn delete(&mut self) -> IoResult {
        let _exit = crate::session::checked();
        let mut info = FILE_DISPOSITION_INFORMATION { DeleteFile: true };
        let mut parameters = FLT_PARAMETERS::default();
        parameters.SetFileInformation.Length =
            u32::try_from(size_of::<FILE_DISPOSITION_INFORMATION>()).unwrap_or(0);
        parameters.SetFileInformation.FileInformationClass = FileDispositionInformation;
        parameters.SetFileInformation.InfoBuffer = (&raw mut info).cast();
        self.set_information(parameters)
    }

    fn set_information(&mut self, parameters: FLT_PARAMETERS) -> IoResult {
        let op = Operation {
            major: major(IRP_MJ_SET_INFORMATION),
            minor: 0,
            irp_flags: 0,
            fast_io: false,
            file_object: self.raw_file_object(),
            volume: self.volume_handle(),
            parameters,
        };
        let (file_object, volume) = (op.file_object as usize, self.volume_handle());
        match perform(&op, &mut |p| set_in_file_system(volume, file_object, p)) {
            Outcome::Done(status, information) => IoResult {
                status,
                information,
            },
            Outcome::FastIoDisallowed => IoResult {
                status: STATUS_INVALID_PARAMETER,
                information: 0,
            },
        }
    }
}

impl Sim {
    /// Renames `old` to `new` on `volume` as `MoveFileEx` does: opens `old`, sends
    /// `IRP_MJ_SET_INFORMATION` (`FileRenameInformation`) through the filter, closes. The file keeps
    /// its ID on NTFS and `ReFS`; on FAT and exFAT it gets its new directory entry's.
    ///
    /// # Errors
    /// The open's status (`STATUS_OBJECT_NAME_NOT_FOUND`, ...) or the rename's
    /// (`STATUS_OBJECT_NAME_COLLISION` if `new` exists, `STATUS_OBJECT_PATH_NOT_FOUND` if its
    /// directory does not).
    pub fn rename(&self, volume: Volume, old: &str, new: &str) -> Result<(), NTSTATUS> {
        let mut file = self.open(volume, old, OpenOptions::open())?;
        let status = file.rename(new, false).status;
        drop(file);
        if status < 0 { Err(status) } else { Ok(()) }
    }

    /// Deletes `path` on `volume` as `DeleteFile` does: opens it, sends `IRP_MJ_SET_INFORMATION`
    /// (`FileDispositionInformation`) through the filter, closes.
    ///
    /// # Errors
    /// The open's status or the delete's (`STATUS_DIRECTORY_NOT_EMPTY`, ...).
    pub fn delete(&self, volume: Volume, path: &str) -> Result<(), NTSTATUS> {
        let mut file = self.open(volume, path, OpenOptions::open())?;
        let status = file.delete().status;
        drop(file);
        if status < 0 { Err(status) } else { Ok(()) }
    }
}

/// The file system's `IRP_MJ_SET_INFORMATION`, with the parameters as the filter left them.
fn set_in_file_system(volume: isize, file_object: usize, p: &FLT_PARAMETERS) -> (NTSTATUS, usize) {
    // SAFETY: the operation set the SetFileInformation member; the buffer lives for the call.
    let (class, buffer, length) = unsafe {
        (
            p.SetFileInformation.FileInformationClass,
            p.SetFileInformation.InfoBuffer,
            p.SetFileInformation.Length,
        )
    };
    if buffer.is_null() {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    if class == FileDispositionInformation {
        // SAFETY: a FILE_DISPOSITION_INFORMATION buffer (checked non-null).
        let delete = unsafe { (*buffer.cast::<FILE_DISPOSITION_INFORMATION>()).DeleteFile };
        return (dispose(volume, file_object, delete), 0);
    }
    if class != FileRenameInformation
        || (length as usize) < offset_of!(FILE_RENAME_INFORMATION, FileName)
    {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    let info = buffer.cast::<FILE_RENAME_INFORMATION>();
    // SAFETY: a FILE_RENAME_INFORMATION buffer of `length` bytes whose name fits in it.
    let (replace, name) = unsafe {
        let units = (*info).FileNameLength as usize / 2;
        let name = info
            .cast::<u16>()
            .add(offset_of!(FILE_RENAME_INFORMATION, FileName) / 2);
        (
            (*info).Anonymous.ReplaceIfExists,
            String::from_utf16_lossy(std::slice::from_raw_parts(name, units)),
        )
    };
    (rename(volume, file_object, &name, replace), 0)
}

fn dispose(volume: isize, file_object: usize, delete: bool) -> NTSTATUS {
    world::with(|w| {
        let Some(key) = w.file_objects.get(&file_object).and_then(|f| f.node) else {
            return STATUS_INVALID_PARAMETER;
        };
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return STATUS_VOLUME_DISMOUNTED;
        };
        if v.spec.read_only {
            return STATUS_MEDIA_WRITE_PROTECTED;
        }
        if delete && v.files.has_children(key) {
            return STATUS_DIRECTORY_NOT_EMPTY;
        }
        if let Some(node) = v.files.node_mut(key) {
            node.delete_pending = delete;
        }
        STATUS_SUCCESS
    })
}

fn rename(volume: isize, file_object: usize, new_path: &str, replace: bool) -> NTSTATUS {
    if !is_directory_path_valid(new_path) {
        return STATUS_OBJECT_NAME_INVALID;
    }
    world::with(|w| {
        let Some(key) = w.file_objects.get(&file_object).and_then(|f| f.node) else {
            return STATUS_INVALID_PARAMETER;
        };
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return STATUS_VOLUME_DISMOUNTED;
        };
        if v.spec.read_only {
            return STATUS_MEDIA_WRITE_PROTECTED;
        }
        let Some(parent) = v.files.parent_directory(new_path) else {
            return STATUS_OBJECT_PATH_NOT_FOUND;
        };
        if let Some(target) = v.files.lookup(new_path)
            && target != key
        {
            let target_open = v.open_streams.contains_key(&default_stream(target));
            let target_is_directory = v.files.node(target).is_some_and(|n| n.directory);
            if !replace {
                return STATUS_OBJECT_NAME_COLLISION;
            }
            if target_open || target_is_directory {
                return STATUS_ACCESS_DENIED;
            }
            v.files.remove(target);
        }
        v.files.rename(key, new_path, parent);
        STATUS_SUCCESS
    })
}
