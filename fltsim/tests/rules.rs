//! The rules fltsim enforces as strictly as Windows: each test breaks one on purpose and sees fltsim
//! report it (or return what Windows returns). The page each rule comes from is cited where fltsim
//! implements it.

mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex};

use common::{
    CLEANUP, CLOSE, CONTEXT_SIZE, CREATE, Config, READ, Table, allocate, configure, driver_entry,
    major_of, set_status,
};
use fltsim::pool::{FaultPlan, UNINITIALIZED_FILL, set_fault_injection};
use fltsim::{
    FILE_NAME_TAG, FLT_VARIABLE_SIZED_CONTEXTS, FileSystem, OpenOptions, PostIrql, Sim, Volume,
    VolumeSpec,
};
use windows_sys::Wdk::Foundation::NonPagedPool;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_REGISTRATION, FLT_FILE_NAME_INFORMATION,
    FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_QUERY_ALWAYS_ALLOW_CACHE_LOOKUP,
    FLT_FILE_NAME_QUERY_CACHE_ONLY, FLT_FILE_NAME_QUERY_DEFAULT,
    FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY, FLT_INSTANCE_CONTEXT, FLT_POSTOP_CALLBACK_STATUS,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_COMPLETE, FLT_PREOP_PENDING,
    FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_RELATED_OBJECTS,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT, FltAllocateContext,
    FltCompletePendedPreOperation, FltDeleteContext, FltDoCompletionProcessingWhenSafe,
    FltGetFileNameInformation, FltGetInstanceContext, FltGetStreamContext, FltIsVolumeWritable,
    FltReleaseContext, FltReleaseFileNameInformation, FltSetInstanceContext, PFLT_CONTEXT,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_FLT_INVALID_CONTEXT_REGISTRATION,
    STATUS_FLT_INVALID_NAME_REQUEST, STATUS_FLT_NAME_CACHE_MISS, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_SUCCESS,
};

fn ntfs(sim: &Sim, n: u32) -> Volume {
    sim.add_volume(VolumeSpec::new(
        &format!(r"\Device\HarddiskVolume{n}"),
        FileSystem::Ntfs,
    ))
}

fn start(sim: &Sim, config: Config) -> Volume {
    configure(config);
    let volume = ntfs(sim, 1);
    sim.create_file(volume, r"\a.txt", 4096);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    volume
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

fn release(context: PFLT_CONTEXT) {
    // SAFETY: a context the caller holds a reference on.
    unsafe { FltReleaseContext(context) };
}

fn set_instance_context(instance: isize, context: PFLT_CONTEXT) -> NTSTATUS {
    // SAFETY: valid arguments; no old context asked for.
    unsafe {
        FltSetInstanceContext(
            instance,
            FLT_SET_CONTEXT_KEEP_IF_EXISTS,
            context,
            ptr::null_mut(),
        )
    }
}

/// `FltGetFileNameInformation` for `data` with `options`, releasing any name got; its status.
fn name_status(data: *mut FLT_CALLBACK_DATA, options: u32) -> NTSTATUS {
    let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
    // SAFETY: valid callback data and output variable.
    let status = unsafe { FltGetFileNameInformation(data, options, &raw mut info) };
    if status >= 0 {
        // SAFETY: the reference just taken.
        unsafe { FltReleaseFileNameInformation(info) };
    }
    status
}

const NORMALIZED_DEFAULT: u32 = FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_DEFAULT;
const NORMALIZED_CACHE_ONLY: u32 = FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_CACHE_ONLY;

// ---- contexts ----

#[test]
fn contexts_come_back_filled_with_garbage_not_zeroed() {
    let sim = Sim::new();
    let mut contexts = common::default_contexts();
    contexts[1].Size = FLT_VARIABLE_SIZED_CONTEXTS;
    configure(Config {
        contexts: Some(Table(contexts)),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let fixed = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    let mut variable: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: the registered filter, a registered variable-size type and an output variable.
    let status = unsafe {
        FltAllocateContext(
            common::filter(),
            u16::try_from(FLT_STREAM_CONTEXT).unwrap(),
            300,
            windows_sys::Wdk::Foundation::PagedPool,
            &raw mut variable,
        )
    };
    assert_eq!(status, STATUS_SUCCESS);
    for (context, size) in [(fixed, CONTEXT_SIZE), (variable, 300)] {
        // SAFETY: the context holds `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(context.cast::<u8>(), size) };
        assert!(bytes.iter().all(|&b| b == UNINITIALIZED_FILL), "{bytes:?}");
        release(context);
    }
    finish(&sim);
}

#[test]
#[should_panic(expected = "drops its last reference while it is still set on instance")]
fn releasing_the_reference_a_link_holds_is_caught_at_that_release() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let instance = sim.instance(volume).unwrap();
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    assert_eq!(set_instance_context(instance, context), STATUS_SUCCESS);
    release(context);
    release(context);
    sim.check();
}

#[test]
#[should_panic(expected = "which was never set on an object")]
fn deleting_a_context_that_was_never_set_is_a_violation() {
    let sim = Sim::new();
    start(&sim, Config::default());
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    // SAFETY: a live context we hold a reference on.
    unsafe { FltDeleteContext(context) };
    sim.check();
}

#[test]
#[should_panic(expected = "without holding a reference to it")]
fn deleting_a_context_without_holding_a_reference_is_a_violation() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let instance = sim.instance(volume).unwrap();
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    assert_eq!(set_instance_context(instance, context), STATUS_SUCCESS);
    release(context);
    // SAFETY: the pointer is the live, linked context; our reference is gone (the bug).
    unsafe { FltDeleteContext(context) };
    sim.check();
}

#[test]
fn deleting_a_set_context_with_a_reference_works_and_keeps_that_reference() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let instance = sim.instance(volume).unwrap();
    let context = allocate(FLT_INSTANCE_CONTEXT).unwrap();
    assert_eq!(set_instance_context(instance, context), STATUS_SUCCESS);
    // SAFETY: a linked context we hold a reference on.
    unsafe { FltDeleteContext(context) };
    // SAFETY: as above; deleting twice does nothing more.
    unsafe { FltDeleteContext(context) };
    let mut found: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: valid instance and output variable.
    let status = unsafe { FltGetInstanceContext(instance, &raw mut found) };
    assert_ne!(status, STATUS_SUCCESS, "a deleted context is not found");
    release(context);
    finish(&sim);
}

