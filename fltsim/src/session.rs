//! The one active simulation of the process.

use std::sync::{Mutex, MutexGuard};

/// Serializes simulations: the simulated kernel and a loaded driver's globals are process-wide.
static SESSION: Mutex<()> = Mutex::new(());

/// A simulated machine: kernel, Filter Manager, volumes, and at most one loaded minifilter.
///
/// Creating a `Sim` resets every simulated subsystem; dropping it ends the session.
pub struct Sim {
    _session: MutexGuard<'static, ()>,
}

impl Sim {
    /// Starts a new simulation, waiting for any other one in this process to end first.
    #[must_use]
    pub fn new() -> Self {
        let guard = SESSION.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::pool::reset();
        Self { _session: guard }
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}
