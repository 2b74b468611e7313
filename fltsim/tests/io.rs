//! The pre → file system → post pipeline: callback data, IRQLs, every `FLT_PREOP_*`/`FLT_POSTOP_*`
//! status, registration skip flags, draining, concurrency.

mod common;

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{
    CLEANUP, CLOSE, CREATE, Config, Event, READ, Table, WRITE, configure, count, driver_entry,
    events,
};
use fltsim::{FileSystem, OpenOptions, PostIrql, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::FILE_DIRECTORY_FILE;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_POSTOP_FINISHED_PROCESSING, FLT_POSTOP_MORE_PROCESSING_REQUIRED,
    FLT_PREOP_COMPLETE, FLT_PREOP_DISALLOW_FASTIO, FLT_PREOP_PENDING,
    FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SYNCHRONIZE,
    FLT_RELATED_OBJECTS, FLTFL_CALLBACK_DATA_FAST_IO_OPERATION, FLTFL_CALLBACK_DATA_IRP_OPERATION,
    FLTFL_OPERATION_REGISTRATION_SKIP_CACHED_IO, FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
    FLTFL_POST_OPERATION_DRAINING, FltCompletePendedPreOperation,
    FltDoCompletionProcessingWhenSafe,
};
use windows_sys::Wdk::System::SystemServices::{IRP_NOCACHE, IRP_PAGING_IO, KeEnterCriticalRegion};
use windows_sys::Win32::Foundation::{
    STATUS_ACCESS_DENIED, STATUS_END_OF_FILE, STATUS_MEDIA_WRITE_PROTECTED,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, STATUS_VOLUME_DISMOUNTED,
};

fn start(sim: &Sim, config: Config) -> Volume {
    configure(config);
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    volume
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

fn major_of(data: *mut FLT_CALLBACK_DATA) -> u8 {
    // SAFETY: callback data from Filter Manager.
    unsafe { (*(*data).Iopb).MajorFunction }
}

fn posts(major: u8) -> Vec<Event> {
    events()
        .into_iter()
        .filter(|e| matches!(e, Event::Post { major: m, .. } if *m == major))
        .collect()
}

#[test]
fn create_read_write_close_run_pre_and_post_at_the_os_irqls() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.read(64, 0).information, 64);
    assert_eq!(file.read(64, 64).information, 36);
    assert_eq!(file.read(1, 100).status, STATUS_END_OF_FILE);
    assert_eq!(file.write(10, 200).information, 10);
    assert_eq!(sim.file_size(volume, r"\a.txt"), Some(210));
    assert_eq!(file.close(), STATUS_SUCCESS);
    // The file object is cached: the cache manager holds it, and the lazy writer writes the dirty
    // data back (paging write, after the cleanup) and then lets the close through.
    assert_eq!(sim.closes_pending(), 1);
    sim.run_lazy_writer();
    assert_eq!(sim.closes_pending(), 0);
    let seen: Vec<(u8, bool, u8)> = events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Pre { major, irql, .. } => Some((major, true, irql)),
            Event::Post { major, irql, .. } => Some((major, false, irql)),
            _ => None,
        })
        .collect();
    let close_irql = seen.iter().find(|e| e.0 == CLOSE && e.1).map_or(9, |e| e.2);
    assert!(close_irql <= 1, "a close at PASSIVE_LEVEL or APC_LEVEL");
    assert_eq!(
        seen,
        vec![
            (CREATE, true, 0),
            (CREATE, false, 0),
            (READ, true, 0),
            (READ, false, 2),
            (READ, true, 0),
            (READ, false, 2),
            (READ, true, 0),
            (READ, false, 2),
            (WRITE, true, 0),
            (WRITE, false, 2),
            (CLEANUP, true, 0),
            (CLEANUP, false, 2),
            (WRITE, true, 1),
            (WRITE, false, 2),
            (CLOSE, true, close_irql),
            (CLOSE, false, 2),
        ]
    );
    assert!(matches!(
        posts(READ)[2],
        Event::Post {
            status: STATUS_END_OF_FILE,
            ..
        }
    ));
    finish(&sim);
}

/// What a pre-op saw of one operation (checked outside the callback: a failed assert inside an
/// `extern "system"` callback would abort the test binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    major: u8,
    consistent: bool,
    irp: bool,
    requestor_mode: i8,
    create_options: u32,
    read: Option<(u32, i64, bool)>,
}

