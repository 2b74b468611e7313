//! Seeded stress with races: worker threads create, read (cached, non-cached, fast, MDL), write and
//! close on NTFS, ReFS, FAT and exFAT volumes that stay attached, and on churn volumes that a chaos
//! thread mounts, dismounts, detaches and re-attaches meanwhile; client threads connect to the port,
//! query and disconnect (some abruptly); at the end iotally unloads with I/O in flight.
//!
//! Exact: every tally on the volumes that stay attached equals what the workers did (opens, reads,
//! writes, bytes), and the table holds nothing else. Churn volumes are checked for cleanliness
//! only (no panic, no leak, verifier report empty after unload).
//!
//! `IOTALLY_STRESS_SEED` replays a run (the seed is printed); `IOTALLY_STRESS_OPS` (operations per
//! worker, default 2000) and `IOTALLY_STRESS_THREADS` (workers, default 4) make a longer campaign.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Loaded, totals};
use fltsim::{Caller, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use iotally::stats::Stat;
use iotallyctl::client::Client;
use iotallyctl::sim::SimPort;
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Files each worker owns on each stable volume.
const FILES_PER_WORKER: u64 = 3;
/// Size of every pre-created file: reads and writes stay inside it, so each moves its full length.
const FILE_SIZE: u64 = 1 << 20;
/// Port clients.
const CLIENTS: u64 = 2;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map_or(default, |v| v.parse().expect("a number"))
}

fn rng(seed: u64, stream: u64) -> TestRng {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::XorShift, &bytes)
}

/// What a worker did to one file: `(opens, reads, writes, bytes_read, bytes_written)`.
type Expected = BTreeMap<(usize, String), (u64, u64, u64, u64, u64)>;

/// One read or write through a path chosen by `rng`; returns `(is_read, bytes)` when it succeeded
/// with its full length.
fn transfer(rng: &mut TestRng, h: &mut fltsim::FileHandle<'_>) -> Option<(bool, u64)> {
    let sectors = rng.random_range(1..=8u32);
    let length = sectors * 512;
    let offset =
        u64::from(rng.random_range(0..(u32::try_from(FILE_SIZE).unwrap() / 512 - 8))) * 512;
    let r = match rng.random_range(0..8u32) {
        0 => (true, h.read(length, offset)),
        1 => (false, h.write(length, offset)),
        2 => (true, h.read_noncached(length, offset)),
        3 => (false, h.write_noncached(length, offset)),
        4 => (true, h.fast_read(length, offset)),
        5 => (false, h.fast_write(length, offset)),
        6 => (true, h.mdl_read(length, offset)),
        _ => (false, h.mdl_write(length, offset)),
    };
    (r.1.status == 0).then(|| (r.0, u64::try_from(r.1.information).unwrap()))
}

/// The file systems of the stable volumes (and, at random, of the churn volumes).
const KINDS: [FileSystem; 4] = [
    FileSystem::Ntfs,
    FileSystem::Refs,
    FileSystem::Fat,
    FileSystem::ExFat,
];

/// What the chaos and client threads did.
#[derive(Default)]
struct Churn {
    volumes: Mutex<Vec<Volume>>,
    next_volume: AtomicU64,
    done: AtomicBool,
    mounts: AtomicU64,
    dismounts: AtomicU64,
    detaches: AtomicU64,
    attaches: AtomicU64,
    sessions: AtomicU64,
}

impl Churn {
    fn pick(&self, rng: &mut TestRng) -> Option<Volume> {
        let list = self.volumes.lock().unwrap();
        (!list.is_empty()).then(|| list[rng.random_range(0..list.len())])
    }
}

/// A worker: `ops` opens on the stable volumes (each with up to three transfers, recorded in the
/// result) or on a churn volume (any outcome accepted: it may be dismounted or detached under us).
fn worker(
    sim: &Sim,
    stable: &[Volume],
    churn: &Churn,
    mut rng: TestRng,
    w: u64,
    ops: u64,
) -> Expected {
    let mut expected = Expected::new();
    for _ in 0..ops {
        if rng.random_range(0..4u32) == 0 {
            if let Some(v) = churn.pick(&mut rng) {
                let name = format!(r"\c{w}-{}", rng.random_range(0..4u32));
                if let Ok(mut h) = sim.open(v, &name, OpenOptions::create()) {
                    let _ = h.write(512, 0);
                    let _ = h.read(512, 0);
                    let _ = h.close();
                }
            }
            continue;
        }
        let vi = rng.random_range(0..stable.len());
        let name = format!(r"\w{w}-{}", rng.random_range(0..FILES_PER_WORKER));
        let mut h = sim.open(stable[vi], &name, OpenOptions::open()).unwrap();
        let e = expected.entry((vi, name)).or_default();
        e.0 += 1;
        for _ in 0..rng.random_range(0..4u32) {
            let (read, bytes) = transfer(&mut rng, &mut h).expect("I/O succeeds");
            if read {
                e.1 += 1;
                e.3 += bytes;
            } else {
                e.2 += 1;
                e.4 += bytes;
            }
        }
        assert_eq!(h.close(), 0);
    }
    expected
}

