//! A seeded random workload for transparency tests, the core of the HLK's file-system filter tests
//! (`IFSTest`, "File IO 2"): a filter must leave every operation's status, `IoStatus.Information` and
//! data, and the volume's final contents, exactly as they are without it.
//!
//! [`Workload::run`] issues the same operations for the same seed on any volume: creates of every
//! disposition (files, named streams, directories), reads and writes of every kind (cached,
//! non-cached aligned or not, paging, fast I/O, MDL), overwrites, renames and moves, hard links,
//! deletes, byte-range locks, with several handles open at once and the file system refusing some
//! fast I/O (seeded). It returns a [`Trace`]: what every operation returned, the bytes every read
//! returned, and a [`Snapshot`] of the volume at the end. Run it once on a volume with no filter
//! and once with the filter loaded, and compare ([`Trace::difference`]).
//!
//! Whether a fast I/O request was served fast or reissued as an IRP ([`IoResult::reissued`]) is
//! part of the trace: a filter that disallows fast I/O changes no status, but it changes how the
//! I/O manager served the request, which the HLK's monitoring-filter guidance forbids.

use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_OPEN, FILE_OPEN_IF, FILE_OVERWRITE, FILE_OVERWRITE_IF, FILE_SUPERSEDE,
};
use windows_sys::Win32::Foundation::NTSTATUS;

use crate::Sim;
use crate::file::{FileHandle, IoResult, OpenOptions};
use crate::snapshot::Snapshot;
use crate::transfer::Transfer;
use crate::volume::{FastIo, Volume};

/// Handles the workload keeps open at most.
const MAX_HANDLES: usize = 6;
/// Offsets stay below this, so files stay small.
const SPAN: u64 = 12 * 1024;

/// The names the workload works on: files in two directories, long names (FAT long-name entries),
/// and named streams of some of them.
const FILES: [&str; 10] = [
    r"\w\f0",
    r"\w\f1",
    r"\w\f2.txt",
    r"\w\A Long File Name.dat",
    r"\w\sub\g0",
    r"\w\sub\g1.bin",
    r"\w\sub\MixedCase.Txt",
    r"\w\f0:s1",
    r"\w\f1:s2",
    r"\w\sub\g0:meta",
];

/// Names renames and links go to: some of the files', and new ones.
const TARGETS: [&str; 8] = [
    r"\w1",
    r"\w2.txt",
    r"\w\sub\g1.bin",
    r"\w
0",
    r"\w\Renamed File.txt",
    r"\w\sub
1",
    r"\w\sub\MixedCase.Txt",
    r"\w\d0\moved",
];

/// Directories the workload creates or opens besides its two fixed ones.
const DIRECTORIES: [&str; 2] = [r"\w\d0", r"\w\sub\d1"];

/// Create dispositions, all of them.
const DISPOSITIONS: [u32; 6] = [
    FILE_SUPERSEDE,
    FILE_OPEN,
    FILE_CREATE,
    FILE_OPEN_IF,
    FILE_OVERWRITE,
    FILE_OVERWRITE_IF,
];

/// Read and write paths, all of them.
const TRANSFERS: [Transfer; 5] = [
    Transfer::Cached,
    Transfer::NonCached,
    Transfer::Paging,
    Transfer::Fast,
    Transfer::Mdl,
];

/// A seeded random workload ([`Workload::run`]).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    seed: u64,
    operations: usize,
}

/// What one operation of a workload returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The operation, described.
    pub operation: String,
    /// Its final status.
    pub status: NTSTATUS,
    /// Its `IoStatus.Information`.
    pub information: usize,
    /// A fast I/O request reissued as an IRP.
    pub reissued: bool,
    /// For reads: the bytes returned (the first `information` of the buffer).
    pub data: Vec<u8>,
}

/// What a workload saw: every operation's result, and the volume at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The operations' results, in order.
    pub steps: Vec<Step>,
    /// The volume after the last handle closed.
    pub snapshot: Snapshot,
}

