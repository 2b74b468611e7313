//! Debug builds: who holds a push lock, so that misuse that would hang (or silently corrupt APC state)
//! on Windows fails at once with a message instead. Release builds: a zero-sized no-op.
//!
//! Windows offers nothing here: push locks have no owner query, no `!locks` support and no Driver
//! Verifier deadlock detection (`docs/kernel-rules.md`, "Push locks"). The state lives in the lock itself,
//! in debug-only fields, so tracking needs no allocation and no global table:
//!
//! - the exclusive owner: one word holding the owner's thread token (0 when not held exclusive);
//! - shared holders: [`READER_SLOTS`] words, each holding the token of one thread's shared hold. A
//!   shared acquire that finds every slot taken is counted in `untracked_readers` instead; checks on
//!   untracked holds are best effort (an upgrade or a recursive shared acquire by an untracked reader
//!   is not caught, and a wrong-thread shared release is caught only when no untracked hold exists).
//!
//! A thread token is `PsGetCurrentThreadId() | 1` on Windows (thread ids are multiples of 4, so the
//! token is never 0) and, in host builds, the address of a thread-local (distinct for live threads;
//! a loom thread-local under `cfg(loom)`).
//! Only the calling thread ever stores its own token, so relaxed atomics suffice: a thread compares
//! the words only with its own token, which no other thread writes.

/// Shared holds tracked per lock before falling back to a count (debug builds only).
#[cfg(debug_assertions)]
pub(crate) const READER_SLOTS: usize = 16;

#[cfg(debug_assertions)]
pub(crate) use debug::Tracker;
#[cfg(not(debug_assertions))]
pub(crate) use release::Tracker;

#[cfg(debug_assertions)]
mod debug {
    use core::sync::atomic::AtomicUsize;
    use core::sync::atomic::Ordering::Relaxed;

    use super::READER_SLOTS;

    /// The calling thread's token: never 0, distinct for threads alive at the same time.
    #[cfg(windows)]
    fn current_thread() -> usize {
        // SAFETY: PsGetCurrentThreadId has no preconditions (any IRQL) and only reads the thread id.
        let id = unsafe { windows_sys::Wdk::System::SystemServices::PsGetCurrentThreadId() };
        id.addr() | 1
    }

    /// The calling thread's token: never 0, distinct for threads alive at the same time.
    #[cfg(all(not(windows), not(loom)))]
    fn current_thread() -> usize {
        std::thread_local! {
            static ANCHOR: u8 = const { 0 };
        }
        ANCHOR.with(|anchor| core::ptr::from_ref(anchor).addr())
    }

    /// The calling thread's token under loom, whose threads share one OS thread (so one `std`
    /// thread-local): the address of a loom thread-local, one per modelled thread.
    #[cfg(all(not(windows), loom))]
    fn current_thread() -> usize {
        loom::thread_local! {
            static ANCHOR: u8 = 0;
        }
        ANCHOR.with(|anchor| core::ptr::from_ref(anchor).addr())
    }

    /// Holders of one push lock (see the module documentation).
    pub(crate) struct Tracker {
        exclusive_owner: AtomicUsize,
        readers: [AtomicUsize; READER_SLOTS],
        untracked_readers: AtomicUsize,
    }

    impl Tracker {
        /// No holders.
        pub(crate) const fn new() -> Self {
            Self {
                exclusive_owner: AtomicUsize::new(0),
                readers: [const { AtomicUsize::new(0) }; READER_SLOTS],
                untracked_readers: AtomicUsize::new(0),
            }
        }

        fn holds_shared(&self, me: usize) -> bool {
            self.readers.iter().any(|slot| slot.load(Relaxed) == me)
        }

        /// Before an exclusive acquire by the calling thread.
        #[track_caller]
        pub(crate) fn before_exclusive(&self, routine: &str, address: usize) {
            let me = current_thread();
            assert!(
                self.exclusive_owner.load(Relaxed) != me,
                "iotally: push lock recursion: {routine} on push lock {address:#x}, which this thread \
                 already holds exclusive (push locks are not recursive: on Windows the thread would \
                 wait for itself forever)"
            );
            assert!(
                !self.holds_shared(me),
                "iotally: push lock upgrade: {routine} on push lock {address:#x}, which this thread \
                 holds shared (no shared-to-exclusive upgrade: on Windows the thread would wait for \
                 its own shared hold forever; drop the read guard first)"
            );
        }

        /// After the calling thread was granted the lock exclusive.
        pub(crate) fn exclusive_acquired(&self) {
            self.exclusive_owner.store(current_thread(), Relaxed);
        }

