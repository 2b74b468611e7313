//! The three drivers the end-to-end suite runs against, and what the tests share.
//!
//! Every test body takes a [`Driver`] and uses the driver only as Windows would: loaded into
//! fltsim, given volumes and I/O, asked through its communication port, unloaded; then fltsim's
//! verifier report. [`for_each_driver!`] turns one body into three tests: `host` (the driver's
//! source compiled into this test binary), `release_image` (`target/package/iotally.sys`, from
//! `cargo xtask package`) and `debug_image` (`target/package-debug-assertions/iotally.sys`, from
//! `cargo xtask package --debug-assertions`), both mapped and run by fltsim's image loader.
//!
//! An image that is not built is skipped with a message saying how to build it, except under
//! `CI=true`, where it fails the test. Hosts other than x86-64 Linux skip the image tests.

use std::path::{Path, PathBuf};

use fltsim::image::ImageOptions;
use fltsim::registry::{self, Value};
use fltsim::{Caller, FileSystem, Sim, Volume, VolumeSpec};
use iotally_protocol::Stat;
use iotallyctl::client::{Client, Instance};
use iotallyctl::sim::SimPort;
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_SUCCESS};

/// Which build of iotally a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The driver's source compiled for the host, linked into this test binary.
    Host,
    /// The release image, `target/package/iotally.sys`.
    ReleaseImage,
    /// The image with debug assertions and overflow checks,
    /// `target/package-debug-assertions/iotally.sys`.
    DebugImage,
}

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the suite must not skip anything (`CI=true`).
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

impl Driver {
    /// The image file, for the image drivers. `IOTALLY_RELEASE_IMAGE` and `IOTALLY_DEBUG_IMAGE`
    /// name another file (the test of the deliberately broken image uses that).
    pub fn image(self) -> Option<PathBuf> {
        let (variable, default) = match self {
            Self::Host => return None,
            Self::ReleaseImage => ("IOTALLY_RELEASE_IMAGE", "target/package/iotally.sys"),
            Self::DebugImage => (
                "IOTALLY_DEBUG_IMAGE",
                "target/package-debug-assertions/iotally.sys",
            ),
        };
        Some(std::env::var_os(variable).map_or_else(|| root().join(default), PathBuf::from))
    }

    /// The command that builds the image.
    fn build_command(self) -> &'static str {
        match self {
            Self::Host => "cargo test",
            Self::ReleaseImage => "cargo xtask package",
            Self::DebugImage => "cargo xtask package --debug-assertions",
        }
    }

    /// Whether the driver was built with debug assertions (its IRQL and push-lock checks).
    pub fn debug_assertions(self) -> bool {
        match self {
            Self::Host => cfg!(debug_assertions),
            Self::ReleaseImage => false,
            Self::DebugImage => true,
        }
    }

    /// Whether this driver can run here; says why not on stderr. Under `CI=true` a missing image
    /// fails the test instead.
    ///
    /// # Panics
    /// Under `CI=true`, when the image file is missing.
    pub fn available(self, test: &str) -> bool {
        let Some(image) = self.image() else {
            return true;
        };
        if !fltsim::image::SUPPORTED {
            eprintln!("skipped {test} on {self:?}: driver images run only on x86-64 Linux hosts");
            return false;
        }
        if !image.exists() {
            assert!(
                !required(),
                "{} is missing: with CI=true the image tests must run; build it with `{}` first",
                image.display(),
                self.build_command()
            );
            eprintln!(
                "skipped {test} on {self:?}: {} is missing (build it with `{}`)",
                image.display(),
                self.build_command()
            );
            return false;
        }
        warn_if_stale(&image, self.build_command());
        true
    }

    /// Loads the driver into `sim` as service `iotally`; returns `DriverEntry`'s status.
    ///
    /// # Panics
    /// If the image cannot be loaded (naming why, e.g. an import fltsim lacks).
    pub fn load(self, sim: &Sim) -> NTSTATUS {
        match self.image() {
            None => sim.load("iotally", iotally::DriverEntry),
            Some(path) => sim
                .load_image(
                    "iotally",
                    &path,
                    ImageOptions::new().panic_bugcheck(iotally::PANIC_BUGCHECK_CODE),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
}

/// Says so when a source file of the driver is newer than `image`: the test then runs old code.
fn warn_if_stale(image: &Path, command: &str) {
    let Ok(built) = image.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let mut pending = vec![root().join("src")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                pending.push(path);
            } else if path
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed > built)
            {
                eprintln!(
                    "note: {} is newer than {}: run `{command}` to test the current source",
                    path.display(),
                    image.display()
                );
                return;
            }
        }
    }
}

