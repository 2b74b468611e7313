//! A paged path reached at `DISPATCH_LEVEL`: a driver above iotally issues a read at
//! `DISPATCH_LEVEL` (the test thread raises its IRQL, and Filter Manager calls pre-read there).
//!
//! With Verifier's IRQL checks on (fltsim's default), fltsim reports the first Filter Manager
//! routine called above its ceiling, whatever the build. With them off — a machine without
//! Verifier, where the mistake hides until a page happens to be out — only a build with debug
//! assertions catches it: its IRQL assertion fires, in the host build as a Rust panic, in the debug
//! image as the panic handler's bug check (CR8 read through fltsim's emulation), whose decoded
//! location must be an IRQL assertion of the source.

use fltsim::bugcheck::bugcheck_output;
use fltsim::irql::{self, DISPATCH_LEVEL};
use fltsim::{FileSystem, OpenOptions};
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

use crate::harness::{Driver, Machine, for_each_driver, panic_location, root};

/// Opens a file, reads it at `PASSIVE_LEVEL`, then once at `DISPATCH_LEVEL`.
fn read_at_dispatch(machine: &Machine) {
    let ntfs = machine.volume(2, FileSystem::Ntfs);
    machine.sim.create_file(ntfs, r"\paged.txt", 4096);
    let mut file = machine
        .sim
        .open(ntfs, r"\paged.txt", OpenOptions::open())
        .unwrap();
    assert_eq!(file.read(10, 0).status, STATUS_SUCCESS);
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    assert_eq!(file.read(10, 0).status, STATUS_SUCCESS);
}

for_each_driver! {
    fn verifier_reports_a_paged_path_at_dispatch_level(driver: Driver) {
        let report = bugcheck_output(|| read_at_dispatch(&Machine::new(driver)));
        assert!(
            report.contains(
                "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltGetStreamContext called at IRQL 2, its ceiling is 1"
            ),
            "{report}"
        );
    }
}

for_each_driver! {
    fn the_debug_build_asserts_on_a_paged_path_at_dispatch_level(driver: Driver) {
        let scenario = || {
            let machine = Machine::new(driver);
            machine.sim.set_irql_checks(false);
            read_at_dispatch(&machine);
        };
        if !driver.debug_assertions() {
            // Nothing catches it: what a release build on a machine without Verifier does.
            scenario();
            return;
        }
        let report = bugcheck_output(scenario);
        let panic = match driver {
            Driver::Host => {
                assert!(report.contains("iotally: IRQL_NOT_LESS_OR_EQUAL: "), "{report}");
                report.as_str()
            }
            Driver::ReleaseImage | Driver::DebugImage => {
                let code = format!("KeBugCheckEx({:#010X}, ", iotally::PANIC_BUGCHECK_CODE);
                assert!(report.contains(&code), "{report}");
                report
                    .split_once("its panic handler reports: ")
                    .unwrap_or_else(|| panic!("no decoded panic location in:\n{report}"))
                    .1
            }
        };
        let (file, line, _) =
            panic_location(panic).unwrap_or_else(|| panic!("no panic location in:\n{report}"));
        let source = std::fs::read_to_string(root().join(&file)).unwrap();
        let text = source.lines().nth(line - 1).unwrap_or_default();
        assert!(
            text.contains("assert_at_most(") || text.contains("paged_code!("),
            "the panic at {file}:{line} is not an IRQL assertion: {text}"
        );
    }
}