#[test]
fn callback_data_carries_the_operation() {
    let sim = Sim::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(move |data, objects, _| {
                // SAFETY: callback data from Filter Manager.
                let (data, iopb) = unsafe { (&*data, &*(*data).Iopb) };
                let consistent = objects.Size == 48
                    && iopb.TargetInstance == objects.Instance
                    && iopb.TargetFileObject.cast_const() == objects.FileObject
                    && objects.Filter != 0
                    && objects.Volume != 0;
                let create_options =
                    // SAFETY: a create's parameters.
                    if iopb.MajorFunction == CREATE { unsafe { iopb.Parameters.Create.Options } } else { 0 };
                let read = (iopb.MajorFunction == READ).then(|| {
                    // SAFETY: a read's parameters.
                    let read = unsafe { iopb.Parameters.Read };
                    (read.Length, read.ByteOffset, !read.ReadBuffer.is_null())
                });
                log.lock().unwrap().push(Seen {
                    major: iopb.MajorFunction,
                    consistent,
                    irp: data.Flags & FLTFL_CALLBACK_DATA_IRP_OPERATION != 0,
                    requestor_mode: data.RequestorMode,
                    create_options,
                    read,
                });
                FLT_PREOP_SUCCESS_NO_CALLBACK
            })),
            ..Config::default()
        },
    );
    drop(sim.open(volume, r"\dir", OpenOptions::directory()).unwrap());
    sim.create_file(volume, r"\dir\b.bin", 50);
    let not_directory = sim
        .open(volume, r"\dir\b.bin", OpenOptions::directory())
        .err();
    assert_eq!(
        not_directory,
        Some(windows_sys::Win32::Foundation::STATUS_NOT_A_DIRECTORY)
    );
    let mut file = sim
        .open(volume, r"\dir\b.bin", OpenOptions::open())
        .unwrap();
    file.read(7, 5);
    drop(file);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|s| s.consistent && s.irp && s.requestor_mode == 1),
        "{seen:?}"
    );
    let creates: Vec<u32> = seen
        .iter()
        .filter(|s| s.major == CREATE)
        .map(|s| s.create_options)
        .collect();
    assert_eq!(creates[0] & FILE_DIRECTORY_FILE, FILE_DIRECTORY_FILE);
    assert_eq!(creates[0] >> 24, 3, "FILE_OPEN_IF");
    assert_eq!(creates[2] & FILE_DIRECTORY_FILE, 0);
    assert_eq!(creates[2] >> 24, 1, "FILE_OPEN");
    let reads: Vec<_> = seen.iter().filter_map(|s| s.read).collect();
    assert_eq!(reads, vec![(7, 5, true)]);
    finish(&sim);
}

#[test]
fn post_irql_can_be_passive() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    sim.set_post_irql(PostIrql::Passive);
    sim.create_file(volume, r"\a.txt", 10);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    assert!(matches!(posts(READ)[0], Event::Post { irql: 0, .. }));
    drop(file);
    finish(&sim);
}

#[test]
fn paging_io_runs_the_pre_op_at_apc_level_and_can_be_skipped() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    sim.create_file(volume, r"\a.txt", 4096);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read_paging(4096, 0);
    assert!(events().contains(&Event::Pre {
        major: READ,
        irp_flags: IRP_PAGING_IO | IRP_NOCACHE,
        irql: 1
    }));
    assert_eq!(
        file.write_paging(8192, 0).information,
        4096,
        "paging writes do not extend"
    );
    drop(file);
    finish(&sim);

    let mut ops = common::default_operations();
    ops[1].Flags = FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO;
    let volume = start(
        &sim,
        Config {
            operations: Some(Table(ops)),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\b.txt", 4096);
    let mut file = sim.open(volume, r"\b.txt", OpenOptions::open()).unwrap();
    file.read_paging(10, 0);
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 0);
    file.read(10, 0);
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 1);
    drop(file);
    finish(&sim);
}

#[test]
fn skip_cached_io_skips_only_cached_io() {
    let sim = Sim::new();
    let mut ops = common::default_operations();
    ops[1].Flags = FLTFL_OPERATION_REGISTRATION_SKIP_CACHED_IO;
    let volume = start(
        &sim,
        Config {
            operations: Some(Table(ops)),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(10, 0);
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 0);
    file.read_noncached(10, 0);
    file.read_paging(10, 0);
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 2);
    drop(file);
    finish(&sim);
}

