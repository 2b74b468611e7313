//! Volume instances: which volumes iotally attaches to, and the instance context holding the table.
//!
//! # Attach policy
//! iotally attaches to local disk file systems (NTFS, ReFS, FAT, exFAT, …) whose volume is
//! writable. It does not attach to network redirectors (`FILE_DEVICE_NETWORK_FILE_SYSTEM`), optical
//! media (`FILE_DEVICE_CD_ROM_FILE_SYSTEM`), RAW volumes, or read-only volumes: their I/O is not what
//! iotally is for, and skipping them keeps instances (and paged pool) off volumes nobody asked about.

use core::ptr::{self, NonNull};

use crate::flt::{
    FltAllocateContext, FltGetVolumeName, FltIsVolumeWritable, FltSetInstanceContext,
};
use windows_sys::Wdk::Foundation::PagedPool;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_INSTANCE_CONTEXT, FLT_RELATED_OBJECTS, FLT_SET_CONTEXT_KEEP_IF_EXISTS, PFLT_CONTEXT,
    PFLT_FILTER, PFLT_VOLUME,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_FLT_DO_NOT_ATTACH, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{FLT_FILESYSTEM_TYPE, FLT_FSTYPE_RAW};
use windows_sys::Win32::System::Ioctl::FILE_DEVICE_DISK_FILE_SYSTEM;

use super::context::{Context, ContextRef};
use crate::pool::{PagedAllocator, tags};
use crate::sync::PushLock;
use crate::table::Table;

/// The tally table of one instance, in paged pool.
pub(crate) type InstanceTable = Table<PagedAllocator>;

/// The instance context: one per attached volume, in paged pool, alive from InstanceSetup until
/// Filter Manager deletes it after the instance tears down and its last reference is released.
pub(crate) struct InstanceContext {
    volume_name: allocator_api2::vec::Vec<u16, PagedAllocator>,
    tallies: PushLock<InstanceTable>,
}

// SAFETY: the only contexts registered as FLT_INSTANCE_CONTEXT are made by `allocate`, which fully
// initializes an `InstanceContext` before anyone else can see it.
unsafe impl Context for InstanceContext {
    #[allow(clippy::cast_possible_truncation)]
    const TYPE: u16 = FLT_INSTANCE_CONTEXT as u16;
}

// Context memory is pool memory aligned to at least 8 bytes (16 on x64): the context must not need
// more.
const _: () = assert!(align_of::<InstanceContext>() <= 8);

impl InstanceContext {
    /// The volume's name, e.g. `\Device\HarddiskVolume3` (UTF-16).
    pub(crate) fn volume_name(&self) -> &[u16] {
        &self.volume_name
    }

    /// The table, behind its push lock.
    pub(crate) fn tallies(&self) -> &PushLock<InstanceTable> {
        &self.tallies
    }
}

/// `ContextCleanupCallback` for instance contexts: runs at `IRQL <= APC_LEVEL` when the last
/// reference goes, and drops what the context owns (the table, its lock, the volume name).
pub(super) unsafe extern "system" fn cleanup(context: PFLT_CONTEXT, _context_type: u16) {
    // SAFETY: Filter Manager calls this once, after the last reference, for a context made by
    // `allocate` (so it holds an initialized InstanceContext that nobody else can reach any more).
    unsafe { ptr::drop_in_place(context.cast::<InstanceContext>()) };
}

/// Whether iotally attaches to a volume of this device and file-system type.
fn wanted(device_type: u32, fs_type: FLT_FILESYSTEM_TYPE) -> bool {
    device_type == FILE_DEVICE_DISK_FILE_SYSTEM && fs_type != FLT_FSTYPE_RAW
}

/// `InstanceSetupCallback` (`PASSIVE_LEVEL`): decides whether to attach and creates the context.
pub(super) unsafe extern "system" fn setup(
    objects: *const FLT_RELATED_OBJECTS,
    _flags: u32,
    device_type: u32,
    fs_type: FLT_FILESYSTEM_TYPE,
) -> NTSTATUS {
    // SAFETY: Filter Manager passes valid related objects for the duration of the callback.
    let objects = unsafe { &*objects };
    if !wanted(device_type, fs_type) || !is_writable(objects.Volume) {
        return STATUS_FLT_DO_NOT_ATTACH;
    }
    let context = match allocate(objects.Filter, objects.Volume) {
        Ok(context) => context,
        Err(status) => {
            crate::log_error!("instance setup failed: {status:#x}");
            return status;
        }
    };
    // SAFETY: `objects.Instance` is the instance being set up; the context is ours and referenced.
    let status = unsafe {
        FltSetInstanceContext(
            objects.Instance,
            FLT_SET_CONTEXT_KEEP_IF_EXISTS,
            context.as_raw(),
            ptr::null_mut(),
        )
    };
    // Whether or not setting it worked, our own reference goes with `context` here: on success the
    // instance holds its own; on failure the context is freed (cleanup runs).
    drop(context);
    if status < 0 {
        crate::log_error!("FltSetInstanceContext failed: {status:#x}");
        return status;
    }
    STATUS_SUCCESS
}

