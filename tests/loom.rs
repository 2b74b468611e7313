//! Model checks with loom of the driver's own code: the `PushLock<T>` guards (acquire, deref, map,
//! release, delete) and the tally table's lock-free counters, run under the push lock exactly as the
//! driver runs them (record I/O under the shared guard, move and evict entries under the exclusive
//! one). Under `cfg(loom)` the push lock's word runs fltsim's push-lock algorithm on loom atomics, the
//! lock's data cell is loom's `UnsafeCell` (every access through a guard is checked for races), and
//! the table's counters are loom atomics (README, "Reliability").
//!
//! Every interleaving is explored within a preemption bound. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom`. A debug build checks the same models
//! with the guards' debug holder tracking and IRQL assertions in them, about ten times slower (CI runs
//! the small models there).
#![cfg(loom)]

use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use allocator_api2::alloc::Global;
use allocator_api2::boxed::Box;
use iotally::stats::Stat;
use iotally::sync::{MappedPushLockReadGuard, PushLock, PushLockReadGuard, PushLockWriteGuard};
use iotally::table::{FileKey, Io, OpenOutcome, Table};
use loom::sync::Arc;
use loom::thread;

/// A model checker exploring every interleaving with at most `preemptions` forced thread switches,
/// or as many as `LOOM_MAX_PREEMPTIONS` says when it is set (a longer campaign).
fn builder(preemptions: usize) -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder
}

/// Checks `model` with [`builder`] and prints how many interleavings it explored.
fn check(name: &str, preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&runs);
    let builder = builder(preemptions);
    let bound = builder.preemption_bound;
    builder.check(move || {
        counted.fetch_add(1, Relaxed);
        model();
    });
    println!(
        "loom: {name}: {} interleavings explored (preemption bound {bound:?})",
        runs.load(Relaxed)
    );
}

/// A push lock shared by the model's threads.
type Shared<T> = Arc<Pin<Box<PushLock<T>, Global>>>;

fn shared<T>(value: T) -> Shared<T> {
    Arc::new(PushLock::try_pin_in(value, Global).expect("memory"))
}

/// Runs `f` on a new model thread with its own handle to `lock`.
fn spawn<T: 'static, R: 'static>(
    lock: &Shared<T>,
    f: impl FnOnce(Shared<T>) -> R + 'static,
) -> thread::JoinHandle<R> {
    let lock = Arc::clone(lock);
    thread::spawn(move || f(lock))
}

/// A pair whose halves must always be equal: a writer updates both under one exclusive hold, so a
/// reader that sees them differ got in during the write.
#[derive(Default)]
struct Pair {
    left: u64,
    right: u64,
}

#[test]
fn a_read_guard_never_sees_a_write_in_progress() {
    check("a_read_guard_never_sees_a_write_in_progress", 3, || {
        let lock = shared(Pair::default());
        let writer = spawn(&lock, move |lock| {
            let mut pair = lock.write();
            pair.left += 1;
            thread::yield_now();
            pair.right += 1;
        });
        let reader = spawn(&lock, move |lock| {
            let pair = lock.read();
            assert_eq!(pair.left, pair.right, "a reader saw half a write");
            pair.left
        });
        let seen = reader.join().unwrap();
        writer.join().unwrap();
        assert!(seen <= 1);
        let pair = lock.read();
        assert_eq!((pair.left, pair.right), (1, 1));
    });
}

