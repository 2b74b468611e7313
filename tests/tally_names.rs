//! Under which entry and name iotally tallies streams, hard links and renamed files, what a name
//! query failure or a stream-context allocation failure costs, and which opens cost a file-system
//! query (counted by fltsim).

mod common;

use common::{Loaded, totals};
use fltsim::pool::{FaultPlan, set_fault_injection};
use fltsim::{FILE_NAME_TAG, FileSystem, OpenOptions, Transfer};
use iotally::pool::tags::STREAM_CONTEXT;
use iotally::stats::Stat;

#[test]
fn alternate_data_streams_are_tallied_with_their_file_under_the_files_name() {
    for fs in [FileSystem::Ntfs, FileSystem::Refs] {
        let t = Loaded::new();
        let c = t.volume(2, fs);
        t.sim.create_file(c, r"\doc.txt", 100);
        // The stream is the first thing of the file iotally sees: its name must not become the
        // entry's.
        let mut stream = t
            .sim
            .open(c, r"\doc.txt:Zone.Identifier", OpenOptions::create())
            .unwrap();
        stream.write_from(Transfer::Cached, 0, b"[ZoneTransfer]");
        stream.read(4, 0);
        let mut file = t.sim.open(c, r"\doc.txt", OpenOptions::open()).unwrap();
        file.read(100, 0);
        drop((stream, file));
        let mut again = t
            .sim
            .open(c, r"\doc.txt:Zone.Identifier:$DATA", OpenOptions::open())
            .unwrap();
        again.read(14, 0);
        drop(again);
        let tallies = t.tallies(c).unwrap();
        assert_eq!(
            tallies.keys().collect::<Vec<_>>(),
            [r"\doc.txt"],
            "{fs:?}: one entry, the file's name: {tallies:?}"
        );
        assert_eq!(totals(&tallies[r"\doc.txt"]), (3, 3, 1, 118, 14), "{fs:?}");
        t.unload_clean();
    }
}

#[test]
fn creating_a_stream_does_not_start_the_file_over() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let mut file = t.sim.open(c, r"\log.txt", OpenOptions::create()).unwrap();
    file.write(50, 0);
    drop(file);
    // A new stream of an existing file is created (FILE_CREATED), but the file is not new.
    let mut stream = t
        .sim
        .open(c, r"\log.txt:index", OpenOptions::create())
        .unwrap();
    assert_eq!(
        stream.create_information(),
        windows_sys::Win32::System::WindowsProgramming::FILE_CREATED as usize
    );
    stream.write(8, 0);
    drop(stream);
    let tallies = t.tallies(c).unwrap();
    assert_eq!(
        totals(&tallies[r"\log.txt"]),
        (2, 0, 2, 0, 58),
        "the file's tallies survive its new stream: {tallies:?}"
    );
    // A new file created together with its first stream does start a new entry.
    let mut both = t.sim.open(c, r"\new.txt:s", OpenOptions::create()).unwrap();
    both.write(3, 0);
    drop(both);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\new.txt"]), (1, 0, 1, 0, 3));
    t.unload_clean();
}

#[test]
fn a_hard_linked_file_is_one_entry_under_the_name_it_was_first_opened_by() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_directory(c, r"\d");
    t.sim.create_file(c, r"\a.bin", 10);
    // Linked while iotally is detached, so that the first open it sees is by the new name.
    assert_eq!(t.sim.detach(c), 0);
    t.sim.link(c, r"\a.bin", r"\d\b.bin").unwrap();
    assert_eq!(t.sim.attach(c), 0);
    for (name, bytes) in [(r"\d\b.bin", 1), (r"\a.bin", 2), (r"\d\b.bin", 4)] {
        let mut h = t.sim.open(c, name, OpenOptions::open()).unwrap();
        h.read(bytes, 0);
    }
    let tallies = t.tallies(c).unwrap();
    assert_eq!(
        tallies.keys().collect::<Vec<_>>(),
        [r"\d\b.bin"],
        "one file, one entry: {tallies:?}"
    );
    assert_eq!(totals(&tallies[r"\d\b.bin"]), (3, 3, 0, 7, 0));
    t.unload_clean();
}

