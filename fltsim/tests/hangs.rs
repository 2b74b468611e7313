//! Hangs become failures: deadlocks found from the wait-for graph the moment they close, waits
//! longer than the bound reported, and the report of who waits for what and who holds what.
//!
//! A wait inside a simulated export cannot unwind, so those reports stop the process (as the hang
//! would stop the machine): they are checked in a child process with `expect_bugcheck`.

mod common;

use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{CREATE, Config, configure, driver_entry};
use fltsim::bugcheck::expect_bugcheck;
use fltsim::hang::{self, set_wait_limit};
use fltsim::pushlock::{
    self, FltAcquirePushLockExclusive, FltAcquirePushLockShared, FltDeletePushLock,
    FltInitializePushLock, FltReleasePushLock,
};
use fltsim::{FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_PENDING, FLT_PREOP_SUCCESS_WITH_CALLBACK,
};
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

/// Generous bound that turns a hang of the test itself into a failure (never a timing assertion).
const HANG: Duration = Duration::from_secs(30);

/// An `EX_PUSH_LOCK` in leaked heap storage, usable from any thread.
#[derive(Clone, Copy)]
struct Lock(*mut usize);

// SAFETY: leaked storage, accessed atomically by the simulated routines only.
unsafe impl Send for Lock {}
// SAFETY: as above.
unsafe impl Sync for Lock {}

impl Lock {
    fn new() -> Self {
        let lock = Self(Box::into_raw(Box::new(0usize)));
        // SAFETY: valid leaked storage.
        unsafe { FltInitializePushLock(lock.0) };
        lock
    }
    fn addr(self) -> usize {
        self.0.addr()
    }
    fn shared(self) {
        // SAFETY: an initialized lock.
        unsafe { FltAcquirePushLockShared(self.0) }
    }
    fn exclusive(self) {
        // SAFETY: an initialized lock.
        unsafe { FltAcquirePushLockExclusive(self.0) }
    }
    fn release(self) {
        // SAFETY: a lock this thread holds.
        unsafe { FltReleasePushLock(self.0) }
    }
    fn delete(self) {
        // SAFETY: an initialized lock nobody holds.
        unsafe { FltDeletePushLock(self.0) }
    }
}

/// Spins (bounded by [`HANG`]) until `done()`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "gave up waiting until {what}");
        thread::yield_now();
    }
}

/// Two threads taking two push locks in opposite orders.
fn opposite_orders() {
    let _sim = Sim::new();
    let (first, second) = (Lock::new(), Lock::new());
    let both_hold_one = Arc::new(Barrier::new(2));
    let other = Arc::clone(&both_hold_one);
    let _t = thread::Builder::new()
        .name("second-then-first".into())
        .spawn(move || {
            second.exclusive();
            other.wait();
            first.shared();
        })
        .unwrap();
    first.exclusive();
    both_hold_one.wait();
    wait_until("the other thread waits", || {
        pushlock::waiting(first.addr()) == 1 || pushlock::waiting(second.addr()) == 1
    });
    second.exclusive();
}

#[test]
fn a_cross_thread_push_lock_deadlock_is_reported_when_it_closes() {
    expect_bugcheck(
        "fltsim: push lock deadlock: a cycle of threads each waiting for the next",
        opposite_orders,
    );
}

#[test]
fn the_deadlock_report_names_the_threads_and_what_each_holds() {
    expect_bugcheck("thread 'second-then-first'", opposite_orders);
    expect_bugcheck("acquired with FltAcquirePushLockExclusive", opposite_orders);
}

#[test]
fn a_wait_for_a_lock_held_by_an_exited_thread_is_reported_at_once() {
    expect_bugcheck(
        "fltsim: push lock deadlock: a thread waits for a push lock held by a thread that has exited",
        || {
            let _sim = Sim::new();
            let lock = Lock::new();
            thread::Builder::new()
                .name("leaves-it-held".into())
                .spawn(move || lock.exclusive())
                .unwrap()
                .join()
                .unwrap();
            lock.shared();
        },
    );
}

fn ntfs(sim: &Sim) -> Volume {
    sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ))
}

