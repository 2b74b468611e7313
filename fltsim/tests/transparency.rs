//! The transparency workload (`fltsim::transparency`) as a test of filters: a filter that only
//! watches changes nothing; one that disallows fast I/O, changes a status or changes data is
//! caught, with the operation named.

mod common;

use common::{Config, configure, driver_entry};
use fltsim::transparency::{Trace, Workload};
use fltsim::{FileSystem, Sim, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_COMPLETE, FLT_PREOP_DISALLOW_FASTIO,
    FLT_PREOP_SUCCESS_WITH_CALLBACK, FLTFL_CALLBACK_DATA_FAST_IO_OPERATION,
};
use windows_sys::Win32::Foundation::{STATUS_SUCCESS, STATUS_UNEXPECTED_IO_ERROR};
use windows_sys::Win32::System::WindowsProgramming::FILE_CREATED;

const FILE_SYSTEMS: [FileSystem; 4] = [
    FileSystem::Ntfs,
    FileSystem::Refs,
    FileSystem::Fat,
    FileSystem::ExFat,
];

fn workload() -> Workload {
    Workload::new(0x7A11_0001, 600)
}

fn spec(fs: FileSystem) -> VolumeSpec {
    VolumeSpec::new(r"\Device\HarddiskVolume1", fs)
}

/// The workload on a volume of `fs` with no filter loaded.
fn unfiltered(fs: FileSystem) -> Trace {
    let sim = Sim::new();
    let volume = sim.add_volume(spec(fs));
    workload().run(&sim, volume)
}

/// The workload on a volume of `fs` with the test filter loaded as `config` makes it.
fn filtered(fs: FileSystem, config: Config) -> Trace {
    let sim = Sim::new();
    configure(config);
    let volume = sim.add_volume(spec(fs));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let trace = workload().run(&sim, volume);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
    trace
}

#[test]
fn the_workload_is_deterministic_and_covers_every_kind_of_operation() {
    for fs in FILE_SYSTEMS {
        let trace = unfiltered(fs);
        assert_eq!(trace.difference(&unfiltered(fs)), None, "{fs:?}");
        let succeeded = |prefix: &str| {
            trace
                .steps
                .iter()
                .filter(|s| s.operation.starts_with(prefix) && s.status >= 0)
                .count()
        };
        for kind in ["Cached", "NonCached", "Paging", "Fast", "Mdl"] {
            let reads = trace.steps.iter().filter(|s| {
                s.operation.starts_with("read") && s.operation.contains(&format!(" {kind} "))
            });
            assert!(
                reads.filter(|s| !s.data.is_empty()).count() > 0,
                "{fs:?}: no {kind} read returned data"
            );
        }
        for prefix in ["open", "write", "rename", "delete", "close", "lock"] {
            assert!(succeeded(prefix) > 0, "{fs:?}: no {prefix} succeeded");
        }
        assert!(
            trace
                .steps
                .iter()
                .any(|s| s.operation.starts_with("open") && s.information == FILE_CREATED as usize),
            "{fs:?}: nothing created"
        );
        assert!(
            trace.steps.iter().any(|s| s.reissued),
            "{fs:?}: no fast I/O was reissued"
        );
        let streams = trace.steps.iter().any(|s| {
            s.operation.starts_with("open")
                && [":s1", ":s2", ":meta"]
                    .iter()
                    .any(|n| s.operation.contains(n))
                && s.status >= 0
        });
        let links = succeeded("link") > 0;
        let named_streams = matches!(fs, FileSystem::Ntfs | FileSystem::Refs);
        assert_eq!(streams, named_streams, "{fs:?}: streams opened");
        assert_eq!(links, fs == FileSystem::Ntfs, "{fs:?}: hard links made");
        assert!(
            !trace.snapshot.files.is_empty(),
            "{fs:?}: the volume ends empty"
        );
    }
}

#[test]
fn a_filter_that_only_watches_changes_nothing() {
    for fs in FILE_SYSTEMS {
        let watched = filtered(fs, Config::default());
        assert_eq!(unfiltered(fs).difference(&watched), None, "{fs:?}");
    }
}

#[test]
fn a_filter_that_disallows_fast_io_is_caught() {
    let config = Config {
        pre: Some(std::sync::Arc::new(|data, _, _| {
            // SAFETY: callback data from Filter Manager.
            let flags = unsafe { (*data).Flags };
            if flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0 {
                FLT_PREOP_DISALLOW_FASTIO
            } else {
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            }
        })),
        ..Config::default()
    };
    let difference = unfiltered(FileSystem::Ntfs).difference(&filtered(FileSystem::Ntfs, config));
    let difference = difference.expect("disallowing fast I/O must show");
    assert!(
        difference.contains("Fast") && difference.contains("reissued: true"),
        "{difference}"
    );
}

#[test]
fn a_filter_that_changes_a_status_is_caught() {
    let config = Config {
        pre: Some(std::sync::Arc::new(|data, _, _| {
            // SAFETY: callback data from Filter Manager, valid for the callback; the pre-op may
            // change its status when it completes the operation.
            let data = unsafe { &mut *data };
            // SAFETY: the operation's parameter block.
            let iopb = unsafe { &*data.Iopb };
            // SAFETY: a read's parameters (only used for reads).
            let length = unsafe { iopb.Parameters.Read.Length };
            if iopb.MajorFunction == common::READ && length > 5000 {
                data.IoStatus.Anonymous.Status = STATUS_UNEXPECTED_IO_ERROR;
                data.IoStatus.Information = 0;
                return FLT_PREOP_COMPLETE;
            }
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        ..Config::default()
    };
    for fs in FILE_SYSTEMS {
        let difference = unfiltered(fs).difference(&filtered(fs, config_clone(&config)));
        let difference = difference.expect("a changed status must show");
        assert!(difference.contains("read"), "{fs:?}: {difference}");
    }
}

#[test]
fn a_filter_that_changes_data_is_caught() {
    let config = Config {
        post: Some(std::sync::Arc::new(|data, _, _, _| {
            // SAFETY: callback data from Filter Manager, valid for the callback.
            let data = unsafe { &*data };
            // SAFETY: the operation's parameter block.
            let iopb = unsafe { &*data.Iopb };
            // SAFETY: a read's parameters (only used for reads).
            let buffer = unsafe { iopb.Parameters.Read.ReadBuffer.cast::<u8>() };
            if iopb.MajorFunction == common::READ
                && data.IoStatus.Information > 0
                && !buffer.is_null()
            {
                // SAFETY: a completed buffered read's buffer holds `Information` bytes.
                unsafe { *buffer ^= 0x01 };
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    };
    let difference = unfiltered(FileSystem::Fat).difference(&filtered(FileSystem::Fat, config));
    let difference = difference.expect("changed data must show");
    assert!(difference.contains("read"), "{difference}");
}

/// The hooks of `config` (the test filter's config is not `Clone`).
fn config_clone(config: &Config) -> Config {
    Config {
        pre: config.pre.clone(),
        post: config.post.clone(),
        ..Config::default()
    }
}
