//! The contract table of `fltsim/README.md` against the code: every `#[no_mangle]` export of
//! `fltsim/src` has a row, every row an export, every row an IRQL and a test that exists. And the
//! IRQL ceiling of every export that has one, broken on purpose.

mod common;

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::ptr;

use common::{Config, configure, driver_entry};
use fltsim::bugcheck::expect_bugcheck;
use fltsim::irql::{APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL};
use fltsim::{FileSystem, Sim, VolumeSpec};
use windows_sys::Wdk::Foundation::PagedPool;
use windows_sys::Wdk::Storage::FileSystem::Minifilters as flt;
use windows_sys::Wdk::System::SystemServices as kernel;
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

fn fltsim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The names of the `#[no_mangle]` functions in `text`.
fn exports_in(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut names = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if !line.trim().starts_with("#[unsafe(no_mangle)]")
            && !line.trim().starts_with("#[no_mangle]")
        {
            continue;
        }
        let signature = lines[at + 1..]
            .iter()
            .find(|l| l.contains(" fn "))
            .expect("a function after #[no_mangle]");
        let name = signature
            .split(" fn ")
            .nth(1)
            .and_then(|rest| rest.split(['(', '<']).next())
            .expect("a function name");
        names.push(name.trim().to_owned());
    }
    names
}

/// One row of the contract table.
struct Row {
    export: String,
    irql: String,
    tests: Vec<(String, String)>,
}

/// The rows between the table's markers in `readme`.
fn rows(readme: &str) -> Vec<Row> {
    let start = readme
        .find("<!-- contract table: start -->")
        .expect("the contract table's start marker");
    let end = readme
        .find("<!-- contract table: end -->")
        .expect("the contract table's end marker");
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 5, "five columns in {line}");
            let export = cells[0].trim().trim_matches('`').to_owned();
            let tests = cells[4]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|t| {
                    let (file, name) = t.split_once("::").expect("tests as file::name");
                    (file.to_owned(), name.to_owned())
                })
                .collect();
            Row {
                export,
                irql: cells[1].trim().to_owned(),
                tests,
            }
        })
        .collect()
}

#[test]
fn the_contract_table_has_one_row_per_export_each_with_an_irql_and_real_tests() {
    let mut exports = BTreeSet::new();
    for path in sources(&fltsim_dir().join("src")) {
        let text = fs::read_to_string(&path).expect("a readable source");
        for name in exports_in(&text) {
            assert!(exports.insert(name.clone()), "{name} exported twice");
        }
    }
    assert!(exports.len() > 40, "only {} exports found", exports.len());
    let readme = fs::read_to_string(fltsim_dir().join("README.md")).expect("fltsim/README.md");
    let table = rows(&readme);
    let rowed: BTreeSet<String> = table.iter().map(|r| r.export.clone()).collect();
    assert_eq!(table.len(), rowed.len(), "an export has two rows");
    let missing: Vec<&String> = exports.difference(&rowed).collect();
    let extra: Vec<&String> = rowed.difference(&exports).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "exports without a row in fltsim/README.md's contract table: {missing:?}; rows for no \
         export: {extra:?}"
    );
    for row in &table {
        assert!(!row.irql.is_empty(), "{}: no IRQL", row.export);
        assert!(!row.tests.is_empty(), "{}: no test", row.export);
        for (file, name) in &row.tests {
            // `file::test` is in tests/file.rs; `src/module::test` is a unit test in src/module.rs.
            let path = if file.contains('/') {
                fltsim_dir().join(format!("{file}.rs"))
            } else {
                fltsim_dir().join("tests").join(format!("{file}.rs"))
            };
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{}: no test file {}", row.export, path.display()));
            assert!(
                text.contains(&format!("fn {name}(")),
                "{}: no test {file}::{name}",
                row.export
            );
        }
    }
}

#[test]
fn the_export_scan_finds_both_attribute_forms() {
    let text = "#[unsafe(no_mangle)]\npub unsafe extern \"system\" fn FltA(x: u8) {}\n\
                #[no_mangle]\n/// doc\npub extern \"system\" fn KeB() -> u8 { 0 }\n";
    assert_eq!(exports_in(text), ["FltA", "KeB"]);
}

/// Calls `call` at `ceiling + 1` and checks that fltsim reports the export's IRQL ceiling.
fn above(sim: &Sim, name: &str, ceiling: u8, call: impl FnOnce()) {
    let too_high = ceiling + 1;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        {
            let _raised = fltsim::irql::raise(too_high);
            call();
        }
        sim.check();
    }));
    let message = match outcome {
        Ok(()) => panic!("{name} at IRQL {too_high}: nothing reported"),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    };
    assert!(
        message.contains("IRQL_NOT_LESS_OR_EQUAL") && message.contains(name),
        "{name} at IRQL {too_high}: {message}"
    );
}

