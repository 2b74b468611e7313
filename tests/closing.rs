//! iotally under Windows' close timing: closes of cached files long after their cleanup (from the
//! lazy writer, some at `APC_LEVEL`), reopens before those closes, paging writes after cleanup and
//! stream file objects that get only a close. The tallies stay exact and nothing leaks.

mod common;

use common::{Loaded, totals};
use fltsim::{FileSystem, OpenOptions};

#[test]
fn late_closes_reopens_before_them_and_paging_writes_after_cleanup_keep_tallies_exact() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 4096);
    let mut first = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    first.write(100, 0);
    drop(first);
    assert_eq!(
        t.sim.closes_pending(),
        1,
        "the cache manager holds the file object"
    );
    // The stream is still alive: the reopen finds its stream context.
    let mut again = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    again.read(10, 0);
    drop(again);
    let mut stream = t.sim.stream_file_object(c, r"\f").unwrap();
    stream.read_paging(4096, 0);
    stream.close();
    // Paging writes of the dirty data, then the closes, some at APC_LEVEL: not counted.
    t.sim.run_lazy_writer();
    assert_eq!(t.sim.closes_pending(), 0);
    let mut last = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    last.read(1, 0);
    drop(last);
    let tallies = t.tallies(c).unwrap();
    assert_eq!(totals(&tallies[r"\f"]), (3, 2, 1, 11, 100));
    t.unload_clean();
}

#[test]
fn unload_with_closes_still_held_back_is_clean() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    for n in 0..20 {
        let mut h = t
            .sim
            .open(c, &format!(r"\f{n}"), OpenOptions::create())
            .unwrap();
        h.write(10, 0);
    }
    assert_eq!(t.sim.closes_pending(), 20);
    assert_eq!(t.sim.unload(false), 0);
    t.sim.verifier_report().assert_clean();
    // The closes arrive after the filter is gone: nothing reaches the driver.
    t.sim.run_lazy_writer();
    assert_eq!(t.sim.closes_pending(), 0);
    t.sim.verifier_report().assert_clean();
}
