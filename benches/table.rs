//! The driver's per-operation table work, measured in one run against a std baseline:
//!
//! - **read/write path** (what pre-read and pre-write do): shared lock + lookup + counter updates,
//!   `PushLock<Table<PagedAllocator>>` vs `std::sync::RwLock<std HashMap>` doing the same updates;
//! - the same **without the lock**, to separate the table's cost from the lock's;
//! - **reopen** (post-create on a tallied file): exclusive lock + lookup + updates, same baseline;
//! - **open of a new file on a full table**: the O(n) least-recently-seen scan plus insert, at the
//!   default bound of 4096 entries, vs inserting into a table with room.
//!
//! The locks and pool are fltsim's in host builds (with bookkeeping Windows does not do), so the
//! ratios, not the absolute times, are the figures. Run: `cargo bench --bench table`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fltsim as _;
use iotally::pool::{PagedAllocator, tags};
use iotally::sync::PushLock;
use iotally::table::{DEFAULT_MAX_ENTRIES, FileKey, Io, Table};

const FILES: u128 = 1024;
const NAME: &[u16] = &[b'\\' as u16, b'f' as u16, b'.' as u16, b't' as u16];

/// The baseline's entry: the same counters as a tally.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    opens: AtomicU64,
    last_seen: AtomicU64,
}

fn filled_table(max: usize, files: u128) -> Table<PagedAllocator> {
    let mut table = Table::new_in(max, PagedAllocator::new(tags::TABLE));
    for id in 0..files {
        table.record_open(FileKey(id), NAME, 1);
    }
    table
}

fn bench_table(c: &mut Criterion) {
    let _sim = fltsim::Sim::new();
    let lock = PushLock::try_pin_in(
        filled_table(DEFAULT_MAX_ENTRIES, FILES),
        PagedAllocator::new(tags::PUSH_LOCK),
    )
    .expect("pool");
    let baseline: RwLock<HashMap<u128, Counters>> =
        RwLock::new((0..FILES).map(|id| (id, Counters::default())).collect());
    let mut next = 0_u128;

    let mut io = c.benchmark_group("read path: shared lock + lookup + counters");
    io.bench_function("iotally PushLock<Table>", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            lock.read()
                .record_io(FileKey(black_box(next)), Io::Read, 4096, 2)
        });
    });
    io.bench_function("baseline std RwLock<HashMap>", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            let map = baseline.read().expect("not poisoned");
            let counters = &map[&black_box(next)];
            counters.reads.fetch_add(1, Ordering::Relaxed);
            counters.bytes_read.fetch_add(4096, Ordering::Relaxed);
            counters.last_seen.fetch_max(2, Ordering::Relaxed);
        });
    });
    io.finish();

    let mut bare = c.benchmark_group("read path without the lock: lookup + counters");
    let table = filled_table(DEFAULT_MAX_ENTRIES, FILES);
    let map: HashMap<u128, Counters> = (0..FILES).map(|id| (id, Counters::default())).collect();
    bare.bench_function("iotally Table::record_io", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            table.record_io(FileKey(black_box(next)), Io::Read, 4096, 2)
        });
    });
    bare.bench_function("baseline std HashMap", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            let counters = &map[&black_box(next)];
            counters.reads.fetch_add(1, Ordering::Relaxed);
            counters.bytes_read.fetch_add(4096, Ordering::Relaxed);
            counters.last_seen.fetch_max(2, Ordering::Relaxed);
        });
    });
    bare.finish();
    drop(table);

    let mut reopen = c.benchmark_group("reopen: exclusive lock + lookup + counters");
    reopen.bench_function("iotally PushLock<Table>", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            lock.write().record_open(FileKey(black_box(next)), NAME, 3)
        });
    });
    reopen.bench_function("baseline std RwLock<HashMap>", |b| {
        b.iter(|| {
            next = (next + 7) % FILES;
            let map = baseline.write().expect("not poisoned");
            let counters = &map[&black_box(next)];
            counters.opens.fetch_add(1, Ordering::Relaxed);
            counters.last_seen.fetch_max(3, Ordering::Relaxed);
        });
    });
    reopen.finish();

    let mut insert = c.benchmark_group("open of a new file");
    let max = DEFAULT_MAX_ENTRIES;
    let full = u128::try_from(max).expect("small");
    insert.bench_function("table with room", |b| {
        b.iter_batched_ref(
            || filled_table(2 * max, full),
            |table| table.record_open(FileKey(black_box(full + 1)), NAME, 4),
            BatchSize::LargeInput,
        );
    });
    insert.bench_function("full table: evict least recently seen", |b| {
        b.iter_batched_ref(
            || filled_table(max, full),
            |table| table.record_open(FileKey(black_box(full + 1)), NAME, 4),
            BatchSize::LargeInput,
        );
    });
    insert.finish();
}

criterion_group!(benches, bench_table);
criterion_main!(benches);
