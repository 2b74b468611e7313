//! iotally's tallies through fltsim: exact counts for scripted workloads.

mod common;

use common::{Loaded, totals};
use fltsim::{FastIo, FileIdAnswer, FileSystem, OpenOptions, VolumeSpec};
use iotally::stats::Stat;
use windows_sys::Win32::Foundation::{STATUS_FILE_LOCK_CONFLICT, STATUS_OBJECT_NAME_NOT_FOUND};

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
    // Five opens: Sim::rename opens the file to send IRP_MJ_SET_INFORMATION through the filter (it
    // used to rename behind the filter's back), and that open is a real one.
    assert_eq!(
        totals(&tallies[r"\old.txt"]),
        (5, 1, 3, 5, 30),
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
fn tracked_reads_and_writes_take_no_instance_context_reference() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    t.sim.reset_counters(c);
    h.read(10, 0);
    h.write(20, 0);
    h.fast_read(10, 0);
    h.read_noncached(512, 0);
    assert_eq!(
        t.sim.counters(c).instance_context_gets,
        0,
        "the stream context's own reference on the instance context serves every transfer"
    );
    // A stream iotally has no stream context for still has its I/O counted (as untracked),
    // through a lookup of the instance context.
    let mut volume = t.sim.open(c, "", OpenOptions::volume()).unwrap();
    t.sim.reset_counters(c);
    volume.read(512, 0);
    assert_eq!(t.sim.counters(c).instance_context_gets, 1);
    drop(volume);
    assert_eq!(h.close(), 0);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\f"]), (1, 3, 1, 532, 20));
    assert_eq!(t.stats(c).get(Stat::UntrackedReads), 1);
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

#[test]
fn refused_fast_io_is_counted_once_whatever_refused_it() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    let mut owner = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.fast_read(10, 0); // not cached yet: refused, reissued as an IRP
    h.fast_read(10, 0); // cached: fast
    assert_eq!(owner.lock(50, 10, true).status, 0);
    assert_eq!(
        h.fast_read(10, 50).status,
        STATUS_FILE_LOCK_CONFLICT,
        "lock: refused, IRP fails"
    );
    t.sim.set_fast_io(c, FastIo::Seeded { seed: 7, one_in: 2 });
    for _ in 0..20 {
        h.fast_write(1, 0);
    }
    drop((owner, h));
    assert_eq!(
        totals(&t.tallies(c).unwrap()[r"\f"]),
        (2, 3, 20, 30, 20),
        "a failed request counts; a refused fast I/O does not, its IRP does"
    );
    t.unload_clean();
}

#[test]
fn mdl_transfers_count_once_and_completions_never() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    h.mdl_read(40, 0); // IRP_MN_MDL, then IRP_MN_COMPLETE_MDL
    h.mdl_read(40, 40); // IRP_MJ_MDL_READ, then IRP_MJ_MDL_READ_COMPLETE
    h.mdl_write(8, 100); // IRP_MJ_PREPARE_MDL_WRITE, then IRP_MJ_MDL_WRITE_COMPLETE
    drop(h);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\f"]), (1, 2, 1, 80, 8));
    t.unload_clean();
}

#[test]
fn file_id_zero_or_all_ones_never_becomes_a_key() {
    for answer in [FileIdAnswer::Zero, FileIdAnswer::AllOnes] {
        let t = Loaded::new();
        let c = t.sim.add_volume(
            VolumeSpec::new(r"\Device\HarddiskVolume2", FileSystem::Ntfs)
                .file_id_information(answer),
        );
        for name in [r"\a", r"\b"] {
            t.sim.create_file(c, name, 10);
            let mut h = t.sim.open(c, name, OpenOptions::open()).unwrap();
            h.read(1, 0);
        }
        let tallies = t.tallies(c).unwrap();
        assert_eq!(
            tallies.len(),
            2,
            "{answer:?}: two files, not one key: {tallies:?}"
        );
        assert_eq!(totals(&tallies[r"\b"]), (1, 1, 0, 1, 0));
        t.unload_clean();
    }
}

#[test]
fn a_file_created_in_a_deleted_files_fat_entry_starts_fresh() {
    for fs in [FileSystem::Fat, FileSystem::ExFat] {
        let t = Loaded::new();
        let f = t.volume(5, fs);
        let mut old = t.sim.open(f, r"\old.log", OpenOptions::create()).unwrap();
        old.write(100, 0);
        drop(old);
        // fastfat reuses a freed entry once the directory's cluster (128 entries) is full; the
        // files filling it are put there without I/O, so they are not tallied.
        let per_name = if fs == FileSystem::Fat { 1 } else { 3 };
        let fill = (0..(128 - per_name) / per_name).map(|i| (format!(r"\F{i:05}"), 0));
        t.sim.create_files(f, fill);
        t.sim.delete(f, r"\old.log").unwrap();
        let mut new = t.sim.open(f, r"\new.txt", OpenOptions::create()).unwrap();
        new.write(7, 0);
        drop(new);
        let tallies = t.tallies(f).unwrap();
        assert_eq!(
            tallies.keys().collect::<Vec<_>>(),
            [r"\new.txt"],
            "{fs:?}: the new file took the old one's id; the old entry is gone: {tallies:?}"
        );
        assert_eq!(totals(&tallies[r"\new.txt"]), (1, 0, 1, 0, 7));
        t.unload_clean();
    }
}

#[test]
fn a_moved_fat_file_gets_a_new_entry_once_reopened() {
    let t = Loaded::new();
    let f = t.volume(5, FileSystem::Fat);
    t.sim.create_directory(f, r"\d");
    t.sim.create_file(f, r"\a", 10);
    let mut h = t.sim.open(f, r"\a", OpenOptions::open()).unwrap();
    h.read(1, 0);
    drop(h);
    // The cache manager holds the read's file object (and with it the stream and its context)
    // until the lazy writer lets it go; the reopen below is after that close.
    t.sim.run_lazy_writer();
    t.sim.rename(f, r"\a", r"\d\a").unwrap();
    let mut h = t.sim.open(f, r"\d\a", OpenOptions::open()).unwrap();
    h.read(2, 0);
    drop(h);
    let tallies = t.tallies(f).unwrap();
    // FAT has no stable file id: the moved file is keyed by its new directory entry.
    assert_eq!(totals(&tallies[r"\a"]), (2, 1, 0, 1, 0), "{tallies:?}");
    assert_eq!(totals(&tallies[r"\d\a"]), (1, 1, 0, 2, 0), "{tallies:?}");
    t.unload_clean();
}

#[test]
fn reads_of_streams_without_an_entry_are_counted_as_untracked() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    let before = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    assert_eq!(t.sim.detach(c), 0);
    let mut opened_before_attach = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    drop(before);
    assert_eq!(t.sim.attach(c), 0);
    opened_before_attach.read(10, 0);
    opened_before_attach.write(3, 0);
    let mut volume = t.sim.open(c, "", OpenOptions::volume()).unwrap();
    volume.read(512, 0);
    drop((opened_before_attach, volume));
    let stats = t.stats(c);
    assert_eq!(
        [
            Stat::UntrackedReads,
            Stat::UntrackedWrites,
            Stat::UntrackedBytesRead,
            Stat::UntrackedBytesWritten
        ]
        .map(|s| stats.get(s)),
        [2, 1, 522, 3]
    );
    assert!(t.tallies(c).unwrap().is_empty());
    t.unload_clean();
}