/// One body, three tests: `host`, `release_image`, `debug_image`.
macro_rules! for_each_driver {
    ($(#[$attribute:meta])* fn $name:ident($driver:ident: Driver) $body:block) => {
        $(#[$attribute])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($driver: $crate::harness::Driver) $body

            #[test]
            fn host() {
                body($crate::harness::Driver::Host);
            }

            #[test]
            fn release_image() {
                let driver = $crate::harness::Driver::ReleaseImage;
                if driver.available(stringify!($name)) {
                    body(driver);
                }
            }

            #[test]
            fn debug_image() {
                let driver = $crate::harness::Driver::DebugImage;
                if driver.available(stringify!($name)) {
                    body(driver);
                }
            }
        }
    };
}
pub(crate) use for_each_driver;

/// A simulated machine with iotally loaded.
pub struct Machine {
    /// The simulator.
    pub sim: Sim,
}

/// The registry key iotally reads its settings from under fltsim.
pub const PARAMETERS: &str = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\iotally\Parameters";

/// iotally's INF template, as the package ships it (less the stamped `DriverVer`).
const INX: &str = include_str!("../../inf/iotally.inx");

/// Installs iotally from its INF into the simulated registry, as Windows Setup would (call after
/// `Sim::new`, before loading).
pub fn install() {
    fltsim::inf::install(INX).expect("inf/iotally.inx installs");
}

impl Machine {
    /// A new machine with iotally installed and `driver` loaded (asserting that it loaded).
    pub fn new(driver: Driver) -> Self {
        Self::with_max_entries(driver, None)
    }

    /// The same, with the `MaxEntriesPerInstance` setting (when `Some`).
    pub fn with_max_entries(driver: Driver, max: Option<u32>) -> Self {
        let sim = Sim::new();
        install();
        if let Some(max) = max {
            registry::set_value(PARAMETERS, "MaxEntriesPerInstance", Value::Dword(max));
        }
        assert_eq!(driver.load(&sim), STATUS_SUCCESS, "DriverEntry failed");
        Self { sim }
    }

    /// Mounts `\Device\HarddiskVolume<n>` with file system `fs`.
    pub fn volume(&self, n: u32, fs: FileSystem) -> Volume {
        self.sim
            .add_volume(VolumeSpec::new(&format!(r"\Device\HarddiskVolume{n}"), fs))
    }

    /// A client of the driver's port, as `iotallyctl` connects (an administrator).
    pub fn client(&self) -> Client<SimPort<'_>> {
        Client::new(
            SimPort::connect(&self.sim, Caller::Administrator, &[])
                .unwrap_or_else(|e| panic!("cannot connect to the driver's port: {e}")),
        )
    }

    /// Unloads (an optional unload, as `fltmc unload` does) and asserts that the verifier report is
    /// clean.
    pub fn unload_clean(self) {
        assert_eq!(
            self.sim.unload(false),
            STATUS_SUCCESS,
            "FilterUnload failed"
        );
        self.sim.verifier_report().assert_clean();
    }
}

/// The `file:line:column` a panic report names (`panicked at src/x.rs:1:2` as Rust prints it, and as
/// fltsim prints the location decoded from the image's panic bug check).
pub fn panic_location(report: &str) -> Option<(String, usize, usize)> {
    let (_, rest) = report.split_once("panicked at ")?;
    let location = rest.split_whitespace().next()?.trim_end_matches(':');
    let mut parts = location.rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), line, column))
}

/// The value of `stat` in an instance the port reported.
pub fn stat(instance: &Instance, stat: Stat) -> u64 {
    instance
        .stats
        .iter()
        .find(|s| s.name == stat.name())
        .unwrap_or_else(|| panic!("the driver reports no {}", stat.name()))
        .value
}
