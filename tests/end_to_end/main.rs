//! The end-to-end suite: iotally as a black box, through fltsim only, against the host build and
//! both shipped images (see `harness.rs`). Each test body runs once per driver, with the same
//! assertions.

mod broken;
#[path = "../churn/mod.rs"]
mod churn;
mod fault_sweep;
mod faults;
mod harness;
mod irql;
mod lifecycle;
mod port;
mod stress;
mod workload;
