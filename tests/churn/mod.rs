//! The seeded stress both `tests/stress_races.rs` (host build, long run) and the end-to-end suite
//! (`tests/end_to_end/stress.rs`, every driver, short run) run: worker threads create, read (cached,
//! non-cached, fast, MDL), write and close on NTFS, `ReFS`, FAT and exFAT volumes that stay
//! attached, and on churn volumes that a chaos thread mounts, dismounts, detaches and re-attaches
//! meanwhile; port clients connect, query and disconnect (some abruptly); at the end the driver
//! unloads with I/O in flight, and the verifier report must be empty.
//!
//! Exact everywhere, read through the driver's port as `iotallyctl` reads it:
//! - every stable volume's table holds exactly what the workers did there (opens, reads, writes,
//!   bytes per file, and nothing else; instance totals their sums; no statistic but the inserts);
//! - every attachment of a churn volume (from its mount or re-attach to its dismount, its detach or
//!   the end of the run) is checked the same way against what the workers did during it, just
//!   before it ends, untracked transfers included.
//!
//! # How a churn volume's attachments are told apart
//! Each churn volume has an epoch guard (a [`RwLock`]): a worker holds it shared for each operation
//! it makes there (an open, a transfer, or a whole open-transfers-close) and for recording what it
//! did into the current attachment's expectation; the chaos thread holds it exclusively to check
//! the attachment and then detach, attach or dismount. So no operation of a churn volume is in
//! flight while its attachment changes, and an attachment's tallies are exactly the operations made
//! under it. Workers also keep handles open across operations, and so across detaches, attaches
//! and dismounts ([`churn_step`]). What this relies on in fltsim:
//! - an operation is filtered by the instance attached when it starts and by no other
//!   (`filtering_for` in `fltsim/src/io.rs`), and a teardown drains the instance's operations
//!   before it finishes (`drain` in `fltsim/src/instance.rs`); it waits for no open handle;
//! - attaching (`setup` in `fltsim/src/instance.rs`) only calls `InstanceSetup`: the new instance is
//!   told nothing of files already open, and stream contexts belong to one instance (they are
//!   deleted with it, `context::instance_gone` in `fltsim/src/context.rs`). A handle opened before
//!   the attachment therefore finds no entry: its open was never counted here, and its transfers
//!   count as untracked, until the same file is opened again during the attachment (post-create
//!   then gives the stream, which all its handles share, a context: [`Attachment::transfer`]);
//! - after a dismount a handle's I/O fails in the file system (`STATUS_VOLUME_DISMOUNTED`, the
//!   volume's `removed` flag in `fltsim/src/transfer.rs`), with no instance to see it;
//! - the cache manager's later I/O on a closed cached file (the lazy writer's paging writes and
//!   deferred closes, `fltsim/src/cachemgr.rs`) is paging I/O or a close, neither of which iotally
//!   counts, so it may cross an attachment boundary without changing a tally.
//!
//! # Teardown racing I/O
//! The epoch guard keeps the exact attachments' changes away from their I/O. So that detaches,
//! attaches and dismounts also race I/O in flight, a second chaos thread churns *racing* volumes
//! with no guard at all while workers open, write, read and close on them, any outcome accepted:
//! their tallies are not checked, only that nothing panics, hangs or leaks and that the verifier
//! report stays empty.
//!
//! The port accepts one connection (`MaxConnections` 1): to check, the chaos thread raises a flag
//! that keeps the client threads from connecting, and retries until the session in progress ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fltsim::{Caller, FileHandle, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use iotally_protocol::Stat;
use iotallyctl::client::{Client, Instance};
use iotallyctl::sim::SimPort;
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use windows_sys::Win32::Foundation::STATUS_VOLUME_DISMOUNTED;

/// `(opens, reads, writes, bytes_read, bytes_written)`.
pub type Counts = (u64, u64, u64, u64, u64);

/// What was done to each file of one volume (or one attachment), by path on the volume.
pub type Expected = BTreeMap<String, Counts>;

/// The file systems of the stable volumes (and, at random, of the churn volumes).
pub const KINDS: [FileSystem; 4] = [
    FileSystem::Ntfs,
    FileSystem::Refs,
    FileSystem::Fat,
    FileSystem::ExFat,
];

