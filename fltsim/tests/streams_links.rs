//! Alternate data streams and hard links in the simulated file systems, as a filter sees them:
//! names, IDs, sizes, stream contexts, `FileStreamInformation`, and the target-directory open that
//! precedes a rename or link to a full path.

mod common;

use std::ptr;
use std::sync::{Arc, Mutex};

use common::{CREATE, Config, allocate, configure, driver_entry};
use fltsim::{FileSystem, OpenOptions, Sim, Transfer, Volume, VolumeSpec};
use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_QUERY_DEFAULT,
    FLT_OPERATION_REGISTRATION, FLT_POSTOP_FINISHED_PROCESSING, FLT_SET_CONTEXT_KEEP_IF_EXISTS,
    FLT_STREAM_CONTEXT, FltGetFileNameInformation, FltQueryInformationFile, FltReleaseContext,
    FltReleaseFileNameInformation, FltSetStreamContext, PFLT_CONTEXT, PFLT_INSTANCE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION, FILE_OPEN_IF, FILE_STANDARD_INFORMATION,
    FileInternalInformation, FileStandardInformation, FileStreamInformation,
};
use windows_sys::Wdk::System::SystemServices::{IRP_MJ_SET_INFORMATION, SL_OPEN_TARGET_DIRECTORY};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_DELETE_PENDING, STATUS_FILE_IS_A_DIRECTORY,
    STATUS_FLT_CONTEXT_ALREADY_DEFINED, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_CREATED, FILE_DOES_NOT_EXIST, FILE_EXISTS, FILE_OPENED,
};

/// What the test filter learned in one post-create.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// `FileObject->FileName` as the post-create found it.
    file_name: String,
    /// `Iopb->OperationFlags`.
    operation_flags: u8,
    status: NTSTATUS,
    information: usize,
    /// `FileInternalInformation`.
    id: Option<u64>,
    /// `FileStandardInformation`: end of file, links, delete pending, directory.
    standard: Option<(i64, u32, bool, bool)>,
    /// The normalized name.
    name: Option<String>,
    /// The stream's context: the one this open set, or the one another open of the stream had set.
    context: usize,
    /// `FileStreamInformation`: status and stream names with sizes.
    streams: Option<(NTSTATUS, Vec<(String, i64)>)>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn text(s: &UNICODE_STRING) -> String {
    // SAFETY: a string of a live structure.
    unsafe { common::text(s) }
}

fn query<T: Copy>(
    instance: PFLT_INSTANCE,
    file: *const FILE_OBJECT,
    class: FILE_INFORMATION_CLASS,
) -> Option<T> {
    let mut buffer = vec![0_u64; 8];
    let mut returned = 0;
    // SAFETY: an aligned 64-byte buffer.
    let status = unsafe {
        FltQueryInformationFile(
            instance,
            file,
            buffer.as_mut_ptr().cast(),
            64,
            class,
            &raw mut returned,
        )
    };
    // SAFETY: the buffer holds a T when the query succeeded.
    (status == STATUS_SUCCESS).then(|| unsafe { buffer.as_ptr().cast::<T>().read() })
}

/// `FileStreamInformation`, parsed.
fn streams(instance: PFLT_INSTANCE, file: *const FILE_OBJECT) -> (NTSTATUS, Vec<(String, i64)>) {
    let mut buffer = vec![0_u64; 64];
    let mut returned = 0;
    // SAFETY: an aligned 512-byte buffer.
    let status = unsafe {
        FltQueryInformationFile(
            instance,
            file,
            buffer.as_mut_ptr().cast(),
            512,
            FileStreamInformation,
            &raw mut returned,
        )
    };
    let bytes: Vec<u8> = buffer.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut found = Vec::new();
    if status != STATUS_SUCCESS || returned == 0 {
        return (status, found);
    }
    let mut at = 0;
    loop {
        let word = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
        let next = word(0) as usize;
        let name_length = word(4) as usize;
        let size = i64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let units: Vec<u16> = bytes[at + 24..at + 24 + name_length]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        found.push((String::from_utf16_lossy(&units), size));
        if next == 0 {
            break;
        }
        at += next;
    }
    (status, found)
}

