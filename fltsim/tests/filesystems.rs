//! The simulated file systems as such: fast I/O refused and reissued, byte-range locks, MDL
//! transfers, file IDs per file system, create dispositions, renames and deletes through the filter.

mod common;

use std::sync::{Arc, Mutex};

use common::{CREATE, Config, Table, configure, default_operations, driver_entry, end_operation};
use fltsim::{FastIo, FileIdAnswer, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_OPERATION_REGISTRATION, FLT_PREOP_SUCCESS_WITH_CALLBACK,
    FLTFL_CALLBACK_DATA_FAST_IO_OPERATION, IRP_MJ_MDL_READ, IRP_MJ_MDL_READ_COMPLETE,
    IRP_MJ_MDL_WRITE_COMPLETE, IRP_MJ_PREPARE_MDL_WRITE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_OPEN, FILE_OPEN_IF, FILE_OVERWRITE, FILE_OVERWRITE_IF, FILE_SUPERSEDE,
    FileRenameInformation,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_SET_INFORMATION, IRP_MN_MDL};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_DELETE_PENDING, STATUS_DIRECTORY_NOT_EMPTY, STATUS_FILE_LOCK_CONFLICT,
    STATUS_FLT_DISALLOW_FAST_IO, STATUS_LOCK_NOT_GRANTED, STATUS_OBJECT_NAME_COLLISION,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_RANGE_NOT_LOCKED, STATUS_SUCCESS,
};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_CREATED, FILE_OPENED, FILE_OVERWRITTEN, FILE_SUPERSEDED,
};

/// What the test filter saw of one operation: major, minor, fast I/O, post-op status (pre: None).
type Seen = (u8, u8, bool, Option<NTSTATUS>);

fn byte(code: u16) -> u8 {
    code.to_le_bytes()[0]
}

/// Loads the test filter on one volume of `fs`, registered for every transfer operation; returns
/// the volume and what the filter sees.
fn start(sim: &Sim, fs: FileSystem) -> (Volume, Arc<Mutex<Vec<Seen>>>) {
    start_on(sim, VolumeSpec::new(r"\Device\HarddiskVolume1", fs))
}

