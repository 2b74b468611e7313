//! Contexts: allocation from the registration, reference counts, instance and stream links,
//! cleanup and freeing, and the rules Filter Verifier enforces.

mod common;

use std::ptr;
use std::sync::{Arc, Mutex};

use common::{
    CONTEXT_SIZE, CREATE, Config, Event, INSTANCE, INSTANCE_TAG, READ, STREAM, STREAM_TAG, Table,
    VOLUME, allocate, configure, count, driver_entry, events,
};
use fltsim::pool::{FaultPlan, set_fault_injection};
use fltsim::{FLT_VARIABLE_SIZED_CONTEXTS, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Foundation::{NonPagedPool, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_FILE_CONTEXT, FLT_INSTANCE_CONTEXT, FLT_POSTOP_FINISHED_PROCESSING,
    FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_SET_CONTEXT_KEEP_IF_EXISTS,
    FLT_SET_CONTEXT_REPLACE_IF_EXISTS, FLT_STREAM_CONTEXT, FltAllocateContext, FltDeleteContext,
    FltGetInstanceContext, FltGetStreamContext, FltReferenceContext, FltReleaseContext,
    FltSetInstanceContext, FltSetStreamContext, PFLT_CONTEXT, PFLT_INSTANCE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND, STATUS_FLT_CONTEXT_ALREADY_DEFINED,
    STATUS_FLT_CONTEXT_ALREADY_LINKED, STATUS_FLT_DELETING_OBJECT, STATUS_FLT_DO_NOT_ATTACH,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_BUFFER_SIZE, STATUS_NOT_FOUND,
    STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

fn ntfs(sim: &Sim) -> Volume {
    sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ))
}

fn set_instance(
    instance: PFLT_INSTANCE,
    operation: i32,
    context: PFLT_CONTEXT,
) -> (NTSTATUS, PFLT_CONTEXT) {
    let mut old: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid arguments; `old` is an output variable.
    let status = unsafe { FltSetInstanceContext(instance, operation, context, &raw mut old) };
    (status, old)
}

fn get_instance(instance: PFLT_INSTANCE) -> (NTSTATUS, PFLT_CONTEXT) {
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid arguments.
    let status = unsafe { FltGetInstanceContext(instance, &raw mut context) };
    (status, context)
}

fn release(context: PFLT_CONTEXT) {
    // SAFETY: a context the caller holds a reference on.
    unsafe { FltReleaseContext(context) };
}

/// A filter that sets a paged instance context in `InstanceSetup`, like a typical minifilter.
fn with_instance_context() -> Config {
    Config {
        setup: Some(Arc::new(|objects, _| {
            let Ok(context) = allocate(FLT_INSTANCE_CONTEXT) else {
                return STATUS_FLT_DO_NOT_ATTACH;
            };
            let (status, _) =
                set_instance(objects.Instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, context);
            release(context);
            status
        })),
        ..Config::default()
    }
}

#[test]
fn instance_context_lives_until_teardown_completes() {
    let sim = Sim::new();
    configure(with_instance_context());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let instance = sim.instance(volume).unwrap();
    sim.reset_counters(volume);
    let (status, context) = get_instance(instance);
    assert_eq!(status, STATUS_SUCCESS);
    release(context);
    assert_eq!(sim.counters(volume).instance_context_gets, 1, "counted");
    assert_eq!(
        count(|e| matches!(e, Event::Cleanup { .. })),
        0,
        "still linked to the instance"
    );
    assert!(!fltsim::pool::outstanding().is_empty());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    let tail: Vec<Event> = events().into_iter().rev().take(2).collect();
    assert_eq!(
        tail[0],
        Event::Cleanup {
            context_type: INSTANCE,
            irql: 0
        }
    );
    assert!(
        matches!(tail[1], Event::TeardownComplete(_)),
        "cleanup after TeardownComplete"
    );
    sim.verifier_report().assert_clean();
}

