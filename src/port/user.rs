//! User buffers of a message: the one place that touches them.
//!
//! "`PFLT_MESSAGE_NOTIFY` callback function (fltkernel.h)": both buffers are raw, unlocked user
//! addresses that "must only be accessed from within a try/except block"; Filter Manager probes
//! them (`ProbeForRead`, `ProbeForWrite`) but the process can unmap or protect them at any time
//! after the probe. Rust has no structured exception handling, so (see `docs/user-buffers.md`):
//!
//! - **Input** is copied in with `MmCopyMemory(…, MM_COPY_MEMORY_VIRTUAL, …)` ("`MmCopyMemory`
//!   function (ntddk.h)": safe on user addresses of the current process; it fails instead of
//!   faulting) into nonpaged pool, once, before anything reads it.
//! - **Output** is first secured with `MmSecureVirtualMemory(…, PAGE_READWRITE)` ("`MmSecureVirtualMemory`
//!   function (ntddk.h)"): NULL when the range is not writable user memory any more, and then the
//!   process can neither free it nor make it read-only until `MmUnsecureVirtualMemory`. Then the
//!   answer is copied out. What securing cannot rule out is an in-page error (a bad page-file
//!   block) while copying, which Windows raises as an exception; that copy is the one access not
//!   inside try/except (see the docs page).
//!
//! No push lock is held here: answers are built in kernel memory first.

use core::ffi::c_void;

use allocator_api2::vec::Vec;
use windows_sys::Wdk::System::SystemServices::{
    MM_COPY_ADDRESS, MM_COPY_ADDRESS_0, MM_COPY_MEMORY_VIRTUAL, MmCopyMemory,
    MmSecureVirtualMemory, MmUnsecureVirtualMemory, PAGE_READWRITE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_USER_BUFFER,
};

use crate::pool::{NonPagedAllocator, tags};

/// The input buffer as Filter Manager passed it.
#[derive(Clone, Copy)]
pub(super) struct UserInput {
    address: *const c_void,
    length: u32,
}

impl UserInput {
    pub(super) fn new(address: *const c_void, length: u32) -> Self {
        Self { address, length }
    }

    /// Bytes the caller says it holds (0 for a NULL buffer, whose length is ignored).
    pub(super) fn len(self) -> usize {
        if self.address.is_null() {
            0
        } else {
            self.length as usize
        }
    }

    /// Copies the whole buffer into nonpaged pool (`MmCopyMemory`'s target must be nonpaged).
    ///
    /// # Errors
    /// `STATUS_INVALID_USER_BUFFER` if the buffer cannot be read, `STATUS_INSUFFICIENT_RESOURCES`
    /// if the pool is exhausted.
    pub(super) fn copy_in(self) -> Result<Vec<u8, NonPagedAllocator>, NTSTATUS> {
        let len = self.len();
        let mut copy = Vec::new_in(NonPagedAllocator::new(tags::PORT_REQUEST));
        copy.try_reserve_exact(len)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        copy.resize(len, 0);
        let mut copied = 0_usize;
        let source = MM_COPY_ADDRESS {
            Anonymous: MM_COPY_ADDRESS_0 {
                VirtualAddress: self.address.cast_mut(),
            },
        };
        // SAFETY: the target is `len` bytes of our nonpaged pool; MmCopyMemory validates the user
        // source itself and fails instead of faulting; `copied` is a valid output variable.
        let status = unsafe {
            MmCopyMemory(
                copy.as_mut_ptr().cast(),
                source,
                len,
                MM_COPY_MEMORY_VIRTUAL,
                &raw mut copied,
            )
        };
        if status < 0 || copied != len {
            return Err(STATUS_INVALID_USER_BUFFER);
        }
        Ok(copy)
    }
}

/// The output buffer as Filter Manager passed it.
#[derive(Clone, Copy)]
pub(super) struct UserOutput {
    address: *mut c_void,
    length: u32,
}

impl UserOutput {
    pub(super) fn new(address: *mut c_void, length: u32) -> Self {
        Self { address, length }
    }

    /// Whether there is no buffer (NULL or length 0).
    pub(super) fn is_empty(self) -> bool {
        self.address.is_null() || self.length == 0
    }

    /// The buffer's length.
    pub(super) fn len(self) -> usize {
        self.length as usize
    }

    /// Whether the address is a multiple of `alignment` (Filter Manager does not check it).
    pub(super) fn is_aligned(self, alignment: usize) -> bool {
        self.address.addr().is_multiple_of(alignment)
    }

    /// Copies `answer` to the start of the buffer: secures the range, copies, unsecures.
    ///
    /// # Errors
    /// `STATUS_INVALID_USER_BUFFER` if the range is not writable user memory any more (nothing is
    /// written then).
    pub(super) fn copy_out(self, answer: &[u8]) -> Result<(), NTSTATUS> {
        if answer.is_empty() {
            return Ok(());
        }
        if answer.len() > self.len() {
            return Err(STATUS_INVALID_USER_BUFFER);
        }
        // SAFETY: MmSecureVirtualMemory only inspects and pins the user range; PASSIVE_LEVEL.
        let secured = unsafe { MmSecureVirtualMemory(self.address, answer.len(), PAGE_READWRITE) };
        if secured.is_null() {
            return Err(STATUS_INVALID_USER_BUFFER);
        }
        // SAFETY: the range is `answer.len()` bytes (<= OutputBufferLength) of user memory of the
        // current process, secured writable: it can be neither freed nor made read-only until
        // MmUnsecureVirtualMemory. A kernel buffer never overlaps a user one.
        unsafe {
            core::ptr::copy_nonoverlapping(
                answer.as_ptr(),
                self.address.cast::<u8>(),
                answer.len(),
            );
        }
        // SAFETY: the handle MmSecureVirtualMemory just returned, in the same process, once.
        unsafe { MmUnsecureVirtualMemory(secured) };
        Ok(())
    }
}
