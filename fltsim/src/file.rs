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
    FO_CLEANUP_COMPLETE, FO_SYNCHRONOUS_IO, FO_VOLUME_OPEN, IRP_MJ_CLEANUP, IRP_MJ_CLOSE,
    IRP_MJ_CREATE, SL_OPEN_TARGET_DIRECTORY,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_CANNOT_MAKE, STATUS_DELETE_PENDING, STATUS_FILE_IS_A_DIRECTORY,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_MEDIA_WRITE_PROTECTED,
    STATUS_NOT_A_DIRECTORY, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SUCCESS,
    STATUS_VOLUME_DISMOUNTED,
};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_CREATED, FILE_DOES_NOT_EXIST, FILE_EXISTS, FILE_OPENED, FILE_OVERWRITTEN, FILE_SUPERSEDED,
};

use crate::Sim;
use crate::data::Data;
use crate::filter::unicode;
use crate::fs::{self, LinkId, NodeKey, Refusal, StreamIndex, parent_of as parent};
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
    /// A fast I/O request that a filter disallowed or the file system refused, which the I/O
    /// manager then reissued as an IRP (the result is the IRP's). Always `false` for IRPs.
    pub reissued: bool,
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

/// A path as a create names it: the file's path and, for a named data stream, the stream's name.
///
/// Stream names follow "File Streams (Local File Systems)" and "`FILE_STREAM_INFORMATION` structure
/// (ntifs.h)": `file:name` and `file:name:$DATA` name the same stream, `file::$DATA` is the file's
/// unnamed stream. Other stream types (`$INDEX_ALLOCATION`, ...) are not modeled and give
/// `STATUS_OBJECT_NAME_INVALID`, as does any stream name on FAT and exFAT, which have none.
pub(crate) fn split_stream(
    path: &str,
    named_streams: bool,
) -> Result<(&str, Option<&str>), NTSTATUS> {
    let start = path.rfind('\\').map_or(0, |i| i + 1);
    let Some(colon) = path[start..].find(':').map(|i| start + i) else {
        return Ok((path, None));
    };
    if !named_streams {
        return Err(STATUS_OBJECT_NAME_INVALID);
    }
    let file = &path[..colon];
    let rest = &path[colon + 1..];
    let (name, kind) = match rest.split_once(':') {
        Some((name, kind)) => (name, Some(kind)),
        None => (rest, None),
    };
    if kind.is_some_and(|k| !k.eq_ignore_ascii_case("$DATA")) || name.contains(':') {
        return Err(STATUS_OBJECT_NAME_INVALID);
    }
    if name.is_empty() {
        return if kind.is_some() {
            Ok((file, None))
        } else {
            Err(STATUS_OBJECT_NAME_INVALID)
        };
    }
    if is_directory_path_valid(&format!("\\{name}")) {
        Ok((file, Some(name)))
    } else {
        Err(STATUS_OBJECT_NAME_INVALID)
    }
}

/// The stream key of a node's unnamed data stream (the key its stream contexts hang on).
pub(crate) fn default_stream(node: NodeKey) -> u128 {
    stream_key(node, 0)
}

/// The stream key of stream `index` of node `node` (0: the unnamed stream).
pub(crate) fn stream_key(node: NodeKey, index: StreamIndex) -> u128 {
    (u128::from(index) << 64) | u128::from(node)
}

/// The stream index in a stream key.
pub(crate) fn stream_index(stream: u128) -> StreamIndex {
    StreamIndex::try_from(stream >> 64).unwrap_or(StreamIndex::MAX)
}

/// The contents a test gives a file it puts on a volume.
#[derive(Clone, Copy)]
enum Contents<'a> {
    /// `size` generated bytes.
    Generated(u64),
    /// These bytes.
    Bytes(&'a [u8]),
}

impl Sim {
    /// Puts a file of `size` bytes at `path` on `volume` without any I/O (test setup). Its bytes
    /// are generated from a seed, the same in every run of the same setup, and stored only once
    /// written. Returns its file ID.
    ///
    /// # Panics
    /// If the path is invalid, its directory does not exist or is full, or the volume is unknown.
    pub fn create_file(&self, volume: Volume, path: &str, size: u64) -> u128 {
        put(volume, path, Contents::Generated(size), false, None)
    }

