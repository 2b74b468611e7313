//! Files and file objects of the simulated file systems, the I/O a test issues on them
//! ([`FileHandle`]), and the routines a minifilter uses to ask about a file:
//! `FltQueryInformationFile`, `FltGetFileNameInformation` and its reference routines.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::{FILE_OBJECT, IO_SECURITY_CONTEXT};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_SHORT,
    FLT_PARAMETERS, FLTFL_FILE_NAME_PARSED_EXTENSION, FLTFL_FILE_NAME_PARSED_FINAL_COMPONENT,
    FLTFL_FILE_NAME_PARSED_PARENT_DIR, FLTFL_FILE_NAME_PARSED_STREAM, PFLT_INSTANCE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_DIRECTORY_FILE, FILE_ID_INFORMATION, FILE_INFORMATION_CLASS,
    FILE_INTERNAL_INFORMATION, FILE_OPEN, FILE_OPEN_IF, FILE_STANDARD_INFORMATION,
    FileIdInformation, FileInternalInformation, FileStandardInformation,
};
use windows_sys::Wdk::System::SystemServices::{
    FO_SYNCHRONOUS_IO, FO_VOLUME_OPEN, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_READ,
    IRP_MJ_WRITE, IRP_NOCACHE, IRP_PAGING_IO,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_END_OF_FILE, STATUS_FLT_INVALID_NAME_REQUEST, STATUS_INFO_LENGTH_MISMATCH,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_MEDIA_WRITE_PROTECTED,
    STATUS_NOT_A_DIRECTORY, STATUS_NOT_SUPPORTED, STATUS_OBJECT_NAME_COLLISION,
    STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND,
    STATUS_SUCCESS, STATUS_VOLUME_DISMOUNTED, UNICODE_STRING,
};
use windows_sys::Win32::Storage::FileSystem::FILE_ID_128;
use windows_sys::Win32::System::WindowsProgramming::{FILE_CREATED, FILE_OPENED};

use crate::Sim;
use crate::filter::unicode;
use crate::io::{Operation, Outcome, perform};
use crate::irql::{APC_LEVEL, PASSIVE_LEVEL};
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::volume::{FileSystem, Volume};
use crate::world::{self, FileNode, FileObjectState, InstanceState, NameInfo};

/// `IO_TYPE_FILE`.
const IO_TYPE_FILE: i16 = 5;
/// Cluster size used for `AllocationSize`.
const CLUSTER: u64 = 4096;

/// How [`Sim::open`] opens a file.
// Four independent create flags, as `NtCreateFile` has them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Create the file if it does not exist (`FILE_OPEN_IF`).
    pub create: bool,
    /// Create it, failing if it exists (`FILE_CREATE`).
    pub create_new: bool,
    /// Open or create a directory (`FILE_DIRECTORY_FILE`).
    pub directory: bool,
    /// Open the volume itself (`FO_VOLUME_OPEN`; the path is ignored).
    pub volume_open: bool,
}

impl OpenOptions {
    /// Open an existing file.
    #[must_use]
    pub fn open() -> Self {
        Self::default()
    }

    /// Open, creating the file if needed.
    #[must_use]
    pub fn create() -> Self {
        Self {
            create: true,
            ..Self::default()
        }
    }

    /// Open or create a directory.
    #[must_use]
    pub fn directory() -> Self {
        Self {
            create: true,
            directory: true,
            ..Self::default()
        }
    }

    /// Open the volume.
    #[must_use]
    pub fn volume() -> Self {
        Self {
            volume_open: true,
            ..Self::default()
        }
    }
}

/// The result of an I/O operation: its final status and `IoStatus.Information`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoResult {
    /// Final `NTSTATUS`.
    pub status: NTSTATUS,
    /// `IoStatus.Information` (bytes transferred for reads and writes).
    pub information: usize,
}

/// A file object and its name buffer, at stable addresses for the driver.
struct FileObjectBox {
    object: FILE_OBJECT,
    name: Box<[u16]>,
}

