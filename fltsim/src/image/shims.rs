//! The routines a driver image may import, each bound to a win64 shim over fltsim's own routine.
//!
//! A mapped image calls its imports with the Windows x64 convention; fltsim's routines are
//! `extern "system"`, which is the C convention of the host (`SysV` on Linux). Each shim below is an
//! `extern "win64"` function with the routine's exact signature that calls fltsim's routine with the
//! same arguments. The list is the one place that names them: [`shims!`] generates the shims, the
//! table the loader binds imports from, and, for every entry, the compile-time check that fltsim's
//! routine and windows-sys's declaration have that same signature (so a shim cannot drift from
//! either). A test checks that every `#[no_mangle]` export of fltsim is in the list.
//!
//! An entry reads `module routine(parameters) -> result = fltsim's routine, windows-sys's routine`,
//! optionally followed by `via` a function the shim calls instead (with the same signature).

use std::ffi::c_void;

use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, IRP};
use windows_sys::Wdk::Foundation::{FILE_OBJECT, OBJECT_ATTRIBUTES, POOL_TYPE};
use windows_sys::Wdk::Storage::FileSystem::FILE_INFORMATION_CLASS;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_INFORMATION, FLT_POSTOP_CALLBACK_STATUS,
    FLT_PREOP_CALLBACK_STATUS, FLT_REGISTRATION, FLT_RELATED_OBJECTS, FLT_SET_CONTEXT_OPERATION,
    FLT_VOLUME_PROPERTIES, PFLT_CONNECT_NOTIFY, PFLT_CONTEXT, PFLT_DISCONNECT_NOTIFY, PFLT_FILTER,
    PFLT_INSTANCE, PFLT_MESSAGE_NOTIFY, PFLT_PORT, PFLT_POST_OPERATION_CALLBACK, PFLT_VOLUME,
};
use windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS;
use windows_sys::Wdk::System::SystemServices::{DRIVER_REGKEY_TYPE, MM_COPY_ADDRESS};
use windows_sys::Win32::Foundation::{HANDLE, NTSTATUS, UNICODE_STRING};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
use windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;
use windows_sys::Win32::System::Diagnostics::Debug::BUGCHECK_ERROR;
use windows_sys::core::PCSTR;

/// `ntoskrnl.exe`.
const NTOSKRNL: &str = "ntoskrnl.exe";
/// `FLTMGR.SYS`.
const FLTMGR: &str = "FLTMGR.SYS";

/// One bindable routine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shim {
    /// The module that exports it on Windows.
    pub module: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The address of its win64 shim.
    pub address: usize,
}

/// The function a shim calls: fltsim's routine, or the `via` function when the entry has one.
macro_rules! shim_target {
    ($sim:path) => {
        $sim
    };
    ($sim:path, $via:path) => {
        $via
    };
}

/// Generates, from the list, the shims (module `win64`), their table ([`table`]) and the
/// signature checks.
macro_rules! shims {
    ($(
        $module:ident $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
            = $sim:path, $sys:path $(, via $via:path)?;
    )*) => {
        /// The shims: `extern "win64"` functions over fltsim's routines.
        #[allow(non_snake_case, clippy::too_many_arguments, unused_unsafe)]
        mod win64 {
            use super::*;
            $(
                pub(super) unsafe extern "win64" fn $name($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the image calls the routine under its documented contract, which is
                    // the contract of fltsim's routine; the arguments are passed on unchanged.
                    unsafe { shim_target!($sim $(, $via)?)($($arg),*) }
                }
            )*
        }

        $(
            const _: [unsafe extern "system" fn($($ty),*) $(-> $ret)?; 2] = [$sim, $sys];
        )*

        /// Every routine an image may import, with the address of its shim.
        pub(crate) fn table() -> Vec<Shim> {
            vec![$(Shim { module: $module, name: stringify!($name), address: (win64::$name as *const ()).addr() }),*]
        }
    };
}