#[test]
fn renames_and_links_cost_iotally_no_query_for_the_target_directory_open() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_directory(c, r"\d");
    t.sim.create_file(c, r"\a", 10);
    let mut h = t.sim.open(c, r"\a", OpenOptions::open()).unwrap();
    t.sim.reset_counters(c);
    assert_eq!(h.rename(r"\d\b", false).status, 0);
    assert_eq!(h.link(r"\d\c", false).status, 0);
    let counters = t.sim.counters(c);
    assert_eq!(
        (counters.query_information, counters.name_queries),
        (0, 0),
        "the SL_OPEN_TARGET_DIRECTORY creates are not opens of a file"
    );
    drop(h);
    assert_eq!(
        t.tallies(c).unwrap().len(),
        1,
        "the directory is not tallied"
    );
    t.unload_clean();
}

#[test]
fn directory_opens_cost_no_query_and_known_files_no_name_query() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_directory(c, r"\dir");
    t.sim.create_file(c, r"\f", 10);
    t.sim.reset_counters(c);
    for _ in 0..3 {
        drop(t.sim.open(c, r"\dir", OpenOptions::directory()).unwrap());
    }
    assert_eq!(
        t.sim.counters(c).query_information + t.sim.counters(c).name_queries,
        0,
        "FILE_DIRECTORY_FILE opens: no query"
    );
    // Opened without FILE_DIRECTORY_FILE, a directory costs one FileStandardInformation query,
    // then nothing while its stream context lives.
    let first = t.sim.open(c, r"\dir", OpenOptions::open()).unwrap();
    let second = t.sim.open(c, r"\dir", OpenOptions::open()).unwrap();
    assert_eq!(
        (
            t.sim.counters(c).query_information,
            t.sim.counters(c).name_queries
        ),
        (1, 0)
    );
    drop((first, second));
    t.sim.reset_counters(c);
    drop(t.sim.open(c, r"\f", OpenOptions::open()).unwrap());
    let new_file = t.sim.counters(c);
    assert_eq!(
        (new_file.query_information, new_file.name_queries),
        (2, 1),
        "a new file: FileStandardInformation, FileIdInformation, the normalized name"
    );
    t.sim.reset_counters(c);
    drop(t.sim.open(c, r"\f", OpenOptions::open()).unwrap());
    let known = t.sim.counters(c);
    assert_eq!(
        (known.query_information, known.name_queries),
        (2, 0),
        "a known file whose stream context went: its ID is queried, its name is not"
    );
    let kept = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    t.sim.reset_counters(c);
    drop(t.sim.open(c, r"\f", OpenOptions::open()).unwrap());
    assert_eq!(
        t.sim.counters(c),
        fltsim::Counters {
            instance_context_gets: 1,
            ..fltsim::Counters::default()
        },
        "its stream context lives: no query, one instance-context lookup"
    );
    drop(kept);
    assert_eq!(totals(&t.tallies(c).unwrap()[r"\f"]).0, 4);
    t.unload_clean();
}

#[test]
fn failed_name_queries_are_counted_and_the_file_is_still_tallied() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 10);
    set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(FILE_NAME_TAG),
    });
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    set_fault_injection(FaultPlan::Off);
    h.read(10, 0);
    drop(h);
    assert_eq!(
        t.stats(c).get(Stat::NameQueryFailures),
        2,
        "the normalized name, then the opened name"
    );
    let tallies = t.tallies(c).unwrap();
    assert_eq!(tallies.len(), 1, "{tallies:?}");
    let (name, counts) = tallies.iter().next().unwrap();
    assert_eq!(
        (name.as_str(), totals(counts)),
        ("", (1, 1, 0, 10, 0)),
        "tallied, nameless"
    );
    t.unload_clean();
}

#[test]
fn a_stream_context_that_cannot_be_allocated_makes_the_streams_io_untracked() {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    t.sim.create_file(c, r"\f", 100);
    set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(STREAM_CONTEXT.raw()),
    });
    let mut h = t.sim.open(c, r"\f", OpenOptions::open()).unwrap();
    set_fault_injection(FaultPlan::Off);
    h.read(10, 0);
    h.write(5, 0);
    drop(h);
    let stats = t.stats(c);
    assert_eq!(
        [
            Stat::UntrackedReads,
            Stat::UntrackedWrites,
            Stat::UntrackedBytesRead,
            Stat::UntrackedBytesWritten,
        ]
        .map(|s| stats.get(s)),
        [1, 1, 10, 5]
    );
    assert_eq!(
        totals(&t.tallies(c).unwrap()[r"\f"]),
        (1, 0, 0, 0, 0),
        "the open is tallied; the reads and writes, without a context, are not"
    );
    t.unload_clean();
}
