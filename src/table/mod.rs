//! The per-instance tally table: per-file I/O counters, keyed by file ID, bounded in entries, cheap
//! at a million files.
//!
//! A [`Table`] lives inside a `PushLock` in the instance context (paged pool). Opens of new files
//! change the table's shape and take the lock exclusively ([`Table::record_open`]); reads, writes
//! and reopens of known files only update atomic counters of an existing entry and so run under
//! the **shared** lock ([`Table::record_io`], [`Table::record_reopen`]).
//!
//! # Layout
//! - **Entries** ([`Tally`], 80 bytes: key, name pointer, five counters, two times) sit in *slots*
//!   `0..len`, always dense, in leaf blocks of 128 entries (10 KiB) reached through two small block
//!   tables (`blocks`). Blocks are allocated when the table grows into them and never move, grow or
//!   shrink; nothing is ever copied or rehashed as a whole.
//! - **The index** (`index`) maps a key's hash to its slot by linear hashing: one 4-byte chain head
//!   per bucket, one 4-byte link per slot, at most one bucket per slot, in 2 KiB blocks.
//! - **Names** are separate blocks from their own allocator ([`Table::new_with_names_in`]; tag `ItFn`
//!   in the driver), at most [`MAX_NAME_UNITS`] UTF-16 units each.
//!
//! So an entry costs 80 + 4 + 4 = 88 bytes of paged pool plus its name, and a few bytes more for
//! the partly filled last blocks and the block tables: 88.1 bytes at a million entries, at most
//! 92.5 from 4,096 entries up, 94.2 at 1,000 (and up to 106 just past 1,024 entries, where a new
//! 10 KiB leaf holds a single entry). Nothing is nonpaged. The largest single allocation is a leaf
//! of 10,240 bytes, whatever the size of the table, up to [`CAPACITY`] (2^20) entries.
//!
//! # Bounded work under the exclusive lock
//! - **Insert** (a new file, with room): one name block, at most one entry leaf, at most two index
//!   blocks (all zeroed by the pool), and at most one bucket split, which walks one chain (about
//!   two slots at load factor 1). No step depends on the number of entries.
//! - **Eviction** (a new file, table full): **sampled least-recently-seen**. [`EVICTION_SAMPLES`]
//!   slots are drawn at random (slots are dense, so a draw is one index computation) and the one
//!   with the oldest `last_seen` time is evicted: its chain link is removed, its name freed, and the
//!   new file takes its slot. The victim is not always the oldest entry of the table, but is the
//!   oldest of 16 random ones: in expectation among the oldest 1/17 of the table, whatever its
//!   size. A table of at most 16 entries is scanned whole, so there eviction is exact
//!   least-recently-seen. (A scan of the whole table, as before, cost 17.5 µs at 4096 entries and
//!   would cost milliseconds at a million, with every read of the volume waiting.)
//!
//! # The shared-lock path
//! A tracked read or write hashes the key (one multiply), reads the bucket's head and, if the tag
//! matches, the entry, then does two atomic adds and one store **in that entry**. It writes nothing
//! shared by the whole volume: no clock, no statistics (only a read of an evicted file counts a
//! miss, in [`Stat::Misses`]), so readers of different files on different processors share no
//! written cache line but the push lock's word. (Two entries can share a cache line: 80-byte
//! entries are not padded to 128 bytes, which would cost 40 bytes each.) Counter arithmetic and
//! its saturation are described in `tally`.
//!
//! # Failures
//! Every allocation is fallible: a failed allocation drops that one tally and is counted in
//! [`Stat::AllocationFailures`]; the table stays as it was.
//!
//! # Hashing
//! foldhash with a fixed seed, so that instruction counts are repeatable run to run. File IDs are
//! assigned by the file system, not chosen by callers, and an unlucky long chain slows only the
//! lookups of that chain's files.

mod blocks;
mod index;
mod tally;

use core::hash::BuildHasher;

use allocator_api2::alloc::Allocator;
use foldhash::fast::FixedState;

use crate::stats::{Stat, Stats, StatsSnapshot};
use blocks::Blocks;
use index::Index;
pub use tally::{Counts, Tally};

