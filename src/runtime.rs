//! The runtime a `no_std` kernel image needs when it is built without the WDK crates (the cross
//! build, `cargo xtask package`): what wdk-panic and wdk-alloc provide in the WDK build.
//!
//! - a panic handler that stops the machine with [`crate::PANIC_BUGCHECK_CODE`] and the panic location;
//! - the `_fltused` symbol that core and `compiler_builtins` reference on msvc targets;
//! - a global allocator over non-paged pool with tag [`GLOBAL_ALLOCATOR_TAG`].
//!
//! Compiled only for Windows targets without feature `wdk`.

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;
use core::ptr;

use windows_sys::Wdk::System::SystemServices::{ExAllocatePool2, ExFreePoolWithTag, KeBugCheckEx};

use crate::PANIC_BUGCHECK_CODE;
use crate::ffi::POOL_FLAG_NON_PAGED;

/// Pool tag of allocations through Rust's global allocator in the cross build (`ItRt`, read in this
/// order by `PoolMon` and `!poolused`). The driver's own data uses the tags in `pool::tags`.
pub const GLOBAL_ALLOCATOR_TAG: u32 = u32::from_le_bytes(*b"ItRt");

/// Alignment every x64 pool block has (`MEMORY_ALLOCATION_ALIGNMENT`, 16 bytes).
const POOL_ALIGNMENT: usize = 16;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, file_len, line, column) = info.location().map_or((0, 0, 0, 0), |location| {
        (
            location.file().as_ptr().expose_provenance(),
            location.file().len(),
            location.line() as usize,
            location.column() as usize,
        )
    });
    // SAFETY: KeBugCheckEx may be called at any IRQL; it takes plain integers and does not return.
    unsafe { KeBugCheckEx(PANIC_BUGCHECK_CODE, file, file_len, line, column) };
    // windows-sys declares KeBugCheckEx as returning; it never does.
    loop {
        core::hint::spin_loop();
    }
}

// `_fltused` tells the MSVC runtime that floating point is used; core and compiler_builtins refer to
// it, and no C runtime is linked to define it. As an assembler symbol it is not exported from the
// image (a `#[no_mangle] static` would be).
core::arch::global_asm!(
    ".pushsection .rdata,\"dr\"",
    ".globl _fltused",
    ".p2align 2",
    "_fltused:",
    ".long 0",
    ".popsection",
);

/// Rust's global allocator in the cross build: non-paged pool, tag [`GLOBAL_ALLOCATOR_TAG`].
///
/// Every allocation can fail (Driver Verifier fails some on purpose) and then returns null.
/// Alignments above 16 bytes, which pool does not guarantee, are refused with null.
struct NonPagedPoolAllocator;

// SAFETY: `alloc` returns either null or a fresh pool block of at least `layout.size()` bytes, which
// pool aligns to 16 bytes on x64, and only layouts with alignment <= 16 are served; `dealloc` frees
// exactly such blocks, with the tag they were allocated with.
unsafe impl GlobalAlloc for NonPagedPoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > POOL_ALIGNMENT {
            return ptr::null_mut();
        }
        // SAFETY: non-paged allocation is allowed at IRQL <= DISPATCH_LEVEL and returns null on
        // failure; flags and tag are valid constants.
        unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size(), GLOBAL_ALLOCATOR_TAG) }.cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract; ExAllocatePool2 zeroes the block unless POOL_FLAG_UNINITIALIZED.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned, so it came from
        // ExAllocatePool2 with this tag and has not been freed yet.
        unsafe { ExFreePoolWithTag(block.cast(), GLOBAL_ALLOCATOR_TAG) };
    }
}

#[global_allocator]
static GLOBAL_ALLOCATOR: NonPagedPoolAllocator = NonPagedPoolAllocator;
