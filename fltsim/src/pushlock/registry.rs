//! The simulator's own bookkeeping of push locks, keyed by address (like Driver Verifier's): which
//! locks are initialized or deleted, who holds them, who is acquiring them. Windows keeps none of
//! this (no owner query, no `!locks`, no Verifier deadlock detection for push locks); the simulator
//! uses it to turn misuse that would hang or bugcheck into a panic naming the rule.
//!
//! Each check computes its verdict under the registry's mutex and panics after releasing it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use super::word;

/// How a thread holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Acquired shared.
    Shared,
    /// Acquired exclusive.
    Exclusive,
}

/// Where a hold was taken: the export, and the driver callback the thread was running.
#[derive(Clone, Copy, Debug)]
struct Origin {
    routine: &'static str,
    during: Option<&'static str>,
}

/// One push lock the simulator has seen initialized.
#[derive(Default)]
struct Record {
    deleted: bool,
    exclusive_owner: Option<(ThreadId, Origin)>,
    /// Shared holders: how many holds each, and where the first was taken.
    shared: HashMap<ThreadId, (u32, Origin)>,
    /// Threads between the registry check of an acquire and recording the hold (waiting or about to).
    acquiring: usize,
}

impl Record {
    fn is_held(&self) -> bool {
        self.exclusive_owner.is_some() || !self.shared.is_empty()
    }

    fn is_exclusive_owner(&self, thread: ThreadId) -> bool {
        self.exclusive_owner
            .is_some_and(|(owner, _)| owner == thread)
    }

    fn holds(&self) -> Vec<Hold> {
        let exclusive = self.exclusive_owner.map(|(thread, origin)| Hold {
            thread,
            mode: Mode::Exclusive,
            count: 1,
            routine: origin.routine,
            during: origin.during,
        });
        let shared = self.shared.iter().map(|(&thread, &(count, origin))| Hold {
            thread,
            mode: Mode::Shared,
            count,
            routine: origin.routine,
            during: origin.during,
        });
        exclusive.into_iter().chain(shared).collect()
    }
}

/// One thread's hold of a push lock, for the wait-for graph and its reports.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    /// The holding thread.
    pub thread: ThreadId,
    /// How it holds the lock.
    pub mode: Mode,
    /// How many holds (shared holds nest).
    pub count: u32,
    /// The export that acquired it.
    pub routine: &'static str,
    /// The driver callback the thread was running then, if any.
    pub during: Option<&'static str>,
}

/// Every push lock seen since the session started, by address.
static LOCKS: Mutex<Option<HashMap<usize, Record>>> = Mutex::new(None);

