//! [`Index`]: from a key's hash to the slot holding its entry, by **linear hashing** (Litwin, 1980)
//! with chains threaded through the slots.
//!
//! - **Buckets.** There are `2^level + split` buckets. A hash goes to bucket `hash mod 2^level`,
//!   or, if that bucket has already been split in this round (`< split`), to
//!   `hash mod 2^(level + 1)`. Each bucket holds the head of a chain: the first link, or 0.
//! - **Links.** A link is a `u32`: the slot plus one in the low [`SLOT_BITS`] bits, and
//!   [`TAG_BITS`] bits of the target slot's hash above them. Slot `s`'s successor in its chain is
//!   `links[s]`. A lookup compares a link's tag before it touches the slot it names, so a chain
//!   step past a slot that is not the one sought almost never loads that slot's entry (1 in 2,048).
//! - **Growth, one bucket at a time.** When the number of slots exceeds the number of buckets (load
//!   factor 1), the bucket `split` is split: the slots of its chain whose hash has bit `level` set
//!   move to the new bucket `2^level + split`, the others stay; `split` moves on, and when every
//!   bucket of the round has been split, `level` goes up and `split` back to 0. One insert splits
//!   at most one bucket, so growth touches one chain (about two slots) however large the table is,
//!   and nothing is ever rehashed at once.
//! - **Storage.** Heads and links live in [`Blocks`] of 2 KiB, allocated as the table grows.
//!
//! The index changes only through `&mut self` (the table's exclusive lock); lookups take `&self`.

use allocator_api2::alloc::{AllocError, Allocator};

use super::blocks::Blocks;

/// Bits of a link that hold the slot plus one.
pub(super) const SLOT_BITS: u32 = 21;
/// Bits of a link that hold a tag of the target's hash.
pub(super) const TAG_BITS: u32 = 32 - SLOT_BITS;
/// The most slots (and buckets) an index can address: `2^20`.
pub(super) const MAX_SLOTS: usize = 1 << (SLOT_BITS - 1);

/// `u32`s in blocks of 512 (2 KiB); 16 × 128 × 512 = 2^20 of them.
type Words<A> = Blocks<u32, A, 512, 128, 16>;

const _: () = assert!(Words::<allocator_api2::alloc::Global>::CAPACITY == MAX_SLOTS);

/// A chain link: the slot it names plus one (so that 0 means "none") and the slot's hash tag.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Link(u32);

impl Link {
    const NONE: Self = Self(0);

    fn new(slot: usize, hash: u64) -> Self {
        debug_assert!(slot < MAX_SLOTS);
        #[allow(clippy::cast_possible_truncation)] // slot < 2^20
        Self((tag(hash) << SLOT_BITS) | (slot as u32 + 1))
    }

    /// The slot named, or `None` for the end of a chain.
    #[inline]
    fn slot(self) -> Option<usize> {
        let plus_one = self.0 & ((1 << SLOT_BITS) - 1);
        (plus_one as usize).checked_sub(1)
    }

    #[inline]
    fn tag(self) -> u32 {
        self.0 >> SLOT_BITS
    }
}

/// The tag of a hash: its top [`TAG_BITS`] bits (bucket numbers use the low bits).
#[inline]
fn tag(hash: u64) -> u32 {
    #[allow(clippy::cast_possible_truncation)] // TAG_BITS < 32 bits remain
    let tag = (hash >> (64 - TAG_BITS)) as u32;
    tag
}

/// Where a link is stored: a bucket's head or a slot's successor.
#[derive(Clone, Copy)]
enum Cell {
    Head(usize),
    Next(usize),
}

/// The hash → slot index of a table. See the [module documentation](self).
pub(super) struct Index<A: Allocator> {
    heads: Words<A>,
    links: Words<A>,
    /// `2^level - 1`: the mask of a round's bucket numbers.
    round: usize,
    split: usize,
}

impl<A: Allocator> Index<A> {
    /// An empty index (one bucket, no slots); allocates nothing.
    pub(super) const fn new_in(heads: A, links: A) -> Self {
        Self {
            heads: Words::new_in(heads),
            links: Words::new_in(links),
            round: 0,
            split: 0,
        }
    }

    /// The number of buckets.
    pub(super) fn buckets(&self) -> usize {
        self.round + 1 + self.split
    }

    /// The bucket of `hash`.
    #[inline]
    fn bucket(&self, hash: u64) -> usize {
        #[allow(clippy::cast_possible_truncation)] // only the low `level + 1` bits are kept
        let hash = hash as usize;
        let bucket = hash & self.round;
        if bucket < self.split {
            hash & ((self.round << 1) | 1)
        } else {
            bucket
        }
    }

    fn read(&self, cell: Cell) -> Link {
        let word = match cell {
            Cell::Head(bucket) => self.heads.get(bucket),
            Cell::Next(slot) => self.links.get(slot),
        };
        Link(word.copied().unwrap_or(0))
    }

    fn write(&mut self, cell: Cell, link: Link) {
        let word = match cell {
            Cell::Head(bucket) => self.heads.get_mut(bucket),
            Cell::Next(slot) => self.links.get_mut(slot),
        };
        // Every cell written is reserved first (`reserve`), so the word exists.
        if let Some(word) = word {
            *word = link.0;
        }
    }

