//! Cleanup and close as Windows delivers them: the close of a cached file later, from the lazy
//! writer's thread, sometimes at `APC_LEVEL`; paging writes of dirty data after the cleanup; a stream
//! (and its context) that outlives its handles; stream file objects that get only a close.

mod common;

use std::ptr;
use std::sync::{Arc, Mutex};

use common::{CLEANUP, CLOSE, CREATE, Config, Event, READ, WRITE, configure, driver_entry, events};
use fltsim::{CloseTiming, FileSystem, MAX_DEFERRED_CLOSES, OpenOptions, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_SUCCESS_WITH_CALLBACK,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT, FltGetStreamContext, FltReleaseContext,
    FltSetStreamContext, PFLT_CONTEXT,
};
use windows_sys::Wdk::System::SystemServices::{IRP_PAGING_IO, IoGetTopLevelIrp};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS};

/// What a pre-op saw: major function, IRP flags, IRQL, thread name, top-level IRP.
type Seen = Arc<Mutex<Vec<(u8, u32, u8, String, usize)>>>;

fn recording(seen: &Seen) -> Config {
    let log = Arc::clone(seen);
    Config {
        pre: Some(Arc::new(move |data, _, _| {
            // SAFETY: callback data from Filter Manager, valid during the callback.
            let iopb = unsafe { (*data).Iopb };
            // SAFETY: its parameter block, valid as long as the callback data.
            let iopb = unsafe { &*iopb };
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            // SAFETY: no preconditions.
            let top = unsafe { IoGetTopLevelIrp() } as usize;
            // SAFETY: no preconditions.
            let irql = unsafe { windows_sys::Wdk::System::SystemServices::KeGetCurrentIrql() };
            log.lock()
                .unwrap()
                .push((iopb.MajorFunction, iopb.IrpFlags, irql, thread, top));
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        ..Config::default()
    }
}

fn start(sim: &Sim, config: Config) -> Volume {
    configure(config);
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    sim.create_file(volume, r"\a.txt", 4096);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    volume
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

fn majors(seen: &Seen) -> Vec<u8> {
    seen.lock().unwrap().iter().map(|s| s.0).collect()
}

#[test]
fn the_close_of_a_cached_file_comes_later_from_the_lazy_writer_after_its_paging_write() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.write(100, 0);
    assert_eq!(file.close(), STATUS_SUCCESS);
    assert_eq!(majors(&seen), [CREATE, WRITE, CLEANUP], "no close yet");
    assert_eq!(sim.closes_pending(), 1);
    sim.run_lazy_writer();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    let (major, flags, irql, thread, top) = &seen[3];
    assert_eq!(*major, WRITE);
    assert_ne!(
        flags & IRP_PAGING_IO,
        0,
        "the dirty data goes back by paging I/O"
    );
    assert_eq!(*irql, 1);
    assert_eq!(thread, "fltsim lazy writer");
    assert_eq!(*top, fltsim::kernel::FSRTL_CACHE_TOP_LEVEL_IRP);
    assert_eq!(seen[4].0, CLOSE);
    assert_eq!(
        seen[4].3, "fltsim lazy writer",
        "the close on another thread"
    );
    finish(&sim);
}

#[test]
fn some_closes_arrive_at_apc_level() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    for n in 0..16 {
        let mut file = sim
            .open(volume, &format!(r"\f{n}"), OpenOptions::create())
            .unwrap();
        file.read(1, 0);
    }
    sim.run_lazy_writer();
    let close_irqls: Vec<u8> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == CLOSE)
        .map(|s| s.2)
        .collect();
    assert_eq!(close_irqls.len(), 16);
    assert!(
        close_irqls.contains(&0) && close_irqls.contains(&1),
        "{close_irqls:?}"
    );
    finish(&sim);
}

#[test]
fn immediate_timing_closes_right_after_the_cleanup_on_the_closing_thread() {
    let sim = Sim::new();
    sim.set_close_timing(CloseTiming::Immediate);
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.write(100, 0);
    drop(file);
    assert_eq!(majors(&seen), [CREATE, WRITE, CLEANUP, CLOSE]);
    assert_eq!(sim.closes_pending(), 0);
    finish(&sim);
}

#[test]
fn uncached_file_objects_close_at_once() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read_noncached(512, 0);
    drop(file);
    assert_eq!(majors(&seen), [CREATE, READ, CLEANUP, CLOSE]);
    finish(&sim);
}

