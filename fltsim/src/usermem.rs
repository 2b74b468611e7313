//! The user-mode address space a driver meets through a communication port, and the memory
//! manager routines that touch it: `MmCopyMemory`, `MmSecureVirtualMemory`,
//! `MmUnsecureVirtualMemory`.
//!
//! A message callback gets raw user addresses ("`PFLT_MESSAGE_NOTIFY` callback function
//! (fltkernel.h)": they "must only be accessed from within a try/except block"). fltsim hands it
//! real memory of the test process, registered here for the duration of the call with the access
//! the simulated client gave it (read, read-write), or an address in the first
//! [`UNMAPPED_LIMIT`] bytes of the address space, which no process ever maps: a driver that
//! dereferences it directly faults, as it would on Windows outside a try/except (a bugcheck), while
//! the routines below fail cleanly on it, as documented.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use windows_sys::Wdk::System::SystemServices::{
    MM_COPY_ADDRESS, MM_COPY_MEMORY_PHYSICAL, MM_COPY_MEMORY_VIRTUAL, PAGE_READONLY, PAGE_READWRITE,
};
use windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, STATUS_ACCESS_VIOLATION, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

use crate::irql::APC_LEVEL;
use crate::verifier::{irql_at_most, violation};
use crate::world::lock_ignoring_poison;

/// fltsim's unmapped user addresses lie below this: Linux never maps the first pages
/// (`vm.mmap_min_addr`) nor anything below a non-PIE executable's 4 MiB base, and Windows never maps
/// the first 64 KiB. An unmapped buffer starts at [`UNMAPPED_BASE`] and is at most
/// `UNMAPPED_LIMIT - UNMAPPED_BASE` bytes long.
pub const UNMAPPED_LIMIT: usize = 0x40_0000;

/// Where fltsim's unmapped user buffers start.
pub const UNMAPPED_BASE: usize = 0x1_0000;

/// What the simulated user process allows on a buffer it passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// `PAGE_READONLY`.
    Read,
    /// `PAGE_READWRITE`.
    ReadWrite,
}

/// A user buffer registered for the duration of a message.
struct Region {
    len: usize,
    access: Access,
    secured: usize,
}

/// A range secured by `MmSecureVirtualMemory`.
struct Secure {
    region: usize,
}

#[derive(Default)]
struct Space {
    /// Registered buffers by start address.
    regions: HashMap<usize, Region>,
    /// Live secure handles.
    secures: HashMap<usize, Secure>,
    next_handle: usize,
}

static SPACE: Mutex<Option<Space>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Space) -> R) -> R {
    f(lock_ignoring_poison(&SPACE).get_or_insert_with(Space::default))
}

/// Forgets every registration: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    *lock_ignoring_poison(&SPACE) = Some(Space::default());
}

/// Whether `[address, address + len)` touches fltsim's never-mapped range.
fn touches_unmapped(address: usize, len: usize) -> bool {
    address < UNMAPPED_LIMIT || address.checked_add(len).is_none()
}

/// Registers `[address, address + len)` as user memory with `access` until [`unregister`].
pub(crate) fn register(address: usize, len: usize, access: Access) {
    with(|space| {
        space.regions.insert(
            address,
            Region {
                len,
                access,
                secured: 0,
            },
        );
    });
}

/// Ends the registration of the buffer at `address`; returns how many secures the driver left on
/// it (it must have unsecured everything it secured before returning from the message callback).
pub(crate) fn unregister(address: usize) -> usize {
    with(|space| {
        let left = space.regions.remove(&address).map_or(0, |r| r.secured);
        space.secures.retain(|_, secure| secure.region != address);
        left
    })
}

/// The registered buffer containing `[address, address + len)`: its start and access.
fn region_of(space: &Space, address: usize, len: usize) -> Option<(usize, Access)> {
    space
        .regions
        .iter()
        .find(|(start, region)| {
            address >= **start && address.saturating_add(len) <= *start + region.len
        })
        .map(|(start, region)| (*start, region.access))
}

