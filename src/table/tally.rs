//! [`Tally`]: one file's entry, 80 bytes, and its name block.
//!
//! # Counters
//! Every update is one atomic add (`lock xadd` on x64) or one store, never a compare-and-swap loop.
//! - `opens`, `reads`, `writes` grow by one per request: wrapping needs 2^64 requests on one file
//!   (584 years at a billion a second), so they are plain adds.
//! - `bytes_read`, `bytes_written` grow by the requested length, up to 4 GiB - 1 per request, and a
//!   program can repeat maximal reads past the end of a small file: 2^32 such requests (72 minutes
//!   at a million a second) would wrap a 64-bit total. So they **saturate**: the adding thread
//!   sees in the add's result that the total wrapped and stores `u64::MAX`. Every add that wraps is
//!   followed by that store, so the total ends at `u64::MAX` and stays there; a reader racing with
//!   the wrap may see a small value for the few instructions in between.
//! - `last_seen` is a plain store of the operation's time: of concurrent operations the one that
//!   stores last wins, so it may be a few microseconds older than the very latest (it was a
//!   compare-and-swap maximum loop). Eviction only needs it to tell old from recent.
//!
//! # Name
//! The name is a separate paged block from the table's name allocator (tag `ItFn` in the driver):
//! `[length, units...]` in UTF-16 units, at most [`MAX_NAME_UNITS`] units, or no block for an empty
//! name. It is written once, before the entry is published, and freed only through `&mut Table`.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicI64, AtomicU64};
// Under `cfg(loom)` the counters are loom's atomics, so that loom checks this very code
// (`tests/loom.rs`).
#[cfg(loom)]
use loom::sync::atomic::{AtomicI64, AtomicU64};

use allocator_api2::alloc::{AllocError, Allocator};

use super::blocks::Zeroed;
use super::{FileKey, Io, MAX_NAME_UNITS};

/// One file's counters, as the table stores them (80 bytes; the name is a separate block).
#[repr(C)]
pub struct Tally {
    key: FileKey,
    name: Option<NonNull<u16>>,
    opens: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    first_seen: i64,
    last_seen: AtomicI64,
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<Tally>() == 80);

// SAFETY: every field is an integer, an atomic integer or an `Option<NonNull<_>>`, all valid as zero
// bytes (`None` is the null pointer). Under loom, whose atomics are not, `fresh` overwrites them.
unsafe impl Zeroed for Tally {
    #[cfg(loom)]
    fn fresh() -> Self {
        Self::new(FileKey(0), None, 0)
    }
}

// SAFETY: the name block is owned by the entry, written before the entry is published and only read
// afterwards; it is freed only through `&mut Table`, when no `&Tally` can exist. Counters are atomics.
unsafe impl Send for Tally {}
// SAFETY: as for `Send`: shared access only reads the name and updates atomics.
unsafe impl Sync for Tally {}

/// A copy of one entry's counters, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Successful opens (creates) of the file seen on this volume.
    pub opens: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes requested by read requests (saturating at `u64::MAX`).
    pub bytes_read: u64,
    /// Bytes requested by write requests (saturating at `u64::MAX`).
    pub bytes_written: u64,
    /// System time (100 ns units since 1601) of the first open.
    pub first_seen: i64,
    /// System time (100 ns units since 1601) of the latest open, read or write (of operations
    /// running at once, the one that finished its update last).
    pub last_seen: i64,
}

impl Tally {
    /// A new entry for `key` named by the block `name`, opened once at `now`.
    pub(super) fn new(key: FileKey, name: Option<NonNull<u16>>, now: i64) -> Self {
        Self {
            key,
            name,
            opens: AtomicU64::new(1),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            first_seen: now,
            last_seen: AtomicI64::new(now),
        }
    }

    /// This new entry with the counters and times of `other` (an entry moving to another slot).
    pub(super) fn copy_counts_from(self, other: &Self) -> Self {
        let counts = other.counts();
        Self {
            opens: AtomicU64::new(counts.opens),
            reads: AtomicU64::new(counts.reads),
            writes: AtomicU64::new(counts.writes),
            bytes_read: AtomicU64::new(counts.bytes_read),
            bytes_written: AtomicU64::new(counts.bytes_written),
            first_seen: counts.first_seen,
            last_seen: AtomicI64::new(counts.last_seen),
            ..self
        }
    }

