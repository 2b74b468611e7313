//! Push-lock exports: the documented semantics with real threads, and every misuse rule.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use fltsim::bugcheck::expect_bugcheck;
use fltsim::pushlock::{
    FltAcquirePushLockExclusive, FltAcquirePushLockExclusiveEx, FltAcquirePushLockShared,
    FltAcquirePushLockSharedEx, FltDeletePushLock, FltInitializePushLock, FltReleasePushLock,
    FltReleasePushLockEx,
};
use fltsim::{Sim, apc, irql, pushlock};

/// Generous bound that turns a hang into a test failure (never a timing assertion).
const HANG: Duration = Duration::from_secs(30);

/// An `EX_PUSH_LOCK` in leaked heap storage (8-byte aligned), usable from any thread.
#[derive(Clone, Copy)]
struct Lock(*mut usize);

// SAFETY: the storage is leaked, so it lives for the whole process; the simulated routines access it
// atomically only.
unsafe impl Send for Lock {}
// SAFETY: as above.
unsafe impl Sync for Lock {}

impl Lock {
    fn storage() -> Self {
        Self(Box::into_raw(Box::new(0usize)))
    }
    fn new() -> Self {
        let lock = Self::storage();
        lock.init();
        lock
    }
    fn addr(self) -> usize {
        self.0.addr()
    }
    fn word(self) -> usize {
        // SAFETY: leaked, aligned storage; read atomically like the simulator does.
        unsafe { AtomicUsize::from_ptr(self.0) }.load(Ordering::SeqCst)
    }
    fn init(self) {
        // SAFETY: valid leaked storage.
        unsafe { FltInitializePushLock(self.0) }
    }
    fn shared(self) {
        // SAFETY: valid leaked storage.
        unsafe { FltAcquirePushLockShared(self.0) }
    }
    fn exclusive(self) {
        // SAFETY: valid leaked storage.
        unsafe { FltAcquirePushLockExclusive(self.0) }
    }
    fn release(self) {
        // SAFETY: valid leaked storage.
        unsafe { FltReleasePushLock(self.0) }
    }
    fn delete(self) {
        // SAFETY: valid leaked storage.
        unsafe { FltDeletePushLock(self.0) }
    }
}

/// Waits (bounded by [`HANG`]) until `done()`; fails the test instead of hanging.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "gave up waiting until {what}");
        thread::yield_now();
    }
}

/// Joins `handle`, re-raising its panic on this thread (so the test fails with the thread's message).
fn join<T>(handle: thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}

#[test]
fn init_acquire_release_delete_balance_apcs_and_word() {
    let _sim = Sim::new();
    let lock = Lock::new();
    assert_eq!(lock.word(), 0);
    lock.exclusive();
    assert_eq!(lock.word(), pushlock::word::LOCKED);
    assert_eq!(apc::normal_kernel_apcs_disabled(), 1);
    lock.release();
    assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
    lock.shared();
    lock.shared();
    assert_eq!(
        lock.word(),
        pushlock::word::LOCKED | pushlock::word::MULTIPLE_SHARED | (2 * pushlock::word::SHARE_ONE)
    );
    assert_eq!(apc::normal_kernel_apcs_disabled(), 2);
    lock.release();
    lock.release();
    assert_eq!(lock.word(), 0);
    assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
    assert_eq!(pushlock::live(), 1);
    assert_eq!(pushlock::live_addresses(), vec![lock.addr()]);
    lock.delete();
    assert_eq!(pushlock::live(), 0);
}

#[test]
fn ex_forms_accept_documented_flags() {
    let _sim = Sim::new();
    let lock = Lock::new();
    // SAFETY: valid leaked storage.
    unsafe {
        FltAcquirePushLockExclusiveEx(lock.0, 2);
        FltReleasePushLockEx(lock.0, 2);
        FltAcquirePushLockSharedEx(lock.0, 1);
        FltReleasePushLockEx(lock.0, 0);
        FltAcquirePushLockSharedEx(lock.0, 0);
        FltReleasePushLock(lock.0);
    }
    assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
    lock.delete();
}

#[test]
fn acquire_at_apc_level_is_allowed() {
    let _sim = Sim::new();
    let lock = Lock::new();
    let _apc = irql::raise(irql::APC_LEVEL);
    lock.exclusive();
    lock.release();
    lock.delete();
}

#[test]
fn readers_share() {
    let _sim = Sim::new();
    let lock = Lock::new();
    lock.shared();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        lock.shared();
        tx.send(()).unwrap();
        lock.release();
    });
    // The second reader gets in while this thread still holds the lock shared.
    rx.recv_timeout(HANG)
        .expect("a second reader was not granted a shared hold");
    join(reader);
    lock.release();
    lock.delete();
}

