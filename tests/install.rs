//! iotally installed (or not) the way Windows Setup does, and its settings read through
//! `IoOpenDriverRegistryKey` on each install layout.

mod common;

use common::{PARAMETERS, install};
use fltsim::registry::{self, Value};
use fltsim::{FileSystem, Sim, VolumeSpec};
use windows_sys::Win32::Foundation::{STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};

/// The bound on entries of the instance iotally attaches to a new NTFS volume.
fn max_entries(sim: &Sim) -> Option<usize> {
    let c = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume2",
        FileSystem::Ntfs,
    ));
    let instance = sim.instance(c)?;
    // SAFETY: the instance was just attached and stays attached during the call.
    unsafe { iotally::inspect::with_instance(instance, |view| view.table().max_entries()) }
}

#[test]
fn without_its_service_keys_iotally_does_not_load_and_leaves_nothing_behind() {
    let sim = Sim::new();
    assert_eq!(
        sim.load("iotally", iotally::DriverEntry),
        STATUS_OBJECT_NAME_NOT_FOUND
    );
    assert!(sim.filter().is_none());
    assert!(registry::open_handles().is_empty());
    sim.verifier_report().assert_clean();
}

/// On builds before 24H2 the INF writes no `Parameters` key; the setting a user adds there is read
/// all the same, through `IoOpenDriverRegistryKey`, on both layouts.
#[test]
fn settings_are_read_through_io_open_driver_registry_key_on_both_layouts() {
    for build in [19_041, 26_100] {
        let sim = Sim::new();
        sim.set_os_build(build);
        install();
        registry::set_value(PARAMETERS, "MaxEntriesPerInstance", Value::Dword(9));
        assert_eq!(sim.load("iotally", iotally::DriverEntry), STATUS_SUCCESS);
        assert_eq!(max_entries(&sim), Some(9), "build {build}");
        assert!(registry::open_handles().is_empty());
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
        let report = sim.verifier_report();
        assert!(!report.mentions("DRIVER_ISOLATION_VIOLATION"), "{report}");
        report.assert_clean();
    }
}

#[test]
fn settings_out_of_range_or_of_another_type_are_reported() {
    for (value, expected, warning) in [
        (
            Value::Dword(u32::MAX),
            1 << 20,
            "iotally: MaxEntriesPerInstance 4294967295 is above the limit: using 1048576\n",
        ),
        (
            Value::String("12".into()),
            iotally::table::DEFAULT_MAX_ENTRIES,
            "iotally: MaxEntriesPerInstance is not a REG_DWORD: using the default, 4096\n",
        ),
    ] {
        let sim = Sim::new();
        install();
        registry::set_value(PARAMETERS, "MaxEntriesPerInstance", value);
        assert_eq!(sim.load("iotally", iotally::DriverEntry), STATUS_SUCCESS);
        assert_eq!(max_entries(&sim), Some(expected));
        let log = fltsim::kernel::debug_log();
        let warned = log
            .iter()
            .any(|line| line.level == 1 && line.text == warning);
        assert!(warned, "{log:?}");
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
    }
}