/// Size of every pre-created file: reads and writes stay inside it, so each moves its full length.
const FILE_SIZE: u64 = 1 << 20;
/// Files each worker owns on each volume (pre-created on stable and churn volumes alike).
const FILES_PER_WORKER: u64 = 3;
/// Files each worker may create on a churn volume.
const NEW_FILES_PER_WORKER: u64 = 2;
/// Port clients.
const CLIENTS: u64 = 2;
/// Churn volumes mounted at a time at most (few, so that kept handles see their volume change).
const MAX_CHURN_VOLUMES: usize = 3;
/// Churn volumes are `\Device\HarddiskVolume<n>` from this `n` on (stable ones from 2).
const FIRST_CHURN_VOLUME: u64 = 10;
/// Racing volumes are `\Device\HarddiskVolume<n>` from this `n` on.
const FIRST_RACING_VOLUME: u64 = 100_000;
/// Racing volumes mounted at a time at most.
const MAX_RACING_VOLUMES: usize = 4;

/// The size of a run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Seed of every generator.
    pub seed: u64,
    /// Operations per worker (one open, up to three transfers, a close) before the unload.
    pub ops: u64,
    /// Worker threads.
    pub threads: u64,
}

impl Config {
    /// `IOTALLY_STRESS_SEED`, `IOTALLY_STRESS_OPS` and `IOTALLY_STRESS_THREADS` if set, else the
    /// defaults given.
    pub fn from_env(ops: u64, threads: u64) -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map_or(default, |v| v.parse().expect("a number"))
        };
        Self {
            seed: var("IOTALLY_STRESS_SEED", 0x10_7A11),
            ops: var("IOTALLY_STRESS_OPS", ops),
            threads: var("IOTALLY_STRESS_THREADS", threads),
        }
    }
}

/// What a run did and checked.
#[derive(Debug, Default)]
pub struct Figures {
    /// Worker operations (opens) before the unload, on stable and churn volumes.
    pub operations: u64,
    /// Of those, on churn volumes.
    pub churn_operations: u64,
    /// Churn volumes mounted.
    pub mounts: u64,
    /// Churn volumes dismounted.
    pub dismounts: u64,
    /// Manual detaches.
    pub detaches: u64,
    /// Manual attaches.
    pub attaches: u64,
    /// Attachments of churn volumes whose tallies were checked exactly.
    pub churn_checks: u64,
    /// Opens those checks covered (the rest happened while the volume was detached).
    pub churn_opens_checked: u64,
    /// Untracked transfers those checks covered (through handles older than the attachment).
    pub churn_untracked_checked: u64,
    /// Transfers through handles kept open across operations on churn volumes.
    pub held_transfers: u64,
    /// Reads through kept handles after their volume was dismounted (which must fail).
    pub dismounted_reads: u64,
    /// Port sessions of the client threads.
    pub sessions: u64,
    /// Racing volumes mounted, dismounted, detached and attached with I/O in flight.
    pub racing_mounts: u64,
    /// See `racing_mounts`.
    pub racing_dismounts: u64,
    /// See `racing_mounts`.
    pub racing_detaches: u64,
    /// See `racing_mounts`.
    pub racing_attaches: u64,
    /// Worker operations on racing volumes.
    pub racing_operations: u64,
    /// Operations of the workers racing the unload (some before it, some during, some after).
    pub racing_unload: u64,
}

fn rng(seed: u64, stream: u64) -> TestRng {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::XorShift, &bytes)
}

fn device(n: u64) -> String {
    format!(r"\Device\HarddiskVolume{n}")
}

fn add(into: &mut Counts, what: Counts) {
    into.0 += what.0;
    into.1 += what.1;
    into.2 += what.2;
    into.3 += what.3;
    into.4 += what.4;
}