#[test]
fn keep_if_exists_reports_the_existing_context_referenced() {
    let sim = Sim::new();
    configure(with_instance_context());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let instance = sim.instance(volume).unwrap();
    let (_, existing) = get_instance(instance);
    let second = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    let (status, old) = set_instance(instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, second);
    assert_eq!(status, STATUS_FLT_CONTEXT_ALREADY_DEFINED);
    assert_eq!(old, existing);
    release(old);
    release(existing);
    release(second); // the caller still owns a context that failed to set
    assert_eq!(
        count(|e| matches!(e, Event::Cleanup { .. })),
        1,
        "only the unused one is gone"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn replace_if_exists_unlinks_and_returns_the_old_context() {
    let sim = Sim::new();
    configure(with_instance_context());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let instance = sim.instance(volume).unwrap();
    let (_, first) = get_instance(instance);
    let second = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    let (status, old) = set_instance(instance, FLT_SET_CONTEXT_REPLACE_IF_EXISTS, second);
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(old, first);
    release(second);
    release(old);
    assert_eq!(
        count(|e| matches!(e, Event::Cleanup { .. })),
        0,
        "`first` still referenced once"
    );
    release(first);
    assert_eq!(count(|e| matches!(e, Event::Cleanup { .. })), 1);
    assert_eq!(get_instance(instance).1, second);
    release(second);
    let (status, _) = set_instance(instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, second);
    assert_eq!(
        status, STATUS_FLT_CONTEXT_ALREADY_LINKED,
        "a linked context cannot be set again"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn get_without_context_is_not_found_and_delete_unlinks() {
    let sim = Sim::new();
    configure(Config::default());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let instance = sim.instance(volume).unwrap();
    assert_eq!(get_instance(instance), (STATUS_NOT_FOUND, ptr::null_mut()));
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    assert_eq!(
        set_instance(instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, context).0,
        STATUS_SUCCESS
    );
    // SAFETY: a context we hold a reference on.
    unsafe { FltReferenceContext(context) };
    // SAFETY: as above.
    unsafe { FltDeleteContext(context) };
    assert_eq!(get_instance(instance).0, STATUS_NOT_FOUND);
    release(context);
    assert_eq!(count(|e| matches!(e, Event::Cleanup { .. })), 0);
    release(context);
    assert_eq!(count(|e| matches!(e, Event::Cleanup { .. })), 1);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn setting_a_context_during_teardown_fails_with_deleting_object() {
    let sim = Sim::new();
    let seen = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&seen);
    configure(Config {
        teardown_start: Some(Arc::new(move |objects| {
            let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
            *slot.lock().unwrap() =
                Some(set_instance(objects.Instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, context).0);
            release(context);
        })),
        ..Config::default()
    });
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.detach(volume), STATUS_SUCCESS);
    assert_eq!(*seen.lock().unwrap(), Some(STATUS_FLT_DELETING_OBJECT));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn contexts_set_by_a_refused_setup_are_freed() {
    let sim = Sim::new();
    configure(Config {
        setup: Some(Arc::new(|objects, _| {
            let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
            set_instance(objects.Instance, FLT_SET_CONTEXT_KEEP_IF_EXISTS, context);
            release(context);
            STATUS_FLT_DO_NOT_ATTACH
        })),
        ..Config::default()
    });
    ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(count(|e| matches!(e, Event::Cleanup { .. })), 1);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

/// A filter that attaches a stream context to every file it sees opened.
fn with_stream_contexts(results: Arc<Mutex<Vec<NTSTATUS>>>) -> Config {
    Config {
        pre: Some(Arc::new(move |data, objects, _| {
            // SAFETY: callback data from Filter Manager.
            if unsafe { (*(*data).Iopb).MajorFunction } == CREATE {
                let mut context: PFLT_CONTEXT = ptr::null_mut();
                // SAFETY: valid arguments; in pre-create the stream does not exist yet.
                let status = unsafe {
                    FltGetStreamContext(objects.Instance, objects.FileObject, &raw mut context)
                };
                results.lock().unwrap().push(status);
            }
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        post: Some(Arc::new(|data, objects, _, _| {
            // SAFETY: callback data from Filter Manager.
            let (major, status) = unsafe {
                (
                    (*(*data).Iopb).MajorFunction,
                    (*data).IoStatus.Anonymous.Status,
                )
            };
            if major != CREATE || status < 0 {
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            let context = allocate(FLT_STREAM_CONTEXT).unwrap();
            let mut old: PFLT_CONTEXT = ptr::null_mut();
            // SAFETY: valid arguments in post-create at PASSIVE_LEVEL.
            let status = unsafe {
                FltSetStreamContext(
                    objects.Instance,
                    objects.FileObject,
                    FLT_SET_CONTEXT_KEEP_IF_EXISTS,
                    context,
                    &raw mut old,
                )
            };
            if status == STATUS_FLT_CONTEXT_ALREADY_DEFINED {
                release(old);
            }
            release(context);
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

fn stream_context(sim: &Sim, volume: Volume, file: &fltsim::FileHandle<'_>) -> PFLT_CONTEXT {
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid instance and open file object.
    let status = unsafe {
        FltGetStreamContext(
            sim.instance(volume).unwrap(),
            file.file_object(),
            &raw mut context,
        )
    };
    assert_eq!(status, STATUS_SUCCESS);
    release(context);
    context
}

#[test]
fn stream_contexts_are_shared_by_file_objects_and_go_with_the_last_close() {
    let sim = Sim::new();
    let pre_create = Arc::new(Mutex::new(Vec::new()));
    configure(with_stream_contexts(Arc::clone(&pre_create)));
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(volume, r"\a.txt", 10);
    sim.create_file(volume, r"\b.txt", 10);
    let first = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let second = sim.open(volume, r"\A.TXT", OpenOptions::open()).unwrap();
    let other = sim.open(volume, r"\b.txt", OpenOptions::open()).unwrap();
    assert!(
        pre_create
            .lock()
            .unwrap()
            .iter()
            .all(|&s| s == STATUS_NOT_SUPPORTED),
        "no stream in pre-create"
    );
    assert_eq!(
        stream_context(&sim, volume, &first),
        stream_context(&sim, volume, &second)
    );
    assert_ne!(
        stream_context(&sim, volume, &first),
        stream_context(&sim, volume, &other)
    );
    assert_eq!(
        count(|e| matches!(e, Event::Cleanup { .. })),
        1,
        "the second open's spare context"
    );
    drop(first);
    assert_eq!(
        count(|e| matches!(e, Event::Cleanup { .. })),
        1,
        "a.txt is still open"
    );
    drop(second);
    assert_eq!(
        count(|e| matches!(
            e,
            Event::Cleanup {
                context_type: STREAM,
                ..
            }
        )),
        2
    );
    drop(other);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn stream_contexts_of_open_files_go_at_instance_teardown() {
    let sim = Sim::new();
    configure(with_stream_contexts(Arc::new(Mutex::new(Vec::new()))));
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(volume, r"\a.txt", 10);
    let file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert_eq!(
        count(|e| matches!(
            e,
            Event::Cleanup {
                context_type: STREAM,
                ..
            }
        )),
        1
    );
    drop(file);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_leaked_reference_is_reported_at_unload() {
    let sim = Sim::new();
    configure(with_instance_context());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let (_, leaked) = get_instance(sim.instance(volume).unwrap());
    assert!(!leaked.is_null());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    let report = sim.unload_report().unwrap();
    assert!(
        report.mentions(
            "leaked context references: FLT_INSTANCE_CONTEXT: 1 context(s), 1 reference(s)"
        )
    );
    assert!(report.mentions("leaked pool: tag 'TfIc'"), "{report}");
    assert_eq!(report.leaked_pool, vec![(INSTANCE_TAG, CONTEXT_SIZE, 1)]);
    // The leak has been seen: hand the reference back, so that the context is freed before the
    // session ends (the next `Sim` forgets the pool of this one, and memcheck and LeakSanitizer
    // would see the block as lost).
    release(leaked);
    assert_eq!(
        count(|e| matches!(
            e,
            Event::Cleanup {
                context_type: INSTANCE,
                ..
            }
        )),
        1
    );
    assert!(fltsim::pool::outstanding().is_empty());
    sim.verifier_report().assert_clean();
}

#[test]
#[should_panic(expected = "fltsim: FltReleaseContext: 0x")]
fn releasing_too_often_is_a_violation() {
    let sim = Sim::new();
    configure(Config::default());
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    release(context);
    release(context);
    sim.check();
}

#[test]
#[should_panic(expected = "paged contexts may only be released at IRQL <= APC_LEVEL")]
fn releasing_a_paged_context_at_dispatch_is_a_violation() {
    let sim = Sim::new();
    let volume = ntfs(&sim);
    configure(Config {
        setup: with_instance_context().setup,
        pre: Some(Arc::new(|_, objects, completion| {
            let (_, context) = get_instance(objects.Instance);
            *completion = context;
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        post: Some(Arc::new(|_, _, completion, _| {
            release(completion.cast_mut()); // post-read runs at DISPATCH_LEVEL
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(volume, r"\a.txt", 10);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

#[test]
fn the_last_release_of_a_nonpaged_context_at_dispatch_cleans_up_at_passive() {
    let sim = Sim::new();
    configure(Config::default());
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid arguments.
    let status = unsafe {
        FltAllocateContext(
            common::filter(),
            INSTANCE,
            CONTEXT_SIZE,
            NonPagedPool,
            &raw mut context,
        )
    };
    assert_eq!(status, STATUS_SUCCESS);
    {
        let _dispatch = fltsim::irql::raise(fltsim::irql::DISPATCH_LEVEL);
        release(context);
    }
    assert_eq!(
        events().last(),
        Some(&Event::Cleanup {
            context_type: INSTANCE,
            irql: 0
        })
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
#[should_panic(
    expected = "fltsim: FltAllocateContext: volume contexts must be allocated from nonpaged pool"
)]
fn paged_volume_contexts_are_a_violation() {
    let sim = Sim::new();
    configure(Config::default());
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: deliberately broken: a volume context from paged pool.
    unsafe {
        FltAllocateContext(
            common::filter(),
            VOLUME,
            CONTEXT_SIZE,
            PagedPool,
            &raw mut context,
        );
    }
    sim.check();
}

#[test]
fn allocation_follows_the_registration() {
    let sim = Sim::new();
    let mut contexts = common::default_contexts();
    contexts[1].Size = FLT_VARIABLE_SIZED_CONTEXTS;
    configure(Config {
        contexts: Some(Table(contexts)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let allocate_sized = |context_type: u32, size: usize| {
        let mut context: PFLT_CONTEXT = ptr::null_mut();
        // SAFETY: valid arguments.
        let status = unsafe {
            FltAllocateContext(
                common::filter(),
                u16::try_from(context_type).unwrap(),
                size,
                PagedPool,
                &raw mut context,
            )
        };
        (status, context)
    };
    assert_eq!(
        allocate_sized(FLT_FILE_CONTEXT, 8).0,
        STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND
    );
    assert_eq!(
        allocate_sized(FLT_INSTANCE_CONTEXT, CONTEXT_SIZE + 1).0,
        STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND
    );
    let (status, variable) = allocate_sized(FLT_STREAM_CONTEXT, 1000);
    assert_eq!(status, STATUS_SUCCESS);
    assert!(fltsim::pool::outstanding().contains(&(STREAM_TAG, 1000, 1)));
    release(variable);
    let (status, smaller) = allocate_sized(FLT_INSTANCE_CONTEXT, CONTEXT_SIZE / 2);
    assert_eq!(
        status, STATUS_SUCCESS,
        "a fixed-size registration serves smaller sizes"
    );
    release(smaller);
    assert_eq!(
        allocate_sized(FLT_STREAM_CONTEXT, 0x1_0000).0,
        STATUS_INVALID_BUFFER_SIZE,
        "ContextSize is at most MAXUSHORT"
    );
    set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(STREAM_TAG),
    });
    assert_eq!(
        allocate_sized(FLT_STREAM_CONTEXT, 16).0,
        STATUS_INSUFFICIENT_RESOURCES
    );
    set_fault_injection(FaultPlan::Off);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
#[should_panic(expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltGetInstanceContext called at IRQL 2")]
fn getting_an_instance_context_at_dispatch_is_a_violation() {
    let sim = Sim::new();
    configure(Config::default());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let instance = sim.instance(volume).unwrap();
    let dispatch = fltsim::irql::raise(fltsim::irql::DISPATCH_LEVEL);
    get_instance(instance);
    drop(dispatch);
    sim.check();
}

#[test]
#[should_panic(
    expected = "fltsim: FltSetInstanceContext: NewContext is a FLT_STREAM_CONTEXT, not a FLT_INSTANCE_CONTEXT"
)]
fn setting_a_context_of_the_wrong_type_is_a_violation() {
    let sim = Sim::new();
    configure(Config::default());
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let context = allocate(FLT_STREAM_CONTEXT).unwrap();
    set_instance(
        sim.instance(volume).unwrap(),
        FLT_SET_CONTEXT_KEEP_IF_EXISTS,
        context,
    );
    sim.check();
}

#[test]
fn contexts_survive_concurrent_readers() {
    let sim = Sim::new();
    configure(Config {
        setup: with_instance_context().setup,
        pre: Some(Arc::new(|data, objects, _| {
            // SAFETY: callback data from Filter Manager.
            if unsafe { (*(*data).Iopb).MajorFunction } == READ {
                let (status, context) = get_instance(objects.Instance);
                if status == STATUS_SUCCESS {
                    release(context);
                }
            }
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        ..Config::default()
    });
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(volume, r"\a.txt", 1 << 16);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
                for i in 0..100 {
                    file.read(64, i * 64);
                }
            });
        }
    });
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_stream_reopened_while_its_last_handle_closes_keeps_a_context() {
    let sim = Sim::new();
    let misses = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&misses);
    let mut config = with_stream_contexts(Arc::new(Mutex::new(Vec::new())));
    config.pre = Some(Arc::new(move |data, objects, _| {
        // SAFETY: callback data from Filter Manager.
        if unsafe { (*(*data).Iopb).MajorFunction } == READ {
            let mut context: PFLT_CONTEXT = ptr::null_mut();
            // SAFETY: valid instance and open file object.
            let status = unsafe {
                FltGetStreamContext(objects.Instance, objects.FileObject, &raw mut context)
            };
            if status == STATUS_SUCCESS {
                release(context);
            } else {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        FLT_PREOP_SUCCESS_WITH_CALLBACK
    }));
    configure(config);
    let volume = ntfs(&sim);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(volume, r"\hot", 10);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..500 {
                    let mut file = sim.open(volume, r"\hot", OpenOptions::open()).unwrap();
                    file.read(1, 0);
                    drop(file);
                }
            });
        }
    });
    assert_eq!(misses.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}
