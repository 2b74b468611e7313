//! Per-instance statistics: one relaxed atomic counter per [`Stat`], kept beside the tally table.
//!
//! They are shared by the whole volume, so a tracked read or write never writes them: they count
//! inserts, evictions and failed allocations (under the exclusive lock) and requests that are *not*
//! tracked (misses, untracked requests), never hits.
//!
//! The statistics themselves are named once, in the protocol crate, so that the driver, the
//! communication port and `iotallyctl` agree on them.

use core::sync::atomic::Ordering;

#[cfg(not(loom))]
use core::sync::atomic::AtomicU64;
// Under `cfg(loom)` the counters are loom's atomics (`tests/loom.rs`).
#[cfg(loom)]
use loom::sync::atomic::AtomicU64;

pub use iotally_protocol::Stat;

/// The counters of one instance.
pub struct Stats([AtomicU64; Stat::COUNT]);

impl Default for Stats {
    fn default() -> Self {
        Self(core::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Stats {
    /// Adds `n` to `stat`.
    pub fn add(&self, stat: Stat, n: u64) {
        self.0[stat.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets every counter back to 0 (a reset of the instance's tallies).
    pub fn reset(&self) {
        for counter in &self.0 {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// A copy of every counter.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot(core::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// A copy of an instance's [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot([u64; Stat::COUNT]);

impl StatsSnapshot {
    /// The value of `stat`.
    #[must_use]
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat.index()]
    }

    /// Every statistic with its value, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL.iter().map(|&stat| (stat, self.get(stat)))
    }
}

#[cfg(test)]
mod tests {
    use super::{Stat, Stats};

    #[test]
    fn counters_are_independent() {
        let stats = Stats::default();
        stats.add(Stat::Evictions, 2);
        stats.add(Stat::Inserts, 5);
        stats.add(Stat::Evictions, 1);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.get(Stat::Evictions), 3);
        assert_eq!(snapshot.get(Stat::Inserts), 5);
        assert_eq!(snapshot.get(Stat::Misses), 0);
        assert_eq!(snapshot.iter().map(|(_, v)| v).sum::<u64>(), 8);
    }
}
