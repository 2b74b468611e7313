//! Load, registration, instance setup on volumes, detach, and unload through `FilterUnload`.

mod common;

use std::sync::Arc;

use common::{Config, Event, Table, configure, driver_entry, events};
use fltsim::{FileSystem, Sim, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CONTEXT_REGISTRATION, FLT_REGISTRATION_VERSION_0203, FLTFL_FILTER_UNLOAD_MANDATORY,
    FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT, FLTFL_INSTANCE_SETUP_MANUAL_ATTACHMENT,
    FLTFL_INSTANCE_SETUP_NEWLY_MOUNTED_VOLUME, FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD,
    FLTFL_INSTANCE_TEARDOWN_MANDATORY_FILTER_UNLOAD, FLTFL_INSTANCE_TEARDOWN_MANUAL,
    FLTFL_INSTANCE_TEARDOWN_VOLUME_DISMOUNT, FltStartFiltering, FltUnregisterFilter,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_READ, KeEnterCriticalRegion};
use windows_sys::Win32::Foundation::{
    STATUS_ACCESS_DENIED, STATUS_FLT_DO_NOT_ATTACH, STATUS_FLT_DO_NOT_DETACH,
    STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_FLT_INVALID_CONTEXT_REGISTRATION,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FSTYPE_CDFS, FLT_FSTYPE_MUP, FLT_FSTYPE_NTFS, FLT_FSTYPE_REFS,
};
use windows_sys::Win32::System::Ioctl::{
    FILE_DEVICE_CD_ROM_FILE_SYSTEM, FILE_DEVICE_DISK_FILE_SYSTEM, FILE_DEVICE_NETWORK_FILE_SYSTEM,
};

fn ntfs(name: &str) -> VolumeSpec {
    VolumeSpec::new(name, FileSystem::Ntfs)
}

fn setups() -> Vec<Event> {
    events()
        .into_iter()
        .filter(|e| matches!(e, Event::Setup { .. }))
        .collect()
}

fn teardowns() -> Vec<Event> {
    events()
        .into_iter()
        .filter(|e| matches!(e, Event::TeardownStart(_) | Event::TeardownComplete(_)))
        .collect()
}

#[test]
fn load_attach_and_unload_follow_filter_manager_order() {
    let sim = Sim::new();
    configure(Config::default());
    sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert!(sim.driver_loaded());
    assert_eq!(
        events()[0],
        Event::DriverEntry(r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\testflt".into())
    );
    assert_eq!(
        setups(),
        vec![Event::Setup {
            flags: FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT,
            device_type: FILE_DEVICE_DISK_FILE_SYSTEM,
            fs_type: FLT_FSTYPE_NTFS,
            irql: 0,
        }]
    );
    let refs = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume2",
        FileSystem::Refs,
    ));
    assert!(sim.instance(refs).is_some());
    assert_eq!(
        setups()[1],
        Event::Setup {
            flags: FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT
                | FLTFL_INSTANCE_SETUP_NEWLY_MOUNTED_VOLUME,
            device_type: FILE_DEVICE_DISK_FILE_SYSTEM,
            fs_type: FLT_FSTYPE_REFS,
            irql: 0,
        }
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert!(!sim.driver_loaded());
    let reason = FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD;
    assert_eq!(
        teardowns(),
        vec![
            Event::TeardownStart(reason),
            Event::TeardownComplete(reason),
            Event::TeardownStart(reason),
            Event::TeardownComplete(reason),
        ]
    );
    assert!(events().contains(&Event::Unload(0)));
    sim.unload_report()
        .expect("a report at unload")
        .assert_clean();
    sim.verifier_report().assert_clean();
}

#[test]
fn device_and_file_system_types_reach_instance_setup() {
    let sim = Sim::new();
    configure(Config::default());
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.add_volume(VolumeSpec::new(r"\Device\Mup", FileSystem::Network));
    sim.add_volume(VolumeSpec::new(r"\Device\CdRom0", FileSystem::Cdfs));
    let seen: Vec<(u32, i32)> = setups()
        .into_iter()
        .map(|e| match e {
            Event::Setup {
                device_type,
                fs_type,
                ..
            } => (device_type, fs_type),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (FILE_DEVICE_NETWORK_FILE_SYSTEM, FLT_FSTYPE_MUP),
            (FILE_DEVICE_CD_ROM_FILE_SYSTEM, FLT_FSTYPE_CDFS)
        ]
    );
    assert_eq!(sim.unload(true), STATUS_SUCCESS);
}

