//! [`PushLock<T>`]: a Filter Manager push lock (`EX_PUSH_LOCK`) that owns the `T` it protects.
//!
//! `read()` returns a shared guard ([`PushLockReadGuard`], `Deref<Target = T>`), `write()` an
//! exclusive guard ([`PushLockWriteGuard`], also `DerefMut`); a guard releases the lock
//! (`FltReleasePushLock`) when it is dropped, on every path, including early returns and panics
//! unwinding in host tests. Guards can be narrowed to a part of the data with `map`
//! ([`MappedPushLockReadGuard`], [`MappedPushLockWriteGuard`]).
//!
//! # Rules (`docs/kernel-rules.md`, "Push locks"; Microsoft's `FltAcquirePushLock*` reference pages)
//!
//! 1. **IRQL <= `APC_LEVEL`** for every operation: initialize, acquire, release and delete. Debug
//!    builds assert it on each of them ([`crate::irql::assert_at_most`]), naming the routine and the
//!    IRQL seen. Never take a push lock in a post-operation callback that may run at
//!    `DISPATCH_LEVEL`.
//! 2. **No recursion.** A thread that holds the lock must not acquire it again: an exclusive
//!    re-acquire, a shared-to-exclusive upgrade and a shared acquire by the exclusive holder wait for
//!    the thread itself, forever; a second shared acquire hangs as soon as an exclusive acquirer
//!    arrives between the two. Pass the guard you hold along instead.
//! 3. **No lock held across a call that can re-enter the file system**: `FltQueryInformationFile`,
//!    `FltGetFileNameInformation`, `FltSendMessage`, any I/O. The re-entrant call can come back into
//!    this driver on the same thread (rule 2) or wait for a thread that waits for this lock. Gather
//!    what you need first, then lock, update and drop the guard.
//! 4. **Release on the acquiring thread.** The Flt acquire routines disable the thread's normal kernel
//!    APCs and the release re-enables them, so the guards are `!Send`.
//! 5. Keep hold times short; exclusive granting is not fair, and shared acquirers queue behind a
//!    waiting exclusive acquirer.
//!
//! # Storage and pinning
//!
//! The `EX_PUSH_LOCK` is an 8-byte, 8-byte-aligned word inside the `PushLock` (at offset 0), which
//! may live in paged or non-paged memory. Once `FltInitializePushLock` has run, the word must not move
//! until `FltDeletePushLock`: Windows links waiters' in-stack wait blocks to it. `PushLock` is
//! therefore `!Unpin` and never handed out by value; it is created in place, in one of two ways:
//!
//! - [`PushLock::init_in_place`] (`unsafe`) writes and initializes it in memory the caller provides
//!   and promises not to move: e.g. a Filter Manager context (allocated by `FltAllocateContext`,
//!   never moved; its cleanup callback drops the lock in place with `ptr::drop_in_place`).
//! - [`PushLock::try_pin_in`] (safe) allocates it with a fallible allocator and returns it as
//!   `Pin<Box<PushLock<T>, A>>`, which cannot be moved out of.
//!
//! Either way the methods take `&self`: a shared reference to a `PushLock` can only come from a
//! pinned or in-place lock. Dropping the `PushLock` deletes the lock (`FltDeletePushLock`) and then
//! drops the `T`.
//!
//! # Debug diagnostics
//!
//! Windows has no owner query for push locks, no `!locks` support and no Driver Verifier deadlock
//! detection. Debug builds make up for it: each lock records its exclusive owner and its shared
//! holders (in debug-only fields of the lock; no allocation), and a recursive acquire (rule 2), an
//! upgrade, a release on another thread than the acquiring one (possible only through `unsafe`, as the
//! guards are `!Send`), or a delete while a guard is leaked panics at once with a message starting
//! `iotally: push lock ...` instead of hanging. [`PushLock::debug_assert_held_exclusive`] checks
//! the owner where code requires its caller to hold the lock. Up to 16 concurrent shared holders are
//! tracked per lock; beyond that, the checks on the extra holders are best effort.
//!
//! # Cost in release builds
//!
//! All of the above compiles away: `size_of::<PushLock<T>>()` is `size_of::<T>()` plus 8, rounded up
//! to the alignment of the whole, a guard is one pointer, nothing is allocated inside the lock, and
//! `read()`/`write()` are one call each to the Flt routine (tests check the sizes).
//!
//! # Model checking
//!
//! Under `cfg(loom)` the word runs fltsim's push-lock algorithm on loom's atomics (`word`) and the
//! data is loom's `UnsafeCell` (`cell`), which checks every access a guard makes; the guards
//! themselves are the same code. `tests/loom.rs` explores every interleaving of a few threads
//! through them (and through the tally table's counters) within a preemption bound.
//!
//! # Why not `lock_api`
//!
//! `lock_api`'s `RwLock<R, T>` would give the guard types for free from a `RawRwLock` implementation,
//! but it does not fit this lock:
//! - `RawRwLock` requires `const INIT: Self`, a lock usable without an initialization call, and
//!   `lock_api::RwLock::new` is a `const fn` that returns the lock by value, to be moved anywhere. A push
//!   lock must be initialized with `FltInitializePushLock`, deleted with `FltDeletePushLock`, and must
//!   not move in between; neither step has a place in `lock_api`'s model.
//! - `RawRwLock` requires `try_lock_shared` and `try_lock_exclusive`; Filter Manager exports no
//!   try-acquire for push locks, so they could only be written by reading the opaque word, which the
//!   documentation reserves to the system.
//! - Its guards and `RwLock` would still need this crate's IRQL assertions and debug tracking around
//!   every operation, so little code would be saved.
//!
//! So the guards here are written by hand, and are as small as `lock_api`'s (one pointer).
//!
//! # Example
//!
//! ```
//! # use fltsim as _;
//! # let _sim = fltsim::Sim::new();
//! use iotally::pool::{tags, PagedAllocator};
//! use iotally::sync::PushLock;
//!
//! struct Stats { opens: u64, reads: u64 }
//!
//! let stats = PushLock::try_pin_in(Stats { opens: 0, reads: 0 }, PagedAllocator::new(tags::PUSH_LOCK))
//!     .expect("paged pool");
//! {
//!     let mut stats = stats.write();
//!     stats.opens += 1;
//! } // released here
//! assert_eq!(stats.read().opens, 1);
//! ```

