//! The operation callbacks: post-create records opens; reads and writes are tallied once each.
//!
//! # Where a transfer is counted
//! - **IRP reads and writes** are counted in their **pre-op**, which runs at `PASSIVE_LEVEL` or
//!   `APC_LEVEL`: it takes the shared lock, bumps atomics and returns
//!   `FLT_PREOP_SUCCESS_NO_CALLBACK`. Their post-ops are never requested: they may run at
//!   `DISPATCH_LEVEL`, where the paged table must not be touched ("`PFLT_POST_OPERATION_CALLBACK`
//!   callback function (fltkernel.h)": post-ops run at IRQL <= `DISPATCH_LEVEL` and "cannot get,
//!   set, or delete contexts"). So the bytes counted are the bytes **requested**: the pre-op does
//!   not know how many will be transferred.
//! - **Fast I/O reads and writes** (`FLTFL_CALLBACK_DATA_FAST_IO_OPERATION`, "`FLT_CALLBACK_DATA`
//!   structure (fltkernel.h)"), and the fast-I/O MDL operations `IRP_MJ_MDL_READ` and
//!   `IRP_MJ_PREPARE_MDL_WRITE`, are counted in their **post-op**: a file system may refuse fast I/O
//!   (its routine returns FALSE: file not cached, a byte-range lock, ...), and then "the caller must
//!   create an IRP" ("IRPs Are Different From Fast I/O"), which iotally counts in its pre-op. A
//!   refused fast I/O reaches the post-op with `STATUS_FLT_DISALLOW_FAST_IO` ("Disallowing a Fast
//!   I/O Operation in a Preoperation Callback Routine") and is not counted. Fast I/O is synchronous:
//!   its post-op runs on the issuing thread at the pre-op's IRQL (`docs/kernel-rules.md`), which the
//!   post-op checks before touching the paged table.
//! - **MDL completions** (`IRP_MN_COMPLETE_MDL`, `IRP_MJ_MDL_READ_COMPLETE`,
//!   `IRP_MJ_MDL_WRITE_COMPLETE`) release a transfer's MDL and are not requests: never counted.
//! - **Paging I/O** is skipped by the registration flag (and checked here): it is the cache
//!   manager's and memory manager's I/O, not a request a program made.
//! - A read or write of a stream with no entry is counted per instance as untracked
//!   ([`Stat::UntrackedReads`] and the like), only on that path: a tracked read or write writes no
//!   volume-wide counter of iotally's.
//!
//! Post-create runs at `PASSIVE_LEVEL` (Filter Manager guarantees it for creates), so it may query
//! the file system and take the lock exclusively.

use core::ffi::c_void;
use core::ptr;

use crate::flt::{
    FltAllocateContext, FltGetFileNameInformation, FltQueryInformationFile,
    FltReleaseFileNameInformation, FltSetStreamContext,
};
use windows_sys::Wdk::Foundation::{FILE_OBJECT, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED,
    FLT_FILE_NAME_QUERY_DEFAULT, FLT_IO_PARAMETER_BLOCK, FLT_POSTOP_CALLBACK_STATUS,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_CALLBACK_STATUS, FLT_PREOP_SUCCESS_NO_CALLBACK,
    FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_RELATED_OBJECTS, FLT_SET_CONTEXT_KEEP_IF_EXISTS,
    FLT_STREAM_CONTEXT, FLTFL_CALLBACK_DATA_FAST_IO_OPERATION, FLTFL_POST_OPERATION_DRAINING,
    IRP_MJ_MDL_READ, IRP_MJ_PREPARE_MDL_WRITE, PFLT_CONTEXT, PFLT_INSTANCE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_DIRECTORY_FILE, FILE_ID_INFORMATION, FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION,
    FILE_STANDARD_INFORMATION, FileIdInformation, FileInternalInformation, FileStandardInformation,
};
use windows_sys::Wdk::System::SystemServices::{
    FO_VOLUME_OPEN, IRP_MN_COMPLETE, IRP_PAGING_IO, KeQuerySystemTimePrecise,
    SL_OPEN_TARGET_DIRECTORY,
};
use windows_sys::Win32::Foundation::{STATUS_FLT_DISALLOW_FAST_IO, STATUS_REPARSE};
use windows_sys::Win32::System::WindowsProgramming::FILE_CREATED;