/// A filter that sets a stream context in post-create and records `FltSetStreamContext`'s status.
fn stream_contexts(statuses: Arc<Mutex<Vec<NTSTATUS>>>) -> Config {
    Config {
        post: Some(Arc::new(move |data, objects, _, _| {
            let (major, status) = (common::major_of(data), common::status_of(data));
            if major == CREATE && status >= 0 {
                let context = common::allocate(FLT_STREAM_CONTEXT).unwrap();
                // SAFETY: valid arguments in post-create at PASSIVE_LEVEL.
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
                // SAFETY: our reference.
                unsafe { FltReleaseContext(context) };
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

#[test]
fn a_stream_context_outlives_its_handles_and_a_reopen_before_the_close_finds_it() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let volume = start(&sim, stream_contexts(Arc::clone(&statuses)));
    let mut first = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    first.read(10, 0);
    drop(first);
    let cleanups = || {
        events()
            .iter()
            .filter(|e| matches!(e, Event::Cleanup { .. }))
            .count()
    };
    assert_eq!(
        cleanups(),
        0,
        "the stream context lives on after the last handle"
    );
    let again = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: a live instance and file object; an output variable.
    let found = unsafe {
        FltGetStreamContext(
            sim.instance(volume).unwrap(),
            again.file_object(),
            &raw mut context,
        )
    };
    assert_eq!(found, STATUS_SUCCESS);
    // SAFETY: the reference just taken.
    unsafe { FltReleaseContext(context) };
    assert_eq!(
        *statuses.lock().unwrap(),
        [
            STATUS_SUCCESS,
            windows_sys::Win32::Foundation::STATUS_FLT_CONTEXT_ALREADY_DEFINED
        ],
        "the reopen found the first open's stream context"
    );
    drop(again);
    assert_eq!(
        cleanups(),
        1,
        "only the reopen's own context, refused, is gone"
    );
    sim.run_lazy_writer();
    assert_eq!(cleanups(), 2, "the stream's goes with its last close");
    finish(&sim);
}

#[test]
fn a_stream_file_object_gets_paging_io_and_only_a_close() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let mut stream = sim.stream_file_object(volume, r"\a.txt").unwrap();
    assert!(sim.stream_file_object(volume, r"\missing").is_none());
    assert_eq!(stream.read_paging(4096, 0).information, 4096);
    stream.close();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [READ, CLOSE],
        "no create, no cleanup"
    );
    assert_eq!(seen[0].2, 1, "paging I/O at APC_LEVEL");
    finish(&sim);
}

#[test]
fn too_many_closes_held_back_make_the_lazy_writer_run() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let files = MAX_DEFERRED_CLOSES + 10;
    for n in 0..files {
        let mut file = sim
            .open(volume, &format!(r"\f{n}"), OpenOptions::create())
            .unwrap();
        file.read(1, 0);
    }
    let closes = seen.lock().unwrap().iter().filter(|s| s.0 == CLOSE).count();
    assert_eq!(closes + sim.closes_pending(), files);
    assert!(closes > 0 && sim.closes_pending() <= MAX_DEFERRED_CLOSES);
    finish(&sim);
}

#[test]
fn a_dismount_flushes_and_closes_before_the_instance_tears_down() {
    let sim = Sim::new();
    let seen = Seen::default();
    let volume = start(&sim, recording(&seen));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.write(10, 0);
    drop(file);
    sim.remove_volume(volume);
    assert_eq!(majors(&seen), [CREATE, WRITE, CLEANUP, WRITE, CLOSE]);
    assert!(
        events()
            .iter()
            .any(|e| matches!(e, Event::TeardownComplete(_)))
    );
    finish(&sim);
}