/// The default bound on entries per instance: 4096 files.
///
/// At 88 bytes per entry plus up to 522 bytes of name ([`MAX_NAME_UNITS`] UTF-16 units and a length),
/// a full table stays under 2.5 MiB of paged pool in the worst case and is typically about 0.6 MiB.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// The most entries a table can hold: 1,048,576. Larger bounds are clamped to it.
pub const CAPACITY: usize = index::MAX_SLOTS;

/// Names longer than this (in UTF-16 code units) are kept truncated to their last
/// `MAX_NAME_UNITS` units, which hold the file name itself.
pub const MAX_NAME_UNITS: usize = 260;

/// How many entries an eviction compares (see the [module documentation](self)).
pub const EVICTION_SAMPLES: usize = 16;

/// Entry leaves of 128 entries; 32 × 256 × 128 = 2^20 entries.
type Entries<A> = Blocks<Tally, A, 128, 256, 32>;

const _: () = assert!(Entries::<allocator_api2::alloc::Global>::CAPACITY == CAPACITY);

/// The hash seed (fixed: see the module documentation).
const HASH_SEED: u64 = 0x696f_7461_6c6c_7921;

/// A file's identity on its volume: the 128-bit file ID (`FileIdInformation`), or the 64-bit
/// `FileInternalInformation` index number zero-extended where the file system has no 128-bit ID.
///
/// ReFS file IDs are 128 bits wide; keying by the 64-bit index number would make distinct ReFS files
/// collide, so the whole 128 bits are the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(pub u128);

impl FileKey {
    #[inline]
    fn hash(self) -> u64 {
        FixedState::with_seed(HASH_SEED).hash_one(self.0)
    }
}

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
    /// A new entry was made after evicting a least recently seen one (sampled).
    InsertedAfterEviction,
    /// The file could not be tallied: an allocation failed. Nothing else changed.
    AllocationFailed,
}

/// Where a tallied file's entry is: a hint that lets [`Table::record_io_at`] skip the lookup by key,
/// for a caller that can keep it beside the key (the driver keeps it in the stream context).
///
/// A slot stays right until its entry is evicted; then it names another file's entry, or none, and
/// the key check at every use falls back to the lookup. Any value is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

impl Slot {
    /// The slot as a number, for storing it.
    #[must_use]
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// A slot from a stored number (any number is a valid hint; a wrong one costs a lookup).
    #[must_use]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

/// The tally table of one volume instance. See the [module documentation](self).
pub struct Table<A: Allocator + Clone> {
    entries: Entries<A>,
    index: Index<A>,
    len: usize,
    max_entries: usize,
    names: A,
    /// `SplitMix64` state for eviction samples (changed only under `&mut self`).
    rng: u64,
    stats: Stats,
}

impl<A: Allocator + Clone> Table<A> {
    /// An empty table holding at most `max_entries` files (at least 1, at most [`CAPACITY`]),
    /// allocating everything, names included, from `alloc`.
    ///
    /// Allocates nothing until the first insert.
    pub fn new_in(max_entries: usize, alloc: A) -> Self {
        Self::new_with_names_in(max_entries, alloc.clone(), alloc)
    }

