//! Renames, hard links and deletes, sent through the filter as `IRP_MJ_SET_INFORMATION` as the I/O
//! manager sends them ("`IRP_MJ_SET_INFORMATION` (IFS)"): `FileRenameInformation` with a
//! `FILE_RENAME_INFORMATION` buffer, `FileLinkInformation` with a `FILE_LINK_INFORMATION` buffer,
//! `FileDispositionInformation` with a `FILE_DISPOSITION_INFORMATION` buffer.
//!
//! A rename or link to a full path (`\dir\name`) is preceded, as the I/O manager does it, by a
//! create of the target's directory with `SL_OPEN_TARGET_DIRECTORY` (`crate::file`), which reaches
//! filters like any create and is closed after the set-information; the file system takes the new
//! name from that file object's `FileName` and the directory from its file object
//! (`FLT_PARAMETERS.SetFileInformation.ParentOfTarget`), as the fastfat sample's `FatSetRenameInfo`
//! does. A bare name (`name`) renames within the file's directory, with no target open.
//!
//! The file systems' rules: a rename or link to an existing name fails with
//! `STATUS_OBJECT_NAME_COLLISION` unless `ReplaceIfExists` is set (then the name there is removed; a
//! directory there, or a name someone has a handle open by, fails with `STATUS_ACCESS_DENIED`); the
//! target's directory must exist (`STATUS_OBJECT_PATH_NOT_FOUND`). A rename renames the name the
//! handle was opened by; the file's other names stay. Hard links are NTFS's only ("`FILE_LINK_INFORMATION`
//! structure (ntifs.h)"): fastfat answers `STATUS_INVALID_DEVICE_REQUEST` (`FatCommonSetInformation`),
//! and fltsim gives the other file systems the same answer; a directory cannot be linked
//! (`STATUS_FILE_IS_A_DIRECTORY`), nor can a file have more than 1024 names
//! (`STATUS_TOO_MANY_LINKS`). A deleted name stays until the last handle opened by it closes
//! ("`FILE_DISPOSITION_INFORMATION` structure (ntddk.h)": the file is deleted when the last handle is
//! closed), and meanwhile it cannot be opened (`STATUS_DELETE_PENDING`); the file goes with its last
//! name. A handle on a named stream deletes only that stream. A directory that holds anything cannot
//! be deleted (`STATUS_DIRECTORY_NOT_EMPTY`); nor can one move into itself
//! (`STATUS_INVALID_PARAMETER`). FAT and exFAT renames that need new directory entries
//! fail with `STATUS_CANNOT_MAKE` when the target directory is full.
//!
//! Not modeled: renaming a stream (a new name `:name`), which gives `STATUS_OBJECT_NAME_INVALID`;
//! POSIX-semantics renames and deletes (`FileRenameInformationEx`, `FileDispositionInformationEx`).

use std::mem::{offset_of, size_of};

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PARAMETERS;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_DISPOSITION_INFORMATION, FILE_INFORMATION_CLASS, FILE_LINK_INFORMATION,
    FILE_RENAME_INFORMATION, FileDispositionInformation, FileLinkInformation,
    FileRenameInformation,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_SET_INFORMATION, SL_OPEN_TARGET_DIRECTORY};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_CANNOT_MAKE, STATUS_DIRECTORY_NOT_EMPTY,
    STATUS_FILE_IS_A_DIRECTORY, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_MEDIA_WRITE_PROTECTED, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID,
    STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SUCCESS, STATUS_TOO_MANY_LINKS, STATUS_VOLUME_DISMOUNTED,
};

use crate::Sim;
use crate::file::{
    FileHandle, IoResult, OpenOptions, is_directory_path_valid, major, open_file, stream_index,
};
use crate::fs::{LinkId, MAX_LINKS, NodeKey, Refusal, path_key};
use crate::io::{Operation, Outcome, perform};
use crate::volume::{FileSystem, Volume};
use crate::world::{self, World};

// A rename and a link buffer have the same layout, so one builder serves both.
const _: () = assert!(
    offset_of!(FILE_RENAME_INFORMATION, FileName) == offset_of!(FILE_LINK_INFORMATION, FileName)
        && size_of::<FILE_RENAME_INFORMATION>() == size_of::<FILE_LINK_INFORMATION>()
);

