use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;
use std::vec::Vec;

use allocator_api2::alloc::{AllocError, Allocator, Global};

use super::*;

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// `Global`, counting what is live and failing on request.
#[derive(Default)]
struct Counting {
    live_bytes: Cell<usize>,
    live_blocks: Cell<usize>,
    largest: Cell<usize>,
    /// Allocations left before every further one fails (`None`: never fail).
    fail_after: Cell<Option<usize>>,
}

// SAFETY: forwards to `Global`, which upholds the contract; the counters change nothing about the
// blocks.
unsafe impl Allocator for Counting {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if let Some(left) = self.fail_after.get() {
            if left == 0 {
                return Err(AllocError);
            }
            self.fail_after.set(Some(left - 1));
        }
        let block = Global.allocate(layout)?;
        self.live_bytes.set(self.live_bytes.get() + layout.size());
        self.live_blocks.set(self.live_blocks.get() + 1);
        self.largest.set(self.largest.get().max(layout.size()));
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        self.live_bytes.set(self.live_bytes.get() - layout.size());
        self.live_blocks.set(self.live_blocks.get() - 1);
        // SAFETY: `ptr` came from `Global.allocate(layout)` in `allocate`.
        unsafe { Global.deallocate(ptr, layout) };
    }
}

#[test]
fn open_then_io_accumulates() {
    let mut table = Table::new_in(8, Global);
    assert_eq!(
        table.record_open(FileKey(1), &utf16("\\a.txt"), 10),
        OpenOutcome::Inserted
    );
    assert_eq!(
        table.record_open(FileKey(1), &utf16("\\renamed.txt"), 20),
        OpenOutcome::Hit
    );
    assert!(table.record_io(FileKey(1), Io::Read, 100, 30));
    assert!(table.record_io(FileKey(1), Io::Write, 7, 40));
    assert!(!table.record_io(FileKey(2), Io::Read, 1, 50));
    assert!(table.record_reopen(FileKey(1), 45));
    assert!(!table.record_reopen(FileKey(2), 45));
    let tally = table.get(FileKey(1)).unwrap();
    assert_eq!(tally.name(), utf16("\\a.txt").as_slice());
    assert_eq!(
        tally.counts(),
        Counts {
            opens: 3,
            reads: 1,
            writes: 1,
            bytes_read: 100,
            bytes_written: 7,
            first_seen: 10,
            last_seen: 45,
        }
    );
    let stats = table.stats();
    assert_eq!(
        Stat::ALL.map(|stat| stats.get(stat))[..4],
        [1, 1, 0, 0],
        "inserts, misses, evictions, allocation failures"
    );
}

#[test]
fn keys_differing_only_in_high_bits_stay_apart() {
    let mut table = Table::new_in(8, Global);
    let low = 0x1234_u128;
    table.record_open(FileKey(low), &utf16("a"), 1);
    table.record_open(FileKey(low | (1 << 64)), &utf16("b"), 1);
    assert_eq!(table.len(), 2);
    assert_eq!(table.get(FileKey(low)).unwrap().name(), utf16("a"));
    assert_eq!(
        table.get(FileKey(low | (1 << 64))).unwrap().name(),
        utf16("b")
    );
}

#[test]
fn every_entry_is_found_and_listed_as_the_table_grows() {
    let mut table = Table::new_in(CAPACITY, Global);
    let keys: Vec<FileKey> = (0..5000u128).map(|i| FileKey(i * 0x1_0001)).collect();
    for (i, &key) in keys.iter().enumerate() {
        let now = i64::try_from(i).unwrap();
        assert_eq!(table.record_open(key, &[], now), OpenOutcome::Inserted);
    }
    for (i, &key) in keys.iter().enumerate() {
        assert_eq!(
            table.get(key).unwrap().counts().first_seen,
            i64::try_from(i).unwrap()
        );
    }
    assert!(table.get(FileKey(1)).is_none());
    let mut listed: Vec<u128> = table.iter().map(|(key, _)| key.0).collect();
    listed.sort_unstable();
    assert_eq!(listed, keys.iter().map(|k| k.0).collect::<Vec<_>>());
    assert_eq!(table.index.buckets(), 5000, "load factor 1");
}

#[test]
fn eviction_in_a_small_table_drops_the_least_recently_seen() {
    let mut table = Table::new_in(3, Global);
    for id in 1..=3 {
        table.record_open(FileKey(id), &utf16("f"), 1);
    }
    // File 1 is read, so file 2 is now the least recently seen.
    table.record_io(FileKey(1), Io::Read, 1, 2);
    table.record_io(FileKey(3), Io::Read, 1, 2);
    assert_eq!(
        table.record_open(FileKey(4), &utf16("g"), 3),
        OpenOutcome::InsertedAfterEviction
    );
    assert_eq!(table.len(), 3);
    assert!(table.get(FileKey(2)).is_none());
    assert!(table.get(FileKey(1)).is_some());
    assert_eq!(table.get(FileKey(4)).unwrap().counts().opens, 1);
    assert_eq!(table.stats().get(Stat::Evictions), 1);
    assert_eq!(table.stats().get(Stat::Inserts), 4);
}