/// One read or write through a path chosen by `rng`, which must succeed with its full length:
/// anywhere in a pre-created file, or of the first 512 bytes of a file a worker created (`small`);
/// returns what it adds to the file's counts.
fn transfer(rng: &mut TestRng, h: &mut FileHandle<'_>, small: bool) -> Counts {
    let (length, offset) = if small {
        (512, 0)
    } else {
        let sectors = u32::try_from(FILE_SIZE / 512).unwrap() - 8;
        (
            rng.random_range(1..=8u32) * 512,
            u64::from(rng.random_range(0..sectors)) * 512,
        )
    };
    let (read, r) = match rng.random_range(0..8u32) {
        0 => (true, h.read(length, offset)),
        1 => (false, h.write(length, offset)),
        2 => (true, h.read_noncached(length, offset)),
        3 => (false, h.write_noncached(length, offset)),
        4 => (true, h.fast_read(length, offset)),
        5 => (false, h.fast_write(length, offset)),
        6 => (true, h.mdl_read(length, offset)),
        _ => (false, h.mdl_write(length, offset)),
    };
    assert_eq!(r.status, 0, "I/O fails");
    assert_eq!(r.information, usize::try_from(length).unwrap());
    let bytes = u64::from(length);
    if read {
        (0, 1, 0, bytes, 0)
    } else {
        (0, 0, 1, 0, bytes)
    }
}

/// Opens `name` (which exists) on `volume`, makes up to three transfers and closes it.
fn open_transfer_close(sim: &Sim, volume: Volume, name: &str, rng: &mut TestRng) -> Counts {
    let mut h = sim.open(volume, name, OpenOptions::open()).unwrap();
    let mut done = (1, 0, 0, 0, 0);
    for _ in 0..rng.random_range(0..4u32) {
        add(&mut done, transfer(rng, &mut h, false));
    }
    assert_eq!(h.close(), 0);
    done
}

/// What the workers did during one attachment of a churn volume.
#[derive(Default)]
struct Attachment {
    /// Per file opened during the attachment: its opens, and the transfers made on it since.
    files: Expected,
    /// `(reads, writes, bytes_read, bytes_written)` of transfers on files not opened during the
    /// attachment (through handles opened before it began): the stream has no entry and no stream
    /// context on this instance, so the driver counts them as untracked.
    untracked: (u64, u64, u64, u64),
}

impl Attachment {
    /// Records a transfer on `name`: tallied on its entry if the file was opened during this
    /// attachment (its post-create then gave the stream a context, which lives as long as the
    /// stream, so at least as long as the handle), untracked otherwise. A worker's files are its
    /// own, so nobody else opens `name` meanwhile.
    fn transfer(&mut self, name: &str, done: Counts) {
        if let Some(counts) = self.files.get_mut(name) {
            add(counts, done);
        } else {
            self.untracked.0 += done.1;
            self.untracked.1 += done.2;
            self.untracked.2 += done.3;
            self.untracked.3 += done.4;
        }
    }
}

/// What a churn volume is now, changed only under the epoch guard's exclusive hold.
struct Epoch {
    mounted: bool,
    attached: bool,
    /// What the workers did during the current attachment.
    expected: Mutex<Attachment>,
}

/// A churn volume and its epoch guard.
struct ChurnVolume {
    volume: Volume,
    device: String,
    epoch: RwLock<Epoch>,
}

/// What the chaos and client threads share.
#[derive(Default)]
struct Churn {
    volumes: Mutex<Vec<Arc<ChurnVolume>>>,
    done: AtomicBool,
    /// Set while the chaos thread wants the port: the client threads then do not connect.
    port_wanted: AtomicBool,
    operations: AtomicU64,
    mounts: AtomicU64,
    dismounts: AtomicU64,
    detaches: AtomicU64,
    attaches: AtomicU64,
    checks: AtomicU64,
    opens_checked: AtomicU64,
    untracked_checked: AtomicU64,
    held_transfers: AtomicU64,
    dismounted_reads: AtomicU64,
    sessions: AtomicU64,
    /// The racing volumes mounted now.
    racing: Mutex<Vec<Volume>>,
    racing_mounts: AtomicU64,
    racing_dismounts: AtomicU64,
    racing_detaches: AtomicU64,
    racing_attaches: AtomicU64,
    racing_operations: AtomicU64,
}

impl Churn {
    fn pick(&self, rng: &mut TestRng) -> Option<Arc<ChurnVolume>> {
        pick(&self.volumes, rng)
    }
}

/// A copy of a random element of `list`, if it has one.
fn pick<T: Clone>(list: &Mutex<Vec<T>>, rng: &mut TestRng) -> Option<T> {
    let list = list.lock().unwrap();
    (!list.is_empty()).then(|| list[rng.random_range(0..list.len())].clone())
}