#[test]
fn writer_excludes_readers_and_writers() {
    let _sim = Sim::new();
    let lock = Lock::new();
    lock.shared();
    let acquired = Arc::new(AtomicUsize::new(0));
    let writer = {
        let acquired = Arc::clone(&acquired);
        thread::spawn(move || {
            lock.exclusive();
            acquired.store(1, Ordering::SeqCst);
            lock.release();
        })
    };
    wait_until("the writer queues", || {
        pushlock::word::exclusive_waiters(lock.word()) == 1
    });
    assert_eq!(
        acquired.load(Ordering::SeqCst),
        0,
        "writer got in while a reader held the lock"
    );
    lock.release();
    join(writer);
    assert_eq!(acquired.load(Ordering::SeqCst), 1);

    lock.exclusive();
    let second = thread::spawn(move || {
        lock.exclusive();
        lock.release();
    });
    wait_until("the second writer queues", || {
        pushlock::word::exclusive_waiters(lock.word()) == 1
    });
    assert!(pushlock::word::is_exclusive(lock.word()));
    lock.release();
    join(second);
    assert_eq!(lock.word(), 0);
    lock.delete();
}

#[test]
fn writer_preference_reader_waits_behind_queued_writer() {
    let _sim = Sim::new();
    let lock = Lock::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    lock.shared();
    let writer = {
        let order = Arc::clone(&order);
        thread::spawn(move || {
            lock.exclusive();
            order.lock().unwrap().push("writer");
            lock.release();
        })
    };
    wait_until("the writer queues", || {
        pushlock::word::exclusive_waiters(lock.word()) == 1
    });
    let reader = {
        let order = Arc::clone(&order);
        thread::spawn(move || {
            lock.shared();
            order.lock().unwrap().push("reader");
            lock.release();
        })
    };
    // Both are inside their acquire; with writer preference the reader cannot have been granted
    // while the lock is held shared (wait_until fails the test if the reader got in instead).
    wait_until("writer and reader both wait", || {
        pushlock::waiting(lock.addr()) == 2
    });
    assert!(order.lock().unwrap().is_empty());
    lock.release();
    join(writer);
    join(reader);
    assert_eq!(*order.lock().unwrap(), ["writer", "reader"]);
    assert_eq!(lock.word(), 0);
    lock.delete();
}

/// Data protected only by the push lock under test.
struct Guarded(UnsafeCell<u64>);
// SAFETY: every access happens inside the push lock's critical sections (the test's subject).
unsafe impl Sync for Guarded {}

#[test]
fn many_threads_hammering_keep_the_invariant() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 2_000;
    let _sim = Sim::new();
    let lock = Lock::new();
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let data = Arc::new(Guarded(UnsafeCell::new(0)));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (readers, writers, data, start) = (
                Arc::clone(&readers),
                Arc::clone(&writers),
                Arc::clone(&data),
                Arc::clone(&start),
            );
            thread::spawn(move || {
                start.wait();
                let mut exclusive_rounds = 0u64;
                for round in 0..ROUNDS {
                    if (round + t) % 4 == 0 {
                        lock.exclusive();
                        assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                        assert_eq!(readers.load(Ordering::SeqCst), 0, "reader during a write");
                        // SAFETY: exclusive hold.
                        unsafe { *data.0.get() += 1 };
                        exclusive_rounds += 1;
                        writers.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        lock.shared();
                        readers.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(writers.load(Ordering::SeqCst), 0, "writer during a read");
                        // SAFETY: shared hold: no writer.
                        let _ = unsafe { *data.0.get() };
                        readers.fetch_sub(1, Ordering::SeqCst);
                    }
                    lock.release();
                }
                assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
                exclusive_rounds
            })
        })
        .collect();
    let total_exclusive: u64 = handles.into_iter().map(join).sum();
    // SAFETY: every thread has finished.
    assert_eq!(unsafe { *data.0.get() }, total_exclusive);
    assert_eq!(lock.word(), 0, "no stale bits once every thread is gone");
    assert_eq!(pushlock::waiting(lock.addr()), 0);
    lock.delete();
}

#[test]
fn recursive_shared_without_waiter_is_granted() {
    let _sim = Sim::new();
    let lock = Lock::new();
    lock.shared();
    lock.shared();
    lock.release();
    lock.release();
    lock.delete();
}

#[test]
fn reinitializing_an_idle_lock_is_allowed() {
    let _sim = Sim::new();
    let lock = Lock::new();
    lock.init();
    lock.delete();
    lock.init();
    assert_eq!(pushlock::live(), 1);
    lock.delete();
}

// ---- misuse: each breaks one rule and sees the named panic ----

