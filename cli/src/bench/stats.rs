//! Integer statistics: the one percentile definition both benches use, and fixed-point
//! output computed with integers.

#[allow(unused_imports)]
use super::*;

/// The nearest-rank percentile of sorted values: the smallest value with at least `pct`
/// percent of all values at or below it. `None` when there are no values.
pub fn percentile(sorted: &[u64], pct: u64) -> Option<u64> {
    let n = u64::try_from(sorted.len()).ok()?;
    if n == 0 {
        return None;
    }
    let pct = pct.clamp(1, 100);
    // ceil(pct * n / 100), 1-based.
    let rank = pct.saturating_mul(n).div_ceil(100).clamp(1, n);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// p50, p90, p99 and max of a sample, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(mut values: Vec<u64>) -> Option<Summary> {
        values.sort_unstable();
        Some(Summary {
            p50: percentile(&values, 50)?,
            p90: percentile(&values, 90)?,
            p99: percentile(&values, 99)?,
            max: *values.last()?,
        })
    }
}

/// Thousandths as a decimal with three places: 12345 -> "12.345".
pub fn fixed3(thousandths: u128) -> String {
    format!("{}.{:03}", thousandths / 1000, thousandths % 1000)
}

/// Payments per second in thousandths, from a count and a duration in microseconds.
pub fn milli_rate(count: u64, micros: u64) -> u128 {
    if micros == 0 {
        return 0;
    }
    u128::from(count) * 1_000_000_000 / u128::from(micros)
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