/// `MmCopyMemory` ("`MmCopyMemory` function (ntddk.h)"): copies `numberofbytes` from a virtual
/// address (system space, or the current process's user space) into a nonpaged target, and fails
/// instead of faulting when the source is invalid. IRQL <= `APC_LEVEL`; Windows 8.1 and later.
///
/// fltsim: `MM_COPY_MEMORY_VIRTUAL` only (physical copies are not modeled); a source in the
/// unmapped range, or in a registered user buffer the process does not let read, fails with
/// `STATUS_ACCESS_VIOLATION` and 0 bytes transferred (Windows documents only "an error status");
/// a target in paged pool is a violation of the contract ("This buffer must be in nonpageable
/// memory").
///
/// # Safety
/// `targetaddress` must be valid for `numberofbytes` bytes of writes; a source outside the user
/// buffers fltsim registered must be valid for reads (kernel memory of the caller).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn MmCopyMemory(
    targetaddress: *const c_void,
    sourceaddress: MM_COPY_ADDRESS,
    numberofbytes: usize,
    flags: u32,
    numberofbytestransferred: *mut usize,
) -> NTSTATUS {
    if !irql_at_most("MmCopyMemory", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if numberofbytestransferred.is_null() {
        violation("fltsim: MmCopyMemory: NumberOfBytesTransferred is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { numberofbytestransferred.write(0) };
    if flags == MM_COPY_MEMORY_PHYSICAL {
        violation("fltsim: not modeled: MmCopyMemory with MM_COPY_MEMORY_PHYSICAL".into());
        return STATUS_INVALID_PARAMETER;
    }
    if flags != MM_COPY_MEMORY_VIRTUAL {
        violation(format!(
            "fltsim: MmCopyMemory: Flags {flags:#x} is neither MM_COPY_MEMORY_VIRTUAL nor \
             MM_COPY_MEMORY_PHYSICAL (exactly one must be set)"
        ));
        return STATUS_INVALID_PARAMETER;
    }
    let target = targetaddress.addr();
    if crate::pool::in_paged_pool(target, numberofbytes) {
        violation(format!(
            "fltsim: MmCopyMemory: TargetAddress {target:#x} is paged pool; the target buffer must \
             be in nonpageable memory"
        ));
        return STATUS_INVALID_PARAMETER;
    }
    if numberofbytes == 0 {
        return STATUS_SUCCESS;
    }
    // SAFETY: reading the union's virtual-address member, which MM_COPY_MEMORY_VIRTUAL selects.
    let source = unsafe { sourceaddress.Anonymous.VirtualAddress }.cast_const();
    let readable = !touches_unmapped(source.addr(), numberofbytes)
        && with(|space| region_of(space, source.addr(), numberofbytes))
            .is_none_or(|(_, access)| matches!(access, Access::Read | Access::ReadWrite));
    if !readable {
        return STATUS_ACCESS_VIOLATION;
    }
    // SAFETY: the source is a registered, readable user buffer or the caller's kernel memory (the
    // contract above); the target is valid for `numberofbytes` writes; a kernel copy never
    // overlaps the user buffer it reads.
    unsafe {
        std::ptr::copy(
            source.cast::<u8>(),
            targetaddress.cast::<u8>().cast_mut(),
            numberofbytes,
        );
    }
    // SAFETY: checked non-null above.
    unsafe { numberofbytestransferred.write(numberofbytes) };
    STATUS_SUCCESS
}

/// `MmSecureVirtualMemory` ("`MmSecureVirtualMemory` function (ntddk.h)"): secures a user address
/// range so that it can be neither freed nor made more restrictive than `probemode`
/// (`PAGE_READWRITE` or `PAGE_READONLY`) until `MmUnsecureVirtualMemory`; returns NULL if the range
/// cannot be secured. IRQL <= `APC_LEVEL`.
///
/// fltsim: NULL for a zero size, another probe mode, a range that is not one registered user
/// buffer (the unmapped range, kernel memory), or a read-only buffer asked for `PAGE_READWRITE`.
/// It cannot protect against in-page errors, which fltsim never raises; Windows says to access the
/// memory inside try/except all the same.
#[unsafe(no_mangle)]
pub extern "system" fn MmSecureVirtualMemory(
    address: *const c_void,
    size: usize,
    probemode: u32,
) -> HANDLE {
    if !irql_at_most("MmSecureVirtualMemory", APC_LEVEL) {
        return std::ptr::null_mut();
    }
    let wanted = match probemode {
        PAGE_READWRITE => Access::ReadWrite,
        PAGE_READONLY => Access::Read,
        _ => return std::ptr::null_mut(),
    };
    if size == 0 || touches_unmapped(address.addr(), size) {
        return std::ptr::null_mut();
    }
    with(|space| {
        let Some((region, access)) = region_of(space, address.addr(), size) else {
            return std::ptr::null_mut();
        };
        if wanted == Access::ReadWrite && access != Access::ReadWrite {
            return std::ptr::null_mut();
        }
        if let Some(r) = space.regions.get_mut(&region) {
            r.secured += 1;
        }
        space.next_handle += 1;
        let handle = space.next_handle;
        space.secures.insert(handle, Secure { region });
        std::ptr::without_provenance_mut(handle)
    })
}

/// `MmUnsecureVirtualMemory`: releases a range secured by `MmSecureVirtualMemory`, in the process
/// that secured it. IRQL <= `APC_LEVEL`. An unknown or already released handle is a violation.
#[unsafe(no_mangle)]
pub extern "system" fn MmUnsecureVirtualMemory(securehandle: HANDLE) {
    if !irql_at_most("MmUnsecureVirtualMemory", APC_LEVEL) {
        return;
    }
    let known = with(|space| {
        let secure = space.secures.remove(&securehandle.addr())?;
        if let Some(region) = space.regions.get_mut(&secure.region) {
            region.secured -= 1;
        }
        Some(())
    });
    if known.is_none() {
        violation(format!(
            "fltsim: invalid handle: MmUnsecureVirtualMemory got {:#x}, which is not a live handle \
             from MmSecureVirtualMemory",
            securehandle.addr()
        ));
    }
}

const _: [unsafe extern "system" fn(
    *const c_void,
    MM_COPY_ADDRESS,
    usize,
    u32,
    *mut usize,
) -> NTSTATUS; 2] = [
    MmCopyMemory,
    windows_sys::Wdk::System::SystemServices::MmCopyMemory,
];
const _: [unsafe extern "system" fn(*const c_void, usize, u32) -> HANDLE; 2] = [
    MmSecureVirtualMemory,
    windows_sys::Wdk::System::SystemServices::MmSecureVirtualMemory,
];
const _: [unsafe extern "system" fn(HANDLE); 2] = [
    MmUnsecureVirtualMemory,
    windows_sys::Wdk::System::SystemServices::MmUnsecureVirtualMemory,
];
