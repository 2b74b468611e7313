//! The seeded stress of `tests/stress_races.rs` on every driver, shorter (`tests/churn/mod.rs` says
//! what it does and checks): worker threads on stable and churn volumes while a chaos thread
//! mounts, dismounts, detaches and re-attaches, port clients come and go, and the driver unloads
//! with I/O in flight; every tally of every volume and attachment exact, the verifier report empty.

use crate::churn::{self, Config};
use crate::harness::{Machine, for_each_driver};

for_each_driver! {
    fn seeded_stress_with_churn_clients_and_unload_in_flight(driver: Driver) {
        let machine = Machine::new(driver);
        let figures = churn::run(&machine.sim, Config::from_env(800, 4));
        eprintln!("{driver:?}: {figures:?}");
        assert!(
            figures.churn_checks > 1 && figures.churn_opens_checked > 0,
            "the churn volumes were hardly checked: {figures:?}"
        );
    }
}