    /// An empty table holding at most `max_entries` files (at least 1, at most [`CAPACITY`]): entries
    /// and index from `alloc`, names from `names` (so that pool tags tell them apart).
    ///
    /// Allocates nothing until the first insert.
    pub fn new_with_names_in(max_entries: usize, alloc: A, names: A) -> Self {
        Self {
            entries: Entries::new_in(alloc.clone()),
            index: Index::new_in(alloc.clone(), alloc),
            len: 0,
            max_entries: max_entries.clamp(1, CAPACITY),
            names,
            rng: HASH_SEED,
            stats: Stats::default(),
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
        self.len
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The table's statistics.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The entry for `key`, if the file is tallied.
    #[must_use]
    #[inline]
    pub fn get(&self, key: FileKey) -> Option<&Tally> {
        let slot = self.find(key, key.hash())?;
        self.entries.get(slot)
    }

    /// The slot of `key`'s entry, if the file is tallied.
    #[must_use]
    pub fn slot(&self, key: FileKey) -> Option<Slot> {
        let slot = self.find(key, key.hash())?;
        u32::try_from(slot).ok().map(Slot)
    }

    /// The entry for `key`, looked for first at `slot`.
    #[inline]
    fn get_at(&self, slot: Slot, key: FileKey) -> Option<&Tally> {
        let index = slot.0 as usize;
        if index < self.len
            && let Some(tally) = self.entries.get(index)
            && tally.key() == key
        {
            return Some(tally);
        }
        self.get(key)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FileKey, &Tally)> {
        (0..self.len)
            .filter_map(|slot| self.entries.get(slot))
            .map(|tally| (tally.key(), tally))
    }

    /// The slot of `key`, whose hash is `hash`.
    #[inline]
    fn find(&self, key: FileKey, hash: u64) -> Option<usize> {
        self.index.find(hash, |slot| {
            self.entries.get(slot).is_some_and(|t| t.key() == key)
        })
    }

    /// Records a successful open of the file `key`, named `name` (UTF-16), at system time `now`.
    ///
    /// Needs exclusive access (the exclusive lock); its work does not grow with the table (see the
    /// module documentation). Never panics; on allocation failure the table is unchanged but for
    /// [`Stat::AllocationFailures`].
    pub fn record_open(&mut self, key: FileKey, name: &[u16], now: i64) -> OpenOutcome {
        let hash = key.hash();
        if let Some(tally) = self.find(key, hash).and_then(|s| self.entries.get(s)) {
            tally.record_open(now);
            return OpenOutcome::Hit;
        }
        let Ok(name) = tally::copy_name(&self.names, name) else {
            return self.allocation_failed(None);
        };
        let outcome = if self.len < self.max_entries {
            let slot = self.len;
            if self.entries.ensure(slot).is_err() || self.index.reserve(slot).is_err() {
                return self.allocation_failed(name);
            }
            self.place(slot, Tally::new(key, name, now), hash);
            self.len += 1;
            let entries = &self.entries;
            self.index.grow(self.len, |slot| {
                entries.get(slot).map_or(0, |t| t.key().hash())
            });
            OpenOutcome::Inserted
        } else {
            let slot = self.evict();
            self.place(slot, Tally::new(key, name, now), hash);
            OpenOutcome::InsertedAfterEviction
        };
        self.stats.add(Stat::Inserts, 1);
        outcome
    }

    /// Frees `name` (a block not placed in the table) and counts the failure.
    fn allocation_failed(&mut self, name: Option<core::ptr::NonNull<u16>>) -> OpenOutcome {
        // SAFETY: `name` came from `copy_name` with `self.names` and was never placed in an entry.
        unsafe { tally::free_name(&self.names, name) };
        self.stats.add(Stat::AllocationFailures, 1);
        OpenOutcome::AllocationFailed
    }

    /// Writes `tally` into `slot` (allocated, not in the index) and links it under `hash`.
    fn place(&mut self, slot: usize, tally: Tally, hash: u64) {
        if let Some(entry) = self.entries.get_mut(slot) {
            *entry = tally;
            self.index.insert(slot, hash);
        }
    }

    /// Evicts the least recently seen of [`EVICTION_SAMPLES`] random entries (of all of them in a
    /// table that small) and returns its slot, unlinked, its name freed. The table is full.
    fn evict(&mut self) -> usize {
        let mut victim = 0;
        let mut oldest = i64::MAX;
        let mut consider = |slot: usize, entries: &Entries<A>| {
            if let Some(seen) = entries.get(slot).map(Tally::last_seen)
                && seen < oldest
            {
                (victim, oldest) = (slot, seen);
            }
        };
        if self.len <= EVICTION_SAMPLES {
            for slot in 0..self.len {
                consider(slot, &self.entries);
            }
        } else {
            for _ in 0..EVICTION_SAMPLES {
                let slot = below(splitmix64(&mut self.rng), self.len);
                consider(slot, &self.entries);
            }
        }
        if let Some(old) = self.entries.get(victim) {
            let (key, name) = (old.key(), old.name_block());
            self.index.remove(victim, key.hash());
            // SAFETY: the victim's name block came from `copy_name` with `self.names`; the entry is
            // overwritten right after (`place`), so nothing reads the block again.
            unsafe { tally::free_name(&self.names, name) };
        }
        self.stats.add(Stat::Evictions, 1);
        victim
    }

    /// Removes every entry and zeroes the statistics (the port's reset); returns how many entries
    /// there were. Keeps the table's blocks for the files to come; allocates nothing. Its work grows
    /// with the table (every name is freed): an administrator's request, not an I/O path.
    pub fn clear(&mut self) -> usize {
        let removed = self.len;
        for slot in 0..self.len {
            let name = self.entries.get(slot).and_then(Tally::name_block);
            // SAFETY: the entry's name block came from `copy_name` with `self.names`; `len` drops to
            // 0 below, so no entry reads it again.
            unsafe { tally::free_name(&self.names, name) };
        }
        self.len = 0;
        self.index.clear();
        self.stats.reset();
        removed
    }

    /// Removes the entry of `key`, if any: the file it tallied no longer exists (a new file was
    /// created with the same ID, as FAT and exFAT reuse the IDs of deleted files' directory
    /// entries). Needs the exclusive lock. Bounded work: the last entry moves into the freed slot
    /// (slot hints of the moved file go stale, and fall back to the lookup).
    pub fn forget(&mut self, key: FileKey) -> bool {
        let hash = key.hash();
        let Some(slot) = self.find(key, hash) else {
            return false;
        };
        let name = self.entries.get(slot).and_then(Tally::name_block);
        self.index.remove(slot, hash);
        // SAFETY: the entry's name block came from `copy_name` with `self.names`; the entry is
        // overwritten or left beyond `len` below, so nothing reads it again.
        unsafe { tally::free_name(&self.names, name) };
        let last = self.len - 1;
        if slot != last
            && let Some(moved) = self.entries.get(last)
        {
            let moved_hash = moved.key().hash();
            let moved = Tally::new(moved.key(), moved.name_block(), 0).copy_counts_from(moved);
            self.index.remove(last, moved_hash);
            self.place(slot, moved, moved_hash);
        }
        self.len = last;
        true
    }

    /// Adds `n` to `stat` (the driver's statistics that are not the table's own: untracked
    /// requests, failed name queries). Takes `&self`: runs under the shared lock.
    pub fn add_stat(&self, stat: Stat, n: u64) {
        self.stats.add(stat, n);
    }

    /// Records that BypassIO was enabled on a handle of this volume ([`Stat::BypassIoEnables`]): its
    /// non-cached reads will skip the filter and not be tallied. Takes `&self` (shared lock).
    pub fn record_bypass_io_enable(&self) {
        self.stats.add(Stat::BypassIoEnables, 1);
    }

    /// Records another open of the already tallied file `key` at system time `now`; returns `false`
    /// (and changes nothing) if the file has no entry, for the caller to insert it with
    /// [`Table::record_open`].
    ///
    /// Takes `&self`: runs under the shared lock, like [`Table::record_io`].
    #[inline]
    pub fn record_reopen(&self, key: FileKey, now: i64) -> bool {
        let Some(tally) = self.get(key) else {
            return false;
        };
        tally.record_open(now);
        true
    }

    /// Records a read or write of `bytes` bytes on the file `key` at system time `now`.
    ///
    /// Takes `&self`: runs under the shared lock, concurrently with other readers and writers; only
    /// the entry's atomics change. Returns whether the file had an entry (if not, counts a miss).
    #[inline]
    pub fn record_io(&self, key: FileKey, io: Io, bytes: u64, now: i64) -> bool {
        let Some(tally) = self.get(key) else {
            self.stats.add(Stat::Misses, 1);
            return false;
        };
        tally.record_io(io, bytes, now);
        true
    }

    /// As [`Table::record_io`], looking for the entry first at `slot` (from [`Table::slot`]): the
    /// tracked read and write path, with no hashing or index walk while the hint is right.
    #[inline]
    pub fn record_io_at(&self, slot: Slot, key: FileKey, io: Io, bytes: u64, now: i64) -> bool {
        let Some(tally) = self.get_at(slot, key) else {
            self.stats.add(Stat::Misses, 1);
            return false;
        };
        tally.record_io(io, bytes, now);
        true
    }
}

impl<A: Allocator + Clone> Drop for Table<A> {
    /// Frees every name; the blocks free themselves.
    fn drop(&mut self) {
        for slot in 0..self.len {
            let name = self.entries.get(slot).and_then(Tally::name_block);
            // SAFETY: every entry's name block came from `copy_name` with `self.names`; the table is
            // going away, so nothing reads it again.
            unsafe { tally::free_name(&self.names, name) };
        }
    }
}

/// `SplitMix64`: a small, well-distributed deterministic generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number below `n` from a uniform 64-bit `random` (multiply and keep the high half).
fn below(random: u64, n: usize) -> usize {
    let wide = u128::from(random) * n as u128;
    usize::try_from(wide >> 64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
