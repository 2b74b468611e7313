//! The library half of `cargo xtask`: everything the commands decide, kept apart from the process
//! and file handling in `main.rs` so that it can be unit-tested.
//!
//! - [`callgrind`]: reading callgrind profiles and counting a driver's own instructions in them.
//! - [`cross`]: the Debian-cargo command line that cross-builds the driver for
//!   `x86_64-pc-windows-msvc`.
//! - [`image`]: the driver images it builds (release, debug-assertions, deliberately broken).
//! - [`toolchain`]: which Debian packages that needs and how to install them.
//! - [`stamp`]: `stampinf`'s `DriverVer` stamping of the `.inx`.
//! - [`pe_check`]: verification of the resulting kernel image.
//! - [`perf`]: the performance scenarios, figures and budgets of `cargo xtask perf` / `budget`.

pub mod callgrind;
pub mod cross;
pub mod image;
pub mod pe_check;
pub mod perf;
pub mod stamp;
pub mod toolchain;
