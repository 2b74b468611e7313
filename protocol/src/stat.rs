//! The per-instance statistics the driver keeps beside its tallies, named once.
//!
//! A statistic travels as its [`Stat::id`] and a `u64`, so that a tool shows every statistic of a
//! driver by name without a layout of its own per counter.

/// One per-instance statistic.
///
/// The discriminant is the statistic's wire id: ids are never reused or renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum Stat {
    /// Entries created in the table.
    Inserts = 0,
    /// Reads and writes of a stream whose file had no entry (evicted since it was opened).
    Misses = 1,
    /// Entries evicted to make room for a new file.
    Evictions = 2,
    /// Tallies dropped because a pool allocation failed.
    AllocationFailures = 3,
}

impl Stat {
    /// Every statistic, in id order.
    pub const ALL: [Self; 4] = [
        Self::Inserts,
        Self::Misses,
        Self::Evictions,
        Self::AllocationFailures,
    ];

    /// How many statistics there are.
    pub const COUNT: usize = Self::ALL.len();

    /// The wire id.
    #[must_use]
    pub const fn id(self) -> u16 {
        self as u16
    }

    /// The position of the statistic in [`Stat::ALL`] (its id as an index).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The statistic with wire id `id`, if this version knows it.
    #[must_use]
    pub fn from_id(id: u16) -> Option<Self> {
        Self::ALL.get(usize::from(id)).copied()
    }

    /// A stable `snake_case` name, for JSON keys and metric names.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inserts => "inserts",
            Self::Misses => "misses",
            Self::Evictions => "evictions",
            Self::AllocationFailures => "allocation_failures",
        }
    }

    /// One line saying what the statistic counts.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::Inserts => "entries created in the table",
            Self::Misses => "reads and writes of a stream whose file's entry was evicted",
            Self::Evictions => "entries evicted to make room for a new file",
            Self::AllocationFailures => "tallies dropped because a pool allocation failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn ids_are_positions_and_round_trip() {
        for (index, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.index(), index);
            assert_eq!(Stat::from_id(stat.id()), Some(*stat));
        }
        assert_eq!(Stat::from_id(u16::try_from(Stat::COUNT).unwrap()), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Stat::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            for b in &Stat::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
