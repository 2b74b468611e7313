//! fltsim: a user-mode model of Filter Manager and the parts of ntoskrnl that a minifilter imports.
//!
//! Every simulated routine is a `#[no_mangle] extern "system"` function with windows-sys's exact
//! signature, so a minifilter's unmodified code links against it in host builds. Where Windows would
//! bugcheck or hang, the simulator panics with a message naming the rule broken.
//!
//! Only one [`Sim`] exists at a time in a process: creating one waits until the previous one is gone,
//! because a driver's globals (its filter handle) and the simulated kernel are process-wide.

pub mod irql;
pub mod pool;
mod session;

pub use session::Sim;
