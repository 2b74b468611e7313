//! A million files: the tally table at the scale of a busy file server, in paged pool from fltsim.
//!
//! Release builds only (`cargo test --release --test scale`, as CI runs it): a debug build takes
//! minutes to fill a million entries.

use fltsim::pool;
use iotally::pool::{PagedAllocator, Tag, tags};
use iotally::stats::Stat;
use iotally::table::{CAPACITY, FileKey, Io, OpenOutcome, Table};

const MILLION: usize = 1_000_000;
/// New files opened into the full table.
const NEW: usize = 20_000;

/// NTFS-like file references: a sequence number in the high bits, record numbers in the low.
fn key(i: usize) -> FileKey {
    FileKey((3 << 48) | (i as u128 * 5 + 0x24))
}

fn name(i: usize) -> Vec<u16> {
    format!(
        r"\Device\HarddiskVolume2\share\d{:03}\f{i:07}.dat",
        i / 1000
    )
    .encode_utf16()
    .collect()
}

/// Outstanding `(paged, nonpaged)` bytes of `tag`.
fn bytes(tag: Tag) -> (usize, usize) {
    pool::outstanding_by_pool()
        .iter()
        .filter(|usage| usage.tag == tag.raw())
        .fold((0, 0), |(paged, nonpaged), usage| {
            if usage.paged {
                (paged + usage.bytes, nonpaged)
            } else {
                (paged, nonpaged + usage.bytes)
            }
        })
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release builds only: cargo test --release --test scale"
)]
fn a_million_files_are_tallied_found_evicted_and_freed_within_the_budgets() {
    let _sim = fltsim::Sim::new();
    let mut table = Table::new_with_names_in(
        MILLION,
        PagedAllocator::new(tags::TABLE),
        PagedAllocator::new(tags::FILE_NAME),
    );
    for i in 0..MILLION {
        let outcome = table.record_open(key(i), &name(i), i64::try_from(i).unwrap());
        assert_eq!(outcome, OpenOutcome::Inserted, "file {i}");
    }
    assert_eq!(table.len(), MILLION);

    // Memory: at most 96 paged bytes per entry besides its name, nothing nonpaged, no large block.
    let (paged, nonpaged) = bytes(tags::TABLE);
    assert!(paged <= 96 * MILLION, "{paged} bytes for {MILLION} entries");
    assert_eq!(nonpaged + bytes(tags::FILE_NAME).1, 0, "nothing nonpaged");
    let largest = pool::largest_allocations()
        .iter()
        .filter(|usage| usage.tag == tags::TABLE.raw())
        .map(|usage| usage.bytes)
        .max()
        .unwrap();
    assert!(largest <= 10_240, "largest table block {largest} bytes");

    // Every file is found, through its slot and by key, and counts its I/O.
    for i in (0..MILLION).step_by(7) {
        let slot = table.slot(key(i)).unwrap();
        assert!(table.record_io_at(slot, key(i), Io::Read, 512, i64::MAX - 1));
        assert!(table.record_io(key(i), Io::Write, 8, i64::MAX - 1));
        let tally = table.get(key(i)).unwrap();
        assert_eq!(tally.name(), name(i).as_slice());
        let counts = tally.counts();
        assert_eq!(
            (counts.reads, counts.bytes_read, counts.writes),
            (1, 512, 1)
        );
    }
    assert_eq!(table.iter().count(), MILLION);

    // New files into the full table: each evicts one entry, none of the recently read ones (their
    // last_seen is newer than every other), and the bound holds.
    for i in MILLION..MILLION + NEW {
        let outcome = table.record_open(key(i), &name(i), i64::MAX);
        assert_eq!(outcome, OpenOutcome::InsertedAfterEviction, "file {i}");
    }
    assert_eq!(table.len(), MILLION);
    assert_eq!(table.stats().get(Stat::Evictions), NEW as u64);
    assert!((MILLION..MILLION + NEW).all(|i| table.get(key(i)).is_some()));
    let read_and_evicted = (0..MILLION)
        .step_by(7)
        .filter(|&i| table.get(key(i)).is_none())
        .count();
    // Each eviction takes a recently read entry only if all 16 draws are recent (1/7 of the table
    // or the new files): (1/7 + 2%)^16, about 3 in 10^13.
    assert_eq!(read_and_evicted, 0);
    assert!(
        bytes(tags::TABLE).0 <= 96 * MILLION,
        "eviction reuses slots"
    );

    drop(table);
    assert!(pool::outstanding().is_empty(), "{:?}", pool::outstanding());
}

#[test]
fn the_capacity_is_the_drivers_limit() {
    // `MaxEntriesPerInstance` is clamped to 1,048,576 (README, "Settings"): the table holds that many.
    assert_eq!(CAPACITY, 1 << 20);
    let table: Table<PagedAllocator> = Table::new_in(usize::MAX, PagedAllocator::new(tags::TABLE));
    assert_eq!(table.max_entries(), CAPACITY);
}