#[test]
fn sampled_eviction_takes_old_entries_and_keeps_the_bound() {
    const N: usize = 10_000;
    let mut table = Table::new_in(N, Global);
    // File i was last seen at time i.
    for i in 0..N {
        table.record_open(FileKey(i as u128), &[], i64::try_from(i).unwrap());
    }
    let evictions = 2000;
    for i in 0..evictions {
        let key = FileKey((N + i) as u128);
        assert_eq!(
            table.record_open(key, &[], i64::MAX),
            OpenOutcome::InsertedAfterEviction
        );
    }
    assert_eq!(table.len(), N);
    let evicted: Vec<usize> = (0..N)
        .filter(|&i| table.get(FileKey(i as u128)).is_none())
        .collect();
    assert_eq!(evicted.len(), evictions, "no new file was evicted");
    let mean = evicted.iter().sum::<usize>() / evicted.len();
    // Exact least-recently-seen would evict 0..2000 (mean 1000); uniform random choice, a mean near
    // N / 2. The oldest of 16 samples stays close to the first.
    assert!(mean < evictions, "mean age rank of the evicted {mean}");
    // An eviction takes a younger-than-median entry only when all 16 draws land among the younger
    // half or the new files: at most 0.7^16 = 0.3% of the time here.
    let young = evicted.iter().filter(|&&i| i >= N / 2).count();
    assert!(
        young <= evictions / 100,
        "{young} younger-than-median entries evicted"
    );
    assert_eq!(table.index.chain_lengths().sum::<usize>(), N);
}

#[test]
fn byte_totals_saturate_and_counts_add() {
    let mut table = Table::new_in(1, Global);
    table.record_open(FileKey(9), &utf16("big"), 0);
    table.record_io(FileKey(9), Io::Write, u64::MAX - 1, 1);
    table.record_io(FileKey(9), Io::Write, 5, 2);
    table.record_io(FileKey(9), Io::Write, 0, 3);
    let counts = table.get(FileKey(9)).unwrap().counts();
    assert_eq!((counts.bytes_written, counts.writes), (u64::MAX, 3));
}

#[test]
fn long_names_keep_their_tail_and_empty_names_take_no_block() {
    let alloc = Counting::default();
    let names = Counting::default();
    let mut table = Table::new_with_names_in(2, &alloc, &names);
    let long: Vec<u16> = (0..1000u16).collect();
    table.record_open(FileKey(1), &long, 0);
    assert_eq!(
        table.get(FileKey(1)).unwrap().name(),
        &long[1000 - MAX_NAME_UNITS..]
    );
    assert_eq!(names.live_bytes.get(), 2 * (MAX_NAME_UNITS + 1));
    table.record_open(FileKey(2), &[], 0);
    assert!(table.get(FileKey(2)).unwrap().name().is_empty());
    assert_eq!(names.live_blocks.get(), 1);
    drop(table);
    assert_eq!((names.live_blocks.get(), alloc.live_blocks.get()), (0, 0));
}

#[test]
fn failed_allocations_leave_the_table_as_it_was() {
    let alloc = Counting::default();
    let mut table = Table::new_in(600, &alloc);
    for id in 0..128 {
        table.record_open(FileKey(id), &utf16("x"), 1);
    }
    // The next insert needs a new entry leaf: fail the name, then the leaf, then each index block,
    // until enough allocations are allowed.
    let mut failures = 0;
    for allowed in 0.. {
        let before = (alloc.live_blocks.get(), table.len());
        alloc.fail_after.set(Some(allowed));
        let outcome = table.record_open(FileKey(1000), &utf16("new"), 2);
        alloc.fail_after.set(None);
        if outcome == OpenOutcome::Inserted {
            break;
        }
        assert_eq!(outcome, OpenOutcome::AllocationFailed);
        failures += 1;
        assert_eq!(table.len(), before.1);
        assert!(table.get(FileKey(1000)).is_none());
        // A block allocated before the failing one may be kept for the next try; the name is not.
        assert!(alloc.live_blocks.get() >= before.0);
    }
    assert!(failures >= 2, "name and leaf allocations both failed first");
    assert_eq!(table.stats().get(Stat::AllocationFailures), failures);
    for id in (0..128).chain([1000]) {
        assert!(table.get(FileKey(id)).is_some(), "{id}");
    }
    drop(table);
    assert_eq!((alloc.live_blocks.get(), alloc.live_bytes.get()), (0, 0));
}