/// A loaded test filter with an instance and a referenced instance context, for the IRQL checks.
struct Loaded {
    sim: Sim,
    volume: fltsim::Volume,
    filter: isize,
    instance: isize,
    context: *mut c_void,
}

impl Loaded {
    fn new() -> Self {
        let sim = Sim::new();
        configure(Config::default());
        let volume = sim.add_volume(VolumeSpec::new(
            r"\Device\HarddiskVolume1",
            FileSystem::Ntfs,
        ));
        assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
        let instance = sim.instance(volume).unwrap();
        let context = common::allocate(flt::FLT_INSTANCE_CONTEXT).unwrap();
        Self {
            sim,
            volume,
            filter: common::filter(),
            instance,
            context,
        }
    }

    fn finish(self) {
        // SAFETY: the reference `new` took.
        unsafe { flt::FltReleaseContext(self.context) };
        assert_eq!(self.sim.unload(false), STATUS_SUCCESS);
        self.sim.verifier_report().assert_clean();
    }
}

#[test]
fn registration_and_context_exports_report_their_documented_irql_ceilings() {
    let t = Loaded::new();
    let (sim, filter, instance, context) = (&t.sim, t.filter, t.instance, t.context);
    let null: *mut c_void = ptr::null_mut();
    let type_ = u16::try_from(flt::FLT_INSTANCE_CONTEXT).unwrap();
    above(sim, "FltRegisterFilter", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltRegisterFilter(ptr::null(), ptr::null(), null.cast()) };
    });
    above(sim, "FltStartFiltering", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltStartFiltering(filter) };
    });
    above(sim, "FltUnregisterFilter", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltUnregisterFilter(filter) };
    });
    above(sim, "FltAllocateContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltAllocateContext(filter, type_, 8, PagedPool, null.cast()) };
    });
    above(sim, "FltReferenceContext", DISPATCH_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltReferenceContext(context) };
    });
    above(sim, "FltReleaseContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltReleaseContext(context) };
    });
    above(sim, "FltDeleteContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltDeleteContext(context) };
    });
    above(sim, "FltSetInstanceContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltSetInstanceContext(instance, 0, context, null.cast()) };
    });
    above(sim, "FltGetInstanceContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltGetInstanceContext(instance, null.cast()) };
    });
    above(sim, "FltSetStreamContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltSetStreamContext(instance, ptr::null(), 0, context, null.cast()) };
    });
    above(sim, "FltGetStreamContext", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltGetStreamContext(instance, ptr::null(), null.cast()) };
    });
    above(sim, "FltGetFileNameInformation", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltGetFileNameInformation(ptr::null(), 0, null.cast()) };
    });
    above(sim, "FltReleaseFileNameInformation", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltReleaseFileNameInformation(ptr::null()) };
    });
    t.finish();
}

#[test]
fn object_and_user_memory_exports_report_their_documented_irql_ceilings() {
    let t = Loaded::new();
    let (sim, filter, instance, volume) = (&t.sim, t.filter, t.instance, t.volume);
    let null: *mut c_void = ptr::null_mut();
    above(sim, "FltEnumerateInstances", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltEnumerateInstances(volume.as_raw(), filter, null.cast(), 0, null.cast()) };
    });
    above(sim, "FltGetFileSystemType", APC_LEVEL, || {
        // SAFETY: as above.
        unsafe { flt::FltGetFileSystemType(volume.as_raw() as *const c_void, null.cast()) };
    });
    above(sim, "FltObjectReference", DISPATCH_LEVEL, || {
        // SAFETY: as above.
        unsafe { flt::FltObjectReference(instance as *mut c_void) };
    });
    above(sim, "FltObjectDereference", DISPATCH_LEVEL, || {
        // SAFETY: as above.
        unsafe { flt::FltObjectDereference(instance as *mut c_void) };
    });
    above(sim, "MmCopyMemory", APC_LEVEL, || {
        // SAFETY: as above.
        unsafe {
            kernel::MmCopyMemory(
                null,
                kernel::MM_COPY_ADDRESS::default(),
                0,
                kernel::MM_COPY_MEMORY_VIRTUAL,
                null.cast(),
            )
        };
    });
    above(sim, "MmSecureVirtualMemory", APC_LEVEL, || {
        // SAFETY: as above.
        unsafe { kernel::MmSecureVirtualMemory(null, 1, kernel::PAGE_READONLY) };
    });
    above(sim, "MmUnsecureVirtualMemory", APC_LEVEL, || {
        // SAFETY: as above.
        unsafe { kernel::MmUnsecureVirtualMemory(null) };
    });
    t.finish();
}