/// The driver's tallies of `device`, by path on the volume, and its instance.
fn tallied(client: &mut Client<SimPort<'_>>, device: &str) -> (Expected, Instance) {
    let (_, instances) = client.instances().expect("instances");
    let instance = instances
        .into_iter()
        .find(|i| i.volume == device)
        .unwrap_or_else(|| panic!("no instance on {device}"));
    let files = client.dump(device, 0).expect("dump");
    assert_eq!(files.total as usize, files.files.len(), "{device}");
    let mut got = Expected::new();
    for f in &files.files {
        let path = f.name.strip_prefix(device).unwrap_or(&f.name).to_owned();
        let counts = (f.opens, f.reads, f.writes, f.bytes_read, f.bytes_written);
        assert!(got.insert(path, counts).is_none(), "{device}: two entries");
    }
    (got, instance)
}

/// Asserts that the driver tallied exactly `want` on `device`: per file, in the instance's totals
/// and entries, one insert per file, the untracked transfers, and every other statistic 0.
fn check(client: &mut Client<SimPort<'_>>, device: &str, want: &Attachment, what: &str) {
    let (got, instance) = tallied(client, device);
    let (untracked, want) = (want.untracked, &want.files);
    assert_eq!(got, *want, "{what} {device}: tallies");
    let mut sum = (0, 0, 0, 0, 0);
    for &c in want.values() {
        add(&mut sum, c);
    }
    let t = &instance.totals;
    assert_eq!(
        (t.opens, t.reads, t.writes, t.bytes_read, t.bytes_written),
        sum,
        "{what} {device}: instance totals"
    );
    assert_eq!(instance.entries, want.len() as u64, "{what} {device}");
    for stat in Stat::ALL {
        let value = instance
            .stats
            .iter()
            .find(|s| s.name == stat.name())
            .unwrap_or_else(|| panic!("the driver reports no {}", stat.name()))
            .value;
        let expected = match stat {
            Stat::Inserts => want.len() as u64,
            Stat::UntrackedReads => untracked.0,
            Stat::UntrackedWrites => untracked.1,
            Stat::UntrackedBytesRead => untracked.2,
            Stat::UntrackedBytesWritten => untracked.3,
            _ => 0,
        };
        assert_eq!(value, expected, "{what} {device}: {}", stat.name());
    }
}

/// Connects to the port for a check, keeping the client threads off it meanwhile.
fn connect_for_check<'sim>(sim: &'sim Sim, churn: &Churn) -> Client<SimPort<'sim>> {
    churn.port_wanted.store(true, Ordering::Release);
    let port = loop {
        if let Ok(port) = SimPort::connect(sim, Caller::Administrator, &[]) {
            break port;
        }
        std::thread::yield_now();
    };
    Client::new(port)
}

/// Checks the current attachment of `cv` (held exclusively: no I/O on it meanwhile) if it is
/// attached.
fn check_attachment(sim: &Sim, churn: &Churn, cv: &ChurnVolume, epoch: &Epoch) {
    if !epoch.attached {
        return;
    }
    let want = epoch.expected.lock().unwrap();
    let mut client = connect_for_check(sim, churn);
    check(&mut client, &cv.device, &want, "attachment of churn volume");
    drop(client);
    churn.port_wanted.store(false, Ordering::Release);
    churn.checks.fetch_add(1, Ordering::Relaxed);
    churn
        .opens_checked
        .fetch_add(want.files.values().map(|c| c.0).sum(), Ordering::Relaxed);
    churn
        .untracked_checked
        .fetch_add(want.untracked.0 + want.untracked.1, Ordering::Relaxed);
}

/// A handle a worker keeps open on a churn volume across operations, and so across the
/// attachment's changes (detach, attach, dismount).
struct Held<'sim> {
    cv: Arc<ChurnVolume>,
    name: String,
    small: bool,
    handle: FileHandle<'sim>,
}

/// Handles a worker keeps open at most.
const MAX_HELD: usize = 2;

