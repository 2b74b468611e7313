//! Simulated registry: `ZwOpenKey`, `IoOpenDriverRegistryKey`, `ZwQueryValueKey` and `ZwClose` over
//! keys a test fills in.
//!
//! A driver reads its settings at load from its service key's `Parameters` subkey, which
//! `IoOpenDriverRegistryKey(DriverObject, DriverRegKeyParameters, ...)` opens
//! (`\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\<service>\Parameters` here). Tests install
//! the driver's keys from its INF ([`crate::inf::install`]) or with
//! [`crate::service::install_minifilter`], and put settings there with [`set_value`] before loading
//! the driver. Key paths and value names compare case-insensitively, as in the real registry. Handles
//! are kernel handles: using one that is not open bugchecks (`INVALID_KERNEL_HANDLE`), and handles
//! still open are listed by [`open_handles`] for the verifier report.

use std::collections::HashMap;
use std::sync::Mutex;

use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, OBJECT_ATTRIBUTES};
use windows_sys::Wdk::System::Registry::{KEY_VALUE_INFORMATION_CLASS, KeyValuePartialInformation};
use windows_sys::Wdk::System::SystemServices::{
    DRIVER_REGKEY_TYPE, DriverRegKeyParameters, KEY_VALUE_PARTIAL_INFORMATION,
};
use windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, OBJ_KERNEL_HANDLE, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL,
    STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::System::Registry::{REG_BINARY, REG_DWORD, REG_QWORD, REG_SZ};

use crate::irql::{self, PASSIVE_LEVEL};

/// A registry value's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `REG_DWORD`.
    Dword(u32),
    /// `REG_QWORD`.
    Qword(u64),
    /// `REG_SZ` (stored NUL-terminated UTF-16, as the registry does).
    String(String),
    /// `REG_BINARY`.
    Binary(Vec<u8>),
}

impl Value {
    fn type_and_bytes(&self) -> (u32, Vec<u8>) {
        match self {
            Self::Dword(v) => (REG_DWORD, v.to_le_bytes().to_vec()),
            Self::Qword(v) => (REG_QWORD, v.to_le_bytes().to_vec()),
            Self::String(s) => (
                REG_SZ,
                s.encode_utf16()
                    .chain([0])
                    .flat_map(u16::to_le_bytes)
                    .collect(),
            ),
            Self::Binary(b) => (REG_BINARY, b.clone()),
        }
    }
}

#[derive(Default)]
struct Registry {
    /// Keys by lower-cased path; values by lower-cased name.
    keys: HashMap<String, HashMap<String, Value>>,
    /// Open handles and the key each refers to.
    handles: HashMap<usize, String>,
    next_handle: usize,
}

impl Registry {
    /// A new kernel handle to `path` (lower-cased, existing).
    fn open(&mut self, path: String) -> HANDLE {
        self.next_handle += 4;
        // Kernel handles have the top bit set.
        let handle = 0xFFFF_FFFF_8000_0000_usize | self.next_handle;
        self.handles.insert(handle, path);
        handle as HANDLE
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(Registry::default))
}

/// Empties the registry: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    with(|registry| *registry = Registry::default());
}

/// Creates `key` (and sets nothing in it), so that `ZwOpenKey` finds it.
pub fn create_key(key: &str) {
    with(|registry| {
        registry.keys.entry(key.to_lowercase()).or_default();
    });
}

/// Sets value `name` of `key`, creating the key if needed.
pub fn set_value(key: &str, name: &str, value: Value) {
    with(|registry| {
        registry
            .keys
            .entry(key.to_lowercase())
            .or_default()
            .insert(name.to_lowercase(), value);
    });
}

/// Deletes `key` and all its subkeys (an uninstall, or a test that needs a key missing).
pub fn delete_key(key: &str) {
    let key = key.to_lowercase();
    let prefix = format!("{key}\\");
    with(|registry| {
        registry
            .keys
            .retain(|path, _| *path != key && !path.starts_with(&prefix));
    });
}

/// The value `name` of `key`, if both exist.
#[must_use]
pub fn value(key: &str, name: &str) -> Option<Value> {
    with(|registry| {
        registry
            .keys
            .get(&key.to_lowercase())
            .and_then(|values| values.get(&name.to_lowercase()))
            .cloned()
    })
}

/// Whether `key` exists.
#[must_use]
pub fn key_exists(key: &str) -> bool {
    with(|registry| registry.keys.contains_key(&key.to_lowercase()))
}

/// Registry handles opened and not closed, with the key each refers to.
#[must_use]
pub fn open_handles() -> Vec<String> {
    with(|registry| registry.handles.values().cloned().collect())
}

