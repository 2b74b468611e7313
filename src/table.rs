//! The per-instance tally table: per-file I/O counters, keyed by file ID, bounded in entries.
//!
//! A [`Table`] lives inside a `PushLock` in the instance context (paged pool). Opens change the
//! table's shape and take the lock exclusively ([`Table::record_open`]); reads and writes only bump
//! atomic counters of an existing entry and so run under the **shared** lock ([`Table::record_io`]).
//!
//! Every allocation is fallible: a failed allocation drops that one tally and is counted in
//! [`Stat::AllocationFailures`]; the table stays consistent. Counters saturate at `u64::MAX`
//! instead of wrapping.
//!
//! When the table holds [`Table::max_entries`] entries, inserting a new file evicts the entry seen
//! least recently (by a logical clock bumped on every open, read and write). Finding it scans the
//! table: O(n) per eviction, paid only by opens of new files once the table is full, which keeps
//! entries at 80 bytes plus the name with no list links to maintain under the shared lock.

use core::sync::atomic::{AtomicU64, Ordering};

use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashMap;

use crate::stats::{Stat, Stats, StatsSnapshot};

/// The default bound on entries per instance: 4096 files.
///
/// At about 80 bytes per entry plus hash-table overhead and up to [`MAX_NAME_UNITS`] UTF-16 units of
/// name, a full table stays under 1.5 MiB of paged pool in the worst case and is typically
/// ~0.6 MiB.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// Names longer than this (in UTF-16 code units) are kept truncated to their last
/// `MAX_NAME_UNITS` units, which hold the file name itself.
pub const MAX_NAME_UNITS: usize = 260;

/// A file's identity on its volume: the 128-bit file ID (`FileIdInformation`), or the 64-bit
/// `FileInternalInformation` index number zero-extended where the file system has no 128-bit ID.
///
/// ReFS file IDs are 128 bits wide; keying by the 64-bit index number would make distinct ReFS files
/// collide, so the whole 128 bits are the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(pub u128);

/// Which kind of data transfer a tally records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// `IRP_MJ_READ`.
    Read,
    /// `IRP_MJ_WRITE`.
    Write,
}

/// What [`Table::record_open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The file was already tallied; its open count went up.
    Hit,
    /// A new entry was made for the file.
    Inserted,
    /// A new entry was made after evicting the least recently seen one.
    InsertedAfterEviction,
    /// The file could not be tallied: an allocation failed. Nothing else changed.
    AllocationFailed,
}

/// One file's counters.
pub struct Tally<A: Allocator> {
    name: Vec<u16, A>,
    opens: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    first_seen: i64,
    last_seen: AtomicU64,
    last_tick: AtomicU64,
}

/// A copy of one entry's counters, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Successful opens (creates) of the file seen on this volume.
    pub opens: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes requested by read requests.
    pub bytes_read: u64,
    /// Bytes requested by write requests.
    pub bytes_written: u64,
    /// System time (100 ns units since 1601) of the first open.
    pub first_seen: i64,
    /// System time (100 ns units since 1601) of the latest open, read or write.
    pub last_seen: i64,
}

