//! Seeded stress with races on the host build (`tests/churn/mod.rs` says what it does and checks):
//! worker threads on NTFS, ReFS, FAT and exFAT volumes that stay attached and on churn volumes
//! that a chaos thread mounts, dismounts, detaches and re-attaches meanwhile; port clients
//! connecting, querying and disconnecting; the unload with I/O in flight. Every tally, on every
//! volume and every attachment of a churn volume, is checked exactly; the verifier report must be
//! empty and nobody left waiting.
//!
//! `IOTALLY_STRESS_SEED` replays a run (the seed is printed); `IOTALLY_STRESS_OPS` (operations per
//! worker, default 2000) and `IOTALLY_STRESS_THREADS` (workers, default 4) make a longer campaign.
//! The end-to-end suite runs a shorter version on every driver (`tests/end_to_end/stress.rs`).

mod churn;
mod common;

use common::Loaded;

#[test]
fn seeded_stress_with_mounts_detaches_clients_and_unload_in_flight() {
    let config = churn::Config::from_env(2000, 4);
    eprintln!(
        "IOTALLY_STRESS_SEED={} IOTALLY_STRESS_OPS={} IOTALLY_STRESS_THREADS={}",
        config.seed, config.ops, config.threads
    );
    let t = Loaded::new();
    let figures = churn::run(&t.sim, config);
    assert!(
        figures.churn_checks > 1 && figures.churn_opens_checked > 0,
        "the churn volumes were hardly checked: {figures:?}"
    );
    let hang = fltsim::hang::report();
    assert!(
        hang.starts_with("who waits for what:\n  nobody\n"),
        "{hang}"
    );
}