impl FileHandle<'_> {
    /// Renames (or moves) the name this handle was opened by: to `new_name`, a path from the volume
    /// root (`\dir\name`: the target's directory is opened first, with `SL_OPEN_TARGET_DIRECTORY`,
    /// as the I/O manager does), or a bare name (`name`) in the same directory.
    /// `IRP_MJ_SET_INFORMATION` with `FileRenameInformation`.
    pub fn rename(&mut self, new_name: &str, replace_if_exists: bool) -> IoResult {
        self.name_operation(FileRenameInformation, new_name, replace_if_exists)
    }

    /// Gives the file another name (an NTFS hard link), `new_name` as for
    /// [`FileHandle::rename`]: `IRP_MJ_SET_INFORMATION` with `FileLinkInformation`.
    pub fn link(&mut self, new_name: &str, replace_if_exists: bool) -> IoResult {
        self.name_operation(FileLinkInformation, new_name, replace_if_exists)
    }

    fn name_operation(
        &mut self,
        class: FILE_INFORMATION_CLASS,
        new_name: &str,
        replace_if_exists: bool,
    ) -> IoResult {
        let _exit = crate::session::checked();
        let target = if new_name.starts_with('\\') {
            let flags = u8::try_from(SL_OPEN_TARGET_DIRECTORY).unwrap_or(0);
            match open_file(self.volume_handle(), new_name, OpenOptions::open(), flags) {
                Ok(target) => Some(target),
                Err(status) => {
                    return IoResult {
                        status,
                        information: 0,
                        reissued: false,
                    };
                }
            }
        } else {
            None
        };
        let name: Vec<u16> = new_name.encode_utf16().collect();
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
        // SAFETY: the buffer is aligned for the structure and holds its header.
        let header = unsafe { &mut *info };
        header.Anonymous.ReplaceIfExists = replace_if_exists;
        header.FileNameLength = u32::try_from(name.len() * 2).unwrap_or(u32::MAX);
        // SAFETY: the name's place, `name_offset` bytes into the buffer, which holds it.
        let name_at = unsafe { info.cast::<u16>().add(name_offset / 2) };
        // SAFETY: the buffer holds the name's `name.len()` units from `name_at`.
        unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), name_at, name.len()) };
        let mut parameters = FLT_PARAMETERS::default();
        parameters.SetFileInformation.Length = u32::try_from(length).unwrap_or(u32::MAX);
        parameters.SetFileInformation.FileInformationClass = class;
        parameters.SetFileInformation.ParentOfTarget = target
            .as_ref()
            .map_or(std::ptr::null_mut(), |t| t.file_object().cast_mut());
        parameters
            .SetFileInformation
            .Anonymous
            .Anonymous
            .ReplaceIfExists = replace_if_exists;
        parameters.SetFileInformation.InfoBuffer = info.cast();
        let result = self.set_information(parameters);
        drop(buffer);
        drop(target);
        result
    }

    /// Deletes what this handle is open on (its name goes when the last handle opened by it closes;
    /// a named stream when its last handle closes): `IRP_MJ_SET_INFORMATION` with
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
            stack_flags: 0,
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
                reissued: false,
            },
            Outcome::FastIoDisallowed => IoResult {
                status: STATUS_INVALID_PARAMETER,
                information: 0,
                reissued: false,
            },
        }
    }
}

impl Sim {
    /// Renames `old` to `new` (a path from the volume root) on `volume` as `MoveFileEx` does: opens
    /// `old`, opens the target's directory (`SL_OPEN_TARGET_DIRECTORY`), sends
    /// `IRP_MJ_SET_INFORMATION` (`FileRenameInformation`) through the filter, closes both. The file
    /// keeps its ID on NTFS and `ReFS`; on FAT and exFAT it gets its new directory entry's.
    ///
    /// # Errors
    /// The open's status (`STATUS_OBJECT_NAME_NOT_FOUND`, ...), the target open's
    /// (`STATUS_OBJECT_PATH_NOT_FOUND` if `new`'s directory does not exist) or the rename's
    /// (`STATUS_OBJECT_NAME_COLLISION` if `new` exists).
    pub fn rename(&self, volume: Volume, old: &str, new: &str) -> Result<(), NTSTATUS> {
        let mut file = self.open(volume, old, OpenOptions::open())?;
        let status = file.rename(new, false).status;
        drop(file);
        if status < 0 { Err(status) } else { Ok(()) }
    }

