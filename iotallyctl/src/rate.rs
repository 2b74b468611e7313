//! Per-second rates between two readings of the driver's counters (`watch`).

use crate::client::Totals;

/// Counts per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Opens per second.
    pub opens: f64,
    /// Reads per second.
    pub reads: f64,
    /// Writes per second.
    pub writes: f64,
    /// Bytes read per second.
    pub bytes_read: f64,
    /// Bytes written per second.
    pub bytes_written: f64,
}

/// The rates from `before` (read at system time `then`) to `after` (at `now`). A counter that went
/// down (a reset, an eviction) counts as 0; no time elapsed gives 0.
#[must_use]
#[allow(clippy::cast_precision_loss)] // display figures
pub fn totals(then: i64, before: &Totals, now: i64, after: &Totals) -> Rates {
    let seconds = (now - then) as f64 / 10_000_000.0;
    let per = |a: u64, b: u64| {
        if seconds > 0.0 {
            b.saturating_sub(a) as f64 / seconds
        } else {
            0.0
        }
    };
    Rates {
        opens: per(before.opens, after.opens),
        reads: per(before.reads, after.reads),
        writes: per(before.writes, after.writes),
        bytes_read: per(before.bytes_read, after.bytes_read),
        bytes_written: per(before.bytes_written, after.bytes_written),
    }
}

#[cfg(test)]
mod tests {
    use super::totals;
    use crate::client::Totals;

    #[test]
    fn rates_are_deltas_over_driver_time() {
        let before = Totals {
            opens: 10,
            reads: 100,
            writes: 0,
            bytes_read: 1000,
            bytes_written: 50,
        };
        let after = Totals {
            opens: 30,
            reads: 100,
            writes: 4,
            bytes_read: 5000,
            bytes_written: 10,
        };
        let r = totals(0, &before, 20_000_000, &after);
        assert!((r.opens - 10.0).abs() < 1e-9);
        assert!(r.reads.abs() < 1e-9);
        assert!((r.writes - 2.0).abs() < 1e-9);
        assert!((r.bytes_read - 2000.0).abs() < 1e-9);
        assert!(
            r.bytes_written.abs() < 1e-9,
            "a counter that went down is 0"
        );
        assert!(totals(5, &before, 5, &after).opens.abs() < 1e-9);
    }
}