use core::fmt;
use core::marker::{PhantomData, PhantomPinned};
use core::mem;
use core::ops::{Deref, DerefMut};
use core::pin::Pin;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::boxed::Box;

use super::cell::DataCell;
use super::tracker::Tracker;
use super::word::Word;
use crate::irql::{Irql, assert_at_most};

/// The lock without its data: what every guard, mapped or not, releases.
#[repr(C)]
struct RawPushLock {
    word: Word,
    /// Debug builds: the holders; release builds: zero-sized.
    tracker: Tracker,
}

impl RawPushLock {
    /// The `PEX_PUSH_LOCK` passed to the Flt routines.
    fn word_ptr(&self) -> *mut usize {
        self.word.as_ptr()
    }

    /// Acquires shared, after the IRQL and (debug) recursion checks.
    #[inline]
    #[track_caller]
    fn lock_shared(&self) {
        assert_at_most(Irql::APC, "PushLock::read (FltAcquirePushLockShared)");
        self.tracker.before_shared(
            "PushLock::read (FltAcquirePushLockShared)",
            self.word_ptr().addr(),
        );
        // SAFETY: the word was initialized by FltInitializePushLock (every PushLock is created by
        // `init_in_place`), is not deleted while `self` is borrowed (the delete is in PushLock's Drop),
        // does not move (pinned or in place), and the IRQL rule is asserted above and documented.
        unsafe { self.word.acquire_shared() };
        self.tracker.shared_acquired();
    }

    /// Acquires exclusive, after the IRQL and (debug) recursion and upgrade checks.
    #[inline]
    #[track_caller]
    fn lock_exclusive(&self) {
        assert_at_most(Irql::APC, "PushLock::write (FltAcquirePushLockExclusive)");
        self.tracker.before_exclusive(
            "PushLock::write (FltAcquirePushLockExclusive)",
            self.word_ptr().addr(),
        );
        // SAFETY: as in `lock_shared`.
        unsafe { self.word.acquire_exclusive() };
        self.tracker.exclusive_acquired();
    }

    /// Releases a shared hold of the calling thread.
    #[inline]
    #[track_caller]
    fn unlock_shared(&self) {
        assert_at_most(Irql::APC, "PushLockReadGuard::drop (FltReleasePushLock)");
        self.tracker.shared_releasing(
            "PushLockReadGuard::drop (FltReleasePushLock)",
            self.word_ptr().addr(),
        );
        // SAFETY: called once per shared guard, which proves a shared hold acquired by `lock_shared`;
        // guards are `!Send`, so this runs on the acquiring thread; the word is alive and unmoved.
        unsafe { self.word.release() };
    }

