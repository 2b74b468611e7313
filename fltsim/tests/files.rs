//! File queries, file names and volume information.

mod common;

use std::mem::size_of;
use std::ptr;
use std::sync::{Arc, Mutex};

use common::{CREATE, Config, READ, configure, driver_entry};
use fltsim::{FileSystem, OpenOptions, Sim, VolumeSpec};
use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_FILE_NAME_INFORMATION, FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED,
    FLT_FILE_NAME_QUERY_DEFAULT, FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_VOLUME_PROPERTIES,
    FltGetFileNameInformation, FltGetVolumeName, FltGetVolumeProperties, FltIsVolumeWritable,
    FltParseFileNameInformation, FltQueryInformationFile, FltReferenceFileNameInformation,
    FltReleaseFileNameInformation, PFLT_INSTANCE,
};
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_ID_INFORMATION, FILE_INFORMATION_CLASS, FILE_INTERNAL_INFORMATION,
    FILE_STANDARD_INFORMATION, FileBasicInformation, FileIdInformation, FileInternalInformation,
    FileStandardInformation,
};
use windows_sys::Wdk::System::SystemServices::{KeEnterCriticalRegion, KeLeaveCriticalRegion};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_FLT_INVALID_NAME_REQUEST,
    STATUS_INFO_LENGTH_MISMATCH, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, UNICODE_STRING,
};

fn load(sim: &Sim, config: Config) {
    configure(config);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
}

fn finish(sim: &Sim) {
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

/// Queries `class` into a `T`, with an 8-byte aligned buffer of `length` bytes.
fn query<T: Copy>(
    instance: PFLT_INSTANCE,
    file: *const FILE_OBJECT,
    class: FILE_INFORMATION_CLASS,
    length: usize,
) -> (NTSTATUS, Option<T>, u32) {
    let mut buffer = vec![0_u64; 8];
    let mut returned = 0_u32;
    // SAFETY: an aligned buffer of at least `length` bytes (64 available).
    let status = unsafe {
        FltQueryInformationFile(
            instance,
            file,
            buffer.as_mut_ptr().cast(),
            u32::try_from(length).unwrap(),
            class,
            &raw mut returned,
        )
    };
    // SAFETY: the buffer is aligned and large enough for T when the query succeeded.
    let value = (status == STATUS_SUCCESS).then(|| unsafe { buffer.as_ptr().cast::<T>().read() });
    (status, value, returned)
}

#[test]
fn queries_return_ids_sizes_and_directory_flags() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(&sim, Config::default());
    let id = sim.create_file(volume, r"\a.txt", 5000);
    let file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    let instance = sim.instance(volume).unwrap();
    let (status, internal, returned) = query::<FILE_INTERNAL_INFORMATION>(
        instance,
        file.file_object(),
        FileInternalInformation,
        8,
    );
    assert_eq!((status, returned), (STATUS_SUCCESS, 8));
    assert_eq!(
        u128::from(internal.unwrap().IndexNumber.cast_unsigned()),
        id
    );
    let (status, standard, _) = query::<FILE_STANDARD_INFORMATION>(
        instance,
        file.file_object(),
        FileStandardInformation,
        24,
    );
    assert_eq!(status, STATUS_SUCCESS);
    let standard = standard.unwrap();
    assert_eq!(
        (
            standard.EndOfFile,
            standard.AllocationSize,
            standard.Directory
        ),
        (5000, 8192, false)
    );
    let (status, ids, _) =
        query::<FILE_ID_INFORMATION>(instance, file.file_object(), FileIdInformation, 24);
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(u128::from_le_bytes(ids.unwrap().FileId.Identifier), id);
    assert_eq!(
        query::<FILE_INTERNAL_INFORMATION>(
            instance,
            file.file_object(),
            FileInternalInformation,
            4
        )
        .0,
        STATUS_INFO_LENGTH_MISMATCH
    );
    assert_eq!(
        query::<u64>(instance, file.file_object(), FileBasicInformation, 40).0,
        STATUS_INVALID_PARAMETER
    );
    sim.create_directory(volume, r"\d");
    let dir = sim.open(volume, r"\d", OpenOptions::directory()).unwrap();
    let (_, standard, _) = query::<FILE_STANDARD_INFORMATION>(
        instance,
        dir.file_object(),
        FileStandardInformation,
        24,
    );
    assert!(standard.unwrap().Directory);
    drop((file, dir));
    finish(&sim);
}

