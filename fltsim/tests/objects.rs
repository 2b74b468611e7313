//! `FltEnumerateInstances`, `FltObjectReference` / `FltObjectDereference` (rundown references that
//! hold an instance's teardown back) and `FltGetFileSystemType`.

mod common;

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Config, configure, driver_entry};
use fltsim::irql::{self, DISPATCH_LEVEL};
use fltsim::{FileSystem, Sim, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FltEnumerateInstances, FltGetFileSystemType, FltObjectDereference, FltObjectReference,
    PFLT_INSTANCE,
};
use windows_sys::Win32::Foundation::{
    STATUS_BUFFER_TOO_SMALL, STATUS_FLT_DELETING_OBJECT, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FSTYPE_NTFS, FLT_FSTYPE_REFS, FLT_FSTYPE_UNKNOWN,
};

fn loaded(volumes: &[(&str, FileSystem)]) -> Sim {
    loaded_with(volumes, Config::default())
}

fn loaded_with(volumes: &[(&str, FileSystem)], config: Config) -> Sim {
    let sim = Sim::new();
    configure(config);
    for (name, fs) in volumes {
        sim.add_volume(VolumeSpec::new(name, *fs));
    }
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim
}

/// Enumerates the filter's instances into `list`; returns the status and the count.
fn enumerate(list: &mut [PFLT_INSTANCE]) -> (i32, u32) {
    let mut count = 0;
    // SAFETY: `list` holds `list.len()` slots; `count` is a valid output variable.
    let status = unsafe {
        FltEnumerateInstances(
            0,
            common::filter(),
            list.as_mut_ptr(),
            u32::try_from(list.len()).unwrap(),
            &raw mut count,
        )
    };
    (status, count)
}

fn dereference(instance: PFLT_INSTANCE) {
    // SAFETY: the caller owns a rundown reference on `instance` (or tests that it does not).
    unsafe { FltObjectDereference(ptr::without_provenance_mut(instance.cast_unsigned())) };
}

#[test]
fn instances_are_listed_referenced_and_released() {
    let sim = loaded(&[
        (r"\Device\HarddiskVolume2", FileSystem::Ntfs),
        (r"\Device\HarddiskVolume3", FileSystem::Refs),
    ]);
    let mut none: [PFLT_INSTANCE; 0] = [];
    assert_eq!(enumerate(&mut none), (STATUS_BUFFER_TOO_SMALL, 2));
    let mut list = [0; 4];
    assert_eq!(enumerate(&mut list), (STATUS_SUCCESS, 2));
    let mut fs = FLT_FSTYPE_UNKNOWN;
    assert_eq!(
        // SAFETY: an instance handle and a valid output variable.
        unsafe {
            FltGetFileSystemType(
                ptr::without_provenance(list[1].cast_unsigned()),
                &raw mut fs,
            )
        },
        STATUS_SUCCESS
    );
    assert_eq!(fs, FLT_FSTYPE_REFS, "listed in mount order");
    // SAFETY: as above.
    unsafe {
        FltGetFileSystemType(
            ptr::without_provenance(list[0].cast_unsigned()),
            &raw mut fs,
        )
    };
    assert_eq!(fs, FLT_FSTYPE_NTFS);
    // SAFETY: a handle that is no Filter Manager object.
    let status = unsafe { FltGetFileSystemType(ptr::without_provenance(8), &raw mut fs) };
    assert_eq!((status, fs), (STATUS_INVALID_PARAMETER, FLT_FSTYPE_UNKNOWN));
    for instance in &list[..2] {
        dereference(*instance);
    }
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_null_volume_and_filter_is_an_invalid_parameter() {
    let sim = loaded(&[]);
    let mut count = 7;
    // SAFETY: valid output variable; both objects NULL on purpose.
    let status = unsafe { FltEnumerateInstances(0, 0, ptr::null_mut(), 0, &raw mut count) };
    assert_eq!((status, count), (STATUS_INVALID_PARAMETER, 7));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn teardown_waits_for_rundown_references_and_refuses_new_ones() {
    let started = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&started);
    let sim = loaded_with(
        &[(r"\Device\HarddiskVolume2", FileSystem::Ntfs)],
        Config {
            teardown_start: Some(Arc::new(move |_| started.store(true, Ordering::SeqCst))),
            ..Config::default()
        },
    );
    let mut list = [0; 1];
    assert_eq!(enumerate(&mut list), (STATUS_SUCCESS, 1));
    let instance = list[0];
    std::thread::scope(|s| {
        s.spawn(move || {
            while !seen.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let object = ptr::without_provenance_mut(instance.cast_unsigned());
            assert_eq!(
                // SAFETY: an instance handle.
                unsafe { FltObjectReference(object) },
                STATUS_FLT_DELETING_OBJECT
            );
            dereference(instance);
        });
        // The teardown (in FltUnregisterFilter) cannot finish until the reference goes.
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
    });
    sim.verifier_report().assert_clean();
}

#[test]
fn a_reference_never_released_hangs_the_teardown() {
    fltsim::bugcheck::expect_bugcheck("the rundown references on instance", || {
        let sim = loaded(&[(r"\Device\HarddiskVolume2", FileSystem::Ntfs)]);
        fltsim::hang::set_wait_limit(std::time::Duration::from_millis(300));
        let mut list = [0; 1];
        assert_eq!(enumerate(&mut list), (STATUS_SUCCESS, 1));
        sim.unload(false);
    });
}

#[test]
#[should_panic(expected = "dereferenced more often than referenced")]
fn dereferencing_once_too_often_is_a_violation() {
    let sim = loaded(&[(r"\Device\HarddiskVolume2", FileSystem::Ntfs)]);
    let mut list = [0; 1];
    assert_eq!(enumerate(&mut list), (STATUS_SUCCESS, 1));
    dereference(list[0]);
    dereference(list[0]);
    sim.check();
}

#[test]
#[should_panic(expected = "IRQL_NOT_LESS_OR_EQUAL: FltEnumerateInstances called at IRQL 2")]
fn enumerating_at_dispatch_level_is_a_violation() {
    let sim = loaded(&[]);
    {
        let _dispatch = irql::raise(DISPATCH_LEVEL);
        let mut list = [0; 1];
        enumerate(&mut list);
    }
    sim.check();
}