    /// Releases the exclusive hold of the calling thread.
    #[inline]
    #[track_caller]
    fn unlock_exclusive(&self) {
        assert_at_most(Irql::APC, "PushLockWriteGuard::drop (FltReleasePushLock)");
        self.tracker.exclusive_releasing(
            "PushLockWriteGuard::drop (FltReleasePushLock)",
            self.word_ptr().addr(),
        );
        // SAFETY: as in `unlock_shared`, for the exclusive hold of a write guard.
        unsafe { self.word.release() };
    }
}

/// A Filter Manager push lock that owns the data it protects. See the [module documentation](self)
/// for the rules, the pinning design and the debug diagnostics.
///
/// `Sync` when `T: Send + Sync` (shared guards on several threads hand out `&T` at once; an exclusive
/// guard hands out `&mut T` on any thread), `Send` when `T: Send`.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::pool::{tags, NonPagedAllocator};
/// use iotally::sync::PushLock;
///
/// let names = PushLock::try_pin_in([0_u16; 8], NonPagedAllocator::new(tags::PUSH_LOCK)).expect("pool");
/// names.write()[0] = u16::from(b'C');
/// assert_eq!(names.read()[0], 0x43);
/// ```
///
/// Data that is not `Sync` (here a `Cell`) makes the lock `!Sync`: it cannot be shared across threads.
///
/// ```compile_fail,E0277
/// # use fltsim as _;
/// use core::cell::Cell;
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::PushLock;
///
/// fn shared_across_threads<T: Sync>(_: &T) {}
/// let lock = PushLock::try_pin_in(Cell::new(0), PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// shared_across_threads(&*lock);
/// ```
#[repr(C)]
pub struct PushLock<T: ?Sized> {
    raw: RawPushLock,
    _pinned: PhantomPinned,
    data: DataCell<T>,
}

// SAFETY: moving the lock (when nobody holds it: a guard borrows it) to another thread moves the `T`;
// the word itself has no thread affinity.
unsafe impl<T: ?Sized + Send> Send for PushLock<T> {}
// SAFETY: through `&PushLock<T>` several threads can get `&T` at once (read guards: needs `T: Sync`) and
// one thread at a time can get `&mut T` (write guard: needs `T: Send`, as with `std::sync::RwLock`).
unsafe impl<T: ?Sized + Send + Sync> Sync for PushLock<T> {}

impl<T> PushLock<T> {
    /// Writes a `PushLock` holding `value` into `slot` and initializes its push lock
    /// (`FltInitializePushLock`), in place: for memory that the caller owns and never moves, such as
    /// a Filter Manager context.
    ///
    /// Asserts `IRQL <= APC_LEVEL` in debug builds.
    ///
    /// # Safety
    /// - `slot` is valid for writes of a `PushLock<T>` and aligned for it (`FltAllocateContext`
    ///   and pool memory are 16-byte aligned; `align_of::<PushLock<T>>()` is 8 unless `T` asks more);
    ///   it does not hold a live `PushLock` (that one would never be deleted).
    /// - From this call until the lock is dropped, the `PushLock` stays at `slot`: it is never moved
    ///   (no `mem::swap`, `mem::replace` or copy of the bytes), and the memory is neither freed nor
    ///   reused.
    /// - It is dropped in place exactly once (`ptr::drop_in_place(slot)`, e.g. in the context cleanup
    ///   callback) at `IRQL <= APC_LEVEL` with no guard alive, before the memory is freed; that
    ///   deletes the push lock and drops the `T`.
    /// - Shared references to it are only used on threads allowed by its `Send`/`Sync` bounds.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use core::mem::MaybeUninit;
    /// use iotally::sync::PushLock;
    ///
    /// // Stands for context memory from FltAllocateContext: owned elsewhere, never moved.
    /// let mut memory = MaybeUninit::<PushLock<u64>>::uninit();
    /// let slot = memory.as_mut_ptr();
    /// // SAFETY: `slot` is valid and aligned, stays put, and is dropped in place below.
    /// unsafe { PushLock::init_in_place(slot, 7) };
    /// // SAFETY: initialized above and not yet dropped.
    /// let lock = unsafe { &*slot };
    /// *lock.write() += 1;
    /// assert_eq!(*lock.read(), 8);
    /// // The context cleanup callback's part: delete the lock and drop the value, in place.
    /// // SAFETY: no guard is alive; `slot` is not used afterwards.
    /// unsafe { core::ptr::drop_in_place(slot) };
    /// assert_eq!(fltsim::pushlock::live(), 0);
    /// ```
    #[track_caller]
    pub unsafe fn init_in_place(slot: *mut Self, value: T) {
        assert_at_most(Irql::APC, "PushLock::init_in_place (FltInitializePushLock)");
        // SAFETY: `slot` is valid for writes and aligned (the caller's contract); the place is only
        // projected (`&raw mut`), no reference to uninitialized memory is made.
        let raw = unsafe { &raw mut (*slot).raw };
        // SAFETY: `raw` points into `slot`, valid for writes and aligned.
        unsafe {
            raw.write(RawPushLock {
                word: Word::new(),
                tracker: Tracker::new(),
            });
        }
        // SAFETY: as for `raw`.
        let data = unsafe { &raw mut (*slot).data };
        // SAFETY: `data` points into `slot`, valid for writes and aligned.
        unsafe { data.write(DataCell::new(value)) };
        // SAFETY: `raw` was initialized just above and is not moved or freed while this reference
        // lives (the caller's contract).
        let word = unsafe { &(*raw).word };
        // SAFETY: the word stays at this address, unmoved, until the drop in place deletes it (the
        // caller's contract); IRQL asserted above.
        unsafe { word.initialize() };
    }

