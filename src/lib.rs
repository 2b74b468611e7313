//! iotally: a Windows file-system minifilter that tallies per-file I/O per volume.
//!
//! The same source builds three ways (see the README): for Windows with the WDK (`cargo make`), for
//! Windows from Linux (`cargo xtask package`), and for the host, where every kernel import resolves
//! to the `fltsim` simulator so that tests run the driver's real code.
//!
//! Layers, dependencies pointing down: [`DriverEntry`] → `filter` (registration and callbacks) →
//! `table` (per-instance tallies) → `sync`, `irql`, `pool` (safe kernel primitives) → windows-sys.
#![no_std]

#[cfg(not(windows))]
extern crate std;

pub mod ffi;
mod filter;
mod flt;
pub mod inspect;
pub mod irql;
pub mod log;
pub mod pool;
mod port;
#[cfg(all(windows, not(feature = "wdk")))]
mod runtime;

// The WDK build's runtime: wdk-panic's panic handler and wdk-alloc's (nonpaged, tag "rust") global
// allocator. The cross build (no `wdk` feature) has its own equivalents in `runtime`.
#[cfg(all(windows, feature = "wdk"))]
extern crate wdk_panic;
#[cfg(all(windows, feature = "wdk"))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;
pub mod stats;
pub mod sync;
pub mod table;

/// Bug check code of a Rust panic in iotally's cross-built image: `0xE0107A11` ("IO TALL(y)").
///
/// Codes with the top bits `0xE` are outside Microsoft's own bug check codes, like NTSTATUS values
/// with the customer bit, so this one cannot be mistaken for a system bug check. The parameters are:
///
/// 1. address of the panicking source file's name (UTF-8, not NUL-terminated; 0 if unknown),
/// 2. its length in bytes,
/// 3. line,
/// 4. column.
///
/// In the debugger, `!analyze -v` shows the four values; `db <param1> L<param2>` shows the file name.
/// The panic message is not passed: formatting it could itself fail.
pub const PANIC_BUGCHECK_CODE: u32 = 0xE010_7A11;

use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};

/// The driver's entry point, called once by the I/O manager at `PASSIVE_LEVEL` when the driver loads.
///
/// Reads the settings (through `IoOpenDriverRegistryKey`: `RegistryPath` is not used, as driver
/// package isolation asks), registers the minifilter with Filter Manager and starts filtering; on
/// any failure nothing stays registered and the failure status is returned, so the load fails
/// cleanly.
///
/// # Safety
/// `driver` must be the driver object the I/O manager passes to a driver entry point; it must stay
/// valid until the driver unloads.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *const UNICODE_STRING,
) -> NTSTATUS {
    filter::load(driver)
}
