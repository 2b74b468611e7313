//! The table's costs in wall time, each against a baseline measured in the same run (criterion). The
//! figures are the ratios: host times of fltsim's lock and pool say little about Windows. The
//! instruction and byte budgets are `cargo xtask budget`'s (`benches/workload.rs`).
//!
//! - **hot path**: the read path's table work (`record_io_at`, the slot from the stream context)
//!   under the driver's `PushLock` (fltsim's, with its registry bookkeeping) and without any lock,
//!   against the same lookup without lock or contexts and against a `std` `HashMap` doing the same
//!   updates;
//! - **insert**: opens of new files into a table with room, against `std` `HashMap` inserts;
//! - **eviction**: opens of new files into a full table of 1,000, 100,000 and 1,000,000 entries
//!   (the ratios to 1,000 are the scaling);
//! - **readers on every core**: 1, 2 and 4 threads reading while a writer inserts 10,000 new files
//!   a second, with the table behind the push-lock word algorithm fltsim simulates (one
//!   compare-and-swap per acquire and release, no bookkeeping: a model of Windows' lock word),
//!   against the table alone (no lock, no writer: what the table itself allows) and a `std`
//!   `RwLock<HashMap>`; throughput per thread count.
//!
//! Run: `cargo bench --bench table`.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fltsim::pushlock::parker::AddressParker;
use fltsim::pushlock::word;
use iotally::pool::{PagedAllocator, tags};
use iotally::sync::PushLock;
use iotally::table::{CAPACITY, FileKey, Io, Slot, Table};

const NAME: &[u16] = &[b'\\' as u16, b'f' as u16, b'.' as u16, b't' as u16];

/// The baseline's entry: the counters a read updates.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    last_seen: AtomicU64,
}

impl Counters {
    fn record_read(&self, bytes: u64, now: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.last_seen.store(now, Ordering::Relaxed);
    }
}

/// NTFS-like file references: a sequence number in the high bits, record numbers in the low.
fn key(i: usize) -> FileKey {
    FileKey((1 << 48) | (i as u128 * 7 + 0x1000))
}

fn table(max: usize, files: usize) -> Table<PagedAllocator> {
    let mut table = Table::new_with_names_in(
        max,
        PagedAllocator::new(tags::TABLE),
        PagedAllocator::new(tags::FILE_NAME),
    );
    for i in 0..files {
        table.record_open(key(i), NAME, i64::try_from(i).unwrap_or(0));
    }
    table
}

/// `(key, slot)` of every file of `table`, as stream contexts would hold them.
fn streams(table: &Table<PagedAllocator>, files: usize) -> Vec<(FileKey, Slot)> {
    (0..files)
        .map(|i| (key(i), table.slot(key(i)).expect("tallied")))
        .collect()
}

/// A small deterministic generator for the access pattern.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap_or(0)
    }
}

fn hot_path(c: &mut Criterion) {
    const FILES: usize = 4096;
    let lock = PushLock::try_pin_in(table(FILES, FILES), PagedAllocator::new(tags::PUSH_LOCK))
        .expect("pool");
    let bare = table(FILES, FILES);
    let open = streams(&bare, FILES);
    let map: HashMap<u128, Counters> = (0..FILES)
        .map(|i| (key(i).0, Counters::default()))
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut group = c.benchmark_group("hot path (tracked read, 4096 files)");
    group.bench_function("PushLock<Table>::read + record_io_at", |b| {
        b.iter(|| {
            let (key, slot) = open[rng.below(FILES)];
            lock.read()
                .record_io_at(slot, black_box(key), Io::Read, 4096, 2)
        });
    });
    group.bench_function("baseline: Table::record_io_at, no lock", |b| {
        b.iter(|| {
            let (key, slot) = open[rng.below(FILES)];
            bare.record_io_at(slot, black_box(key), Io::Read, 4096, 2)
        });
    });
    group.bench_function("Table::record_io (lookup by key), no lock", |b| {
        b.iter(|| {
            let (key, _) = open[rng.below(FILES)];
            bare.record_io(black_box(key), Io::Read, 4096, 2)
        });
    });
    group.bench_function("baseline: std HashMap lookup + counters", |b| {
        b.iter(|| {
            let (key, _) = open[rng.below(FILES)];
            map[&black_box(key.0)].record_read(4096, 2);
        });
    });
    group.finish();
}

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert (new file, table with room)");
    group.bench_function("Table::record_open", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
            while left > 0 {
                let n = left.min(CAPACITY);
                let mut table = table(CAPACITY, 0);
                let start = Instant::now();
                for i in 0..n {
                    black_box(table.record_open(key(i), NAME, 1));
                }
                elapsed += start.elapsed();
                left -= n;
            }
            elapsed
        });
    });
    group.bench_function("baseline: std HashMap insert", |b| {
        b.iter_custom(|iters| {
            let mut map: HashMap<u128, Counters> = HashMap::new();
            let start = Instant::now();
            for i in 0..usize::try_from(iters).unwrap_or(usize::MAX) {
                map.insert(black_box(key(i).0), Counters::default());
            }
            start.elapsed()
        });
    });
    group.finish();
}

