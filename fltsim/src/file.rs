//! Files and file objects of the simulated file systems, and the I/O a test issues on them
//! ([`FileHandle`]). What a minifilter asks about a file is in `query` (`FltQueryInformationFile`) and
//! `names` (`FltGetFileNameInformation` and its reference routines).

use std::marker::PhantomData;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::{FILE_OBJECT, IO_SECURITY_CONTEXT};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PARAMETERS;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_DIRECTORY_FILE, FILE_OPEN, FILE_OPEN_IF,
};
use windows_sys::Wdk::System::SystemServices::{
    FO_CLEANUP_COMPLETE, FO_SYNCHRONOUS_IO, FO_VOLUME_OPEN, IRP_MJ_CLEANUP, IRP_MJ_CLOSE,
    IRP_MJ_CREATE, IRP_MJ_READ, IRP_MJ_WRITE, IRP_NOCACHE, IRP_PAGING_IO,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_END_OF_FILE, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_MEDIA_WRITE_PROTECTED, STATUS_NOT_A_DIRECTORY, STATUS_OBJECT_NAME_COLLISION,
    STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND,
    STATUS_SUCCESS, STATUS_VOLUME_DISMOUNTED,
};
use windows_sys::Win32::System::WindowsProgramming::{FILE_CREATED, FILE_OPENED};

use crate::Sim;
use crate::filter::unicode;
use crate::io::{Operation, Outcome, perform};
use crate::volume::{FileSystem, Volume};
use crate::world::{self, FileNode, FileObjectState};

/// `IO_TYPE_FILE`.
const IO_TYPE_FILE: i16 = 5;
/// Cluster size used for `AllocationSize`.
pub(crate) const CLUSTER: u64 = 4096;

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
            let mut file_system = |_: &FLT_PARAMETERS| {
                if code == IRP_MJ_CLEANUP {
                    // The file system marks the file object when it completes the cleanup.
                    // SAFETY: the handle's own file object, live for the operation; the filter
                    // sees it again only in the post-op, after this write.
                    unsafe { (*file_object).Flags |= FO_CLEANUP_COMPLETE };
                }
                (STATUS_SUCCESS, 0)
            };
            if let Outcome::Done(status, _) = perform(&op, &mut file_system)
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
