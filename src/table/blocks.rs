//! [`Blocks`]: an array of up to `ROOT * MID * LEAF` values stored in small, fixed-size blocks that
//! are allocated on first use and never move or grow.
//!
//! Three levels: a root array of `ROOT` pointers kept inline (in the owner), each to a *mid* block
//! of `MID` pointers, each to a *leaf* block of `LEAF` values. Growing the array by one value
//! allocates at most one mid block and one leaf block, both zeroed by the pool, and copies nothing:
//! the work and the largest allocation are constants, whatever the number of values. Reaching a
//! value is two dependent loads (mid, leaf) from the root.
//!
//! Values are never dropped: the owner releases whatever a value owns before the storage goes
//! (checked at compile time: `T` must not need `Drop`). A new value reads as all-zero bytes, which
//! must be a valid `T` ([`Zeroed`]).

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

/// Types for which all-zero bytes are a valid value (the pool returns zeroed memory).
///
/// # Safety
/// An all-zero bit pattern of `size_of::<Self>()` bytes must be a valid, initialized `Self`, in every
/// build but `cfg(loom)`'s; there, [`Zeroed::fresh`] is written over every new value instead (loom's
/// atomics are not valid as zero bytes).
pub(super) unsafe trait Zeroed {
    /// Under `cfg(loom)`: the value a new slot starts with.
    #[cfg(loom)]
    fn fresh() -> Self;
}

// SAFETY: zero is a `u32`.
unsafe impl Zeroed for u32 {
    #[cfg(loom)]
    fn fresh() -> Self {
        0
    }
}

/// A block of `MID` pointers to leaves (null: not allocated yet).
type Mid<T, const LEAF: usize, const MID: usize> = [Option<NonNull<[T; LEAF]>>; MID];

/// Up to `ROOT * MID * LEAF` values of `T` in blocks allocated from `A` on demand.
pub(super) struct Blocks<T, A: Allocator, const LEAF: usize, const MID: usize, const ROOT: usize> {
    root: [Option<NonNull<Mid<T, LEAF, MID>>>; ROOT],
    alloc: A,
    /// The blocks own their `T`s.
    _owns: PhantomData<T>,
}

// SAFETY: the blocks are owned by `Blocks` alone (nothing else points into them); moving it moves the
// `T`s and the allocator with it.
unsafe impl<T: Send, A: Allocator + Send, const L: usize, const M: usize, const R: usize> Send
    for Blocks<T, A, L, M, R>
{
}
// SAFETY: `&Blocks` gives only `&T` (values) and reads of the block pointers, which change only through
// `&mut Blocks`.
unsafe impl<T: Sync, A: Allocator + Sync, const L: usize, const M: usize, const R: usize> Sync
    for Blocks<T, A, L, M, R>
{
}

