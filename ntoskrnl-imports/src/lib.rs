//! Kernel routines that windows-sys declares as imports from `ntdll.dll` (user mode), declared here
//! as imports from `ntoskrnl.exe`, which exports them to drivers.
//!
//! A driver must never import from `ntdll.dll`: the image would not load. Declaring these routines in
//! the driver crate itself is not enough: on Windows targets each crate's `raw-dylib` import library
//! travels in its rlib, and the linker takes the first definition of `__imp_ZwClose` it meets, which is
//! windows-sys's (its rlib comes before the driver's own objects). This crate depends on windows-sys,
//! so its rlib is placed before windows-sys's on the link line and its `ntoskrnl.exe` entries win.
//!
//! In host builds the same declarations carry no link attribute: a simulator (fltsim) defines the
//! symbols. Each declaration keeps windows-sys's exact signature (checked at compile time below).
#![no_std]

use windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS;
use windows_sys::Win32::Foundation::{HANDLE, NTSTATUS, UNICODE_STRING};
use windows_sys::core::PCSTR;

#[cfg_attr(
    windows,
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    /// `vDbgPrintEx`: prints `format` with the arguments in `arglist` (an x64 `va_list`: a pointer to
    /// consecutive 8-byte argument slots) to the kernel debugger, if the component's filter mask lets
    /// `level` through. Any IRQL (Unicode formats only at `PASSIVE_LEVEL`); at most 512 bytes a call.
    pub fn vDbgPrintEx(componentid: u32, level: u32, format: PCSTR, arglist: *const i8) -> u32;

    /// `ZwQueryValueKey`: reads a value of an open registry key (`PASSIVE_LEVEL`).
    pub fn ZwQueryValueKey(
        keyhandle: HANDLE,
        valuename: *const UNICODE_STRING,
        keyvalueinformationclass: KEY_VALUE_INFORMATION_CLASS,
        keyvalueinformation: *mut core::ffi::c_void,
        length: u32,
        resultlength: *mut u32,
    ) -> NTSTATUS;

    /// `ZwClose`: closes a kernel handle (`PASSIVE_LEVEL`).
    pub fn ZwClose(handle: HANDLE) -> NTSTATUS;
}

// Only the DLL differs from windows-sys: the signatures must stay the same.
const _: [unsafe extern "system" fn(u32, u32, PCSTR, *const i8) -> u32; 2] = [
    vDbgPrintEx,
    windows_sys::Wdk::System::SystemServices::vDbgPrintEx,
];
#[rustfmt::skip]
const _: [unsafe extern "system" fn(HANDLE, *const UNICODE_STRING, KEY_VALUE_INFORMATION_CLASS, *mut core::ffi::c_void, u32, *mut u32) -> NTSTATUS; 2] =
    [ZwQueryValueKey, windows_sys::Wdk::System::Registry::ZwQueryValueKey];
const _: [unsafe extern "system" fn(HANDLE) -> NTSTATUS; 2] =
    [ZwClose, windows_sys::Wdk::System::SystemServices::ZwClose];