#[test]
fn no_callback_skips_the_post_op() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|_, _, _| FLT_PREOP_SUCCESS_NO_CALLBACK)),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.read(10, 0).information, 10);
    drop(file);
    assert_eq!(count(|e| matches!(e, Event::Post { .. })), 0);
    finish(&sim);
}

#[test]
fn complete_returns_the_callback_status_without_file_system_or_post() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) == WRITE {
                    // SAFETY: the pre-op owns the callback data's IoStatus when it completes.
                    unsafe {
                        (*data).IoStatus.Anonymous.Status = STATUS_ACCESS_DENIED;
                        (*data).IoStatus.Information = 0;
                    }
                    FLT_PREOP_COMPLETE
                } else {
                    FLT_PREOP_SUCCESS_WITH_CALLBACK
                }
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.write(50, 100).status, STATUS_ACCESS_DENIED);
    assert_eq!(
        sim.file_size(volume, r"\a.txt"),
        Some(100),
        "the file system never saw the write"
    );
    assert!(posts(WRITE).is_empty());
    drop(file);
    finish(&sim);
}

#[test]
fn synchronize_runs_the_post_op_at_passive_with_the_completion_context() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|_, _, context| {
                *context = 0x5150 as *mut c_void;
                FLT_PREOP_SYNCHRONIZE
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(10, 0);
    assert_eq!(
        posts(READ),
        vec![Event::Post {
            major: READ,
            flags: 0,
            irql: 0,
            status: STATUS_SUCCESS,
            context: 0x5150
        }]
    );
    drop(file);
    finish(&sim);
}

#[test]
fn disallowed_fast_io_is_reissued_as_an_irp() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                // SAFETY: callback data from Filter Manager.
                if unsafe { (*data).Flags } & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0 {
                    FLT_PREOP_DISALLOW_FASTIO
                } else {
                    FLT_PREOP_SUCCESS_WITH_CALLBACK
                }
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.fast_read(10, 0).information, 10);
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 2);
    assert_eq!(posts(READ).len(), 1, "only the IRP asked for a post-op");
    drop(file);
    finish(&sim);
}

#[test]
#[should_panic(expected = "fltsim: FLT_PREOP_DISALLOW_FASTIO returned for an IRP operation")]
fn disallow_fastio_on_an_irp_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) == READ {
                    FLT_PREOP_DISALLOW_FASTIO
                } else {
                    FLT_PREOP_SUCCESS_NO_CALLBACK
                }
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(10, 0);
}

#[test]
fn pended_pre_ops_resume_when_completed_from_another_thread() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) != READ {
                    return FLT_PREOP_SUCCESS_WITH_CALLBACK;
                }
                let address = data as usize;
                std::thread::spawn(move || {
                    // SAFETY: the pended operation's callback data, completed once.
                    unsafe {
                        FltCompletePendedPreOperation(
                            address as *const FLT_CALLBACK_DATA,
                            FLT_PREOP_SUCCESS_WITH_CALLBACK,
                            0x77 as *const c_void,
                        );
                    }
                });
                FLT_PREOP_PENDING
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.read(10, 0).information, 10);
    assert!(matches!(posts(READ)[0], Event::Post { context: 0x77, .. }));
    drop(file);
    finish(&sim);
}

#[test]
#[should_panic(
    expected = "fltsim: FltCompletePendedPreOperation called for an operation whose pre-op did not return FLT_PREOP_PENDING"
)]
fn completing_an_operation_that_is_not_pended_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                // SAFETY: deliberately broken: the operation was not pended.
                unsafe {
                    FltCompletePendedPreOperation(
                        data,
                        FLT_PREOP_SUCCESS_NO_CALLBACK,
                        std::ptr::null(),
                    );
                }
                FLT_PREOP_SUCCESS_NO_CALLBACK
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()));
}

#[test]
#[should_panic(expected = "is not a pended operation (not pended, or completed twice)")]
fn completing_a_pended_operation_twice_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) != READ {
                    return FLT_PREOP_SUCCESS_NO_CALLBACK;
                }
                // SAFETY: deliberately broken: the pended operation is completed twice (before the
                // pre-op returns, which Filter Manager allows once).
                unsafe {
                    FltCompletePendedPreOperation(
                        data,
                        FLT_PREOP_SUCCESS_NO_CALLBACK,
                        std::ptr::null(),
                    );
                    FltCompletePendedPreOperation(
                        data,
                        FLT_PREOP_SUCCESS_NO_CALLBACK,
                        std::ptr::null(),
                    );
                }
                FLT_PREOP_PENDING
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

