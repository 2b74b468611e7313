//! A bounded, seeded fuzz run of the message callback: arbitrary request bytes (and mutations of
//! valid requests) with output buffers of any size and alignment, through fltsim's port into the
//! real driver. No case may crash, break a simulator rule, answer with a status outside the
//! protocol's, write past the output buffer or change a table (resets aside); the verifier report
//! at the end must be clean.
//!
//! `IOTALLY_FUZZ_CASES` sets the number of cases (default 50,000, which `cargo test` runs in CI).

mod common;

use common::Loaded;
use fltsim::{FileSystem, Input, OpenOptions, Output};
use iotally_protocol::request::{Request, encode, encoded_len};
use iotally_protocol::{Cursor, Kind, SortKey, reply};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use windows_sys::Win32::Foundation::{
    STATUS_BUFFER_TOO_SMALL, STATUS_DATATYPE_MISALIGNMENT, STATUS_FLT_INSTANCE_NOT_FOUND,
    STATUS_INVALID_PARAMETER, STATUS_INVALID_USER_BUFFER, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

const C: &str = r"\Device\HarddiskVolume2";

/// Valid requests to mutate: one of each kind.
fn seeds() -> Vec<Vec<u8>> {
    let volume: Vec<u16> = C.encode_utf16().collect();
    let path: Vec<u16> = format!(r"{C}\f1").encode_utf16().collect();
    let requests = [
        Request::Hello,
        Request::Instances,
        Request::Top {
            volume: volume.as_slice(),
            by: SortKey::Bytes,
            limit: 5,
        },
        Request::Dump {
            volume: volume.as_slice(),
            max_entries: 2,
            cursor: Cursor::START,
        },
        Request::Lookup {
            path: path.as_slice(),
        },
        Request::ResetVolume {
            volume: volume.as_slice(),
        },
    ];
    requests
        .iter()
        .map(|r| {
            let mut bytes = vec![0; encoded_len(r)];
            encode(r, &mut bytes).unwrap();
            bytes
        })
        .collect()
}

/// One case: request bytes, output capacity, whether the output is misaligned.
fn case() -> impl Strategy<Value = (Vec<u8>, u32, bool)> {
    let seeds = seeds();
    let mutated = (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        0..3_usize,
    )
        .prop_map(move |(i, flips, cut)| {
            let mut bytes = seeds[i].clone();
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at.index(n)] = value;
            }
            let keep = bytes.len().saturating_sub(cut * 2);
            bytes.truncate(keep);
            bytes
        });
    let request = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        mutated.clone(),
        mutated,
    ];
    (request, 0..6000_u32, prop::bool::weighted(0.1))
}

#[test]
fn arbitrary_requests_never_crash_or_corrupt_the_tables() {
    let cases = std::env::var("IOTALLY_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    for i in 0..8 {
        let path = format!(r"\f{i}");
        t.sim.create_file(c, &path, 0);
        let mut h = t.sim.open(c, &path, OpenOptions::open()).unwrap();
        h.read(512 * (i + 1), 0);
        assert_eq!(h.close(), 0);
    }
    let port = t.sim.connect(iotally_protocol::PORT_NAME, &[]).unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let allowed = [
        STATUS_SUCCESS,
        STATUS_INVALID_PARAMETER,
        STATUS_NOT_SUPPORTED,
        STATUS_BUFFER_TOO_SMALL,
        STATUS_DATATYPE_MISALIGNMENT,
        STATUS_FLT_INSTANCE_NOT_FOUND,
        STATUS_INVALID_USER_BUFFER,
    ];
    runner
        .run(&case(), |(request, capacity, misaligned)| {
            let before = (t.tallies(c), t.stats(c));
            let output = if misaligned {
                Output::Misaligned(capacity)
            } else {
                Output::Buffer(capacity)
            };
            let r = port.message(Input::Bytes(&request), output);
            prop_assert!(allowed.contains(&r.status), "status {:#x}", r.status);
            prop_assert!(r.returned <= capacity);
            let header = reply::header(&r.buffer);
            if r.status == STATUS_SUCCESS {
                let h = header.expect("an answer has a header");
                prop_assert_eq!(h.length.get(), r.returned);
            }
            let reset = r.status == STATUS_SUCCESS
                && header.is_some_and(|h| h.kind.get() == Kind::Reset as u16);
            if !reset {
                prop_assert_eq!((t.tallies(c), t.stats(c)), before);
            }
            Ok(())
        })
        .unwrap();
    drop(port);
    t.unload_clean();
}