#[test]
fn memory_per_entry_stays_under_96_bytes_and_no_block_is_large() {
    let alloc = Counting::default();
    let names = Counting::default();
    let mut table = Table::new_with_names_in(CAPACITY, &alloc, &names);
    let mut worst = 0.0_f64;
    for id in 0..100_000u32 {
        table.record_open(FileKey(u128::from(id) << 40), &utf16("n"), 0);
        let len = table.len();
        if len >= 4096 && len.is_multiple_of(97) {
            #[allow(clippy::cast_precision_loss)]
            let per_entry = alloc.live_bytes.get() as f64 / len as f64;
            worst = worst.max(per_entry);
        }
    }
    assert!(worst <= 96.0, "{worst} bytes per entry");
    assert!(alloc.largest.get() <= 10_240, "{}", alloc.largest.get());
    assert_eq!(
        alloc.live_bytes.get(),
        table.entries.allocated_bytes() + table.index.allocated_bytes()
    );
    let longest = table.index.chain_lengths().max().unwrap();
    assert!(longest <= 12, "longest chain {longest}");
}

#[test]
fn bounds_are_clamped() {
    assert_eq!(Table::new_in(0, Global).max_entries(), 1);
    assert_eq!(Table::new_in(usize::MAX, Global).max_entries(), CAPACITY);
    assert_eq!(CAPACITY, 1 << 20);
}

#[test]
fn below_stays_below() {
    for n in [1, 2, 3, 1000, CAPACITY] {
        assert!(below(u64::MAX, n) < n);
        assert_eq!(below(0, n), 0);
    }
}

#[test]
fn a_slot_hint_is_checked_and_a_stale_one_falls_back_to_the_lookup() {
    let mut table = Table::new_in(2, Global);
    table.record_open(FileKey(1), &[], 1);
    table.record_open(FileKey(2), &[], 2);
    let one = table.slot(FileKey(1)).unwrap();
    let two = table.slot(FileKey(2)).unwrap();
    assert_ne!(one, two);
    assert!(table.record_io_at(one, FileKey(1), Io::Read, 5, 3));
    // A wrong hint (another file's slot, or no slot at all) still finds the entry.
    assert!(table.record_io_at(two, FileKey(1), Io::Read, 5, 4));
    assert!(table.record_io_at(Slot::from_bits(u32::MAX), FileKey(1), Io::Write, 1, 5));
    assert_eq!(table.get(FileKey(1)).unwrap().counts().bytes_read, 10);
    // File 2 is evicted; its slot now holds file 3, and the hint no longer counts for file 2.
    assert_eq!(
        table.record_open(FileKey(3), &[], 6),
        OpenOutcome::InsertedAfterEviction
    );
    assert_eq!(table.slot(FileKey(3)), Some(two));
    assert!(!table.record_io_at(two, FileKey(2), Io::Read, 7, 7));
    assert_eq!(table.get(FileKey(3)).unwrap().counts().reads, 0);
    assert_eq!(table.stats().get(Stat::Misses), 1);
}

#[test]
fn clear_empties_the_table_and_zeroes_the_statistics() {
    let (alloc, names) = (Counting::default(), Counting::default());
    let mut table = Table::new_with_names_in(4, &alloc, &names);
    table.record_open(FileKey(1), &utf16("a"), 1);
    table.record_open(FileKey(2), &utf16("b"), 1);
    assert_eq!(table.clear(), 2);
    assert!(table.is_empty() && table.get(FileKey(1)).is_none());
    assert!(table.stats().iter().all(|(_, v)| v == 0));
    assert_eq!(names.live_blocks.get(), 0);
    assert_eq!(
        table.record_open(FileKey(1), &utf16("a"), 2),
        OpenOutcome::Inserted
    );
    assert_eq!(table.iter().count(), 1);
}

#[test]
fn forget_removes_one_entry_and_keeps_the_others_with_their_counts() {
    let (alloc, names) = (Counting::default(), Counting::default());
    let mut table = Table::new_with_names_in(CAPACITY, &alloc, &names);
    for id in 0..300 {
        table.record_open(FileKey(id), &utf16("n"), 1);
        table.record_io(FileKey(id), Io::Write, u64::try_from(id).unwrap(), 2);
    }
    let last_slot = table.slot(FileKey(299)).unwrap();
    assert!(table.forget(FileKey(7)));
    assert!(!table.forget(FileKey(7)));
    assert_eq!(table.len(), 299);
    assert!(table.get(FileKey(7)).is_none());
    // The last entry moved into the freed slot: its old slot hint falls back to the lookup.
    assert!(table.record_io_at(last_slot, FileKey(299), Io::Read, 1, 3));
    for id in (0..300).filter(|&id| id != 7) {
        let counts = table.get(FileKey(id)).unwrap().counts();
        assert_eq!(
            (counts.opens, counts.bytes_written),
            (1, u64::try_from(id).unwrap())
        );
    }
    assert_eq!(table.iter().count(), 299);
    assert_eq!(names.live_blocks.get(), 299);
    assert_eq!(table.index.chain_lengths().sum::<usize>(), 299);
}
