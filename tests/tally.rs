//! iotally's tallies through fltsim: exact counts for scripted workloads.

mod common;

use common::{Loaded, totals};
use fltsim::{FileSystem, OpenOptions};
use windows_sys::Win32::Foundation::STATUS_OBJECT_NAME_NOT_FOUND;

#[test]
fn scripted_workload_is_tallied_exactly_per_volume() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let d = t.volume(3, FileSystem::Ntfs);
    t.sim.create_file(c, r"\a.txt", 0);
    t.sim.create_file(d, r"\a.txt", 0);
    t.sim.create_file(c, r"\b.bin", 0);

    let mut on_a = t.sim.open(c, r"\a.txt", OpenOptions::open()).unwrap();
    on_a.write(100, 0);
    on_a.write(50, 100);
    on_a.read(4096, 0);
    assert_eq!(on_a.close(), 0);
    let mut on_b = t.sim.open(c, r"\b.bin", OpenOptions::open()).unwrap();
    on_b.read(1, 0);
    assert_eq!(on_b.close(), 0);
    let mut other = t.sim.open(d, r"\a.txt", OpenOptions::open()).unwrap();
    other.read(7, 0);
    assert_eq!(other.close(), 0);

    let on_c = t.tallies(c).unwrap();
    assert_eq!(on_c.len(), 2);
    assert_eq!(totals(&on_c[r"\a.txt"]), (1, 1, 2, 4096, 150));
    assert_eq!(totals(&on_c[r"\b.bin"]), (1, 1, 0, 1, 0));
    let on_d = t.tallies(d).unwrap();
    assert_eq!(on_d.len(), 1, "volumes are isolated: {on_d:?}");
    assert_eq!(totals(&on_d[r"\a.txt"]), (1, 1, 0, 7, 0));
    t.unload_clean();
}

#[test]
fn reopen_accumulates_and_rename_does_not_split_a_file() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\old.txt", 0);
    for _ in 0..3 {
        let mut h = t.sim.open(c, r"\old.txt", OpenOptions::open()).unwrap();
        h.write(10, 0);
        assert_eq!(h.close(), 0);
    }
    t.sim.rename(c, r"\old.txt", r"\new.txt").unwrap();
    let mut h = t.sim.open(c, r"\new.txt", OpenOptions::open()).unwrap();
    h.read(5, 0);
    assert_eq!(h.close(), 0);

    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.len(), 1, "one file, one entry: {tallies:?}");
    assert_eq!(
        totals(&tallies[r"\old.txt"]),
        (4, 1, 3, 5, 30),
        "kept under its first name"
    );
    t.unload_clean();
}

#[test]
fn handles_open_at_once_share_one_entry() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\shared.dat", 0);
    let mut first = t.sim.open(c, r"\shared.dat", OpenOptions::open()).unwrap();
    let mut second = t.sim.open(c, r"\shared.dat", OpenOptions::open()).unwrap();
    first.read(1, 0);
    second.write(2, 0);
    assert_eq!(first.close(), 0);
    second.read(3, 0);
    assert_eq!(second.close(), 0);
    assert_eq!(
        totals(&t.tallies(c).unwrap()[r"\shared.dat"]),
        (2, 2, 1, 4, 2)
    );
    t.unload_clean();
}

#[test]
fn paging_io_directories_volume_opens_and_failed_creates_are_not_tallied() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\mapped.dll", 8192);
    let mut h = t.sim.open(c, r"\mapped.dll", OpenOptions::open()).unwrap();
    h.read_paging(4096, 0);
    h.write_paging(4096, 0);
    assert_eq!(h.close(), 0);
    let dir = t.sim.open(c, r"\dir", OpenOptions::directory()).unwrap();
    assert_eq!(dir.close(), 0);
    let volume = t.sim.open(c, "", OpenOptions::volume()).unwrap();
    assert_eq!(volume.close(), 0);
    assert_eq!(
        t.sim.open(c, r"\missing.txt", OpenOptions::open()).err(),
        Some(STATUS_OBJECT_NAME_NOT_FOUND)
    );

    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.len(), 1, "only the file: {tallies:?}");
    assert_eq!(
        totals(&tallies[r"\mapped.dll"]),
        (1, 0, 0, 0, 0),
        "paging I/O is skipped"
    );
    t.unload_clean();
}

#[test]
fn fast_io_and_noncached_reads_count() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.fast_read(10, 0);
    h.fast_write(20, 0);
    h.read_noncached(512, 0);
    assert_eq!(h.close(), 0);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\f"]), (1, 2, 1, 522, 20));
    t.unload_clean();
}

#[test]
fn refs_files_sharing_low_64_bits_stay_apart() {
    let t = Loaded::new();
    let r = t.volume(4, FileSystem::Refs);
    let low = 0x0000_0000_0000_0042_u128;
    t.sim.create_file_with_id(r, r"\one", 0, low | (1 << 64));
    t.sim.create_file_with_id(r, r"\two", 0, low | (2 << 64));
    for (name, bytes) in [(r"\one", 1), (r"\two", 2)] {
        let mut h = t.sim.open(r, name, OpenOptions::open()).unwrap();
        h.write(bytes, 0);
        assert_eq!(h.close(), 0);
    }
    let tallies = t.tallies(r).unwrap();
    assert_eq!(tallies.len(), 2, "{tallies:?}");
    assert_eq!(tallies[r"\one"].bytes_written, 1);
    assert_eq!(tallies[r"\two"].bytes_written, 2);
    t.unload_clean();
}

#[test]
fn fat_volumes_are_keyed_by_their_64_bit_ids() {
    let t = Loaded::new();
    let f = t.volume(5, FileSystem::Fat);
    t.sim.create_file(f, r"\x", 0);
    let mut h = t.sim.open(f, r"\x", OpenOptions::open()).unwrap();
    h.read(3, 0);
    assert_eq!(h.close(), 0);
    assert_eq!(totals(&t.tallies(f).unwrap()[r"\x"]), (1, 1, 0, 3, 0));
    t.unload_clean();
}

#[test]
fn network_optical_and_read_only_volumes_are_not_attached() {
    let t = Loaded::new();
    let net = t.volume(6, FileSystem::Network);
    let cd = t.volume(7, FileSystem::Cdfs);
    let ro = t.sim.add_volume(
        fltsim::VolumeSpec::new(r"\Device\HarddiskVolume8", FileSystem::Ntfs).read_only(),
    );
    let rw = t.volume(9, FileSystem::ExFat);
    assert!(t.sim.instance(net).is_none());
    assert!(t.sim.instance(cd).is_none());
    assert!(t.sim.instance(ro).is_none());
    assert!(t.sim.instance(rw).is_some());
    t.unload_clean();
}