impl<T: Zeroed, A: Allocator, const LEAF: usize, const MID: usize, const ROOT: usize>
    Blocks<T, A, LEAF, MID, ROOT>
{
    /// How many values the array can hold.
    pub(super) const CAPACITY: usize = ROOT * MID * LEAF;

    /// An empty array; allocates nothing.
    pub(super) const fn new_in(alloc: A) -> Self {
        const {
            assert!(
                !core::mem::needs_drop::<T>(),
                "Blocks never drops its values"
            );
            assert!(LEAF.is_power_of_two() && MID.is_power_of_two() && ROOT.is_power_of_two());
        }
        Self {
            root: [None; ROOT],
            alloc,
            _owns: PhantomData,
        }
    }

    /// The value at `index` modulo [`Self::CAPACITY`], if its leaf has been allocated. (Callers pass
    /// indexes below the capacity; the modulo, a mask, spares a bounds check on the hot path.)
    #[inline]
    pub(super) fn get(&self, index: usize) -> Option<&T> {
        debug_assert!(index < Self::CAPACITY);
        let index = index % Self::CAPACITY;
        let mid = self.root[index / (MID * LEAF)].as_ref()?;
        // SAFETY: every non-null root pointer is a live, initialized mid block allocated by `ensure`
        // and freed only in `drop`; mid blocks change only through `&mut self`.
        let mid = unsafe { mid.as_ref() };
        let leaf = mid[(index / LEAF) % MID].as_ref()?;
        // SAFETY: as above, for the leaf block; values are only mutated through `&mut self` (or
        // through their own interior mutability).
        let leaf = unsafe { leaf.as_ref() };
        Some(&leaf[index % LEAF])
    }

    /// The value at `index` modulo [`Self::CAPACITY`] for writing, if its leaf has been allocated.
    #[inline]
    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        debug_assert!(index < Self::CAPACITY);
        let index = index % Self::CAPACITY;
        let mid = self.root[index / (MID * LEAF)].as_mut()?;
        // SAFETY: as in `get`; `&mut self` makes this the only reference into the blocks.
        let mid = unsafe { mid.as_mut() };
        let leaf = mid[(index / LEAF) % MID].as_mut()?;
        // SAFETY: as above, for the leaf block.
        let leaf = unsafe { leaf.as_mut() };
        Some(&mut leaf[index % LEAF])
    }

    /// Makes sure the leaf holding `index` exists (zeroed values), allocating at most one mid
    /// block and one leaf block. On failure nothing changes but a mid block that may stay
    /// allocated, empty, for the next try.
    ///
    /// # Errors
    /// `index` is beyond [`Self::CAPACITY`], or an allocation failed.
    pub(super) fn ensure(&mut self, index: usize) -> Result<(), AllocError> {
        let slot = self.root.get_mut(index / (MID * LEAF)).ok_or(AllocError)?;
        let mut mid = if let Some(mid) = *slot {
            mid
        } else {
            let mid = allocate_zeroed::<Mid<T, LEAF, MID>>(&self.alloc)?;
            *slot = Some(mid);
            mid
        };
        // SAFETY: a live mid block (allocated above or earlier, freed only in `drop`); `&mut self`
        // makes this the only reference into it.
        let mid = unsafe { mid.as_mut() };
        let leaf = &mut mid[(index / LEAF) % MID];
        if leaf.is_none() {
            let block = allocate_zeroed::<[T; LEAF]>(&self.alloc)?;
            #[cfg(loom)]
            for value in 0..LEAF {
                // SAFETY: a fresh block of `LEAF` values, not yet shared; the zero bytes there are
                // overwritten without being read or dropped.
                unsafe { block.cast::<T>().add(value).write(T::fresh()) };
            }
            *leaf = Some(block);
        }
        Ok(())
    }

    /// Bytes allocated now (for tests).
    #[cfg(test)]
    pub(super) fn allocated_bytes(&self) -> usize {
        let mut bytes = 0;
        for mid in self.root.iter().flatten() {
            bytes += size_of::<Mid<T, LEAF, MID>>();
            // SAFETY: a live mid block, as in `get`.
            let mid = unsafe { mid.as_ref() };
            bytes += mid.iter().flatten().count() * size_of::<[T; LEAF]>();
        }
        bytes
    }
}

impl<T, A: Allocator, const LEAF: usize, const MID: usize, const ROOT: usize> Drop
    for Blocks<T, A, LEAF, MID, ROOT>
{
    fn drop(&mut self) {
        for mid in self.root.iter_mut().filter_map(Option::take) {
            // SAFETY: a live mid block allocated by `ensure`; its pointers are read once more here,
            // then the block is freed below.
            let leaves = unsafe { mid.as_ref() };
            for leaf in leaves.iter().flatten() {
                // SAFETY: allocated by `allocate_zeroed::<[T; LEAF]>` with this allocator, freed once
                // (the mid block goes next); `T` needs no drop (checked in `new_in`).
                unsafe {
                    self.alloc
                        .deallocate(leaf.cast(), Layout::new::<[T; LEAF]>());
                }
            }
            // SAFETY: allocated by `allocate_zeroed::<Mid<..>>` with this allocator, freed once (it
            // left the root above).
            unsafe {
                self.alloc
                    .deallocate(mid.cast(), Layout::new::<Mid<T, LEAF, MID>>());
            }
        }
    }
}

/// One zeroed `B` from `alloc`; all-zero bytes must be a valid `B` (callers: `[T: Zeroed; N]` and
/// arrays of `Option<NonNull<_>>`, whose `None` is the null pointer).
fn allocate_zeroed<B>(alloc: &impl Allocator) -> Result<NonNull<B>, AllocError> {
    alloc
        .allocate_zeroed(Layout::new::<B>())
        .map(NonNull::cast::<B>)
}

#[cfg(test)]
mod tests {
    use super::Blocks;
    use allocator_api2::alloc::Global;

    type Small = Blocks<u32, Global, 4, 2, 4>;

    #[test]
    fn values_appear_zeroed_where_ensured_and_nowhere_else() {
        let mut blocks = Small::new_in(Global);
        assert_eq!(Small::CAPACITY, 32);
        assert!(blocks.get(0).is_none());
        blocks.ensure(5).unwrap();
        // The leaf of 5 holds 4..8; nothing else is allocated.
        assert_eq!(blocks.get(4), Some(&0));
        assert!(blocks.get(3).is_none() && blocks.get(8).is_none());
        *blocks.get_mut(7).unwrap() = 70;
        blocks.ensure(23).unwrap();
        *blocks.get_mut(23).unwrap() = 230;
        assert_eq!((blocks.get(7), blocks.get(23)), (Some(&70), Some(&230)));
        assert_eq!(blocks.allocated_bytes(), 2 * 16 + 2 * 16);
        assert!(blocks.ensure(32).is_err(), "beyond capacity");
    }
}