/// A filter that records, in every post-create, the file object's name, what the file system
/// says about it, its normalized name, and its stream context (setting one if it has none).
fn watcher(log: Log) -> Config {
    let mut operations = common::default_operations();
    operations.pop();
    let template = operations[1];
    operations.push(FLT_OPERATION_REGISTRATION {
        MajorFunction: u8::try_from(IRP_MJ_SET_INFORMATION).unwrap(),
        ..template
    });
    operations.push(common::end_operation());
    Config {
        operations: Some(common::Table(operations)),
        post: Some(Arc::new(move |data, objects, _, _| {
            // SAFETY: callback data from Filter Manager, valid for the callback.
            let data_ref = unsafe { &*data };
            // SAFETY: its parameter block.
            let iopb = unsafe { &*data_ref.Iopb };
            // SAFETY: the final status, in the union's Status arm.
            let status = unsafe { data_ref.IoStatus.Anonymous.Status };
            let information = data_ref.IoStatus.Information;
            if iopb.MajorFunction != CREATE {
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            // SAFETY: the create's file object, live in its post-create.
            let file_name = text(unsafe { &(*objects.FileObject).FileName });
            let mut seen = Seen {
                file_name,
                operation_flags: iopb.OperationFlags,
                status,
                information,
                ..Seen::default()
            };
            if status >= 0 {
                let (instance, file) = (objects.Instance, objects.FileObject);
                seen.id =
                    query::<FILE_INTERNAL_INFORMATION>(instance, file, FileInternalInformation)
                        .map(|i| i.IndexNumber.cast_unsigned());
                seen.standard =
                    query::<FILE_STANDARD_INFORMATION>(instance, file, FileStandardInformation)
                        .map(|s| (s.EndOfFile, s.NumberOfLinks, s.DeletePending, s.Directory));
                seen.streams = Some(streams(instance, file));
                let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
                // SAFETY: post-create at PASSIVE_LEVEL; a valid output variable.
                let named = unsafe {
                    FltGetFileNameInformation(
                        data,
                        FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_DEFAULT,
                        &raw mut info,
                    )
                };
                if named >= 0 {
                    // SAFETY: a live name information.
                    seen.name = Some(text(unsafe { &(*info).Name }));
                    // SAFETY: released once.
                    unsafe { FltReleaseFileNameInformation(info) };
                }
                let context = allocate(FLT_STREAM_CONTEXT).unwrap();
                let mut old: PFLT_CONTEXT = ptr::null_mut();
                // SAFETY: valid arguments in post-create; our reference on `context`.
                let set = unsafe {
                    FltSetStreamContext(
                        instance,
                        file,
                        FLT_SET_CONTEXT_KEEP_IF_EXISTS,
                        context,
                        &raw mut old,
                    )
                };
                seen.context = if set == STATUS_FLT_CONTEXT_ALREADY_DEFINED {
                    old
                } else {
                    context
                } as usize;
                if set == STATUS_FLT_CONTEXT_ALREADY_DEFINED {
                    // SAFETY: releases the reference the set returned on the old context.
                    unsafe { FltReleaseContext(old) };
                }
                // SAFETY: releases our reference (the link keeps its own).
                unsafe { FltReleaseContext(context) };
            }
            log.lock().unwrap().push(seen);
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

fn start(sim: &Sim, fs: FileSystem) -> (Volume, Log) {
    let log = Log::default();
    configure(watcher(Arc::clone(&log)));
    let volume = sim.add_volume(VolumeSpec::new(r"\Device\HarddiskVolume1", fs));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    (volume, log)
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

fn last(log: &Log) -> Seen {
    log.lock().unwrap().last().cloned().expect("a post-create")
}

#[test]
fn named_streams_are_opened_by_name_share_the_files_id_and_have_their_own_data_and_context() {
    for fs in [FileSystem::Ntfs, FileSystem::Refs] {
        let sim = Sim::new();
        let (volume, log) = start(&sim, fs);
        let id = sim.create_file(volume, r"\a.txt", 100);
        let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
        let on_file = last(&log);
        let mut stream = sim
            .open(volume, r"\a.txt:s", OpenOptions::create())
            .unwrap();
        assert_eq!(stream.create_information(), FILE_CREATED as usize, "{fs:?}");
        let on_stream = last(&log);
        assert_eq!(
            on_stream.id, on_file.id,
            "{fs:?}: a stream has its file's id"
        );
        assert_eq!(
            on_stream.id,
            Some(u64::try_from(id & u128::from(u64::MAX)).unwrap())
        );
        assert_ne!(
            on_stream.context, on_file.context,
            "{fs:?}: each stream its own context"
        );
        assert_eq!(
            on_stream.name.as_deref(),
            Some(r"\Device\HarddiskVolume1\a.txt:s"),
            "{fs:?}: the normalized name names the stream"
        );
        assert_eq!(
            stream.write_from(Transfer::Cached, 0, b"hello").status,
            STATUS_SUCCESS
        );
        assert_eq!(sim.file_size(volume, r"\a.txt:s"), Some(5));
        assert_eq!(
            sim.file_size(volume, r"\a.txt"),
            Some(100),
            "{fs:?}: the file is untouched"
        );
        let again = sim
            .open(volume, r"\a.txt:S:$DATA", OpenOptions::open())
            .unwrap();
        let on_again = last(&log);
        assert_eq!(again.create_information(), FILE_OPENED as usize);
        assert_eq!(
            on_again.context, on_stream.context,
            "{fs:?}: the same stream, the same context"
        );
        assert_eq!(
            on_again.standard,
            Some((5, 1, false, false)),
            "{fs:?}: the stream's size"
        );
        let mut buffer = [0; 8];
        let mut again = again;
        assert_eq!(
            again.read_into(Transfer::Fast, 0, &mut buffer).information,
            5
        );
        assert_eq!(&buffer[..5], b"hello");
        let default = sim
            .open(volume, r"\a.txt::$DATA", OpenOptions::open())
            .unwrap();
        assert_eq!(
            last(&log).context,
            on_file.context,
            "{fs:?}: ::$DATA is the unnamed stream"
        );
        let mut data = vec![0; 100];
        assert_eq!(
            file.read_into(Transfer::Cached, 0, &mut data).information,
            100
        );
        assert_eq!(Some(data), sim.file_data(volume, r"\a.txt"));
        assert_eq!(
            last(&log).streams,
            Some((
                STATUS_SUCCESS,
                vec![("::$DATA".to_owned(), 100), (":s:$DATA".to_owned(), 5)]
            )),
            "{fs:?}: FileStreamInformation lists both"
        );
        for (path, status) in [
            (r"\a.txt:missing", STATUS_OBJECT_NAME_NOT_FOUND),
            (r"\a.txt:s:$INDEX_ALLOCATION", STATUS_OBJECT_NAME_INVALID),
            (r"\a.txt:", STATUS_OBJECT_NAME_INVALID),
        ] {
            assert_eq!(
                sim.open(volume, path, OpenOptions::open()).err(),
                Some(status),
                "{path}"
            );
        }
        drop((file, stream, again, default));
        finish(&sim);
    }
}

#[test]
fn a_stream_created_with_its_file_or_deleted_alone_and_streams_of_directories() {
    for fs in [FileSystem::Ntfs, FileSystem::Refs] {
        let sim = Sim::new();
        let (volume, log) = start(&sim, fs);
        let mut made = sim
            .open(volume, r"\new.txt:s", OpenOptions::create())
            .unwrap();
        assert_eq!(made.create_information(), FILE_CREATED as usize);
        assert_eq!(
            sim.file_size(volume, r"\new.txt"),
            Some(0),
            "{fs:?}: the file made with it"
        );
        assert_eq!(made.delete().status, STATUS_SUCCESS);
        assert_eq!(
            sim.open(volume, r"\new.txt:s", OpenOptions::open()).err(),
            Some(STATUS_DELETE_PENDING)
        );
        drop(made);
        assert_eq!(
            sim.file_size(volume, r"\new.txt:s"),
            None,
            "{fs:?}: the stream went"
        );
        assert_eq!(
            sim.file_size(volume, r"\new.txt"),
            Some(0),
            "{fs:?}: its file stays"
        );
        sim.create_directory(volume, r"\dir");
        drop(
            sim.open(volume, r"\dir:tag", OpenOptions::disposition(FILE_OPEN_IF))
                .unwrap(),
        );
        assert_eq!(
            last(&log).standard,
            Some((0, 1, false, false)),
            "{fs:?}: a directory's named stream is a data stream"
        );
        finish(&sim);
    }
}

#[test]
fn fat_and_exfat_have_no_named_streams() {
    for fs in [FileSystem::Fat, FileSystem::ExFat] {
        let sim = Sim::new();
        let (volume, log) = start(&sim, fs);
        sim.create_file(volume, r"\a.txt", 10);
        assert_eq!(
            sim.open(volume, r"\a.txt:s", OpenOptions::create()).err(),
            Some(STATUS_OBJECT_NAME_INVALID),
            "{fs:?}"
        );
        drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
        assert_eq!(
            last(&log).streams.map(|s| s.0),
            Some(STATUS_INVALID_PARAMETER),
            "{fs:?}: no FileStreamInformation"
        );
        finish(&sim);
    }
}

#[test]
fn hard_links_are_several_names_of_one_file() {
    let sim = Sim::new();
    let (volume, log) = start(&sim, FileSystem::Ntfs);
    sim.create_directory(volume, r"\d");
    let id = sim.create_file_with_data(volume, r"\a", b"shared");
    sim.link(volume, r"\a", r"\d\b").unwrap();
    assert_eq!(sim.file_id(volume, r"\d\b"), Some(id));
    let mut b = sim.open(volume, r"\d\b", OpenOptions::open()).unwrap();
    let on_b = last(&log);
    assert_eq!(
        on_b.name.as_deref(),
        Some(r"\Device\HarddiskVolume1\d\b"),
        "the name opened by"
    );
    assert_eq!(on_b.standard, Some((6, 2, false, false)), "two links");
    assert_eq!(
        b.write_from(Transfer::Cached, 0, b"S").status,
        STATUS_SUCCESS
    );
    let a = sim.open(volume, r"\a", OpenOptions::open()).unwrap();
    let on_a = last(&log);
    assert_eq!(on_a.context, on_b.context, "one stream, one stream context");
    assert_eq!(on_a.name.as_deref(), Some(r"\Device\HarddiskVolume1\a"));
    assert_eq!(
        sim.file_data(volume, r"\a").as_deref(),
        Some(&b"Shared"[..])
    );
    assert_eq!(
        b.rename(r"\d\c", false).status,
        STATUS_SUCCESS,
        "renames the name b only"
    );
    assert_eq!(sim.file_id(volume, r"\d\c"), Some(id));
    assert_eq!(sim.file_id(volume, r"\a"), Some(id));
    assert_eq!(sim.file_id(volume, r"\d\b"), None);
    let mut a = a;
    assert_eq!(a.link(r"\d\c", false).status, STATUS_OBJECT_NAME_COLLISION);
    assert_eq!(a.delete().status, STATUS_SUCCESS);
    drop(a);
    assert_eq!(sim.file_id(volume, r"\a"), None, "the name a went");
    assert_eq!(
        sim.file_data(volume, r"\d\c").as_deref(),
        Some(&b"Shared"[..]),
        "the file stays"
    );
    drop(b);
    let mut dir = sim.open(volume, r"\d", OpenOptions::directory()).unwrap();
    assert_eq!(dir.link(r"\e", false).status, STATUS_FILE_IS_A_DIRECTORY);
    drop(dir);
    sim.create_file(volume, r"\busy", 1);
    let busy = sim.open(volume, r"\busy", OpenOptions::open()).unwrap();
    let mut c = sim.open(volume, r"\d\c", OpenOptions::open()).unwrap();
    assert_eq!(
        c.link(r"\busy", true).status,
        STATUS_ACCESS_DENIED,
        "a name in use stays"
    );
    drop(busy);
    assert_eq!(c.link(r"\busy", true).status, STATUS_SUCCESS, "replaced");
    assert_eq!(sim.file_id(volume, r"\busy"), Some(id));
    drop(c);
    sim.delete(volume, r"\d\c").unwrap();
    sim.delete(volume, r"\busy").unwrap();
    assert_eq!(sim.snapshot(volume).files.len(), 1, "only \\d is left");
    finish(&sim);
}

#[test]
fn only_ntfs_has_hard_links() {
    for fs in [FileSystem::Refs, FileSystem::Fat, FileSystem::ExFat] {
        let sim = Sim::new();
        let (volume, _) = start(&sim, fs);
        sim.create_file(volume, r"\a", 1);
        assert_eq!(
            sim.link(volume, r"\a", r"\b"),
            Err(STATUS_INVALID_DEVICE_REQUEST),
            "{fs:?}"
        );
        finish(&sim);
    }
}

#[test]
fn a_rename_to_a_full_path_opens_the_target_directory_first() {
    let sim = Sim::new();
    let (volume, log) = start(&sim, FileSystem::Ntfs);
    sim.create_directory(volume, r"\d");
    sim.create_file(volume, r"\a", 1);
    sim.create_file(volume, r"\d\taken", 1);
    let flag = u8::try_from(SL_OPEN_TARGET_DIRECTORY).unwrap();
    let mut file = sim.open(volume, r"\a", OpenOptions::open()).unwrap();
    log.lock().unwrap().clear();
    assert_eq!(file.rename(r"\d\b", false).status, STATUS_SUCCESS);
    let target = last(&log);
    assert_eq!(target.operation_flags, flag);
    assert_eq!(target.information, FILE_DOES_NOT_EXIST as usize);
    assert_eq!(
        target.file_name, "b",
        "the file system leaves the final component"
    );
    assert_eq!(
        target.name.as_deref(),
        Some(r"\Device\HarddiskVolume1\d"),
        "the file object is the directory's"
    );
    assert_eq!(
        target.standard.map(|s| s.3),
        Some(true),
        "the directory is what is open"
    );
    assert!(sim.file_id(volume, r"\d\b").is_some());
    assert_eq!(file.rename(r"\d\taken", true).status, STATUS_SUCCESS);
    assert_eq!(last(&log).information, FILE_EXISTS as usize);
    log.lock().unwrap().clear();
    assert_eq!(file.rename("bare", false).status, STATUS_SUCCESS);
    assert!(
        log.lock().unwrap().is_empty(),
        "a bare name: no target open"
    );
    assert!(
        sim.file_id(volume, r"\d\bare").is_some(),
        "renamed in its directory"
    );
    assert_eq!(
        file.rename(r"\missing\x", false).status,
        STATUS_OBJECT_PATH_NOT_FOUND
    );
    assert_eq!(
        last(&log).status,
        STATUS_OBJECT_PATH_NOT_FOUND,
        "the target open fails, and no rename is sent"
    );
    assert_eq!(
        file.rename(r"\x", false).status,
        STATUS_SUCCESS,
        "into the root"
    );
    drop(file);
    finish(&sim);
}
