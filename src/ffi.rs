//! The kernel items the driver needs that windows-sys 0.61 does not provide (or provides wrongly
//! for a driver), each with the reason it is declared here.
//!
//! Everything else comes from windows-sys: before adding an item here, check that
//! `grep -rn 'NAME' ~/.cargo/registry/src/*/windows-sys-0.61.2/src` finds nothing usable.
//!
//! | item | why it is here |
//! |---|---|
//! | [`POOL_FLAG_NON_PAGED`], [`POOL_FLAG_PAGED`] | `#define`s in wdm.h; the Windows metadata that windows-sys is generated from has no `POOL_FLAG_*` values |
//! | [`DPFLTR_IHVDRIVER_ID`] and the `DPFLTR_*_LEVEL` values | dpfilter.h enum and `#define`s; not in windows-sys |
//! | [`vDbgPrintEx`], [`ZwQueryValueKey`], [`ZwClose`] | windows-sys links them from `ntdll.dll` (user mode); a driver must import them from `ntoskrnl.exe` (declared in the `ntoskrnl-imports` crate, see below) |
//!
//! (`IoOpenDriverRegistryKey`, for instance, is not here: windows-sys already links it from
//! `ntoskrnl.exe`. The `FLTMGR.SYS` routines are called through `crate::flt`, which wraps
//! windows-sys's declarations.)

/// `POOL_FLAG_NON_PAGED` (wdm.h, `0x0000000000000040UI64`): non-paged, non-executable pool, for
/// [`ExAllocatePool2`](windows_sys::Wdk::System::SystemServices::ExAllocatePool2).
///
/// Not in windows-sys (wdm.h `#define`).
///
/// ```
/// assert_eq!(iotally::ffi::POOL_FLAG_NON_PAGED, 0x40);
/// ```
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;

/// `POOL_FLAG_PAGED` (wdm.h, `0x0000000000000100UI64`): paged pool, for
/// [`ExAllocatePool2`](windows_sys::Wdk::System::SystemServices::ExAllocatePool2).
///
/// Not in windows-sys (wdm.h `#define`).
///
/// ```
/// assert_eq!(iotally::ffi::POOL_FLAG_PAGED, 0x100);
/// ```
pub const POOL_FLAG_PAGED: u64 = 0x100;

/// `DPFLTR_IHVDRIVER_ID` (dpfilter.h `DPFLTR_TYPE`, value 77): the debug-print component id for
/// third-party drivers that are not video, audio, network, streaming or bus drivers.
///
/// Not in windows-sys. Its debugger filter mask is `Kd_IHVDRIVER_Mask`.
///
/// ```
/// assert_eq!(iotally::ffi::DPFLTR_IHVDRIVER_ID, 77);
/// ```
pub const DPFLTR_IHVDRIVER_ID: u32 = 77;

/// `DPFLTR_ERROR_LEVEL` (dpfilter.h): shown by default (filter mask bit `0x1`).
///
/// Not in windows-sys.
///
/// ```
/// assert_eq!(iotally::ffi::DPFLTR_ERROR_LEVEL, 0);
/// ```
pub const DPFLTR_ERROR_LEVEL: u32 = 0;

/// `DPFLTR_WARNING_LEVEL` (dpfilter.h): filter mask bit `0x2`.
///
/// Not in windows-sys.
///
/// ```
/// assert_eq!(iotally::ffi::DPFLTR_WARNING_LEVEL, 1);
/// ```
pub const DPFLTR_WARNING_LEVEL: u32 = 1;

/// `DPFLTR_TRACE_LEVEL` (dpfilter.h): filter mask bit `0x4`.
///
/// Not in windows-sys.
///
/// ```
/// assert_eq!(iotally::ffi::DPFLTR_TRACE_LEVEL, 2);
/// ```
pub const DPFLTR_TRACE_LEVEL: u32 = 2;

/// `DPFLTR_INFO_LEVEL` (dpfilter.h): filter mask bit `0x8`.
///
/// Not in windows-sys.
///
/// ```
/// assert_eq!(iotally::ffi::DPFLTR_INFO_LEVEL, 3);
/// ```
pub const DPFLTR_INFO_LEVEL: u32 = 3;

// `vDbgPrintEx`, `ZwQueryValueKey`, `ZwClose` (wdm.h; "NtosKrnl.lib" for kernel mode):
// windows-sys links them from ntdll.dll, which a driver cannot import (the image would not load, and
// the package check rejects it). They are declared against ntoskrnl.exe in the `ntoskrnl-imports`
// crate rather than here, because the linker takes the first import library that defines a symbol
// and windows-sys's rlib precedes this crate's own objects; a dependency of the driver that itself
// depends on windows-sys is placed before it. In host builds the simulator (`fltsim`) defines them.

/// The routines windows-sys links from ntdll.dll, imported from ntoskrnl.exe. `vDbgPrintEx` in a
/// host build:
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::ffi::{vDbgPrintEx, DPFLTR_ERROR_LEVEL, DPFLTR_IHVDRIVER_ID};
/// let text = c"hello";
/// let args = [text.as_ptr()];
/// // SAFETY: "%s" takes one pointer to a NUL-terminated string, which `args` holds.
/// unsafe {
///     vDbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL, c"%s".as_ptr().cast(), args.as_ptr().cast());
/// }
/// ```
pub use ntoskrnl_imports::{ZwClose, ZwQueryValueKey, vDbgPrintEx};