impl<A: Allocator> Tally<A> {
    /// The file's name as first opened (possibly truncated to [`MAX_NAME_UNITS`]), UTF-16.
    #[must_use]
    pub fn name(&self) -> &[u16] {
        &self.name
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn counts(&self) -> Counts {
        Counts {
            opens: self.opens.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            first_seen: self.first_seen,
            last_seen: i64::try_from(self.last_seen.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        }
    }

    fn touch(&self, now: i64, tick: u64) {
        self.last_seen
            .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
        self.last_tick.fetch_max(tick, Ordering::Relaxed);
    }
}

/// Adds `n` to `counter`, stopping at `u64::MAX` instead of wrapping.
fn saturating_add(counter: &AtomicU64, n: u64) {
    // The closure never returns None, so fetch_update cannot fail.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

/// The tally table of one volume instance.
pub struct Table<A: Allocator + Clone> {
    entries: HashMap<FileKey, Tally<A>, DefaultHashBuilder, A>,
    max_entries: usize,
    clock: AtomicU64,
    stats: Stats,
    alloc: A,
}

impl<A: Allocator + Clone> Table<A> {
    /// An empty table holding at most `max_entries` files (at least 1), allocating from `alloc`.
    ///
    /// Allocates nothing until the first insert.
    pub fn new_in(max_entries: usize, alloc: A) -> Self {
        Self {
            entries: HashMap::with_hasher_in(DefaultHashBuilder::default(), alloc.clone()),
            max_entries: max_entries.max(1),
            clock: AtomicU64::new(0),
            stats: Stats::default(),
            alloc,
        }
    }

    /// The bound on entries.
    #[must_use]
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The table's statistics.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The entry for `key`, if the file is tallied.
    #[must_use]
    pub fn get(&self, key: FileKey) -> Option<&Tally<A>> {
        self.entries.get(&key)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FileKey, &Tally<A>)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Removes every entry and zeroes the statistics (the port's reset); returns how many entries
    /// there were. Keeps the table's storage for the files to come; allocates nothing.
    pub fn clear(&mut self) -> usize {
        let removed = self.entries.len();
        self.entries.clear();
        self.stats.reset();
        removed
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a successful open of the file `key`, named `name` (UTF-16), at system time `now`.
    ///
    /// Needs exclusive access (the exclusive lock). Never panics; on allocation failure the table is
    /// unchanged but for [`Stat::AllocationFailures`].
    pub fn record_open(&mut self, key: FileKey, name: &[u16], now: i64) -> OpenOutcome {
        let tick = self.tick();
        if let Some(tally) = self.entries.get(&key) {
            saturating_add(&tally.opens, 1);
            tally.touch(now, tick);
            self.stats.add(Stat::Hits, 1);
            return OpenOutcome::Hit;
        }
        let Some(name) = self.copy_name(name) else {
            self.stats.add(Stat::AllocationFailures, 1);
            return OpenOutcome::AllocationFailed;
        };
        // Reserve before evicting, so that a failed allocation leaves the table as it was.
        if self.entries.try_reserve(1).is_err() {
            self.stats.add(Stat::AllocationFailures, 1);
            return OpenOutcome::AllocationFailed;
        }
        let evicted = if self.entries.len() >= self.max_entries {
            self.evict_least_recently_seen()
        } else {
            false
        };
        let first_seen_bits = u64::try_from(now).unwrap_or(0);
        self.entries.insert(
            key,
            Tally {
                name,
                opens: AtomicU64::new(1),
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                first_seen: now,
                last_seen: AtomicU64::new(first_seen_bits),
                last_tick: AtomicU64::new(tick),
            },
        );
        self.stats.add(Stat::Inserts, 1);
        if evicted {
            OpenOutcome::InsertedAfterEviction
        } else {
            OpenOutcome::Inserted
        }
    }

    /// Records another open of the already tallied file `key` at system time `now`; returns `false`
    /// (and changes nothing) if the file has no entry, for the caller to insert it with
    /// [`Table::record_open`].
    ///
    /// Takes `&self`: runs under the shared lock, like [`Table::record_io`].
    pub fn record_reopen(&self, key: FileKey, now: i64) -> bool {
        let Some(tally) = self.entries.get(&key) else {
            return false;
        };
        saturating_add(&tally.opens, 1);
        tally.touch(now, self.tick());
        self.stats.add(Stat::Hits, 1);
        true
    }

    /// Records that BypassIO was enabled on a handle of this volume ([`Stat::BypassIoEnables`]): its
    /// non-cached reads will skip the filter and not be tallied. Takes `&self` (shared lock).
    pub fn record_bypass_io_enable(&self) {
        self.stats.add(Stat::BypassIoEnables, 1);
    }

    /// Records a read or write of `bytes` bytes on the file `key` at system time `now`.
    ///
    /// Takes `&self`: runs under the shared lock, concurrently with other readers and writers; only
    /// atomics change. Returns whether the file had an entry.
    pub fn record_io(&self, key: FileKey, io: Io, bytes: u64, now: i64) -> bool {
        let Some(tally) = self.entries.get(&key) else {
            self.stats.add(Stat::Misses, 1);
            return false;
        };
        let (count, total) = match io {
            Io::Read => (&tally.reads, &tally.bytes_read),
            Io::Write => (&tally.writes, &tally.bytes_written),
        };
        saturating_add(count, 1);
        saturating_add(total, bytes);
        tally.touch(now, self.tick());
        self.stats.add(Stat::Hits, 1);
        true
    }

    /// Adds `n` to `stat` (the driver's statistics that are not the table's own: untracked
    /// requests, failed name queries). Takes `&self`: runs under the shared lock.
    pub fn add_stat(&self, stat: Stat, n: u64) {
        self.stats.add(stat, n);
    }

    /// Removes the entry of `key`, if any: the file it tallied no longer exists (a new file was
    /// created with the same ID, as FAT and exFAT reuse the IDs of deleted files' directory
    /// entries). Needs the exclusive lock.
    pub fn forget(&mut self, key: FileKey) -> bool {
        self.entries.remove(&key).is_some()
    }

    /// Copies the last [`MAX_NAME_UNITS`] units of `name` into the table's pool.
    fn copy_name(&self, name: &[u16]) -> Option<Vec<u16, A>> {
        let kept = &name[name.len().saturating_sub(MAX_NAME_UNITS)..];
        let mut copy = Vec::new_in(self.alloc.clone());
        copy.try_reserve_exact(kept.len()).ok()?;
        copy.extend_from_slice(kept);
        Some(copy)
    }

    /// Removes the entry with the oldest logical tick; returns whether one was removed.
    fn evict_least_recently_seen(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, tally)| tally.last_tick.load(Ordering::Relaxed))
            .map(|(key, _)| *key);
        let Some(key) = oldest else {
            return false;
        };
        self.entries.remove(&key);
        self.stats.add(Stat::Evictions, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocator_api2::alloc::Global;

    fn utf16(s: &str) -> std::vec::Vec<u16> {
        s.encode_utf16().collect()
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
            Stat::ALL.map(|stat| stats.get(stat))[..5],
            [1, 4, 1, 0, 0],
            "inserts, hits, misses, evictions, allocation failures"
        );
    }

    #[test]
    fn keys_differing_only_in_high_bits_stay_apart() {
        let mut table = Table::new_in(8, Global);
        let low = 0x1234_u128;
        table.record_open(FileKey(low), &utf16("a"), 1);
        table.record_open(FileKey(low | (1 << 64)), &utf16("b"), 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn eviction_keeps_the_bound_and_drops_the_least_recently_seen() {
        let mut table = Table::new_in(3, Global);
        for id in 1..=3 {
            table.record_open(FileKey(id), &utf16("f"), 1);
        }
        // File 1 is read, so file 2 is now the least recently seen.
        table.record_io(FileKey(1), Io::Read, 1, 2);
        assert_eq!(
            table.record_open(FileKey(4), &utf16("g"), 3),
            OpenOutcome::InsertedAfterEviction
        );
        assert_eq!(table.len(), 3);
        assert!(table.get(FileKey(2)).is_none());
        assert!(table.get(FileKey(1)).is_some());
        assert_eq!(table.stats().get(Stat::Evictions), 1);
    }

    #[test]
    fn clear_empties_the_table_and_zeroes_the_statistics() {
        let mut table = Table::new_in(4, Global);
        table.record_open(FileKey(1), &utf16("a"), 1);
        table.record_open(FileKey(2), &utf16("b"), 1);
        assert_eq!(table.clear(), 2);
        assert!(table.is_empty());
        assert!(table.stats().iter().all(|(_, v)| v == 0));
        assert_eq!(
            table.record_open(FileKey(1), &utf16("a"), 2),
            OpenOutcome::Inserted
        );
    }

    #[test]
    fn counters_saturate() {
        let mut table = Table::new_in(1, Global);
        table.record_open(FileKey(9), &utf16("big"), 0);
        table.record_io(FileKey(9), Io::Write, u64::MAX - 1, 1);
        table.record_io(FileKey(9), Io::Write, 5, 2);
        assert_eq!(
            table.get(FileKey(9)).unwrap().counts().bytes_written,
            u64::MAX
        );
    }

    #[test]
    fn long_names_keep_their_tail() {
        let mut table = Table::new_in(1, Global);
        let long: std::vec::Vec<u16> = (0..1000u16).collect();
        table.record_open(FileKey(1), &long, 0);
        assert_eq!(
            table.get(FileKey(1)).unwrap().name(),
            &long[1000 - MAX_NAME_UNITS..]
        );
    }
}
