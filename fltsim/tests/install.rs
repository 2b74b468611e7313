//! Installing a minifilter: the INF installer, the registry keys `FltRegisterFilter` requires on
//! each Windows build, and `IoOpenDriverRegistryKey`.

mod common;

use std::ptr;
use std::sync::Mutex;

use common::{Config, SERVICE, configure, driver_entry};
use fltsim::Sim;
use fltsim::bugcheck::expect_bugcheck;
use fltsim::inf::{self, InfError};
use fltsim::registry::{self, Value};
use fltsim::service::{self, install_minifilter, service_key};
use windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use windows_sys::Wdk::System::SystemServices::{
    DriverRegKeyParameters, IoOpenDriverRegistryKey, ZwClose,
};
use windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL, UNICODE_STRING,
};

/// A minimal minifilter INF with both layouts of Microsoft's samples (and the test filter's name).
const INF: &str = r#"
[Version]
Signature   = "$WINDOWS NT$"
Class       = "ActivityMonitor"
ClassGuid   = {b86dff51-a31e-4bac-b3cf-e8cfe75c9fc2}
Provider    = %Provider%
PnpLockdown = 1

[DefaultInstall.NTamd64.10.0...25952]
CopyFiles = New.Files
[DefaultInstall.NTamd64.10.0...25952.Services]
AddService = %Service%,,New.Service
[New.Service]
ServiceType    = 2
StartType      = 3
ErrorControl   = 1
LoadOrderGroup = "FSFilter Activity Monitor"
ServiceBinary  = %13%\testflt.sys
AddReg         = New.AddReg
[New.AddReg]
HKR,"Parameters","SupportedFeatures",0x00010001,0x3
HKR,"Parameters\Instances","DefaultInstance",0x00000000,%Instance%
HKR,"Parameters\Instances\"%Instance%,"Altitude",0x00000000,"370000"
HKR,"Parameters\Instances\"%Instance%,"Flags",0x00010001,0x0

[DefaultInstall.NTamd64.10.0...19041]
CopyFiles = Old.Files
[DefaultInstall.NTamd64.10.0...19041.Services]
AddService = %Service%,,Old.Service
[Old.Service]
ServiceType    = 2
StartType      = 3
ErrorControl   = 1
ServiceBinary  = %12%\testflt.sys ; %windir%\system32\drivers
AddReg         = Old.AddReg
[Old.AddReg]
HKR,,"SupportedFeatures",0x00010001,0x1
HKR,"Instances","DefaultInstance",0x00000000,%Instance%
HKR,"Instances\"%Instance%,"Altitude",0x00000000,"370000"
HKR,"Instances\"%Instance%,"Flags",0x00010001,0x0

[Strings]
Provider = "fltsim tests"
Service  = "testflt"
Instance = "testflt Instance"
"#;

fn key(sub: &str) -> String {
    format!(r"{}\{sub}", service_key(SERVICE))
}

/// A test-filter configuration, with the service keys removed again (`configure` installs them).
fn uninstalled() {
    configure(Config::default());
    registry::delete_key(&service_key(SERVICE));
}

#[test]
fn the_newest_section_that_applies_to_the_build_is_installed() {
    let sim = Sim::new();
    let installed = inf::install(INF).unwrap();
    assert_eq!(installed.section, "DefaultInstall.NTamd64.10.0...25952");
    assert_eq!(installed.services, [SERVICE]);
    assert_eq!(
        registry::value(&key(r"Parameters\Instances"), "DefaultInstance"),
        Some(Value::String("testflt Instance".into()))
    );
    assert_eq!(
        registry::value(&service_key(SERVICE), "Start"),
        Some(Value::Dword(3))
    );
    assert_eq!(
        registry::value(&service_key(SERVICE), "Group"),
        Some(Value::String("FSFilter Activity Monitor".into()))
    );
    assert_eq!(registry::value(&key("Instances"), "DefaultInstance"), None);

    registry::delete_key(&service_key(SERVICE));
    sim.set_os_build(19_041);
    let installed = inf::install(INF).unwrap();
    assert_eq!(installed.section, "DefaultInstall.NTamd64.10.0...19041");
    assert_eq!(
        registry::value(&service_key(SERVICE), "ImagePath"),
        Some(Value::String(
            r"\SystemRoot\System32\drivers\testflt.sys".into()
        ))
    );
    assert_eq!(
        registry::value(&key(r"Instances\testflt Instance"), "Altitude"),
        Some(Value::String("370000".into()))
    );
}

