#!/usr/bin/env bash
# The host test suite under AddressSanitizer (heap, stack and global out-of-bounds accesses, use after
# free, double free) with LeakSanitizer, in its own target dir, target/asan (every crate is rebuilt
# with the sanitizer). About a minute to build and a minute to run on 2 cores.
#
#   bash ci/asan.sh
#
# Needs a nightly toolchain (`cargo +nightly`), or else a stable one with RUSTC_BOOTSTRAP=1 (the ASan
# runtime ships in rust-std). --target is given so that RUSTFLAGS reach the tests and the code they
# run but not build scripts and proc macros.
#
# What does not run under ASan, and why:
# - The end-to-end suite against the two shipped images (tests/end_to_end, `release_image` and
#   `debug_image`): the images are cross-built Windows code that fltsim maps and runs; none of it is
#   instrumented, so ASan would see nothing of the driver there. The variables below name missing
#   files, and with CI unset the image tests skip (saying so); the same tests run on the host build,
#   which is instrumented. The broken-image test skips for the same reason (it needs CI=true).
# - Doctests (`--lib --bins --tests` leaves them out): rustdoc links them without the sanitizer
#   flags, and they fail to link; they are small usage examples, run by the plain `cargo test`.
# - Leaks the tests make on purpose (simulated bug checks, leaked lock words): ci/lsan.supp lists each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    cargo=(cargo)
    export RUSTC_BOOTSTRAP=1
fi

unset CI
export IOTALLY_RELEASE_IMAGE=target/asan/no-image/iotally.sys
export IOTALLY_DEBUG_IMAGE=target/asan/no-image/iotally.sys
export RUSTFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR=target/asan
# Any ASan or LSan report fails the test binary that made it, hence the run.
export ASAN_OPTIONS="detect_leaks=1"
export LSAN_OPTIONS="suppressions=$PWD/ci/lsan.supp:print_suppressions=0"

"${cargo[@]}" test --target x86_64-unknown-linux-gnu --workspace --locked --lib --bins --tests