    /// Gives `existing` on `volume` another name, `new` (a path from the volume root), as
    /// `CreateHardLink` does: opens `existing`, opens the target's directory, sends
    /// `IRP_MJ_SET_INFORMATION` (`FileLinkInformation`) through the filter, closes both. NTFS only.
    ///
    /// # Errors
    /// The opens' statuses, or the link's (`STATUS_OBJECT_NAME_COLLISION`,
    /// `STATUS_INVALID_DEVICE_REQUEST` on file systems without hard links, ...).
    pub fn link(&self, volume: Volume, existing: &str, new: &str) -> Result<(), NTSTATUS> {
        let mut file = self.open(volume, existing, OpenOptions::open())?;
        let status = file.link(new, false).status;
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
    let (class, buffer, length, parent_of_target) = unsafe {
        (
            p.SetFileInformation.FileInformationClass,
            p.SetFileInformation.InfoBuffer,
            p.SetFileInformation.Length,
            p.SetFileInformation.ParentOfTarget,
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
    let name_offset = offset_of!(FILE_RENAME_INFORMATION, FileName);
    if (class != FileRenameInformation && class != FileLinkInformation)
        || (length as usize) < name_offset
    {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    let info = buffer.cast::<FILE_RENAME_INFORMATION>();
    // SAFETY: a FILE_RENAME_INFORMATION (or the same-layout FILE_LINK_INFORMATION) buffer of
    // `length` bytes, at least the header (checked).
    let header = unsafe { &*info };
    // SAFETY: the buffer's first byte is the union's BOOLEAN `ReplaceIfExists`, read as a byte
    // (a caller may write any nonzero value for TRUE, which a Rust bool cannot hold).
    let replace = unsafe { info.cast::<u8>().read() } != 0;
    let units = (header.FileNameLength as usize / 2).min((length as usize - name_offset) / 2);
    // SAFETY: the name's place, `name_offset` bytes into the buffer.
    let start = unsafe { info.cast::<u16>().add(name_offset / 2) };
    // SAFETY: `units` units of the name lie in the buffer's `length` bytes (bounded above).
    let name = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(start, units) });
    let status = world::with(|w| {
        let new_path = match target_path(w, volume, file_object, parent_of_target, &name) {
            Ok(path) => path,
            Err(status) => return status,
        };
        let request = NameRequest {
            volume,
            file_object,
            new_path: &new_path,
            replace,
        };
        if class == FileLinkInformation {
            link(w, &request)
        } else {
            rename(w, &request)
        }
    });
    (status, 0)
}

/// The full path a rename or link names: the target directory's file object's path and the
/// final component left in its `FileName` (a target-directory open), the name as given when it is
/// a full path, or the name in the file's own directory.
fn target_path(
    w: &mut World,
    volume: isize,
    file_object: usize,
    parent_of_target: *mut FILE_OBJECT,
    name: &str,
) -> Result<String, NTSTATUS> {
    if !parent_of_target.is_null() {
        let target = w
            .file_objects
            .get(&(parent_of_target as usize))
            .filter(|t| t.open && t.volume == volume)
            .and_then(|t| t.node)
            .ok_or(STATUS_INVALID_PARAMETER)?;
        let v = w.volume(volume).ok_or(STATUS_VOLUME_DISMOUNTED)?;
        let directory = v.files.node(target).filter(|n| n.directory);
        let directory = directory.ok_or(STATUS_INVALID_PARAMETER)?.path().to_owned();
        // SAFETY: a live file object of an open in progress.
        let name = unsafe { &(*parent_of_target).FileName };
        if name.Buffer.is_null() {
            return Err(STATUS_OBJECT_NAME_INVALID);
        }
        // SAFETY: its FileName describes `Length` bytes of UTF-16 at `Buffer` (the final component
        // the target-directory open left), valid for the operation.
        let units =
            unsafe { std::slice::from_raw_parts(name.Buffer, usize::from(name.Length / 2)) };
        let component = String::from_utf16_lossy(units);
        return Ok(if directory == "\\" {
            format!("\\{component}")
        } else {
            format!("{directory}\\{component}")
        });
    }
    if name.starts_with('\\') {
        return Ok(name.to_owned());
    }
    if name.contains('\\') {
        return Err(STATUS_OBJECT_NAME_INVALID);
    }
    let current = crate::file::current_path(w, file_object).ok_or(STATUS_INVALID_PARAMETER)?;
    let directory = crate::fs::parent_of(&current);
    Ok(if directory == "\\" {
        format!("\\{name}")
    } else {
        format!("{directory}\\{name}")
    })
}

/// A rename or link as the file system received it.
struct NameRequest<'a> {
    volume: isize,
    file_object: usize,
    new_path: &'a str,
    replace: bool,
}

/// The handle's node and the name it was opened by, and whether it is on a named stream.
fn opened(w: &World, file_object: usize) -> Option<(NodeKey, LinkId, bool)> {
    let f = w.file_objects.get(&file_object)?;
    Some((
        f.node?,
        f.link?,
        f.stream.is_some_and(|s| stream_index(s) != 0),
    ))
}

/// The checks a rename and a link share: the file system can change names, the new path is valid
/// and its directory exists, and whatever is at the new path may go. Returns the new parent and
/// the name to remove first.
fn prepare(
    w: &mut World,
    request: &NameRequest<'_>,
    own: (NodeKey, LinkId),
) -> Result<(NodeKey, Option<(NodeKey, LinkId)>), NTSTATUS> {
    if !is_directory_path_valid(request.new_path) {
        return Err(STATUS_OBJECT_NAME_INVALID);
    }
    let v = w
        .volume(request.volume)
        .filter(|v| !v.removed)
        .ok_or(STATUS_VOLUME_DISMOUNTED)?;
    if v.spec.read_only {
        return Err(STATUS_MEDIA_WRITE_PROTECTED);
    }
    let parent = v
        .files
        .parent_directory(request.new_path)
        .ok_or(STATUS_OBJECT_PATH_NOT_FOUND)?;
    let own_path = v
        .files
        .node(own.0)
        .and_then(|n| n.link(own.1))
        .map(|l| path_key(&l.path))
        .unwrap_or_default();
    if path_key(request.new_path).starts_with(&format!("{own_path}\\")) {
        // A directory cannot move into its own subtree.
        return Err(STATUS_INVALID_PARAMETER);
    }
    let Some(target) = v.files.lookup_link(request.new_path).filter(|t| *t != own) else {
        return Ok((parent, None));
    };
    if !request.replace {
        return Err(STATUS_OBJECT_NAME_COLLISION);
    }
    let node = v.files.node(target.0).ok_or(STATUS_INVALID_PARAMETER)?;
    let open = node.link(target.1).is_some_and(|l| l.opens > 0);
    if open || node.directory {
        return Err(STATUS_ACCESS_DENIED);
    }
    Ok((parent, Some(target)))
}

fn rename(w: &mut World, request: &NameRequest<'_>) -> NTSTATUS {
    let Some((key, link, on_stream)) = opened(w, request.file_object) else {
        return STATUS_INVALID_PARAMETER;
    };
    if on_stream {
        // A stream is renamed with a new name ":name" (not modeled); a path is no stream name.
        return STATUS_OBJECT_NAME_INVALID;
    }
    let (parent, replacing) = match prepare(w, request, (key, link)) {
        Ok(prepared) => prepared,
        Err(status) => return status,
    };
    let Some(v) = w.volume(request.volume) else {
        return STATUS_VOLUME_DISMOUNTED;
    };
    match v
        .files
        .rename(key, link, request.new_path, parent, replacing)
    {
        Ok(()) => STATUS_SUCCESS,
        Err(Refusal::DirectoryFull) => STATUS_CANNOT_MAKE,
    }
}

fn link(w: &mut World, request: &NameRequest<'_>) -> NTSTATUS {
    let Some((key, link, on_stream)) = opened(w, request.file_object) else {
        return STATUS_INVALID_PARAMETER;
    };
    let Some(v) = w.volume(request.volume).filter(|v| !v.removed) else {
        return STATUS_VOLUME_DISMOUNTED;
    };
    if v.spec.file_system != FileSystem::Ntfs {
        return STATUS_INVALID_DEVICE_REQUEST;
    }
    let Some(node) = v.files.node(key) else {
        return STATUS_INVALID_PARAMETER;
    };
    if node.directory {
        return STATUS_FILE_IS_A_DIRECTORY;
    }
    if on_stream {
        return STATUS_INVALID_PARAMETER;
    }
    if node.link_count() >= MAX_LINKS {
        return STATUS_TOO_MANY_LINKS;
    }
    let (parent, replacing) = match prepare(w, request, (key, link)) {
        Ok(prepared) => prepared,
        Err(status) => return status,
    };
    if replacing.is_none()
        && w.volume(request.volume)
            .and_then(|v| v.files.lookup_link(request.new_path))
            .is_some()
    {
        // Linking a name to itself: the name exists.
        return STATUS_OBJECT_NAME_COLLISION;
    }
    let Some(v) = w.volume(request.volume) else {
        return STATUS_VOLUME_DISMOUNTED;
    };
    if let Some((node, name)) = replacing {
        v.files.remove_link(node, name);
    }
    v.files.add_link(key, request.new_path, parent);
    STATUS_SUCCESS
}

fn dispose(volume: isize, file_object: usize, delete: bool) -> NTSTATUS {
    world::with(|w| {
        let Some((key, link, _)) = opened(w, file_object) else {
            return STATUS_INVALID_PARAMETER;
        };
        let stream = w
            .file_objects
            .get(&file_object)
            .and_then(|f| f.stream)
            .map_or(0, stream_index);
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return STATUS_VOLUME_DISMOUNTED;
        };
        if v.spec.read_only {
            return STATUS_MEDIA_WRITE_PROTECTED;
        }
        if stream == 0 && delete && v.files.has_children(key) {
            return STATUS_DIRECTORY_NOT_EMPTY;
        }
        let Some(node) = v.files.node_mut(key) else {
            return STATUS_INVALID_PARAMETER;
        };
        if stream != 0 {
            if let Some(named) = node.stream_mut(stream) {
                named.delete_pending = delete;
            }
        } else if let Some(name) = node.link_mut(link) {
            name.delete_pending = delete;
        }
        STATUS_SUCCESS
    })
}
