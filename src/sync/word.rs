//! [`Word`]: the `EX_PUSH_LOCK` of a [`PushLock`](super::PushLock) and the five Filter Manager
//! routines that work on it.
//!
//! In every build that runs on Windows or against fltsim's exports, the word is 8 bytes of storage
//! handed to `FltInitializePushLock`, `FltAcquirePushLockShared`, `FltAcquirePushLockExclusive`,
//! `FltReleasePushLock` and `FltDeletePushLock`. Under `cfg(loom)` (model checking,
//! `tests/loom.rs`), the word is a loom atomic and the routines run fltsim's push-lock algorithm
//! (`fltsim::pushlock::word`, the algorithm behind the exports) with loom's parking queue, so that
//! loom explores every interleaving of the guards' code around them. The guards do not change:
//! only what is below this module's functions does.

#[cfg(not(loom))]
pub(super) use flt::Word;
#[cfg(loom)]
pub(super) use model::Word;

#[cfg(not(loom))]
mod flt {
    use core::cell::UnsafeCell;

    use crate::flt::{
        FltAcquirePushLockExclusive, FltAcquirePushLockShared, FltDeletePushLock,
        FltInitializePushLock, FltReleasePushLock,
    };

    /// The `EX_PUSH_LOCK` storage: one pointer-sized word, 8-byte aligned (required on x64).
    #[repr(C, align(8))]
    pub(in crate::sync) struct Word(UnsafeCell<usize>);

    impl Word {
        /// Storage not yet initialized by [`Word::initialize`].
        pub(in crate::sync) const fn new() -> Self {
            Self(UnsafeCell::new(0))
        }

        /// The `PEX_PUSH_LOCK` passed to the Flt routines.
        pub(in crate::sync) fn as_ptr(&self) -> *mut usize {
            self.0.get()
        }

        /// `FltInitializePushLock`.
        ///
        /// # Safety
        /// The word stays at this address, unmoved, until [`Word::delete`]; the caller is at
        /// `IRQL <= APC_LEVEL`.
        #[inline]
        pub(in crate::sync) unsafe fn initialize(&self) {
            // SAFETY: 8 bytes, 8-byte aligned (`Word`'s layout), at an address that stays valid and
            // unmoved until `delete` (the caller's contract), as is the IRQL.
            unsafe { FltInitializePushLock(self.as_ptr()) };
        }

        /// `FltAcquirePushLockShared`.
        ///
        /// # Safety
        /// The word was initialized and is not yet deleted; the caller is at `IRQL <= APC_LEVEL` and
        /// does not hold this lock.
        #[inline]
        pub(in crate::sync) unsafe fn acquire_shared(&self) {
            // SAFETY: an initialized, live, unmoved push lock, at a valid IRQL, not held by this
            // thread (the caller's contract).
            unsafe { FltAcquirePushLockShared(self.as_ptr()) };
        }

        /// `FltAcquirePushLockExclusive`.
        ///
        /// # Safety
        /// As for [`Word::acquire_shared`].
        #[inline]
        pub(in crate::sync) unsafe fn acquire_exclusive(&self) {
            // SAFETY: as in `acquire_shared`.
            unsafe { FltAcquirePushLockExclusive(self.as_ptr()) };
        }

        /// `FltReleasePushLock`.
        ///
        /// # Safety
        /// The calling thread holds the lock (one hold, acquired by this thread, released once) and is
        /// at `IRQL <= APC_LEVEL`.
        #[inline]
        pub(in crate::sync) unsafe fn release(&self) {
            // SAFETY: a hold of this thread on a live push lock (the caller's contract).
            unsafe { FltReleasePushLock(self.as_ptr()) };
        }

        /// `FltDeletePushLock`.
        ///
        /// # Safety
        /// The word was initialized, nobody holds it, it is deleted once and not used afterwards; the
        /// caller is at `IRQL <= APC_LEVEL`.
        #[inline]
        pub(in crate::sync) unsafe fn delete(&self) {
            // SAFETY: an initialized push lock that nobody holds, deleted once (the caller's contract).
            unsafe { FltDeletePushLock(self.as_ptr()) };
        }
    }
}

#[cfg(loom)]
mod model {
    use fltsim::pushlock::parker::ModelParker;
    use fltsim::pushlock::word;
    use loom::sync::atomic::AtomicUsize;

    /// The push lock as loom models it: the word as a loom atomic and a loom parking queue.
    pub(in crate::sync) struct Word {
        state: AtomicUsize,
        parker: ModelParker,
    }

    impl Word {
        /// A free lock.
        pub(in crate::sync) fn new() -> Self {
            Self {
                state: AtomicUsize::new(0),
                parker: ModelParker::default(),
            }
        }

        /// The word's address, for diagnostics only (nothing dereferences it under loom).
        pub(in crate::sync) fn as_ptr(&self) -> *mut usize {
            core::ptr::from_ref(&self.state).cast_mut().cast()
        }

        /// `FltInitializePushLock`: the model starts free.
        ///
        /// # Safety
        /// None needed; `unsafe` as in the Flt-backed word.
        #[expect(
            clippy::unused_self,
            reason = "the same interface as the Flt-backed word"
        )]
        pub(in crate::sync) unsafe fn initialize(&self) {}

        /// `FltAcquirePushLockShared`.
        ///
        /// # Safety
        /// None needed; `unsafe` as in the Flt-backed word.
        pub(in crate::sync) unsafe fn acquire_shared(&self) {
            let granted = word::acquire_shared(&self.state, &self.parker, false);
            assert!(granted.is_ok(), "only a recursive acquire is refused");
        }

        /// `FltAcquirePushLockExclusive`.
        ///
        /// # Safety
        /// None needed; `unsafe` as in the Flt-backed word.
        pub(in crate::sync) unsafe fn acquire_exclusive(&self) {
            word::acquire_exclusive(&self.state, &self.parker);
        }

        /// `FltReleasePushLock`: checks that the lock is held, as fltsim's export does.
        ///
        /// # Safety
        /// None needed; `unsafe` as in the Flt-backed word.
        pub(in crate::sync) unsafe fn release(&self) {
            let now = self.state.load(core::sync::atomic::Ordering::Relaxed);
            assert!(
                now & word::LOCKED != 0,
                "iotally (loom): FltReleasePushLock of a push lock nobody holds"
            );
            word::release(&self.state, &self.parker);
        }

        /// `FltDeletePushLock`: checks that nobody holds or waits for the lock, as fltsim's export
        /// does.
        ///
        /// # Safety
        /// None needed; `unsafe` as in the Flt-backed word.
        pub(in crate::sync) unsafe fn delete(&self) {
            let now = self.state.load(core::sync::atomic::Ordering::Relaxed);
            assert!(
                now == 0,
                "iotally (loom): FltDeletePushLock of a push lock in use (word {now:#x})"
            );
        }
    }
}