    /// Allocates a `PushLock` holding `value` with `alloc`, initializes it there and returns it
    /// pinned; or `Err(AllocError)` (and `value` is dropped) when the allocation fails. Never panics.
    ///
    /// Dropping the box deletes the push lock, drops the value and frees the memory, at
    /// `IRQL <= APC_LEVEL`. Asserts `IRQL <= APC_LEVEL` in debug builds.
    ///
    /// # Errors
    /// [`AllocError`] when `alloc` cannot provide the memory (e.g. pool exhausted, or Driver Verifier's
    /// low-resources simulation).
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let Ok(counter) = PushLock::try_pin_in(0_u32, PagedAllocator::new(tags::PUSH_LOCK)) else {
    ///     return; // out of pool: a clean failure path, no panic
    /// };
    /// *counter.write() += 1;
    /// assert_eq!(*counter.read(), 1);
    /// ```
    #[track_caller]
    pub fn try_pin_in<A: Allocator + 'static>(
        value: T,
        alloc: A,
    ) -> Result<Pin<Box<Self, A>>, AllocError> {
        let mut slot = Box::<Self, A>::try_new_uninit_in(alloc)?;
        // SAFETY: a fresh allocation sized and aligned for `Self`; it is never moved (it becomes the
        // pinned box below) and the box drops it in place, before freeing it, exactly once.
        unsafe { Self::init_in_place(slot.as_mut_ptr(), value) };
        // SAFETY: `init_in_place` initialized every field.
        let boxed = unsafe { slot.assume_init() };
        Ok(Box::into_pin(boxed))
    }
}

