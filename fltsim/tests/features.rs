//! The volume feature rule (a volume keeps ODX and BypassIO only if every attached minifilter
//! declares them), `FSCTL_MANAGE_BYPASS_IO` through the filter, reads on a BypassIO handle, and DAX
//! volumes.

mod common;

use std::sync::Arc;

use common::{
    Config, Event, SERVICE, Table, configure, default_operations, driver_entry, end_operation,
    events,
};
use fltsim::registry::{self, Value};
use fltsim::service::filter_settings_key;
use fltsim::{FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME;
use windows_sys::Wdk::Storage::FileSystem::{
    SUPPORTED_FS_FEATURES_BYPASS_IO, SUPPORTED_FS_FEATURES_OFFLOAD_READ,
    SUPPORTED_FS_FEATURES_OFFLOAD_WRITE,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_CREATE, IRP_MJ_FILE_SYSTEM_CONTROL, IRP_MJ_READ,
};
use windows_sys::Win32::Foundation::{
    STATUS_BYPASSIO_FLT_NOT_SUPPORTED, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_NO_BYPASSIO_DRIVER_SUPPORT, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};
use windows_sys::Win32::System::Ioctl::{FS_BPIO_OP_DISABLE, FS_BPIO_OP_ENABLE, FS_BPIO_OP_QUERY};

const ODX: u32 = SUPPORTED_FS_FEATURES_OFFLOAD_READ | SUPPORTED_FS_FEATURES_OFFLOAD_WRITE;
const ALL: u32 = ODX | SUPPORTED_FS_FEATURES_BYPASS_IO;

fn ntfs(sim: &Sim) -> Volume {
    sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume1",
        FileSystem::Ntfs,
    ))
}

/// Configures the test filter, declaring `features` (`None`: no `SupportedFeatures` value).
fn declare(config: Config, features: Option<u32>) {
    configure(config);
    if let Some(features) = features {
        registry::set_value(
            &filter_settings_key(SERVICE),
            "SupportedFeatures",
            Value::Dword(features),
        );
    }
}

/// Pre-ops the test filter saw for `major`.
fn pre_ops(major: u32) -> usize {
    events()
        .iter()
        .filter(|e| matches!(e, Event::Pre { major: m, .. } if u32::from(*m) == major))
        .count()
}

#[test]
fn a_filter_declaring_nothing_turns_odx_and_bypass_io_off() {
    let sim = Sim::new();
    declare(Config::default(), None);
    let c = ntfs(&sim);
    assert_eq!(
        sim.volume_features(c),
        ALL,
        "what NTFS offers, no filter attached"
    );
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.volume_features(c), 0);
    assert_eq!(sim.detach(c), STATUS_SUCCESS);
    assert_eq!(
        sim.volume_features(c),
        ALL,
        "detached: the volume gets them back"
    );
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn a_volume_keeps_what_every_attached_filter_declares() {
    for (declared, kept) in [
        (ODX, ODX),
        (ALL, ALL),
        (
            SUPPORTED_FS_FEATURES_BYPASS_IO,
            SUPPORTED_FS_FEATURES_BYPASS_IO,
        ),
    ] {
        let sim = Sim::new();
        declare(Config::default(), Some(declared));
        let c = ntfs(&sim);
        let r = sim.add_volume(VolumeSpec::new(
            r"\Device\HarddiskVolume2",
            FileSystem::Refs,
        ));
        assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
        assert_eq!(sim.volume_features(c), kept, "declared {declared:#x}");
        assert_eq!(
            sim.volume_features(r),
            kept & ODX,
            "ReFS offers no BypassIO"
        );
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
    }
}

