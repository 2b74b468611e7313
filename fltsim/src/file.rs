//! Files and file objects of the simulated file systems, and the I/O a test issues on them
//! ([`FileHandle`]). What a minifilter asks about a file is in `query` (`FltQueryInformationFile`) and
//! `names` (`FltGetFileNameInformation` and its reference routines).

use std::marker::PhantomData;
use std::mem::size_of;

use windows_sys::Wdk::Foundation::{FILE_OBJECT, IO_SECURITY_CONTEXT};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PARAMETERS;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_DIRECTORY_FILE, FILE_OPEN, FILE_OPEN_IF, FILE_OVERWRITE, FILE_OVERWRITE_IF,
    FILE_SUPERSEDE,
};
use windows_sys::Wdk::System::SystemServices::{
    FO_CLEANUP_COMPLETE, FO_STREAM_FILE, FO_SYNCHRONOUS_IO, FO_VOLUME_OPEN, IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE, IRP_MJ_CREATE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_DELETE_PENDING, STATUS_FILE_IS_A_DIRECTORY, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_MEDIA_WRITE_PROTECTED, STATUS_NOT_A_DIRECTORY,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SUCCESS, STATUS_VOLUME_DISMOUNTED,
};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_CREATED, FILE_OPENED, FILE_OVERWRITTEN, FILE_SUPERSEDED,
};

use crate::Sim;
use crate::filter::unicode;
use crate::fs::{self, NodeKey, parent_of as parent};
use crate::io::{Operation, Outcome, perform};
use crate::volume::Volume;
use crate::world::{self, FileObjectState};

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
    /// The create disposition (`FILE_SUPERSEDE` ... `FILE_OVERWRITE_IF`), overriding `create` and
    /// `create_new` when set.
    pub disposition: Option<u32>,
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

    /// With create disposition `disposition` (`FILE_SUPERSEDE`, `FILE_OPEN`, `FILE_CREATE`,
    /// `FILE_OPEN_IF`, `FILE_OVERWRITE` or `FILE_OVERWRITE_IF`).
    #[must_use]
    pub fn disposition(disposition: u32) -> Self {
        Self {
            disposition: Some(disposition),
            ..Self::default()
        }
    }

    /// The create disposition these options send.
    fn create_disposition(self) -> u32 {
        match self.disposition {
            Some(disposition) => disposition,
            None if self.create_new => FILE_CREATE,
            None if self.create => FILE_OPEN_IF,
            None => FILE_OPEN,
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
pub(crate) struct FileObjectBox {
    object: FILE_OBJECT,
    name: Box<[u16]>,
}

// SAFETY: plain memory the simulator owns; the driver sees it only during operations on it.
unsafe impl Send for FileObjectBox {}

impl FileObjectBox {
    /// A `FILE_OBJECT` named `path` (relative to the volume), with `flags`.
    pub(crate) fn new(path: &str, flags: u32) -> Box<Self> {
        let name: Box<[u16]> = path.encode_utf16().collect();
        let mut object = Box::new(Self {
            // SAFETY: FILE_OBJECT is plain data for which all-zero bytes are valid.
            object: unsafe { std::mem::zeroed() },
            name,
        });
        object.object.Type = IO_TYPE_FILE;
        object.object.Size = i16::try_from(size_of::<FILE_OBJECT>()).unwrap_or(i16::MAX);
        object.object.FileName = unicode(&object.name);
        object.object.Flags = flags;
        object.object.ReadAccess = true;
        object.object.WriteAccess = true;
        object
    }

    /// The file object the driver sees.
    pub(crate) fn file_object(&mut self) -> *mut FILE_OBJECT {
        &raw mut self.object
    }
}

/// An open file: the simulated `FILE_OBJECT` a user handle refers to.
///
/// `Send`, so tests can move handles to other threads; every method issues one operation through
/// the filter and the file system. Dropping the handle closes it ([`FileHandle::close`]).
pub struct FileHandle<'sim> {
    object: Box<FileObjectBox>,
    volume: isize,
    closed: bool,
    /// The create's `IoStatus.Information` (`FILE_CREATED`, `FILE_OPENED`, ...).
    information: usize,
    _sim: PhantomData<&'sim Sim>,
}

// SAFETY: the file object is owned by the handle; the driver only sees it during operations that
// the handle's owner issues, and the simulator's own state about it is behind its lock.
unsafe impl Send for FileHandle<'_> {}

pub(crate) fn is_directory_path_valid(path: &str) -> bool {
    path.starts_with('\\')
        && !path.contains(['/', ':', '*', '?', '"', '<', '>', '|'])
        && !path[1..].split('\\').any(str::is_empty)
}

/// The stream key of a node's unnamed data stream (the key its stream contexts hang on).
pub(crate) fn default_stream(node: NodeKey) -> u128 {
    u128::from(node)
}

impl Sim {
    /// Puts a file of `size` bytes at `path` on `volume` without any I/O (test setup).
    ///
    /// # Panics
    /// If the path is invalid, its directory does not exist, or the volume is unknown.
    pub fn create_file(&self, volume: Volume, path: &str, size: u64) -> u128 {
        put(volume, path, size, false, None)
    }

    /// Puts many files on `volume` at once, without any I/O and under one acquisition of the
    /// simulator's state (test setup at scale): each `(path, size)` as [`Sim::create_file`] would.
    /// Returns their file ids, in order.
    ///
    /// # Panics
    /// As [`Sim::create_file`], for the first bad path.
    pub fn create_files<P: AsRef<str>>(
        &self,
        volume: Volume,
        files: impl IntoIterator<Item = (P, u64)>,
    ) -> Vec<u128> {
        world::with(|w| {
            let v = w
                .volume(volume.0)
                .expect("fltsim: Sim::create_files: unknown volume");
            files
                .into_iter()
                .map(|(path, size)| put_in(&mut v.files, path.as_ref(), size, false, None))
                .collect()
        })
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
        world::with(|w| w.volume(volume.0)?.files.get(path).map(|f| f.id))
    }

    /// The size of `path` on `volume`, if it exists.
    #[must_use]
    pub fn file_size(&self, volume: Volume, path: &str) -> Option<u64> {
        world::with(|w| w.volume(volume.0)?.files.get(path).map(|f| f.size))
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
        let flags = FO_SYNCHRONOUS_IO
            | if options.volume_open {
                FO_VOLUME_OPEN
            } else {
                0
            };
        let mut object = FileObjectBox::new(&path, flags);
        let file_object: *mut FILE_OBJECT = &raw mut object.object;
        world::with(|w| {
            w.file_objects.insert(
                file_object as usize,
                FileObjectState {
                    volume: volume.0,
                    node: None,
                    stream: None,
                    path: path.clone(),
                    open: false,
                    volume_open: options.volume_open,
                    cached: false,
                },
            );
        });
        let disposition = options.create_disposition();
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
        let Outcome::Done(status, information) = outcome else {
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
            information,
            _sim: PhantomData,
        })
    }
}