impl<T: ?Sized> PushLock<T> {
    /// Acquires the lock shared (`FltAcquirePushLockShared`), waiting while it is held exclusive or an
    /// exclusive acquirer waits; the guard releases it when dropped.
    ///
    /// Asserts `IRQL <= APC_LEVEL` in debug builds, and panics there if the calling thread already
    /// holds this lock (shared or exclusive): push locks are not recursive.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let lock = PushLock::try_pin_in(vec![1, 2, 3], PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// let items = lock.read();
    /// assert_eq!(items.len(), 3);
    /// ```
    #[inline]
    #[track_caller]
    pub fn read(&self) -> PushLockReadGuard<'_, T> {
        self.raw.lock_shared();
        PushLockReadGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Acquires the lock exclusive (`FltAcquirePushLockExclusive`), waiting until no thread holds it;
    /// the guard releases it when dropped.
    ///
    /// Asserts `IRQL <= APC_LEVEL` in debug builds, and panics there if the calling thread already
    /// holds this lock: exclusive again (recursion) or shared (upgrade).
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let lock = PushLock::try_pin_in(vec![1, 2, 3], PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// lock.write().push(4);
    /// assert_eq!(*lock.read(), [1, 2, 3, 4]);
    /// ```
    #[inline]
    #[track_caller]
    pub fn write(&self) -> PushLockWriteGuard<'_, T> {
        self.raw.lock_exclusive();
        PushLockWriteGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// The data, without locking: a pinned exclusive reference proves that no guard exists. (Named
    /// `data_mut` rather than `get_mut` so as not to clash with `Pin::get_mut`.)
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let mut lock = PushLock::try_pin_in(1_u8, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// *lock.as_mut().data_mut() = 2;
    /// assert_eq!(*lock.read(), 2);
    /// ```
    #[must_use]
    pub fn data_mut(self: Pin<&mut Self>) -> &mut T {
        // SAFETY: only the data is reached, which is not structurally pinned (the lock word is); the
        // `PushLock` itself is not moved.
        unsafe { self.get_unchecked_mut() }.data.get_mut()
    }

    /// Debug builds: panics unless the calling thread holds this lock exclusive (through a
    /// [`PushLockWriteGuard`] or a mapped one), naming the lock. For code that requires its caller
    /// to hold the lock. Release builds track no owner (Windows has no owner query for push locks)
    /// and check nothing.
    ///
    /// There is deliberately no query returning a `bool`: a release build could only answer it with
    /// a guess, and code deciding whether to lock on a guess either deadlocks or races.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let lock = PushLock::try_pin_in(0_u32, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// let guard = lock.write();
    /// lock.debug_assert_held_exclusive();
    /// drop(guard);
    /// ```
    #[track_caller]
    pub fn debug_assert_held_exclusive(&self) {
        self.raw
            .tracker
            .assert_held_exclusive(self.raw.word_ptr().addr());
    }

    /// The address of the `EX_PUSH_LOCK` word (offset 0 of the `PushLock`), for diagnostics: a
    /// debugger's `dq`, or the simulator's queries in tests. Using it to acquire or release the lock
    /// behind the guards' back breaks their invariants.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::PushLock;
    ///
    /// let lock = PushLock::try_pin_in((), PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// assert_eq!(lock.as_raw().addr() % 8, 0);
    /// assert_eq!(fltsim::pushlock::live_addresses(), [lock.as_raw().addr()]);
    /// ```
    #[must_use]
    pub fn as_raw(&self) -> *mut usize {
        self.raw.word_ptr()
    }
}

impl<T: ?Sized> Drop for PushLock<T> {
    /// Deletes the push lock (`FltDeletePushLock`); the `T` is dropped afterwards.
    ///
    /// Asserts `IRQL <= APC_LEVEL` in debug builds, and that no guard was leaked.
    fn drop(&mut self) {
        const ROUTINE: &str = "PushLock::drop (FltDeletePushLock)";
        assert_at_most(Irql::APC, ROUTINE);
        self.raw
            .tracker
            .before_delete(ROUTINE, self.raw.word_ptr().addr());
        // SAFETY: the lock was initialized in place and has not moved; `&mut self` proves that no guard
        // borrows it, so it is not held (a leaked guard is caught above in debug builds); it is deleted
        // exactly once, here.
        unsafe { self.raw.word.delete() };
    }
}

impl<T: ?Sized> fmt::Debug for PushLock<T> {
    /// Prints the word's address only: reading the data would need the lock, and taking it in `Debug`
    /// could recurse (rule 2).
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// let lock = iotally::sync::PushLock::try_pin_in(1, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// assert!(format!("{lock:?}").starts_with("PushLock { word: 0x"));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushLock")
            .field("word", &self.as_raw())
            .finish_non_exhaustive()
    }
}

/// A shared hold of a [`PushLock`]: `Deref<Target = T>`; released (`FltReleasePushLock`) when dropped.
///
/// `!Send` (released on the acquiring thread); `Sync` when `T: Sync`. One pointer in size.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::{PushLock, PushLockReadGuard};
///
/// fn total(values: &PushLockReadGuard<'_, [u32; 3]>) -> u32 {
///     values.iter().sum()
/// }
/// let lock = PushLock::try_pin_in([1, 2, 3], PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// assert_eq!(total(&lock.read()), 6);
/// ```
///
/// A guard cannot be sent to another thread (the release must happen on the acquiring thread):
///
/// ```compile_fail,E0277
/// # use fltsim as _;
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::PushLock;
///
/// let lock = PushLock::try_pin_in(0_u32, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// let guard = lock.read();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PushLockReadGuard<'a, T: ?Sized> {
    lock: &'a PushLock<T>,
    /// `!Send` and `!Sync` by default (see the `Sync` impl below).
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing `&PushLockReadGuard` across threads only shares `&T`.
unsafe impl<T: ?Sized + Sync> Sync for PushLockReadGuard<'_, T> {}

impl<'a, T: ?Sized> PushLockReadGuard<'a, T> {
    /// Narrows the guard to a part of the data (e.g. one field); the lock stays held shared until the
    /// mapped guard drops. An associated function (`PushLockReadGuard::map(guard, ...)`) so that it
    /// cannot clash with a method of `T`.
    ///
    /// If `f` panics, the original guard releases the lock.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::{PushLock, PushLockReadGuard};
    ///
    /// struct Instance { name: &'static str, files: u32 }
    /// let lock = PushLock::try_pin_in(Instance { name: "C:", files: 3 }, PagedAllocator::new(tags::PUSH_LOCK))
    ///     .unwrap();
    /// let name = PushLockReadGuard::map(lock.read(), |instance| &instance.name);
    /// assert_eq!(*name, "C:");
    /// ```
    pub fn map<U: ?Sized>(guard: Self, f: impl FnOnce(&T) -> &U) -> MappedPushLockReadGuard<'a, U> {
        let lock: &'a PushLock<T> = guard.lock;
        // SAFETY: the guard holds the lock shared, so no `&mut T` exists; the reference is tied to 'a,
        // and the mapped guard keeps the hold for as long as it lives.
        let data = NonNull::from(f(unsafe { &*lock.data.read_ptr() }));
        // The hold moves to the mapped guard: the original must not release it.
        mem::forget(guard);
        MappedPushLockReadGuard {
            raw: &lock.raw,
            data,
            _marker: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for PushLockReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock shared: no writer exists until it drops.
        unsafe { &*self.lock.data.read_ptr() }
    }
}

impl<T: ?Sized> Drop for PushLockReadGuard<'_, T> {
    /// Releases the shared hold (`FltReleasePushLock`). Asserts `IRQL <= APC_LEVEL` in debug builds.
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.unlock_shared();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for PushLockReadGuard<'_, T> {
    /// The data's `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for PushLockReadGuard<'_, T> {
    /// The data's `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

/// The exclusive hold of a [`PushLock`]: `Deref` and `DerefMut` to `T`; released
/// (`FltReleasePushLock`) when dropped.
///
/// `!Send` (released on the acquiring thread); `Sync` when `T: Sync`. One pointer in size.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::{PushLock, PushLockWriteGuard};
///
/// fn bump(counter: &mut PushLockWriteGuard<'_, u64>) {
///     **counter += 1;
/// }
/// let lock = PushLock::try_pin_in(0, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// let mut guard = lock.write();
/// bump(&mut guard);
/// bump(&mut guard);
/// drop(guard);
/// assert_eq!(*lock.read(), 2);
/// ```
///
/// A guard cannot be sent to another thread (the release must happen on the acquiring thread):
///
/// ```compile_fail,E0277
/// # use fltsim as _;
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::PushLock;
///
/// let lock = PushLock::try_pin_in(0_u32, PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// let guard = lock.write();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PushLockWriteGuard<'a, T: ?Sized> {
    lock: &'a PushLock<T>,
    /// `!Send` and `!Sync` by default (see the `Sync` impl below).
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing `&PushLockWriteGuard` across threads only shares `&T`.
unsafe impl<T: ?Sized + Sync> Sync for PushLockWriteGuard<'_, T> {}

impl<'a, T: ?Sized> PushLockWriteGuard<'a, T> {
    /// Narrows the guard to a part of the data; the lock stays held exclusive until the mapped guard
    /// drops. If `f` panics, the original guard releases the lock.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::{PushLock, PushLockWriteGuard};
    ///
    /// struct Stats { reads: u64, writes: u64 }
    /// let lock = PushLock::try_pin_in(Stats { reads: 0, writes: 0 }, PagedAllocator::new(tags::PUSH_LOCK))
    ///     .unwrap();
    /// let mut writes = PushLockWriteGuard::map(lock.write(), |stats| &mut stats.writes);
    /// *writes += 1;
    /// drop(writes);
    /// assert_eq!(lock.read().writes, 1);
    /// ```
    pub fn map<U: ?Sized>(
        guard: Self,
        f: impl FnOnce(&mut T) -> &mut U,
    ) -> MappedPushLockWriteGuard<'a, U> {
        let lock: &'a PushLock<T> = guard.lock;
        // SAFETY: the guard holds the lock exclusive and is not used while `f` runs, so this is the
        // only reference to the data; the mapped guard keeps the hold for as long as it lives.
        let data = NonNull::from(f(unsafe { &mut *lock.data.write_ptr() }));
        // The hold moves to the mapped guard: the original must not release it.
        mem::forget(guard);
        MappedPushLockWriteGuard {
            raw: &lock.raw,
            data,
            _marker: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for PushLockWriteGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock exclusive.
        unsafe { &*self.lock.data.read_ptr() }
    }
}

impl<T: ?Sized> DerefMut for PushLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusive, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.write_ptr() }
    }
}

