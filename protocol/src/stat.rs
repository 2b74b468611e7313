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
    /// Reads counted on no file: the stream has no entry (opened before the instance attached, its
    /// stream context or entry could not be made, its file-system queries failed, the entry was
    /// evicted) or is no file (a volume open).
    UntrackedReads = 4,
    /// Writes counted on no file, for the same reasons.
    UntrackedWrites = 5,
    /// Bytes requested by untracked reads.
    UntrackedBytesRead = 6,
    /// Bytes requested by untracked writes.
    UntrackedBytesWritten = 7,
    /// Successful opens of a file that could not be tallied: no usable file ID (the queries failed,
    /// or returned 0 or all-ones).
    UntrackedOpens = 8,
    /// File-name queries that failed (the entry then gets the opened name, or none).
    NameQueryFailures = 9,
    /// BypassIO enable requests granted on the volume: the non-cached reads of those handles skip
    /// every filter, so they are not tallied.
    BypassIoEnables = 10,
}

impl Stat {
    /// Every statistic, in id order.
    pub const ALL: [Self; 11] = [
        Self::Inserts,
        Self::Misses,
        Self::Evictions,
        Self::AllocationFailures,
        Self::UntrackedReads,
        Self::UntrackedWrites,
        Self::UntrackedBytesRead,
        Self::UntrackedBytesWritten,
        Self::UntrackedOpens,
        Self::NameQueryFailures,
        Self::BypassIoEnables,
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
            Self::UntrackedReads => "untracked_reads",
            Self::UntrackedWrites => "untracked_writes",
            Self::UntrackedBytesRead => "untracked_bytes_read",
            Self::UntrackedBytesWritten => "untracked_bytes_written",
            Self::UntrackedOpens => "untracked_opens",
            Self::NameQueryFailures => "name_query_failures",
            Self::BypassIoEnables => "bypass_io_enables",
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
            Self::UntrackedReads => "reads of streams with no entry (or of the volume)",
            Self::UntrackedWrites => "writes of streams with no entry (or of the volume)",
            Self::UntrackedBytesRead => "bytes requested by untracked reads",
            Self::UntrackedBytesWritten => "bytes requested by untracked writes",
            Self::UntrackedOpens => "opens of files with no usable file ID",
            Self::NameQueryFailures => "file-name queries that failed",
            Self::BypassIoEnables => {
                "BypassIO enables granted: those handles' non-cached reads are not tallied"
            }
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