use super::context::{self, Context, ContextRef};
use super::instance::InstanceContext;
use crate::stats::Stat;
use crate::table::{FileKey, Io, OpenOutcome, Slot};

/// The stream context: the key of the stream's file in the instance's table, where its entry was
/// then, and a reference on the instance's context.
///
/// Set by post-create, so that reads and writes find their entry without querying the file system
/// (and, while the slot hint is right, without a lookup in the table). Holding the instance context
/// spares each read and write an `FltGetInstanceContext`, whose reference count every processor
/// doing I/O on the volume would otherwise write; the reference goes in [`stream_cleanup`], when
/// the stream closes or the instance is torn down (Filter Manager deletes an instance's stream
/// contexts at teardown, before the instance context's own cleanup can run).
pub(crate) struct StreamContext {
    owner: ContextRef<InstanceContext>,
    key_low: u64,
    key_high: u64,
    slot: u32,
}

// SAFETY: the only contexts registered as FLT_STREAM_CONTEXT are made by `attach_stream_context`,
// which writes a `StreamContext` into them before publishing them.
unsafe impl Context for StreamContext {
    #[allow(clippy::cast_possible_truncation)]
    const TYPE: u16 = FLT_STREAM_CONTEXT as u16;
}

impl StreamContext {
    fn key(&self) -> FileKey {
        FileKey(u128::from(self.key_high) << 64 | u128::from(self.key_low))
    }

    fn slot(&self) -> Slot {
        Slot::from_bits(self.slot)
    }
}

/// `ContextCleanupCallback` for stream contexts: runs at `IRQL <= APC_LEVEL` when the last
/// reference goes, and releases the instance context the stream context holds.
pub(super) unsafe extern "system" fn stream_cleanup(context: PFLT_CONTEXT, _context_type: u16) {
    // SAFETY: Filter Manager calls this once, after the last reference, for a context made by
    // `attach_stream_context` (so it holds an initialized StreamContext nobody can reach any more).
    unsafe { ptr::drop_in_place(context.cast::<StreamContext>()) };
}

/// The current system time, in 100 ns units since 1601.
fn now() -> i64 {
    let mut time = 0;
    // SAFETY: `time` is a valid out pointer; callable at any IRQL.
    unsafe { KeQuerySystemTimePrecise(&raw mut time) };
    time
}

