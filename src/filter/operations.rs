//! The operation callbacks: post-create records opens, pre-read and pre-write record transfers.
//!
//! IRQL: post-create runs at `PASSIVE_LEVEL` (Filter Manager guarantees it for creates), so it may
//! query the file system and take the lock exclusively. Pre-read and pre-write run at `PASSIVE_LEVEL`
//! or `APC_LEVEL`; they take the shared lock, bump atomics and return
//! `FLT_PREOP_SUCCESS_NO_CALLBACK`, so no post-read or post-write ever runs (those could run at
//! `DISPATCH_LEVEL`, where the paged table must not be touched). Paging I/O is skipped both by the
//! registration flag and here.

use core::ptr;

use windows_sys::Wdk::Foundation::{FILE_OBJECT, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED,
    FLT_FILE_NAME_QUERY_DEFAULT, FLT_POSTOP_CALLBACK_STATUS, FLT_POSTOP_FINISHED_PROCESSING,
    FLT_PREOP_CALLBACK_STATUS, FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_RELATED_OBJECTS,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT, FLTFL_POST_OPERATION_DRAINING,
    FltAllocateContext, FltGetFileNameInformation, FltQueryInformationFile,
    FltReleaseFileNameInformation, FltSetStreamContext, PFLT_CONTEXT, PFLT_INSTANCE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_ID_INFORMATION, FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION,
    FILE_STANDARD_INFORMATION, FileIdInformation, FileInternalInformation, FileStandardInformation,
};
use windows_sys::Wdk::System::SystemServices::{
    FO_VOLUME_OPEN, IRP_PAGING_IO, KeQuerySystemTimePrecise,
};
use windows_sys::Win32::Foundation::STATUS_REPARSE;

use super::context::{self, Context, ContextRef};
use super::instance::InstanceContext;
use crate::table::{FileKey, Io, OpenOutcome, Slot};