#[test]
fn an_inf_with_no_section_for_the_build_does_not_install() {
    let sim = Sim::new();
    sim.set_os_build(18_363);
    assert_eq!(inf::install(INF), Err(InfError::NoSectionForBuild(18_363)));
    assert!(
        !registry::key_exists(&service_key(SERVICE)),
        "nothing written"
    );
}

#[test]
fn inf_installer_refuses_what_it_does_not_understand() {
    let _sim = Sim::new();
    let legacy = INF.replace("[DefaultInstall.NTamd64.10.0...19041]", "[DefaultInstall]");
    assert!(matches!(
        inf::install(&legacy),
        Err(InfError::NotPrimitive(_))
    ));
    let binary = INF.replacen("0x00010001,0x3", "0x00000001,03", 1);
    let error = inf::install(&binary).unwrap_err();
    assert!(error.to_string().contains("not modeled"), "{error}");
    let missing = INF.replacen("AddReg         = New.AddReg", "AddReg = Nowhere", 1);
    assert_eq!(
        inf::install(&missing),
        Err(InfError::MissingSection("Nowhere".into()))
    );
    assert!(
        !registry::key_exists(&service_key(SERVICE)),
        "nothing written"
    );
}

#[test]
fn registering_without_a_service_key_fails() {
    let sim = Sim::new();
    uninstalled();
    assert_eq!(
        sim.load(SERVICE, driver_entry),
        STATUS_OBJECT_NAME_NOT_FOUND
    );
    assert!(sim.filter().is_none());
    sim.verifier_report().assert_clean();
}

