//! File data in the simulated file systems: what reads return and writes change on every path,
//! and the counters a test reads to see what an operation cost (queries, fast I/O).

mod common;

use std::ptr;
use std::sync::Arc;

use common::{CREATE, Config, configure, driver_entry};
use fltsim::pool::{FaultPlan, set_fault_injection};
use fltsim::{
    Counters, FILE_NAME_TAG, FastIo, FileSystem, OpenOptions, Sim, Transfer, Volume, VolumeSpec,
};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_QUERY_DEFAULT,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_DISALLOW_FASTIO, FLT_PREOP_SUCCESS_WITH_CALLBACK,
    FLTFL_CALLBACK_DATA_FAST_IO_OPERATION, FltGetFileNameInformation, FltQueryInformationFile,
    FltReleaseFileNameInformation,
};
use windows_sys::Wdk::Storage::FileSystem::{FILE_OVERWRITE, FileStandardInformation};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_END_OF_FILE, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS,
};

const FILE_SYSTEMS: [FileSystem; 4] = [
    FileSystem::Ntfs,
    FileSystem::Refs,
    FileSystem::Fat,
    FileSystem::ExFat,
];

const TRANSFERS: [Transfer; 5] = [
    Transfer::Cached,
    Transfer::NonCached,
    Transfer::Paging,
    Transfer::Fast,
    Transfer::Mdl,
];

fn volume(sim: &Sim, fs: FileSystem) -> Volume {
    sim.add_volume(VolumeSpec::new(r"\Device\HarddiskVolume1", fs))
}

/// `count` bytes of a pattern starting at `seed`.
fn pattern(seed: u8, count: usize) -> Vec<u8> {
    (0..count)
        .map(|i| seed.wrapping_add(u8::try_from(i % 253).unwrap()))
        .collect()
}

#[test]
fn reads_return_the_data_writes_changed_on_every_path() {
    for fs in FILE_SYSTEMS {
        let sim = Sim::new();
        let v = volume(&sim, fs);
        sim.create_file(v, r"\f", 6000);
        let mut expected = sim.file_data(v, r"\f").unwrap();
        assert_eq!(expected.len(), 6000);
        assert!(
            expected.iter().any(|&b| b != 0),
            "{fs:?}: generated data, not zeros"
        );
        let mut h = sim.open(v, r"\f", OpenOptions::open()).unwrap();
        for (n, how) in TRANSFERS.into_iter().enumerate() {
            let offset = 512 * (n as u64 + 1);
            let data = pattern(u8::try_from(n).unwrap() * 40, 1024);
            let result = h.write_from(how, offset, &data);
            assert_eq!(
                (result.status, result.information),
                (STATUS_SUCCESS, 1024),
                "{fs:?} {how:?}"
            );
            let start = usize::try_from(offset).unwrap();
            expected[start..start + 1024].copy_from_slice(&data);
            for read in TRANSFERS {
                let mut buffer = vec![0; 1536];
                let result = h.read_into(read, 0, &mut buffer);
                assert_eq!(result.information, 1536, "{fs:?} {how:?} then {read:?}");
                assert_eq!(buffer, expected[..1536], "{fs:?} {how:?} then {read:?}");
            }
        }
        assert_eq!(sim.file_data(v, r"\f"), Some(expected.clone()));
        // Past end of file: a cached write extends, leaving zeros between; a paging write does not.
        assert_eq!(h.write_from(Transfer::Cached, 7000, b"end").information, 3);
        expected.resize(7000, 0);
        expected.extend_from_slice(b"end");
        assert_eq!(h.write_from(Transfer::Paging, 7002, b"XYZ").information, 1);
        expected[7002] = b'X';
        assert_eq!(sim.file_data(v, r"\f"), Some(expected.clone()), "{fs:?}");
        let mut buffer = vec![0xEE; 1024];
        let tail = h.read_into(Transfer::Cached, 6500, &mut buffer);
        assert_eq!(tail.information, 503, "{fs:?}: up to end of file");
        assert_eq!(buffer[..503], expected[6500..]);
        assert_eq!(
            h.read_into(Transfer::Fast, 7003, &mut buffer).status,
            STATUS_END_OF_FILE
        );
        drop(h);
        let overwritten = sim
            .open(v, r"\f", OpenOptions::disposition(FILE_OVERWRITE))
            .unwrap();
        drop(overwritten);
        assert_eq!(
            sim.file_data(v, r"\f"),
            Some(Vec::new()),
            "{fs:?}: overwritten"
        );
    }
}

#[test]
fn non_cached_transfers_must_be_sector_aligned() {
    let sim = Sim::new();
    let v = volume(&sim, FileSystem::Ntfs);
    sim.create_file(v, r"\f", 4096);
    let mut h = sim.open(v, r"\f", OpenOptions::open()).unwrap();
    let mut buffer = vec![0; 512];
    assert_eq!(
        h.read_into(Transfer::NonCached, 100, &mut buffer).status,
        STATUS_INVALID_PARAMETER
    );
    assert_eq!(
        h.read_into(Transfer::NonCached, 0, &mut buffer[..100])
            .status,
        STATUS_INVALID_PARAMETER
    );
    assert_eq!(
        h.write_from(Transfer::NonCached, 512, &[1; 100]).status,
        STATUS_INVALID_PARAMETER
    );
    assert_eq!(
        h.read_into(Transfer::NonCached, 3584, &mut buffer)
            .information,
        512
    );
    assert_eq!(
        h.read_into(Transfer::Paging, 100, &mut buffer[..100])
            .status,
        STATUS_SUCCESS,
        "paging I/O is not checked"
    );
}