/// The chaos thread: mounts volumes, dismounts them, detaches and re-attaches iotally (as `fltmc
/// detach` and `fltmc attach`) until the workers are done.
fn chaos(sim: &Sim, churn: &Churn, mut rng: TestRng) {
    while !churn.done.load(Ordering::Acquire) {
        match rng.random_range(0..4u32) {
            0 => {
                let n = churn.next_volume.fetch_add(1, Ordering::Relaxed);
                let fs = KINDS[rng.random_range(0..KINDS.len())];
                let v = sim.add_volume(VolumeSpec::new(&format!(r"\Device\HarddiskVolume{n}"), fs));
                churn.volumes.lock().unwrap().push(v);
                churn.mounts.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let mut list = churn.volumes.lock().unwrap();
                if list.len() > 1 {
                    let i = rng.random_range(0..list.len());
                    let v = list.swap_remove(i);
                    drop(list);
                    sim.remove_volume(v);
                    churn.dismounts.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                if let Some(v) = churn.pick(&mut rng) {
                    if sim.detach(v) == 0 {
                        churn.detaches.fetch_add(1, Ordering::Relaxed);
                    } else if sim.attach(v) == 0 {
                        churn.attaches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A port client: connects (the port may refuse while the other client is connected), lists the
/// instances, sometimes dumps C:, and disconnects by dropping the client.
fn client(sim: &Sim, churn: &Churn, mut rng: TestRng) {
    let drives = [("C:", r"\Device\HarddiskVolume2")];
    while !churn.done.load(Ordering::Acquire) {
        let Ok(port) = SimPort::connect(sim, Caller::Administrator, &drives) else {
            continue;
        };
        churn.sessions.fetch_add(1, Ordering::Relaxed);
        let mut client = Client::new(port);
        client.instances().expect("instances");
        if rng.random_range(0..2u32) == 0 {
            client.dump("C:", 0).expect("dump");
        }
        drop(client);
    }
}

/// Every tally on each stable volume equals what the workers did there, and nothing else is there.
fn check_tallies(t: &Loaded, stable: &[Volume], expected: &[Expected]) {
    for (vi, &v) in stable.iter().enumerate() {
        let tallies = t.tallies(v).expect("stable volumes stay attached");
        let want: BTreeMap<String, _> = expected
            .iter()
            .flatten()
            .filter(|((i, _), _)| *i == vi)
            .map(|((_, name), counts)| (name.clone(), *counts))
            .collect();
        let got: BTreeMap<String, _> = tallies
            .iter()
            .map(|(n, c)| (n.clone(), totals(c)))
            .collect();
        assert_eq!(got, want, "volume {vi} ({:?})", KINDS[vi]);
        let stats = t.stats(v);
        assert_eq!(stats.get(Stat::AllocationFailures), 0);
        assert_eq!(stats.get(Stat::Evictions), 0);
    }
}

#[test]
fn seeded_stress_with_mounts_detaches_clients_and_unload_in_flight() {
    let seed = env_u64("IOTALLY_STRESS_SEED", 0x10_7A11);
    let ops = env_u64("IOTALLY_STRESS_OPS", 2000);
    let threads = env_u64("IOTALLY_STRESS_THREADS", 4);
    eprintln!(
        "IOTALLY_STRESS_SEED={seed} IOTALLY_STRESS_OPS={ops} IOTALLY_STRESS_THREADS={threads}"
    );

    let t = Loaded::new();
    let stable: Vec<Volume> = KINDS
        .iter()
        .zip(2u32..)
        .map(|(fs, n)| t.volume(n, *fs))
        .collect();
    for &v in &stable {
        for w in 0..threads {
            for k in 0..FILES_PER_WORKER {
                t.sim.create_file(v, &format!(r"\w{w}-{k}"), FILE_SIZE);
            }
        }
    }
    let churn = Churn {
        next_volume: AtomicU64::new(10),
        ..Churn::default()
    };
    let expected: Vec<Expected> = std::thread::scope(|scope| {
        let (sim, stable, churn) = (&t.sim, &stable, &churn);
        let workers: Vec<_> = (0..threads)
            .map(|w| scope.spawn(move || worker(sim, stable, churn, rng(seed, w), w, ops)))
            .collect();
        scope.spawn(move || chaos(sim, churn, rng(seed, 1000)));
        for c in 0..CLIENTS {
            scope.spawn(move || client(sim, churn, rng(seed, 2000 + c)));
        }
        let expected = workers.into_iter().map(|w| w.join().unwrap()).collect();
        churn.done.store(true, Ordering::Release);
        expected
    });
    check_tallies(&t, &stable, &expected);
    eprintln!(
        "stress: {threads} workers x {ops} ops, {} mounts, {} dismounts, {} detaches, {} attaches, \
         {} client sessions",
        churn.mounts.load(Ordering::Relaxed),
        churn.dismounts.load(Ordering::Relaxed),
        churn.detaches.load(Ordering::Relaxed),
        churn.attaches.load(Ordering::Relaxed),
        churn.sessions.load(Ordering::Relaxed),
    );

    // Unload with I/O in flight: workers keep going on the stable volumes while the filter leaves.
    std::thread::scope(|scope| {
        for w in 0..threads {
            let (sim, stable) = (&t.sim, &stable);
            scope.spawn(move || {
                let mut rng = rng(seed, 3000 + w);
                for _ in 0..ops / 4 {
                    let v = stable[rng.random_range(0..stable.len())];
                    let name = format!(r"\w{w}-{}", rng.random_range(0..FILES_PER_WORKER));
                    let mut h = sim.open(v, &name, OpenOptions::open()).unwrap();
                    transfer(&mut rng, &mut h).expect("I/O succeeds with or without the filter");
                    assert_eq!(h.close(), 0);
                }
            });
        }
        assert_eq!(t.sim.unload(false), 0, "unload fails");
    });
    t.sim.verifier_report().assert_clean();
    let hang = fltsim::hang::report();
    assert!(
        hang.starts_with("who waits for what:\n  nobody\n"),
        "{hang}"
    );
}