#[test]
#[should_panic(expected = "fltsim: invalid handle: FltGetInstanceContext got instance")]
fn a_torn_down_instance_handle_is_stale() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let instance = sim.instance(volume).unwrap();
    assert_eq!(sim.detach(volume), STATUS_SUCCESS);
    let mut found: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: an output variable; the instance handle is the stale one under test.
    unsafe { FltGetInstanceContext(instance, &raw mut found) };
    sim.check();
}

#[test]
#[should_panic(expected = "is on volume")]
fn a_file_object_of_another_volume_is_a_violation() {
    let sim = Sim::new();
    let c = start(&sim, Config::default());
    let d = ntfs(&sim, 2);
    sim.create_file(d, r"\b.txt", 1);
    let on_d = sim.open(d, r"\b.txt", OpenOptions::open()).unwrap();
    let mut found: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: a live instance and file object, but of different volumes (the bug).
    unsafe { FltGetStreamContext(sim.instance(c).unwrap(), on_d.file_object(), &raw mut found) };
    sim.check();
}

// ---- registration ----

#[test]
fn context_registrations_follow_the_documented_rules() {
    let fixed = |size| common::context_entry(FLT_INSTANCE_CONTEXT, size, common::INSTANCE_TAG);
    let variable = || fixed(FLT_VARIABLE_SIZED_CONTEXTS);
    let mut end = common::context_entry(0xFFFF, 0, 0);
    end.ContextCleanupCallback = None;
    let cases: [(&str, Vec<FLT_CONTEXT_REGISTRATION>, NTSTATUS); 5] = [
        ("Size 0 is a valid size", vec![fixed(0)], STATUS_SUCCESS),
        (
            "identical entries are ignored after the first",
            vec![fixed(8), fixed(8), fixed(8), fixed(8)],
            STATUS_SUCCESS,
        ),
        (
            "at most three fixed sizes per type",
            vec![fixed(8), fixed(16), fixed(24), fixed(32)],
            STATUS_FLT_INVALID_CONTEXT_REGISTRATION,
        ),
        (
            "at most one variable size per type",
            vec![variable(), fixed(8), {
                let mut again = variable();
                again.PoolTag = common::STREAM_TAG;
                again
            }],
            STATUS_FLT_INVALID_CONTEXT_REGISTRATION,
        ),
        (
            "a pool tag without an allocate callback",
            vec![common::context_entry(FLT_INSTANCE_CONTEXT, 8, 0)],
            STATUS_FLT_INVALID_CONTEXT_REGISTRATION,
        ),
    ];
    for (why, mut contexts, expected) in cases {
        let sim = Sim::new();
        contexts.push(end);
        configure(Config {
            contexts: Some(Table(contexts)),
            ..Config::default()
        });
        assert_eq!(sim.load("testflt", driver_entry), expected, "{why}");
        if expected == STATUS_SUCCESS {
            finish(&sim);
        }
    }
}

