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
//! | [`vDbgPrintEx`] | windows-sys links it from `ntdll.dll` (user mode); a driver must import it from `ntoskrnl.exe` |
//! | [`ZwOpenKey`], [`ZwQueryValueKey`], [`ZwClose`] | likewise linked from `ntdll.dll` by windows-sys; imported here from `ntoskrnl.exe` |

use windows_sys::core::PCSTR;

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

// `vDbgPrintEx` (wdm.h; "NtosKrnl.lib" for kernel mode). windows-sys declares it in
// `Wdk::System::SystemServices` but links it from ntdll.dll, which a driver cannot import (the image
// would not load, and the package check rejects it). On Windows targets it is imported from
// ntoskrnl.exe with raw-dylib (no import library needed, like windows-sys's own links); in host builds
// the symbol is resolved by the simulator (`fltsim` defines it and captures the output).
#[cfg(windows)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `vDbgPrintEx` from ntoskrnl.exe: prints `format`, with the arguments in `arglist` (an x64
    /// `va_list`: a pointer to consecutive 8-byte argument slots), to the kernel debugger if the
    /// component's filter mask lets `level` through. Callable at IRQL <= DIRQL; sends at most 512
    /// bytes per call.
    ///
    /// Use [`crate::log`] instead of calling it directly.
    pub fn vDbgPrintEx(componentid: u32, level: u32, format: PCSTR, arglist: *const i8) -> u32;
}

#[cfg(not(windows))]
unsafe extern "system" {
    /// `vDbgPrintEx`, resolved in host builds by the simulator (`fltsim`), which records the line.
    ///
    /// Same contract as on Windows: `arglist` points to consecutive 8-byte argument slots (the x64
    /// `va_list`). Use [`crate::log`] instead of calling it directly.
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
    pub fn vDbgPrintEx(componentid: u32, level: u32, format: PCSTR, arglist: *const i8) -> u32;
}

// The declaration above must keep windows-sys's signature (only the DLL differs).
#[cfg(not(windows))]
const _: [unsafe extern "system" fn(u32, u32, PCSTR, *const i8) -> u32; 2] = [
    vDbgPrintEx,
    windows_sys::Wdk::System::SystemServices::vDbgPrintEx,
];

// `ZwOpenKey`, `ZwQueryValueKey`, `ZwClose` (wdm.h; "NtosKrnl.lib"): windows-sys links them from
// ntdll.dll (user mode), like `vDbgPrintEx`. The driver reads its settings with them at load, so on
// Windows targets they are imported from ntoskrnl.exe; in host builds the simulator defines them.
#[cfg_attr(windows, link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim"))]
unsafe extern "system" {
    /// `ZwOpenKey` from ntoskrnl.exe: opens a registry key (`PASSIVE_LEVEL`).
    pub fn ZwOpenKey(
        keyhandle: *mut windows_sys::Win32::Foundation::HANDLE,
        desiredaccess: u32,
        objectattributes: *const windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES,
    ) -> windows_sys::Win32::Foundation::NTSTATUS;
    /// `ZwQueryValueKey` from ntoskrnl.exe: reads a value of an open key (`PASSIVE_LEVEL`).
    pub fn ZwQueryValueKey(
        keyhandle: windows_sys::Win32::Foundation::HANDLE,
        valuename: *const windows_sys::Win32::Foundation::UNICODE_STRING,
        keyvalueinformationclass: windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS,
        keyvalueinformation: *mut core::ffi::c_void,
        length: u32,
        resultlength: *mut u32,
    ) -> windows_sys::Win32::Foundation::NTSTATUS;
    /// `ZwClose` from ntoskrnl.exe: closes a kernel handle (`PASSIVE_LEVEL`).
    pub fn ZwClose(handle: windows_sys::Win32::Foundation::HANDLE) -> windows_sys::Win32::Foundation::NTSTATUS;
}

// The registry declarations above keep windows-sys's signatures (only the DLL differs).
const _: [unsafe extern "system" fn(
    *mut windows_sys::Win32::Foundation::HANDLE,
    u32,
    *const windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES,
) -> windows_sys::Win32::Foundation::NTSTATUS; 2] =
    [ZwOpenKey, windows_sys::Wdk::System::Registry::ZwOpenKey];
const _: [unsafe extern "system" fn(
    windows_sys::Win32::Foundation::HANDLE,
    *const windows_sys::Win32::Foundation::UNICODE_STRING,
    windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS,
    *mut core::ffi::c_void,
    u32,
    *mut u32,
) -> windows_sys::Win32::Foundation::NTSTATUS; 2] =
    [ZwQueryValueKey, windows_sys::Wdk::System::Registry::ZwQueryValueKey];
const _: [unsafe extern "system" fn(
    windows_sys::Win32::Foundation::HANDLE,
) -> windows_sys::Win32::Foundation::NTSTATUS; 2] =
    [ZwClose, windows_sys::Wdk::System::SystemServices::ZwClose];
