//! fltsim: a user-mode model of Filter Manager and the parts of ntoskrnl that a minifilter imports.
//!
//! Every simulated routine is a `#[no_mangle] extern "system"` function with windows-sys's exact
//! signature (checked at compile time), so a minifilter's unmodified code links against it in host
//! builds. Where Windows would bugcheck or hang, the simulator panics with a message starting
//! `fltsim: ` that names the rule broken. A panic cannot unwind out of an `extern "system"` function:
//! raised inside a simulated routine (or a driver callback it calls), it aborts the process, as a
//! bugcheck stops the machine. Tests check those violations with [`bugcheck::expect_bugcheck`], which
//! runs the scenario in a child process.
//!
//! Only one [`Sim`] exists at a time in a process: creating one waits until the previous one is gone,
//! because a driver's globals (its filter handle) and the simulated kernel are process-wide.

mod abi;
pub mod apc;
pub mod bugcheck;
mod cachemgr;
mod callback;
mod context;
mod data;
mod file;
mod filter;
mod fs;
mod fsctl;
pub mod hang;
pub mod image;
pub mod inf;
mod instance;
mod io;
pub mod irql;
pub mod kernel;
mod names;
mod objects;
mod pause;
pub mod pool;
mod port;
pub mod pushlock;
mod query;
pub mod registry;
pub mod service;
mod session;
mod setinfo;
mod snapshot;
mod thread;
mod transfer;
pub mod transparency;
mod usermem;
pub mod verifier;
mod volume;
mod world;

pub use abi::DriverEntry;
pub use cachemgr::{CloseTiming, MAX_DEFERRED_CLOSES, StreamFileObject};
pub use context::FLT_VARIABLE_SIZED_CONTEXTS;
pub use file::{FileHandle, IoResult, OpenOptions};
pub use names::FILE_NAME_TAG;
pub use pause::{Pause, Point};
pub use port::{Caller, FLT_PORT_ALL_ACCESS, Input, Output, PortClient, Reply};
pub use session::Sim;
pub use snapshot::{FileState, Snapshot, StreamState};
pub use transfer::Transfer;
pub use verifier::Report;
pub use volume::{Counters, FastIo, FileIdAnswer, FileSystem, Volume, VolumeSpec};
pub use world::PostIrql;