#[test]
fn a_filter_without_read_or_write_callbacks_keeps_bypass_io() {
    let sim = Sim::new();
    let mut operations = default_operations();
    operations.retain(|op| u32::from(op.MajorFunction) == IRP_MJ_CREATE);
    operations.push(end_operation());
    declare(
        Config {
            operations: Some(Table(operations)),
            ..Config::default()
        },
        None,
    );
    let c = ntfs(&sim);
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.volume_features(c), SUPPORTED_FS_FEATURES_BYPASS_IO);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn bypass_io_reads_skip_the_filter_only_while_the_volume_keeps_it() {
    let sim = Sim::new();
    declare(Config::default(), Some(ALL));
    let c = ntfs(&sim);
    sim.create_file(c, r"\game.pak", 1 << 20);
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    let mut file = sim.open(c, r"\game.pak", OpenOptions::open()).unwrap();
    let (status, results) = file.bypass_io(FS_BPIO_OP_ENABLE);
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(results.unwrap().OpStatus, 0);
    assert_eq!(
        pre_ops(IRP_MJ_FILE_SYSTEM_CONTROL),
        0,
        "the default test filter has none"
    );
    let before = pre_ops(IRP_MJ_READ);
    assert_eq!(file.read_noncached(4096, 0).status, STATUS_SUCCESS);
    assert_eq!(
        pre_ops(IRP_MJ_READ),
        before,
        "a BypassIO read skips the filter"
    );
    assert_eq!(file.read(4096, 0).status, STATUS_SUCCESS);
    assert_eq!(
        pre_ops(IRP_MJ_READ),
        before + 1,
        "cached reads take the normal path"
    );
    let mut other = sim.open(c, r"\game.pak", OpenOptions::open()).unwrap();
    assert_eq!(other.read_noncached(4096, 0).status, STATUS_SUCCESS);
    assert_eq!(pre_ops(IRP_MJ_READ), before + 2, "BypassIO is per handle");
    assert_eq!(file.bypass_io(FS_BPIO_OP_DISABLE).0, STATUS_SUCCESS);
    assert_eq!(file.read_noncached(4096, 0).status, STATUS_SUCCESS);
    assert_eq!(pre_ops(IRP_MJ_READ), before + 3, "disabled again");
    drop((file, other));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn bypass_io_is_refused_where_a_filter_or_the_volume_cannot_have_it() {
    let sim = Sim::new();
    declare(Config::default(), Some(ODX));
    let c = ntfs(&sim);
    let sata = sim.add_volume(
        VolumeSpec::new(r"\Device\HarddiskVolume2", FileSystem::Ntfs).with_features(ODX),
    );
    for volume in [c, sata] {
        sim.create_file(volume, r"\a.bin", 4096);
        sim.create_directory(volume, r"\dir");
    }
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    let mut file = sim.open(c, r"\a.bin", OpenOptions::open()).unwrap();
    let (status, results) = file.bypass_io(FS_BPIO_OP_ENABLE);
    assert_eq!(
        status, STATUS_SUCCESS,
        "the request succeeds; the operation is refused"
    );
    let results = results.unwrap();
    assert_eq!(
        results.OpStatus,
        STATUS_BYPASSIO_FLT_NOT_SUPPORTED.cast_unsigned()
    );
    let name = String::from_utf16_lossy(
        &results.FailingDriverName[..usize::from(results.FailingDriverNameLen / 2)],
    );
    assert_eq!(name, "testflt.sys", "the failing driver is named");
    let before = pre_ops(IRP_MJ_READ);
    file.read_noncached(4096, 0);
    assert_eq!(
        pre_ops(IRP_MJ_READ),
        before + 1,
        "not enabled: the filter sees the read"
    );
    drop(file);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);

    declare(Config::default(), Some(ALL));
    assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
    let mut on_sata = sim.open(sata, r"\a.bin", OpenOptions::open()).unwrap();
    let query = on_sata.bypass_io(FS_BPIO_OP_QUERY).1.unwrap();
    assert_eq!(
        query.OpStatus,
        STATUS_NO_BYPASSIO_DRIVER_SUPPORT.cast_unsigned()
    );
    let mut dir = sim.open(c, r"\dir", OpenOptions::directory()).unwrap();
    let on_dir = dir.bypass_io(FS_BPIO_OP_ENABLE).1.unwrap();
    assert_eq!(on_dir.OpStatus, STATUS_NOT_SUPPORTED.cast_unsigned());
    assert_eq!(
        dir.fs_control(0x0009_0000, &[], &mut []).status,
        STATUS_INVALID_DEVICE_REQUEST,
        "other control codes are not modeled by the file system"
    );
    drop((on_sata, dir));
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
}

#[test]
fn dax_volumes_get_only_filters_that_support_them() {
    for (flags, attached) in [(0, false), (FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME, true)] {
        let sim = Sim::new();
        declare(
            Config {
                registration: Some(Arc::new(move |r| r.Flags |= flags)),
                ..Config::default()
            },
            Some(ALL),
        );
        let dax =
            sim.add_volume(VolumeSpec::new(r"\Device\HarddiskVolume3", FileSystem::Ntfs).dax());
        let c = ntfs(&sim);
        assert_eq!(sim.load(SERVICE, driver_entry), STATUS_SUCCESS);
        assert!(sim.instance(c).is_some());
        assert_eq!(sim.instance(dax).is_some(), attached, "flags {flags:#x}");
        assert_eq!(
            sim.volume_features(dax) & SUPPORTED_FS_FEATURES_BYPASS_IO,
            0,
            "no BypassIO on DAX"
        );
        assert_eq!(sim.unload(false), STATUS_SUCCESS);
    }
}