#[test]
fn setup_data_is_the_same_in_every_run_and_costs_nothing_until_written() {
    let first = {
        let sim = Sim::new();
        let v = volume(&sim, FileSystem::Ntfs);
        sim.create_files(v, (0..1000).map(|i| (format!(r"\f{i}"), 1 << 20)));
        (sim.file_data(v, r"\f7"), sim.file_data(v, r"\f999"))
    };
    let sim = Sim::new();
    let v = volume(&sim, FileSystem::Ntfs);
    sim.create_files(v, (0..1000).map(|i| (format!(r"\f{i}"), 1 << 20)));
    assert_eq!(
        (sim.file_data(v, r"\f7"), sim.file_data(v, r"\f999")),
        first
    );
    assert_ne!(first.0, first.1, "each file its own bytes");
}

/// A filter whose post-create asks for the file's size and its normalized name, with what the
/// name query returned.
fn querying(statuses: Arc<std::sync::Mutex<Vec<NTSTATUS>>>) -> Config {
    Config {
        post: Some(Arc::new(move |data, objects, _, _| {
            // SAFETY: callback data from Filter Manager, valid for the callback.
            let data_ref = unsafe { &*data };
            // SAFETY: its parameter block.
            let major = unsafe { (*data_ref.Iopb).MajorFunction };
            // SAFETY: the final status, in the union's Status arm.
            let status = unsafe { data_ref.IoStatus.Anonymous.Status };
            if major != CREATE || status < 0 {
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            let mut buffer = [0_u64; 4];
            let mut returned = 0;
            // SAFETY: post-create at PASSIVE_LEVEL; an aligned buffer of 32 bytes.
            unsafe {
                FltQueryInformationFile(
                    objects.Instance,
                    objects.FileObject,
                    buffer.as_mut_ptr().cast(),
                    32,
                    FileStandardInformation,
                    &raw mut returned,
                );
            }
            let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
            // SAFETY: as above; a valid output variable.
            let named = unsafe {
                FltGetFileNameInformation(
                    data,
                    FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_DEFAULT,
                    &raw mut info,
                )
            };
            if named >= 0 {
                // SAFETY: the reference the query returned.
                unsafe { FltReleaseFileNameInformation(info) };
            }
            statuses.lock().unwrap().push(named);
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

#[test]
fn counters_show_the_queries_an_operation_caused_and_name_queries_can_be_failed() {
    let sim = Sim::new();
    let statuses = Arc::default();
    configure(querying(Arc::clone(&statuses)));
    let v = volume(&sim, FileSystem::Ntfs);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(v, r"\f", 10);
    sim.reset_counters(v);
    let mut h = sim.open(v, r"\f", OpenOptions::open()).unwrap();
    h.read(10, 0);
    assert_eq!(
        sim.counters(v),
        Counters {
            query_information: 1,
            name_queries: 1,
            ..Counters::default()
        }
    );
    drop(h);
    // Another file, whose name is not in Filter Manager's name cache: the query goes to the file
    // system, and the fault plan fails it.
    sim.create_file(v, r"\g", 10);
    set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(FILE_NAME_TAG),
    });
    drop(sim.open(v, r"\g", OpenOptions::open()).unwrap());
    set_fault_injection(FaultPlan::Off);
    assert_eq!(
        *statuses.lock().unwrap(),
        [STATUS_SUCCESS, STATUS_INSUFFICIENT_RESOURCES],
        "the fault plan fails the name query on demand"
    );
    assert_eq!(
        sim.counters(v).name_queries,
        2,
        "a failed query is counted too"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn counters_show_how_fast_io_fared() {
    let sim = Sim::new();
    configure(Config {
        pre: Some(Arc::new(|data, _, _| {
            // SAFETY: callback data from Filter Manager, valid for the callback.
            let data_ref = unsafe { &*data };
            // SAFETY: its parameter block.
            let iopb = unsafe { &*data_ref.Iopb };
            // SAFETY: a read's or write's parameters: the length is at the same place in both.
            let length = unsafe { iopb.Parameters.Read.Length };
            let flags = data_ref.Flags;
            if flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0 && length == 7 {
                FLT_PREOP_DISALLOW_FASTIO
            } else {
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            }
        })),
        ..Config::default()
    });
    let v = volume(&sim, FileSystem::Ntfs);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.create_file(v, r"\f", 100);
    let mut h = sim.open(v, r"\f", OpenOptions::open()).unwrap();
    assert!(h.fast_read(10, 0).reissued, "not cached yet: refused");
    assert!(!h.fast_read(10, 0).reissued, "cached: served");
    assert!(h.fast_read(7, 0).reissued, "disallowed by the filter");
    sim.set_fast_io(v, FastIo::Refused);
    assert!(h.fast_write(10, 0).reissued);
    let counters = sim.counters(v);
    assert_eq!(
        (
            counters.fast_io,
            counters.fast_io_refused,
            counters.fast_io_disallowed
        ),
        (1, 2, 1)
    );
    drop(h);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}
