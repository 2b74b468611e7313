//! Races fltsim makes happen on purpose: operations and mounts during an unload, a create during a
//! detach, and a callback in progress while its instance tears down. Pause points
//! ([`fltsim::Point`]) stop a thread exactly where the race needs it, so each scenario runs the same
//! way every time.

mod common;

use std::ptr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{CREATE, Config, Event, READ, allocate, configure, count, driver_entry, events};
use fltsim::{FileSystem, OpenOptions, Point, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Foundation::PagedPool;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_POSTOP_FINISHED_PROCESSING, FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT,
    FLTFL_POST_OPERATION_DRAINING, FltAllocateContext, FltReleaseContext, FltSetStreamContext,
    FltUnregisterFilter, PFLT_CONTEXT,
};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_FLT_DELETING_OBJECT, STATUS_SUCCESS};

/// Generous bound that turns a hang into a test failure (never a timing assertion).
const HANG: Duration = Duration::from_secs(30);

fn ntfs(sim: &Sim, n: u32) -> Volume {
    sim.add_volume(VolumeSpec::new(
        &format!(r"\Device\HarddiskVolume{n}"),
        FileSystem::Ntfs,
    ))
}

/// Post-ops of `major` seen so far, as their flags.
fn post_flags(major: u8) -> Vec<u32> {
    events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Post {
                major: m, flags, ..
            } if m == major => Some(flags),
            _ => None,
        })
        .collect()
}

fn setups() -> usize {
    count(|e| matches!(e, Event::Setup { .. }))
}

