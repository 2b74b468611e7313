//! The Filter Manager (`FLTMGR.SYS`) routines the driver calls, each wrapped so that no call to it
//! can be compiled as a tail jump.
//!
//! **Why.** When a function's last action is a call, an optimizing compiler may emit a jump to the
//! callee instead (a sibling call), and LLVM does so readily: the release image jumped to
//! `ExFreePoolWithTag` that way. For a Filter Manager routine that breaks Filter Verifier, which
//! identifies each call's caller by its return address: it then reports leaked context and name
//! references and "object tracking may be out of sync" that the code does not have ("File System
//! Filter Verification"; `docs/kernel-rules.md`, "Verifier and HLK").
//!
//! **How.** Neither rustc nor LLVM's command line can switch tail calls off for a Rust crate (the
//! `disable-tail-calls` function attribute cannot be set from Rust, and `-C llvm-args=-disable-tail-calls`
//! is accepted but only applies in LLVM's own tools). Each wrapper below instead follows the call
//! with an empty inline-assembly statement: it costs no instruction, but LLVM must assume it has
//! effects and keep it after the call, so the call is never in tail position, in the wrapper or in
//! any function it is inlined into (every wrapper is `#[inline(always)]`).
//!
//! **By construction.** The workspace's `clippy.toml` forbids calling any `FLTMGR.SYS` routine of
//! windows-sys directly (`clippy::disallowed_methods`, run with `-D warnings` in CI), so this module
//! is the only way to them; `cargo xtask package` then checks the image for tail jumps to
//! `FLTMGR.SYS` imports anyway. A routine the driver starts to use gets a wrapper here.
//!
//! Each wrapper has the signature, contract and IRQL rules of the routine it wraps (see its
//! Microsoft reference page, "`<Routine>` function (fltkernel.h)").
#![allow(
    non_snake_case,
    reason = "the wrappers keep the names of the routines they wrap"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the one place that calls the FLTMGR.SYS routines"
)]
#![allow(
    clippy::inline_always,
    reason = "a wrapper is inlined into every caller, so that the barrier follows each call"
)]

use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, FILE_OBJECT, OBJECT_ATTRIBUTES, POOL_TYPE};
use windows_sys::Wdk::Storage::FileSystem::FILE_INFORMATION_CLASS;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    self as imports, FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_REGISTRATION,
    FLT_SET_CONTEXT_OPERATION, PFLT_CONNECT_NOTIFY, PFLT_CONTEXT, PFLT_DISCONNECT_NOTIFY,
    PFLT_FILTER, PFLT_INSTANCE, PFLT_MESSAGE_NOTIFY, PFLT_PORT, PFLT_VOLUME,
};
use windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
use windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;

/// Code the compiler must keep after a call: an empty inline-assembly statement.
#[inline(always)]
fn not_a_tail_call() {
    // SAFETY: the assembly is empty: it executes nothing, touches no register, flag or stack; it only
    // keeps the compiler from treating the preceding call as the function's last action.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}

/// Defines one wrapper per routine: the call, then [`not_a_tail_call`].
macro_rules! no_tail_calls {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;
    )*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The routine's own contract (its Microsoft reference page): valid arguments, the
        /// documented IRQL.
        #[inline(always)]
        #[allow(clippy::too_many_arguments, reason = "the routine's own parameters")]
        pub(crate) unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: forwarded unchanged; the caller keeps the routine's contract.
            let result = unsafe { imports::$name($($arg),*) };
            not_a_tail_call();
            result
        }
    )*};
}

