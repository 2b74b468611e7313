//! Transparency, the core of the HLK's file-system filter tests: fltsim's seeded workload (creates of
//! every disposition, overwrites, reads and writes of every kind, renames, hard links, deletes,
//! streams, byte-range locks) gives the same status, `IoStatus.Information` and data for every
//! operation, and leaves the volume with the same files and bytes, with iotally loaded as without
//! it, on NTFS, ReFS, FAT and exFAT. (`fltsim/tests/transparency.rs` shows the comparison catching
//! filters that disallow fast I/O, change a status or change data.)

mod common;

use common::Loaded;
use fltsim::transparency::{Trace, Workload};
use fltsim::{FileSystem, Sim, VolumeSpec};

const OPERATIONS: usize = 1500;

fn spec(fs: FileSystem) -> VolumeSpec {
    VolumeSpec::new(r"\Device\HarddiskVolume2", fs)
}

fn without_iotally(fs: FileSystem, workload: Workload) -> Trace {
    let sim = Sim::new();
    let volume = sim.add_volume(spec(fs));
    workload.run(&sim, volume)
}

fn with_iotally(fs: FileSystem, workload: Workload) -> Trace {
    let t = Loaded::new();
    let volume = t.sim.add_volume(spec(fs));
    assert!(t.sim.instance(volume).is_some(), "{fs:?}: iotally attached");
    let trace = workload.run(&t.sim, volume);
    let tallies = t.tallies(volume).unwrap();
    assert!(!tallies.is_empty(), "{fs:?}: iotally tallied the workload");
    t.unload_clean();
    trace
}

#[test]
fn iotally_changes_no_status_information_or_data_on_any_file_system() {
    for (fs, seed) in [
        (FileSystem::Ntfs, 0x1F5_7E57),
        (FileSystem::Refs, 0x2F5_7E57),
        (FileSystem::Fat, 0x3F5_7E57),
        (FileSystem::ExFat, 0x4F5_7E57),
    ] {
        let workload = Workload::new(seed, OPERATIONS);
        let without = without_iotally(fs, workload);
        let with = with_iotally(fs, workload);
        assert_eq!(without.steps.len(), OPERATIONS);
        assert!(
            without.steps.iter().filter(|s| !s.data.is_empty()).count() > OPERATIONS / 10,
            "{fs:?}: the comparison covers data"
        );
        if let Some(difference) = without.difference(&with) {
            panic!("{fs:?}: iotally is not transparent: {difference}");
        }
    }
}
