//! The push-lock algorithm: transitions of the caller's 8-byte word and parking of waiters.
//!
//! This module knows nothing about threads' identities, IRQL or misuse; it is the lock alone, generic
//! over the atomic word ([`LockWord`]) and the parking queue ([`Parker`]) so that loom can model-check
//! it (`fltsim/tests/loom_pushlock.rs`) with the same code the exports run.
//!
//! # Bits of the word in the simulator
//!
//! Public write-ups of `EX_PUSH_LOCK` give bit 0 Locked, bit 1 Waiting, bit 2 Waking, bit 3
//! `MultipleShared` and the share count in the upper bits; when Waiting is set, Windows stores in the
//! upper bits the address of an in-stack wait block list instead of the share count. The simulator
//! keeps waiters in `parking_lot_core`'s queue keyed by the word's address, so its upper bits never hold
//! an address. Exactly:
//!
//! | bits | name | meaning in fltsim |
//! |---|---|---|
//! | 0 | [`LOCKED`] | held, shared or exclusive |
//! | 1 | [`WAITING`] | some thread is parked on the lock, or has decided to park; a release that frees the lock wakes waiters when it is set |
//! | 2 | [`WAKING`] | never set (Windows: a thread is walking the wait list; here the parking queue's lock serializes waking) |
//! | 3 | [`MULTIPLE_SHARED`] | the share count is 2 or more (Windows sets it only while waiters hold the count in a wait block) |
//! | 4–47 | [`SHARE_MASK`] | number of shared holds; Locked with a share count of 0 means held exclusive, as on Windows |
//! | 48–63 | [`EXCLUSIVE_WAITER_MASK`] | number of exclusive acquirers waiting: parked, about to park, or woken and not yet granted (Windows finds them in the wait list) |
//!
//! # Policy
//! - Shared: granted when the lock is free or held shared, **and no exclusive acquirer is waiting**
//!   (writer preference); otherwise the thread waits. This includes the short window in which the
//!   lock is free and a woken exclusive waiter has not yet taken it: the reader waits there too, so a
//!   reader that arrives after a writer queued never gets in first. (Microsoft's page says an unowned
//!   lock is granted shared at once; the window is not observable by a caller, and closing it is what
//!   makes writer preference checkable.)
//! - Exclusive: granted only when the lock is free; barging is allowed (not fair, as documented).
//! - A release that frees the lock wakes one exclusive waiter if any is counted, otherwise every
//!   shared waiter. Woken threads retry; nothing is handed off.
//!
//! A waiter parks only after `validate` re-reads the word under the parking queue's lock and still sees
//! Waiting set and the lock unavailable; a waker clears Waiting under the same lock when it leaves the
//! queue empty. So a waker either finds the waiter in the queue or the waiter sees the change and
//! retries: no lost wake-up.

use core::sync::atomic::Ordering;

/// Bit 0: the lock is held (shared or exclusive).
pub const LOCKED: usize = 1;
/// Bit 1: a thread is parked on the lock or about to park.
pub const WAITING: usize = 1 << 1;
/// Bit 2: never set by the simulator (see the module documentation).
pub const WAKING: usize = 1 << 2;
/// Bit 3: two or more shared holds.
pub const MULTIPLE_SHARED: usize = 1 << 3;
/// Position of the share count.
pub const SHARE_SHIFT: u32 = 4;
/// One shared hold.
pub const SHARE_ONE: usize = 1 << SHARE_SHIFT;
/// Bits 4–47: the share count.
pub const SHARE_MASK: usize = ((1 << 44) - 1) << SHARE_SHIFT;
/// Position of the exclusive-waiter count.
pub const EXCLUSIVE_WAITER_SHIFT: u32 = 48;
/// One exclusive waiter.
pub const EXCLUSIVE_WAITER_ONE: usize = 1 << EXCLUSIVE_WAITER_SHIFT;
/// Bits 48–63: the number of waiting exclusive acquirers.
pub const EXCLUSIVE_WAITER_MASK: usize = 0xFFFF << EXCLUSIVE_WAITER_SHIFT;

// The layout above needs a 64-bit word, like EX_PUSH_LOCK on x64 (the only target the driver ships for).
const _: () = assert!(usize::BITS == 64);

