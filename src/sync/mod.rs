//! Safe kernel synchronization: [`PushLock<T>`], a Filter Manager push lock that owns the data it
//! protects, with RAII guards, IRQL assertions and (debug builds) misuse diagnostics.
//!
//! See [`push_lock`] for the rules every user must keep.

mod cell;
pub mod push_lock;
mod tracker;
mod word;

pub use push_lock::{
    MappedPushLockReadGuard, MappedPushLockWriteGuard, PushLock, PushLockReadGuard,
    PushLockWriteGuard,
};
