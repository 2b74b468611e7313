//! iotally under concurrency, a full table and failing allocations.

mod common;

use common::{Loaded, totals};
use fltsim::pool::{self, FaultPlan};
use fltsim::{FileSystem, OpenOptions};
use iotally::stats::Stat;

#[test]
fn concurrent_readers_and_writers_give_exact_totals() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 500;
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let files = [r"\hot0", r"\hot1", r"\hot2", r"\hot3"];
    for f in files {
        t.sim.create_file(c, f, 0);
    }
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let sim = &t.sim;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let name = files[usize::try_from((thread + round) % 4).unwrap()];
                    let mut h = sim.open(c, name, OpenOptions::open()).unwrap();
                    h.read(3, 0);
                    h.write(5, 0);
                    h.read(1, 0);
                    assert_eq!(h.close(), 0);
                    // New files arrive while others read: the exclusive lock interleaves with
                    // shared holders.
                    if round % 50 == 0 {
                        let fresh = format!(r"\new-{thread}-{round}");
                        let h = sim.open(c, &fresh, OpenOptions::create()).unwrap();
                        assert_eq!(h.close(), 0);
                    }
                }
            });
        }
    });
    let tallies = t.tallies(c).unwrap();
    let per_file = THREADS * ROUNDS / 4;
    for f in files {
        assert_eq!(
            totals(&tallies[f]),
            (per_file, 2 * per_file, per_file, 4 * per_file, 5 * per_file),
            "{f}"
        );
    }
    assert_eq!(
        tallies.len(),
        4 + usize::try_from(THREADS * ROUNDS / 50).unwrap()
    );
    assert_eq!(t.stats(c).get(Stat::AllocationFailures), 0);
    t.unload_clean();
}

#[test]
fn eviction_keeps_the_bound_and_keeps_the_recent_files() {
    let t = Loaded::with_max_entries(Some(16));
    let c = t.volume(2, FileSystem::Ntfs);
    for i in 0..100 {
        let mut h = t
            .sim
            .open(c, &format!(r"\f{i:03}"), OpenOptions::create())
            .unwrap();
        h.write(1, 0);
        assert_eq!(h.close(), 0);
    }
    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.len(), 16);
    let expected: Vec<String> = (84..100).map(|i| format!(r"\f{i:03}")).collect();
    assert_eq!(tallies.keys().cloned().collect::<Vec<_>>(), expected);
    let stats = t.stats(c);
    assert_eq!(
        (stats.get(Stat::Inserts), stats.get(Stat::Evictions)),
        (100, 84)
    );
    t.unload_clean();
}

#[test]
fn io_on_an_evicted_file_is_a_miss_until_it_is_reopened() {
    let t = Loaded::with_max_entries(Some(1));
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\a", 0);
    t.sim.create_file(c, r"\b", 0);
    let mut a = t.sim.open(c, r"\a", OpenOptions::open()).unwrap();
    let b = t.sim.open(c, r"\b", OpenOptions::open()).unwrap();
    a.read(10, 0);
    assert_eq!(t.stats(c).get(Stat::Misses), 1);
    assert_eq!(a.close(), 0);
    assert_eq!(b.close(), 0);
    let mut a = t.sim.open(c, r"\a", OpenOptions::open()).unwrap();
    a.read(10, 0);
    assert_eq!(a.close(), 0);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\a"]), (1, 1, 0, 10, 0));
    t.unload_clean();
}

/// Runs a workload with every allocation failing at `per_mille`, then checks nothing leaked.
fn workload_under_failures(per_mille: u32, seed: u64) {
    let t = Loaded::with_max_entries(Some(64));
    pool::set_fault_injection(FaultPlan::Rate {
        per_mille,
        seed,
        tag: None,
    });
    let volumes = [t.volume(2, FileSystem::Ntfs), t.volume(3, FileSystem::Refs)];
    for (n, &v) in volumes.iter().enumerate() {
        for i in 0..200 {
            let name = format!(r"\v{n}\file{}", i % 80);
            if i < 80
                && t.sim
                    .open(v, &format!(r"\v{n}"), OpenOptions::directory())
                    .is_err()
            {
                continue;
            }
            if let Ok(mut h) = t.sim.open(v, &name, OpenOptions::create()) {
                h.read(10, 0);
                h.write(20, 0);
                assert_eq!(h.close(), 0);
            }
        }
    }
    for &v in &volumes {
        if let Some(tallies) = t.tallies(v) {
            assert!(tallies.len() <= 64);
        }
    }
    assert!(
        per_mille == 0 || pool::injected_failures() > 0,
        "the plan injected nothing"
    );
    pool::set_fault_injection(FaultPlan::Off);
    t.unload_clean();
}

