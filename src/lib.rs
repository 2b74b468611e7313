//! iotally: a file-system minifilter that tallies per-file I/O per volume.
#![no_std]

#[cfg(not(windows))]
extern crate std;