#[test]
fn refused_or_failed_setup_leaves_no_instance_and_no_teardown() {
    let sim = Sim::new();
    configure(Config {
        setup: Some(Arc::new(|_, fs| match fs {
            FLT_FSTYPE_MUP => STATUS_FLT_DO_NOT_ATTACH,
            FLT_FSTYPE_CDFS => STATUS_INSUFFICIENT_RESOURCES,
            _ => STATUS_SUCCESS,
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let network = sim.add_volume(VolumeSpec::new(r"\Device\Mup", FileSystem::Network));
    let cd = sim.add_volume(VolumeSpec::new(r"\Device\CdRom0", FileSystem::Cdfs));
    let disk = sim.add_volume(ntfs(r"\Device\HarddiskVolume3"));
    assert!(sim.instance(network).is_none());
    assert!(sim.instance(cd).is_none());
    assert!(sim.instance(disk).is_some());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert_eq!(
        teardowns().len(),
        2,
        "only the attached instance is torn down"
    );
}

#[test]
fn mandatory_unload_passes_the_mandatory_flags() {
    let sim = Sim::new();
    configure(Config::default());
    sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(true), STATUS_SUCCESS);
    assert!(events().contains(&Event::Unload(FLTFL_FILTER_UNLOAD_MANDATORY)));
    assert_eq!(
        teardowns()[0],
        Event::TeardownStart(
            FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD | FLTFL_INSTANCE_TEARDOWN_MANDATORY_FILTER_UNLOAD
        )
    );
}

#[test]
fn a_non_mandatory_unload_may_be_refused() {
    let sim = Sim::new();
    configure(Config {
        unload: Some(Arc::new(|flags| {
            if flags & FLTFL_FILTER_UNLOAD_MANDATORY == 0 {
                STATUS_FLT_DO_NOT_DETACH
            } else {
                // SAFETY: the registered filter, unregistered once.
                unsafe { FltUnregisterFilter(common::filter()) };
                STATUS_SUCCESS
            }
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_FLT_DO_NOT_DETACH);
    assert!(sim.driver_loaded());
    assert_eq!(sim.unload(true), STATUS_SUCCESS);
    assert!(!sim.driver_loaded());
}

#[test]
#[should_panic(expected = "fltsim: FilterUnload returned 0xc01c0010 for a mandatory unload")]
fn refusing_a_mandatory_unload_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        unload: Some(Arc::new(|_| STATUS_FLT_DO_NOT_DETACH)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.unload(true);
}

#[test]
#[should_panic(
    expected = "fltsim: FilterUnload returned success without calling FltUnregisterFilter"
)]
fn unload_success_without_unregistering_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        unload: Some(Arc::new(|_| STATUS_SUCCESS)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.unload(false);
}

#[test]
#[should_panic(expected = "fltsim: FltUnregisterFilter called twice")]
fn unregistering_twice_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        unload: Some(Arc::new(|_| {
            // SAFETY: deliberately broken: the same filter unregistered twice.
            unsafe {
                FltUnregisterFilter(common::filter());
                FltUnregisterFilter(common::filter());
            }
            STATUS_SUCCESS
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.unload(false);
}

#[test]
#[should_panic(expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltUnregisterFilter called at IRQL 2")]
fn unregistering_above_apc_level_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        unload: Some(Arc::new(|_| {
            let _raised = fltsim::irql::raise(fltsim::irql::DISPATCH_LEVEL);
            // SAFETY: deliberately called at the wrong IRQL.
            unsafe { FltUnregisterFilter(common::filter()) };
            STATUS_SUCCESS
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.unload(false);
}

#[test]
fn a_filter_without_unload_callback_cannot_unload() {
    let sim = Sim::new();
    configure(Config {
        no_unload_callback: true,
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_NOT_SUPPORTED);
    assert!(sim.driver_loaded());
    assert!(sim.verifier_report().mentions("filter not unregistered"));
}

#[test]
fn registration_with_wrong_size_or_version_is_rejected() {
    let sim = Sim::new();
    configure(Config {
        registration: Some(Arc::new(|r| r.Size -= 8)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_INVALID_PARAMETER);
    configure(Config {
        registration: Some(Arc::new(|r| r.Version = 0x0300)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_INVALID_PARAMETER);
    let older = u16::try_from(FLT_REGISTRATION_VERSION_0203 - 1).unwrap();
    configure(Config {
        registration: Some(Arc::new(move |r| r.Version = older)),
        ..Config::default()
    });
    assert_eq!(
        sim.load("testflt", driver_entry),
        STATUS_SUCCESS,
        "older documented versions load"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn invalid_or_duplicate_operations_are_rejected() {
    let sim = Sim::new();
    let mut duplicate = common::default_operations();
    duplicate.insert(0, duplicate[1]);
    configure(Config {
        operations: Some(Table(duplicate)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_INVALID_PARAMETER);
    let mut invalid = common::default_operations();
    invalid[0].MajorFunction = 100;
    configure(Config {
        operations: Some(Table(invalid)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_INVALID_PARAMETER);
    let mut fltmgr_codes = common::default_operations();
    fltmgr_codes[0].MajorFunction = 0xFF; // IRP_MJ_ACQUIRE_FOR_SECTION_SYNCHRONIZATION
    fltmgr_codes[1].MajorFunction = u8::try_from(IRP_MJ_READ).unwrap();
    configure(Config {
        operations: Some(Table(fltmgr_codes)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn invalid_context_registrations_are_rejected() {
    let sim = Sim::new();
    let broken: [fn(&mut FLT_CONTEXT_REGISTRATION); 3] = [
        |c| c.ContextType = 0x0100,
        |c| c.PoolTag = 0,
        |c| c.ContextFreeCallback = Some(free_nothing),
    ];
    for breakage in broken {
        let mut contexts = common::default_contexts();
        breakage(&mut contexts[0]);
        configure(Config {
            contexts: Some(Table(contexts)),
            ..Config::default()
        });
        assert_eq!(
            sim.load("testflt", driver_entry),
            STATUS_FLT_INVALID_CONTEXT_REGISTRATION
        );
    }
    sim.verifier_report().assert_clean();
}

unsafe extern "system" fn free_nothing(_pool: *const core::ffi::c_void, _context_type: u16) {}

#[test]
fn failed_driver_entry_that_unregisters_leaves_nothing() {
    let sim = Sim::new();
    configure(Config {
        entry: Some(Arc::new(|filter| {
            // SAFETY: the failure path of DriverEntry unregisters the filter it registered.
            unsafe { FltUnregisterFilter(filter) };
            STATUS_ACCESS_DENIED
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_ACCESS_DENIED);
    assert!(!sim.driver_loaded());
    sim.verifier_report().assert_clean();
}

#[test]
fn failed_driver_entry_that_stays_registered_is_reported() {
    let sim = Sim::new();
    configure(Config {
        entry: Some(Arc::new(|_| STATUS_ACCESS_DENIED)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_ACCESS_DENIED);
    let report = sim.verifier_report();
    assert!(report.mentions("DriverEntry failed with 0xc0000022 but left its filter registered"));
    assert!(!report.is_clean());
}

#[test]
#[should_panic(expected = "fltsim: invalid handle: FltStartFiltering got filter 0x1234")]
fn an_unknown_filter_handle_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        entry: Some(Arc::new(|_| {
            // SAFETY: deliberately broken: a handle the simulator never gave out.
            unsafe { FltStartFiltering(0x1234) }
        })),
        ..Config::default()
    });
    sim.load("testflt", driver_entry);
}

#[test]
fn manual_detach_asks_query_teardown_which_may_refuse() {
    let sim = Sim::new();
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answer = Arc::clone(&refuse);
    configure(Config {
        query_teardown: Some(Arc::new(move |_| {
            if answer.load(std::sync::atomic::Ordering::SeqCst) {
                STATUS_FLT_DO_NOT_DETACH
            } else {
                STATUS_SUCCESS
            }
        })),
        ..Config::default()
    });
    let volume = sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.detach(volume), STATUS_FLT_DO_NOT_DETACH);
    assert!(sim.instance(volume).is_some());
    assert!(teardowns().is_empty());
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(sim.detach(volume), STATUS_SUCCESS);
    assert!(sim.instance(volume).is_none());
    assert_eq!(
        teardowns(),
        vec![
            Event::TeardownStart(FLTFL_INSTANCE_TEARDOWN_MANUAL),
            Event::TeardownComplete(FLTFL_INSTANCE_TEARDOWN_MANUAL)
        ]
    );
    assert_eq!(sim.detach(volume), STATUS_FLT_INSTANCE_NOT_FOUND);
    assert_eq!(sim.attach(volume), STATUS_SUCCESS);
    assert!(matches!(
        setups().last(),
        Some(Event::Setup {
            flags: FLTFL_INSTANCE_SETUP_MANUAL_ATTACHMENT,
            ..
        })
    ));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn without_query_teardown_an_instance_cannot_be_detached_manually() {
    let sim = Sim::new();
    configure(Config {
        no_query_teardown: true,
        ..Config::default()
    });
    let volume = sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.detach(volume), STATUS_FLT_DO_NOT_DETACH);
    assert!(sim.instance(volume).is_some());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn dismount_tears_down_without_asking() {
    let sim = Sim::new();
    configure(Config::default());
    let volume = sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.remove_volume(volume);
    assert!(
        !events()
            .iter()
            .any(|e| matches!(e, Event::QueryTeardown(_)))
    );
    assert_eq!(
        teardowns()[0],
        Event::TeardownStart(FLTFL_INSTANCE_TEARDOWN_VOLUME_DISMOUNT)
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert_eq!(
        teardowns().len(),
        2,
        "a dismounted volume is not torn down again at unload"
    );
}

#[test]
#[should_panic(
    expected = "fltsim: APC_INDEX_MISMATCH: InstanceSetupCallback returned with normal kernel APCs disabled"
)]
fn a_callback_returning_with_apcs_disabled_is_a_violation() {
    let sim = Sim::new();
    configure(Config {
        setup: Some(Arc::new(|_, _| {
            // SAFETY: deliberately broken: a critical region entered and never left.
            unsafe { KeEnterCriticalRegion() };
            STATUS_SUCCESS
        })),
        ..Config::default()
    });
    sim.add_volume(ntfs(r"\Device\HarddiskVolume1"));
    sim.load("testflt", driver_entry);
}