shims! {
    NTOSKRNL ExAllocatePool2(flags: u64, numberofbytes: usize, tag: u32) -> *mut c_void
        = crate::pool::ExAllocatePool2, windows_sys::Wdk::System::SystemServices::ExAllocatePool2;
    NTOSKRNL ExFreePoolWithTag(p: *mut c_void, tag: u32)
        = crate::pool::ExFreePoolWithTag, windows_sys::Wdk::System::SystemServices::ExFreePoolWithTag;
    NTOSKRNL KeBugCheckEx(code: BUGCHECK_ERROR, p1: usize, p2: usize, p3: usize, p4: usize)
        = crate::kernel::KeBugCheckEx, windows_sys::Wdk::System::SystemServices::KeBugCheckEx,
        via crate::image::bugcheck::raised_by_image;
    NTOSKRNL IoOpenDriverRegistryKey(
        driverobject: *const DRIVER_OBJECT,
        regkeytype: DRIVER_REGKEY_TYPE,
        desiredaccess: u32,
        flags: u32,
        driverregkey: *mut HANDLE,
    ) -> NTSTATUS
        = crate::registry::IoOpenDriverRegistryKey, windows_sys::Wdk::System::SystemServices::IoOpenDriverRegistryKey;
    NTOSKRNL KeEnterCriticalRegion()
        = crate::apc::KeEnterCriticalRegion, windows_sys::Wdk::System::SystemServices::KeEnterCriticalRegion;
    NTOSKRNL KeLeaveCriticalRegion()
        = crate::apc::KeLeaveCriticalRegion, windows_sys::Wdk::System::SystemServices::KeLeaveCriticalRegion;
    // The x64 WDK defines KeGetCurrentIrql inline as a read of CR8 (which the loader emulates), so
    // images do not import it; fltsim exports it for host builds.
    NTOSKRNL KeGetCurrentIrql() -> u8
        = crate::irql::KeGetCurrentIrql, windows_sys::Wdk::System::SystemServices::KeGetCurrentIrql;
    NTOSKRNL KeQuerySystemTimePrecise(currenttime: *mut i64)
        = crate::kernel::KeQuerySystemTimePrecise, windows_sys::Wdk::System::SystemServices::KeQuerySystemTimePrecise;
    NTOSKRNL IoGetTopLevelIrp() -> *mut IRP
        = crate::kernel::IoGetTopLevelIrp, windows_sys::Wdk::System::SystemServices::IoGetTopLevelIrp;
    NTOSKRNL PsGetCurrentThreadId() -> HANDLE
        = crate::thread::PsGetCurrentThreadId, windows_sys::Wdk::System::SystemServices::PsGetCurrentThreadId;
    NTOSKRNL MmCopyMemory(
        targetaddress: *const c_void,
        sourceaddress: MM_COPY_ADDRESS,
        numberofbytes: usize,
        flags: u32,
        numberofbytestransferred: *mut usize,
    ) -> NTSTATUS
        = crate::usermem::MmCopyMemory, windows_sys::Wdk::System::SystemServices::MmCopyMemory;
    NTOSKRNL MmSecureVirtualMemory(address: *const c_void, size: usize, probemode: u32) -> HANDLE
        = crate::usermem::MmSecureVirtualMemory, windows_sys::Wdk::System::SystemServices::MmSecureVirtualMemory;
    NTOSKRNL MmUnsecureVirtualMemory(securehandle: HANDLE)
        = crate::usermem::MmUnsecureVirtualMemory, windows_sys::Wdk::System::SystemServices::MmUnsecureVirtualMemory;
    // windows-sys files vDbgPrintEx under ntdll.dll; drivers import it from ntoskrnl.exe.
    NTOSKRNL vDbgPrintEx(componentid: u32, level: u32, format: PCSTR, arglist: *const i8) -> u32
        = crate::kernel::vDbgPrintEx, windows_sys::Wdk::System::SystemServices::vDbgPrintEx;
    NTOSKRNL ZwOpenKey(keyhandle: *mut HANDLE, desiredaccess: u32, objectattributes: *const OBJECT_ATTRIBUTES) -> NTSTATUS
        = crate::registry::ZwOpenKey, windows_sys::Wdk::System::Registry::ZwOpenKey;
    NTOSKRNL ZwQueryValueKey(
        keyhandle: HANDLE,
        valuename: *const UNICODE_STRING,
        class: KEY_VALUE_INFORMATION_CLASS,
        information: *mut c_void,
        length: u32,
        resultlength: *mut u32,
    ) -> NTSTATUS
        = crate::registry::ZwQueryValueKey, windows_sys::Wdk::System::Registry::ZwQueryValueKey;
    NTOSKRNL ZwClose(handle: HANDLE) -> NTSTATUS
        = crate::registry::ZwClose, windows_sys::Wdk::System::SystemServices::ZwClose;

    FLTMGR FltRegisterFilter(driver: *const DRIVER_OBJECT, registration: *const FLT_REGISTRATION, retfilter: *mut PFLT_FILTER) -> NTSTATUS
        = crate::filter::FltRegisterFilter, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltRegisterFilter;
    FLTMGR FltStartFiltering(filter: PFLT_FILTER) -> NTSTATUS
        = crate::filter::FltStartFiltering, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltStartFiltering;
    FLTMGR FltUnregisterFilter(filter: PFLT_FILTER)
        = crate::filter::FltUnregisterFilter, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltUnregisterFilter;
    FLTMGR FltEnumerateInstances(
        volume: PFLT_VOLUME,
        filter: PFLT_FILTER,
        instancelist: *mut PFLT_INSTANCE,
        instancelistsize: u32,
        numberinstancesreturned: *mut u32,
    ) -> NTSTATUS
        = crate::objects::FltEnumerateInstances, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltEnumerateInstances;
    FLTMGR FltGetFileSystemType(fltobject: *const c_void, filesystemtype: *mut FLT_FILESYSTEM_TYPE) -> NTSTATUS
        = crate::objects::FltGetFileSystemType, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetFileSystemType;
    FLTMGR FltObjectReference(fltobject: *mut c_void) -> NTSTATUS
        = crate::objects::FltObjectReference, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltObjectReference;
    FLTMGR FltObjectDereference(fltobject: *mut c_void)
        = crate::objects::FltObjectDereference, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltObjectDereference;
    FLTMGR FltGetVolumeName(volume: PFLT_VOLUME, volumename: *mut UNICODE_STRING, buffersizeneeded: *mut u32) -> NTSTATUS
        = crate::volume::FltGetVolumeName, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetVolumeName;
    FLTMGR FltGetVolumeProperties(
        volume: PFLT_VOLUME,
        volumeproperties: *mut FLT_VOLUME_PROPERTIES,
        volumepropertieslength: u32,
        lengthreturned: *mut u32,
    ) -> NTSTATUS
        = crate::volume::FltGetVolumeProperties, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetVolumeProperties;
    FLTMGR FltIsVolumeWritable(fltobject: *const c_void, iswritable: *mut bool) -> NTSTATUS
        = crate::volume::FltIsVolumeWritable, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltIsVolumeWritable;
    FLTMGR FltAllocateContext(
        filter: PFLT_FILTER,
        contexttype: u16,
        contextsize: usize,
        pooltype: POOL_TYPE,
        returnedcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS
        = crate::context::FltAllocateContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAllocateContext;
    FLTMGR FltReferenceContext(context: PFLT_CONTEXT)
        = crate::context::FltReferenceContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReferenceContext;
    FLTMGR FltReleaseContext(context: PFLT_CONTEXT)
        = crate::context::FltReleaseContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleaseContext;
    FLTMGR FltDeleteContext(context: PFLT_CONTEXT)
        = crate::context::FltDeleteContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDeleteContext;
    FLTMGR FltSetInstanceContext(
        instance: PFLT_INSTANCE,
        operation: FLT_SET_CONTEXT_OPERATION,
        newcontext: PFLT_CONTEXT,
        oldcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS
        = crate::context::FltSetInstanceContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltSetInstanceContext;
    FLTMGR FltGetInstanceContext(instance: PFLT_INSTANCE, context: *mut PFLT_CONTEXT) -> NTSTATUS
        = crate::context::FltGetInstanceContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetInstanceContext;
    FLTMGR FltSetStreamContext(
        instance: PFLT_INSTANCE,
        fileobject: *const FILE_OBJECT,
        operation: FLT_SET_CONTEXT_OPERATION,
        newcontext: PFLT_CONTEXT,
        oldcontext: *mut PFLT_CONTEXT,
    ) -> NTSTATUS
        = crate::context::FltSetStreamContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltSetStreamContext;
    FLTMGR FltGetStreamContext(instance: PFLT_INSTANCE, fileobject: *const FILE_OBJECT, context: *mut PFLT_CONTEXT) -> NTSTATUS
        = crate::context::FltGetStreamContext, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetStreamContext;
    FLTMGR FltBuildDefaultSecurityDescriptor(securitydescriptor: *mut PSECURITY_DESCRIPTOR, desiredaccess: u32) -> NTSTATUS
        = crate::port::FltBuildDefaultSecurityDescriptor, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltBuildDefaultSecurityDescriptor;
    FLTMGR FltFreeSecurityDescriptor(securitydescriptor: PSECURITY_DESCRIPTOR)
        = crate::port::FltFreeSecurityDescriptor, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltFreeSecurityDescriptor;
    FLTMGR FltCreateCommunicationPort(
        filter: PFLT_FILTER,
        serverport: *mut PFLT_PORT,
        objectattributes: *const OBJECT_ATTRIBUTES,
        serverportcookie: *const c_void,
        connectnotifycallback: PFLT_CONNECT_NOTIFY,
        disconnectnotifycallback: PFLT_DISCONNECT_NOTIFY,
        messagenotifycallback: PFLT_MESSAGE_NOTIFY,
        maxconnections: i32,
    ) -> NTSTATUS
        = crate::port::FltCreateCommunicationPort, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCreateCommunicationPort;
    FLTMGR FltCloseCommunicationPort(serverport: PFLT_PORT)
        = crate::port::FltCloseCommunicationPort, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCloseCommunicationPort;
    FLTMGR FltCloseClientPort(filter: PFLT_FILTER, clientport: *mut PFLT_PORT)
        = crate::port::FltCloseClientPort, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCloseClientPort;
    FLTMGR FltInitializePushLock(pushlock: *mut usize)
        = crate::pushlock::FltInitializePushLock, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltInitializePushLock;
    FLTMGR FltAcquirePushLockShared(pushlock: *mut usize)
        = crate::pushlock::FltAcquirePushLockShared, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockShared;
    FLTMGR FltAcquirePushLockExclusive(pushlock: *mut usize)
        = crate::pushlock::FltAcquirePushLockExclusive, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockExclusive;
    FLTMGR FltAcquirePushLockSharedEx(pushlock: *mut usize, flags: u32)
        = crate::pushlock::FltAcquirePushLockSharedEx, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockSharedEx;
    FLTMGR FltAcquirePushLockExclusiveEx(pushlock: *mut usize, flags: u32)
        = crate::pushlock::FltAcquirePushLockExclusiveEx, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockExclusiveEx;
    FLTMGR FltReleasePushLock(pushlock: *mut usize)
        = crate::pushlock::FltReleasePushLock, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleasePushLock;
    FLTMGR FltReleasePushLockEx(pushlock: *mut usize, flags: u32)
        = crate::pushlock::FltReleasePushLockEx, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleasePushLockEx;
    FLTMGR FltDeletePushLock(pushlock: *const usize)
        = crate::pushlock::FltDeletePushLock, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDeletePushLock;
    FLTMGR FltQueryInformationFile(
        instance: PFLT_INSTANCE,
        fileobject: *const FILE_OBJECT,
        fileinformation: *mut c_void,
        length: u32,
        fileinformationclass: FILE_INFORMATION_CLASS,
        lengthreturned: *mut u32,
    ) -> NTSTATUS
        = crate::query::FltQueryInformationFile, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltQueryInformationFile;
    FLTMGR FltGetFileNameInformation(
        callbackdata: *const FLT_CALLBACK_DATA,
        nameoptions: u32,
        filenameinformation: *mut *mut FLT_FILE_NAME_INFORMATION,
    ) -> NTSTATUS
        = crate::names::FltGetFileNameInformation, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetFileNameInformation;
    FLTMGR FltReleaseFileNameInformation(filenameinformation: *const FLT_FILE_NAME_INFORMATION)
        = crate::names::FltReleaseFileNameInformation, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleaseFileNameInformation;
    FLTMGR FltReferenceFileNameInformation(filenameinformation: *const FLT_FILE_NAME_INFORMATION)
        = crate::names::FltReferenceFileNameInformation, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReferenceFileNameInformation;
    FLTMGR FltParseFileNameInformation(filenameinformation: *mut FLT_FILE_NAME_INFORMATION) -> NTSTATUS
        = crate::names::FltParseFileNameInformation, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltParseFileNameInformation;
    FLTMGR FltDoCompletionProcessingWhenSafe(
        data: *const FLT_CALLBACK_DATA,
        fltobjects: *const FLT_RELATED_OBJECTS,
        completioncontext: *const c_void,
        flags: u32,
        safepostcallback: PFLT_POST_OPERATION_CALLBACK,
        retpostoperationstatus: *mut FLT_POSTOP_CALLBACK_STATUS,
    ) -> bool
        = crate::io::FltDoCompletionProcessingWhenSafe, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDoCompletionProcessingWhenSafe;
    FLTMGR FltCompletePendedPreOperation(
        callbackdata: *const FLT_CALLBACK_DATA,
        callbackstatus: FLT_PREOP_CALLBACK_STATUS,
        context: *const c_void,
    )
        = crate::io::FltCompletePendedPreOperation, windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCompletePendedPreOperation;
}

/// The shim for `module!name`, if the image may import it (modules compare without regard to ASCII
/// case: images name them in lower case, e.g. `fltmgr.sys`).
pub(crate) fn resolve(table: &[Shim], module: &str, name: &str) -> Option<usize> {
    table
        .iter()
        .find(|shim| shim.name == name && shim.module.eq_ignore_ascii_case(module))
        .map(|shim| shim.address)
}