#[test]
fn name_volume_operation_and_port_exports_report_their_documented_irql_ceilings() {
    let t = Loaded::new();
    let (sim, filter, instance, volume) = (&t.sim, t.filter, t.instance, t.volume);
    let null: *mut c_void = ptr::null_mut();
    above(sim, "FltReferenceFileNameInformation", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltReferenceFileNameInformation(ptr::null()) };
    });
    above(sim, "FltParseFileNameInformation", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltParseFileNameInformation(null.cast()) };
    });
    above(sim, "FltQueryInformationFile", PASSIVE_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltQueryInformationFile(instance, ptr::null(), null, 0, 0, null.cast()) };
    });
    above(sim, "FltGetVolumeName", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltGetVolumeName(volume.as_raw(), null.cast(), null.cast()) };
    });
    above(sim, "FltGetVolumeProperties", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltGetVolumeProperties(volume.as_raw(), null.cast(), 0, null.cast()) };
    });
    above(sim, "FltIsVolumeWritable", PASSIVE_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltIsVolumeWritable(volume.as_raw() as *const c_void, null.cast()) };
    });
    above(sim, "FltCompletePendedPreOperation", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe {
            flt::FltCompletePendedPreOperation(
                ptr::null(),
                flt::FLT_PREOP_SUCCESS_NO_CALLBACK,
                ptr::null(),
            );
        }
    });
    above(sim, "FltCompletePendedPreOperation", DISPATCH_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe {
            flt::FltCompletePendedPreOperation(ptr::null(), flt::FLT_PREOP_COMPLETE, ptr::null());
        }
    });
    above(sim, "FltBuildDefaultSecurityDescriptor", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltBuildDefaultSecurityDescriptor(null.cast(), 1) };
    });
    above(sim, "FltFreeSecurityDescriptor", APC_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltFreeSecurityDescriptor(null) };
    });
    above(sim, "FltCreateCommunicationPort", PASSIVE_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe {
            flt::FltCreateCommunicationPort(
                filter,
                null.cast(),
                ptr::null(),
                ptr::null(),
                None,
                None,
                None,
                1,
            )
        };
    });
    above(sim, "FltCloseCommunicationPort", PASSIVE_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltCloseCommunicationPort(0) };
    });
    above(sim, "FltCloseClientPort", PASSIVE_LEVEL, || {
        // SAFETY: the export checks its IRQL first and returns; the arguments are not used.
        unsafe { flt::FltCloseClientPort(filter, null.cast()) };
    });
    t.finish();
}

/// Runs `call` at `ceiling + 1` in a child process, expecting the kernel routine to stop it.
fn bugchecks_above(expected: &str, ceiling: u8, call: fn()) {
    expect_bugcheck(expected, || {
        let _sim = Sim::new();
        let _raised = fltsim::irql::raise(ceiling + 1);
        call();
    });
}

#[test]
fn top_level_irp_above_dispatch_bugchecks() {
    bugchecks_above("IoGetTopLevelIrp called at IRQL 3", DISPATCH_LEVEL, || {
        // SAFETY: no preconditions besides the IRQL under test.
        unsafe { kernel::IoGetTopLevelIrp() };
    });
}

#[test]
fn leaving_a_critical_region_above_apc_level_bugchecks() {
    bugchecks_above("KeLeaveCriticalRegion called at IRQL 2", APC_LEVEL, || {
        // SAFETY: no preconditions besides the IRQL under test.
        unsafe { kernel::KeLeaveCriticalRegion() };
    });
}

#[test]
fn querying_a_registry_value_above_passive_bugchecks() {
    bugchecks_above("ZwQueryValueKey called at IRQL 1", PASSIVE_LEVEL, || {
        // SAFETY: no preconditions are reached: the IRQL is checked first.
        unsafe {
            fltsim::registry::ZwQueryValueKey(
                ptr::null_mut(),
                ptr::null(),
                0,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
    });
}

#[test]
fn closing_a_handle_above_passive_bugchecks() {
    bugchecks_above("ZwClose called at IRQL 1", PASSIVE_LEVEL, || {
        // SAFETY: as above.
        unsafe { fltsim::registry::ZwClose(ptr::null_mut()) };
    });
}

#[test]
fn the_top_level_irp_is_null_unless_set() {
    let _sim = Sim::new();
    // SAFETY: no preconditions.
    assert!(unsafe { kernel::IoGetTopLevelIrp() }.is_null());
    let inside = fltsim::kernel::with_top_level_irp(|| {
        // SAFETY: as above.
        unsafe { kernel::IoGetTopLevelIrp() as usize }
    });
    assert_eq!(inside, fltsim::kernel::FSRTL_FSP_TOP_LEVEL_IRP);
    // SAFETY: as above.
    assert!(unsafe { kernel::IoGetTopLevelIrp() }.is_null());
}
