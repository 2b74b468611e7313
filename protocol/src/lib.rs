//! The messages between the iotally driver and `iotallyctl`, defined once for both sides.
//!
//! `no_std`, no allocation, no pointers: every layout is fixed and little-endian.
#![no_std]

mod stat;

pub use stat::Stat;