    /// The file's key.
    pub(super) fn key(&self) -> FileKey {
        self.key
    }

    /// The name block, for the table to free.
    pub(super) fn name_block(&self) -> Option<NonNull<u16>> {
        self.name
    }

    /// The time of the latest operation, for eviction.
    pub(super) fn last_seen(&self) -> i64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// The file's name as first opened (possibly truncated to [`MAX_NAME_UNITS`]), UTF-16.
    #[must_use]
    pub fn name(&self) -> &[u16] {
        let Some(block) = self.name else {
            return &[];
        };
        // SAFETY: a live name block (see the module documentation) starts with its length.
        let len = unsafe { block.read() };
        // SAFETY: the block holds the length and then `len` units, all initialized.
        let block = unsafe { core::slice::from_raw_parts(block.as_ptr(), 1 + usize::from(len)) };
        &block[1..]
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
            last_seen: self.last_seen.load(Ordering::Relaxed),
        }
    }

    /// Counts one more open at `now`.
    #[inline]
    pub(super) fn record_open(&self, now: i64) {
        self.opens.fetch_add(1, Ordering::Relaxed);
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Counts one transfer of `bytes` at `now`.
    #[inline]
    pub(super) fn record_io(&self, io: Io, bytes: u64, now: i64) {
        let (count, total) = match io {
            Io::Read => (&self.reads, &self.bytes_read),
            Io::Write => (&self.writes, &self.bytes_written),
        };
        count.fetch_add(1, Ordering::Relaxed);
        if total
            .fetch_add(bytes, Ordering::Relaxed)
            .checked_add(bytes)
            .is_none()
        {
            saturate(total);
        }
        self.last_seen.store(now, Ordering::Relaxed);
    }
}

/// After an add that wrapped: pins the total at `u64::MAX`.
#[cold]
fn saturate(total: &AtomicU64) {
    total.store(u64::MAX, Ordering::Relaxed);
}

/// The layout of a name block of `units` units.
fn name_layout(units: usize) -> Result<Layout, AllocError> {
    Layout::array::<u16>(units + 1).map_err(|_| AllocError)
}

/// Copies the last [`MAX_NAME_UNITS`] units of `name` into a new block from `alloc`; `None` for an
/// empty name (no block).
///
/// # Errors
/// The allocation failed.
pub(super) fn copy_name(
    alloc: &impl Allocator,
    name: &[u16],
) -> Result<Option<NonNull<u16>>, AllocError> {
    let kept = &name[name.len().saturating_sub(MAX_NAME_UNITS)..];
    let Ok(len) = u16::try_from(kept.len()) else {
        return Err(AllocError);
    };
    if len == 0 {
        return Ok(None);
    }
    let block = alloc
        .allocate_zeroed(name_layout(kept.len())?)?
        .cast::<u16>();
    // SAFETY: a fresh, zeroed (so initialized) allocation of `1 + len` units, aligned for `u16`, not
    // yet shared.
    let units = unsafe { core::slice::from_raw_parts_mut(block.as_ptr(), 1 + kept.len()) };
    units[0] = len;
    units[1..].copy_from_slice(kept);
    Ok(Some(block))
}

/// Frees a block made by [`copy_name`] with the same allocator.
///
/// # Safety
/// `block` came from `copy_name(alloc, ..)` and is not used afterwards.
pub(super) unsafe fn free_name(alloc: &impl Allocator, block: Option<NonNull<u16>>) {
    let Some(block) = block else {
        return;
    };
    // SAFETY: a live name block (the caller's contract) starts with its length.
    let len = unsafe { block.read() };
    if let Ok(layout) = name_layout(usize::from(len)) {
        // SAFETY: allocated by `copy_name` with this layout and allocator, freed once.
        unsafe { alloc.deallocate(block.cast(), layout) };
    }
}