/// An open file: the simulated `FILE_OBJECT` a user handle refers to.
///
/// `Send`, so tests can move handles to other threads; every method issues one operation through
/// the filter and the file system. Dropping the handle closes it ([`FileHandle::close`]).
pub struct FileHandle<'sim> {
    object: Box<FileObjectBox>,
    volume: isize,
    closed: bool,
    _sim: PhantomData<&'sim Sim>,
}

// SAFETY: the file object is owned by the handle; the driver only sees it during operations that
// the handle's owner issues, and the simulator's own state about it is behind its lock.
unsafe impl Send for FileHandle<'_> {}

fn is_directory_path_valid(path: &str) -> bool {
    path.starts_with('\\')
        && !path.contains(['/', ':', '*', '?', '"', '<', '>', '|'])
        && !path[1..].split('\\').any(str::is_empty)
}

/// The upper-cased key of `path` (names compare case-insensitively).
fn key(path: &str) -> String {
    path.to_uppercase()
}

/// The parent directory of `path` (`\` for top-level names).
fn parent(path: &str) -> &str {
    match path.rfind('\\') {
        Some(0) | None => "\\",
        Some(index) => &path[..index],
    }
}

impl Sim {
    /// Puts a file of `size` bytes at `path` on `volume` without any I/O (test setup).
    ///
    /// # Panics
    /// If the path is invalid, its directory does not exist, or the volume is unknown.
    pub fn create_file(&self, volume: Volume, path: &str, size: u64) -> u128 {
        put(volume, path, size, false, None)
    }

    /// Like [`Sim::create_file`] with a chosen file id: on `ReFS`, two ids with the same low 64 bits
    /// give the same `FileInternalInformation` (64-bit) id.
    ///
    /// # Panics
    /// As [`Sim::create_file`].
    pub fn create_file_with_id(&self, volume: Volume, path: &str, size: u64, id: u128) -> u128 {
        put(volume, path, size, false, Some(id))
    }

    /// Puts a directory at `path` on `volume` without any I/O (test setup).
    ///
    /// # Panics
    /// As [`Sim::create_file`].
    pub fn create_directory(&self, volume: Volume, path: &str) -> u128 {
        put(volume, path, 0, true, None)
    }

    /// The file id of `path` on `volume`, if it exists (the full 128-bit id on `ReFS`).
    #[must_use]
    pub fn file_id(&self, volume: Volume, path: &str) -> Option<u128> {
        world::with(|w| w.volume(volume.0)?.files.get(&key(path)).map(|f| f.id))
    }

    /// The size of `path` on `volume`, if it exists.
    #[must_use]
    pub fn file_size(&self, volume: Volume, path: &str) -> Option<u64> {
        world::with(|w| w.volume(volume.0)?.files.get(&key(path)).map(|f| f.size))
    }

    /// Renames `old` to `new` on `volume` in the file system (same file id, open handles stay
    /// valid). No `IRP_MJ_SET_INFORMATION` is sent through the filter.
    ///
    /// # Errors
    /// `STATUS_OBJECT_NAME_NOT_FOUND` if `old` does not exist, `STATUS_OBJECT_NAME_COLLISION` if
    /// `new` does, `STATUS_OBJECT_PATH_NOT_FOUND` if `new`'s directory does not.
    pub fn rename(&self, volume: Volume, old: &str, new: &str) -> Result<(), NTSTATUS> {
        if !is_directory_path_valid(new) {
            return Err(STATUS_OBJECT_NAME_INVALID);
        }
        world::with(|w| {
            let v = w.volume(volume.0).ok_or(STATUS_VOLUME_DISMOUNTED)?;
            if v.files.contains_key(&key(new)) {
                return Err(STATUS_OBJECT_NAME_COLLISION);
            }
            let dir = parent(new);
            if dir != "\\" && !v.files.get(&key(dir)).is_some_and(|f| f.directory) {
                return Err(STATUS_OBJECT_PATH_NOT_FOUND);
            }
            let mut node = v
                .files
                .remove(&key(old))
                .ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            new.clone_into(&mut node.path);
            v.files.insert(key(new), node);
            Ok(())
        })
    }