impl Trace {
    /// A description of the first difference from `other` (the first operation whose result
    /// differs, or the final contents of the volume), or `None` if the traces are equal.
    #[must_use]
    pub fn difference(&self, other: &Self) -> Option<String> {
        for (index, (mine, theirs)) in self.steps.iter().zip(&other.steps).enumerate() {
            if mine != theirs {
                return Some(format!(
                    "operation {index} ({}) differs:\n  {mine:?}\nagainst\n  {theirs:?}",
                    mine.operation
                ));
            }
        }
        if self.steps.len() != other.steps.len() {
            return Some(format!(
                "{} operations against {}",
                self.steps.len(),
                other.steps.len()
            ));
        }
        self.snapshot
            .difference(&other.snapshot)
            .map(|d| format!("the volumes differ at the end: {d}"))
    }
}

/// `SplitMix64`: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

impl Workload {
    /// A workload of `operations` operations chosen by `seed`.
    #[must_use]
    pub fn new(seed: u64, operations: usize) -> Self {
        Self { seed, operations }
    }

    /// Runs the workload on `volume`, which must be freshly mounted and empty: sets up its
    /// directories and a few files, makes the file system refuse one fast I/O in five (seeded),
    /// issues the operations, closes every handle, and returns what it saw.
    ///
    /// # Panics
    /// If the volume is not empty (the setup's files exist).
    #[must_use]
    pub fn run(&self, sim: &Sim, volume: Volume) -> Trace {
        let mut rng = Rng(self.seed);
        sim.set_fast_io(
            volume,
            FastIo::Seeded {
                seed: self.seed | 1,
                one_in: 5,
            },
        );
        sim.create_directory(volume, r"\w");
        sim.create_directory(volume, r"\w\sub");
        sim.create_file(volume, r"\w\f0", 5000);
        sim.create_file(volume, r"\w\sub\g0", 9000);
        let mut run = Run {
            sim,
            volume,
            handles: Vec::new(),
            steps: Vec::new(),
        };
        for _ in 0..self.operations {
            run.step(&mut rng);
        }
        run.handles.clear();
        Trace {
            steps: run.steps,
            snapshot: sim.snapshot(volume),
        }
    }
}

/// A workload in progress.
struct Run<'sim> {
    sim: &'sim Sim,
    volume: Volume,
    /// Open handles, with the path each was opened by.
    handles: Vec<(String, FileHandle<'sim>)>,
    steps: Vec<Step>,
}