/// Lets held I/O go even if the scenario panics, so the scope can join the reader.
struct Release<'a>(&'a Sim);
impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release_io();
    }
}

fn drain_scenario(detach: impl FnOnce(&Sim, Volume)) {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    sim.hold_io();
    std::thread::scope(|scope| {
        let _release = Release(&sim);
        let reader = scope.spawn(|| file.read(10, 0));
        sim.wait_for_held_io(1);
        detach(&sim, volume);
        sim.release_io();
        let result = reader.join().unwrap();
        assert_eq!(result.information, 10, "the I/O itself completes");
    });
    let read_posts = posts(READ);
    assert_eq!(read_posts.len(), 1, "drained exactly once: {read_posts:?}");
    assert!(matches!(
        read_posts[0],
        Event::Post {
            flags: FLTFL_POST_OPERATION_DRAINING,
            ..
        }
    ));
    let order: Vec<&str> = events()
        .iter()
        .filter_map(|e| match e {
            Event::TeardownStart(_) => Some("start"),
            Event::Post { major: READ, .. } => Some("drain"),
            Event::TeardownComplete(_) => Some("complete"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["start", "drain", "complete"]);
    drop(file);
    if sim.driver_loaded() {
        finish(&sim);
    } else {
        sim.verifier_report().assert_clean();
    }
}

#[test]
fn detach_with_io_in_flight_drains_post_ops_once() {
    drain_scenario(|sim, volume| assert_eq!(sim.detach(volume), STATUS_SUCCESS));
}

#[test]
fn unload_with_io_in_flight_drains_post_ops_once() {
    drain_scenario(|sim, _| assert_eq!(sim.unload(true), STATUS_SUCCESS));
}

#[test]
fn concurrent_io_from_many_threads_is_counted_exactly() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    for n in 0..4 {
        sim.create_file(volume, &format!(r"\f{n}.bin"), 1 << 20);
    }
    std::thread::scope(|scope| {
        for t in 0..8 {
            let sim = &sim;
            scope.spawn(move || {
                let mut file = sim
                    .open(volume, &format!(r"\f{}.bin", t % 4), OpenOptions::open())
                    .unwrap();
                for i in 0..50 {
                    assert_eq!(file.read(512, i * 512).information, 512);
                    file.write(16, i * 16);
                }
            });
        }
    });
    assert_eq!(count(|e| matches!(e, Event::Pre { major: READ, .. })), 400);
    assert_eq!(posts(READ).len(), 400);
    assert_eq!(posts(WRITE).len(), 400);
    finish(&sim);
}

unsafe extern "system" fn safe_post(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    context: *const c_void,
    flags: u32,
) -> i32 {
    // Record the safe callback as a post-op event at its own IRQL.
    // SAFETY: forwarded Filter Manager arguments.
    unsafe { common::post_operation(data, objects, context, flags | 0x100) };
    FLT_POSTOP_FINISHED_PROCESSING
}

#[test]
fn completion_processing_when_safe_runs_at_passive_on_a_worker() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(|data, objects, context, flags| {
                if flags & 0x100 != 0 || major_of(data) != READ {
                    return FLT_POSTOP_FINISHED_PROCESSING;
                }
                let mut status = FLT_POSTOP_FINISHED_PROCESSING;
                // SAFETY: the post-op's own arguments.
                let queued = unsafe {
                    FltDoCompletionProcessingWhenSafe(
                        data,
                        objects,
                        context,
                        flags,
                        Some(safe_post),
                        &raw mut status,
                    )
                };
                // SAFETY: callback data from Filter Manager.
                let paging = unsafe { (*(*data).Iopb).IrpFlags } & IRP_PAGING_IO != 0;
                assert_eq!(queued, !paging, "paging I/O cannot be posted");
                if queued {
                    status
                } else {
                    FLT_POSTOP_FINISHED_PROCESSING
                }
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.read(10, 0).information, 10);
    file.read_paging(10, 0);
    let safe: Vec<Event> = events()
        .into_iter()
        .filter(|e| matches!(e, Event::Post { flags: 0x100, .. }))
        .collect();
    assert_eq!(safe.len(), 1);
    assert!(matches!(
        safe[0],
        Event::Post {
            irql: 0,
            major: READ,
            ..
        }
    ));
    drop(file);
    finish(&sim);
}

#[test]
#[should_panic(
    expected = "fltsim: not modeled: FLT_POSTOP_MORE_PROCESSING_REQUIRED without FltDoCompletionProcessingWhenSafe"
)]
fn more_processing_without_deferral_is_reported_as_not_modeled() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(|_, _, _, _| FLT_POSTOP_MORE_PROCESSING_REQUIRED)),
            ..Config::default()
        },
    );
    drop(sim.open(volume, r"\missing", OpenOptions::open()));
}

