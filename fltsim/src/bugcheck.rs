//! Death tests: checking that a rule violation stops the machine.
//!
//! Simulated kernel routines are `extern "system"` functions, which cannot unwind: when one of them
//! detects a rule violation it panics, and the panic aborts the process, just as a bugcheck stops a
//! Windows machine. A test therefore cannot catch the violation with `#[should_panic]`; it calls
//! [`expect_bugcheck`], which re-runs the same test in a child process, lets the child die, and checks
//! that the child's last words name the rule.

use std::process::Command;

const CHILD: &str = "FLTSIM_BUGCHECK_CHILD";

/// Runs `body` in a child process and asserts that it stops the process with a message containing
/// `expected` (for example `"fltsim: INVALID_KERNEL_HANDLE"`).
///
/// Call it from a `#[test]` function of the default test harness: the child re-runs that test alone
/// (`<test binary> <test name> --exact`), found by the name the harness gives the test's thread.
/// Everything the test does before calling `expect_bugcheck` runs in both processes; put the
/// scenario inside `body`.
///
/// # Panics
/// In the parent, if the child ran `body` to completion, or died with a message lacking `expected`,
/// or if the test's name cannot be found (a test harness that runs tests on the main thread).
pub fn expect_bugcheck(expected: &str, body: impl FnOnce()) {
    let stderr = bugcheck_output(body);
    assert!(
        stderr.contains(expected),
        "expected a bugcheck with {expected:?}, but the child process said:\n{stderr}"
    );
}

/// Runs `body` in a child process, as [`expect_bugcheck`] does, asserts that it stopped the
/// process, and returns what the child wrote to stderr (its last words), for tests that check more
/// than one substring.
///
/// # Panics
/// In the parent, if the child ran `body` to completion, or if the test's name cannot be found.
pub fn bugcheck_output(body: impl FnOnce()) -> String {
    if std::env::var_os(CHILD).is_some() {
        body();
        eprintln!("fltsim: expect_bugcheck: the body returned without a bugcheck");
        std::process::exit(0);
    }
    let thread = std::thread::current();
    let name = thread.name().filter(|name| *name != "main").expect(
        "expect_bugcheck must run in a test thread named after the test (libtest's default)",
    );
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the test binary can be re-run");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "expected a bugcheck, but the code ran to completion:\n{stderr}"
    );
    stderr
}
