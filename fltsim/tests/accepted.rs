//! Correct usage Windows accepts, which fltsim used to reject: each test does what the documentation
//! allows and sees fltsim accept it.

mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex};

use common::{
    CREATE, Config, Event, READ, configure, driver_entry, events, major_of, set_status, status_of,
};
use fltsim::irql::{APC_LEVEL, DISPATCH_LEVEL};
use fltsim::{FileSystem, OpenOptions, PostIrql, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_POSTOP_CALLBACK_STATUS, FLT_POSTOP_FINISHED_PROCESSING,
    FLT_PREOP_COMPLETE, FLT_PREOP_PENDING, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SYNCHRONIZE,
    FLT_RELATED_OBJECTS, FLT_VOLUME_PROPERTIES, FLTFL_POST_OPERATION_DRAINING,
    FltBuildDefaultSecurityDescriptor, FltCompletePendedPreOperation,
    FltDoCompletionProcessingWhenSafe, FltFreeSecurityDescriptor, FltGetVolumeName,
    FltGetVolumeProperties,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_MEDIA_WRITE_PROTECTED, STATUS_SUCCESS,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

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

#[test]
fn draining_post_ops_run_at_apc_level_or_below_even_when_completions_run_at_dispatch() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    sim.hold_io();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| file.read(1, 0));
        sim.wait_for_held_io(1);
        assert_eq!(sim.detach(volume), STATUS_SUCCESS);
        sim.release_io();
        reader.join().unwrap();
    });
    let drained: Vec<u8> = events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Post {
                major: READ,
                flags: FLTFL_POST_OPERATION_DRAINING,
                irql,
                ..
            } => Some(irql),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 1);
    assert!(drained[0] <= APC_LEVEL, "drained at IRQL {}", drained[0]);
    drop(file);
    finish(&sim);
}

#[test]
fn volume_routines_work_in_the_teardown_callbacks_of_a_dismount() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&statuses);
    let volume = start(
        &sim,
        Config {
            teardown_start: Some(Arc::new(move |objects| {
                let mut needed = 0u32;
                // SAFETY: the instance's volume during its teardown; a size query.
                let status =
                    unsafe { FltGetVolumeName(objects.Volume, ptr::null_mut(), &raw mut needed) };
                log.lock().unwrap().push((status, needed));
            })),
            ..Config::default()
        },
    );
    sim.remove_volume(volume);
    assert_eq!(
        *statuses.lock().unwrap(),
        [(STATUS_BUFFER_TOO_SMALL, 2 * 23)],
        r"the size of \Device\HarddiskVolume1"
    );
    finish(&sim);
}

#[test]
fn registering_starting_and_volume_and_port_routines_are_allowed_at_apc_level() {
    let sim = Sim::new();
    configure(Config::default());
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    {
        let _apc = fltsim::irql::raise(APC_LEVEL);
        assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
        let mut length = 0u32;
        // SAFETY: a live volume; a size query into a NULL buffer.
        let status =
            unsafe { FltGetVolumeProperties(volume.as_raw(), ptr::null_mut(), 0, &raw mut length) };
        assert_eq!(status, STATUS_BUFFER_TOO_SMALL);
        assert!(length as usize > size_of::<FLT_VOLUME_PROPERTIES>());
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: an output variable and a non-zero access mask.
        let status = unsafe { FltBuildDefaultSecurityDescriptor(&raw mut descriptor, 1) };
        assert_eq!(status, STATUS_SUCCESS);
        // SAFETY: the descriptor just built.
        unsafe { FltFreeSecurityDescriptor(descriptor) };
    }
    assert!(sim.instance(volume).is_some());
    finish(&sim);
}

unsafe extern "system" fn safe_post(
    _data: *mut FLT_CALLBACK_DATA,
    _objects: *const FLT_RELATED_OBJECTS,
    _context: *const c_void,
    _flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    FLT_POSTOP_FINISHED_PROCESSING
}

#[test]
fn when_safe_runs_paging_io_completions_at_once_below_dispatch() {
    let sim = Sim::new();
    sim.set_post_irql(PostIrql::Passive);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(move |data, objects, context, flags| {
                if major_of(data) != READ {
                    return FLT_POSTOP_FINISHED_PROCESSING;
                }
                let mut status: FLT_POSTOP_CALLBACK_STATUS = 0x7777;
                // SAFETY: the post-op's own arguments and an output variable.
                let done = unsafe {
                    FltDoCompletionProcessingWhenSafe(
                        data,
                        objects,
                        context,
                        flags,
                        Some(safe_post),
                        &raw mut status,
                    )
                };
                log.lock().unwrap().push((done, status));
                status
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read_paging(4096, 0);
    drop(file);
    assert_eq!(
        *seen.lock().unwrap(),
        [(true, FLT_POSTOP_FINISHED_PROCESSING)]
    );
    finish(&sim);
}

#[test]
fn a_pended_pre_op_may_be_completed_at_dispatch_with_flt_preop_complete() {
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
                    let data = address as *mut FLT_CALLBACK_DATA;
                    let _dispatch = fltsim::irql::raise(DISPATCH_LEVEL);
                    set_status(data, STATUS_MEDIA_WRITE_PROTECTED);
                    // SAFETY: the pended operation's callback data, live until completed.
                    unsafe { FltCompletePendedPreOperation(data, FLT_PREOP_COMPLETE, ptr::null()) };
                });
                FLT_PREOP_PENDING
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.read(1, 0).status, STATUS_MEDIA_WRITE_PROTECTED);
    drop(file);
    finish(&sim);
}

#[test]
fn synchronize_on_fast_io_is_treated_as_success_with_callback() {
    let sim = Sim::new();
    let statuses: Arc<Mutex<Vec<NTSTATUS>>> = Arc::default();
    let log = Arc::clone(&statuses);
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) == READ {
                    FLT_PREOP_SYNCHRONIZE
                } else {
                    FLT_PREOP_SUCCESS_WITH_CALLBACK
                }
            })),
            post: Some(Arc::new(move |data, _, _, _| {
                if major_of(data) == READ {
                    log.lock().unwrap().push(status_of(data));
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    statuses.lock().unwrap().clear();
    // Cached now: the file system serves the fast read, whose post-op runs after SYNCHRONIZE.
    file.fast_read(1, 0);
    drop(file);
    assert_eq!(*statuses.lock().unwrap(), [STATUS_SUCCESS]);
    assert!(
        events()
            .iter()
            .any(|e| matches!(e, Event::Post { major: CREATE, .. }))
    );
    finish(&sim);
}