#[test]
fn recursive_exclusive_panics() {
    expect_bugcheck(
        "fltsim: push lock deadlock: FltAcquirePushLockExclusive on push lock",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            lock.exclusive();
            lock.exclusive();
        },
    );
}

#[test]
fn shared_to_exclusive_upgrade_panics() {
    expect_bugcheck("holds shared (no shared-to-exclusive upgrade", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.shared();
        lock.exclusive();
    });
}

#[test]
fn exclusive_holder_acquiring_shared_panics() {
    expect_bugcheck(
        "fltsim: push lock deadlock: FltAcquirePushLockShared on push lock",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            lock.exclusive();
            lock.shared();
        },
    );
}

#[test]
fn recursive_shared_behind_exclusive_waiter_panics() {
    expect_bugcheck(
        "already holds shared, while 1 exclusive acquirer(s) wait",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            lock.shared();
            thread::spawn(move || lock.exclusive());
            wait_until("the writer queues", || {
                pushlock::word::exclusive_waiters(lock.word()) == 1
            });
            lock.shared();
        },
    );
}

#[test]
fn release_without_hold_panics() {
    expect_bugcheck("by a thread that does not hold it", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.release();
    });
}

#[test]
fn release_on_another_thread_panics() {
    expect_bugcheck("by a thread that does not hold it", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.exclusive();
        join(thread::spawn(move || lock.release()));
    });
}

#[test]
fn acquire_uninitialized_panics() {
    expect_bugcheck(
        "which was never initialized with FltInitializePushLock",
        || {
            let _sim = Sim::new();
            Lock::storage().shared();
        },
    );
}

#[test]
fn acquire_after_delete_panics() {
    expect_bugcheck("FltAcquirePushLockExclusive on push lock", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.delete();
        lock.exclusive();
    });
}

#[test]
fn release_after_delete_panics() {
    expect_bugcheck("FltReleasePushLock on push lock", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.delete();
        lock.release();
    });
}

#[test]
fn double_delete_panics() {
    expect_bugcheck("which was already deleted (use after delete)", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.delete();
        lock.delete();
    });
}

#[test]
fn delete_uninitialized_panics() {
    expect_bugcheck("fltsim: FltDeletePushLock on push lock", || {
        let _sim = Sim::new();
        Lock::storage().delete();
    });
}

#[test]
fn delete_while_held_shared_panics() {
    expect_bugcheck("while it is held", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.shared();
        lock.delete();
    });
}

#[test]
fn delete_while_waiters_exist_panics() {
    expect_bugcheck("while threads wait to acquire it", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.exclusive();
        thread::spawn(move || lock.shared());
        wait_until("the reader waits", || pushlock::waiting(lock.addr()) == 1);
        lock.delete();
    });
}

#[test]
fn reinitialize_while_held_panics() {
    expect_bugcheck("fltsim: FltInitializePushLock on push lock", || {
        let _sim = Sim::new();
        let lock = Lock::new();
        lock.exclusive();
        lock.init();
    });
}

#[test]
fn misaligned_storage_panics() {
    expect_bugcheck("not 8-byte aligned", || {
        let _sim = Sim::new();
        let storage = Lock::storage();
        // SAFETY: deliberately misaligned pointer into valid storage; the routine must reject it before use.
        unsafe { FltInitializePushLock(storage.0.cast::<u8>().add(4).cast()) };
    });
}

#[test]
fn invalid_flags_panic() {
    expect_bugcheck(
        "fltsim: FltAcquirePushLockSharedEx: invalid Flags 0x4",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            // SAFETY: valid leaked storage.
            unsafe { FltAcquirePushLockSharedEx(lock.0, 4) };
        },
    );
}

#[test]
fn shared_acquire_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltAcquirePushLockShared called at IRQL 2",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            lock.shared();
        },
    );
}

#[test]
fn exclusive_ex_acquire_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltAcquirePushLockExclusiveEx called at IRQL 2",
        || {
            let _sim = Sim::new();
            // IRQL is checked first: even an invalid lock pointer reports the IRQL.
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            // SAFETY: the routine panics on the IRQL before touching the pointer.
            unsafe { FltAcquirePushLockExclusiveEx(std::ptr::null_mut(), 0) };
        },
    );
}

#[test]
fn release_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltReleasePushLock called at IRQL 2",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            lock.exclusive();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            lock.release();
        },
    );
}

#[test]
fn initialize_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltInitializePushLock called at IRQL 2",
        || {
            let _sim = Sim::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            Lock::storage().init();
        },
    );
}

#[test]
fn delete_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltDeletePushLock called at IRQL 2",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            lock.delete();
        },
    );
}
