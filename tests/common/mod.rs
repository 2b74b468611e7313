//! Shared test harness: iotally loaded into fltsim, and readers of its tables.

#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

use std::collections::BTreeMap;

use fltsim::registry::{self, Value};
use fltsim::{FileSystem, Sim, Volume, VolumeSpec};
use iotally::stats::StatsSnapshot;
use iotally::table::Counts;

/// The registry key iotally reads its settings from under fltsim.
pub const PARAMETERS: &str = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\iotally\Parameters";

/// iotally's INF template, as the package ships it (less the stamped `DriverVer`).
pub const INX: &str = include_str!("../../inf/iotally.inx");

/// Installs iotally from its INF into the simulated registry, as Windows Setup would on the
/// simulated build (call after `Sim::new`).
pub fn install() -> fltsim::inf::Installation {
    fltsim::inf::install(INX).expect("inf/iotally.inx installs")
}

/// A simulator with iotally loaded.
pub struct Loaded {
    pub sim: Sim,
}

impl Loaded {
    /// Loads iotally with default settings.
    pub fn new() -> Self {
        Self::with_max_entries(None)
    }

    /// Loads iotally with `MaxEntriesPerInstance` set (when `Some`).
    pub fn with_max_entries(max: Option<u32>) -> Self {
        let sim = Sim::new();
        install();
        if let Some(max) = max {
            registry::set_value(PARAMETERS, "MaxEntriesPerInstance", Value::Dword(max));
        }
        assert_eq!(
            sim.load("iotally", iotally::DriverEntry),
            0,
            "DriverEntry fails"
        );
        Self { sim }
    }

    /// Adds a volume `\Device\HarddiskVolume<n>` with file system `fs`.
    pub fn volume(&self, n: u32, fs: FileSystem) -> Volume {
        self.sim
            .add_volume(VolumeSpec::new(&format!(r"\Device\HarddiskVolume{n}"), fs))
    }

    /// The tallies of `volume`'s instance by file name (path relative to the volume), or `None` if
    /// iotally has no instance there.
    pub fn tallies(&self, volume: Volume) -> Option<BTreeMap<String, Counts>> {
        let instance = self.sim.instance(volume)?;
        // SAFETY: the instance is attached (fltsim just returned it) and nothing detaches it while
        // the test thread reads it.
        unsafe {
            iotally::inspect::with_instance(instance, |view| {
                let prefix = String::from_utf16_lossy(view.volume_name());
                view.table()
                    .iter()
                    .map(|(_, tally)| {
                        let name = String::from_utf16_lossy(tally.name());
                        let relative = name.strip_prefix(&prefix).unwrap_or(&name).to_owned();
                        (relative, tally.counts())
                    })
                    .collect()
            })
        }
    }

    /// The table statistics of `volume`'s instance.
    pub fn stats(&self, volume: Volume) -> StatsSnapshot {
        let instance = self.sim.instance(volume).expect("iotally is attached");
        // SAFETY: as in `tallies`.
        unsafe { iotally::inspect::with_instance(instance, |view| view.table().stats()) }
            .expect("the instance has a context")
    }

    /// Unloads iotally (optional unload) and fails the test unless the verifier report is clean.
    pub fn unload_clean(self) {
        assert_eq!(self.sim.unload(false), 0, "unload fails");
        self.sim.verifier_report().assert_clean();
    }
}

/// `(opens, reads, writes, bytes_read, bytes_written)` of a tally.
pub fn totals(counts: &Counts) -> (u64, u64, u64, u64, u64) {
    (
        counts.opens,
        counts.reads,
        counts.writes,
        counts.bytes_read,
        counts.bytes_written,
    )
}

/// The message a misuse dies with: the driver's own assertion in debug builds, fltsim's check in
/// release builds (where the driver's tracking is compiled away).
pub fn by_build(debug: &'static str, release: &'static str) -> &'static str {
    if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}