    /// Opens `path` on `volume` from any thread: sends `IRP_MJ_CREATE` through the filter (pre-op,
    /// file system, post-op at `PASSIVE_LEVEL`) and returns the open file.
    ///
    /// # Errors
    /// The create's failure status (`STATUS_OBJECT_NAME_NOT_FOUND`, `STATUS_NOT_A_DIRECTORY`, a
    /// status the filter completed the create with, ...).
    pub fn open(
        &self,
        volume: Volume,
        path: &str,
        options: OpenOptions,
    ) -> Result<FileHandle<'_>, NTSTATUS> {
        let _exit = crate::session::checked();
        let path = if options.volume_open {
            String::new()
        } else {
            path.to_owned()
        };
        let name: Box<[u16]> = path.encode_utf16().collect();
        let mut object = Box::new(FileObjectBox {
            // SAFETY: FILE_OBJECT is plain data for which all-zero bytes are valid.
            object: unsafe { std::mem::zeroed() },
            name,
        });
        object.object.Type = IO_TYPE_FILE;
        object.object.Size = i16::try_from(size_of::<FILE_OBJECT>()).unwrap_or(i16::MAX);
        object.object.FileName = unicode(&object.name);
        object.object.Flags = FO_SYNCHRONOUS_IO
            | if options.volume_open {
                FO_VOLUME_OPEN
            } else {
                0
            };
        object.object.ReadAccess = true;
        object.object.WriteAccess = true;
        let file_object: *mut FILE_OBJECT = &raw mut object.object;
        world::with(|w| {
            w.file_objects.insert(
                file_object as usize,
                FileObjectState {
                    volume: volume.0,
                    stream: None,
                    path: path.clone(),
                    open: false,
                    volume_open: options.volume_open,
                },
            );
        });
        let disposition = if options.create_new {
            FILE_CREATE
        } else if options.create {
            FILE_OPEN_IF
        } else {
            FILE_OPEN
        };
        let create_options = if options.directory {
            FILE_DIRECTORY_FILE
        } else {
            0
        };
        let mut security = IO_SECURITY_CONTEXT {
            SecurityQos: std::ptr::null_mut(),
            AccessState: std::ptr::null_mut(),
            DesiredAccess: 0x0012_019F, // FILE_GENERIC_READ | FILE_GENERIC_WRITE
            FullCreateOptions: create_options,
        };
        let mut parameters = FLT_PARAMETERS::default();
        parameters.Create.SecurityContext = &raw mut security;
        parameters.Create.Options = (disposition << 24) | create_options;
        parameters.Create.ShareAccess = 7;
        let op = Operation {
            major: major(IRP_MJ_CREATE),
            minor: 0,
            irp_flags: 0,
            fast_io: false,
            file_object,
            volume: volume.0,
            parameters,
        };
        let outcome = perform(&op, &mut |_| {
            create_in_file_system(volume.0, file_object, options)
        });
        let Outcome::Done(status, _) = outcome else {
            unreachable!("a create is never fast I/O");
        };
        let opened = world::with(|w| {
            w.file_objects
                .get(&(file_object as usize))
                .is_some_and(|f| f.open)
        });
        if status < 0 || !opened {
            if opened {
                // The filter failed a create the file system had opened (it would send
                // FltCancelFileOpen): the file object goes away with no cleanup or close.
                release_stream(volume.0, file_object as usize);
            }
            world::with(|w| w.file_objects.remove(&(file_object as usize)));
            return Err(if status < 0 {
                status
            } else {
                STATUS_INVALID_DEVICE_REQUEST
            });
        }
        Ok(FileHandle {
            object,
            volume: volume.0,
            closed: false,
            _sim: PhantomData,
        })
    }
}