impl<T: ?Sized> Drop for PushLockWriteGuard<'_, T> {
    /// Releases the exclusive hold (`FltReleasePushLock`). Asserts `IRQL <= APC_LEVEL` in debug builds.
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.unlock_exclusive();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for PushLockWriteGuard<'_, T> {
    /// The data's `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for PushLockWriteGuard<'_, T> {
    /// The data's `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

/// A shared hold of a [`PushLock`], narrowed to a part `U` of its data by [`PushLockReadGuard::map`].
///
/// Two pointers (the lock and the part). `!Send`; `Sync` when `U: Sync`.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::{MappedPushLockReadGuard, PushLock, PushLockReadGuard};
///
/// let lock = PushLock::try_pin_in(((1, 2), 3), PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// let pair = PushLockReadGuard::map(lock.read(), |all| &all.0);
/// let second = MappedPushLockReadGuard::map(pair, |pair| &pair.1);
/// assert_eq!(*second, 2);
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MappedPushLockReadGuard<'a, U: ?Sized> {
    raw: &'a RawPushLock,
    data: NonNull<U>,
    _marker: PhantomData<(&'a U, *const ())>,
}

// SAFETY: sharing `&MappedPushLockReadGuard` across threads only shares `&U`.
unsafe impl<U: ?Sized + Sync> Sync for MappedPushLockReadGuard<'_, U> {}