/// Number of shared holds recorded in `word`.
#[must_use]
pub const fn share_count(word: usize) -> usize {
    (word & SHARE_MASK) >> SHARE_SHIFT
}

/// Number of waiting exclusive acquirers recorded in `word`.
#[must_use]
pub const fn exclusive_waiters(word: usize) -> usize {
    (word & EXCLUSIVE_WAITER_MASK) >> EXCLUSIVE_WAITER_SHIFT
}

/// Whether `word` says the lock is held exclusive (Locked with no shared holds).
#[must_use]
pub const fn is_exclusive(word: usize) -> bool {
    word & LOCKED != 0 && share_count(word) == 0
}

/// Whether a shared acquire may be granted now (writer preference).
const fn can_share(word: usize) -> bool {
    exclusive_waiters(word) == 0 && (word & LOCKED == 0 || share_count(word) > 0)
}

/// `word` with its share count set to `count`, Locked and `MultipleShared` set to match.
const fn with_share_count(word: usize, count: usize) -> usize {
    let mut new = (word & !(SHARE_MASK | LOCKED | MULTIPLE_SHARED)) | (count << SHARE_SHIFT);
    if count > 0 {
        new |= LOCKED;
    }
    if count > 1 {
        new |= MULTIPLE_SHARED;
    }
    new
}

/// The atomic operations the algorithm needs on the lock word.
pub trait LockWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> usize;
    /// Atomic compare-and-exchange (may fail spuriously).
    ///
    /// # Errors
    /// The value found, when it is not `current`.
    fn compare_exchange_weak(
        &self,
        current: usize,
        new: usize,
        success: Ordering,
        failure: Ordering,
    ) -> Result<usize, usize>;
    /// Atomic AND, returning the previous value.
    fn fetch_and(&self, value: usize, order: Ordering) -> usize;
}

/// Implements [`LockWord`] for an atomic type with the standard library's methods.
macro_rules! lock_word {
    ($atomic:ty) => {
        impl LockWord for $atomic {
            fn load(&self, order: Ordering) -> usize {
                self.load(order)
            }
            fn compare_exchange_weak(
                &self,
                current: usize,
                new: usize,
                success: Ordering,
                failure: Ordering,
            ) -> Result<usize, usize> {
                self.compare_exchange_weak(current, new, success, failure)
            }
            fn fetch_and(&self, value: usize, order: Ordering) -> usize {
                self.fetch_and(value, order)
            }
        }
    };
}

lock_word!(core::sync::atomic::AtomicUsize);
#[cfg(loom)]
lock_word!(loom::sync::atomic::AtomicUsize);

/// What a parked thread waits for; also what a waker chooses to wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A shared acquirer (a waker choosing this wakes every shared waiter).
    Shared,
    /// An exclusive acquirer (a waker choosing this wakes the first exclusive waiter).
    Exclusive,
}

/// A queue of parked threads for one lock.
pub trait Parker {
    /// Parks the calling thread as a `kind` waiter if `validate()`, run under the queue's lock, is
    /// true; returns when a waker has unparked it (or at once if `validate()` was false).
    fn park(&self, kind: Wait, validate: impl FnOnce() -> bool);
    /// Under the queue's lock: if threads are parked, `choose()` picks which kind to wake
    /// ([`Wait::Exclusive`]: the first exclusive waiter; [`Wait::Shared`]: every shared waiter); then
    /// `after(have_more)` runs, `have_more` telling whether parked threads remain; then the chosen
    /// threads are woken. `choose` and `after` must not panic.
    fn unpark(&self, choose: impl FnOnce() -> Wait, after: impl FnOnce(bool));
}

/// A shared acquire by a thread that already holds the lock shared would have to wait behind an
/// exclusive waiter, which itself waits for that shared hold: the thread would hang on Windows.
#[derive(Debug, PartialEq, Eq)]
pub struct WouldHang {
    /// The lock word seen.
    pub word: usize,
}

