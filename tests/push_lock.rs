//! `iotally::sync::PushLock` through the simulator: sharing, exclusion, writer preference, release on
//! every path, misuse caught (by the lock's debug diagnostics in debug builds, by fltsim in release
//! builds), deletion, IRQL rules, a many-thread invariant, and the release-build size.
//!
//! Run both ways: `cargo test --test push_lock` and `cargo test --release --test push_lock`.
//!
//! Misuse that reaches a simulated routine is a death test ([`expect_bugcheck`]): the scenario runs
//! in a child process, which must die with the expected message. In release builds fltsim catches
//! the misuse inside the simulated routine, and its panic cannot unwind out of that `extern "system"`
//! export: the process aborts, like a bugcheck. In debug builds the lock's own diagnostics panic
//! first, with an `iotally: ` message, and the child fails with that message. The recursive shared
//! acquire with no writer waiting is refused by the diagnostics alone (debug builds), before any
//! simulated routine runs, so that test is an ordinary `should_panic` test.

mod common;

use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use allocator_api2::boxed::Box;
use common::by_build;
use fltsim::bugcheck::expect_bugcheck;
use fltsim::irql::{DISPATCH_LEVEL, raise};
use iotally::pool::{PagedAllocator, Tag, tags};
use iotally::sync::{PushLock, PushLockReadGuard, PushLockWriteGuard};

/// The tag of the locks these tests allocate.
const POOL: PagedAllocator = PagedAllocator::new(tags::PUSH_LOCK);

fn new_lock<T>(value: T) -> Pin<Box<PushLock<T>, PagedAllocator>> {
    PushLock::try_pin_in(value, POOL).expect("the simulated pool does not fail unless told to")
}

/// The lock word as the simulator sees it (0: free, no waiters).
fn word<T>(lock: &PushLock<T>) -> usize {
    // SAFETY: the word is 8-byte aligned, alive while `lock` is borrowed, and only accessed atomically.
    unsafe { AtomicUsize::from_ptr(lock.as_raw()) }.load(Ordering::SeqCst)
}

/// Waits (yielding, no timeout) until `done()` holds.
fn wait_until(mut done: impl FnMut() -> bool) {
    while !done() {
        thread::yield_now();
    }
}

/// Waits until `count` threads are inside an acquire of `lock` without having been granted it, or
/// `escaped()` says a thread got the lock it should not have got.
fn wait_for_waiters<T>(lock: &PushLock<T>, count: usize, escaped: impl Fn() -> bool) {
    let address = lock.as_raw().addr();
    wait_until(|| fltsim::pushlock::waiting(address) == count || escaped());
}

#[test]
fn readers_share() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(41_u32);
    // Both threads must hold a read guard at the same time to pass the barrier: if shared acquires
    // excluded each other, the second reader would wait for the first, which waits at the barrier.
    let both_inside = Barrier::new(2);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let value = lock.read();
                both_inside.wait();
                assert_eq!(*value, 41);
            });
        }
    });
    assert_eq!(word(&lock), 0, "both shared holds released");
}

#[test]
fn writer_excludes_readers_and_writers() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let entered = AtomicUsize::new(0);
    thread::scope(|s| {
        let mut guard = lock.write();
        s.spawn(|| {
            let value = lock.read();
            entered.fetch_add(1, Ordering::SeqCst);
            // The main writer's update, and the other writer's if it went first.
            assert!(*value == 1 || *value == 11, "the reader saw {}", *value);
        });
        s.spawn(|| {
            let mut value = lock.write();
            entered.fetch_add(1, Ordering::SeqCst);
            *value += 10;
        });
        wait_for_waiters(&lock, 2, || entered.load(Ordering::SeqCst) > 0);
        assert_eq!(
            entered.load(Ordering::SeqCst),
            0,
            "no one got in while the writer held the lock"
        );
        *guard += 1;
        drop(guard);
    });
    assert_eq!(entered.load(Ordering::SeqCst), 2);
    assert_eq!(*lock.read(), 11);
}