/// Opens (or creates) one of worker `w`'s files on `cv`, whose epoch guard the caller holds
/// shared, and records the open; a created file gets its first 512 bytes written (recorded too).
fn open_churn_file<'sim>(
    sim: &'sim Sim,
    cv: &ChurnVolume,
    epoch: &Epoch,
    rng: &mut TestRng,
    w: u64,
) -> (String, bool, FileHandle<'sim>) {
    let small = rng.random_range(0..4u32) == 0;
    let (name, mut h) = if small {
        // A file that may not exist yet: created by the first open (FILE_CREATED), opened after.
        let name = format!(r"\n{w}-{}", rng.random_range(0..NEW_FILES_PER_WORKER));
        let h = sim.open(cv.volume, &name, OpenOptions::create()).unwrap();
        (name, h)
    } else {
        let name = format!(r"\w{w}-{}", rng.random_range(0..FILES_PER_WORKER));
        let h = sim.open(cv.volume, &name, OpenOptions::open()).unwrap();
        (name, h)
    };
    let mut expected = epoch.expected.lock().unwrap();
    if epoch.attached {
        expected.files.entry(name.clone()).or_default().0 += 1;
    }
    if small {
        let written = h.write(512, 0);
        assert_eq!((written.status, written.information), (0, 512));
        if epoch.attached {
            expected.transfer(&name, (0, 0, 1, 0, 512));
        }
    }
    (name, small, h)
}

/// One operation on a churn volume, under its epoch guard (shared): opens one of the worker's
/// files, transfers up to three times, closes it, and records what it did in the attachment.
fn churn_operation(sim: &Sim, churn: &Churn, cv: &ChurnVolume, rng: &mut TestRng, w: u64) {
    let epoch = cv.epoch.read().unwrap();
    if !epoch.mounted {
        return;
    }
    churn.operations.fetch_add(1, Ordering::Relaxed);
    let (name, small, mut h) = open_churn_file(sim, cv, &epoch, rng, w);
    for _ in 0..rng.random_range(0..4u32) {
        let done = transfer(rng, &mut h, small);
        if epoch.attached {
            epoch.expected.lock().unwrap().transfer(&name, done);
        }
    }
    assert_eq!(h.close(), 0);
}