/// Reads a `UNICODE_STRING` into a Rust string.
///
/// # Safety
/// `string` must be null or point to a valid `UNICODE_STRING` describing readable UTF-16.
unsafe fn read_unicode(string: *const UNICODE_STRING) -> Option<String> {
    // SAFETY: the caller guarantees `string` is null or valid.
    let string = unsafe { string.as_ref() }?;
    if string.Buffer.is_null() || string.Length % 2 != 0 || string.Length > string.MaximumLength {
        return None;
    }
    // SAFETY: a valid UNICODE_STRING describes `Length` readable bytes at `Buffer`.
    let units =
        unsafe { std::slice::from_raw_parts(string.Buffer, usize::from(string.Length / 2)) };
    Some(String::from_utf16_lossy(units))
}

fn key_of(registry: &Registry, handle: HANDLE, routine: &str) -> String {
    registry
        .handles
        .get(&(handle as usize))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "fltsim: INVALID_KERNEL_HANDLE: {routine} on handle {handle:p}, which is not open"
            )
        })
}

/// `ZwOpenKey`: opens an existing key by its full path (`PASSIVE_LEVEL`). Every call is reported
/// as a driver isolation violation, as Driver Verifier's isolation checks do for absolute paths.
///
/// # Safety
/// The pointers must be valid as the routine's contract requires.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ZwOpenKey(
    key_handle: *mut HANDLE,
    _desired_access: u32,
    object_attributes: *const OBJECT_ATTRIBUTES,
) -> NTSTATUS {
    irql::check_max("ZwOpenKey", PASSIVE_LEVEL);
    // SAFETY: the caller passes valid object attributes.
    let attributes = unsafe { &*object_attributes };
    assert!(
        attributes.RootDirectory.is_null(),
        "fltsim: not modeled: ZwOpenKey relative to a RootDirectory handle"
    );
    assert!(
        attributes.Attributes & OBJ_KERNEL_HANDLE != 0,
        "fltsim: handle rule: a driver must open registry keys with OBJ_KERNEL_HANDLE, \
         or the handle lands in the current process's handle table"
    );
    // SAFETY: ObjectName is a valid UNICODE_STRING per the contract.
    let Some(path) = (unsafe { read_unicode(attributes.ObjectName) }) else {
        panic!("fltsim: ZwOpenKey: ObjectName is not a valid UNICODE_STRING");
    };
    // Driver Verifier's driver isolation checks (`verifier /rc 33 36`) report registry access by
    // absolute path: an isolated driver opens its keys with IoOpenDriverRegistryKey and relative
    // names ("Validating Windows Drivers"; `docs/kernel-rules.md`, "Registry").
    crate::world::with(|w| {
        w.findings.push(format!(
            "DRIVER_ISOLATION_VIOLATION: ZwOpenKey of the absolute path {path} (open the driver's \
             keys with IoOpenDriverRegistryKey instead)"
        ));
    });
    let handle = with(|registry| {
        let path = path.to_lowercase();
        registry
            .keys
            .contains_key(&path)
            .then(|| registry.open(path))
    });
    let Some(handle) = handle else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    // SAFETY: the caller passes a writable handle pointer.
    unsafe { *key_handle = handle };
    STATUS_SUCCESS
}