no_tail_calls! {
    /// `FltRegisterFilter`.
    fn FltRegisterFilter(
        driver: *const DRIVER_OBJECT,
        registration: *const FLT_REGISTRATION,
        retfilter: *mut PFLT_FILTER,
    ) -> NTSTATUS;
    /// `FltStartFiltering`.
    fn FltStartFiltering(filter: PFLT_FILTER) -> NTSTATUS;
    /// `FltUnregisterFilter`.
    fn FltUnregisterFilter(filter: PFLT_FILTER);
    /// `FltAllocateContext`.
    fn FltAllocateContext(
        filter: PFLT_FILTER,
        contexttype: u16,
        contextsize: usize,
        pooltype: POOL_TYPE,
        returnedcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS;
    /// `FltSetInstanceContext`.
    fn FltSetInstanceContext(
        instance: PFLT_INSTANCE,
        operation: FLT_SET_CONTEXT_OPERATION,
        newcontext: PFLT_CONTEXT,
        oldcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS;
    /// `FltSetStreamContext`.
    fn FltSetStreamContext(
        instance: PFLT_INSTANCE,
        fileobject: *const FILE_OBJECT,
        operation: FLT_SET_CONTEXT_OPERATION,
        newcontext: PFLT_CONTEXT,
        oldcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS;
    /// `FltGetInstanceContext`.
    fn FltGetInstanceContext(instance: PFLT_INSTANCE, context: *mut PFLT_CONTEXT) -> NTSTATUS;
    /// `FltGetStreamContext`.
    fn FltGetStreamContext(
        instance: PFLT_INSTANCE,
        fileobject: *const FILE_OBJECT,
        context: *mut PFLT_CONTEXT,
    ) -> NTSTATUS;
    /// `FltReferenceContext`.
    fn FltReferenceContext(context: PFLT_CONTEXT);
    /// `FltReleaseContext`.
    fn FltReleaseContext(context: PFLT_CONTEXT);
    /// `FltGetVolumeName`.
    fn FltGetVolumeName(
        volume: PFLT_VOLUME,
        volumename: *mut UNICODE_STRING,
        buffersizeneeded: *mut u32,
    ) -> NTSTATUS;
    /// `FltIsVolumeWritable`.
    fn FltIsVolumeWritable(fltobject: *const core::ffi::c_void, iswritable: *mut bool) -> NTSTATUS;
    /// `FltQueryInformationFile`.
    fn FltQueryInformationFile(
        instance: PFLT_INSTANCE,
        fileobject: *const FILE_OBJECT,
        fileinformation: *mut core::ffi::c_void,
        length: u32,
        fileinformationclass: FILE_INFORMATION_CLASS,
        lengthreturned: *mut u32,
    ) -> NTSTATUS;
    /// `FltGetFileNameInformation`.
    fn FltGetFileNameInformation(
        callbackdata: *const FLT_CALLBACK_DATA,
        nameoptions: u32,
        filenameinformation: *mut *mut FLT_FILE_NAME_INFORMATION,
    ) -> NTSTATUS;
    /// `FltReleaseFileNameInformation`.
    fn FltReleaseFileNameInformation(filenameinformation: *const FLT_FILE_NAME_INFORMATION);
    /// `FltInitializePushLock` (not under `cfg(loom)`, whose push locks are modelled: `sync::word`).
    #[cfg(not(loom))]
    fn FltInitializePushLock(pushlock: *mut usize);
    /// `FltAcquirePushLockShared` (not under `cfg(loom)`, whose push locks are modelled: `sync::word`).
    #[cfg(not(loom))]
    fn FltAcquirePushLockShared(pushlock: *mut usize);
    /// `FltAcquirePushLockExclusive` (not under `cfg(loom)`, whose push locks are modelled: `sync::word`).
    #[cfg(not(loom))]
    fn FltAcquirePushLockExclusive(pushlock: *mut usize);
    /// `FltReleasePushLock` (not under `cfg(loom)`, whose push locks are modelled: `sync::word`).
    #[cfg(not(loom))]
    fn FltReleasePushLock(pushlock: *mut usize);
    /// `FltDeletePushLock` (not under `cfg(loom)`, whose push locks are modelled: `sync::word`).
    #[cfg(not(loom))]
    fn FltDeletePushLock(pushlock: *const usize);
    /// `FltBuildDefaultSecurityDescriptor`.
    fn FltBuildDefaultSecurityDescriptor(
        securitydescriptor: *mut PSECURITY_DESCRIPTOR,
        desiredaccess: u32,
    ) -> NTSTATUS;
    /// `FltFreeSecurityDescriptor`.
    fn FltFreeSecurityDescriptor(securitydescriptor: PSECURITY_DESCRIPTOR);
    /// `FltCreateCommunicationPort`.
    fn FltCreateCommunicationPort(
        filter: PFLT_FILTER,
        serverport: *mut PFLT_PORT,
        objectattributes: *const OBJECT_ATTRIBUTES,
        serverportcookie: *const core::ffi::c_void,
        connectnotifycallback: PFLT_CONNECT_NOTIFY,
        disconnectnotifycallback: PFLT_DISCONNECT_NOTIFY,
        messagenotifycallback: PFLT_MESSAGE_NOTIFY,
        maxconnections: i32,
    ) -> NTSTATUS;
    /// `FltCloseCommunicationPort`.
    fn FltCloseCommunicationPort(serverport: PFLT_PORT);
    /// `FltCloseClientPort`.
    fn FltCloseClientPort(filter: PFLT_FILTER, clientport: *mut PFLT_PORT);
    /// `FltEnumerateInstances`.
    fn FltEnumerateInstances(
        volume: PFLT_VOLUME,
        filter: PFLT_FILTER,
        instancelist: *mut PFLT_INSTANCE,
        instancelistsize: u32,
        numberinstancesreturned: *mut u32,
    ) -> NTSTATUS;
    /// `FltObjectDereference`.
    fn FltObjectDereference(fltobject: *mut core::ffi::c_void);
    /// `FltGetFileSystemType`.
    fn FltGetFileSystemType(
        fltobject: *const core::ffi::c_void,
        filesystemtype: *mut FLT_FILESYSTEM_TYPE,
    ) -> NTSTATUS;
}
