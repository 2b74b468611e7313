//! Parking queues for the push-lock algorithm: by address with `parking_lot_core` for the real
//! exports, and a loom Mutex + Condvar queue for model checking.
//!
//! The real parker is where a push-lock wait becomes visible to [`crate::hang`]: before each sleep the
//! thread registers what it waits for and checks the wait-for graph and the bound, and it sleeps at
//! most a slice at a time, so a deadlock is reported when it closes and a long wait when the bound
//! passes, instead of hanging.

use std::cell::Cell;
use std::time::Instant;

use super::registry::Mode;
use super::word::{Parker, Wait};
use crate::hang;

/// Park tokens: what a parked thread waits for.
const SHARED_TOKEN: usize = 0;
/// See [`SHARED_TOKEN`].
const EXCLUSIVE_TOKEN: usize = 1;

/// The `parking_lot_core` queue keyed by the address of the lock word.
pub struct AddressParker {
    key: usize,
    /// When the acquire this parker serves first had to wait (the bound counts from there).
    since: Cell<Option<Instant>>,
}

impl AddressParker {
    /// The queue of the lock word at `address`.
    #[must_use]
    pub const fn new(address: usize) -> Self {
        Self {
            key: address,
            since: Cell::new(None),
        }
    }
}

impl Parker for AddressParker {
    fn park(&self, kind: Wait, validate: impl FnOnce() -> bool) {
        let (token, mode) = match kind {
            Wait::Shared => (SHARED_TOKEN, Mode::Shared),
            Wait::Exclusive => (EXCLUSIVE_TOKEN, Mode::Exclusive),
        };
        let since = *self.since.get().get_or_insert_with(Instant::now);
        self.since.set(Some(since));
        let registration = hang::register_since(
            hang::Wait::PushLock {
                address: self.key,
                mode,
            },
            since,
        );
        registration.check();
        let deadline = Instant::now() + registration.slice();
        // SAFETY: the key is the address of a push-lock word, which only this module parks on; the
        // validate closure only loads an atomic (it neither panics nor calls parking_lot), and
        // before_sleep/timed_out do nothing. A timed-out wait returns like a spurious wake-up, which
        // the algorithm handles (it re-reads the word and parks again).
        unsafe {
            parking_lot_core::park(
                self.key,
                validate,
                || {},
                |_, _| {},
                parking_lot_core::ParkToken(token),
                Some(deadline),
            );
        }
        drop(registration);
    }

    fn unpark(&self, choose: impl FnOnce() -> Wait, after: impl FnOnce(bool)) {
        let mut choose = Some(choose);
        let mut chosen = None;
        let mut woke_exclusive = false;
        let filter = |token: parking_lot_core::ParkToken| {
            let wanted = *chosen.get_or_insert_with(|| choose.take().map_or(Wait::Shared, |f| f()));
            match (wanted, token.0) {
                (Wait::Shared, SHARED_TOKEN) => parking_lot_core::FilterOp::Unpark,
                (Wait::Exclusive, EXCLUSIVE_TOKEN) if !woke_exclusive => {
                    woke_exclusive = true;
                    parking_lot_core::FilterOp::Unpark
                }
                _ => parking_lot_core::FilterOp::Skip,
            }
        };
        let callback = |result: parking_lot_core::UnparkResult| {
            after(result.have_more_threads);
            parking_lot_core::DEFAULT_UNPARK_TOKEN
        };
        // SAFETY: same key discipline as `park`; the filter and callback only read and update the
        // lock word's atomics and local state (no panic, no parking_lot calls).
        unsafe {
            parking_lot_core::unpark_filter(self.key, filter, callback);
        }
    }
}

/// A loom-checked parking queue for one lock: a Mutex-protected list of parked threads and a Condvar.
#[cfg(loom)]
#[derive(Default)]
pub struct ModelParker {
    queue: loom::sync::Mutex<ModelQueue>,
    woken: loom::sync::Condvar,
}

/// The parked threads of a [`ModelParker`], in arrival order.
#[cfg(loom)]
#[derive(Default)]
struct ModelQueue {
    next_ticket: usize,
    parked: std::collections::VecDeque<(usize, Wait)>,
}

#[cfg(loom)]
impl Parker for ModelParker {
    fn park(&self, kind: Wait, validate: impl FnOnce() -> bool) {
        let mut queue = self.queue.lock().unwrap();
        if !validate() {
            return;
        }
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.parked.push_back((ticket, kind));
        while queue.parked.iter().any(|&(t, _)| t == ticket) {
            queue = self.woken.wait(queue).unwrap();
        }
    }

    fn unpark(&self, choose: impl FnOnce() -> Wait, after: impl FnOnce(bool)) {
        let mut queue = self.queue.lock().unwrap();
        if !queue.parked.is_empty() {
            match choose() {
                Wait::Shared => queue.parked.retain(|&(_, kind)| kind != Wait::Shared),
                Wait::Exclusive => {
                    if let Some(at) = queue
                        .parked
                        .iter()
                        .position(|&(_, kind)| kind == Wait::Exclusive)
                    {
                        queue.parked.remove(at);
                    }
                }
            }
        }
        after(!queue.parked.is_empty());
        drop(queue);
        self.woken.notify_all();
    }
}