/// `IoOpenDriverRegistryKey` with `DriverRegKeyParameters`: opens the calling driver's
/// `<service key>\Parameters` key, creating it if the service key exists ("`IoOpenDriverRegistryKey`
/// function (wdm.h)": `PASSIVE_LEVEL`, `Flags` must be 0, the driver object must be the caller's).
/// The persistent-state key types are not modeled.
///
/// Returns `STATUS_OBJECT_NAME_NOT_FOUND` when the driver's service is not installed,
/// `STATUS_INVALID_PARAMETER` for nonzero `Flags`.
///
/// # Safety
/// `driver_object` must be the loaded driver's object; `driver_reg_key` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoOpenDriverRegistryKey(
    driver_object: *const DRIVER_OBJECT,
    reg_key_type: DRIVER_REGKEY_TYPE,
    _desired_access: u32,
    flags: u32,
    driver_reg_key: *mut HANDLE,
) -> NTSTATUS {
    irql::check_max("IoOpenDriverRegistryKey", PASSIVE_LEVEL);
    assert!(
        reg_key_type == DriverRegKeyParameters,
        "fltsim: not modeled: IoOpenDriverRegistryKey of key type {reg_key_type} (only \
         DriverRegKeyParameters)"
    );
    if flags != 0 {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the caller passes its driver object.
    let Some(service) = (unsafe { crate::service::service_of(driver_object) }) else {
        panic!("fltsim: IoOpenDriverRegistryKey: DriverObject is not a loaded driver's object");
    };
    let service_key = crate::service::service_key(&service).to_lowercase();
    let handle = with(|registry| {
        if !registry.keys.contains_key(&service_key) {
            return None;
        }
        let parameters = format!(r"{service_key}\parameters");
        registry.keys.entry(parameters.clone()).or_default();
        Some(registry.open(parameters))
    });
    let Some(handle) = handle else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    // SAFETY: the caller passes a writable handle pointer.
    unsafe { *driver_reg_key = handle };
    STATUS_SUCCESS
}

/// `ZwQueryValueKey` with `KeyValuePartialInformation` (`PASSIVE_LEVEL`).
///
/// # Safety
/// The pointers must be valid as the routine's contract requires; `key_value_information` must be
/// writable for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ZwQueryValueKey(
    key_handle: HANDLE,
    value_name: *const UNICODE_STRING,
    class: KEY_VALUE_INFORMATION_CLASS,
    key_value_information: *mut core::ffi::c_void,
    length: u32,
    result_length: *mut u32,
) -> NTSTATUS {
    irql::check_max("ZwQueryValueKey", PASSIVE_LEVEL);
    assert!(
        class == KeyValuePartialInformation,
        "fltsim: not modeled: ZwQueryValueKey information class {class}"
    );
    // SAFETY: ValueName is a valid UNICODE_STRING per the contract.
    let Some(name) = (unsafe { read_unicode(value_name) }) else {
        panic!("fltsim: ZwQueryValueKey: ValueName is not a valid UNICODE_STRING");
    };
    let value = with(|registry| {
        let key = key_of(registry, key_handle, "ZwQueryValueKey");
        registry
            .keys
            .get(&key)
            .and_then(|values| values.get(&name.to_lowercase()))
            .cloned()
    });
    let Some(value) = value else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    let (kind, bytes) = value.type_and_bytes();
    let header = std::mem::offset_of!(KEY_VALUE_PARTIAL_INFORMATION, Data);
    let needed = header + bytes.len();
    let needed_u32 = u32::try_from(needed).expect("simulated values are small");
    // SAFETY: the caller passes a writable ResultLength.
    unsafe { *result_length = needed_u32 };
    let length = length as usize;
    if length < header {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let fixed = KEY_VALUE_PARTIAL_INFORMATION {
        TitleIndex: 0,
        Type: kind,
        DataLength: u32::try_from(bytes.len()).unwrap_or(0),
        Data: [0],
    };
    // SAFETY: the buffer is writable for `length >= header` bytes, and `header` is the fixed part's
    // size (the structure's first `header` bytes are its three ULONGs); the caller's buffer may be
    // unaligned, so the bytes are copied.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const fixed).cast::<u8>(),
            key_value_information.cast::<u8>(),
            header,
        );
    }
    if length < needed {
        return STATUS_BUFFER_OVERFLOW;
    }
    // SAFETY: `header` is within the caller's buffer (checked above).
    let data = unsafe { key_value_information.cast::<u8>().add(header) };
    // SAFETY: the buffer holds `needed` bytes: the header then `bytes.len()` bytes of data.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
    STATUS_SUCCESS
}

/// `ZwClose` for registry handles (`PASSIVE_LEVEL`).
///
/// # Safety
/// None beyond the routine's contract: `handle` must be an open handle.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ZwClose(handle: HANDLE) -> NTSTATUS {
    irql::check_max("ZwClose", PASSIVE_LEVEL);
    with(|registry| {
        key_of(registry, handle, "ZwClose");
        registry.handles.remove(&(handle as usize));
    });
    STATUS_SUCCESS
}

const _: [unsafe extern "system" fn(*mut HANDLE, u32, *const OBJECT_ATTRIBUTES) -> NTSTATUS; 2] =
    [ZwOpenKey, windows_sys::Wdk::System::Registry::ZwOpenKey];
const _: [unsafe extern "system" fn(
    HANDLE,
    *const UNICODE_STRING,
    KEY_VALUE_INFORMATION_CLASS,
    *mut core::ffi::c_void,
    u32,
    *mut u32,
) -> NTSTATUS; 2] = [
    ZwQueryValueKey,
    windows_sys::Wdk::System::Registry::ZwQueryValueKey,
];
const _: [unsafe extern "system" fn(HANDLE) -> NTSTATUS; 2] =
    [ZwClose, windows_sys::Wdk::System::SystemServices::ZwClose];
const _: [unsafe extern "system" fn(
    *const DRIVER_OBJECT,
    DRIVER_REGKEY_TYPE,
    u32,
    u32,
    *mut HANDLE,
) -> NTSTATUS; 2] = [
    IoOpenDriverRegistryKey,
    windows_sys::Wdk::System::SystemServices::IoOpenDriverRegistryKey,
];