    /// Puts a file holding `data` at `path` on `volume` without any I/O (test setup); a path naming
    /// a stream (`\file.txt:name`) adds that stream to the file (made empty if it does not exist).
    /// Returns the file's ID.
    ///
    /// # Panics
    /// As [`Sim::create_file`], or if a stream is named on a file system without named streams.
    pub fn create_file_with_data(&self, volume: Volume, path: &str, data: &[u8]) -> u128 {
        put(volume, path, Contents::Bytes(data), false, None)
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
                .map(|(path, size)| {
                    put_in(
                        &mut v.files,
                        path.as_ref(),
                        Contents::Generated(size),
                        false,
                        None,
                    )
                })
                .collect()
        })
    }

    /// Like [`Sim::create_file`] with a chosen file id: on `ReFS`, two ids with the same low 64 bits
    /// give the same `FileInternalInformation` (64-bit) id.
    ///
    /// # Panics
    /// As [`Sim::create_file`].
    pub fn create_file_with_id(&self, volume: Volume, path: &str, size: u64, id: u128) -> u128 {
        put(volume, path, Contents::Generated(size), false, Some(id))
    }

    /// Puts a directory at `path` on `volume` without any I/O (test setup).
    ///
    /// # Panics
    /// As [`Sim::create_file`].
    pub fn create_directory(&self, volume: Volume, path: &str) -> u128 {
        put(volume, path, Contents::Generated(0), true, None)
    }

    /// The file id of `path` on `volume`, if it exists (the full 128-bit id on `ReFS`).
    #[must_use]
    pub fn file_id(&self, volume: Volume, path: &str) -> Option<u128> {
        world::with(|w| w.volume(volume.0)?.files.get(path).map(|f| f.id))
    }

    /// The size of `path` on `volume` (a path may name a stream: `\file.txt:name`), if it exists.
    #[must_use]
    pub fn file_size(&self, volume: Volume, path: &str) -> Option<u64> {
        with_stream_data(volume, path, Data::size)
    }

    /// The bytes of `path` on `volume` (a path may name a stream: `\file.txt:name`), if it exists.
    #[must_use]
    pub fn file_data(&self, volume: Volume, path: &str) -> Option<Vec<u8>> {
        with_stream_data(volume, path, Data::to_vec)
    }

    /// Opens `path` on `volume` from any thread: sends `IRP_MJ_CREATE` through the filter (pre-op,
    /// file system, post-op at `PASSIVE_LEVEL`) and returns the open file. A path may name a data
    /// stream: `\file.txt:name` (or `\file.txt:name:$DATA`) on NTFS and `ReFS`.
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
        open_file(volume.0, path, options, 0)
    }
}

/// Runs `f` on the data of the stream `path` names on `volume`, if it exists.
fn with_stream_data<R>(volume: Volume, path: &str, f: impl FnOnce(&Data) -> R) -> Option<R> {
    world::with(|w| {
        let files = &w.volume(volume.0)?.files;
        let (file, stream) = split_stream(path, files.has_named_streams()).ok()?;
        let node = files.get(file)?;
        let index = match stream {
            Some(name) => node.stream_index(name)?,
            None => 0,
        };
        node.data_of(index).map(f)
    })
}

/// Sends `IRP_MJ_CREATE` for `path` on `volume` through the filter, with `stack_flags` in its
/// parameter block (`SL_OPEN_TARGET_DIRECTORY` for the target-directory open of a rename), and
/// returns the open file.
pub(crate) fn open_file<'sim>(
    volume: isize,
    path: &str,
    options: OpenOptions,
    stack_flags: u8,
) -> Result<FileHandle<'sim>, NTSTATUS> {
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
                volume,
                node: None,
                link: None,
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
        stack_flags,
        fast_io: false,
        file_object,
        volume,
        parameters,
    };
    let target_directory = u32::from(stack_flags) & SL_OPEN_TARGET_DIRECTORY != 0;
    let outcome = perform(&op, &mut |_| {
        if target_directory {
            open_target_directory(volume, file_object)
        } else {
            create_in_file_system(volume, file_object, options)
        }
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
            world::with(|w| cleanup_handle(w, volume, file_object as usize));
            release_stream(volume, file_object as usize);
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
        volume,
        closed: false,
        information,
        _sim: PhantomData,
    })
}

/// Adds a file or directory to `volume`'s file system (test setup, no I/O).
fn put(
    volume: Volume,
    path: &str,
    contents: Contents<'_>,
    directory: bool,
    id: Option<u128>,
) -> u128 {
    world::with(|w| {
        let v = w
            .volume(volume.0)
            .expect("fltsim: Sim::create_file: unknown volume");
        put_in(&mut v.files, path, contents, directory, id)
    })
}