/// The stream context: the key of the stream's file in the instance's table, and where its entry
/// was then.
///
/// Set by post-create, so that reads and writes find their entry without querying the file system
/// (and, while the slot hint is right, without a lookup in the table). Plain data: it needs no
/// cleanup callback.
pub(crate) struct StreamContext {
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
    _completion_context: *const core::ffi::c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: Filter Manager passes valid callback data and related objects for the duration of the
    // callback; iotally only reads them.
    let (data, objects) = unsafe { (&*data, &*objects) };
    // SAFETY: the create's final status is in the `Status` arm of the IO_STATUS_BLOCK union.
    let status = unsafe { data.IoStatus.Anonymous.Status };
    if status < 0 || status == STATUS_REPARSE || objects.FileObject.is_null() {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: the file object of a successful create is valid during its post-create.
    let file_flags = unsafe { (*objects.FileObject).Flags };
    if file_flags & FO_VOLUME_OPEN != 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    record_open(data, objects.Instance, objects.FileObject);
    FLT_POSTOP_FINISHED_PROCESSING
}

/// Tallies a successful open of a file (not a directory).
///
/// A stream iotally already knows carries a stream context with its key: the open is then counted
/// under the **shared** lock, with no file-system query. Otherwise the file-system queries (directory?
/// file ID, name) run first, without any lock held (they can re-enter the file system), and the entry
/// is inserted under the exclusive lock.
fn record_open(data: &FLT_CALLBACK_DATA, instance: PFLT_INSTANCE, file: *const FILE_OBJECT) {
    let Some(owner) = context::instance_context::<InstanceContext>(instance) else {
        return;
    };
    let known = context::stream_context::<StreamContext>(instance, file).map(|stream| stream.key());
    if let Some(key) = known
        && owner.tallies().read().record_reopen(key, now())
    {
        return;
    }
    let Some(key) = known.or_else(|| file_key_unless_directory(instance, file)) else {
        return;
    };
    let name = FileName::get(data);
    let (outcome, slot) = {
        let mut table = owner.tallies().write();
        let outcome = table.record_open(key, name.units(), now());
        (outcome, table.slot(key))
    };
    drop(name);
    if outcome != OpenOutcome::AllocationFailed && known.is_none() {
        attach_stream_context(instance, file, key, slot);
    }
}

/// The key of a file seen for the first time, or `None` for a directory (or if the file system
/// cannot tell).
fn file_key_unless_directory(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> Option<FileKey> {
    if is_directory(instance, file)? {
        return None;
    }
    file_key(instance, file)
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
fn file_key(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> Option<FileKey> {
    if let Some(id) = query::<FILE_ID_INFORMATION>(instance, file, FileIdInformation) {
        return Some(FileKey(u128::from_le_bytes(id.FileId.Identifier)));
    }
    let internal = query::<FILE_INTERNAL_INFORMATION>(instance, file, FileInternalInformation)?;
    Some(FileKey(u128::from(internal.IndexNumber.cast_unsigned())))
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
    /// The normalized name, or the opened name if normalizing fails (e.g. out of resources).
    fn get(data: &FLT_CALLBACK_DATA) -> Self {
        for format in [FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED] {
            let mut info = ptr::null_mut();
            // SAFETY: `data` is the post-create's callback data; at PASSIVE_LEVEL with no lock held,
            // as FltGetFileNameInformation (which can re-enter the file system) needs.
            let status = unsafe {
                FltGetFileNameInformation(data, format | FLT_FILE_NAME_QUERY_DEFAULT, &raw mut info)
            };
            if status >= 0 && !info.is_null() {
                return Self(info);
            }
        }
        Self(ptr::null_mut())
    }

    /// The name's UTF-16 units.
    fn units(&self) -> &[u16] {
        if self.0.is_null() {
            return &[];
        }
        // SAFETY: a referenced FLT_FILE_NAME_INFORMATION stays valid until released in `drop`;
        // its Name describes `Length` bytes of UTF-16 at `Buffer`.
        unsafe {
            let name = &(*self.0).Name;
            if name.Buffer.is_null() {
                return &[];
            }
            core::slice::from_raw_parts(name.Buffer, usize::from(name.Length / 2))
        }
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
    instance: PFLT_INSTANCE,
    file: *const FILE_OBJECT,
    key: FileKey,
    slot: Option<Slot>,
) {
    if context::stream_context::<StreamContext>(instance, file).is_some() {
        return;
    }
    let mut raw: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: stream contexts are declared in the registration with this size, paged.
    let status = unsafe {
        FltAllocateContext(
            super::filter_handle(),
            StreamContext::TYPE,
            size_of::<StreamContext>(),
            PagedPool,
            &raw mut raw,
        )
    };
    if status < 0 || raw.is_null() {
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let value = StreamContext {
        key_low: key.0 as u64,
        key_high: (key.0 >> 64) as u64,
        slot: slot.map_or(u32::MAX, Slot::to_bits),
    };
    // SAFETY: fresh context memory of StreamContext's size, aligned for it (pool alignment); written
    // before the context is published or released.
    unsafe { ptr::write(raw.cast::<StreamContext>(), value) };
    // SAFETY: we own the one reference on `raw` and it now holds an initialized StreamContext.
    let Some(owned) = (unsafe { ContextRef::<StreamContext>::from_raw(raw) }) else {
        return;
    };
    // SAFETY: `instance` and `file` come from the post-create; the context is referenced by us.
    // If another open raced us and set one first (STATUS_FLT_CONTEXT_ALREADY_DEFINED), theirs stays.
    unsafe {
        FltSetStreamContext(
            instance,
            file,
            FLT_SET_CONTEXT_KEEP_IF_EXISTS,
            owned.as_raw(),
            ptr::null_mut(),
        );
    }
}

/// `PreOperation` for `IRP_MJ_READ`.
pub(super) unsafe extern "system" fn pre_read(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut core::ffi::c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a pre-read, passed on as they came.
    unsafe { pre_transfer(data, objects, Io::Read) }
}

/// `PreOperation` for `IRP_MJ_WRITE`.
pub(super) unsafe extern "system" fn pre_write(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion_context: *mut *mut core::ffi::c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: Filter Manager's arguments to a pre-write, passed on as they came.
    unsafe { pre_transfer(data, objects, Io::Write) }
}

/// The work of pre-read and pre-write: tally the transfer, never ask for a post-operation callback.
///
/// # Safety
/// `data` and `objects` must be the arguments of a pre-operation callback for `IRP_MJ_READ` (with
/// `Io::Read`) or `IRP_MJ_WRITE` (with `Io::Write`), valid for the call.
unsafe fn pre_transfer(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    io: Io,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: valid for the duration of the callback (the caller's contract); the Read arm of the
    // parameters union is the one Filter Manager fills for IRP_MJ_READ, the Write arm for
    // IRP_MJ_WRITE.
    let (length, irp_flags, objects) = unsafe {
        let iopb = &*(*data).Iopb;
        let length = match io {
            Io::Read => iopb.Parameters.Read.Length,
            Io::Write => iopb.Parameters.Write.Length,
        };
        (length, iopb.IrpFlags, &*objects)
    };
    record_transfer(objects, irp_flags, io, length);
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// Tallies one read or write of `length` bytes under the shared lock (`IRQL <= APC_LEVEL`).
fn record_transfer(objects: &FLT_RELATED_OBJECTS, irp_flags: u32, io: Io, length: u32) {
    if irp_flags & IRP_PAGING_IO != 0 || objects.FileObject.is_null() {
        return;
    }
    let Some(stream) =
        context::stream_context::<StreamContext>(objects.Instance, objects.FileObject)
    else {
        return;
    };
    let (key, slot) = (stream.key(), stream.slot());
    drop(stream);
    let Some(owner) = context::instance_context::<InstanceContext>(objects.Instance) else {
        return;
    };
    owner
        .tallies()
        .read()
        .record_io_at(slot, key, io, u64::from(length), now());
}