#[test]
fn one_percent_allocation_failures_are_survived_without_leaks() {
    workload_under_failures(10, 1);
}

#[test]
fn ten_percent_allocation_failures_are_survived_without_leaks() {
    workload_under_failures(100, 2);
}

#[test]
fn all_allocations_failing_are_survived_without_leaks() {
    workload_under_failures(1000, 3);
}

#[test]
fn failed_table_allocations_are_counted_and_drop_only_that_tally() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\kept", 0);
    let h = t.sim.open(c, r"\kept", OpenOptions::open()).unwrap();
    assert_eq!(h.close(), 0);
    // Every new tally copies its file's name into a name block (tag ItFn): make that fail.
    pool::set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(u32::from_le_bytes(*b"ItFn")),
    });
    let mut lost = t.sim.open(c, r"\lost", OpenOptions::create()).unwrap();
    lost.write(5, 0);
    assert_eq!(lost.close(), 0);
    pool::set_fault_injection(FaultPlan::Off);
    let mut h = t.sim.open(c, r"\kept", OpenOptions::open()).unwrap();
    h.read(1, 0);
    assert_eq!(h.close(), 0);
    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.keys().collect::<Vec<_>>(), [r"\kept"]);
    assert_eq!(totals(&tallies[r"\kept"]), (2, 1, 0, 1, 0));
    let stats = t.stats(c);
    assert!(stats.get(Stat::AllocationFailures) >= 1, "{stats:?}");
    assert_eq!(
        stats.get(Stat::Misses),
        0,
        "an untallied file gets no stream context: its I/O is not looked up"
    );
    t.unload_clean();
}

#[test]
fn a_failed_table_block_allocation_drops_only_the_file_that_needed_it() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    // The table's first entry block holds 128 entries: the 129th file needs a new block (tag ItTb).
    for i in 0..129 {
        t.sim.create_file(c, &format!(r"\f{i:03}"), 0);
    }
    for i in 0..128 {
        let h = t
            .sim
            .open(c, &format!(r"\f{i:03}"), OpenOptions::open())
            .unwrap();
        assert_eq!(h.close(), 0);
    }
    pool::set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(u32::from_le_bytes(*b"ItTb")),
    });
    let h = t.sim.open(c, r"\f128", OpenOptions::open()).unwrap();
    assert_eq!(h.close(), 0);
    pool::set_fault_injection(FaultPlan::Off);
    assert_eq!(t.tallies(c).unwrap().len(), 128);
    assert_eq!(t.stats(c).get(Stat::AllocationFailures), 1);
    let h = t.sim.open(c, r"\f128", OpenOptions::open()).unwrap();
    assert_eq!(h.close(), 0);
    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.len(), 129);
    assert_eq!(tallies[r"\f128"].opens, 1);
    t.unload_clean();
}

#[test]
fn a_stream_evicted_while_open_is_tallied_again_when_reopened() {
    let t = Loaded::with_max_entries(Some(1));
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\a", 0);
    t.sim.create_file(c, r"\b", 0);
    let mut first = t.sim.open(c, r"\a", OpenOptions::open()).unwrap();
    let b = t.sim.open(c, r"\b", OpenOptions::open()).unwrap();
    // `\a` was evicted, but its stream (still open) keeps its context with the key.
    let mut again = t.sim.open(c, r"\a", OpenOptions::open()).unwrap();
    first.read(2, 0);
    again.write(3, 0);
    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.keys().collect::<Vec<_>>(), [r"\a"]);
    assert_eq!(totals(&tallies[r"\a"]), (1, 1, 1, 2, 3));
    assert_eq!(t.stats(c).get(Stat::Evictions), 2);
    for handle in [first, b, again] {
        assert_eq!(handle.close(), 0);
    }
    t.unload_clean();
}