/// Adds a file or directory to `volume`'s file system (test setup, no I/O).
fn put(volume: Volume, path: &str, size: u64, directory: bool, id: Option<u128>) -> u128 {
    world::with(|w| {
        let v = w
            .volume(volume.0)
            .expect("fltsim: Sim::create_file: unknown volume");
        put_in(&mut v.files, path, size, directory, id)
    })
}

/// Adds a file or directory to `files` (test setup, no I/O); returns its file id.
fn put_in(
    files: &mut fs::Namespace,
    path: &str,
    size: u64,
    directory: bool,
    id: Option<u128>,
) -> u128 {
    assert!(
        is_directory_path_valid(path),
        "fltsim: Sim::create_file: invalid path {path:?}"
    );
    assert!(
        files.lookup(path).is_none(),
        "fltsim: Sim::create_file: {path:?} exists"
    );
    let Some(dir) = files.parent_directory(path) else {
        panic!(
            "fltsim: Sim::create_file: directory {:?} does not exist",
            parent(path)
        );
    };
    let key = files.insert(path, dir, size, directory, id);
    files.node(key).map_or(0, |n| n.id)
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
        let disposition = options.create_disposition();
        // The disposition decides what happens and what IoStatus.Information says ("NtCreateFile
        // function (ntifs.h)": CreateDisposition, and FILE_SUPERSEDED, FILE_OPENED, FILE_CREATED,
        // FILE_OVERWRITTEN in IoStatusBlock->Information).
        let replaces = matches!(
            disposition,
            FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF
        );
        let creates = matches!(
            disposition,
            FILE_SUPERSEDE | FILE_CREATE | FILE_OPEN_IF | FILE_OVERWRITE_IF
        );
        let existing = v.files.lookup(&path);
        let (node, information) = match existing.and_then(|k| Some((k, v.files.node(k)?))) {
            Some((_, node)) if node.delete_pending => return (STATUS_DELETE_PENDING, 0),
            Some(_) if disposition == FILE_CREATE => return (STATUS_OBJECT_NAME_COLLISION, 0),
            Some((_, node)) if options.directory && !node.directory => {
                return (STATUS_NOT_A_DIRECTORY, 0);
            }
            Some((_, node)) if replaces && node.directory => {
                return (STATUS_FILE_IS_A_DIRECTORY, 0);
            }
            Some(_) if replaces && read_only => return (STATUS_MEDIA_WRITE_PROTECTED, 0),
            Some((key, _)) if replaces => {
                if let Some(file) = v.files.node_mut(key) {
                    file.size = 0;
                }
                let information = if disposition == FILE_SUPERSEDE {
                    FILE_SUPERSEDED
                } else {
                    FILE_OVERWRITTEN
                };
                (key, information)
            }
            Some((key, _)) => (key, FILE_OPENED),
            None if !creates => return (STATUS_OBJECT_NAME_NOT_FOUND, 0),
            None => {
                let Some(dir) = v.files.parent_directory(&path) else {
                    return (STATUS_OBJECT_PATH_NOT_FOUND, 0);
                };
                if read_only {
                    return (STATUS_MEDIA_WRITE_PROTECTED, 0);
                }
                let key = v.files.insert(&path, dir, 0, options.directory, None);
                (key, FILE_CREATED)
            }
        };
        let stream = default_stream(node);
        *v.open_streams.entry(stream).or_default() += 1;
        if let Some(f) = w.file_objects.get_mut(&(file_object as usize)) {
            f.node = Some(node);
            f.stream = Some(stream);
            f.open = true;
        }
        (STATUS_SUCCESS, information as usize)
    })
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
        // The last handle of a deleted file closed: its name goes now.
        let node = w.file_objects.get(&file_object).and_then(|f| f.node);
        if let Some(v) = w.volume(volume)
            && let Some(key) = node
            && v.files.node(key).is_some_and(|n| n.delete_pending)
        {
            v.files.remove(key);
        }
        Some(crate::context::stream_closed(w, volume, stream))
    });
    crate::context::finish(dying.unwrap_or_default());
}