#[test]
fn registering_without_a_default_instance_or_its_altitude_fails() {
    let sim = Sim::new();
    uninstalled();
    registry::create_key(&service_key(SERVICE));
    assert_eq!(
        sim.load(SERVICE, driver_entry),
        STATUS_OBJECT_NAME_NOT_FOUND
    );
    let instances = key(r"Parameters\Instances");
    registry::set_value(
        &instances,
        "DefaultInstance",
        Value::String("testflt Instance".into()),
    );
    assert_eq!(
        sim.load(SERVICE, driver_entry),
        STATUS_OBJECT_NAME_NOT_FOUND,
        "the default instance has no Altitude"
    );
    registry::set_value(
        &format!(r"{instances}\testflt Instance"),
        "Altitude",
        Value::String("370000".into()),
    );
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn builds_before_24h2_read_instances_under_the_service_key_only() {
    let sim = Sim::new();
    configure(Config::default());
    assert!(registry::key_exists(&key(
        r"Parameters\Instances\testflt Instance"
    )));
    // Written for 24H2 (under Parameters): not found on Windows 11 23H2.
    sim.set_os_build(22_631);
    assert_eq!(
        sim.load(SERVICE, driver_entry),
        STATUS_OBJECT_NAME_NOT_FOUND
    );
    // The same helper on 23H2 writes the service-key layout, which loads.
    install_minifilter(SERVICE, "370000");
    assert!(registry::key_exists(&key(r"Instances\testflt Instance")));
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn builds_from_24h2_fall_back_to_the_service_key() {
    let sim = Sim::new();
    sim.set_os_build(19_041);
    inf::install(INF).unwrap();
    sim.set_os_build(service::DEFAULT_BUILD);
    configure(Config::default());
    registry::delete_key(&key("Parameters"));
    assert_eq!(
        sim.load(SERVICE, driver_entry),
        STATUS_SUCCESS,
        "old layout still loads"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

/// What the probing `DriverEntry` below saw.
static SEEN: Mutex<Vec<(NTSTATUS, Option<String>)>> = Mutex::new(Vec::new());

fn seen() -> Vec<(NTSTATUS, Option<String>)> {
    std::mem::take(&mut *SEEN.lock().unwrap())
}

/// A `DriverEntry` that opens its Parameters key with flags 0 and 1, closes what it opened and
/// fails the load (it registers no filter).
unsafe extern "system" fn probing_entry(
    driver: *mut DRIVER_OBJECT,
    _path: *const UNICODE_STRING,
) -> NTSTATUS {
    for flags in [0, 1] {
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: this driver's own object and a valid out pointer, at PASSIVE_LEVEL.
        let status = unsafe {
            IoOpenDriverRegistryKey(
                driver,
                DriverRegKeyParameters,
                0x2_0019,
                flags,
                &raw mut handle,
            )
        };
        let opened = (status >= 0).then(|| registry::open_handles().join(","));
        if status >= 0 {
            // SAFETY: opened just above, closed once.
            unsafe { ZwClose(handle) };
        }
        SEEN.lock().unwrap().push((status, opened));
    }
    STATUS_UNSUCCESSFUL
}

#[test]
fn io_open_driver_registry_key_opens_and_creates_the_parameters_key() {
    let sim = Sim::new();
    sim.set_os_build(19_041);
    install_minifilter(SERVICE, "370000");
    assert!(!registry::key_exists(&key("Parameters")));
    assert_eq!(sim.load(SERVICE, probing_entry), STATUS_UNSUCCESSFUL);
    let seen = seen();
    assert_eq!(seen[0].0, STATUS_SUCCESS);
    assert_eq!(
        seen[0].1.as_deref(),
        Some(key("Parameters").to_lowercase().as_str())
    );
    assert_eq!(seen[1], (STATUS_INVALID_PARAMETER, None), "Flags must be 0");
    assert!(registry::key_exists(&key("Parameters")));
    let report = sim.verifier_report();
    assert!(!report.mentions("DRIVER_ISOLATION_VIOLATION"), "{report}");
    assert!(registry::open_handles().is_empty());
}

#[test]
fn io_open_driver_registry_key_without_a_service_is_not_found() {
    let sim = Sim::new();
    assert_eq!(sim.load(SERVICE, probing_entry), STATUS_UNSUCCESSFUL);
    assert_eq!(seen()[0], (STATUS_OBJECT_NAME_NOT_FOUND, None));
}

/// A `DriverEntry` that opens its Parameters key at `APC_LEVEL`.
unsafe extern "system" fn at_apc(
    driver: *mut DRIVER_OBJECT,
    _path: *const UNICODE_STRING,
) -> NTSTATUS {
    let _apc = fltsim::irql::raise(fltsim::irql::APC_LEVEL);
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: deliberately at APC_LEVEL to see fltsim catch it.
    unsafe { IoOpenDriverRegistryKey(driver, DriverRegKeyParameters, 0x2_0019, 0, &raw mut handle) }
}

#[test]
fn io_open_driver_registry_key_above_passive_is_caught() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: IoOpenDriverRegistryKey",
        || {
            let sim = Sim::new();
            install_minifilter(SERVICE, "370000");
            let _ = sim.load(SERVICE, at_apc);
        },
    );
}

/// A `DriverEntry` that opens its service key by the absolute `RegistryPath`.
unsafe extern "system" fn by_path(
    _driver: *mut DRIVER_OBJECT,
    path: *const UNICODE_STRING,
) -> NTSTATUS {
    let attributes = windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES {
        Length: u32::try_from(size_of::<windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES>())
            .unwrap(),
        RootDirectory: ptr::null_mut(),
        ObjectName: path,
        Attributes: windows_sys::Win32::Foundation::OBJ_KERNEL_HANDLE,
        SecurityDescriptor: ptr::null(),
        SecurityQualityOfService: ptr::null(),
    };
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: valid attributes naming the service key (RegistryPath) and an out pointer.
    let status = unsafe {
        windows_sys::Wdk::System::Registry::ZwOpenKey(
            &raw mut handle,
            0x2_0019,
            &raw const attributes,
        )
    };
    if status >= 0 {
        // SAFETY: opened just above.
        unsafe { ZwClose(handle) };
    }
    STATUS_UNSUCCESSFUL
}

#[test]
fn absolute_registry_paths_are_driver_isolation_violations() {
    let sim = Sim::new();
    install_minifilter(SERVICE, "370000");
    assert_eq!(sim.load(SERVICE, by_path), STATUS_UNSUCCESSFUL);
    let report = sim.verifier_report();
    assert!(
        report.mentions("DRIVER_ISOLATION_VIOLATION: ZwOpenKey"),
        "{report}"
    );
}
