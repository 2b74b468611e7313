//! Unloading iotally while Filter Manager still delivers work to it.
//!
//! Filter Manager keeps sending operations and offering newly mounted volumes to a filter until
//! each of its instances' teardown starts, which happens inside `FltUnregisterFilter`: whatever
//! `FilterUnload` tears down before that call is gone while callbacks still run. fltsim stops the
//! unloading thread at `FltUnregisterFilter` ([`Point::Unregister`]) and, while it is stopped, lets
//! creates, reads and writes that were in flight on every volume complete, issues new ones and mounts
//! a volume, so the race happens every round instead of when the scheduler is unlucky.

mod common;

use std::thread;

use common::Loaded;
use fltsim::{FileSystem, OpenOptions, Point, Sim, Volume, VolumeSpec};
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

/// Rounds of the stress: each loads iotally, races one unload, and checks the verifier report.
const ROUNDS: u32 = 32;
/// Operations each thread issues on its volume while the unload goes on, after it is resumed.
const TAIL_OPERATIONS: u32 = 40;

/// Opens a new file, writes and reads it, closes it; an open failing (the volume dismounting, the
/// filter gone) is fine.
fn create_write_read(sim: &Sim, volume: Volume, name: &str) {
    if let Ok(mut handle) = sim.open(volume, name, OpenOptions::create()) {
        handle.write(64, 0);
        handle.read(64, 0);
        assert_eq!(handle.close(), STATUS_SUCCESS);
    }
}

/// One round: I/O in flight on every volume, an unload stopped at `FltUnregisterFilter`, the
/// in-flight I/O completing and new I/O and a mount arriving meanwhile, then the unload finishing
/// while more I/O races it.
fn race_one_unload(round: u32) {
    let t = Loaded::new();
    let volumes = [
        t.volume(2, FileSystem::Ntfs),
        t.volume(3, FileSystem::Refs),
        t.volume(4, FileSystem::ExFat),
    ];
    for &volume in &volumes {
        t.sim.create_file(volume, r"\existing", 4096);
    }
    let sim = &t.sim;
    let open: Vec<_> = volumes
        .iter()
        .map(|&volume| {
            sim.open(volume, r"\existing", OpenOptions::open())
                .expect("an existing file opens")
        })
        .collect();
    t.sim.hold_io();
    thread::scope(|scope| {
        let mut in_flight = Vec::new();
        for ((n, &volume), mut handle) in volumes.iter().enumerate().zip(open) {
            // A create of a new file (its post-create attaches a stream context), and a read and a
            // write on an open file, all held in the file system.
            in_flight.push(scope.spawn(move || {
                create_write_read(sim, volume, &format!(r"\new-{round}-{n}"));
            }));
            in_flight.push(scope.spawn(move || {
                handle.read(512, 0);
                handle.write(512, 0);
                assert_eq!(handle.close(), STATUS_SUCCESS);
            }));
        }
        t.sim.wait_for_held_io(2 * volumes.len());
        let pause = t.sim.pause_at(Point::Unregister);
        let unload = scope.spawn(move || sim.unload(round.is_multiple_of(2)));
        pause.wait();
        // FilterUnload has run up to FltUnregisterFilter: every instance still gets operations.
        t.sim.release_io();
        for worker in in_flight {
            worker.join().expect("in-flight I/O completes");
        }
        for (n, &volume) in volumes.iter().enumerate() {
            create_write_read(sim, volume, &format!(r"\during-{round}-{n}"));
        }
        // A volume mounting now is still offered to the filter.
        let mounted = sim.add_volume(VolumeSpec::new(
            &format!(r"\Device\HarddiskVolume{}", 10 + round),
            FileSystem::Ntfs,
        ));
        create_write_read(sim, mounted, r"\on-the-new-volume");
        let racers: Vec<_> = volumes
            .iter()
            .chain([&mounted])
            .enumerate()
            .map(|(n, &volume)| {
                scope.spawn(move || {
                    for i in 0..TAIL_OPERATIONS {
                        create_write_read(sim, volume, &format!(r"\tail-{round}-{n}-{i}"));
                    }
                })
            })
            .collect();
        pause.resume();
        assert_eq!(unload.join().expect("the unload thread"), STATUS_SUCCESS);
        for racer in racers {
            racer.join().expect("I/O racing the unload");
        }
    });
    t.sim.verifier_report().assert_clean();
}

#[test]
fn unload_races_creates_reads_writes_and_a_mount_on_every_volume() {
    for round in 0..ROUNDS {
        race_one_unload(round);
    }
}

#[test]
fn a_volume_mounting_while_unload_runs_is_set_up_with_a_valid_filter() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let sim = &t.sim;
    thread::scope(|scope| {
        let pause = sim.pause_at(Point::Unregister);
        let unload = scope.spawn(move || sim.unload(false));
        pause.wait();
        let d = sim.add_volume(VolumeSpec::new(
            r"\Device\HarddiskVolume3",
            FileSystem::Ntfs,
        ));
        assert!(
            sim.instance(d).is_some(),
            "the mounted volume gets an instance"
        );
        create_write_read(sim, c, r"\during");
        create_write_read(sim, d, r"\during");
        pause.resume();
        assert_eq!(unload.join().expect("the unload thread"), STATUS_SUCCESS);
    });
    t.sim.verifier_report().assert_clean();
}