fn eviction(c: &mut Criterion) {
    let mut group = c.benchmark_group("eviction (new file, full table)");
    for size in [1_000, 100_000, 1_000_000] {
        let mut full = table(size, size);
        let mut next = size;
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                next += 1;
                full.record_open(key(next), NAME, i64::MAX)
            });
        });
    }
    group.finish();
}

/// A lock with Windows' push-lock word and nothing else: fltsim's word algorithm, without the
/// simulator's registry (which takes a global mutex on every acquire and release).
struct WordLock<T> {
    word: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: `read` hands out `&T` only while the word is held shared, `write` `&mut T` only while it is
// held exclusive (fltsim's word algorithm, model-checked by loom): as a `RwLock<T>`.
unsafe impl<T: Send + Sync> Sync for WordLock<T> {}

impl<T> WordLock<T> {
    fn new(value: T) -> Self {
        Self {
            word: AtomicUsize::new(0),
            data: UnsafeCell::new(value),
        }
    }

    fn parker(&self) -> AddressParker {
        AddressParker::new(self.word.as_ptr().addr())
    }

    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        word::acquire_shared(&self.word, &self.parker(), false).expect("not held by this thread");
        // SAFETY: held shared until the release below: no `&mut T` exists.
        let result = f(unsafe { &*self.data.get() });
        word::release(&self.word, &self.parker());
        result
    }

    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        word::acquire_exclusive(&self.word, &self.parker());
        // SAFETY: held exclusive until the release below: no other reference exists.
        let result = f(unsafe { &mut *self.data.get() });
        word::release(&self.word, &self.parker());
        result
    }
}

/// Runs `readers` threads doing `iters` reads each while a writer inserts one new file every
/// 100 µs; returns the wall time of the reads.
fn contended(
    readers: usize,
    iters: u64,
    read: impl Fn(&mut Rng) + Sync,
    insert: impl Fn(usize) + Sync,
) -> Duration {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut next = Instant::now();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                next += Duration::from_micros(100);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                insert(i);
                i += 1;
            }
        });
        let start = Instant::now();
        std::thread::scope(|readers_scope| {
            for thread in 0..readers {
                let read = &read;
                readers_scope.spawn(move || {
                    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (thread as u64 + 1));
                    for _ in 0..iters {
                        read(&mut rng);
                    }
                });
            }
        });
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        elapsed
    })
}

fn readers_on_every_core(c: &mut Criterion) {
    const FILES: usize = 4096;
    let table = WordLock::new(table(FILES, FILES));
    let open = table.read(|t| streams(t, FILES));
    let map: RwLock<HashMap<u128, Counters>> = RwLock::new(
        (0..FILES)
            .map(|i| (key(i).0, Counters::default()))
            .collect(),
    );
    let mut group = c.benchmark_group("readers + a writer inserting 10,000 files/s");
    for readers in [1, 2, 4] {
        group.throughput(Throughput::Elements(readers as u64));
        group.bench_function(BenchmarkId::new("push-lock word + Table", readers), |b| {
            b.iter_custom(|iters| {
                contended(
                    readers,
                    iters,
                    |rng| {
                        let (key, slot) = open[rng.below(FILES)];
                        table.read(|t| t.record_io_at(slot, key, Io::Read, 4096, 2));
                    },
                    |i| {
                        table.write(|t| t.record_open(key(FILES + i), NAME, i64::MAX));
                    },
                )
            });
        });
        group.bench_function(
            BenchmarkId::new("Table alone, no lock, no writer", readers),
            |b| {
                b.iter_custom(|iters| {
                    table.read(|t| {
                        contended(
                            readers,
                            iters,
                            |rng| {
                                let (key, slot) = open[rng.below(FILES)];
                                t.record_io_at(slot, key, Io::Read, 4096, 2);
                            },
                            |_| {},
                        )
                    })
                });
            },
        );
        group.bench_function(
            BenchmarkId::new("baseline: std RwLock<HashMap>", readers),
            |b| {
                b.iter_custom(|iters| {
                    contended(
                        readers,
                        iters,
                        |rng| {
                            let (key, _) = open[rng.below(FILES)];
                            if let Some(counters) = map.read().expect("not poisoned").get(&key.0) {
                                counters.record_read(4096, 2);
                            }
                        },
                        |i| {
                            let mut map = map.write().expect("not poisoned");
                            // Keep the baseline's size bounded like the table's.
                            map.remove(&key(i).0);
                            map.insert(key(FILES + i).0, Counters::default());
                        },
                    )
                });
            },
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let _sim = fltsim::Sim::new();
    hot_path(c);
    insert(c);
    eviction(c);
    readers_on_every_core(c);
}

criterion_group!(table_benches, benches);
criterion_main!(table_benches);