fn start_on(sim: &Sim, spec: VolumeSpec) -> (Volume, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut operations = default_operations();
    operations.pop();
    let template = operations[1];
    for code in [
        IRP_MJ_MDL_READ,
        IRP_MJ_MDL_READ_COMPLETE,
        IRP_MJ_PREPARE_MDL_WRITE,
        IRP_MJ_MDL_WRITE_COMPLETE,
    ] {
        operations.push(FLT_OPERATION_REGISTRATION {
            MajorFunction: byte(code),
            ..template
        });
    }
    operations.push(FLT_OPERATION_REGISTRATION {
        MajorFunction: u8::try_from(IRP_MJ_SET_INFORMATION).unwrap(),
        ..template
    });
    operations.push(end_operation());
    let (pre_seen, post_seen) = (Arc::clone(&seen), Arc::clone(&seen));
    configure(Config {
        operations: Some(Table(operations)),
        pre: Some(Arc::new(move |data, _, _| {
            // SAFETY: callback data from Filter Manager.
            let (iopb, flags) = unsafe { (&*(*data).Iopb, (*data).Flags) };
            let fast = flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0;
            pre_seen
                .lock()
                .unwrap()
                .push((iopb.MajorFunction, iopb.MinorFunction, fast, None));
            FLT_PREOP_SUCCESS_WITH_CALLBACK
        })),
        post: Some(Arc::new(move |data, _, _, _| {
            // SAFETY: callback data from Filter Manager.
            let (iopb, flags, status) = unsafe {
                (
                    &*(*data).Iopb,
                    (*data).Flags,
                    (*data).IoStatus.Anonymous.Status,
                )
            };
            let fast = flags & FLTFL_CALLBACK_DATA_FAST_IO_OPERATION != 0;
            post_seen.lock().unwrap().push((
                iopb.MajorFunction,
                iopb.MinorFunction,
                fast,
                Some(status),
            ));
            windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    });
    let volume = sim.add_volume(spec);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    (volume, seen)
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

/// Takes what the filter saw of transfers (creates, cleanups and closes left out).
fn transfers(seen: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    let mut seen = seen.lock().unwrap();
    let all = std::mem::take(&mut *seen);
    all.into_iter()
        .filter(|s| s.0 != CREATE && s.0 != common::CLEANUP && s.0 != common::CLOSE)
        .collect()
}

const READ: u8 = common::READ;
const WRITE: u8 = common::WRITE;

#[test]
fn fast_io_on_a_file_object_not_cached_yet_is_refused_and_reissued_as_an_irp() {
    let sim = Sim::new();
    let (volume, seen) = start(&sim, FileSystem::Ntfs);
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    assert_eq!(file.fast_read(10, 0).information, 10);
    assert_eq!(
        transfers(&seen),
        vec![
            (READ, 0, true, None),
            (READ, 0, true, Some(STATUS_FLT_DISALLOW_FAST_IO)),
            (READ, 0, false, None),
            (READ, 0, false, Some(STATUS_SUCCESS)),
        ],
        "refused fast read, then the IRP (which caches the file object)"
    );
    assert!(!file.file_object().is_null());
    assert_eq!(file.fast_write(5, 100).information, 5);
    assert_eq!(
        transfers(&seen),
        vec![
            (WRITE, 0, true, None),
            (WRITE, 0, true, Some(STATUS_SUCCESS))
        ],
        "cached now: the fast path takes it"
    );
    assert_eq!(sim.file_size(volume, r"\a.txt"), Some(105));
    drop(file);
    finish(&sim);
}

#[test]
fn a_conflicting_byte_range_lock_refuses_fast_io_and_fails_the_irp() {
    let sim = Sim::new();
    let (volume, seen) = start(&sim, FileSystem::Ntfs);
    sim.create_file(volume, r"\a.txt", 100);
    let mut owner = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let mut other = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    other.read(1, 0); // caches `other`
    assert_eq!(owner.lock(0, 50, true).status, STATUS_SUCCESS);
    assert_eq!(other.lock(10, 1, false).status, STATUS_LOCK_NOT_GRANTED);
    transfers(&seen);
    let refused = other.fast_read(10, 20);
    assert_eq!(refused.status, STATUS_FILE_LOCK_CONFLICT);
    assert_eq!(
        transfers(&seen),
        vec![
            (READ, 0, true, None),
            (READ, 0, true, Some(STATUS_FLT_DISALLOW_FAST_IO)),
            (READ, 0, false, None),
            (READ, 0, false, Some(STATUS_FILE_LOCK_CONFLICT)),
        ]
    );
    assert_eq!(other.fast_read(10, 60).information, 10, "outside the lock");
    assert_eq!(
        owner.read(10, 20).information,
        10,
        "the owner reads its range"
    );
    assert_eq!(other.unlock(0, 50).status, STATUS_RANGE_NOT_LOCKED);
    assert_eq!(owner.unlock(0, 50).status, STATUS_SUCCESS);
    assert_eq!(other.fast_read(10, 20).information, 10);
    assert_eq!(owner.lock(0, 50, false).status, STATUS_SUCCESS);
    assert_eq!(other.fast_write(1, 0).status, STATUS_FILE_LOCK_CONFLICT);
    assert_eq!(
        other.fast_read(1, 0).information,
        1,
        "a shared lock lets others read"
    );
    drop(owner); // cleanup drops its locks
    assert_eq!(other.fast_write(1, 0).status, STATUS_SUCCESS);
    drop(other);
    finish(&sim);
}

#[test]
fn refused_and_seeded_fast_io_policies() {
    let sim = Sim::new();
    let (volume, seen) = start(&sim, FileSystem::Ntfs);
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    sim.set_fast_io(volume, FastIo::Refused);
    transfers(&seen);
    for _ in 0..3 {
        assert_eq!(file.fast_read(1, 0).information, 1);
    }
    let irps = transfers(&seen).iter().filter(|s| !s.2).count();
    assert_eq!(irps, 6, "every fast read reissued: pre and post of 3 IRPs");
    let mut runs = Vec::new();
    for _ in 0..2 {
        sim.set_fast_io(
            volume,
            FastIo::Seeded {
                seed: 42,
                one_in: 3,
            },
        );
        for _ in 0..60 {
            file.fast_read(1, 0);
        }
        runs.push(transfers(&seen));
    }
    let refusals = runs[0]
        .iter()
        .filter(|s| s.3 == Some(STATUS_FLT_DISALLOW_FAST_IO))
        .count();
    assert!((5..=40).contains(&refusals), "{refusals} of 60 refused");
    assert_eq!(
        runs[0], runs[1],
        "the same seed refuses the same operations"
    );
    drop(file);
    finish(&sim);
}

#[test]
fn mdl_reads_and_writes_go_fast_once_cached_and_as_irp_mdl_before() {
    let sim = Sim::new();
    let (volume, seen) = start(&sim, FileSystem::Ntfs);
    sim.create_file(volume, r"\a.txt", 100);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let mdl = u8::try_from(IRP_MN_MDL).unwrap();
    let complete_mdl = mdl | 4;
    assert_eq!(file.mdl_read(50, 0).information, 50);
    assert_eq!(
        transfers(&seen),
        vec![
            (byte(IRP_MJ_MDL_READ), 0, true, None),
            (
                byte(IRP_MJ_MDL_READ),
                0,
                true,
                Some(STATUS_FLT_DISALLOW_FAST_IO)
            ),
            (READ, mdl, false, None),
            (READ, mdl, false, Some(STATUS_SUCCESS)),
            (READ, complete_mdl, false, None),
            (READ, complete_mdl, false, Some(STATUS_SUCCESS)),
        ]
    );
    assert_eq!(file.mdl_read(50, 50).information, 50);
    assert_eq!(file.mdl_write(8, 100).information, 8);
    assert_eq!(
        transfers(&seen),
        vec![
            (byte(IRP_MJ_MDL_READ), 0, true, None),
            (byte(IRP_MJ_MDL_READ), 0, true, Some(STATUS_SUCCESS)),
            (byte(IRP_MJ_MDL_READ_COMPLETE), 0, true, None),
            (
                byte(IRP_MJ_MDL_READ_COMPLETE),
                0,
                true,
                Some(STATUS_SUCCESS)
            ),
            (byte(IRP_MJ_PREPARE_MDL_WRITE), 0, true, None),
            (
                byte(IRP_MJ_PREPARE_MDL_WRITE),
                0,
                true,
                Some(STATUS_SUCCESS)
            ),
            (byte(IRP_MJ_MDL_WRITE_COMPLETE), 0, true, None),
            (
                byte(IRP_MJ_MDL_WRITE_COMPLETE),
                0,
                true,
                Some(STATUS_SUCCESS)
            ),
        ]
    );
    assert_eq!(sim.file_size(volume, r"\a.txt"), Some(108));
    drop(file);
    finish(&sim);
}

#[test]
fn fat_ids_are_directory_entry_positions_changed_by_moves_and_reused() {
    for fs in [FileSystem::Fat, FileSystem::ExFat] {
        let sim = Sim::new();
        let (volume, _) = start(&sim, fs);
        sim.create_directory(volume, r"\d");
        let a = sim.create_file(volume, r"\a", 0);
        let b = sim.create_file(volume, r"\b", 0);
        assert_eq!(b - a, 32, "{fs:?}: consecutive 32-byte entries");
        sim.rename(volume, r"\a", r"\d\a").unwrap();
        let moved = sim.file_id(volume, r"\d\a").unwrap();
        assert_ne!(moved, a, "{fs:?}: a move changes the id");
        let c = sim.create_file(volume, r"\c", 0);
        assert_eq!(
            c, a,
            "{fs:?}: the next file takes the freed entry, and its id"
        );
        sim.delete(volume, r"\b").unwrap();
        assert_eq!(sim.file_id(volume, r"\b"), None);
        let e = sim.open(volume, r"\e", OpenOptions::create()).unwrap();
        drop(e);
        assert_eq!(
            sim.file_id(volume, r"\e"),
            Some(b),
            "{fs:?}: a deleted file's id comes back"
        );
        finish(&sim);
    }
}

#[test]
fn ntfs_records_are_reused_with_a_new_sequence_number_and_refs_ids_never() {
    let sim = Sim::new();
    let (volume, _) = start(&sim, FileSystem::Ntfs);
    let old = sim.create_file(volume, r"\old", 0);
    sim.delete(volume, r"\old").unwrap();
    let new = sim.create_file(volume, r"\new", 0);
    assert_ne!(new, old);
    assert_eq!(
        new & 0xFFFF_FFFF_FFFF,
        old & 0xFFFF_FFFF_FFFF,
        "same MFT record"
    );
    assert_eq!((new >> 48) - (old >> 48), 1, "next sequence number");
    sim.rename(volume, r"\new", r"\renamed").unwrap();
    assert_eq!(
        sim.file_id(volume, r"\renamed"),
        Some(new),
        "renames keep NTFS ids"
    );
    finish(&sim);
    drop(sim);

    let sim = Sim::new();
    let (volume, _) = start(&sim, FileSystem::Refs);
    let one = sim.create_file(volume, r"\one", 0);
    sim.create_directory(volume, r"\d");
    let two = sim.create_file(volume, r"\d\two", 0);
    assert_eq!(
        one & u128::from(u64::MAX),
        two & u128::from(u64::MAX),
        "ReFS ids can share their low 64 bits"
    );
    assert_ne!(one, two);
    sim.delete(volume, r"\one").unwrap();
    let three = sim.create_file(volume, r"\three", 0);
    assert_ne!(three, one, "never reused");
    sim.rename(volume, r"\d\two", r"\two").unwrap();
    assert_eq!(
        sim.file_id(volume, r"\two"),
        Some(two),
        "moves keep ReFS ids"
    );
    finish(&sim);
}

#[test]
fn file_id_information_can_answer_zero_or_all_ones() {
    use std::mem::size_of;
    use windows_sys::Wdk::Storage::FileSystem::Minifilters::FltQueryInformationFile;
    use windows_sys::Wdk::Storage::FileSystem::{FILE_ID_INFORMATION, FileIdInformation};
    for (answer, expected) in [(FileIdAnswer::Zero, 0), (FileIdAnswer::AllOnes, u128::MAX)] {
        let sim = Sim::new();
        let (volume, _) = start_on(
            &sim,
            VolumeSpec::new(r"\Device\HarddiskVolume1", FileSystem::Ntfs)
                .file_id_information(answer),
        );
        sim.create_file(volume, r"\a", 0);
        let file = sim.open(volume, r"\a", OpenOptions::open()).unwrap();
        let mut info = FILE_ID_INFORMATION::default();
        let mut returned = 0;
        // SAFETY: an aligned FILE_ID_INFORMATION buffer and an open file object of this instance.
        let status = unsafe {
            FltQueryInformationFile(
                sim.instance(volume).unwrap(),
                file.file_object(),
                (&raw mut info).cast(),
                u32::try_from(size_of::<FILE_ID_INFORMATION>()).unwrap(),
                FileIdInformation,
                &raw mut returned,
            )
        };
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(u128::from_le_bytes(info.FileId.Identifier), expected);
        drop(file);
        finish(&sim);
    }
}

#[test]
fn create_dispositions_say_what_happened() {
    let sim = Sim::new();
    let (volume, _) = start(&sim, FileSystem::Ntfs);
    sim.create_file(volume, r"\a", 10);
    let information = |path: &str, disposition: u32| {
        sim.open(volume, path, OpenOptions::disposition(disposition))
            .map(|h| h.create_information())
    };
    assert_eq!(information(r"\a", FILE_OPEN), Ok(FILE_OPENED as usize));
    assert_eq!(
        information(r"\b", FILE_OPEN),
        Err(STATUS_OBJECT_NAME_NOT_FOUND)
    );
    assert_eq!(
        information(r"\a", FILE_CREATE),
        Err(STATUS_OBJECT_NAME_COLLISION)
    );
    assert_eq!(information(r"\b", FILE_CREATE), Ok(FILE_CREATED as usize));
    assert_eq!(information(r"\c", FILE_OPEN_IF), Ok(FILE_CREATED as usize));
    assert_eq!(information(r"\c", FILE_OPEN_IF), Ok(FILE_OPENED as usize));
    assert_eq!(
        information(r"\a", FILE_OVERWRITE),
        Ok(FILE_OVERWRITTEN as usize)
    );
    assert_eq!(
        sim.file_size(volume, r"\a"),
        Some(0),
        "overwritten: truncated"
    );
    assert_eq!(
        information(r"\d", FILE_OVERWRITE),
        Err(STATUS_OBJECT_NAME_NOT_FOUND)
    );
    assert_eq!(
        information(r"\d", FILE_OVERWRITE_IF),
        Ok(FILE_CREATED as usize)
    );
    assert_eq!(
        information(r"\d", FILE_OVERWRITE_IF),
        Ok(FILE_OVERWRITTEN as usize)
    );
    assert_eq!(
        information(r"\a", FILE_SUPERSEDE),
        Ok(FILE_SUPERSEDED as usize)
    );
    assert_eq!(
        information(r"\e", FILE_SUPERSEDE),
        Ok(FILE_CREATED as usize)
    );
    finish(&sim);
}

#[test]
fn renames_and_deletes_go_through_the_filter_as_set_information() {
    let sim = Sim::new();
    let (volume, seen) = start(&sim, FileSystem::Ntfs);
    sim.create_directory(volume, r"\d");
    sim.create_file(volume, r"\d\f", 1);
    sim.create_file(volume, r"\g", 1);
    seen.lock().unwrap().clear();
    sim.rename(volume, r"\d", r"\e").unwrap();
    assert_eq!(
        sim.file_size(volume, r"\e\f"),
        Some(1),
        "a directory's contents move with it"
    );
    assert_eq!(sim.file_id(volume, r"\d\f"), None);
    let set_information = u8::try_from(IRP_MJ_SET_INFORMATION).unwrap();
    assert_eq!(
        transfers(&seen),
        vec![
            (set_information, 0, false, None),
            (set_information, 0, false, Some(STATUS_SUCCESS))
        ]
    );
    assert_eq!(
        sim.rename(volume, r"\g", r"\e\f"),
        Err(STATUS_OBJECT_NAME_COLLISION)
    );
    let mut g = sim.open(volume, r"\g", OpenOptions::open()).unwrap();
    assert_eq!(
        g.rename(r"\e\f", true).status,
        STATUS_SUCCESS,
        "replace if exists"
    );
    drop(g);
    assert_eq!(sim.delete(volume, r"\e"), Err(STATUS_DIRECTORY_NOT_EMPTY));
    let mut held = sim.open(volume, r"\e\f", OpenOptions::open()).unwrap();
    sim.delete(volume, r"\e\f").unwrap();
    assert_eq!(
        sim.open(volume, r"\e\f", OpenOptions::open()).err(),
        Some(STATUS_DELETE_PENDING),
        "the name stays until the last handle closes"
    );
    assert_eq!(held.read(1, 0).information, 1);
    drop(held);
    assert_eq!(sim.file_id(volume, r"\e\f"), None);
    assert_eq!(
        FileRenameInformation, 10,
        "the class the rename carries (checked by the driver tests)"
    );
    finish(&sim);
}