#[test]
fn write_guards_serialize_read_modify_write() {
    check("write_guards_serialize_read_modify_write", 3, || {
        let lock = shared(0_u64);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                spawn(&lock, move |lock| {
                    let mut value = lock.write();
                    let old = *value;
                    thread::yield_now();
                    *value = old + 1;
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*lock.read(), 2, "a write guard's update was lost");
    });
}

#[test]
fn mapped_guards_keep_their_hold() {
    check("mapped_guards_keep_their_hold", 3, || {
        let lock = shared(Pair::default());
        let writer = spawn(&lock, move |lock| {
            let mut left = PushLockWriteGuard::map(lock.write(), |pair| &mut pair.left);
            *left += 1;
            drop(left);
            let mut pair = lock.write();
            pair.right += 1;
        });
        let reader = spawn(&lock, move |lock| {
            let pair = PushLockReadGuard::map(lock.read(), |pair| pair);
            let left = MappedPushLockReadGuard::map(pair, |pair| &pair.left);
            *left
        });
        assert!(reader.join().unwrap() <= 1);
        writer.join().unwrap();
        let pair = lock.read();
        assert_eq!((pair.left, pair.right), (1, 1));
    });
}

#[test]
fn shared_guards_are_held_at_once() {
    check("shared_guards_are_held_at_once", 2, || {
        let lock = shared(7_u64);
        let threads: Vec<_> = (0..2)
            .map(|_| spawn(&lock, move |lock| *lock.read()))
            .collect();
        let main_hold = lock.read();
        for thread in threads {
            assert_eq!(
                thread.join().unwrap(),
                7,
                "a reader waited for another reader"
            );
        }
        drop(main_hold);
    });
}

const K1: FileKey = FileKey(0x11);
const K2: FileKey = FileKey(0x22);
const K3: FileKey = FileKey(0x33);

/// A table of `max_entries` in a push lock, holding `keys` opened at times 1, 2, ...
fn table_with(max_entries: usize, keys: &[FileKey]) -> Shared<Table<Global>> {
    let lock = shared(Table::new_in(max_entries, Global));
    let mut table = lock.write();
    for (now, &key) in (1..).zip(keys) {
        assert_eq!(table.record_open(key, &[0x61], now), OpenOutcome::Inserted);
    }
    drop(table);
    lock
}

/// The (reads, bytes read, writes, bytes written) of `key`, or `None` if it has no entry.
fn counts(lock: &Shared<Table<Global>>, key: FileKey) -> Option<(u64, u64, u64, u64)> {
    let table = lock.read();
    let tally = table.get(key)?;
    let c = tally.counts();
    Some((c.reads, c.bytes_read, c.writes, c.bytes_written))
}

#[test]
fn io_under_the_shared_guard_survives_an_entry_moving() {
    // `forget(K1)` moves K2, the last entry, into K1's slot (copying its counters) under the exclusive
    // guard while two threads count I/O on K2 under the shared guard, one through a slot hint that the
    // move makes stale.
    check(
        "io_under_the_shared_guard_survives_an_entry_moving",
        3,
        || {
            let lock = table_with(4, &[K1, K2]);
            let hint = lock.read().slot(K2).expect("K2 is tallied");
            let by_key = spawn(&lock, move |lock| {
                lock.read().record_io(K2, Io::Read, 512, 10)
            });
            let by_hint = spawn(&lock, move |lock| {
                lock.read().record_io_at(hint, K2, Io::Write, 100, 11)
            });
            assert!(lock.write().forget(K1));
            assert!(by_key.join().unwrap(), "K2 always has an entry");
            assert!(by_hint.join().unwrap(), "K2 always has an entry");
            assert_eq!(
                counts(&lock, K2),
                Some((1, 512, 1, 100)),
                "an update was lost"
            );
            assert_eq!(counts(&lock, K1), None);
            assert_eq!(lock.read().len(), 1);
        },
    );
}

#[test]
fn io_under_the_shared_guard_and_an_eviction_count_exactly() {
    // The table is full; opening K3 evicts the least recently seen entry (K1) under the exclusive
    // guard while I/O on K1 and K2 is counted under the shared guard: I/O on K1 is either counted
    // before the eviction or counted as a miss after it, never lost; I/O on K2 is always counted.
    check(
        "io_under_the_shared_guard_and_an_eviction_count_exactly",
        3,
        || {
            let lock = table_with(2, &[K1, K2]);
            let io = spawn(&lock, move |lock| {
                let table = lock.read();
                let k2 = table.record_io(K2, Io::Write, 4096, 5);
                let k1 = table.record_io(K1, Io::Read, 1, 0);
                (k1, k2)
            });
            let opened = lock.write().record_open(K3, &[0x62], 6);
            let (k1_counted, k2_counted) = io.join().unwrap();
            assert_eq!(opened, OpenOutcome::InsertedAfterEviction);
            assert!(k2_counted);
            assert_eq!(counts(&lock, K2), Some((0, 0, 1, 4096)));
            assert_eq!(counts(&lock, K1), None, "K1 was the least recently seen");
            let stats = lock.read().stats();
            assert_eq!(stats.get(Stat::Misses), u64::from(!k1_counted));
            assert_eq!(stats.get(Stat::Evictions), 1);
        },
    );
}

#[test]
fn byte_totals_saturate_whatever_the_interleaving() {
    // Two threads' adds wrap the total between them: whichever wraps it pins it at u64::MAX, and the
    // other's add cannot bring it back below.
    check("byte_totals_saturate_whatever_the_interleaving", 4, || {
        let lock = table_with(2, &[K1]);
        assert!(lock.read().record_io(K1, Io::Read, u64::MAX - 100, 1));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                spawn(&lock, move |lock| {
                    assert!(lock.read().record_io(K1, Io::Read, 60, 2));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counts(&lock, K1), Some((3, u64::MAX, 0, 0)));
    });
}

/// The model checks fail when the protocol is broken: a plain (non-atomic) counter updated under
/// shared guards is a race that loom reports.
#[test]
#[should_panic(expected = "Causality violation")]
fn a_plain_counter_under_shared_guards_is_reported() {
    builder(2).check(|| {
        let lock = shared(loom::cell::UnsafeCell::new(0_u64));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                spawn(&lock, move |lock| {
                    let counter = lock.read();
                    // SAFETY: deliberately unsound (two writers at once), for loom to report.
                    counter.with_mut(|value| unsafe { *value += 1 });
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    });
}

/// A guard leaked with `mem::forget` leaves the lock held; deleting it is caught.
#[test]
#[should_panic(expected = "FltDeletePushLock")]
fn deleting_a_held_lock_is_reported() {
    builder(1).check(|| {
        let lock = shared(0_u8);
        core::mem::forget(lock.read());
        drop(lock);
    });
}