/// Acquires the lock shared, waiting while it is held exclusive or an exclusive acquirer waits.
///
/// With `holds_shared` (the caller already holds it shared), returns [`WouldHang`] instead of waiting.
///
/// # Errors
/// [`WouldHang`], only when `holds_shared` and the acquire would have to wait.
pub fn acquire_shared(
    word: &impl LockWord,
    parker: &impl Parker,
    holds_shared: bool,
) -> Result<(), WouldHang> {
    let mut current = word.load(Ordering::Relaxed);
    loop {
        if can_share(current) {
            let new = with_share_count(current, share_count(current) + 1);
            match word.compare_exchange_weak(current, new, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
            continue;
        }
        if holds_shared {
            return Err(WouldHang { word: current });
        }
        if current & WAITING == 0
            && let Err(seen) = word.compare_exchange_weak(
                current,
                current | WAITING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
        {
            current = seen;
            continue;
        }
        parker.park(Wait::Shared, || {
            let now = word.load(Ordering::Relaxed);
            now & WAITING != 0 && !can_share(now)
        });
        current = word.load(Ordering::Relaxed);
    }
}

/// Acquires the lock exclusive, waiting while it is held.
pub fn acquire_exclusive(word: &impl LockWord, parker: &impl Parker) {
    let mut counted = false;
    let mut current = word.load(Ordering::Relaxed);
    loop {
        if current & LOCKED == 0 {
            let mut new = current | LOCKED;
            if counted {
                new -= EXCLUSIVE_WAITER_ONE;
            }
            match word.compare_exchange_weak(current, new, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
            continue;
        }
        let mut new = current | WAITING;
        if !counted {
            assert!(
                exclusive_waiters(current) < exclusive_waiters(EXCLUSIVE_WAITER_MASK),
                "fltsim: more than 65535 exclusive waiters on one push lock"
            );
            new += EXCLUSIVE_WAITER_ONE;
        }
        if new != current {
            match word.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => counted = true,
                Err(seen) => {
                    current = seen;
                    continue;
                }
            }
        }
        parker.park(Wait::Exclusive, || {
            let now = word.load(Ordering::Relaxed);
            now & WAITING != 0 && now & LOCKED != 0
        });
        current = word.load(Ordering::Relaxed);
    }
}

/// Releases one hold (shared if the word records shared holds, otherwise exclusive) and wakes waiters
/// if this release freed the lock and Waiting is set.
///
/// The caller must hold the lock (the exports check this in their registry first).
pub fn release(word: &impl LockWord, parker: &impl Parker) {
    let mut current = word.load(Ordering::Relaxed);
    loop {
        debug_assert!(current & LOCKED != 0, "release of a free push lock");
        let new = match share_count(current) {
            0 => current & !LOCKED,
            count => with_share_count(current, count - 1),
        };
        match word.compare_exchange_weak(current, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {
                if new & (LOCKED | WAITING) == WAITING {
                    wake(word, parker);
                }
                return;
            }
            Err(seen) => current = seen,
        }
    }
}

/// Wakes one exclusive waiter if any is counted, otherwise every shared waiter; clears Waiting when
/// the queue is left empty.
fn wake(word: &impl LockWord, parker: &impl Parker) {
    parker.unpark(
        || {
            if exclusive_waiters(word.load(Ordering::Relaxed)) > 0 {
                Wait::Exclusive
            } else {
                Wait::Shared
            }
        },
        |have_more| {
            if !have_more {
                word.fetch_and(!WAITING, Ordering::Relaxed);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_count_sets_locked_and_multiple_shared() {
        assert_eq!(with_share_count(0, 1), LOCKED | SHARE_ONE);
        assert_eq!(
            with_share_count(0, 2),
            LOCKED | MULTIPLE_SHARED | (2 * SHARE_ONE)
        );
        assert_eq!(
            with_share_count(LOCKED | MULTIPLE_SHARED | (2 * SHARE_ONE) | WAITING, 0),
            WAITING
        );
    }

    #[test]
    fn writer_preference_in_can_share() {
        assert!(can_share(0));
        assert!(can_share(LOCKED | SHARE_ONE));
        assert!(!can_share(LOCKED));
        assert!(!can_share(LOCKED | SHARE_ONE | EXCLUSIVE_WAITER_ONE));
        assert!(!can_share(EXCLUSIVE_WAITER_ONE));
    }
}