#[test]
fn waiting_writer_goes_before_later_readers() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(Vec::<&str>::new());
    let late_reader_in = AtomicBool::new(false);
    let seen_by_late_reader = thread::scope(|s| {
        let first = lock.read();
        s.spawn(|| lock.write().push("writer"));
        wait_for_waiters(&lock, 1, || false);
        // The lock is held shared and a writer waits: a new shared acquire must queue behind the writer
        // (writer preference), although the lock is only held shared.
        let late = s.spawn(|| {
            let data = lock.read();
            late_reader_in.store(true, Ordering::SeqCst);
            data.clone()
        });
        wait_for_waiters(&lock, 2, || late_reader_in.load(Ordering::SeqCst));
        assert!(
            !late_reader_in.load(Ordering::SeqCst),
            "a reader was let in while a writer waited"
        );
        drop(first);
        late.join().expect("late reader")
    });
    assert_eq!(
        seen_by_late_reader,
        ["writer"],
        "the waiting writer went first"
    );
}

fn read_then_fail(lock: &PushLock<u32>) -> Result<u32, &'static str> {
    let value = lock.read();
    if *value == 0 {
        return Err("early return while holding the guard");
    }
    Ok(*value)
}

#[test]
fn guards_release_on_early_return() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    assert!(read_then_fail(&lock).is_err());
    assert_eq!(word(&lock), 0);
    *lock.write() = 5;
    assert_eq!(read_then_fail(&lock), Ok(5));
    assert_eq!(word(&lock), 0);
}

#[test]
fn guards_release_when_a_panic_unwinds() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let writer = catch_unwind(AssertUnwindSafe(|| {
        let mut value = lock.write();
        *value = 1;
        panic!("boom while holding the write guard");
    }));
    assert!(writer.is_err());
    assert_eq!(word(&lock), 0, "the write guard released during unwinding");
    let reader = catch_unwind(AssertUnwindSafe(|| {
        let mapped = PushLockReadGuard::map(lock.read(), |value| value);
        assert_eq!(*mapped, 1);
        panic!("boom while holding a mapped read guard");
    }));
    assert!(reader.is_err());
    assert_eq!(
        word(&lock),
        0,
        "the mapped read guard released during unwinding"
    );
    // A panic inside `map`'s closure: the original guard releases.
    let mapping = catch_unwind(AssertUnwindSafe(|| {
        let _never =
            PushLockWriteGuard::map(lock.write(), |_| -> &mut u32 { panic!("boom in map") });
    }));
    assert!(mapping.is_err());
    assert_eq!(word(&lock), 0);
    *lock.write() += 1;
    assert_eq!(*lock.read(), 2);
}

#[test]
fn recursive_exclusive_acquire_is_caught() {
    let expected = by_build(
        "iotally: push lock recursion: PushLock::write (FltAcquirePushLockExclusive)",
        "fltsim: push lock deadlock",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _outer = lock.write();
        let _inner = lock.write();
    });
}

#[test]
fn shared_to_exclusive_upgrade_is_caught() {
    let expected = by_build(
        "iotally: push lock upgrade: PushLock::write (FltAcquirePushLockExclusive)",
        "fltsim: push lock deadlock",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _shared = lock.read();
        let _exclusive = lock.write();
    });
}

#[test]
fn shared_acquire_by_the_exclusive_holder_is_caught() {
    let expected = by_build(
        "iotally: push lock recursion: PushLock::read (FltAcquirePushLockShared)",
        "fltsim: push lock deadlock",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _exclusive = lock.write();
        let _shared = lock.read();
    });
}

/// A second shared acquire hangs on Windows once a writer waits in between; debug builds refuse it
/// at once, and fltsim catches the hang itself.
#[test]
fn recursive_shared_acquire_with_a_waiting_writer_is_caught() {
    let expected = by_build(
        "iotally: push lock recursion: PushLock::read (FltAcquirePushLockShared)",
        "fltsim: push lock deadlock",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock: &'static PushLock<u32> = std::boxed::Box::leak(std::boxed::Box::new(new_lock(0)));
        let _first = lock.read();
        // Not scoped: the writer must not keep the child alive if the first hold is stranded.
        thread::spawn(move || *lock.write() += 1);
        wait_for_waiters(lock, 1, || false);
        let _second = lock.read();
    });
}

