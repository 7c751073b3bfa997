//! Counters a worker exposes on `/metrics`. Plain atomics: the consume loop bumps them from
//! many tasks at once, and a lock would put every message through one mutex for nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the handling-latency histogram, in microseconds (5 ms .. 30 s): from a
/// database-only step to an acquirer call that used its whole retry budget.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    processed: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    decode_failures: AtomicU64,
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Non-cumulative counts per bucket (the last one is +Inf); summed when rendered.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// A consistent-enough copy of the counters, for tests and health pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    pub processed: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub decode_failures: u64,
    pub latency_count: u64,
    pub latency_sum_us: u64,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record_processed(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_decode_failure(&self) {
        self.decode_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_latency(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let index = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency_buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            processed: self.processed.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            decode_failures: self.decode_failures.load(Ordering::Relaxed),
            latency_count: self.latency_count.load(Ordering::Relaxed),
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text format, labelled with `worker`. The histogram is in seconds as
    /// Prometheus expects, printed from integer microseconds so no float is involved.
    pub fn render_prometheus(&self, worker: &str) -> String {
        let s = self.snapshot();
        let worker = escape_label(worker);
        let mut out = String::new();
        let counters = [
            ("processed", "Messages taken from JetStream.", s.processed),
            ("acked", "Messages acknowledged after handling.", s.acked),
            (
                "retried",
                "Messages nak'ed for a later redelivery.",
                s.retried,
            ),
            (
                "dead_lettered",
                "Messages moved to the dead-letter stream.",
                s.dead_lettered,
            ),
            (
                "decode_failures",
                "Messages whose payload did not decode as a command.",
                s.decode_failures,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP paystream_worker_{name}_total {help}");
            let _ = writeln!(out, "# TYPE paystream_worker_{name}_total counter");
            let _ = writeln!(
                out,
                "paystream_worker_{name}_total{{worker=\"{worker}\"}} {value}"
            );
        }
        let name = "paystream_worker_handle_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from decoding a message to the handler's outcome."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bucket) in self.latency_buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |&us| micros_as_seconds(us));
            let _ = writeln!(
                out,
                "{name}_bucket{{worker=\"{worker}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_sum{{worker=\"{worker}\"}} {}",
            micros_as_seconds(s.latency_sum_us)
        );
        let _ = writeln!(
            out,
            "{name}_count{{worker=\"{worker}\"}} {}",
            s.latency_count
        );
        out
    }
}

/// `1_500_000` -> `"1.5"`, `5_000` -> `"0.005"`: decimal seconds from integer microseconds.
fn micros_as_seconds(us: u64) -> String {
    let whole = us / 1_000_000;
    let frac = us % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_from_micros() {
        assert_eq!(micros_as_seconds(0), "0");
        assert_eq!(micros_as_seconds(5_000), "0.005");
        assert_eq!(micros_as_seconds(1_500_000), "1.5");
        assert_eq!(micros_as_seconds(30_000_000), "30");
        assert_eq!(micros_as_seconds(1), "0.000001");
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = WorkerMetrics::new();
        m.record_processed();
        m.record_processed();
        m.record_acked();
        m.record_retried();
        m.record_dead_lettered();
        m.record_decode_failure();
        m.observe_latency(Duration::from_millis(3));
        m.observe_latency(Duration::from_millis(40));
        m.observe_latency(Duration::from_secs(60));
        let snap = m.snapshot();
        assert_eq!(snap.processed, 2);
        assert_eq!(snap.latency_count, 3);
        assert_eq!(snap.latency_sum_us, 60_043_000);
        let text = m.render_prometheus("confirm\"x");
        assert!(text.contains("paystream_worker_processed_total{worker=\"confirm\\\"x\"} 2"));
        assert!(text.contains("paystream_worker_acked_total{worker=\"confirm\\\"x\"} 1"));
        assert!(text.contains("paystream_worker_decode_failures_total"));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"0.05\"} 2\n"));
        assert!(text.contains("le=\"30\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains(
            "paystream_worker_handle_duration_seconds_sum{worker=\"confirm\\\"x\"} 60.043\n"
        ));
        assert!(text.contains(
            "paystream_worker_handle_duration_seconds_count{worker=\"confirm\\\"x\"} 3\n"
        ));
    }
}
