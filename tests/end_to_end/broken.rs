//! The suite catches what only the shipped image has: built with deliberate bugs (features
//! `broken-leak-context` and `broken-hold-push-lock`, `cargo xtask broken-image`), the release image
//! fails the suite's own tests, each with the finding that names its bug.
//!
//! The build takes about a minute the first time, so the test runs when `CI=true` or
//! `IOTALLY_BROKEN_IMAGE_TEST=1`, and says it is skipped otherwise.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{required, root};

/// The longest one suite test may take on the broken image before it counts as hung.
const TIMEOUT: Duration = Duration::from_mins(2);

/// Runs the suite test `name` (against the release image, replaced by `image`) in a child process;
/// returns whether it passed and its stderr.
fn run_suite_test(name: &str, image: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("IOTALLY_RELEASE_IMAGE", image)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("{name} hung on the broken image for {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn the_deliberately_broken_image_fails_the_suite() {
    if !fltsim::image::SUPPORTED {
        eprintln!("skipped: driver images run only on x86-64 Linux hosts");
        return;
    }
    if !required() && std::env::var_os("IOTALLY_BROKEN_IMAGE_TEST").is_none() {
        eprintln!(
            "skipped: building the broken image takes about a minute; set CI=true or \
             IOTALLY_BROKEN_IMAGE_TEST=1 to run this test"
        );
        return;
    }
    let built = Command::new(env!("CARGO"))
        .args(["xtask", "broken-image"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo xtask broken-image failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let image = root().join("target/broken-image/iotally.sys");
    for (test, finding) in [
        (
            "lifecycle::opens_without_transfers_leave_nothing_behind::release_image",
            "leaked context references: FLT_STREAM_CONTEXT",
        ),
        (
            "lifecycle::loads_attaches_by_policy_detaches_and_unloads_clean::release_image",
            "fltsim: APC_INDEX_MISMATCH: PreOperationCallback returned with normal kernel APCs \
             disabled 1 time(s), 0 on entry (a push lock still held?)",
        ),
    ] {
        let (passed, stderr) = run_suite_test(test, &image);
        assert!(!passed, "{test} passed on the broken image:\n{stderr}");
        assert!(
            stderr.contains(finding),
            "{test} failed on the broken image, but not with {finding:?}:\n{stderr}"
        );
    }
}