/// Adds a file or directory to `volume`'s file system (test setup, no I/O).
fn put(volume: Volume, path: &str, size: u64, directory: bool, id: Option<u128>) -> u128 {
    assert!(
        is_directory_path_valid(path),
        "fltsim: Sim::create_file: invalid path {path:?}"
    );
    world::with(|w| {
        let v = w
            .volume(volume.0)
            .expect("fltsim: Sim::create_file: unknown volume");
        let dir = parent(path);
        assert!(
            dir == "\\" || v.files.get(&key(dir)).is_some_and(|f| f.directory),
            "fltsim: Sim::create_file: directory {dir:?} does not exist"
        );
        let id = id.unwrap_or_else(|| new_id(v));
        v.files.insert(
            key(path),
            FileNode {
                path: path.to_owned(),
                id,
                size,
                directory,
            },
        );
        id
    })
}

/// The file system's create: opens or creates the file and records the file object's stream.
fn create_in_file_system(
    volume: isize,
    file_object: *mut FILE_OBJECT,
    options: OpenOptions,
) -> (NTSTATUS, usize) {
    world::with(|w| {
        let Some(state) = w.file_objects.get(&(file_object as usize)) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let path = state.path.clone();
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return (STATUS_VOLUME_DISMOUNTED, 0);
        };
        if options.volume_open {
            if let Some(f) = w.file_objects.get_mut(&(file_object as usize)) {
                f.open = true;
            }
            return (STATUS_SUCCESS, FILE_OPENED as usize);
        }
        if !is_directory_path_valid(&path) {
            return (STATUS_OBJECT_NAME_INVALID, 0);
        }
        let read_only = v.spec.read_only;
        let (id, information) = match v.files.get(&key(&path)) {
            Some(_) if options.create_new => return (STATUS_OBJECT_NAME_COLLISION, 0),
            Some(node) if options.directory && !node.directory => {
                return (STATUS_NOT_A_DIRECTORY, 0);
            }
            Some(node) => (node.id, FILE_OPENED),
            None if !(options.create || options.create_new) => {
                return (STATUS_OBJECT_NAME_NOT_FOUND, 0);
            }
            None => {
                let dir = parent(&path);
                if dir != "\\" && !v.files.get(&key(dir)).is_some_and(|f| f.directory) {
                    return (STATUS_OBJECT_PATH_NOT_FOUND, 0);
                }
                if read_only {
                    return (STATUS_MEDIA_WRITE_PROTECTED, 0);
                }
                let id = new_id(v);
                let node = FileNode {
                    path: path.clone(),
                    id,
                    size: 0,
                    directory: options.directory,
                };
                v.files.insert(key(&path), node);
                (id, FILE_CREATED)
            }
        };
        *v.open_streams.entry(id).or_default() += 1;
        if let Some(f) = w.file_objects.get_mut(&(file_object as usize)) {
            f.stream = Some(id);
            f.open = true;
        }
        (STATUS_SUCCESS, information as usize)
    })
}

/// A new file id for `v`: 64-bit NTFS-style references, or 128-bit `ReFS` ids.
fn new_id(v: &mut world::Volume) -> u128 {
    v.next_id += 1;
    let low = u128::from(v.next_id);
    if v.spec.file_system == FileSystem::Refs {
        (0x0000_0000_0000_0001_u128 << 64) | low
    } else {
        low
    }
}

/// Drops one open of the stream of `file_object`; the last one deletes its stream contexts.
fn release_stream(volume: isize, file_object: usize) {
    let dying = world::with(|w| {
        let stream = w.file_objects.get_mut(&file_object).and_then(|f| {
            f.open = false;
            f.stream
        })?;
        let v = w.volume(volume)?;
        let count = v.open_streams.get_mut(&stream)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        v.open_streams.remove(&stream);
        Some(crate::context::stream_closed(w, volume, stream))
    });
    crate::context::finish(dying.unwrap_or_default());
}

fn major(code: u32) -> u8 {
    u8::try_from(code).unwrap_or(u8::MAX)
}

/// Whether I/O of `kind` is paging I/O.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cached,
    NonCached,
    Paging,
    FastIo,
}