/// Adds a file or directory, or a named stream of one, to `files` (test setup, no I/O); returns
/// the file's id.
fn put_in(
    files: &mut fs::Namespace,
    path: &str,
    contents: Contents<'_>,
    directory: bool,
    id: Option<u128>,
) -> u128 {
    let Ok((path, stream)) = split_stream(path, files.has_named_streams()) else {
        panic!("fltsim: Sim::create_file: invalid path {path:?}");
    };
    assert!(
        is_directory_path_valid(path),
        "fltsim: Sim::create_file: invalid path {path:?}"
    );
    let data = match contents {
        Contents::Generated(size) => files.generated(size),
        Contents::Bytes(bytes) => Data::from_bytes(bytes),
    };
    if let Some(name) = stream {
        let key = match files.lookup(path) {
            Some(key) => key,
            None => insert_or_panic(files, path, Data::empty(), false, id),
        };
        let node = files.node_mut(key).expect("fltsim: the node just found");
        let index = node
            .stream_index(name)
            .unwrap_or_else(|| node.add_stream(name));
        if let Some(stream) = node.data_of_mut(index) {
            *stream = data;
        }
        return node.id;
    }
    assert!(
        files.lookup(path).is_none(),
        "fltsim: Sim::create_file: {path:?} exists"
    );
    let key = insert_or_panic(files, path, data, directory, id);
    files.node(key).map_or(0, |n| n.id)
}

fn insert_or_panic(
    files: &mut fs::Namespace,
    path: &str,
    data: Data,
    directory: bool,
    id: Option<u128>,
) -> NodeKey {
    let Some(dir) = files.parent_directory(path) else {
        panic!(
            "fltsim: Sim::create_file: directory {:?} does not exist",
            parent(path)
        );
    };
    match files.insert(path, dir, data, directory, id) {
        Ok(key) => key,
        Err(Refusal::DirectoryFull) => {
            panic!(
                "fltsim: Sim::create_file: directory {:?} is full",
                parent(path)
            )
        }
    }
}

/// What a create found at its path.
#[derive(Clone, Copy)]
struct Found {
    node: NodeKey,
    link: LinkId,
    /// The named stream, if the path names one and it exists.
    stream: Option<StreamIndex>,
}

/// What a create asks the file system for.
struct CreateRequest<'a> {
    /// The file's path.
    file_path: &'a str,
    /// The named stream, if the path names one.
    stream_name: Option<&'a str>,
    options: OpenOptions,
    read_only: bool,
}

impl CreateRequest<'_> {
    /// Whether the disposition replaces an existing stream's data.
    fn replaces(&self) -> bool {
        matches!(
            self.options.create_disposition(),
            FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF
        )
    }

    /// Whether the disposition creates what does not exist.
    fn creates(&self) -> bool {
        matches!(
            self.options.create_disposition(),
            FILE_SUPERSEDE | FILE_CREATE | FILE_OPEN_IF | FILE_OVERWRITE_IF
        )
    }
}

// The disposition decides what happens and what IoStatus.Information says ("NtCreateFile function
// (ntifs.h)": CreateDisposition, and FILE_SUPERSEDED, FILE_OPENED, FILE_CREATED, FILE_OVERWRITTEN in
// IoStatusBlock->Information). A path naming a stream applies it to that stream; a stream created on
// a file that does not exist creates the file too.

/// A create of a path that exists (the file, but maybe not the stream it names).
fn open_existing(
    files: &mut fs::Namespace,
    found: Found,
    request: &CreateRequest<'_>,
) -> Result<(Found, u32), NTSTATUS> {
    let disposition = request.options.create_disposition();
    let unnamed = request.stream_name.is_none();
    let exists = unnamed || found.stream.is_some();
    let node = files.node(found.node).ok_or(STATUS_INVALID_PARAMETER)?;
    let pending = node.link(found.link).is_some_and(|l| l.delete_pending)
        || found
            .stream
            .and_then(|i| node.stream(i))
            .is_some_and(|s| s.delete_pending);
    if pending {
        return Err(STATUS_DELETE_PENDING);
    } else if exists && disposition == FILE_CREATE {
        return Err(STATUS_OBJECT_NAME_COLLISION);
    } else if unnamed && request.options.directory && !node.directory {
        return Err(STATUS_NOT_A_DIRECTORY);
    } else if unnamed && request.replaces() && node.directory {
        return Err(STATUS_FILE_IS_A_DIRECTORY);
    } else if (request.replaces() || !exists) && request.read_only {
        return Err(STATUS_MEDIA_WRITE_PROTECTED);
    } else if !exists && !request.creates() {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    }
    let node = files.node_mut(found.node).ok_or(STATUS_INVALID_PARAMETER)?;
    let (stream, information) = match (request.stream_name, found.stream) {
        (Some(name), None) => (Some(node.add_stream(name)), FILE_CREATED),
        (_, stream) if request.replaces() => {
            if let Some(data) = node.data_of_mut(stream.unwrap_or(0)) {
                data.clear();
            }
            let information = if disposition == FILE_SUPERSEDE {
                FILE_SUPERSEDED
            } else {
                FILE_OVERWRITTEN
            };
            (stream, information)
        }
        (_, stream) => (stream, FILE_OPENED),
    };
    Ok((Found { stream, ..found }, information))
}