impl<'a, U: ?Sized> MappedPushLockReadGuard<'a, U> {
    /// Narrows the guard further. If `f` panics, the original guard releases the lock.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::{MappedPushLockReadGuard, PushLock, PushLockReadGuard};
    ///
    /// let lock = PushLock::try_pin_in([[1, 2], [3, 4]], PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// let row = PushLockReadGuard::map(lock.read(), |rows| &rows[1]);
    /// assert_eq!(*MappedPushLockReadGuard::map(row, |row| &row[0]), 3);
    /// ```
    pub fn map<V: ?Sized>(guard: Self, f: impl FnOnce(&U) -> &V) -> MappedPushLockReadGuard<'a, V> {
        let raw = guard.raw;
        // SAFETY: the guard holds the lock shared and `data` points into the locked data for 'a.
        let data = NonNull::from(f(unsafe { guard.data.as_ref() }));
        // The hold moves to the new guard.
        mem::forget(guard);
        MappedPushLockReadGuard {
            raw,
            data,
            _marker: PhantomData,
        }
    }
}

impl<U: ?Sized> Deref for MappedPushLockReadGuard<'_, U> {
    type Target = U;

    #[inline]
    fn deref(&self) -> &U {
        // SAFETY: `data` points into the data of a lock this guard holds shared.
        unsafe { self.data.as_ref() }
    }
}

impl<U: ?Sized> Drop for MappedPushLockReadGuard<'_, U> {
    /// Releases the shared hold (`FltReleasePushLock`). Asserts `IRQL <= APC_LEVEL` in debug builds.
    #[inline]
    fn drop(&mut self) {
        self.raw.unlock_shared();
    }
}

impl<U: ?Sized + fmt::Debug> fmt::Debug for MappedPushLockReadGuard<'_, U> {
    /// The part's `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The exclusive hold of a [`PushLock`], narrowed to a part `U` of its data by