/// Debug builds refuse a recursive shared acquire even with no writer waiting: it is a hang waiting
/// for the first writer to arrive at the wrong moment.
#[test]
#[cfg(debug_assertions)]
#[should_panic(
    expected = "iotally: push lock recursion: PushLock::read (FltAcquirePushLockShared)"
)]
fn recursive_shared_acquire_is_caught_in_debug_builds() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let _first = lock.read();
    let _second = lock.read();
}

/// Moves a `!Send` guard to another thread: exactly the misuse the diagnostics exist for.
struct Smuggled<G>(G);
// SAFETY: deliberately false, to release a guard on another thread than the acquiring one; only the
// tests below do it, to check that the misuse is caught.
unsafe impl<G> Send for Smuggled<G> {}

#[test]
fn exclusive_release_on_another_thread_is_caught() {
    let expected = by_build(
        "iotally: push lock released on the wrong thread: PushLockWriteGuard::drop",
        "by a thread that does not hold it",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let smuggled = Smuggled(lock.write());
        thread::scope(|s| {
            s.spawn(move || drop(smuggled));
        });
    });
}

#[test]
fn shared_release_on_another_thread_is_caught() {
    let expected = by_build(
        "iotally: push lock released on the wrong thread: PushLockReadGuard::drop",
        "by a thread that does not hold it",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let smuggled = Smuggled(lock.read());
        thread::scope(|s| {
            s.spawn(move || drop(smuggled));
        });
    });
}

#[test]
fn dropping_the_lock_deletes_it() {
    let _sim = fltsim::Sim::new();
    assert_eq!(fltsim::pushlock::live(), 0);
    let first = new_lock(1_u8);
    let second = new_lock(2_u8);
    assert_eq!(fltsim::pushlock::live(), 2);
    drop(first);
    assert_eq!(fltsim::pushlock::live_addresses(), [second.as_raw().addr()]);
    drop(second);
    assert_eq!(fltsim::pushlock::live(), 0);
}

/// The instance-context pattern: a lock initialized in place in pool memory that never moves,
/// dropped in place by the owner (the context cleanup callback), then the memory freed.
#[test]
fn in_place_lock_in_pool_memory_is_deleted_by_drop_in_place() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;

    let _sim = fltsim::Sim::new();
    let context_pool = PagedAllocator::new(tags::INSTANCE_CONTEXT);
    let layout = Layout::new::<PushLock<[u64; 4]>>();
    let memory = context_pool.allocate(layout).expect("pool");
    let slot = memory.cast::<PushLock<[u64; 4]>>().as_ptr();
    // SAFETY: fresh pool memory, 16-byte aligned, sized for the lock; it stays put until the drop in
    // place below, which runs once with no guard alive.
    unsafe { PushLock::init_in_place(slot, [0; 4]) };
    assert_eq!(fltsim::pushlock::live(), 1);
    {
        // SAFETY: initialized above, dropped only below.
        let lock = unsafe { &*slot };
        lock.write()[3] = 9;
        assert_eq!(lock.read()[3], 9);
    }
    // SAFETY: no guard is alive; the slot is not used afterwards.
    unsafe { core::ptr::drop_in_place(slot) };
    assert_eq!(fltsim::pushlock::live(), 0);
    // SAFETY: allocated above with this allocator and layout; the lock in it is gone.
    unsafe { context_pool.deallocate(memory.cast(), layout) };
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn shared_acquire_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PushLock::read (FltAcquirePushLockShared) called at IRQL DISPATCH_LEVEL (2)",
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltAcquirePushLockShared called at IRQL 2",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _dispatch = raise(DISPATCH_LEVEL);
        let _never = lock.read();
    });
}