pub(crate) fn major(code: u32) -> u8 {
    u8::try_from(code).unwrap_or(u8::MAX)
}

impl FileHandle<'_> {
    /// The `FILE_OBJECT` the driver sees for this handle.
    #[must_use]
    pub fn file_object(&self) -> *const FILE_OBJECT {
        &raw const self.object.object
    }

    /// The file object, for the operations this handle issues.
    pub(crate) fn raw_file_object(&mut self) -> *mut FILE_OBJECT {
        &raw mut self.object.object
    }

    /// What the create did, from its `IoStatus.Information`: `FILE_CREATED`, `FILE_OPENED`,
    /// `FILE_OVERWRITTEN` or `FILE_SUPERSEDED`.
    #[must_use]
    pub fn create_information(&self) -> usize {
        self.information
    }

    /// The volume the handle is on.
    pub(crate) fn volume_handle(&self) -> isize {
        self.volume
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
        let op = Operation {
            major: major(IRP_MJ_CLEANUP),
            minor: 0,
            irp_flags: 0,
            fast_io: false,
            file_object,
            volume: self.volume,
            parameters: FLT_PARAMETERS::default(),
        };
        let mut file_system = |_: &FLT_PARAMETERS| {
            // The file system marks the file object when it completes the cleanup.
            // SAFETY: the handle's own file object, live for the operation; the filter sees it
            // again only in the post-op, after this write.
            unsafe { (*file_object).Flags |= FO_CLEANUP_COMPLETE };
            (STATUS_SUCCESS, 0)
        };
        let result = match perform(&op, &mut file_system) {
            Outcome::Done(status, _) => status,
            Outcome::FastIoDisallowed => STATUS_SUCCESS,
        };
        world::with(|w| {
            crate::transfer::unlock_all(w, self.volume, file_object as usize);
            delete_at_last_cleanup(w, self.volume, file_object as usize);
        });
        // The close comes when the last reference to the file object goes: now, or later from the
        // cache manager if it holds one (`crate::cachemgr`), which then owns the file object.
        let object = std::mem::replace(&mut self.object, FileObjectBox::new("", 0));
        if let Some(mut object) = crate::cachemgr::defer_close(object, self.volume) {
            send_close(self.volume, object.file_object());
        }
        result
    }
}

/// A delete-pending file goes when the cleanup of its last handle is done ("the file is deleted when
/// all open handles to the file are closed": "`FILE_DISPOSITION_INFORMATION` structure (ntddk.h)"),
/// even while the cache manager still holds a file object of it (whose close comes later).
fn delete_at_last_cleanup(w: &mut world::World, volume: isize, file_object: usize) {
    let Some(node) = w.file_objects.get(&file_object).and_then(|f| f.node) else {
        return;
    };
    let handles_left = w.file_objects.iter().any(|(&other, f)| {
        // SAFETY: every file object in the table is live memory (a handle's, a stream file
        // object, or one the cache manager holds) until its close removes it from the table.
        let flags = unsafe { (*(other as *const FILE_OBJECT)).Flags };
        let handle = flags & (FO_CLEANUP_COMPLETE | FO_STREAM_FILE) == 0;
        other != file_object && f.node == Some(node) && f.open && handle
    });
    if let Some(v) = w.volume(volume)
        && !handles_left
        && v.files.node(node).is_some_and(|n| n.delete_pending)
    {
        v.files.remove(node);
    }
}

/// Sends `IRP_MJ_CLOSE` for `file_object` through the filter and forgets the file object; the
/// stream's contexts go with its last file object.
pub(crate) fn send_close(volume: isize, file_object: *mut FILE_OBJECT) {
    let op = Operation {
        major: major(IRP_MJ_CLOSE),
        minor: 0,
        irp_flags: 0,
        fast_io: false,
        file_object,
        volume,
        parameters: FLT_PARAMETERS::default(),
    };
    perform(&op, &mut |_| (STATUS_SUCCESS, 0));
    release_stream(volume, file_object as usize);
    world::with(|w| {
        w.file_objects.remove(&(file_object as usize));
        w.bypass_io.remove(&(file_object as usize));
    });
}

impl Drop for FileHandle<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.close_now();
        }
    }
}