#[test]
#[should_panic(
    expected = "fltsim: APC_INDEX_MISMATCH: PreOperationCallback returned with normal kernel APCs disabled"
)]
fn a_pre_op_leaving_apcs_disabled_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|_, _, _| {
                // SAFETY: deliberately broken: a critical region entered and never left.
                unsafe { KeEnterCriticalRegion() };
                FLT_PREOP_SUCCESS_NO_CALLBACK
            })),
            ..Config::default()
        },
    );
    drop(sim.open(volume, r"\missing", OpenOptions::open()));
}

#[test]
fn failed_creates_get_a_post_op_but_no_cleanup_or_close() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    assert_eq!(
        sim.open(volume, r"\missing.txt", OpenOptions::open()).err(),
        Some(STATUS_OBJECT_NAME_NOT_FOUND)
    );
    assert!(matches!(
        posts(CREATE)[0],
        Event::Post {
            status: STATUS_OBJECT_NAME_NOT_FOUND,
            ..
        }
    ));
    assert_eq!(
        count(|e| matches!(e, Event::Pre { major, .. } if *major == CLEANUP)),
        0
    );
    finish(&sim);
}

#[test]
fn read_only_and_dismounted_volumes_fail_io() {
    let sim = Sim::new();
    configure(Config::default());
    let cd = sim.add_volume(VolumeSpec::new(r"\Device\CdRom0", FileSystem::Cdfs));
    let disk = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(cd, r"\setup.exe", 100);
    sim.create_file(disk, r"\a.txt", 100);
    let mut on_cd = sim.open(cd, r"\setup.exe", OpenOptions::open()).unwrap();
    assert_eq!(on_cd.write(1, 0).status, STATUS_MEDIA_WRITE_PROTECTED);
    assert_eq!(
        sim.open(cd, r"\new.txt", OpenOptions::create()).err(),
        Some(STATUS_MEDIA_WRITE_PROTECTED)
    );
    let mut on_disk = sim.open(disk, r"\a.txt", OpenOptions::open()).unwrap();
    sim.remove_volume(disk);
    let pre_reads = count(|e| matches!(e, Event::Pre { major: READ, .. }));
    assert_eq!(on_disk.read(1, 0).status, STATUS_VOLUME_DISMOUNTED);
    assert_eq!(
        count(|e| matches!(e, Event::Pre { major: READ, .. })),
        pre_reads,
        "no instance any more"
    );
    drop(on_disk);
    drop(on_cd);
    finish(&sim);
}

#[test]
fn volume_opens_carry_fo_volume_open() {
    let sim = Sim::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let flagged = Arc::clone(&seen);
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(move |data, _, _| {
                // SAFETY: callback data with its file object.
                let flags = unsafe { (*common::file_object(data)).Flags };
                if flags & windows_sys::Wdk::System::SystemServices::FO_VOLUME_OPEN != 0 {
                    flagged.fetch_add(1, Ordering::SeqCst);
                }
                FLT_PREOP_SUCCESS_NO_CALLBACK
            })),
            ..Config::default()
        },
    );
    let mut handle = sim.open(volume, "", OpenOptions::volume()).unwrap();
    assert_eq!(handle.read(512, 0).information, 512);
    drop(handle);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "create, read, cleanup and close"
    );
    finish(&sim);
}

#[test]
fn the_sim_is_shared_across_threads_and_handles_move_between_them() {
    fn shared<T: Sync>() {}
    fn movable<T: Send>() {}
    shared::<Sim>();
    movable::<fltsim::FileHandle<'static>>();
    movable::<fltsim::PortClient<'static>>();
}