/// `PostOperation` for `IRP_MJ_CREATE` (always `PASSIVE_LEVEL`).
pub(super) unsafe extern "system" fn post_create(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: Filter Manager passes valid callback data for the duration of the callback.
    let data = unsafe { &*data };
    // SAFETY: and valid related objects; iotally only reads them.
    let objects = unsafe { &*objects };
    // SAFETY: the create's final status is in the `Status` arm of the IO_STATUS_BLOCK union.
    let status = unsafe { data.IoStatus.Anonymous.Status };
    if status < 0 || status == STATUS_REPARSE || objects.FileObject.is_null() {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: the file object of a successful create is valid during its post-create.
    let file_flags = unsafe { (*objects.FileObject).Flags };
    // SAFETY: the create's parameter block, valid for the callback.
    let iopb = unsafe { &*data.Iopb };
    // SAFETY: the Create arm is the one Filter Manager fills for IRP_MJ_CREATE.
    let create_options = unsafe { iopb.Parameters.Create.Options } & 0x00FF_FFFF;
    // Volume opens, directory opens the caller asked for (FILE_DIRECTORY_FILE) and the rename
    // target's directory (SL_OPEN_TARGET_DIRECTORY) are no files: no query, no lock.
    if file_flags & FO_VOLUME_OPEN != 0
        || create_options & FILE_DIRECTORY_FILE != 0
        || u32::from(iopb.OperationFlags) & SL_OPEN_TARGET_DIRECTORY != 0
    {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // IoStatus.Information of a create says what happened ("NtCreateFile function (ntifs.h)").
    // FILE_CREATED on a path naming a stream may mean only the stream is new: the file is then
    // not new (a new file created with its first stream is told apart by its ID, see record_open).
    let created = data.IoStatus.Information == FILE_CREATED as usize;
    // SAFETY: the file object of a successful create is valid during its post-create.
    let file_name = unsafe { &(*objects.FileObject).FileName };
    // SAFETY: its FileName is the name it was opened by (`Length` bytes at `Buffer`), valid for the
    // post-create.
    let opened_by = unsafe { units(file_name) };
    record_open(data, objects, created && !names_a_stream(opened_by));
    FLT_POSTOP_FINISHED_PROCESSING
}

/// The UTF-16 units of `string`.
///
/// # Safety
/// `string` must describe `Length` bytes of UTF-16 at `Buffer` (or have a NULL `Buffer`), valid
/// for the returned lifetime.
unsafe fn units(string: &windows_sys::Win32::Foundation::UNICODE_STRING) -> &[u16] {
    if string.Buffer.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(string.Buffer, usize::from(string.Length / 2)) }
}

/// Where the stream part of a file name begins (the `:` in its final component), if it has one:
/// `\dir\file.txt:name`, `\dir\file.txt:name:$DATA`, `\dir\file.txt::$DATA`. A `:` can only be
/// a stream separator there ("File Streams (Local File Systems)"; "Naming Files, Paths, and
/// Namespaces": `:` is reserved).
fn stream_part(name: &[u16]) -> Option<usize> {
    let final_component = name
        .iter()
        .rposition(|&c| c == u16::from(b'\\'))
        .map_or(0, |i| i + 1);
    let offset = name[final_component..]
        .iter()
        .position(|&c| c == u16::from(b':'))?;
    Some(final_component + offset)
}

/// Whether a name names a named data stream (`file:name`), not the unnamed one (`file::$DATA`).
fn names_a_stream(name: &[u16]) -> bool {
    stream_part(name).is_some_and(|colon| name.get(colon + 1) != Some(&u16::from(b':')))
}

/// The file's name in a stream's name: `\dir\file.txt` for `\dir\file.txt:name`, so that a
/// stream tallied with its file never gives the file its name.
fn file_part(name: &[u16]) -> &[u16] {
    stream_part(name).map_or(name, |colon| &name[..colon])
}

/// Tallies a successful open of a file (not a directory).
///
/// A stream iotally already knows carries a stream context with its key: the open is then counted
/// under the **shared** lock, with no file-system query. A stream without one (its last handle
/// closed, or the context could not be made) has its file ID queried, without any lock held (the
/// query can re-enter the file system); if the table knows that ID the open is still counted under
/// the shared lock, with no name query. Only a file new to the table has its name queried and is
/// inserted under the exclusive lock.
///
/// A create that made a new file (`FILE_CREATED` on the file's unnamed stream: `new_file`) always
/// starts a new entry: an entry under its ID belonged to a file that is gone (FAT and exFAT give a
/// new file the ID of a deleted or moved file's directory entry), and must not lend it its tallies
/// or name. A new named stream of an existing file keeps the file's entry (FAT and exFAT, which
/// recycle IDs, have no named streams; NTFS and ReFS never reuse an ID, so a file created together
/// with its first stream finds no entry under its ID).
///
/// Alternate data streams are tallied with their file: they share its ID ("File Streams (Local File
/// Systems)"), and a stream's I/O is I/O of the file. The entry is named by the file's name, never
/// the stream's (the name's stream part is dropped). A file with several names (hard links) is one
/// entry, named by the name it was first opened by, as a renamed file keeps its first name.
fn record_open(data: &FLT_CALLBACK_DATA, objects: &FLT_RELATED_OBJECTS, new_file: bool) {
    let (instance, file) = (objects.Instance, objects.FileObject);
    let Some(owner) = context::instance_context::<InstanceContext>(instance) else {
        return;
    };
    let known = context::stream_context::<StreamContext>(instance, file).map(|stream| stream.key());
    if known == Some(DIRECTORY) {
        return;
    }
    if let Some(key) = known
        && !new_file
        && owner.tallies().read().record_reopen(key, now())
    {
        return;
    }
    let key = match known {
        Some(key) => key,
        None => match identify(instance, file) {
            Identity::File(key) => key,
            Identity::Directory => {
                attach_stream_context(objects, &owner, DIRECTORY, None);
                return;
            }
            Identity::Unknown => {
                owner.tallies().read().add_stat(Stat::UntrackedOpens, 1);
                return;
            }
        },
    };
    if !new_file && known.is_none() {
        let tallies = owner.tallies().read();
        if tallies.record_reopen(key, now()) {
            let slot = tallies.slot(key);
            drop(tallies);
            attach_stream_context(objects, &owner, key, slot);
            return;
        }
    }
    let (name, failures) = FileName::get(data);
    let (outcome, slot) = {
        let mut tallies = owner.tallies().write();
        tallies.add_stat(Stat::NameQueryFailures, failures);
        if new_file {
            tallies.forget(key);
        }
        let outcome = tallies.record_open(key, file_part(name.units()), now());
        (outcome, tallies.slot(key))
    };
    drop(name);
    if outcome != OpenOutcome::AllocationFailed && known.is_none() {
        attach_stream_context(objects, &owner, key, slot);
    }
}

/// The stream-context key that marks a directory (0 is never a file's key: see [`file_key`]), so
/// that later opens of it cost one context lookup and no file-system query.
const DIRECTORY: FileKey = FileKey(0);

/// What a stream seen for the first time is.
enum Identity {
    /// A file, with its key.
    File(FileKey),
    /// A directory.
    Directory,
    /// The file system could not say, or gave no usable ID.
    Unknown,
}

/// Queries whether the stream is a directory, and a file's key.
fn identify(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> Identity {
    match is_directory(instance, file) {
        Some(true) => Identity::Directory,
        Some(false) => file_key(instance, file).map_or(Identity::Unknown, Identity::File),
        None => Identity::Unknown,
    }
}

/// `FILE_STANDARD_INFORMATION` as the bytes the file system wrote, 8-byte aligned like the structure.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct StandardInformationBytes([u8; size_of::<FILE_STANDARD_INFORMATION>()]);

/// Whether the file is a directory (`FileStandardInformation`).
///
/// windows-sys declares the structure's `BOOLEAN` fields as Rust `bool`s, which may only hold 0 or
/// 1; a file system may write any nonzero byte for TRUE. So the structure is queried as bytes and
/// its `Directory` byte compared with 0 (`docs/kernel-rules.md`, "Counting I/O").
fn is_directory(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> Option<bool> {
    let bytes = query::<StandardInformationBytes>(instance, file, FileStandardInformation)?;
    let directory = bytes
        .0
        .get(core::mem::offset_of!(FILE_STANDARD_INFORMATION, Directory))?;
    Some(*directory != 0)
}

/// The file's key: the 128-bit file ID where the file system has one, else the 64-bit index number.
///
/// Neither 0 nor all-ones identifies a file: `FileIdInformation` returns 0 on a file system without
/// 128-bit IDs ("`FILE_ID_INFORMATION` structure (ntifs.h)") and all-ones when it cannot establish one
/// (MS-FSCC, `FILE_ID_128`); the 64-bit index uses the same two values. Such a file has no key.
fn file_key(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> Option<FileKey> {
    if let Some(id) = query::<FILE_ID_INFORMATION>(instance, file, FileIdInformation) {
        let id = u128::from_le_bytes(id.FileId.Identifier);
        if id != 0 && id != u128::MAX {
            return Some(FileKey(id));
        }
    }
    let internal = query::<FILE_INTERNAL_INFORMATION>(instance, file, FileInternalInformation)?;
    let index = internal.IndexNumber.cast_unsigned();
    (index != 0 && index != u64::MAX).then(|| FileKey(u128::from(index)))
}

/// `FltQueryInformationFile` for a fixed-size information class `T` (`PASSIVE_LEVEL`).
///
/// `T` must be valid for any bytes (integers and byte arrays only: no `bool`, no enum), since the
/// file system writes it.
fn query<T: Copy>(
    instance: PFLT_INSTANCE,
    file: *const FILE_OBJECT,
    class: FILE_INFORMATION_CLASS,
) -> Option<T> {
    let mut info = core::mem::MaybeUninit::<T>::zeroed();
    let mut returned = 0u32;
    let length = u32::try_from(size_of::<T>()).ok()?;
    // SAFETY: `info` is a writable buffer of `length` bytes; `instance` and `file` come from the
    // post-create's related objects. No lock is held: this call can re-enter the file system.
    let status = unsafe {
        FltQueryInformationFile(
            instance,
            file,
            info.as_mut_ptr().cast(),
            length,
            class,
            &raw mut returned,
        )
    };
    if status < 0 || returned as usize != size_of::<T>() {
        return None;
    }
    // SAFETY: the file system filled all `size_of::<T>()` bytes (zero-initialized before the call),
    // and every `T` this is used with is valid for any bytes (see above).
    Some(unsafe { info.assume_init() })
}

/// The file's name from Filter Manager, released on drop; empty if no name could be had.
struct FileName(*mut FLT_FILE_NAME_INFORMATION);

impl FileName {
    /// The normalized name, or the opened name if normalizing fails (e.g. out of resources), with
    /// the number of name queries that failed.
    fn get(data: &FLT_CALLBACK_DATA) -> (Self, u64) {
        let mut failures = 0;
        for format in [FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED] {
            let mut info = ptr::null_mut();
            // SAFETY: `data` is the post-create's callback data; at PASSIVE_LEVEL with no lock held,
            // as FltGetFileNameInformation (which can re-enter the file system) needs.
            let status = unsafe {
                FltGetFileNameInformation(data, format | FLT_FILE_NAME_QUERY_DEFAULT, &raw mut info)
            };
            if status >= 0 && !info.is_null() {
                return (Self(info), failures);
            }
            failures += 1;
        }
        (Self(ptr::null_mut()), failures)
    }

    /// The name's UTF-16 units.
    fn units(&self) -> &[u16] {
        if self.0.is_null() {
            return &[];
        }
        // SAFETY: a referenced FLT_FILE_NAME_INFORMATION stays valid until released in `drop`.
        let name = unsafe { &(*self.0).Name };
        // SAFETY: its Name describes `Length` bytes of UTF-16 at `Buffer` (or has a NULL `Buffer`),
        // valid while `self` holds its reference.
        unsafe { units(name) }
    }
}

impl Drop for FileName {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: releases the one reference FltGetFileNameInformation returned.
            unsafe { FltReleaseFileNameInformation(self.0) };
        }
    }
}

/// Gives the stream a context carrying `key` and its entry's `slot`, unless it already has one.
fn attach_stream_context(
    objects: &FLT_RELATED_OBJECTS,
    owner: &ContextRef<InstanceContext>,
    key: FileKey,
    slot: Option<Slot>,
) {
    let (instance, file) = (objects.Instance, objects.FileObject);
    if context::stream_context::<StreamContext>(instance, file).is_some() {
        return;
    }
    let mut raw: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: `filter` is the post-create's own filter; stream contexts are declared in the
    // registration with this size, paged.
    let status = unsafe {
        FltAllocateContext(
            objects.Filter,
            StreamContext::TYPE,
            size_of::<StreamContext>(),
            PagedPool,
            &raw mut raw,
        )
    };
    if status < 0 || raw.is_null() {
        // The stream's reads and writes will not be tallied (they count as untracked): a tally
        // dropped for lack of pool. A directory's context only saves later queries.
        if key != DIRECTORY {
            owner.tallies().read().add_stat(Stat::AllocationFailures, 1);
        }
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let value = StreamContext {
        owner: owner.clone(),
        key_low: key.0 as u64,
        key_high: (key.0 >> 64) as u64,
        slot: slot.map_or(u32::MAX, Slot::to_bits),
    };
    // SAFETY: fresh context memory of StreamContext's size, aligned for it (pool alignment); written
    // before the context is published or released.
    unsafe { ptr::write(raw.cast::<StreamContext>(), value) };
    // SAFETY: we own the one reference on `raw` and it now holds an initialized StreamContext.
    let Some(stream) = (unsafe { ContextRef::<StreamContext>::from_raw(raw) }) else {
        return;
    };
    // SAFETY: `instance` and `file` come from the post-create; the context is referenced by us.
    // If another open raced us and set one first (STATUS_FLT_CONTEXT_ALREADY_DEFINED), theirs stays.
    unsafe {
        FltSetStreamContext(
            instance,
            file,
            FLT_SET_CONTEXT_KEEP_IF_EXISTS,
            stream.as_raw(),
            ptr::null_mut(),
        );
    }
    // A deliberate bug (feature `broken-leak-context`, never shipped): our reference is never
    // released, so the context outlives its stream and the driver.
    #[cfg(feature = "broken-leak-context")]
    core::mem::forget(stream);
}

/// `PreOperation` for `IRP_MJ_READ`.
pub(super) unsafe extern "system" fn pre_read(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a pre-read, passed on as they came.
    unsafe { pre_transfer(data, objects, Io::Read) }
}

/// `PreOperation` for `IRP_MJ_WRITE`.
pub(super) unsafe extern "system" fn pre_write(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a pre-write, passed on as they came.
    unsafe { pre_transfer(data, objects, Io::Write) }
}

/// The pre-op of reads and writes: an IRP is tallied here (requested bytes); a fast I/O operation
/// only asks for its post-op, where it is tallied unless the file system refused it; the completion
/// half of an MDL transfer (`IRP_MN_COMPLETE_MDL`) is not a request and is not tallied.
///
/// # Safety
/// `data` and `objects` must be the arguments of a pre-operation callback for `IRP_MJ_READ` (with
/// `Io::Read`) or `IRP_MJ_WRITE` (with `Io::Write`), valid for the call.
unsafe fn pre_transfer(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    io: Io,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: valid callback data for the duration of the callback (the caller's contract).
    let data = unsafe { &*data };
    if data.Flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0 {
        return FLT_PREOP_SUCCESS_WITH_CALLBACK;
    }
    // SAFETY: Filter Manager's parameter block of this operation, valid for the callback.
    let iopb = unsafe { &*data.Iopb };
    if u32::from(iopb.MinorFunction) & IRP_MN_COMPLETE != 0 {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    // SAFETY: the related objects of the callback, valid for its duration.
    let objects = unsafe { &*objects };
    record_transfer(objects, iopb.IrpFlags, io, transfer_length(iopb, io));
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// `PostOperation` for `IRP_MJ_READ` and `IRP_MJ_WRITE`: only fast I/O asks for it.
pub(super) unsafe extern "system" fn post_read(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a post-read, passed on as they came.
    unsafe { post_fast_transfer(data, objects, flags, Io::Read) }
}

/// `PostOperation` for `IRP_MJ_WRITE` (fast I/O only).
pub(super) unsafe extern "system" fn post_write(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a post-write, passed on as they came.
    unsafe { post_fast_transfer(data, objects, flags, Io::Write) }
}

/// `PreOperation` for `IRP_MJ_MDL_READ` and `IRP_MJ_PREPARE_MDL_WRITE`, which are fast I/O only:
/// tallied in the post-op, like fast reads and writes.
pub(super) unsafe extern "system" fn pre_fast_mdl(
    _data: *mut FLT_CALLBACK_DATA,
    _objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    FLT_PREOP_SUCCESS_WITH_CALLBACK
}

/// `PostOperation` for `IRP_MJ_MDL_READ`.
pub(super) unsafe extern "system" fn post_mdl_read(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a post-op, passed on as they came.
    unsafe { post_fast_transfer(data, objects, flags, Io::Read) }
}

/// `PostOperation` for `IRP_MJ_PREPARE_MDL_WRITE`.
pub(super) unsafe extern "system" fn post_prepare_mdl_write(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a post-op, passed on as they came.
    unsafe { post_fast_transfer(data, objects, flags, Io::Write) }
}

/// The post-op of a fast read or write (plain or MDL): tallies it, unless the file system refused
/// it (`IoStatus.Status` is then `STATUS_FLT_DISALLOW_FAST_IO` and the I/O manager reissues the
/// request as an IRP, tallied by its pre-op) or the instance is draining.
///
/// A fast I/O post-op runs synchronously on the issuing thread at the pre-op's IRQL (see the module
/// documentation); the IRQL is checked anyway, and the paged table is never touched above
/// `APC_LEVEL`.
///
/// # Safety
/// The arguments of a post-operation callback of a read (with `Io::Read`) or write (`Io::Write`)
/// operation, valid for the call.
unsafe fn post_fast_transfer(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    flags: u32,
    io: Io,
) -> FLT_POSTOP_CALLBACK_STATUS {
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 || crate::irql::current() > crate::irql::Irql::APC
    {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: valid callback data for the duration of the callback (the caller's contract).
    let data = unsafe { &*data };
    // SAFETY: the final status is in the `Status` arm of the IO_STATUS_BLOCK union.
    let status = unsafe { data.IoStatus.Anonymous.Status };
    if data.Flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION == 0
        || status == STATUS_FLT_DISALLOW_FAST_IO
    {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: Filter Manager's parameter block of this operation, valid for the callback.
    let iopb = unsafe { &*data.Iopb };
    // SAFETY: the related objects of the callback, valid for its duration.
    let objects = unsafe { &*objects };
    record_transfer(objects, iopb.IrpFlags, io, transfer_length(iopb, io));
    FLT_POSTOP_FINISHED_PROCESSING
}

/// The requested length of a read or write (`IRP_MJ_READ`/`WRITE`, or the fast-I/O MDL operations).
fn transfer_length(iopb: &FLT_IO_PARAMETER_BLOCK, io: Io) -> u32 {
    let major = iopb.MajorFunction;
    // Filter Manager fills the parameters arm of the operation's major function: MdlRead for
    // IRP_MJ_MDL_READ, PrepareMdlWrite for IRP_MJ_PREPARE_MDL_WRITE, Read or Write otherwise.
    if major == MDL_READ {
        // SAFETY: the MdlRead arm, per the major function.
        unsafe { iopb.Parameters.MdlRead.Length }
    } else if major == PREPARE_MDL_WRITE {
        // SAFETY: the PrepareMdlWrite arm, per the major function.
        unsafe { iopb.Parameters.PrepareMdlWrite.Length }
    } else if io == Io::Read {
        // SAFETY: the Read arm of an IRP_MJ_READ.
        unsafe { iopb.Parameters.Read.Length }
    } else {
        // SAFETY: the Write arm of an IRP_MJ_WRITE.
        unsafe { iopb.Parameters.Write.Length }
    }
}

/// `IRP_MJ_MDL_READ` as `FLT_IO_PARAMETER_BLOCK.MajorFunction` holds it (`(UCHAR)-15`).
pub(super) const MDL_READ: u8 = IRP_MJ_MDL_READ.to_le_bytes()[0];
/// `IRP_MJ_PREPARE_MDL_WRITE` as `FLT_IO_PARAMETER_BLOCK.MajorFunction` holds it.
pub(super) const PREPARE_MDL_WRITE: u8 = IRP_MJ_PREPARE_MDL_WRITE.to_le_bytes()[0];

/// Tallies one read or write of `length` requested bytes under the shared lock
/// (`IRQL <= APC_LEVEL`); a request on a stream iotally has no entry for is counted as untracked.
fn record_transfer(objects: &FLT_RELATED_OBJECTS, irp_flags: u32, io: Io, length: u32) {
    if irp_flags & IRP_PAGING_IO != 0 || objects.FileObject.is_null() {
        return;
    }
    let stream = context::stream_context::<StreamContext>(objects.Instance, objects.FileObject);
    crate::paged_code!("record_transfer (the stream context is paged)");
    let unknown_stream;
    let owner = match &stream {
        Some(stream) => &stream.owner,
        None => match context::instance_context::<InstanceContext>(objects.Instance) {
            Some(owner) => {
                unknown_stream = owner;
                &unknown_stream
            }
            None => return,
        },
    };
    // A deliberate bug (feature `broken-hold-push-lock`, never shipped): one more shared hold, never
    // released, so the callback returns with the lock held (and normal kernel APCs disabled).
    #[cfg(feature = "broken-hold-push-lock")]
    core::mem::forget(owner.tallies().read());
    let tallies = owner.tallies().read();
    let bytes = u64::from(length);
    if let Some(stream) = &stream
        && tallies.record_io_at(stream.slot(), stream.key(), io, bytes, now())
    {
        return;
    }
    let (requests, requested) = match io {
        Io::Read => (Stat::UntrackedReads, Stat::UntrackedBytesRead),
        Io::Write => (Stat::UntrackedWrites, Stat::UntrackedBytesWritten),
    };
    tallies.add_stat(requests, 1);
    tallies.add_stat(requested, bytes);
}

#[cfg(test)]
mod tests {
    use super::{file_part, names_a_stream};

    fn utf16(s: &str) -> std::vec::Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn stream_names_are_told_from_file_names() {
        for (name, stream, file) in [
            (r"\d\f.txt", false, r"\d\f.txt"),
            (r"\d\f.txt:s", true, r"\d\f.txt"),
            (r"\d\f.txt:s:$DATA", true, r"\d\f.txt"),
            (r"\d\f.txt::$DATA", false, r"\d\f.txt"),
            (
                r"\Device\HarddiskVolume2\f:Zone.Identifier",
                true,
                r"\Device\HarddiskVolume2\f",
            ),
            ("f:s", true, "f"),
            ("", false, ""),
        ] {
            assert_eq!(names_a_stream(&utf16(name)), stream, "{name}");
            assert_eq!(file_part(&utf16(name)), utf16(file).as_slice(), "{name}");
        }
    }
}