#[test]
fn exclusive_acquire_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PushLock::write (FltAcquirePushLockExclusive) called at IRQL DISPATCH_LEVEL (2)",
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltAcquirePushLockExclusive called at IRQL 2",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _dispatch = raise(DISPATCH_LEVEL);
        let _never = lock.write();
    });
}

#[test]
fn release_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PushLockWriteGuard::drop (FltReleasePushLock) called at IRQL DISPATCH_LEVEL (2)",
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltReleasePushLock called at IRQL 2",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let guard = lock.write();
        let _dispatch = raise(DISPATCH_LEVEL);
        drop(guard);
    });
}

#[test]
fn delete_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PushLock::drop (FltDeletePushLock) called at IRQL DISPATCH_LEVEL (2)",
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltDeletePushLock called at IRQL 2",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let lock = new_lock(0_u32);
        let _dispatch = raise(DISPATCH_LEVEL);
        drop(lock);
    });
}

#[test]
fn apc_level_is_allowed() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let _apc = raise(fltsim::irql::APC_LEVEL);
    *lock.write() += 1;
    assert_eq!(*lock.read(), 1);
}

#[test]
fn the_exclusive_owner_passes_the_assertion() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let guard = lock.write();
    lock.debug_assert_held_exclusive();
    drop(guard);
}

/// Debug builds: the assertion fails for a thread that does not hold the lock, for a shared holder,
/// and for a thread other than the exclusive owner. Release builds check nothing (and so cannot
/// answer wrongly).
#[test]
fn the_assertion_fails_for_anyone_but_the_exclusive_owner() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    let fails =
        |body: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err();
    let expected = cfg!(debug_assertions);
    assert_eq!(
        fails(&|| lock.debug_assert_held_exclusive()),
        expected,
        "not held"
    );
    {
        let _shared = lock.read();
        assert_eq!(
            fails(&|| lock.debug_assert_held_exclusive()),
            expected,
            "held shared"
        );
    }
    let guard = lock.write();
    thread::scope(|s| {
        let elsewhere = s
            .spawn(|| fails(&|| lock.debug_assert_held_exclusive()))
            .join();
        assert_eq!(elsewhere.expect("query thread"), expected, "another thread");
    });
    drop(guard);
}

#[test]
#[cfg_attr(
    debug_assertions,
    should_panic(expected = "is not held exclusive by this thread")
)]
fn the_assertion_names_the_rule() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock(0_u32);
    lock.debug_assert_held_exclusive();
}

/// Many threads, readers and writers mixed: a writer moves two counters apart and back together
/// while it holds the lock; no reader may ever see them differ, and no update may be lost.
#[test]
fn many_threads_keep_the_invariant() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 1_500;
    let _sim = fltsim::Sim::new();
    let lock = new_lock((0_u64, 0_u64));
    let reads = AtomicUsize::new(0);
    let start = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (lock, reads, start) = (&lock, &reads, &start);
            s.spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    if (t + round) % 3 == 0 {
                        let mut pair = lock.write();
                        pair.0 += 1;
                        thread::yield_now();
                        pair.1 += 1;
                    } else {
                        let pair = lock.read();
                        assert_eq!(pair.0, pair.1, "a reader saw a half-done update");
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let writes = (0..THREADS)
        .map(|t| (0..ROUNDS).filter(|round| (t + round) % 3 == 0).count())
        .sum::<usize>();
    let pair = *lock.read();
    assert_eq!(pair, (writes as u64, writes as u64));
    assert_eq!(reads.load(Ordering::Relaxed) + writes, THREADS * ROUNDS);
    assert_eq!(word(&lock), 0);
}

/// More concurrent readers than the debug tracker has slots: the extra holds are counted, not lost.
#[test]
fn more_readers_than_tracked_slots() {
    const READERS: usize = 24;
    let _sim = fltsim::Sim::new();
    let lock = new_lock(7_u32);
    let all_inside = Arc::new(Barrier::new(READERS));
    thread::scope(|s| {
        for _ in 0..READERS {
            let all_inside = Arc::clone(&all_inside);
            let lock = &lock;
            s.spawn(move || {
                let value = lock.read();
                all_inside.wait();
                assert_eq!(*value, 7);
            });
        }
    });
    assert_eq!(word(&lock), 0);
    *lock.write() += 1;
}