/// [`PushLockWriteGuard::map`].
///
/// Two pointers (the lock and the part). `!Send`; `Sync` when `U: Sync`.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use iotally::pool::{tags, PagedAllocator};
/// use iotally::sync::{MappedPushLockWriteGuard, PushLock, PushLockWriteGuard};
///
/// let lock = PushLock::try_pin_in(((1, 2), 3), PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
/// let pair = PushLockWriteGuard::map(lock.write(), |all| &mut all.0);
/// let mut second = MappedPushLockWriteGuard::map(pair, |pair| &mut pair.1);
/// *second = 20;
/// drop(second);
/// assert_eq!(*lock.read(), ((1, 20), 3));
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MappedPushLockWriteGuard<'a, U: ?Sized> {
    raw: &'a RawPushLock,
    data: NonNull<U>,
    _marker: PhantomData<(&'a mut U, *const ())>,
}

// SAFETY: sharing `&MappedPushLockWriteGuard` across threads only shares `&U`.
unsafe impl<U: ?Sized + Sync> Sync for MappedPushLockWriteGuard<'_, U> {}

impl<'a, U: ?Sized> MappedPushLockWriteGuard<'a, U> {
    /// Narrows the guard further. If `f` panics, the original guard releases the lock.
    ///
    /// ```
    /// # use fltsim as _;
    /// # let _sim = fltsim::Sim::new();
    /// use iotally::pool::{tags, PagedAllocator};
    /// use iotally::sync::{MappedPushLockWriteGuard, PushLock, PushLockWriteGuard};
    ///
    /// let lock = PushLock::try_pin_in([[1, 2], [3, 4]], PagedAllocator::new(tags::PUSH_LOCK)).unwrap();
    /// let row = PushLockWriteGuard::map(lock.write(), |rows| &mut rows[1]);
    /// *MappedPushLockWriteGuard::map(row, |row| &mut row[0]) = 30;
    /// assert_eq!(*lock.read(), [[1, 2], [30, 4]]);
    /// ```
    pub fn map<V: ?Sized>(
        mut guard: Self,
        f: impl FnOnce(&mut U) -> &mut V,
    ) -> MappedPushLockWriteGuard<'a, V> {
        let raw = guard.raw;
        // SAFETY: the guard holds the lock exclusive and `data` points into the locked data for 'a;
        // the guard is not used while `f` runs.
        let data = NonNull::from(f(unsafe { guard.data.as_mut() }));
        // The hold moves to the new guard.
        mem::forget(guard);
        MappedPushLockWriteGuard {
            raw,
            data,
            _marker: PhantomData,
        }
    }
}

impl<U: ?Sized> Deref for MappedPushLockWriteGuard<'_, U> {
    type Target = U;

    #[inline]
    fn deref(&self) -> &U {
        // SAFETY: `data` points into the data of a lock this guard holds exclusive.
        unsafe { self.data.as_ref() }
    }
}

impl<U: ?Sized> DerefMut for MappedPushLockWriteGuard<'_, U> {
    #[inline]
    fn deref_mut(&mut self) -> &mut U {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { self.data.as_mut() }
    }
}

impl<U: ?Sized> Drop for MappedPushLockWriteGuard<'_, U> {
    /// Releases the exclusive hold (`FltReleasePushLock`). Asserts `IRQL <= APC_LEVEL` in debug builds.
    #[inline]
    fn drop(&mut self) {
        self.raw.unlock_exclusive();
    }
}

impl<U: ?Sized + fmt::Debug> fmt::Debug for MappedPushLockWriteGuard<'_, U> {
    /// The part's `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::{MappedPushLockReadGuard, PushLock, PushLockReadGuard, PushLockWriteGuard};
    use core::mem::{align_of, size_of};
    use fltsim as _;

    #[test]
    fn word_is_first_and_aligned() {
        assert_eq!(align_of::<PushLock<u8>>(), 8);
        assert_eq!(core::mem::offset_of!(PushLock<u64>, raw), 0);
    }

    #[test]
    fn guards_are_one_pointer_mapped_guards_two() {
        assert_eq!(
            size_of::<PushLockReadGuard<'_, [u8; 64]>>(),
            size_of::<usize>()
        );
        assert_eq!(
            size_of::<PushLockWriteGuard<'_, [u8; 64]>>(),
            size_of::<usize>()
        );
        assert_eq!(
            size_of::<MappedPushLockReadGuard<'_, u32>>(),
            2 * size_of::<usize>()
        );
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn release_layout_is_the_word_plus_the_data() {
        assert_eq!(size_of::<PushLock<()>>(), 8);
        assert_eq!(size_of::<PushLock<u8>>(), 16);
        assert_eq!(size_of::<PushLock<[u64; 3]>>(), 32);
        assert_eq!(size_of::<PushLock<u128>>(), 32);
    }
}
