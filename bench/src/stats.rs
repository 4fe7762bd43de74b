//! Latency summaries: nearest-rank percentiles over every sample (no histogram buckets).

use std::time::Duration;

/// Nearest-rank quantile `q` (0 < q <= 1) of `sorted` (ascending); zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Count, p50, p99, p99.9 and max of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_unstable();
        Summary {
            count: s.len(),
            p50: quantile(&s, 0.50),
            p99: quantile(&s, 0.99),
            p999: quantile(&s, 0.999),
            max: s.last().copied().unwrap_or_default(),
        }
    }
}

/// Milliseconds with two decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Microseconds with one decimal, for tables ("?" when not measured).
pub fn us(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
}

/// `ours / theirs` as a ratio with two decimals ("n/a" when undefined).
pub fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 && ours.is_finite() {
        format!("{:.2}", ours / theirs)
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, Duration::from_millis(500));
        assert_eq!(s.p99, Duration::from_millis(990));
        assert_eq!(s.p999, Duration::from_millis(999));
        assert_eq!(s.max, Duration::from_millis(1000));
        assert_eq!(Summary::of(&[]).p99, Duration::ZERO);
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(ratio(3.0, 0.0), "n/a");
    }
}