/// A post-create that sets a stream context, recording `FltSetStreamContext`'s status.
fn stream_context_post_create(statuses: Arc<Mutex<Vec<NTSTATUS>>>) -> Config {
    Config {
        post: Some(Arc::new(move |data, objects, _, flags| {
            let (major, status) = (common::major_of(data), common::status_of(data));
            if major != CREATE || status < 0 || flags & FLTFL_POST_OPERATION_DRAINING != 0 {
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            let Ok(context) = allocate(FLT_STREAM_CONTEXT) else {
                return FLT_POSTOP_FINISHED_PROCESSING;
            };
            // SAFETY: valid arguments in post-create at PASSIVE_LEVEL; no old context asked for.
            let set = unsafe {
                FltSetStreamContext(
                    objects.Instance,
                    objects.FileObject,
                    FLT_SET_CONTEXT_KEEP_IF_EXISTS,
                    context,
                    ptr::null_mut(),
                )
            };
            statuses.lock().unwrap().push(set);
            // SAFETY: our reference from FltAllocateContext.
            unsafe { FltReleaseContext(context) };
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

#[test]
fn until_unregistration_operations_and_mounts_still_reach_the_filter() {
    let sim = Sim::new();
    configure(Config::default());
    let c = ntfs(&sim, 1);
    sim.create_file(c, r"\a.txt", 100);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let mut open = sim.open(c, r"\a.txt", OpenOptions::open()).unwrap();
    sim.hold_io();
    thread::scope(|scope| {
        let reader = scope.spawn(move || {
            open.read(10, 0);
            open.write(10, 0);
            open
        });
        sim.wait_for_held_io(1);
        let pause = sim.pause_at(Point::Unregister);
        let unload = scope.spawn(|| sim.unload(false));
        pause.wait();
        // FilterUnload is inside FltUnregisterFilter: in-flight I/O completes normally...
        sim.release_io();
        let open = reader.join().unwrap();
        assert_eq!(
            post_flags(READ),
            [0],
            "an ordinary post-read, not a drained one"
        );
        // ...new operations are filtered...
        let before = count(|e| matches!(e, Event::Pre { major: CREATE, .. }));
        drop(sim.open(c, r"\a.txt", OpenOptions::open()).unwrap());
        assert_eq!(
            count(|e| matches!(e, Event::Pre { major: CREATE, .. })),
            before + 1
        );
        // ...and a volume mounted now is offered to the filter.
        let setups_before = setups();
        let d = ntfs(&sim, 2);
        assert_eq!(setups(), setups_before + 1);
        assert!(sim.instance(d).is_some());
        pause.resume();
        assert_eq!(unload.join().unwrap(), STATUS_SUCCESS);
        drop(open);
    });
    assert_eq!(
        count(|e| matches!(e, Event::TeardownComplete(_))),
        2,
        "both instances, including the one attached during the unload, are torn down"
    );
    sim.verifier_report().assert_clean();
}

#[test]
fn once_instances_tear_down_no_volume_is_offered_and_no_context_allocated() {
    let sim = Sim::new();
    configure(Config::default());
    let c = ntfs(&sim, 1);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let filter = common::filter();
    thread::scope(|scope| {
        let pause = sim.pause_at(Point::TeardownStarted(c));
        let unload = scope.spawn(|| sim.unload(false));
        pause.wait();
        let setups_before = setups();
        let d = ntfs(&sim, 2);
        assert_eq!(
            setups(),
            setups_before,
            "no setup once unregistration began"
        );
        assert!(sim.instance(d).is_none());
        let mut context: PFLT_CONTEXT = ptr::null_mut();
        // SAFETY: the registered filter (being torn down) and a valid output variable.
        let status = unsafe {
            FltAllocateContext(
                filter,
                u16::try_from(FLT_STREAM_CONTEXT).unwrap(),
                16,
                PagedPool,
                &raw mut context,
            )
        };
        assert_eq!(status, STATUS_FLT_DELETING_OBJECT);
        pause.resume();
        assert_eq!(unload.join().unwrap(), STATUS_SUCCESS);
    });
    sim.verifier_report().assert_clean();
}

/// The filter handle a buggy test filter keeps, and clears in `FilterUnload` before unregistering.
static CLEARED_TOO_EARLY: AtomicIsize = AtomicIsize::new(0);

#[test]
#[should_panic(expected = "fltsim: FltAllocateContext: Filter is NULL")]
fn a_filter_handle_cleared_before_unregistering_is_caught_by_a_post_create() {
    let sim = Sim::new();
    configure(Config {
        entry: Some(Arc::new(|filter| {
            CLEARED_TOO_EARLY.store(filter, Ordering::SeqCst);
            STATUS_SUCCESS
        })),
        unload: Some(Arc::new(|_| {
            let filter = CLEARED_TOO_EARLY.swap(0, Ordering::SeqCst);
            // SAFETY: the registered filter, unregistered once.
            unsafe { FltUnregisterFilter(filter) };
            STATUS_SUCCESS
        })),
        post: Some(Arc::new(|data, _, _, _| {
            if common::major_of(data) == CREATE {
                let mut context: PFLT_CONTEXT = ptr::null_mut();
                // SAFETY: the bug under test: the global handle instead of FltObjects->Filter.
                let status = unsafe {
                    FltAllocateContext(
                        CLEARED_TOO_EARLY.load(Ordering::SeqCst),
                        u16::try_from(FLT_STREAM_CONTEXT).unwrap(),
                        16,
                        PagedPool,
                        &raw mut context,
                    )
                };
                if status >= 0 {
                    // SAFETY: our reference.
                    unsafe { FltReleaseContext(context) };
                }
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    });
    let c = ntfs(&sim, 1);
    sim.create_file(c, r"\a.txt", 100);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    thread::scope(|scope| {
        let pause = sim.pause_at(Point::Unregister);
        let unload = scope.spawn(|| sim.unload(false));
        pause.wait();
        let opened = sim.open(c, r"\a.txt", OpenOptions::open());
        drop(opened);
        pause.resume();
        let _ = unload.join();
    });
}

#[test]
fn a_create_completing_during_a_detach_gets_its_post_create_once() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    configure(stream_context_post_create(Arc::clone(&statuses)));
    let c = ntfs(&sim, 1);
    sim.create_file(c, r"\a.txt", 100);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.hold_io();
    thread::scope(|scope| {
        let create = scope.spawn(|| sim.open(c, r"\a.txt", OpenOptions::open()).is_ok());
        sim.wait_for_held_io(1);
        let pause = sim.pause_at(Point::TeardownStarted(c));
        let detach = scope.spawn(|| sim.detach(c));
        pause.wait();
        // The teardown has started and not drained yet: the create completes now, and its
        // post-create runs as an ordinary one against an instance that is going away.
        sim.release_io();
        assert!(create.join().unwrap());
        pause.resume();
        assert_eq!(detach.join().unwrap(), STATUS_SUCCESS);
    });
    assert_eq!(post_flags(CREATE), [0], "one post-create, not drained");
    assert_eq!(
        *statuses.lock().unwrap(),
        [STATUS_FLT_DELETING_OBJECT],
        "the instance is tearing down: no new stream context"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_create_still_below_the_filter_when_a_detach_drains_gets_a_draining_post_create_only() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    configure(stream_context_post_create(Arc::clone(&statuses)));
    let c = ntfs(&sim, 1);
    sim.create_file(c, r"\a.txt", 100);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.hold_io();
    thread::scope(|scope| {
        let create = scope.spawn(|| sim.open(c, r"\a.txt", OpenOptions::open()).is_ok());
        sim.wait_for_held_io(1);
        assert_eq!(sim.detach(c), STATUS_SUCCESS);
        sim.release_io();
        assert!(create.join().unwrap(), "the create itself succeeds");
    });
    assert_eq!(post_flags(CREATE), [FLTFL_POST_OPERATION_DRAINING]);
    assert!(statuses.lock().unwrap().is_empty());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_teardown_waits_for_a_post_create_stopped_inside_a_call() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    configure(stream_context_post_create(Arc::clone(&statuses)));
    let c = ntfs(&sim, 1);
    sim.create_file(c, r"\a.txt", 100);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    thread::scope(|scope| {
        let in_post_create = sim.pause_at(Point::Call("FltAllocateContext"));
        let create = scope.spawn(|| sim.open(c, r"\a.txt", OpenOptions::open()).is_ok());
        in_post_create.wait();
        let detach = scope.spawn(|| sim.detach(c));
        // The teardown drains: it waits for the post-create, which fltsim's report shows.
        let start = Instant::now();
        while !fltsim::hang::report().contains("(teardown draining)") {
            assert!(start.elapsed() < HANG, "the detach never started draining");
            thread::yield_now();
        }
        assert!(
            !detach.is_finished(),
            "the teardown waits for the running post-create"
        );
        in_post_create.resume();
        assert!(create.join().unwrap());
        assert_eq!(detach.join().unwrap(), STATUS_SUCCESS);
    });
    assert_eq!(*statuses.lock().unwrap(), [STATUS_FLT_DELETING_OBJECT]);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}
