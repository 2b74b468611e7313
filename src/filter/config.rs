//! Driver settings, read once at load from the service key's `Parameters` subkey, which
//! `IoOpenDriverRegistryKey` opens.
//!
//! | value (`REG_DWORD`) | meaning | default |
//! |---|---|---|
//! | `MaxEntriesPerInstance` | bound on files tallied per volume instance; the least recently seen is evicted beyond it | [`DEFAULT_MAX_ENTRIES`] (4096) |
//!
//! A missing key or value, a value of another type, or 0 leaves the default; values above
//! [`LIMIT_MAX_ENTRIES`] are clamped to it. Changes take effect at the next load.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Wdk::System::Registry::KeyValuePartialInformation;
use windows_sys::Wdk::System::SystemServices::{
    DriverRegKeyParameters, IoOpenDriverRegistryKey, KEY_VALUE_PARTIAL_INFORMATION,
};
use windows_sys::Win32::Foundation::{HANDLE, STATUS_BUFFER_OVERFLOW, UNICODE_STRING};
use windows_sys::Win32::System::Registry::{KEY_READ, REG_DWORD};

use crate::ffi::{ZwClose, ZwQueryValueKey};
use crate::table::DEFAULT_MAX_ENTRIES;

/// The largest accepted `MaxEntriesPerInstance`: 1,048,576 files (a few hundred MiB of paged pool
/// per volume in the worst case).
pub const LIMIT_MAX_ENTRIES: usize = 1 << 20;

/// Bound on entries per instance table, read by InstanceSetup.
static MAX_ENTRIES_PER_INSTANCE: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_ENTRIES);

/// The bound on entries of each new instance's table.
pub(crate) fn max_entries_per_instance() -> usize {
    MAX_ENTRIES_PER_INSTANCE.load(Ordering::Relaxed)
}

/// The value holding the bound on entries.
const MAX_ENTRIES_VALUE: &[u16] = &utf16::<21>("MaxEntriesPerInstance");

/// An ASCII string as UTF-16 code units, at compile time.
const fn utf16<const N: usize>(ascii: &str) -> [u16; N] {
    let bytes = ascii.as_bytes();
    assert!(bytes.len() == N);
    let mut units = [0u16; N];
    let mut i = 0;
    while i < N {
        units[i] = bytes[i] as u16;
        i += 1;
    }
    units
}

/// Reads the settings under the service's `Parameters` key (`PASSIVE_LEVEL`, from `DriverEntry`).
///
/// Never fails: whatever cannot be read keeps its default; a value of the wrong type or out of range
/// is reported in the debugger's log (warning level).
pub(crate) fn load(driver: *mut DRIVER_OBJECT) {
    let setting = Key::open_parameters(driver)
        .map_or(Setting::Missing, |key| key.query_dword(MAX_ENTRIES_VALUE));
    let bound = match setting {
        Setting::Missing | Setting::Dword(0) => DEFAULT_MAX_ENTRIES,
        Setting::NotDword => {
            crate::log_warn!(
                "MaxEntriesPerInstance is not a REG_DWORD: using the default, {DEFAULT_MAX_ENTRIES}"
            );
            DEFAULT_MAX_ENTRIES
        }
        Setting::Dword(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > LIMIT_MAX_ENTRIES {
                crate::log_warn!(
                    "MaxEntriesPerInstance {n} is above the limit: using {LIMIT_MAX_ENTRIES}"
                );
            }
            n.min(LIMIT_MAX_ENTRIES)
        }
    };
    MAX_ENTRIES_PER_INSTANCE.store(bound, Ordering::Relaxed);
}

/// What the registry holds for a `REG_DWORD` setting.
enum Setting {
    /// No such value (or no key).
    Missing,
    /// A value of another type or size.
    NotDword,
    /// The value.
    Dword(u32),
}

/// A `UNICODE_STRING` over `units` (which must outlive its use).
fn unicode(units: &mut [u16]) -> Option<UNICODE_STRING> {
    let bytes = u16::try_from(units.len() * 2).ok()?;
    Some(UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_mut_ptr(),
    })
}

/// An open registry key, closed on drop.
struct Key(HANDLE);

impl Key {
    /// The driver's `Parameters` key, opened through `IoOpenDriverRegistryKey` rather than a path
    /// built from `RegistryPath` (driver package isolation; `docs/kernel-rules.md`, "Registry").
    fn open_parameters(driver: *mut DRIVER_OBJECT) -> Option<Self> {
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: `driver` is this driver's object (DriverEntry's argument), `handle` a valid out
        // pointer, Flags 0 as documented; called at PASSIVE_LEVEL in DriverEntry's system thread.
        let status = unsafe {
            IoOpenDriverRegistryKey(driver, DriverRegKeyParameters, KEY_READ, 0, &raw mut handle)
        };
        // Not `then_some`: a Key built eagerly for a failed open would close handle 0 on drop.
        if status < 0 {
            return None;
        }
        Some(Self(handle))
    }

    fn query_dword(&self, value_name: &[u16]) -> Setting {
        let mut name_units = [0u16; 64];
        let Some(name_units) = name_units.get_mut(..value_name.len()) else {
            return Setting::Missing;
        };
        name_units.copy_from_slice(value_name);
        let Some(name) = unicode(name_units) else {
            return Setting::Missing;
        };
        // Header (12 bytes) + 4 bytes of data, 4-byte aligned.
        let mut buffer = [0u32; 4];
        let mut returned = 0u32;
        // SAFETY: `buffer` is writable for its 16 bytes (the length passed); the name outlives the
        // call; PASSIVE_LEVEL.
        let status = unsafe {
            ZwQueryValueKey(
                self.0,
                &raw const name,
                KeyValuePartialInformation,
                buffer.as_mut_ptr().cast(),
                16,
                &raw mut returned,
            )
        };
        if status == STATUS_BUFFER_OVERFLOW {
            // Longer than a DWORD: another type.
            return Setting::NotDword;
        }
        if status < 0 {
            return Setting::Missing;
        }
        let info = buffer.as_ptr().cast::<KEY_VALUE_PARTIAL_INFORMATION>();
        // SAFETY: on success the buffer holds a KEY_VALUE_PARTIAL_INFORMATION; `buffer` is 4-byte
        // aligned, as the structure's u32 fields need.
        let kind = unsafe { (*info).Type };
        // SAFETY: as above.
        let length = unsafe { (*info).DataLength };
        if kind == REG_DWORD && length == 4 {
            Setting::Dword(buffer[3])
        } else {
            Setting::NotDword
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a handle this Key opened and closes once.
        unsafe { ZwClose(self.0) };
    }
}