// ---- file names ----

/// A filter that asks for the normalized name (with `options`) in the callbacks `when` selects and
/// records the statuses.
fn name_filter(
    statuses: Arc<Mutex<Vec<(u8, bool, NTSTATUS)>>>,
    options: u32,
    when: fn(u8, bool) -> bool,
) -> Config {
    let pre_log = Arc::clone(&statuses);
    Config {
        pre: Some(Arc::new(move |data, _, _| {
            let major = major_of(data);
            if when(major, false) {
                pre_log
                    .lock()
                    .unwrap()
                    .push((major, false, name_status(data, options)));
            }
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        post: Some(Arc::new(move |data, _, _, _| {
            let major = major_of(data);
            if when(major, true) {
                statuses
                    .lock()
                    .unwrap()
                    .push((major, true, name_status(data, options)));
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

#[test]
fn names_are_refused_after_cleanup_unless_cached() {
    let sim = Sim::new();
    sim.set_post_irql(PostIrql::Passive);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let volume = start(
        &sim,
        name_filter(Arc::clone(&statuses), NORMALIZED_DEFAULT, |major, post| {
            (major == CLEANUP && post) || major == CLOSE
        }),
    );
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
    assert_eq!(
        *statuses.lock().unwrap(),
        [
            (CLEANUP, true, STATUS_FLT_INVALID_NAME_REQUEST),
            (CLOSE, false, STATUS_FLT_INVALID_NAME_REQUEST),
            (CLOSE, true, STATUS_FLT_INVALID_NAME_REQUEST),
        ]
    );
    finish(&sim);
}

#[test]
fn a_name_cached_before_cleanup_is_returned_after_it() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let volume = start(
        &sim,
        name_filter(Arc::clone(&statuses), NORMALIZED_DEFAULT, |major, post| {
            (major == CREATE && post) || (major == CLOSE && !post)
        }),
    );
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
    assert_eq!(
        *statuses.lock().unwrap(),
        [
            (CREATE, true, STATUS_SUCCESS),
            (CLOSE, false, STATUS_SUCCESS)
        ]
    );
    finish(&sim);
}

#[test]
fn cache_only_misses_until_a_query_caches_the_name_and_after_a_rename() {
    let sim = Sim::new();
    sim.set_post_irql(PostIrql::Passive);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let volume = start(
        &sim,
        name_filter(
            Arc::clone(&statuses),
            NORMALIZED_CACHE_ONLY,
            |major, post| major == READ && !post,
        ),
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    configure_default_query_in_post_read();
    file.read(1, 0);
    file.read(1, 0);
    sim.rename(volume, r"\a.txt", r"\b.txt").unwrap();
    file.read(1, 0);
    drop(file);
    let seen: Vec<NTSTATUS> = statuses.lock().unwrap().iter().map(|s| s.2).collect();
    assert_eq!(
        seen,
        [
            STATUS_FLT_NAME_CACHE_MISS,
            STATUS_FLT_NAME_CACHE_MISS,
            STATUS_SUCCESS,
            STATUS_FLT_NAME_CACHE_MISS
        ],
        "miss, miss (the post-read caches it), hit, miss (renamed)"
    );
    finish(&sim);
}

/// Makes the loaded test filter's post-read query the name with the default method (caching it),
/// keeping its pre-read hook.
fn configure_default_query_in_post_read() {
    common::set_post(Arc::new(|data, _, _, _| {
        if major_of(data) == READ {
            name_status(data, NORMALIZED_DEFAULT);
        }
        FLT_POSTOP_FINISHED_PROCESSING
    }));
}

#[test]
fn names_are_refused_with_a_top_level_irp_or_all_apcs_disabled() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&statuses);
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(move |data, _, _| {
                if major_of(data) == READ {
                    let passive = name_status(
                        data,
                        FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY,
                    );
                    let raised = fltsim::irql::raise(fltsim::irql::APC_LEVEL);
                    let at_apc = name_status(data, NORMALIZED_DEFAULT);
                    let allowed = name_status(
                        data,
                        FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_ALWAYS_ALLOW_CACHE_LOOKUP,
                    );
                    drop(raised);
                    log.lock().unwrap().push([passive, at_apc, allowed]);
                }
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    fltsim::kernel::with_top_level_irp(|| file.read(1, 0));
    drop(file);
    let refused = [STATUS_FLT_INVALID_NAME_REQUEST, STATUS_FLT_NAME_CACHE_MISS];
    assert_eq!(
        *statuses.lock().unwrap(),
        [
            [STATUS_SUCCESS, refused[0], refused[1]],
            [STATUS_FLT_INVALID_NAME_REQUEST, refused[0], refused[1]],
        ],
        "[at PASSIVE_LEVEL, at APC_LEVEL, at APC_LEVEL allowing a cache lookup]: first without, \
         then with a top-level IRP"
    );
    finish(&sim);
}

#[test]
fn name_queries_fail_under_fault_injection() {
    let sim = Sim::new();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let volume = start(
        &sim,
        name_filter(Arc::clone(&statuses), NORMALIZED_DEFAULT, |major, post| {
            major == CREATE && post
        }),
    );
    set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(FILE_NAME_TAG),
    });
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
    set_fault_injection(FaultPlan::Off);
    assert_eq!(
        *statuses.lock().unwrap(),
        [(CREATE, true, STATUS_INSUFFICIENT_RESOURCES)]
    );
    finish(&sim);
}

#[test]
#[should_panic(expected = "FltQueryInformationFile called with the thread's top-level IRP set")]
fn querying_with_a_top_level_irp_is_a_violation() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let mut info = [0u64; 8];
    fltsim::kernel::with_top_level_irp(|| {
        // SAFETY: a live instance and file object, and a buffer of 64 bytes.
        unsafe {
            windows_sys::Wdk::Storage::FileSystem::Minifilters::FltQueryInformationFile(
                sim.instance(volume).unwrap(),
                file.file_object(),
                info.as_mut_ptr().cast(),
                64,
                windows_sys::Wdk::Storage::FileSystem::FileInternalInformation,
                ptr::null_mut(),
            )
        };
    });
    sim.check();
}

// ---- IRQL ceilings ----

#[test]
#[should_panic(expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltAllocateContext called at IRQL 2")]
fn allocating_even_a_nonpaged_context_at_dispatch_is_a_violation() {
    let sim = Sim::new();
    start(&sim, Config::default());
    let dispatch = fltsim::irql::raise(fltsim::irql::DISPATCH_LEVEL);
    let mut context: PFLT_CONTEXT = ptr::null_mut();
    // SAFETY: the registered filter, a registered type and an output variable.
    unsafe {
        FltAllocateContext(
            common::filter(),
            common::VOLUME,
            CONTEXT_SIZE,
            NonPagedPool,
            &raw mut context,
        )
    };
    drop(dispatch);
    sim.check();
}

#[test]
#[should_panic(expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltIsVolumeWritable called at IRQL 1")]
fn is_volume_writable_above_passive_is_a_violation() {
    let sim = Sim::new();
    let volume = start(&sim, Config::default());
    let apc = fltsim::irql::raise(fltsim::irql::APC_LEVEL);
    let mut writable = false;
    // SAFETY: a live volume and an output variable.
    unsafe { FltIsVolumeWritable(volume.as_raw() as *const c_void, &raw mut writable) };
    drop(apc);
    sim.check();
}

/// A filter that pends every read and completes it from another thread at `irql` with `status`.
fn pend_reads_and_complete(status: i32, context: usize, irql: u8) -> Config {
    Config {
        pre: Some(Arc::new(move |data, _, _| {
            if major_of(data) != READ {
                return FLT_PREOP_SUCCESS_WITH_CALLBACK;
            }
            let address = data as usize;
            std::thread::spawn(move || {
                let _raised = fltsim::irql::raise(irql);
                // SAFETY: the pended operation's callback data, live until it is completed.
                unsafe {
                    FltCompletePendedPreOperation(
                        address as *mut FLT_CALLBACK_DATA,
                        status,
                        context as *const c_void,
                    );
                }
            });
            FLT_PREOP_PENDING
        })),
        ..Config::default()
    }
}

#[test]
#[should_panic(
    expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltCompletePendedPreOperation called at IRQL 2"
)]
fn completing_a_pended_pre_op_at_dispatch_needs_flt_preop_complete() {
    let sim = Sim::new();
    // The read waits for a completion that was refused: after a second of waiting with a rule
    // violation recorded, the violation is reported (not the hang, 20 s later).
    let volume = start(
        &sim,
        pend_reads_and_complete(FLT_PREOP_SUCCESS_WITH_CALLBACK, 0, 2),
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

#[test]
#[should_panic(expected = "and a non-NULL Context: Context must be NULL")]
fn completing_a_pended_pre_op_without_callback_passes_no_context() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        pend_reads_and_complete(FLT_PREOP_SUCCESS_NO_CALLBACK, 0x10, 0),
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

// ---- FltDoCompletionProcessingWhenSafe ----

unsafe extern "system" fn safe_post(
    _data: *mut FLT_CALLBACK_DATA,
    _objects: *const FLT_RELATED_OBJECTS,
    _context: *const c_void,
    _flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    FLT_POSTOP_FINISHED_PROCESSING
}

/// Calls `FltDoCompletionProcessingWhenSafe` from a post-op; its result and the status it stored.
fn when_safe(
    data: *mut FLT_CALLBACK_DATA,
    objects: &FLT_RELATED_OBJECTS,
    flags: u32,
) -> (bool, FLT_POSTOP_CALLBACK_STATUS) {
    let mut status: FLT_POSTOP_CALLBACK_STATUS = 0x7777;
    // SAFETY: the post-op's own arguments and an output variable.
    let queued = unsafe {
        FltDoCompletionProcessingWhenSafe(
            data,
            objects,
            ptr::null(),
            flags,
            Some(safe_post),
            &raw mut status,
        )
    };
    (queued, status)
}

#[test]
fn when_safe_returning_false_still_sets_the_post_operation_status() {
    let sim = Sim::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(move |data, objects, _, flags| {
                if major_of(data) == READ {
                    log.lock().unwrap().push(when_safe(data, objects, flags));
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read_paging(4096, 0);
    drop(file);
    assert_eq!(
        *seen.lock().unwrap(),
        [(false, FLT_POSTOP_FINISHED_PROCESSING)],
        "paging I/O at DISPATCH_LEVEL cannot be posted"
    );
    finish(&sim);
}

#[test]
#[should_panic(expected = "can only be called for IRP-based operations")]
fn when_safe_for_fast_io_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(|data, objects, _, flags| {
                if major_of(data) == READ {
                    when_safe(data, objects, flags);
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.fast_read(1, 0);
}

#[test]
#[should_panic(expected = "called with FLTFL_POST_OPERATION_DRAINING set")]
fn when_safe_while_draining_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            post: Some(Arc::new(|data, objects, _, flags| {
                if major_of(data) == READ {
                    when_safe(data, objects, flags);
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    sim.hold_io();
    std::thread::scope(|scope| {
        scope.spawn(|| file.read(1, 0));
        sim.wait_for_held_io(1);
        let detached =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.detach(volume)));
        sim.release_io();
        if let Err(panic) = detached {
            std::panic::resume_unwind(panic);
        }
    });
}

// ---- pre-op return rules ----

/// A filter whose pre-read returns `status` with completion context `context`.
fn pre_read_returns(status: i32, context: usize) -> Config {
    Config {
        pre: Some(Arc::new(move |data, _, completion| {
            if major_of(data) == READ {
                if status == FLT_PREOP_COMPLETE {
                    set_status(data, STATUS_SUCCESS);
                }
                *completion = context as *mut c_void;
                return status;
            }
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        ..Config::default()
    }
}

#[test]
#[should_panic(
    expected = "returned FLT_PREOP_SUCCESS_NO_CALLBACK with a non-NULL CompletionContext"
)]
fn a_completion_context_with_no_callback_is_a_violation() {
    let sim = Sim::new();
    let volume = start(&sim, pre_read_returns(FLT_PREOP_SUCCESS_NO_CALLBACK, 0x40));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

#[test]
#[should_panic(expected = "returned FLT_PREOP_COMPLETE with a non-NULL CompletionContext")]
fn a_completion_context_with_complete_is_a_violation() {
    let sim = Sim::new();
    let volume = start(&sim, pre_read_returns(FLT_PREOP_COMPLETE, 0x40));
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

#[test]
#[should_panic(expected = "returned FLT_PREOP_PENDING for a fast I/O operation")]
fn pending_fast_io_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                // SAFETY: callback data from Filter Manager.
                let fast = unsafe { (*data).Flags }
                    & windows_sys::Wdk::Storage::FileSystem::Minifilters::FLTFL_CALLBACK_DATA_FAST_IO_OPERATION
                    != 0;
                if fast {
                    FLT_PREOP_PENDING
                } else {
                    FLT_PREOP_SUCCESS_WITH_CALLBACK
                }
            })),
            ..Config::default()
        },
    );
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.fast_read(1, 0);
}

#[test]
#[should_panic(expected = "cleanup and close cannot fail")]
fn completing_a_cleanup_with_a_failure_is_a_violation() {
    let sim = Sim::new();
    let volume = start(
        &sim,
        Config {
            pre: Some(Arc::new(|data, _, _| {
                if major_of(data) == CLEANUP {
                    set_status(data, STATUS_ACCESS_DENIED);
                    return FLT_PREOP_COMPLETE;
                }
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            })),
            ..Config::default()
        },
    );
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
}
