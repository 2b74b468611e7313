//! Load, attach, detach and unload of iotally through fltsim, including with I/O in flight.

mod common;

use common::{Loaded, PARAMETERS, totals};
use fltsim::registry::{self, Value};
use fltsim::{FileSystem, OpenOptions, Sim};
use windows_sys::Win32::Foundation::{STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_SUCCESS};

#[test]
fn load_and_unload_register_and_unregister_exactly_once() {
    let sim = Sim::new();
    common::install();
    assert_eq!(sim.load("iotally", iotally::DriverEntry), STATUS_SUCCESS);
    assert!(sim.filter().is_some());
    let logged = fltsim::kernel::debug_log();
    assert!(
        logged
            .iter()
            .any(|line| line.text == "iotally: filtering; at most 4096 files tallied per volume\n"),
        "{logged:?}"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert!(!sim.driver_loaded());
    sim.verifier_report().assert_clean();
}

#[test]
fn mandatory_unload_with_attached_volumes_is_clean() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.volume(3, FileSystem::Refs);
    t.sim.create_file(c, r"\f", 0);
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.write(1, 0);
    assert_eq!(h.close(), 0);
    assert_eq!(t.sim.unload(true), STATUS_SUCCESS);
    t.sim.verifier_report().assert_clean();
}

#[test]
fn unload_with_a_file_still_open_is_clean() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\open.txt", 0);
    let mut h = t.sim.open(c, r"\open.txt", OpenOptions::open()).unwrap();
    h.read(1, 0);
    assert_eq!(t.sim.unload(false), STATUS_SUCCESS);
    h.read(1, 0);
    assert_eq!(h.close(), 0);
    t.sim.verifier_report().assert_clean();
}

#[test]
fn manual_detach_and_reattach_start_a_fresh_table() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 0);
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.write(9, 0);
    assert_eq!(h.close(), 0);
    assert_eq!(t.sim.detach(c), STATUS_SUCCESS);
    assert!(t.tallies(c).is_none());
    assert_eq!(t.sim.detach(c), STATUS_FLT_INSTANCE_NOT_FOUND);
    assert_eq!(t.sim.attach(c), STATUS_SUCCESS);
    assert!(t.tallies(c).unwrap().is_empty());
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.read(4, 0);
    assert_eq!(h.close(), 0);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\f"]), (1, 1, 0, 4, 0));
    t.unload_clean();
}

#[test]
fn volume_dismount_frees_the_instance() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 0);
    let h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    t.sim.remove_volume(c);
    drop(h);
    t.unload_clean();
}

#[test]
fn detach_and_unload_with_creates_in_flight_are_clean() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let d = t.volume(3, FileSystem::Ntfs);
    for v in [c, d] {
        t.sim.create_file(v, r"\busy", 0);
    }
    t.sim.hold_io();
    std::thread::scope(|scope| {
        let opener = |v| {
            let sim = &t.sim;
            move || {
                if let Ok(mut h) = sim.open(v, r"\busy", OpenOptions::open()) {
                    h.read(1, 0);
                    assert_eq!(h.close(), 0);
                }
            }
        };
        let first = scope.spawn(opener(c));
        let second = scope.spawn(opener(d));
        t.sim.wait_for_held_io(2);
        assert_eq!(t.sim.detach(c), STATUS_SUCCESS);
        assert_eq!(t.sim.unload(false), STATUS_SUCCESS);
        t.sim.release_io();
        first.join().unwrap();
        second.join().unwrap();
    });
    t.sim.verifier_report().assert_clean();
}

#[test]
fn max_entries_comes_from_the_registry() {
    for (value, expected) in [
        (None, iotally::table::DEFAULT_MAX_ENTRIES),
        (Some(Value::Dword(0)), iotally::table::DEFAULT_MAX_ENTRIES),
        (Some(Value::Dword(7)), 7),
        (Some(Value::Dword(u32::MAX)), 1 << 20),
        (
            Some(Value::String("12".into())),
            iotally::table::DEFAULT_MAX_ENTRIES,
        ),
    ] {
        let sim = Sim::new();
        common::install();
        if let Some(value) = value.clone() {
            registry::set_value(PARAMETERS, "MaxEntriesPerInstance", value);
        }
        assert_eq!(sim.load("iotally", iotally::DriverEntry), STATUS_SUCCESS);
        let c = sim.add_volume(fltsim::VolumeSpec::new(
            r"\Device\HarddiskVolume2",
            FileSystem::Ntfs,
        ));
        let instance = sim.instance(c).unwrap();
        // SAFETY: the instance was just attached and stays attached during the call.
        let max = unsafe { iotally::inspect::with_instance(instance, |v| v.table().max_entries()) };
        assert_eq!(max, Some(expected), "for {value:?}");
        assert!(
            registry::open_handles().is_empty(),
            "registry handles leaked"
        );
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
        sim.verifier_report().assert_clean();
    }
}