/// A create of a path that does not exist: makes the file (and the stream it names).
fn create_new(
    files: &mut fs::Namespace,
    request: &CreateRequest<'_>,
) -> Result<(Found, u32), NTSTATUS> {
    if !request.creates() {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    }
    let dir = files
        .parent_directory(request.file_path)
        .ok_or(STATUS_OBJECT_PATH_NOT_FOUND)?;
    if request.read_only {
        return Err(STATUS_MEDIA_WRITE_PROTECTED);
    }
    let directory = request.options.directory;
    // fastfat: "Full root directory or too big on FAT32" (FatCreateNewDirent).
    let node = files
        .insert(request.file_path, dir, Data::empty(), directory, None)
        .map_err(|Refusal::DirectoryFull| STATUS_CANNOT_MAKE)?;
    let stream = request
        .stream_name
        .and_then(|name| Some(files.node_mut(node)?.add_stream(name)));
    let found = Found {
        node,
        link: 0,
        stream,
    };
    Ok((found, FILE_CREATED))
}

/// The file system's create: opens or creates the file (or stream) and records the file object's
/// stream.
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
        let (file_path, stream_name) = match split_stream(&path, v.files.has_named_streams()) {
            Ok(split) => split,
            Err(status) => return (status, 0),
        };
        if !is_directory_path_valid(file_path) {
            return (STATUS_OBJECT_NAME_INVALID, 0);
        }
        if options.directory && stream_name.is_some() {
            return (STATUS_NOT_A_DIRECTORY, 0);
        }
        let read_only = v.spec.read_only;
        let found = v.files.lookup_link(file_path).map(|(node, link)| Found {
            node,
            link,
            stream: stream_name.and_then(|name| v.files.node(node)?.stream_index(name)),
        });
        let request = CreateRequest {
            file_path,
            stream_name,
            options,
            read_only,
        };
        let opened = match found {
            Some(found) => open_existing(&mut v.files, found, &request),
            None => create_new(&mut v.files, &request),
        };
        let (found, information) = match opened {
            Ok(opened) => opened,
            Err(status) => return (status, 0),
        };
        if let Some(node) = v.files.node_mut(found.node) {
            if let Some(link) = node.link_mut(found.link) {
                link.opens += 1;
            }
            if let Some(stream) = found.stream.and_then(|i| node.stream_mut(i)) {
                stream.opens += 1;
            }
        }
        let stream = stream_key(found.node, found.stream.unwrap_or(0));
        *v.open_streams.entry(stream).or_default() += 1;
        if let Some(f) = w.file_objects.get_mut(&(file_object as usize)) {
            f.node = Some(found.node);
            f.link = Some(found.link);
            f.stream = Some(stream);
            f.open = true;
        }
        (STATUS_SUCCESS, information as usize)
    })
}