/// One step on the churn volumes: open a handle to keep, transfer on a kept handle (each under
/// the epoch guard of its volume, shared), close a kept one (no guard: a close counts nothing,
/// and may race a detach), or a whole operation ([`churn_operation`]).
///
/// A kept handle is open while its volume is detached, re-attached or dismounted; fltsim's
/// teardown waits for running callbacks and pended operations (`drain`) and for rundown references,
/// never for open handles, so this cannot hold a detach up. Its transfers after a re-attach are
/// untracked unless the file was opened again since ([`Attachment::transfer`]); after a dismount
/// they fail (`STATUS_VOLUME_DISMOUNTED`, the file system's, with no instance to see them).
fn churn_step<'sim>(
    sim: &'sim Sim,
    churn: &Churn,
    held: &mut Vec<Held<'sim>>,
    rng: &mut TestRng,
    w: u64,
) {
    match rng.random_range(0..6u32) {
        0 | 1 if held.len() < MAX_HELD => {
            let Some(cv) = churn.pick(rng) else { return };
            let epoch = cv.epoch.read().unwrap();
            if !epoch.mounted {
                return;
            }
            churn.operations.fetch_add(1, Ordering::Relaxed);
            let (name, small, handle) = open_churn_file(sim, &cv, &epoch, rng, w);
            drop(epoch);
            held.push(Held {
                cv,
                name,
                small,
                handle,
            });
        }
        1..=3 if !held.is_empty() => {
            let i = rng.random_range(0..held.len());
            let Held {
                cv,
                name,
                small,
                handle,
            } = &mut held[i];
            let epoch = cv.epoch.read().unwrap();
            if epoch.mounted {
                let done = transfer(rng, handle, *small);
                if epoch.attached {
                    epoch.expected.lock().unwrap().transfer(name, done);
                }
                churn.held_transfers.fetch_add(1, Ordering::Relaxed);
            } else {
                let r = handle.read(512, 0);
                assert_eq!(
                    r.status, STATUS_VOLUME_DISMOUNTED,
                    "a read on a dismounted volume"
                );
                churn.dismounted_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        4 if !held.is_empty() => {
            let i = rng.random_range(0..held.len());
            assert_eq!(held.swap_remove(i).handle.close(), 0);
        }
        _ => {
            if let Some(cv) = churn.pick(rng) {
                churn_operation(sim, churn, &cv, rng, w);
            }
        }
    }
}

/// One operation on a racing volume, which may be detached, attached or dismounted meanwhile: any
/// outcome is accepted.
fn racing_operation(sim: &Sim, churn: &Churn, rng: &mut TestRng, w: u64) {
    let Some(volume) = pick(&churn.racing, rng) else {
        return;
    };
    churn.racing_operations.fetch_add(1, Ordering::Relaxed);
    let name = format!(r"\r{w}-{}", rng.random_range(0..NEW_FILES_PER_WORKER));
    if let Ok(mut h) = sim.open(volume, &name, OpenOptions::create()) {
        let _ = h.write(512, 0);
        let _ = h.read(512, 0);
        let _ = h.fast_read(512, 0);
        let _ = h.close();
    }
}

/// A worker: `ops` operations on the stable volumes (recorded in the result, per stable volume) or,
/// one in four, on a churn volume (recorded in its attachment), or, one in eight, on a racing
/// volume.
fn worker(
    sim: &Sim,
    stable: &[Volume],
    churn: &Churn,
    mut rng: TestRng,
    w: u64,
    ops: u64,
) -> Vec<Expected> {
    let mut expected = vec![Expected::new(); stable.len()];
    let mut held = Vec::new();
    for _ in 0..ops {
        match rng.random_range(0..8u32) {
            0 | 1 => {
                churn_step(sim, churn, &mut held, &mut rng, w);
                continue;
            }
            2 => {
                racing_operation(sim, churn, &mut rng, w);
                continue;
            }
            _ => {}
        }
        let vi = rng.random_range(0..stable.len());
        let name = format!(r"\w{w}-{}", rng.random_range(0..FILES_PER_WORKER));
        let done = open_transfer_close(sim, stable[vi], &name, &mut rng);
        add(expected[vi].entry(name).or_default(), done);
    }
    for h in held {
        assert_eq!(h.handle.close(), 0);
    }
    expected
}

/// Mounts churn volume `n` with the workers' files on it.
fn mount(sim: &Sim, n: u64, fs: FileSystem, threads: u64) -> ChurnVolume {
    let device = device(n);
    let volume = sim.add_volume(VolumeSpec::new(&device, fs));
    for w in 0..threads {
        for k in 0..FILES_PER_WORKER {
            sim.create_file(volume, &format!(r"\w{w}-{k}"), FILE_SIZE);
        }
    }
    ChurnVolume {
        volume,
        device,
        epoch: RwLock::new(Epoch {
            mounted: true,
            attached: sim.instance(volume).is_some(),
            expected: Mutex::new(Attachment::default()),
        }),
    }
}

/// The chaos thread: mounts volumes, dismounts them, detaches and re-attaches the driver (as `fltmc
/// detach` and `fltmc attach`) until the workers are done, checking each attachment as it ends.
fn chaos(sim: &Sim, churn: &Churn, mut rng: TestRng, threads: u64) {
    let mut next = FIRST_CHURN_VOLUME + 1;
    while !churn.done.load(Ordering::Acquire) {
        let mounted = churn.volumes.lock().unwrap().len();
        match rng.random_range(0..4u32) {
            0 if mounted < MAX_CHURN_VOLUMES => {
                let fs = KINDS[rng.random_range(0..KINDS.len())];
                let cv = mount(sim, next, fs, threads);
                next += 1;
                churn.volumes.lock().unwrap().push(Arc::new(cv));
                churn.mounts.fetch_add(1, Ordering::Relaxed);
            }
            0 | 1 => {
                let mut list = churn.volumes.lock().unwrap();
                if list.len() > 1 {
                    let i = rng.random_range(0..list.len());
                    let cv = list.swap_remove(i);
                    drop(list);
                    let mut epoch = cv.epoch.write().unwrap();
                    check_attachment(sim, churn, &cv, &epoch);
                    sim.remove_volume(cv.volume);
                    epoch.mounted = false;
                    epoch.attached = false;
                    churn.dismounts.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                if let Some(cv) = churn.pick(&mut rng) {
                    let mut epoch = cv.epoch.write().unwrap();
                    if epoch.attached {
                        check_attachment(sim, churn, &cv, &epoch);
                        assert_eq!(sim.detach(cv.volume), 0, "detach {}", cv.device);
                        epoch.attached = false;
                        *epoch.expected.get_mut().unwrap() = Attachment::default();
                        churn.detaches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(sim.attach(cv.volume), 0, "attach {}", cv.device);
                        epoch.attached = true;
                        churn.attaches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The racing chaos thread: mounts, dismounts, detaches and re-attaches racing volumes with no
/// guard, while workers do I/O on them, until the workers are done.
fn racing_chaos(sim: &Sim, churn: &Churn, mut rng: TestRng) {
    let mut next = FIRST_RACING_VOLUME;
    while !churn.done.load(Ordering::Acquire) {
        let mounted = churn.racing.lock().unwrap().len();
        match rng.random_range(0..4u32) {
            0 if mounted < MAX_RACING_VOLUMES => {
                let fs = KINDS[rng.random_range(0..KINDS.len())];
                let volume = sim.add_volume(VolumeSpec::new(&device(next), fs));
                next += 1;
                churn.racing.lock().unwrap().push(volume);
                churn.racing_mounts.fetch_add(1, Ordering::Relaxed);
            }
            0 | 1 => {
                let mut list = churn.racing.lock().unwrap();
                if list.len() > 1 {
                    let i = rng.random_range(0..list.len());
                    let volume = list.swap_remove(i);
                    drop(list);
                    sim.remove_volume(volume);
                    churn.racing_dismounts.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                if let Some(volume) = pick(&churn.racing, &mut rng) {
                    if sim.detach(volume) == 0 {
                        churn.racing_detaches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(sim.attach(volume), 0, "attach a racing volume");
                        churn.racing_attaches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A port client: connects (the port refuses while another client is connected), lists the
/// instances, sometimes dumps the first stable volume, and disconnects by dropping the client.
fn client(sim: &Sim, churn: &Churn, mut rng: TestRng) {
    let first = device(2);
    while !churn.done.load(Ordering::Acquire) {
        if churn.port_wanted.load(Ordering::Acquire) {
            std::thread::yield_now();
            continue;
        }
        let Ok(port) = SimPort::connect(sim, Caller::Administrator, &[]) else {
            continue;
        };
        churn.sessions.fetch_add(1, Ordering::Relaxed);
        let mut client = Client::new(port);
        client.instances().expect("instances");
        if rng.random_range(0..2u32) == 0 {
            client.dump(&first, 0).expect("dump");
        }
        drop(client);
    }
}

/// Unloads the driver while workers keep going on the stable volumes; returns how many operations
/// they made.
fn unload_racing_io(sim: &Sim, stable: &[Volume], config: Config) -> u64 {
    let Config { seed, ops, threads } = config;
    let in_flight = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for w in 0..threads {
            let in_flight = &in_flight;
            scope.spawn(move || {
                let mut rng = rng(seed, 3000 + w);
                for _ in 0..ops / 4 {
                    let v = stable[rng.random_range(0..stable.len())];
                    let name = format!(r"\w{w}-{}", rng.random_range(0..FILES_PER_WORKER));
                    open_transfer_close(sim, v, &name, &mut rng);
                    in_flight.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert_eq!(sim.unload(false), 0, "unload fails");
    });
    in_flight.into_inner()
}

/// Prints what a run did and checked.
fn print(config: Config, stable: u64, figures: &Figures) {
    let Config { seed, ops, threads } = config;
    eprintln!(
        "stress: seed {seed:#x}, {threads} workers x {ops} ops = {}; {} volumes ({} stable, {} \
         churn: {} mounts, {} dismounts, {} detaches, {} attaches); churn: {} opens ({} checked \
         exactly), {} transfers on handles kept across operations ({} more refused after a \
         dismount); {} churn attachments checked exactly ({} untracked transfers among them); \
         racing volumes: {} mounts, {} dismounts, {} detaches, {} attaches under {} ops; {} client \
         sessions; {} ops racing the unload",
        figures.operations,
        stable + figures.mounts,
        stable,
        figures.mounts,
        figures.mounts,
        figures.dismounts,
        figures.detaches,
        figures.attaches,
        figures.churn_operations,
        figures.churn_opens_checked,
        figures.held_transfers,
        figures.dismounted_reads,
        figures.churn_checks,
        figures.churn_untracked_checked,
        figures.racing_mounts,
        figures.racing_dismounts,
        figures.racing_detaches,
        figures.racing_attaches,
        figures.racing_operations,
        figures.sessions,
        figures.racing_unload,
    );
}

/// Runs the stress on `sim`, where the driver is loaded and started, and unloads it at the end with
/// I/O in flight; panics unless every check passes and the verifier report is empty.
pub fn run(sim: &Sim, config: Config) -> Figures {
    let Config { seed, ops, threads } = config;
    let stable: Vec<Volume> = KINDS
        .iter()
        .zip(2u64..)
        .map(|(fs, n)| sim.add_volume(VolumeSpec::new(&device(n), *fs)))
        .collect();
    for &v in &stable {
        for w in 0..threads {
            for k in 0..FILES_PER_WORKER {
                sim.create_file(v, &format!(r"\w{w}-{k}"), FILE_SIZE);
            }
        }
    }
    let churn = Churn::default();
    churn.volumes.lock().unwrap().push(Arc::new(mount(
        sim,
        FIRST_CHURN_VOLUME,
        FileSystem::Ntfs,
        threads,
    )));
    let results: Vec<_> = std::thread::scope(|scope| {
        let (stable, churn) = (&stable, &churn);
        let workers: Vec<_> = (0..threads)
            .map(|w| scope.spawn(move || worker(sim, stable, churn, rng(seed, w), w, ops)))
            .collect();
        scope.spawn(move || chaos(sim, churn, rng(seed, 1000), threads));
        scope.spawn(move || racing_chaos(sim, churn, rng(seed, 1001)));
        for c in 0..CLIENTS {
            scope.spawn(move || client(sim, churn, rng(seed, 2000 + c)));
        }
        // Joined before `done` is set, so that a failing worker cannot leave the others spinning.
        let results = workers
            .into_iter()
            .map(std::thread::ScopedJoinHandle::join)
            .collect();
        churn.done.store(true, Ordering::Release);
        results
    });
    let mut expected = vec![Expected::new(); stable.len()];
    for result in results {
        let done = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for (into, from) in expected.iter_mut().zip(done) {
            for (name, counts) in from {
                add(into.entry(name).or_default(), counts);
            }
        }
    }

    // The stable volumes, and the churn volumes' last attachments.
    let mut client = connect_for_check(sim, &churn);
    for (vi, files) in expected.into_iter().enumerate() {
        let want = Attachment {
            files,
            untracked: (0, 0, 0, 0),
        };
        check(&mut client, &device(2 + vi as u64), &want, "stable volume");
    }
    drop(client);
    churn.port_wanted.store(false, Ordering::Release);
    for cv in churn.volumes.lock().unwrap().iter() {
        check_attachment(sim, &churn, cv, &cv.epoch.read().unwrap());
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut figures = Figures {
        operations: threads * ops,
        churn_operations: load(&churn.operations),
        mounts: load(&churn.mounts) + 1,
        dismounts: load(&churn.dismounts),
        detaches: load(&churn.detaches),
        attaches: load(&churn.attaches),
        churn_checks: load(&churn.checks),
        churn_opens_checked: load(&churn.opens_checked),
        churn_untracked_checked: load(&churn.untracked_checked),
        held_transfers: load(&churn.held_transfers),
        dismounted_reads: load(&churn.dismounted_reads),
        sessions: load(&churn.sessions),
        racing_mounts: load(&churn.racing_mounts),
        racing_dismounts: load(&churn.racing_dismounts),
        racing_detaches: load(&churn.racing_detaches),
        racing_attaches: load(&churn.racing_attaches),
        racing_operations: load(&churn.racing_operations),
        racing_unload: 0,
    };
    assert_eq!(
        figures.churn_checks,
        figures.mounts + figures.attaches,
        "every attachment of a churn volume is checked once"
    );

    figures.racing_unload = unload_racing_io(sim, &stable, config);
    sim.verifier_report().assert_clean();
    print(config, stable.len() as u64, &figures);
    figures
}