        /// Before a shared acquire by the calling thread.
        #[track_caller]
        pub(crate) fn before_shared(&self, routine: &str, address: usize) {
            let me = current_thread();
            assert!(
                self.exclusive_owner.load(Relaxed) != me,
                "iotally: push lock recursion: {routine} on push lock {address:#x}, which this thread \
                 holds exclusive (on Windows the thread would wait for itself forever; use the write \
                 guard to read)"
            );
            assert!(
                !self.holds_shared(me),
                "iotally: push lock recursion: {routine} on push lock {address:#x}, which this thread \
                 already holds shared (push locks are not recursive: on Windows this hangs as soon \
                 as an exclusive acquirer waits between the two shared acquires; pass the first \
                 guard along instead)"
            );
        }

        /// After the calling thread was granted the lock shared.
        pub(crate) fn shared_acquired(&self) {
            let me = current_thread();
            let claimed = self
                .readers
                .iter()
                .any(|slot| slot.compare_exchange(0, me, Relaxed, Relaxed).is_ok());
            if !claimed {
                self.untracked_readers.fetch_add(1, Relaxed);
            }
        }

        /// Before the calling thread releases an exclusive hold.
        #[track_caller]
        pub(crate) fn exclusive_releasing(&self, routine: &str, address: usize) {
            let me = current_thread();
            assert!(
                self.exclusive_owner.load(Relaxed) == me,
                "iotally: push lock released on the wrong thread: {routine} on push lock {address:#x}, \
                 held exclusive by another thread (release on the acquiring thread: the release \
                 re-enables that thread's normal kernel APCs)"
            );
            self.exclusive_owner.store(0, Relaxed);
        }

        /// Before the calling thread releases a shared hold.
        #[track_caller]
        pub(crate) fn shared_releasing(&self, routine: &str, address: usize) {
            let me = current_thread();
            let cleared = self
                .readers
                .iter()
                .any(|slot| slot.compare_exchange(me, 0, Relaxed, Relaxed).is_ok());
            if cleared {
                return;
            }
            let untracked = self
                .untracked_readers
                .fetch_update(Relaxed, Relaxed, |count| count.checked_sub(1));
            assert!(
                untracked.is_ok(),
                "iotally: push lock released on the wrong thread: {routine} on push lock {address:#x}, \
                 which this thread does not hold shared (release on the acquiring thread: the \
                 release re-enables that thread's normal kernel APCs)"
            );
        }

        /// Before the lock is deleted: no thread may hold it.
        #[track_caller]
        pub(crate) fn before_delete(&self, routine: &str, address: usize) {
            let held = self.exclusive_owner.load(Relaxed) != 0
                || self.untracked_readers.load(Relaxed) != 0
                || self.readers.iter().any(|slot| slot.load(Relaxed) != 0);
            assert!(
                !held,
                "iotally: {routine} on push lock {address:#x} while it is held (a guard was leaked, \
                 e.g. with mem::forget)"
            );
        }

        /// Panics unless the calling thread holds the lock exclusive.
        #[track_caller]
        pub(crate) fn assert_held_exclusive(&self, address: usize) {
            assert!(
                self.exclusive_owner.load(Relaxed) == current_thread(),
                "iotally: push lock {address:#x} is not held exclusive by this thread, which the \
                 caller requires (take PushLock::write first)"
            );
        }
    }
}

#[cfg(not(debug_assertions))]
mod release {
    /// Release builds track nothing: zero-sized, every check a no-op.
    pub(crate) struct Tracker;

    #[expect(
        clippy::unused_self,
        reason = "the debug tracker's interface, with nothing to track"
    )]
    impl Tracker {
        pub(crate) const fn new() -> Self {
            Self
        }
        #[inline]
        pub(crate) fn before_exclusive(&self, _routine: &str, _address: usize) {}
        #[inline]
        pub(crate) fn exclusive_acquired(&self) {}
        #[inline]
        pub(crate) fn before_shared(&self, _routine: &str, _address: usize) {}
        #[inline]
        pub(crate) fn shared_acquired(&self) {}
        #[inline]
        pub(crate) fn exclusive_releasing(&self, _routine: &str, _address: usize) {}
        #[inline]
        pub(crate) fn shared_releasing(&self, _routine: &str, _address: usize) {}
        #[inline]
        pub(crate) fn before_delete(&self, _routine: &str, _address: usize) {}
        /// Nothing is tracked, so nothing is checked.
        #[inline]
        pub(crate) fn assert_held_exclusive(&self, _address: usize) {}
    }
}