/// The file system's create with `SL_OPEN_TARGET_DIRECTORY`, which the I/O manager sends before a
/// rename or a link to a full path: it opens the directory the path would be in, tells in
/// `IoStatus.Information` whether the final component exists (`FILE_EXISTS`,
/// `FILE_DOES_NOT_EXIST`), and leaves only that component in the file object's `FileName`, which
/// the rename then takes as the new name (the fastfat sample's `FatOpenTargetDirectory` and
/// `FatSetRenameInfo`).
fn open_target_directory(volume: isize, file_object: *mut FILE_OBJECT) -> (NTSTATUS, usize) {
    world::with(|w| {
        let Some(path) = w
            .file_objects
            .get(&(file_object as usize))
            .map(|f| f.path.clone())
        else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return (STATUS_VOLUME_DISMOUNTED, 0);
        };
        if !is_directory_path_valid(&path) {
            return (STATUS_OBJECT_NAME_INVALID, 0);
        }
        let Some(directory) = v.files.parent_directory(&path) else {
            return (STATUS_OBJECT_PATH_NOT_FOUND, 0);
        };
        let information = if v.files.lookup(&path).is_some() {
            FILE_EXISTS
        } else {
            FILE_DOES_NOT_EXIST
        };
        if let Some(link) = v.files.node_mut(directory).and_then(|n| n.link_mut(0)) {
            link.opens += 1;
        }
        let stream = default_stream(directory);
        *v.open_streams.entry(stream).or_default() += 1;
        let component = path.len() - fs::final_component(&path).len();
        if let Some(f) = w.file_objects.get_mut(&(file_object as usize)) {
            f.node = Some(directory);
            f.link = Some(0);
            f.stream = Some(stream);
            f.open = true;
        }
        let units = path[..component].encode_utf16().count();
        // SAFETY: the file object belongs to the open in progress, live for it; only the file
        // system changes its FileName.
        let name = unsafe { &mut (*file_object).FileName };
        // SAFETY: the name buffer holds `path` as UTF-16, of which the directory part is `units`
        // units long: the result points into the same buffer.
        name.Buffer = unsafe { name.Buffer.add(units) };
        name.Length -= u16::try_from(units * 2).unwrap_or(0);
        name.MaximumLength = name.Length;
        (STATUS_SUCCESS, information as usize)
    })
}

/// The path of the stream `file_object` is open on, by the name it was opened by, as it is now:
/// `\dir\file` or, for a named stream, `\dir\file:name`; `None` before the file system opened it.
pub(crate) fn current_path(w: &mut world::World, file_object: usize) -> Option<String> {
    let fo = w.file_objects.get(&file_object)?;
    let (volume, node, link, stream) = (fo.volume, fo.node?, fo.link?, fo.stream?);
    let node = w.volume(volume)?.files.node(node)?;
    let path = node.link(link).map_or(node.path(), |l| l.path.as_str());
    Some(match node.stream(stream_index(stream)) {
        Some(named) => format!("{path}:{}", named.name),
        None => path.to_owned(),
    })
}

/// The cleanup of a handle's file object: drops the handle from its name's and stream's counts. A
/// deleted name goes when the cleanup of the last handle opened by it is done, the file with its
/// last name, and a deleted named stream with its last handle's cleanup ("the file is deleted when
/// all open handles to the file are closed": "`FILE_DISPOSITION_INFORMATION` structure
/// (ntddk.h)"), even while the cache manager still holds a file object of it (whose close comes
/// later).
fn cleanup_handle(w: &mut world::World, volume: isize, file_object: usize) {
    let Some((stream, node, link)) = w
        .file_objects
        .get(&file_object)
        .and_then(|f| Some((f.stream?, f.node?, f.link?)))
    else {
        return;
    };
    let Some(v) = w.volume(volume) else {
        return;
    };
    let index = stream_index(stream);
    let mut remove_link = false;
    if let Some(n) = v.files.node_mut(node) {
        if let Some(s) = n.stream_mut(index) {
            s.opens -= 1;
            if s.opens == 0 && s.delete_pending {
                n.remove_stream(index);
            }
        }
        if let Some(l) = n.link_mut(link) {
            l.opens -= 1;
            remove_link = l.opens == 0 && l.delete_pending;
        }
    }
    if remove_link && v.files.has_children(node) {
        // A directory that got entries after its delete was asked for cannot go: fltsim drops
        // the delete rather than leave its name pending for ever.
        if let Some(l) = v.files.node_mut(node).and_then(|n| n.link_mut(link)) {
            l.delete_pending = false;
        }
    } else if remove_link {
        v.files.remove_link(node, link);
    }
}

/// Drops one file object of the stream of `file_object` (its close); the stream's last one
/// deletes its stream contexts.
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

/// Sends `IRP_MJ_CLOSE` for `file_object` through the filter and forgets the file object; the
/// stream's contexts go with its last file object.
pub(crate) fn send_close(volume: isize, file_object: *mut FILE_OBJECT) {
    let op = Operation {
        major: major(IRP_MJ_CLOSE),
        minor: 0,
        irp_flags: 0,
        stack_flags: 0,
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
            stack_flags: 0,
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
            cleanup_handle(w, self.volume, file_object as usize);
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

impl Drop for FileHandle<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.close_now();
        }
    }
}
