//! The image loader on a hand-assembled driver image (`pe_builder.rs`): relocation, import binding,
//! the win64 convention both ways, CR8 emulation, bug checks, unknown imports, and calls into an
//! unloaded image. x86-64 Linux only; elsewhere every test says it is skipped.

mod pe_builder;

use std::path::PathBuf;

use fltsim::bugcheck::expect_bugcheck;
use fltsim::image::{ImageError, ImageOptions};
use fltsim::irql::{self, DISPATCH_LEVEL};
use fltsim::pool::PoolUsage;
use fltsim::{FileSystem, Sim, VolumeSpec};
use pe_builder::{BUGCHECK_CODE, Entry, FILE_NAME, SIZE, Spec, TAG, XMM6_CANARY, build};

/// Writes the image for `spec` to a file of its own and returns the path, or `None` (saying so)
/// on hosts that cannot run images.
fn image(test: &str, spec: &Spec) -> Option<PathBuf> {
    if !fltsim::image::SUPPORTED {
        eprintln!("skipped {test}: driver images run only on x86-64 Linux");
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fltsim-images");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}-{}.sys", std::process::id()));
    std::fs::write(&path, build(spec)).unwrap();
    Some(path)
}

fn spec(entry: Entry) -> Spec {
    Spec {
        entry,
        extra_import: None,
    }
}

/// A new simulation with the test driver's service installed (Filter Manager needs its instance
/// definitions).
fn machine() -> Sim {
    let sim = Sim::new();
    fltsim::service::install_minifilter("testdrv", "370000");
    sim
}

fn load(sim: &Sim, path: &std::path::Path) -> i32 {
    sim.load_image(
        "testdrv",
        path,
        ImageOptions::new().panic_bugcheck(BUGCHECK_CODE),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn relocations_imports_and_the_win64_convention_work_both_ways() {
    let Some(path) = image("allocate", &spec(Entry::Allocate)) else {
        return;
    };
    let sim = machine();
    // DriverEntry read the flags through a relocated pointer, passed them, the size and the tag in
    // RCX, RDX and R8 to ExAllocatePool2 (a SysV routine behind a win64 shim), stored into the block
    // with an aligned SSE store, and found XMM6 (callee-saved in win64) intact after the call.
    let status = load(&sim, &path);
    assert_eq!(status, i32::try_from(XMM6_CANARY).unwrap());
    assert_eq!(
        fltsim::pool::outstanding_by_pool(),
        [PoolUsage {
            tag: TAG,
            paged: false,
            bytes: SIZE as usize,
            count: 1
        }]
    );
}

#[test]
fn cr8_reads_return_the_simulated_irql() {
    let Some(path) = image("read-cr8", &spec(Entry::ReadCr8)) else {
        return;
    };
    let sim = machine();
    assert_eq!(load(&sim, &path), 0, "at PASSIVE_LEVEL");
    drop(sim);
    let sim = machine();
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    assert_eq!(load(&sim, &path), 2, "at DISPATCH_LEVEL");
}

#[test]
fn cr8_writes_set_the_simulated_irql() {
    let Some(path) = image("write-cr8", &spec(Entry::WriteCr8)) else {
        return;
    };
    let sim = machine();
    // The entry raised to 1, read 1 back, lowered to 0 again: returning at the IRQL it was called
    // at, which fltsim checks.
    assert_eq!(load(&sim, &path), 1);
    assert_eq!(irql::current(), 0);
}

#[test]
fn a_bug_check_names_its_code_parameters_and_panic_location() {
    let Some(path) = image("bugcheck", &spec(Entry::BugCheck)) else {
        return;
    };
    let report = fltsim::bugcheck::bugcheck_output(|| {
        let sim = machine();
        load(&sim, &path);
    });
    let code = format!("fltsim: KeBugCheckEx({BUGCHECK_CODE:#010X}, 0x");
    let rest = format!(
        ", {:#018X}, 0x000000000000002A, 0x0000000000000007) raised by driver image testdrv: its \
         panic handler reports: panicked at {FILE_NAME}:42:7",
        FILE_NAME.len()
    );
    assert!(report.contains(&code) && report.contains(&rest), "{report}");
}

#[test]
fn a_bug_check_with_another_code_is_not_decoded() {
    let Some(path) = image("bugcheck-other", &spec(Entry::BugCheck)) else {
        return;
    };
    expect_bugcheck("raised by driver image testdrv\n", || {
        let sim = machine();
        let _ = sim.load_image("testdrv", &path, ImageOptions::new());
    });
}

#[test]
fn a_fault_that_is_not_a_cr8_access_is_forwarded() {
    let Some(path) = image("read-cr3", &spec(Entry::ReadCr3)) else {
        return;
    };
    expect_bugcheck(
        "bytes [0f, 20, d8, c3]: not a CR8 access; forwarding it",
        || {
            let sim = machine();
            load(&sim, &path);
        },
    );
}

#[test]
fn an_unknown_import_fails_the_load_naming_it() {
    let spec = Spec {
        entry: Entry::Filter,
        extra_import: Some("FltNoSuchRoutine"),
    };
    let Some(path) = image("unknown-import", &spec) else {
        return;
    };
    let sim = machine();
    let error = sim
        .load_image("testdrv", &path, ImageOptions::new())
        .unwrap_err();
    assert!(
        matches!(&error, ImageError::UnknownImport { module, name }
            if module == "fltmgr.sys" && name == "FltNoSuchRoutine"),
        "{error:?}"
    );
    assert!(error.to_string().contains("fltmgr.sys!FltNoSuchRoutine"));
    assert!(!sim.driver_loaded());
}

#[test]
fn malformed_and_missing_files_are_refused() {
    if !fltsim::image::SUPPORTED {
        eprintln!("skipped: driver images run only on x86-64 Linux");
        return;
    }
    let sim = machine();
    let missing = sim.load_image(
        "testdrv",
        "/nonexistent/x.sys".as_ref(),
        ImageOptions::new(),
    );
    assert!(matches!(missing, Err(ImageError::Io(..))));
    let Some(path) = image("malformed", &spec(Entry::Filter)) else {
        return;
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(0x300);
    std::fs::write(&path, bytes).unwrap();
    let malformed = sim.load_image("testdrv", &path, ImageOptions::new());
    assert!(
        matches!(malformed, Err(ImageError::Malformed(_))),
        "{malformed:?}"
    );
}

#[test]
fn image_callbacks_run_and_the_driver_unloads_cleanly() {
    let Some(path) = image("filter", &spec(Entry::Filter)) else {
        return;
    };
    let sim = machine();
    assert_eq!(load(&sim, &path), 0);
    // InstanceSetup, called through win64, refuses the volume.
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume2",
        FileSystem::Ntfs,
    ));
    assert!(sim.instance(volume).is_none());
    // FilterUnload, called through win64, unregisters with the handle the image stored.
    assert_eq!(sim.unload(false), 0);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_call_into_an_unloaded_image_stops_the_process() {
    let Some(path) = image("filter-fail", &spec(Entry::FilterThenFail)) else {
        return;
    };
    expect_bugcheck(
        "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS (0xCE): code of an unloaded driver image ran",
        || {
            let sim = machine();
            // DriverEntry fails with its filter still registered: the image is unloaded anyway,
            // and the volume mounted next is offered to an InstanceSetup that is gone.
            assert_eq!(load(&sim, &path), 0xC000_0001_u32.cast_signed());
            sim.add_volume(VolumeSpec::new(
                r"\Device\HarddiskVolume2",
                FileSystem::Ntfs,
            ));
        },
    );
}