#[test]
fn fat_has_no_file_id_information_and_refs_ids_collide_in_64_bits() {
    let sim = Sim::new();
    let fat = sim.add_volume(VolumeSpec::new(r"\Device\HarddiskVolume2", FileSystem::Fat));
    let refs = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume3",
        FileSystem::Refs,
    ));
    load(&sim, Config::default());
    sim.create_file(fat, r"\a.txt", 1);
    let on_fat = sim.open(fat, r"\a.txt", OpenOptions::open()).unwrap();
    let fat_instance = sim.instance(fat).unwrap();
    assert_eq!(
        query::<FILE_ID_INFORMATION>(fat_instance, on_fat.file_object(), FileIdInformation, 24).0,
        STATUS_INVALID_PARAMETER
    );
    let low = 0x1234_u128;
    sim.create_file_with_id(refs, r"\x", 1, (1 << 64) | low);
    sim.create_file_with_id(refs, r"\y", 1, (2 << 64) | low);
    let instance = sim.instance(refs).unwrap();
    let x = sim.open(refs, r"\x", OpenOptions::open()).unwrap();
    let y = sim.open(refs, r"\y", OpenOptions::open()).unwrap();
    let internal = |f: &fltsim::FileHandle<'_>| {
        query::<FILE_INTERNAL_INFORMATION>(instance, f.file_object(), FileInternalInformation, 8)
            .1
            .unwrap()
            .IndexNumber
    };
    assert_eq!(internal(&x), internal(&y), "64-bit ids collide on ReFS");
    let full = |f: &fltsim::FileHandle<'_>| {
        u128::from_le_bytes(
            query::<FILE_ID_INFORMATION>(instance, f.file_object(), FileIdInformation, 24)
                .1
                .unwrap()
                .FileId
                .Identifier,
        )
    };
    assert_ne!(full(&x), full(&y), "128-bit ids do not");
    drop((on_fat, x, y));
    finish(&sim);
}

#[test]
fn renames_keep_the_file_id() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(&sim, Config::default());
    let id = sim.create_file(volume, r"\old.txt", 1);
    sim.rename(volume, r"\old.txt", r"\new.txt").unwrap();
    assert_eq!(sim.file_id(volume, r"\new.txt"), Some(id));
    assert_eq!(sim.file_id(volume, r"\old.txt"), None);
    assert!(sim.open(volume, r"\old.txt", OpenOptions::open()).is_err());
    drop(sim.open(volume, r"\new.txt", OpenOptions::open()).unwrap());
    finish(&sim);
}

