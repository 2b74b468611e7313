//! What iotally leaves enabled on the volumes it attaches to: offloaded reads and writes (ODX) and
//! BypassIO, whose reads it cannot see and counts as enables; and DAX volumes, which it attaches to.

mod common;

use common::Loaded;
use fltsim::{FileSystem, OpenOptions, VolumeSpec};
use iotally::stats::Stat;
use windows_sys::Wdk::Storage::FileSystem::{
    SUPPORTED_FS_FEATURES_BYPASS_IO, SUPPORTED_FS_FEATURES_OFFLOAD_READ,
    SUPPORTED_FS_FEATURES_OFFLOAD_WRITE,
};
use windows_sys::Win32::Foundation::{STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS};
use windows_sys::Win32::System::Ioctl::{FS_BPIO_OP_ENABLE, FS_BPIO_OP_QUERY};

const ODX: u32 = SUPPORTED_FS_FEATURES_OFFLOAD_READ | SUPPORTED_FS_FEATURES_OFFLOAD_WRITE;

#[test]
fn iotally_leaves_odx_and_bypass_io_enabled() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let r = t.volume(3, FileSystem::Refs);
    assert!(t.sim.instance(c).is_some() && t.sim.instance(r).is_some());
    assert_eq!(
        t.sim.volume_features(c),
        ODX | SUPPORTED_FS_FEATURES_BYPASS_IO,
        "NTFS keeps ODX and BypassIO"
    );
    assert_eq!(t.sim.volume_features(r), ODX, "ReFS keeps ODX");
    t.unload_clean();
}

#[test]
fn bypass_io_reads_are_not_tallied_and_the_enables_are_counted() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\game.pak", 1 << 20);
    let mut file = t.sim.open(c, r"\game.pak", OpenOptions::open()).unwrap();
    let query = file.bypass_io(FS_BPIO_OP_QUERY).1.unwrap();
    assert_eq!(query.OpStatus, 0, "iotally does not veto");
    assert_eq!(
        t.stats(c).get(Stat::BypassIoEnables),
        0,
        "a query is not an enable"
    );
    let (status, results) = file.bypass_io(FS_BPIO_OP_ENABLE);
    assert_eq!((status, results.unwrap().OpStatus), (STATUS_SUCCESS, 0));
    assert_eq!(t.stats(c).get(Stat::BypassIoEnables), 1);

    assert_eq!(file.read_noncached(4096, 0).status, STATUS_SUCCESS);
    assert_eq!(file.read(512, 0).status, STATUS_SUCCESS);
    let tally = t.tallies(c).unwrap()[r"\game.pak"];
    assert_eq!(
        (tally.reads, tally.bytes_read),
        (1, 512),
        "the BypassIO read skipped iotally; the cached one did not"
    );
    drop(file);
    t.unload_clean();
}

#[test]
fn other_file_system_controls_pass_untouched() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\a.txt", 10);
    let mut file = t.sim.open(c, r"\a.txt", OpenOptions::open()).unwrap();
    let result = file.fs_control(0x0009_0000, &[1, 2, 3], &mut [0; 8]);
    assert_eq!(result.status, STATUS_INVALID_DEVICE_REQUEST);
    assert_eq!(t.stats(c).get(Stat::BypassIoEnables), 0);
    drop(file);
    t.unload_clean();
}

#[test]
fn iotally_attaches_to_dax_volumes() {
    let t = Loaded::new();
    let dax = t
        .sim
        .add_volume(VolumeSpec::new(r"\Device\HarddiskVolume4", FileSystem::Ntfs).dax());
    assert!(
        t.sim.instance(dax).is_some(),
        "FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME"
    );
    t.sim.create_file(dax, r"\pmem.db", 4096);
    let mut file = t.sim.open(dax, r"\pmem.db", OpenOptions::open()).unwrap();
    file.write(100, 0);
    drop(file);
    assert_eq!(t.tallies(dax).unwrap()[r"\pmem.db"].writes, 1);
    t.unload_clean();
}
