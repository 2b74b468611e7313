//! Load, attach by policy, detach, reattach, dismount and unload, with I/O in flight too.

use fltsim::registry::{self, Value};
use fltsim::{FileSystem, OpenOptions, VolumeSpec};
use windows_sys::Win32::Foundation::{STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_SUCCESS};

use crate::harness::{Machine, PARAMETERS, for_each_driver};

/// Whether the driver logged exactly `line`.
fn logged(line: &str) -> bool {
    fltsim::kernel::debug_log().iter().any(|l| l.text == line)
}

/// Opens `path` (creating it), writes, reads and closes it, asserting every status.
fn touch(machine: &Machine, volume: fltsim::Volume, path: &str) {
    let mut file = machine
        .sim
        .open(volume, path, OpenOptions::create())
        .unwrap();
    assert_eq!(file.write(100, 0).status, STATUS_SUCCESS);
    assert_eq!(file.read(50, 0).status, STATUS_SUCCESS);
    assert_eq!(file.close(), STATUS_SUCCESS);
}

for_each_driver! {
    fn loads_attaches_by_policy_detaches_and_unloads_clean(driver: Driver) {
        let machine = Machine::new(driver);
        assert!(logged("iotally: filtering; at most 4096 files tallied per volume\n"));
        let ntfs = machine.volume(2, FileSystem::Ntfs);
        let refs = machine.volume(3, FileSystem::Refs);
        let exfat = machine.volume(4, FileSystem::ExFat);
        let share = machine
            .sim
            .add_volume(VolumeSpec::new(r"\Device\Mup", FileSystem::Network));
        let cd = machine.volume(5, FileSystem::Cdfs);
        for volume in [ntfs, refs, exfat] {
            assert!(machine.sim.instance(volume).is_some(), "{volume:?} not attached");
        }
        assert!(machine.sim.instance(share).is_none(), "attached to a network share");
        assert!(machine.sim.instance(cd).is_none(), "attached to optical media");
        for volume in [ntfs, refs, exfat] {
            touch(&machine, volume, r"\a.txt");
        }
        assert_eq!(machine.sim.detach(ntfs), STATUS_SUCCESS);
        assert!(machine.sim.instance(ntfs).is_none());
        assert_eq!(machine.sim.detach(ntfs), STATUS_FLT_INSTANCE_NOT_FOUND);
        touch(&machine, ntfs, r"\unfiltered.txt");
        assert_eq!(machine.sim.attach(ntfs), STATUS_SUCCESS);
        touch(&machine, ntfs, r"\a.txt");
        machine.sim.remove_volume(refs);
        machine.unload_clean();
    }
}

for_each_driver! {
    fn opens_without_transfers_leave_nothing_behind(driver: Driver) {
        let machine = Machine::new(driver);
        let ntfs = machine.volume(2, FileSystem::Ntfs);
        for round in 0..3 {
            for i in 0..20 {
                // Attribute queries, directory listings and the like open files without reading.
                let file = machine
                    .sim
                    .open(ntfs, &format!(r"\looked-at-{i}"), OpenOptions::create())
                    .unwrap();
                assert_eq!(file.close(), STATUS_SUCCESS, "round {round}");
            }
        }
        machine.unload_clean();
    }
}

for_each_driver! {
    fn a_mandatory_unload_with_files_open_is_clean(driver: Driver) {
        let machine = Machine::new(driver);
        let ntfs = machine.volume(2, FileSystem::Ntfs);
        let mut open: Vec<_> = (0..3)
            .map(|i| {
                let mut file = machine
                    .sim
                    .open(ntfs, &format!(r"\open{i}"), OpenOptions::create())
                    .unwrap();
                assert_eq!(file.write(10, 0).status, STATUS_SUCCESS);
                file
            })
            .collect();
        assert_eq!(machine.sim.unload(true), STATUS_SUCCESS);
        for file in &mut open {
            assert_eq!(file.read(1, 0).status, STATUS_SUCCESS);
        }
        for file in open {
            assert_eq!(file.close(), STATUS_SUCCESS);
        }
        machine.sim.verifier_report().assert_clean();
    }
}

for_each_driver! {
    fn the_table_bound_comes_from_the_registry(driver: Driver) {
        let sim = fltsim::Sim::new();
        crate::harness::install();
        registry::set_value(PARAMETERS, "MaxEntriesPerInstance", Value::Dword(7));
        assert_eq!(driver.load(&sim), STATUS_SUCCESS);
        assert!(logged("iotally: filtering; at most 7 files tallied per volume\n"));
        assert!(registry::open_handles().is_empty(), "registry handle left open");
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
        sim.verifier_report().assert_clean();
    }
}

for_each_driver! {
    fn detach_and_unload_with_io_in_flight_are_clean(driver: Driver) {
        let machine = Machine::new(driver);
        let volumes = [machine.volume(2, FileSystem::Ntfs), machine.volume(3, FileSystem::Ntfs)];
        for volume in volumes {
            touch(&machine, volume, r"\busy");
        }
        machine.sim.hold_io();
        std::thread::scope(|scope| {
            let workers: Vec<_> = volumes
                .iter()
                .map(|&volume| {
                    let sim = &machine.sim;
                    scope.spawn(move || {
                        let mut file = sim.open(volume, r"\busy", OpenOptions::open()).unwrap();
                        assert_eq!(file.read(1, 0).status, STATUS_SUCCESS);
                        assert_eq!(file.close(), STATUS_SUCCESS);
                    })
                })
                .collect();
            machine.sim.wait_for_held_io(2);
            assert_eq!(machine.sim.detach(volumes[0]), STATUS_SUCCESS);
            assert_eq!(machine.sim.unload(false), STATUS_SUCCESS);
            machine.sim.release_io();
            for worker in workers {
                worker.join().unwrap();
            }
        });
        machine.sim.verifier_report().assert_clean();
    }
}