impl FileHandle<'_> {
    /// The `FILE_OBJECT` the driver sees for this handle.
    #[must_use]
    pub fn file_object(&self) -> *const FILE_OBJECT {
        &raw const self.object.object
    }

    /// Reads `length` bytes at `offset` (cached, IRP).
    pub fn read(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_READ, length, offset, Kind::Cached)
    }

    /// Writes `length` bytes at `offset` (cached, IRP); extends the file.
    pub fn write(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_WRITE, length, offset, Kind::Cached)
    }

    /// Non-cached read (`IRP_NOCACHE`).
    pub fn read_noncached(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_READ, length, offset, Kind::NonCached)
    }

    /// Paging read (`IRP_PAGING_IO | IRP_NOCACHE`, as the memory manager sends): pre-op at
    /// `APC_LEVEL`, `RequestorMode` `KernelMode`.
    pub fn read_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_READ, length, offset, Kind::Paging)
    }

    /// Paging write: does not extend the file.
    pub fn write_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_WRITE, length, offset, Kind::Paging)
    }

    /// Fast I/O read (`FLTFL_CALLBACK_DATA_FAST_IO_OPERATION`); if the filter returns
    /// `FLT_PREOP_DISALLOW_FASTIO`, the I/O manager reissues it as an IRP.
    pub fn fast_read(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_READ, length, offset, Kind::FastIo)
    }

    /// Fast I/O write, reissued as an IRP if the filter disallows fast I/O.
    pub fn fast_write(&mut self, length: u32, offset: u64) -> IoResult {
        self.transfer(IRP_MJ_WRITE, length, offset, Kind::FastIo)
    }

    fn transfer(&mut self, code: u32, length: u32, offset: u64, kind: Kind) -> IoResult {
        let _exit = crate::session::checked();
        let mut buffer = vec![0_u8; usize::try_from(length).unwrap_or(0)];
        let mut parameters = FLT_PARAMETERS::default();
        let offset_value = i64::try_from(offset).unwrap_or(i64::MAX);
        if code == IRP_MJ_READ {
            parameters.Read.Length = length;
            parameters.Read.ByteOffset = offset_value;
            parameters.Read.ReadBuffer = buffer.as_mut_ptr().cast();
        } else {
            parameters.Write.Length = length;
            parameters.Write.ByteOffset = offset_value;
            parameters.Write.WriteBuffer = buffer.as_mut_ptr().cast();
        }
        let irp_flags = match kind {
            Kind::Cached | Kind::FastIo => 0,
            Kind::NonCached => IRP_NOCACHE,
            Kind::Paging => IRP_PAGING_IO | IRP_NOCACHE,
        };
        let mut op = Operation {
            major: major(code),
            minor: 0,
            irp_flags,
            fast_io: kind == Kind::FastIo,
            file_object: &raw mut self.object.object,
            volume: self.volume,
            parameters,
        };
        let file_object = op.file_object as usize;
        let volume = self.volume;
        let paging = kind == Kind::Paging;
        let mut file_system =
            |p: &FLT_PARAMETERS| transfer_in_file_system(volume, file_object, code, p, paging);
        let mut outcome = perform(&op, &mut file_system);
        if outcome == Outcome::FastIoDisallowed {
            op.fast_io = false;
            outcome = perform(&op, &mut file_system);
        }
        drop(buffer);
        match outcome {
            Outcome::Done(status, information) => IoResult {
                status,
                information,
            },
            Outcome::FastIoDisallowed => unreachable!("an IRP cannot be refused as fast I/O"),
        }
    }

    /// Closes the handle: `IRP_MJ_CLEANUP` then `IRP_MJ_CLOSE` through the filter. The stream's
    /// contexts are deleted when its last file object closes. Returns the cleanup's status.
    #[must_use = "the status of IRP_MJ_CLEANUP"]
    pub fn close(mut self) -> NTSTATUS {
        self.close_now()
    }

    fn close_now(&mut self) -> NTSTATUS {
        if self.closed {
            return STATUS_SUCCESS;
        }
        self.closed = true;
        let _exit = crate::session::checked();
        let file_object: *mut FILE_OBJECT = &raw mut self.object.object;
        let mut result = STATUS_SUCCESS;
        for code in [IRP_MJ_CLEANUP, IRP_MJ_CLOSE] {
            let op = Operation {
                major: major(code),
                minor: 0,
                irp_flags: 0,
                fast_io: false,
                file_object,
                volume: self.volume,
                parameters: FLT_PARAMETERS::default(),
            };
            if let Outcome::Done(status, _) = perform(&op, &mut |_| (STATUS_SUCCESS, 0))
                && code == IRP_MJ_CLEANUP
            {
                result = status;
            }
        }
        release_stream(self.volume, file_object as usize);
        world::with(|w| w.file_objects.remove(&(file_object as usize)));
        result
    }
}