/// The address of the lock a test filter's post-create takes.
static FILTER_LOCK: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_teardown_waiting_for_a_callback_that_waits_for_the_tearing_down_thread_is_a_deadlock() {
    expect_bugcheck(
        "fltsim: push lock deadlock: a cycle of threads each waiting for the next",
        || {
            let sim = Sim::new();
            let lock = Lock::new();
            FILTER_LOCK.store(lock.addr(), Ordering::SeqCst);
            configure(Config {
                post: Some(Arc::new(|data, _, _, _| {
                    if common::major_of(data) == CREATE {
                        let lock = Lock(ptr::with_exposed_provenance_mut(
                            FILTER_LOCK.load(Ordering::SeqCst),
                        ));
                        lock.exclusive();
                        lock.release();
                    }
                    FLT_POSTOP_FINISHED_PROCESSING
                })),
                ..Config::default()
            });
            let c = ntfs(&sim);
            sim.create_file(c, r"\a.txt", 1);
            assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
            // The detaching thread holds the lock the post-create needs: the teardown waits for
            // the post-create, which waits for the teardown's thread.
            lock.exclusive();
            thread::scope(|scope| {
                scope.spawn(|| drop(sim.open(c, r"\a.txt", OpenOptions::open())));
                wait_until("the post-create waits", || {
                    pushlock::waiting(lock.addr()) == 1
                });
                sim.detach(c);
            });
        },
    );
}

#[test]
fn a_push_lock_wait_longer_than_the_bound_is_a_hang_with_its_holder_named() {
    let scenario = || {
        let _sim = Sim::new();
        set_wait_limit(Duration::from_millis(300));
        let lock = Lock::new();
        let (tell_held, is_held) = mpsc::channel::<()>();
        let (_forever, never) = mpsc::channel::<()>();
        let _holder = thread::Builder::new()
            .name("holder".into())
            .spawn(move || {
                lock.exclusive();
                tell_held.send(()).unwrap();
                let _ = never.recv();
            })
            .unwrap();
        is_held.recv().unwrap();
        lock.shared();
    };
    expect_bugcheck("fltsim: hang: thread 'a_push_lock_wait_longer", scenario);
    expect_bugcheck("for push lock 0x", scenario);
    expect_bugcheck("exclusive by thread 'holder'", scenario);
}

#[test]
fn a_teardown_draining_longer_than_the_bound_is_a_hang() {
    expect_bugcheck("(teardown draining); Windows would wait for ever", || {
        let sim = Sim::new();
        set_wait_limit(Duration::from_millis(200));
        configure(Config {
            pre: Some(Arc::new(|data, _, _| {
                if common::major_of(data) == common::READ {
                    return FLT_PREOP_PENDING;
                }
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            })),
            ..Config::default()
        });
        let c = ntfs(&sim);
        sim.create_file(c, r"\a.txt", 100);
        assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
        let mut file = sim.open(c, r"\a.txt", OpenOptions::open()).unwrap();
        thread::scope(|scope| {
            scope.spawn(move || file.read(1, 0));
            wait_until("the read is pended", || {
                hang::report().contains("FltCompletePendedPreOperation")
            });
            sim.detach(c);
        });
    });
}

#[test]
#[should_panic(expected = "fltsim: hang: thread 'waiting_for_held_io_that_never_comes_is_a_hang'")]
fn waiting_for_held_io_that_never_comes_is_a_hang() {
    let sim = Sim::new();
    set_wait_limit(Duration::from_millis(100));
    sim.hold_io();
    sim.wait_for_held_io(1);
}

#[test]
fn the_report_shows_each_hold_with_its_routine_and_callback() {
    let sim = Sim::new();
    let lock = Lock::new();
    FILTER_LOCK.store(lock.addr(), Ordering::SeqCst);
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let slot = Arc::clone(&seen);
    configure(Config {
        post: Some(Arc::new(move |data, _, _, _| {
            if common::major_of(data) == CREATE {
                let lock = Lock(ptr::with_exposed_provenance_mut(
                    FILTER_LOCK.load(Ordering::SeqCst),
                ));
                lock.shared();
                *slot.lock().unwrap() = hang::report();
                lock.release();
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    });
    let c = ntfs(&sim);
    sim.create_file(c, r"\a.txt", 1);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    drop(sim.open(c, r"\a.txt", OpenOptions::open()).unwrap());
    let report = seen.lock().unwrap().clone();
    let expected = format!(
        "push lock {:#x}: shared by thread 'the_report_shows_each_hold_with_its_routine_and_callback'",
        lock.addr()
    );
    assert!(report.contains(&expected), "{report}");
    assert!(
        report.contains("acquired with FltAcquirePushLockShared in PostOperationCallback"),
        "{report}"
    );
    assert!(
        report.contains("PostOperationCallback of instance"),
        "{report}"
    );
    assert!(hang::report().contains("no push lock is held"));
    lock.delete();
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}