impl Run<'_> {
    fn record(&mut self, operation: String, result: IoResult, data: Vec<u8>) {
        self.steps.push(Step {
            operation,
            status: result.status,
            information: result.information,
            reissued: result.reissued,
            data,
        });
    }

    fn step(&mut self, rng: &mut Rng) {
        let choice = rng.below(100);
        if self.handles.is_empty() || choice < 22 {
            self.open(rng);
        } else if choice < 30 {
            let index = rng.below(self.handles.len());
            let (path, handle) = self.handles.swap_remove(index);
            let status = handle.close();
            self.record(
                format!("close {path}"),
                IoResult {
                    status,
                    information: 0,
                    reissued: false,
                },
                Vec::new(),
            );
        } else if choice < 56 {
            self.read(rng);
        } else if choice < 80 {
            self.write(rng);
        } else if choice < 90 {
            self.rename_or_link(rng);
        } else if choice < 94 {
            let index = rng.below(self.handles.len());
            let (path, handle) = &mut self.handles[index];
            let operation = format!("delete {path}");
            let result = handle.delete();
            self.record(operation, result, Vec::new());
        } else {
            self.lock(rng);
        }
    }

    fn open(&mut self, rng: &mut Rng) {
        if self.handles.len() >= MAX_HANDLES {
            let index = rng.below(self.handles.len());
            drop(self.handles.swap_remove(index));
        }
        let (path, options) = if rng.chance(12) {
            let path = *rng.pick(&DIRECTORIES);
            let options = if rng.chance(50) {
                OpenOptions::directory()
            } else {
                OpenOptions::open()
            };
            (path, options)
        } else {
            let disposition = *rng.pick(&DISPOSITIONS);
            (*rng.pick(&FILES), OpenOptions::disposition(disposition))
        };
        let operation = format!("open {path} {options:?}");
        match self.sim.open(self.volume, path, options) {
            Ok(handle) => {
                let result = IoResult {
                    status: 0,
                    information: handle.create_information(),
                    reissued: false,
                };
                self.record(operation, result, Vec::new());
                self.handles.push((path.to_owned(), handle));
            }
            Err(status) => self.record(
                operation,
                IoResult {
                    status,
                    information: 0,
                    reissued: false,
                },
                Vec::new(),
            ),
        }
    }

    /// An offset and length for a transfer of kind `how`: sector-aligned, or not, for non-cached.
    fn extent(rng: &mut Rng, how: Transfer) -> (u64, usize) {
        let offset = rng.next() % SPAN;
        let length = 1 + rng.below(6 * 1024);
        if how == Transfer::NonCached && rng.chance(75) {
            (offset / 512 * 512, (length / 512 + 1) * 512)
        } else {
            (offset, length)
        }
    }

    fn read(&mut self, rng: &mut Rng) {
        let how = *rng.pick(&TRANSFERS);
        let (offset, length) = Self::extent(rng, how);
        let index = rng.below(self.handles.len());
        let (path, handle) = &mut self.handles[index];
        let operation = format!("read {path} {how:?} {length} at {offset}");
        let mut buffer = vec![0xEE; length];
        let result = handle.read_into(how, offset, &mut buffer);
        buffer.truncate(result.information.min(length));
        self.record(operation, result, buffer);
    }

    fn write(&mut self, rng: &mut Rng) {
        let how = *rng.pick(&TRANSFERS);
        let (offset, length) = Self::extent(rng, how);
        let byte = u8::try_from(rng.below(256)).unwrap_or(0);
        let data: Vec<u8> = (0..length)
            .map(|i| byte.wrapping_add(u8::try_from(i % 251).unwrap_or(0)))
            .collect();
        let index = rng.below(self.handles.len());
        let (path, handle) = &mut self.handles[index];
        let operation = format!("write {path} {how:?} {length} at {offset}");
        let result = handle.write_from(how, offset, &data);
        self.record(operation, result, Vec::new());
    }

    fn rename_or_link(&mut self, rng: &mut Rng) {
        let link = rng.chance(35);
        let replace = rng.chance(40);
        let target = rng.pick(&TARGETS);
        // Half the renames are bare names (same directory, no target open).
        let new_name = if !link && rng.chance(30) {
            target.rsplit('\\').next().unwrap_or(target).to_owned()
        } else {
            (*target).to_owned()
        };
        let index = rng.below(self.handles.len());
        let (path, handle) = &mut self.handles[index];
        let (verb, result) = if link {
            ("link", handle.link(&new_name, replace))
        } else {
            ("rename", handle.rename(&new_name, replace))
        };
        let operation = format!("{verb} {path} to {new_name} replace {replace}");
        self.record(operation, result, Vec::new());
    }

    fn lock(&mut self, rng: &mut Rng) {
        let index = rng.below(self.handles.len());
        let offset = rng.next() % SPAN;
        let length = 1 + rng.next() % 4096;
        let exclusive = rng.chance(50);
        let unlock = rng.chance(40);
        let (path, handle) = &mut self.handles[index];
        let (operation, result) = if unlock {
            (
                format!("unlock {path} {length} at {offset}"),
                handle.unlock(offset, length),
            )
        } else {
            (
                format!("lock {path} {length} at {offset} exclusive {exclusive}"),
                handle.lock(offset, length, exclusive),
            )
        };
        self.record(operation, result, Vec::new());
    }
}