    /// The first slot in the chain of `hash` whose tag matches and for which `is_key` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is_key: impl FnMut(usize) -> bool) -> Option<usize> {
        let wanted = tag(hash);
        let mut link = self.read(Cell::Head(self.bucket(hash)));
        while let Some(slot) = link.slot() {
            if link.tag() == wanted && is_key(slot) {
                return Some(slot);
            }
            link = self.read(Cell::Next(slot));
        }
        None
    }

    /// Allocates what inserting `slot` (and the bucket split that may follow) needs, so that
    /// [`Index::insert`] and [`Index::grow`] cannot fail.
    ///
    /// # Errors
    /// An allocation failed; the index is unchanged (but for blocks kept for the next try).
    pub(super) fn reserve(&mut self, slot: usize) -> Result<(), AllocError> {
        self.links.ensure(slot)?;
        let buckets = self.buckets();
        self.heads.ensure(buckets - 1)?;
        if buckets < MAX_SLOTS {
            self.heads.ensure(buckets)?;
        }
        Ok(())
    }

    /// Puts `slot` (reserved) at the front of the chain of `hash`.
    pub(super) fn insert(&mut self, slot: usize, hash: u64) {
        let head = Cell::Head(self.bucket(hash));
        let first = self.read(head);
        self.write(Cell::Next(slot), first);
        self.write(head, Link::new(slot, hash));
    }

    /// Unlinks `slot` from the chain of `hash`; does nothing if it is not there.
    pub(super) fn remove(&mut self, slot: usize, hash: u64) {
        let mut cell = Cell::Head(self.bucket(hash));
        loop {
            let link = self.read(cell);
            match link.slot() {
                None => return,
                Some(found) if found == slot => {
                    let next = self.read(Cell::Next(slot));
                    self.write(cell, next);
                    return;
                }
                Some(other) => cell = Cell::Next(other),
            }
        }
    }

    /// Splits one bucket if `slots` exceeds the number of buckets. `hash_of` gives the hash of a
    /// slot's key. The new bucket's head was allocated by [`Index::reserve`].
    pub(super) fn grow(&mut self, slots: usize, hash_of: impl Fn(usize) -> u64) {
        let buckets = self.buckets();
        if slots <= buckets || buckets >= MAX_SLOTS {
            return;
        }
        let old = self.split;
        let new = buckets;
        // Rebuild both chains in their original order: `stay` and `go` are the cells to append to.
        let mut link = self.read(Cell::Head(old));
        let (mut stay, mut go) = (Cell::Head(old), Cell::Head(new));
        while let Some(slot) = link.slot() {
            let next = self.read(Cell::Next(slot));
            #[allow(clippy::cast_possible_truncation)] // bit `level` < 21 is kept
            let target = if hash_of(slot) as usize & (self.round + 1) == 0 {
                &mut stay
            } else {
                &mut go
            };
            self.write(*target, link);
            *target = Cell::Next(slot);
            link = next;
        }
        self.write(stay, Link::NONE);
        self.write(go, Link::NONE);
        self.split += 1;
        if self.split > self.round {
            self.round = (self.round << 1) | 1;
            self.split = 0;
        }
    }

    /// Empties the index (every chain and bucket), keeping its blocks.
    pub(super) fn clear(&mut self) {
        for bucket in 0..self.buckets() {
            self.write(Cell::Head(bucket), Link::NONE);
        }
        self.round = 0;
        self.split = 0;
    }

    /// The length of every chain (for tests).
    #[cfg(test)]
    pub(super) fn chain_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.buckets()).map(|bucket| {
            let mut length = 0;
            let mut link = self.read(Cell::Head(bucket));
            while let Some(slot) = link.slot() {
                length += 1;
                link = self.read(Cell::Next(slot));
            }
            length
        })
    }

    /// Bytes allocated for heads and links (for tests).
    #[cfg(test)]
    pub(super) fn allocated_bytes(&self) -> usize {
        self.heads.allocated_bytes() + self.links.allocated_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::{Index, Link, MAX_SLOTS};
    use allocator_api2::alloc::Global;
    use std::vec::Vec;

    /// A hash with low bits `low` and tag `tag`.
    fn hash(low: u64, tag: u64) -> u64 {
        (tag << 53) | low
    }

    #[test]
    fn links_round_trip_slot_and_tag() {
        let link = Link::new(MAX_SLOTS - 1, u64::MAX);
        assert_eq!((link.slot(), link.tag()), (Some(MAX_SLOTS - 1), 0x7FF));
        assert_eq!(Link::NONE.slot(), None);
    }

    #[test]
    fn finds_inserted_slots_across_splits_and_removals() {
        let mut index = Index::new_in(Global, Global);
        let hashes: Vec<u64> = (0..200u64)
            .map(|i| hash(i.wrapping_mul(0x9E37_79B9), i % 7))
            .collect();
        for (slot, &h) in hashes.iter().enumerate() {
            index.reserve(slot).unwrap();
            index.insert(slot, h);
            index.grow(slot + 1, |s| hashes[s]);
        }
        assert_eq!(index.buckets(), 200, "load factor 1");
        assert_eq!(index.chain_lengths().sum::<usize>(), 200);
        for (slot, &h) in hashes.iter().enumerate() {
            assert_eq!(index.find(h, |s| s == slot), Some(slot));
        }
        index.remove(17, hashes[17]);
        assert_eq!(index.find(hashes[17], |s| s == 17), None);
        assert_eq!(index.find(hashes[18], |s| s == 18), Some(18));
        assert_eq!(index.chain_lengths().sum::<usize>(), 199);
    }

    #[test]
    fn a_tag_mismatch_skips_the_slot() {
        let mut index = Index::new_in(Global, Global);
        index.reserve(0).unwrap();
        index.insert(0, hash(0, 1));
        assert_eq!(index.find(hash(0, 2), |_| true), None);
        assert_eq!(index.find(hash(0, 1), |_| true), Some(0));
    }
}