#[test]
fn mapped_guards_release_and_project() {
    let _sim = fltsim::Sim::new();
    let lock = new_lock((String::from("volume"), 3_u32));
    {
        let mut count = PushLockWriteGuard::map(lock.write(), |(_, count)| count);
        *count += 1;
        lock.debug_assert_held_exclusive();
    }
    assert_eq!(word(&lock), 0);
    let name = PushLockReadGuard::map(lock.read(), |(name, _)| name.as_str());
    assert_eq!(&*name, "volume");
    drop(name);
    assert_eq!(lock.read().1, 4);
}

#[test]
fn guards_are_one_pointer() {
    assert_eq!(
        size_of::<PushLockReadGuard<'_, [u64; 8]>>(),
        size_of::<usize>()
    );
    assert_eq!(
        size_of::<PushLockWriteGuard<'_, [u64; 8]>>(),
        size_of::<usize>()
    );
    assert_eq!(
        size_of::<Option<PushLockReadGuard<'_, u8>>>(),
        size_of::<usize>()
    );
}

/// Release builds: the lock adds exactly its 8-byte word to the data (rounded to the alignment).
#[test]
#[cfg(not(debug_assertions))]
fn release_build_lock_is_the_data_plus_one_word() {
    fn expected<T>() -> usize {
        let align = std::mem::align_of::<T>().max(8);
        (8_usize.next_multiple_of(std::mem::align_of::<T>()) + size_of::<T>())
            .next_multiple_of(align)
    }
    assert_eq!(size_of::<PushLock<()>>(), 8);
    assert_eq!(size_of::<PushLock<u8>>(), 16);
    assert_eq!(size_of::<PushLock<u64>>(), 16);
    assert_eq!(size_of::<PushLock<[u8; 24]>>(), 32);
    assert_eq!(size_of::<PushLock<u128>>(), 32);
    assert_eq!(size_of::<PushLock<(u64, u64)>>(), expected::<(u64, u64)>());
    assert_eq!(size_of::<PushLock<[u32; 5]>>(), expected::<[u32; 5]>());
    assert_eq!(std::mem::align_of::<PushLock<u8>>(), 8);
}

/// A lock whose allocation fails: `Err`, no panic, nothing leaked, the value dropped.
#[test]
fn failed_allocation_is_an_error_not_a_panic() {
    use allocator_api2::alloc::{AllocError, Allocator};
    use core::alloc::Layout;
    use core::ptr::NonNull;

    struct Exhausted;
    // SAFETY: never hands out memory.
    unsafe impl Allocator for Exhausted {
        fn allocate(&self, _: Layout) -> Result<NonNull<[u8]>, AllocError> {
            Err(AllocError)
        }
        unsafe fn deallocate(&self, _: NonNull<u8>, _: Layout) {
            unreachable!("nothing was allocated");
        }
    }

    let _sim = fltsim::Sim::new();
    let value = Arc::new(());
    let result = PushLock::try_pin_in(Arc::clone(&value), Exhausted);
    assert!(result.is_err());
    assert_eq!(Arc::strong_count(&value), 1, "the value was dropped");
    assert_eq!(fltsim::pushlock::live(), 0, "no push lock was initialized");
}

#[test]
fn boxed_locks_are_accounted_under_their_tag() {
    let _sim = fltsim::Sim::new();
    let lock =
        PushLock::try_pin_in([0_u8; 100], PagedAllocator::new(Tag::new(*b"ItT1"))).expect("pool");
    let rows = fltsim::pool::outstanding();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, u32::from_le_bytes(*b"ItT1"));
    assert_eq!(rows[0].2, 1);
    drop(lock);
    assert!(fltsim::pool::outstanding().is_empty());
}
