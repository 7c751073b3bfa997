//! Counters for `GET /metrics`, in Prometheus' text format. They count for the life of the
//! process and survive `POST /sim/reset`: Prometheus treats counters as monotonic.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub charges: AtomicU64,
    pub refunds: AtomicU64,
    pub replays: AtomicU64,
    pub key_conflicts: AtomicU64,
    pub injected_errors: AtomicU64,
    pub injected_timeouts: AtomicU64,
    pub notifications_sent: AtomicU64,
    pub notifications_dropped: AtomicU64,
    pub notifications_duplicated: AtomicU64,
    /// Refused by paystream (4xx) or still failing after every retry.
    pub notifications_failed: AtomicU64,
}

/// Counters are independent tallies; nothing orders other memory by them, so `Relaxed` is enough.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "acquirer_sim_requests_total",
            "Calls to the /v1 acquirer API.",
            &[("", get(&self.requests))],
        );
        counter(
            "acquirer_sim_charges_total",
            "Charges created (approved, declined or awaiting 3-D Secure).",
            &[("", get(&self.charges))],
        );
        counter(
            "acquirer_sim_refunds_total",
            "Refunds created.",
            &[("", get(&self.refunds))],
        );
        counter(
            "acquirer_sim_idempotent_replays_total",
            "Requests answered from a stored idempotent answer.",
            &[("", get(&self.replays))],
        );
        counter(
            "acquirer_sim_idempotency_conflicts_total",
            "Idempotency keys reused with a different request (422).",
            &[("", get(&self.key_conflicts))],
        );
        counter(
            "acquirer_sim_faults_injected_total",
            "Misbehaviour injected through /sim/faults.",
            &[
                ("{kind=\"error\"}", get(&self.injected_errors)),
                ("{kind=\"timeout\"}", get(&self.injected_timeouts)),
                (
                    "{kind=\"notification_dropped\"}",
                    get(&self.notifications_dropped),
                ),
                (
                    "{kind=\"notification_duplicated\"}",
                    get(&self.notifications_duplicated),
                ),
            ],
        );
        counter(
            "acquirer_sim_notifications_total",
            "Notifications sent to paystream, by result.",
            &[
                ("{result=\"delivered\"}", get(&self.notifications_sent)),
                ("{result=\"failed\"}", get(&self.notifications_failed)),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        bump(&m.charges);
        bump(&m.injected_timeouts);
        let text = m.render();
        assert!(text.contains("# TYPE acquirer_sim_charges_total counter\n"));
        assert!(text.contains("acquirer_sim_charges_total 1\n"));
        assert!(text.contains("acquirer_sim_faults_injected_total{kind=\"timeout\"} 1\n"));
        assert!(text.contains("acquirer_sim_faults_injected_total{kind=\"error\"} 0\n"));
    }
}
