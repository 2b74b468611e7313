//! The simulated machine's Windows build, and what Filter Manager reads from a minifilter's service
//! key: its instance definitions and its `SupportedFeatures`.
//!
//! Where those values live depends on the build (`docs/kernel-rules.md`, "INF"; "Creating an INF
//! File for a Minifilter Driver"): from Windows 11 24H2 (build 26100; Microsoft's samples decorate
//! the section with build 25952) they belong under the service key's `Parameters` subkey, before
//! that directly under the service key. fltsim's Filter Manager, on build 25952 and later, reads
//! `Parameters` first and falls back to the service key (INFs written for older builds keep working
//! there); on earlier builds it reads the service key only. `FltRegisterFilter` fails with
//! `STATUS_OBJECT_NAME_NOT_FOUND` when the service key is missing or no instance is registered
//! ("`FltRegisterFilter` function (fltkernel.h)").
//!
//! Tests install a driver either from its INF ([`crate::inf::install`]) or, for a test driver that
//! has none, with [`install_minifilter`].

use std::sync::atomic::{AtomicU32, Ordering};

use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_OBJECT_NAME_NOT_FOUND};

use crate::Sim;
use crate::registry::{self, Value};

/// Where service keys live (the simulated `CurrentControlSet`).
pub const SERVICES_KEY: &str = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services";

/// Windows 11 version 24H2, the build a new [`Sim`] runs.
pub const DEFAULT_BUILD: u32 = 26_100;

/// The first build whose Filter Manager reads instance settings under `Parameters` (the decoration
/// of Microsoft's minifilter samples, `.NTamd64.10.0...25952`).
pub const PARAMETERS_LAYOUT_BUILD: u32 = 25_952;

static BUILD: AtomicU32 = AtomicU32::new(DEFAULT_BUILD);

/// Back to [`DEFAULT_BUILD`]: called when a new [`Sim`] starts.
pub(crate) fn reset() {
    BUILD.store(DEFAULT_BUILD, Ordering::Relaxed);
}

/// The simulated Windows build number (Windows 10 and 11 are all version 10.0).
#[must_use]
pub fn os_build() -> u32 {
    BUILD.load(Ordering::Relaxed)
}

impl Sim {
    /// Makes the simulated machine run Windows 10.0 build `build` (default [`DEFAULT_BUILD`]): it
    /// decides which INF section [`crate::inf::install`] installs and where Filter Manager reads a
    /// filter's instances and features. Set it before installing and loading a driver.
    pub fn set_os_build(&self, build: u32) {
        BUILD.store(build, Ordering::Relaxed);
    }
}

/// The service key of the service named `service`.
#[must_use]
pub fn service_key(service: &str) -> String {
    format!(r"{SERVICES_KEY}\{service}")
}

/// The key under which Filter Manager looks for `SupportedFeatures` and `Instances` first on the
/// simulated build: `<service>\Parameters` from [`PARAMETERS_LAYOUT_BUILD`] on, else the service key.
#[must_use]
pub fn filter_settings_key(service: &str) -> String {
    if os_build() >= PARAMETERS_LAYOUT_BUILD {
        format!(r"{}\Parameters", service_key(service))
    } else {
        service_key(service)
    }
}

/// Writes what a minifilter's INF would for one instance: `DefaultInstance` naming
/// `"<service> Instance"`, its `Altitude` and `Flags` (0: attach automatically), under the key the
/// simulated build reads ([`filter_settings_key`]). For test drivers that have no INF.
///
/// ```
/// let sim = fltsim::Sim::new();
/// fltsim::service::install_minifilter("testflt", "370000");
/// let key = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\testflt\Parameters\Instances";
/// assert_eq!(
///     fltsim::registry::value(key, "DefaultInstance"),
///     Some(fltsim::registry::Value::String("testflt Instance".into()))
/// );
/// ```
pub fn install_minifilter(service: &str, altitude: &str) {
    registry::create_key(&service_key(service));
    let instances = format!(r"{}\Instances", filter_settings_key(service));
    let instance = format!("{service} Instance");
    registry::set_value(
        &instances,
        "DefaultInstance",
        Value::String(instance.clone()),
    );
    let key = format!(r"{instances}\{instance}");
    registry::set_value(&key, "Altitude", Value::String(altitude.to_owned()));
    registry::set_value(&key, "Flags", Value::Dword(0));
}

/// What Filter Manager read from a filter's service key at `FltRegisterFilter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FilterSettings {
    /// The `SupportedFeatures` value (`SUPPORTED_FS_FEATURES_*`), 0 if absent.
    pub supported_features: u32,
    /// The default instance's name and altitude.
    pub default_instance: (String, String),
}

/// The service name of a loaded driver: the last component of its `DriverName`
/// (`\FileSystem\<service>`), which fltsim's loader sets from the service name.
///
/// # Safety
/// `driver` must be null or point to a valid `DRIVER_OBJECT`.
pub(crate) unsafe fn service_of(driver: *const DRIVER_OBJECT) -> Option<String> {
    // SAFETY: the caller's contract.
    let driver = unsafe { driver.as_ref() }?;
    let name = &driver.DriverName;
    if name.Buffer.is_null() {
        return None;
    }
    // SAFETY: a valid DRIVER_OBJECT's DriverName describes `Length` bytes of UTF-16.
    let units = unsafe { std::slice::from_raw_parts(name.Buffer, usize::from(name.Length / 2)) };
    let name = String::from_utf16_lossy(units);
    name.rsplit('\\').next().map(str::to_owned)
}

/// Reads `name` under the build's settings key, falling back to the service key itself on builds
/// that read `Parameters` first.
fn setting(service: &str, subkey: &str, name: &str) -> Option<Value> {
    let join = |key: String| {
        if subkey.is_empty() {
            key
        } else {
            format!(r"{key}\{subkey}")
        }
    };
    registry::value(&join(filter_settings_key(service)), name).or_else(|| {
        (os_build() >= PARAMETERS_LAYOUT_BUILD)
            .then(|| registry::value(&join(service_key(service)), name))
            .flatten()
    })
}

/// The settings `FltRegisterFilter` reads for `service`: `STATUS_OBJECT_NAME_NOT_FOUND` if the
/// service key is missing, or no default instance with an altitude is registered.
pub(crate) fn filter_settings(service: &str) -> Result<FilterSettings, NTSTATUS> {
    if !registry::key_exists(&service_key(service)) {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    }
    let Some(Value::String(instance)) = setting(service, "Instances", "DefaultInstance") else {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    };
    let Some(Value::String(altitude)) =
        setting(service, &format!(r"Instances\{instance}"), "Altitude")
    else {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    };
    let supported_features = match setting(service, "", "SupportedFeatures") {
        Some(Value::Dword(features)) => features,
        _ => 0,
    };
    Ok(FilterSettings {
        supported_features,
        default_instance: (instance, altitude),
    })
}