#[test]
#[should_panic(
    expected = "fltsim: FltQueryInformationFile on a file object that is not open (in pre-create"
)]
fn querying_in_pre_create_is_a_violation() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(
        &sim,
        Config {
            pre: Some(Arc::new(|_, objects, _| {
                query::<FILE_INTERNAL_INFORMATION>(
                    objects.Instance,
                    objects.FileObject,
                    FileInternalInformation,
                    8,
                );
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 1);
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()));
}

#[test]
#[should_panic(
    expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltQueryInformationFile called at IRQL 2"
)]
fn querying_in_a_dispatch_level_post_op_is_a_violation() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(
        &sim,
        Config {
            post: Some(Arc::new(|_, objects, _, _| {
                query::<FILE_INTERNAL_INFORMATION>(
                    objects.Instance,
                    objects.FileObject,
                    FileInternalInformation,
                    8,
                );
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 1);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
}

#[test]
#[should_panic(
    expected = "fltsim: FltQueryInformationFile called with normal kernel APCs disabled"
)]
fn querying_with_a_push_lock_held_is_a_violation() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(
        &sim,
        Config {
            post: Some(Arc::new(|data, objects, _, _| {
                // SAFETY: callback data from Filter Manager.
                let (major, status) = unsafe {
                    (
                        (*(*data).Iopb).MajorFunction,
                        (*data).IoStatus.Anonymous.Status,
                    )
                };
                if major == CREATE && status >= 0 {
                    // SAFETY: balanced enter/leave around the query (as a push lock would be).
                    unsafe { KeEnterCriticalRegion() };
                    query::<FILE_INTERNAL_INFORMATION>(
                        objects.Instance,
                        objects.FileObject,
                        FileInternalInformation,
                        8,
                    );
                    // SAFETY: as above.
                    unsafe { KeLeaveCriticalRegion() };
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 1);
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()));
}

/// Names a post-create saw: (status, name, volume, final component, extension, parent dir).
type Names = Arc<Mutex<Vec<(NTSTATUS, String, String, String, String, String)>>>;

fn text(s: &UNICODE_STRING) -> String {
    // SAFETY: strings from a live FLT_FILE_NAME_INFORMATION.
    unsafe { common::text(s) }
}

fn name_filter(names: Names, format: u32, release: bool) -> Config {
    Config {
        post: Some(Arc::new(move |data, _, _, _| {
            // SAFETY: callback data from Filter Manager.
            if unsafe { (*(*data).Iopb).MajorFunction } != CREATE {
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
            // SAFETY: valid callback data and output variable, in post-create at PASSIVE_LEVEL.
            let status = unsafe {
                FltGetFileNameInformation(data, format | FLT_FILE_NAME_QUERY_DEFAULT, &raw mut info)
            };
            if status < 0 {
                names.lock().unwrap().push((
                    status,
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ));
                return FLT_POSTOP_FINISHED_PROCESSING;
            }
            // SAFETY: a live name information.
            unsafe { FltParseFileNameInformation(info) };
            // SAFETY: as above.
            let i = unsafe { &*info };
            names.lock().unwrap().push((
                status,
                text(&i.Name),
                text(&i.Volume),
                text(&i.FinalComponent),
                text(&i.Extension),
                text(&i.ParentDir),
            ));
            if release {
                // SAFETY: one reference taken, one more and two releases.
                unsafe {
                    FltReferenceFileNameInformation(info);
                    FltReleaseFileNameInformation(info);
                    FltReleaseFileNameInformation(info);
                }
            }
            FLT_POSTOP_FINISHED_PROCESSING
        })),
        ..Config::default()
    }
}

#[test]
fn normalized_and_opened_names() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    let names: Names = Arc::default();
    load(
        &sim,
        name_filter(Arc::clone(&names), FLT_FILE_NAME_NORMALIZED, true),
    );
    sim.create_directory(volume, r"\Dir");
    sim.create_file(volume, r"\Dir\File.TXT", 1);
    drop(
        sim.open(volume, r"\dir\file.txt", OpenOptions::open())
            .unwrap(),
    );
    drop(sim.open(volume, r"\dir\missing.txt", OpenOptions::open()));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    let seen = names.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (
            STATUS_SUCCESS,
            r"\Device\HarddiskVolume1\Dir\File.TXT".into(),
            r"\Device\HarddiskVolume1".into(),
            "File.TXT".into(),
            "TXT".into(),
            r"\Dir\".into()
        )
    );
    assert_eq!(
        seen[1].0, STATUS_FLT_INVALID_NAME_REQUEST,
        "no name after a failed create"
    );
    sim.verifier_report().assert_clean();

    let names: Names = Arc::default();
    load(
        &sim,
        name_filter(Arc::clone(&names), FLT_FILE_NAME_OPENED, true),
    );
    drop(
        sim.open(volume, r"\dir\file.txt", OpenOptions::open())
            .unwrap(),
    );
    assert_eq!(
        names.lock().unwrap()[0].1,
        r"\Device\HarddiskVolume1\dir\file.txt"
    );
    finish(&sim);
}

#[test]
fn unreleased_names_are_reported() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(
        &sim,
        name_filter(Arc::default(), FLT_FILE_NAME_NORMALIZED, false),
    );
    sim.create_file(volume, r"\a.txt", 1);
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert!(
        sim.verifier_report()
            .mentions("leaked file name information: 1 FLT_FILE_NAME_INFORMATION reference(s)")
    );
}

#[test]
fn names_in_paging_io_come_only_from_the_cache_and_bad_options_are_refused() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    let results = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&results);
    load(
        &sim,
        Config {
            pre: Some(Arc::new(move |data, _, _| {
                // SAFETY: callback data from Filter Manager.
                if unsafe { (*(*data).Iopb).MajorFunction } == READ {
                    for options in [
                        FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_DEFAULT,
                        FLT_FILE_NAME_NORMALIZED | FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY,
                        FLT_FILE_NAME_NORMALIZED,
                    ] {
                        let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
                        // SAFETY: valid callback data and output variable.
                        let status =
                            unsafe { FltGetFileNameInformation(data, options, &raw mut info) };
                        if status >= 0 {
                            // SAFETY: the reference just taken.
                            unsafe { FltReleaseFileNameInformation(info) };
                        }
                        log.lock().unwrap().push(status);
                    }
                }
                FLT_PREOP_SUCCESS_WITH_CALLBACK
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 4096);
    let mut file = sim.open(volume, r"\a.txt", OpenOptions::open()).unwrap();
    file.read(1, 0);
    file.read_paging(4096, 0);
    drop(file);
    assert_eq!(
        *results.lock().unwrap(),
        vec![
            STATUS_SUCCESS,
            STATUS_SUCCESS,
            STATUS_INVALID_PARAMETER,
            // Paging I/O: the name the cached read put in the cache, but no file-system query.
            STATUS_SUCCESS,
            STATUS_FLT_INVALID_NAME_REQUEST,
            STATUS_INVALID_PARAMETER
        ]
    );
    finish(&sim);
}

#[test]
#[should_panic(expected = "fltsim: FltReleaseFileNameInformation: 0x")]
fn releasing_a_name_twice_is_a_violation() {
    let sim = Sim::new();
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ));
    load(
        &sim,
        Config {
            post: Some(Arc::new(|data, _, _, _| {
                let mut info: *mut FLT_FILE_NAME_INFORMATION = ptr::null_mut();
                // SAFETY: valid callback data and output variable; then deliberately over-released.
                unsafe {
                    if FltGetFileNameInformation(
                        data,
                        FLT_FILE_NAME_OPENED | FLT_FILE_NAME_QUERY_DEFAULT,
                        &raw mut info,
                    ) >= 0
                    {
                        FltReleaseFileNameInformation(info);
                        FltReleaseFileNameInformation(info);
                    }
                }
                FLT_POSTOP_FINISHED_PROCESSING
            })),
            ..Config::default()
        },
    );
    sim.create_file(volume, r"\a.txt", 1);
    drop(sim.open(volume, r"\a.txt", OpenOptions::open()));
}

#[test]
fn volume_name_properties_and_writability_in_instance_setup() {
    let sim = Sim::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume4",
        FileSystem::Ntfs,
    ));
    sim.add_volume(VolumeSpec::new(r"\Device\CdRom0", FileSystem::Cdfs));
    load(
        &sim,
        Config {
            setup: Some(Arc::new(move |objects, _| {
                let mut needed = 0_u32;
                // SAFETY: size query with no buffer.
                let first =
                    unsafe { FltGetVolumeName(objects.Volume, ptr::null_mut(), &raw mut needed) };
                let mut buffer = vec![0_u16; usize::try_from(needed).unwrap() / 2];
                let mut name = UNICODE_STRING {
                    Length: 0,
                    MaximumLength: u16::try_from(needed).unwrap(),
                    Buffer: buffer.as_mut_ptr(),
                };
                // SAFETY: a buffer of `needed` bytes.
                let second =
                    unsafe { FltGetVolumeName(objects.Volume, &raw mut name, ptr::null_mut()) };
                let mut writable = false;
                // SAFETY: valid instance and output variable.
                unsafe { FltIsVolumeWritable(objects.Instance as *const _, &raw mut writable) };
                let mut properties = vec![0_u64; 64];
                let mut returned = 0_u32;
                let small = u32::try_from(size_of::<FLT_VOLUME_PROPERTIES>()).unwrap();
                // SAFETY: an aligned buffer of 512 bytes.
                let (fixed, full) = unsafe {
                    let p = properties.as_mut_ptr().cast::<FLT_VOLUME_PROPERTIES>();
                    let tiny = FltGetVolumeProperties(objects.Volume, p, 8, &raw mut returned);
                    let fixed = FltGetVolumeProperties(objects.Volume, p, small, &raw mut returned);
                    let full = FltGetVolumeProperties(objects.Volume, p, 512, &raw mut returned);
                    (
                        (tiny, fixed),
                        (full, text(&(*p).FileSystemDriverName), (*p).DeviceType),
                    )
                };
                log.lock()
                    .unwrap()
                    .push((first, second, text(&name), writable, fixed, full));
                STATUS_SUCCESS
            })),
            ..Config::default()
        },
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, STATUS_BUFFER_TOO_SMALL);
    assert_eq!(seen[0].1, STATUS_SUCCESS);
    assert_eq!(seen[0].2, r"\Device\HarddiskVolume4");
    assert!(seen[0].3);
    assert_eq!(seen[0].4, (STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW));
    assert_eq!(seen[0].5, (STATUS_SUCCESS, r"\FileSystem\Ntfs".into(), 8));
    assert_eq!(seen[1].2, r"\Device\CdRom0");
    assert!(!seen[1].3, "CDFS is read-only");
    finish(&sim);
}

#[test]
#[should_panic(expected = "fltsim: invalid handle: FltGetVolumeName got volume 0x10")]
fn an_unknown_volume_is_a_violation() {
    let sim = Sim::new();
    load(&sim, Config::default());
    let mut needed = 0;
    // SAFETY: deliberately broken: a volume handle the simulator never gave out.
    unsafe { FltGetVolumeName(0x10, ptr::null_mut(), &raw mut needed) };
    sim.check();
}
