//! `MmCopyMemory`, `MmSecureVirtualMemory` and `MmUnsecureVirtualMemory` on kernel memory and on
//! fltsim's unmapped user range (user buffers of a message are covered by the driver's port tests).

use std::ffi::c_void;
use std::ptr;

use fltsim::Sim;
use fltsim::irql::{self, DISPATCH_LEVEL};
use windows_sys::Wdk::System::SystemServices::{
    MM_COPY_ADDRESS, MM_COPY_ADDRESS_0, MM_COPY_MEMORY_VIRTUAL, MmCopyMemory,
    MmSecureVirtualMemory, MmUnsecureVirtualMemory, PAGE_READWRITE,
};
use windows_sys::Win32::Foundation::{STATUS_ACCESS_VIOLATION, STATUS_SUCCESS};

fn copy(target: &mut [u8], source: *const c_void) -> (i32, usize) {
    let mut copied = 99;
    let address = MM_COPY_ADDRESS {
        Anonymous: MM_COPY_ADDRESS_0 {
            VirtualAddress: source.cast_mut(),
        },
    };
    // SAFETY: `target` is writable for its length; the source is kernel memory or unmapped.
    let status = unsafe {
        MmCopyMemory(
            target.as_mut_ptr().cast(),
            address,
            target.len(),
            MM_COPY_MEMORY_VIRTUAL,
            &raw mut copied,
        )
    };
    (status, copied)
}

#[test]
fn kernel_memory_is_copied_and_unmapped_memory_fails_cleanly() {
    let _sim = Sim::new();
    let source = [1_u8, 2, 3, 4];
    let mut target = [0_u8; 4];
    assert_eq!(
        copy(&mut target, source.as_ptr().cast()),
        (STATUS_SUCCESS, 4)
    );
    assert_eq!(target, source);
    let mut target = [7_u8; 4];
    assert_eq!(
        copy(&mut target, ptr::without_provenance(0x1_0000)),
        (STATUS_ACCESS_VIOLATION, 0)
    );
    assert_eq!(target, [7; 4], "nothing copied");
}

#[test]
fn only_user_buffers_can_be_secured() {
    let _sim = Sim::new();
    let kernel = [0_u8; 16];
    // SAFETY: MmSecureVirtualMemory only inspects the range.
    let handle = unsafe { MmSecureVirtualMemory(kernel.as_ptr().cast(), 16, PAGE_READWRITE) };
    assert!(handle.is_null(), "kernel memory is not user space");
    // SAFETY: as above.
    let handle =
        unsafe { MmSecureVirtualMemory(ptr::without_provenance(0x1_0000), 16, PAGE_READWRITE) };
    assert!(handle.is_null(), "unmapped");
}

#[test]
#[should_panic(expected = "fltsim: invalid handle: MmUnsecureVirtualMemory")]
fn unsecuring_an_unknown_handle_is_a_violation() {
    let sim = Sim::new();
    // SAFETY: a bogus handle on purpose.
    unsafe { MmUnsecureVirtualMemory(ptr::without_provenance_mut(5)) };
    sim.check();
}

#[test]
#[should_panic(expected = "IRQL_NOT_LESS_OR_EQUAL: MmCopyMemory called at IRQL 2")]
fn copying_at_dispatch_level_is_a_violation() {
    let sim = Sim::new();
    {
        let _dispatch = irql::raise(DISPATCH_LEVEL);
        let source = [0_u8; 1];
        copy(&mut [0_u8; 1], source.as_ptr().cast());
    }
    sim.check();
}