fn locks() -> MutexGuard<'static, Option<HashMap<usize, Record>>> {
    LOCKS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Panics with `message` if there is one (after the registry's mutex is released).
#[track_caller]
fn verdict(message: Option<String>) {
    if let Some(message) = message {
        panic!("{message}");
    }
}

/// Forgets every lock: called when a new [`crate::Sim`] starts.
pub fn reset() {
    *locks() = Some(HashMap::new());
}

/// Addresses of locks initialized and not deleted, sorted.
pub fn live() -> Vec<usize> {
    let guard = locks();
    let mut addresses: Vec<usize> = guard
        .iter()
        .flat_map(HashMap::iter)
        .filter(|(_, record)| !record.deleted)
        .map(|(&address, _)| address)
        .collect();
    addresses.sort_unstable();
    addresses
}

/// Number of threads inside an acquire of the lock at `address` that have not been granted it yet.
pub fn waiting(address: usize) -> usize {
    locks()
        .as_ref()
        .and_then(|map| map.get(&address))
        .map_or(0, |record| record.acquiring)
}

/// Records `FltInitializePushLock` at `address`; `word` is the current content of the storage.
///
/// # Panics
/// If the address holds a live lock that is held or being acquired: re-initializing it would wipe
/// the holders' and waiters' state (their releases would then corrupt the word, and waiters would
/// never be woken).
#[track_caller]
pub fn initialize(routine: &str, address: usize) {
    let message = {
        let mut guard = locks();
        let map = guard.get_or_insert_with(HashMap::new);
        match map.get(&address) {
            Some(record) if !record.deleted && (record.is_held() || record.acquiring > 0) => {
                Some(format!(
                    "fltsim: {routine} on push lock {address:#x} which is initialized and {} (re-initializing \
                 a lock in use wipes its holders and waiters)",
                    if record.is_held() {
                        "held"
                    } else {
                        "being acquired"
                    }
                ))
            }
            _ => {
                map.insert(address, Record::default());
                None
            }
        }
    };
    verdict(message);
}

/// The misuse, if any, of a `mode` acquire of `address` by the calling thread.
fn acquire_misuse(
    routine: &str,
    address: usize,
    mode: Mode,
    record: Option<&Record>,
) -> Option<String> {
    let me = thread::current().id();
    let Some(record) = record else {
        return Some(format!(
            "fltsim: {routine} on push lock {address:#x} which was never initialized with FltInitializePushLock"
        ));
    };
    if record.deleted {
        return Some(format!(
            "fltsim: {routine} on push lock {address:#x} after FltDeletePushLock (use after delete)"
        ));
    }
    let holds_shared = record.shared.contains_key(&me);
    match (mode, record.is_exclusive_owner(me), holds_shared) {
        (Mode::Exclusive, true, _) => Some(format!(
            "fltsim: push lock deadlock: {routine} on push lock {address:#x} which this thread already \
             holds exclusive (push locks are not recursive: the thread would wait for itself forever)"
        )),
        (Mode::Exclusive, false, true) => Some(format!(
            "fltsim: push lock deadlock: {routine} on push lock {address:#x} which this thread holds \
             shared (no shared-to-exclusive upgrade: the thread would wait for its own shared hold forever)"
        )),
        (Mode::Shared, true, _) => Some(format!(
            "fltsim: push lock deadlock: {routine} on push lock {address:#x} which this thread already \
             holds exclusive (the thread would wait for itself forever)"
        )),
        _ => None,
    }
}

/// Checks a `mode` acquire of `address` by the calling thread and counts it as in progress.
/// Returns whether the thread already holds the lock shared.
///
/// # Panics
/// On an uninitialized or deleted lock, a recursive exclusive acquire, a shared-to-exclusive upgrade,
/// or a shared acquire by the exclusive holder.
#[track_caller]
pub fn begin_acquire(routine: &str, address: usize, mode: Mode) -> bool {
    let me = thread::current().id();
    let (message, holds_shared) = {
        let mut guard = locks();
        let record = guard.as_mut().and_then(|map| map.get_mut(&address));
        let message = acquire_misuse(routine, address, mode, record.as_deref());
        let mut holds_shared = false;
        if let (None, Some(record)) = (&message, record) {
            record.acquiring += 1;
            holds_shared = record.shared.contains_key(&me);
        }
        (message, holds_shared)
    };
    verdict(message);
    holds_shared
}

/// Records that the calling thread now holds `address` in `mode` (after [`begin_acquire`]), taken
/// with `routine`.
pub fn acquired(address: usize, mode: Mode, routine: &'static str) {
    crate::hang::track_thread();
    let origin = Origin {
        routine,
        during: crate::hang::current_callback(),
    };
    let me = thread::current().id();
    let mut guard = locks();
    if let Some(record) = guard.as_mut().and_then(|map| map.get_mut(&address)) {
        record.acquiring -= 1;
        match mode {
            Mode::Exclusive => record.exclusive_owner = Some((me, origin)),
            Mode::Shared => record.shared.entry(me).or_insert((0, origin)).0 += 1,
        }
    }
}

/// The holds of each lock at `addresses` (locks nobody holds are absent).
pub fn holders(addresses: &[usize]) -> HashMap<usize, Vec<Hold>> {
    let guard = locks();
    let Some(map) = guard.as_ref() else {
        return HashMap::new();
    };
    addresses
        .iter()
        .filter_map(|address| {
            let holds = map.get(address)?.holds();
            (!holds.is_empty()).then_some((*address, holds))
        })
        .collect()
}

/// Every hold of every live lock, sorted by address.
pub fn all_holds() -> Vec<(usize, Hold)> {
    let guard = locks();
    let mut holds: Vec<(usize, Hold)> = guard
        .iter()
        .flat_map(HashMap::iter)
        .filter(|(_, record)| !record.deleted)
        .flat_map(|(&address, record)| record.holds().into_iter().map(move |h| (address, h)))
        .collect();
    holds.sort_by_key(|(address, hold)| (*address, format!("{:?}", hold.thread)));
    holds
}

/// Ends an acquire that did not complete (it panicked instead of hanging).
pub fn abandon_acquire(address: usize) {
    if let Some(record) = locks().as_mut().and_then(|map| map.get_mut(&address)) {
        record.acquiring -= 1;
    }
}

/// Checks and records a release of `address` by the calling thread, before the word is released.
/// Returns the mode the thread held it in.
///
/// # Panics
/// On an uninitialized or deleted lock, or when the calling thread does not hold it (including a
/// release on a thread other than the acquiring one).
#[track_caller]
pub fn release(routine: &str, address: usize) -> Mode {
    let me = thread::current().id();
    let result = {
        let mut guard = locks();
        match guard.as_mut().and_then(|map| map.get_mut(&address)) {
            None => Err(format!(
                "fltsim: {routine} on push lock {address:#x} which was never initialized with FltInitializePushLock"
            )),
            Some(record) if record.deleted => Err(format!(
                "fltsim: {routine} on push lock {address:#x} after FltDeletePushLock (use after delete)"
            )),
            Some(record) if record.is_exclusive_owner(me) => {
                record.exclusive_owner = None;
                Ok(Mode::Exclusive)
            }
            Some(record) => match record.shared.get_mut(&me) {
                Some((count, _)) => {
                    *count -= 1;
                    if *count == 0 {
                        record.shared.remove(&me);
                    }
                    Ok(Mode::Shared)
                }
                None => Err(format!(
                    "fltsim: {routine} on push lock {address:#x} by a thread that does not hold it \
                     (one release per acquire, on the acquiring thread: the release re-enables that \
                     thread's normal kernel APCs)"
                )),
            },
        }
    };
    match result {
        Ok(mode) => mode,
        Err(message) => panic!("{message}"),
    }
}

/// Checks and records `FltDeletePushLock` of `address`, whose word currently reads `word`.
///
/// # Panics
/// On an uninitialized lock, a second delete, or a lock that is held or has waiters.
#[track_caller]
pub fn delete(routine: &str, address: usize, word: usize) {
    let message = {
        let mut guard = locks();
        match guard.as_mut().and_then(|map| map.get_mut(&address)) {
            None => Some(format!(
                "fltsim: {routine} on push lock {address:#x} which was never initialized with FltInitializePushLock"
            )),
            Some(record) if record.deleted => Some(format!(
                "fltsim: {routine} on push lock {address:#x} which was already deleted (use after delete)"
            )),
            Some(record)
                if record.acquiring > 0
                    || word & word::WAITING != 0
                    || word::exclusive_waiters(word) > 0 =>
            {
                Some(format!(
                    "fltsim: {routine} on push lock {address:#x} while threads wait to acquire it"
                ))
            }
            Some(record) if record.is_held() || word & word::LOCKED != 0 => Some(format!(
                "fltsim: {routine} on push lock {address:#x} while it is held (release every hold first; \
                 the storage may be freed after the delete)"
            )),
            Some(record) => {
                record.deleted = true;
                None
            }
        }
    };
    verdict(message);
}