impl Drop for FileHandle<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.close_now();
        }
    }
}

/// The file system's read or write.
fn transfer_in_file_system(
    volume: isize,
    file_object: usize,
    code: u32,
    p: &FLT_PARAMETERS,
    paging: bool,
) -> (NTSTATUS, usize) {
    // SAFETY: reads and writes have the same layout; the operation set the member for `code`.
    let (length, offset) = unsafe {
        if code == IRP_MJ_READ {
            (p.Read.Length, p.Read.ByteOffset)
        } else {
            (p.Write.Length, p.Write.ByteOffset)
        }
    };
    let length = u64::from(length);
    let offset = u64::try_from(offset).unwrap_or(0);
    world::with(|w| {
        let Some(state) = w.file_objects.get(&file_object) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let (stream, volume_open) = (state.stream, state.volume_open);
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return (STATUS_VOLUME_DISMOUNTED, 0);
        };
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if volume_open {
            return if code == IRP_MJ_WRITE && v.spec.read_only {
                (STATUS_MEDIA_WRITE_PROTECTED, 0)
            } else {
                (STATUS_SUCCESS, to_usize(length))
            };
        }
        let read_only = v.spec.read_only;
        let Some(node) = v.files.values_mut().find(|f| Some(f.id) == stream) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        if node.directory {
            return (STATUS_INVALID_DEVICE_REQUEST, 0);
        }
        if code == IRP_MJ_READ {
            if offset >= node.size {
                return (STATUS_END_OF_FILE, 0);
            }
            return (STATUS_SUCCESS, to_usize(length.min(node.size - offset)));
        }
        if read_only {
            return (STATUS_MEDIA_WRITE_PROTECTED, 0);
        }
        if paging {
            // Paging writes never extend the file: the part past end of file is dropped.
            let written = node.size.saturating_sub(offset).min(length);
            return (STATUS_SUCCESS, to_usize(written));
        }
        node.size = node.size.max(offset + length);
        (STATUS_SUCCESS, to_usize(length))
    })
}

/// What a query may look at: the node behind an open file object on `instance`'s volume.
fn open_node(
    routine: &str,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Result<(FileNode, FileSystem, u64), NTSTATUS> {
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
        let stream = state.stream;
        let v = w.volume(volume).ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        let fs = v.spec.file_system;
        let serial = v.spec.serial;
        let node = v.files.values().find(|f| Some(f.id) == stream).cloned().ok_or(Ok(STATUS_INVALID_PARAMETER))?;
        Ok((node, fs, serial))
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
/// 128-bit id. Calling it with normal kernel APCs disabled (a push lock held across a call that
/// re-enters the file system) is reported.
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
        world::with(|w| {
            w.findings.push(
                "FltQueryInformationFile called with normal kernel APCs disabled (a push lock held \
                 across a call that re-enters the file system can deadlock)"
                    .into(),
            );
        });
    }
    let (node, fs, serial) = match open_node("FltQueryInformationFile", instance, fileobject) {
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
                    Identifier: node.id.to_le_bytes(),
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
        let (volume, stream, opened_path) = (fo.volume, fo.stream, fo.path.clone());
        let v = w.volume(volume)?;
        let stored = stream
            .and_then(|id| v.files.values().find(|f| f.id == id))
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