/// `InstanceQueryTeardownCallback`: manual detach (`fltmc detach`) is always allowed. Without this
/// callback registered, Filter Manager would refuse every manual detach.
pub(super) unsafe extern "system" fn query_teardown(
    _objects: *const FLT_RELATED_OBJECTS,
    _flags: u32,
) -> NTSTATUS {
    STATUS_SUCCESS
}

/// Whether the volume accepts writes; a volume whose state cannot be queried counts as read-only.
fn is_writable(volume: PFLT_VOLUME) -> bool {
    let mut writable = false;
    // SAFETY: `volume` comes from the setup callback's related objects; `writable` is a valid out
    // pointer. FltIsVolumeWritable takes any Filter Manager object (a volume here).
    let status =
        unsafe { FltIsVolumeWritable(volume as *const core::ffi::c_void, &raw mut writable) };
    status >= 0 && writable
}

/// Reads the volume's name into paged pool.
fn volume_name(
    volume: PFLT_VOLUME,
) -> Result<allocator_api2::vec::Vec<u16, PagedAllocator>, NTSTATUS> {
    let mut needed: u32 = 0;
    // SAFETY: a null name asks only for the size needed, which is written to `needed`.
    let status = unsafe { FltGetVolumeName(volume, ptr::null_mut(), &raw mut needed) };
    if status != STATUS_BUFFER_TOO_SMALL && status < 0 {
        return Err(status);
    }
    let units = usize::try_from(needed).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)? / 2;
    let mut name = allocator_api2::vec::Vec::new_in(PagedAllocator::new(tags::VOLUME_NAME));
    name.try_reserve_exact(units)
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    let capacity = u16::try_from(name.capacity() * 2).unwrap_or(u16::MAX - 1);
    let mut string = UNICODE_STRING {
        Length: 0,
        MaximumLength: capacity,
        Buffer: name.as_mut_ptr(),
    };
    // SAFETY: `string` describes `name`'s spare capacity of `capacity` bytes, which
    // FltGetVolumeName fills without exceeding MaximumLength.
    let status = unsafe { FltGetVolumeName(volume, &raw mut string, ptr::null_mut()) };
    if status < 0 {
        return Err(status);
    }
    let len = usize::from(string.Length / 2).min(name.capacity());
    // SAFETY: FltGetVolumeName wrote `string.Length` bytes (clamped to the capacity) of UTF-16.
    unsafe { name.set_len(len) };
    Ok(name)
}

/// Makes a fully initialized instance context for `volume`, allocated for `filter` (the setup's
/// `FltObjects->Filter`).
fn allocate(
    filter: PFLT_FILTER,
    volume: PFLT_VOLUME,
) -> Result<ContextRef<InstanceContext>, NTSTATUS> {
    let name = volume_name(volume)?;
    let max_entries = super::config::max_entries_per_instance();
    let mut raw: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: `filter` is the setup's own filter, valid while the callback runs; instance contexts
    // are declared in the registration with this size, in paged pool.
    let status = unsafe {
        FltAllocateContext(
            filter,
            InstanceContext::TYPE,
            size_of::<InstanceContext>(),
            PagedPool,
            &raw mut raw,
        )
    };
    if status < 0 {
        return Err(status);
    }
    let slot = NonNull::new(raw.cast::<InstanceContext>()).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
    let slot = slot.as_ptr();
    // `slot` is fresh context memory of the right size and alignment (checked above), owned by us
    // and never moved: Filter Manager frees it in place. Nothing below can fail, so the context is
    // fully initialized before any reference can be released (and cleanup run).
    // SAFETY: a projection to the field (no reference to the uninitialized memory is made).
    let volume_name = unsafe { &raw mut (*slot).volume_name };
    // SAFETY: `volume_name` points into the fresh context, valid for a write and aligned.
    unsafe { volume_name.write(name) };
    // SAFETY: as for `volume_name`.
    let tallies = unsafe { &raw mut (*slot).tallies };
    let table = Table::new_with_names_in(
        max_entries,
        PagedAllocator::new(tags::TABLE),
        PagedAllocator::new(tags::FILE_NAME),
    );
    // SAFETY: `tallies` points into the fresh context, valid for writes and aligned, never moved.
    unsafe { PushLock::init_in_place(tallies, table) };
    // SAFETY: we own the one reference FltAllocateContext returned, and the context now holds an
    // initialized InstanceContext.
    unsafe { ContextRef::from_raw(raw) }.ok_or(STATUS_INSUFFICIENT_RESOURCES)
}
