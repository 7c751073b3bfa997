//! Prometheus counters for the API process, kept in atomics (no registry crate needed for a
//! handful of series).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Request, Response};

const BUCKETS_MS: [u64; 8] = [1, 5, 10, 25, 50, 100, 500, 2500];

#[derive(Default)]
pub struct ApiMetrics {
    by_class: [AtomicU64; 5],
    latency_buckets: [AtomicU64; BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl ApiMetrics {
    pub async fn observe<E: Endpoint>(&self, ep: E, req: Request) -> poem::Result<Response> {
        let start = Instant::now();
        let resp = ep.call(req).await.map(IntoResponse::into_response);
        let status = match &resp {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        self.record(status, start.elapsed().as_micros());
        resp
    }

    fn record(&self, status: u16, micros: u128) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if micros <= le * 1000 {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::from("# TYPE paystream_http_requests_total counter\n");
        for (i, c) in self.by_class.iter().enumerate() {
            out.push_str(&format!(
                "paystream_http_requests_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                c.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# TYPE paystream_http_request_duration_seconds histogram\n");
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            out.push_str(&format!(
                "paystream_http_request_duration_seconds_bucket{{le=\"{}.{:03}\"}} {}\n",
                le / 1000,
                le % 1000,
                self.latency_buckets[i].load(Ordering::Relaxed)
            ));
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "paystream_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        let sum = self.latency_sum_us.load(Ordering::Relaxed);
        out.push_str(&format!(
            "paystream_http_request_duration_seconds_sum {}.{:06}\n",
            sum / 1_000_000,
            sum % 1_000_000
        ));
        out.push_str(&format!(
            "paystream_http_request_duration_seconds_count {count}\n"
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classes_and_histogram() {
        let m = ApiMetrics::default();
        m.record(201, 3_000);
        m.record(404, 700_000);
        let text = m.render();
        assert!(
            text.contains("paystream_http_requests_total{class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("paystream_http_requests_total{class=\"4xx\"} 1"));
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("le=\"2.500\"} 2"), "{text}");
        assert!(text.contains("_count 2"));
        assert!(text.contains("_sum 0.703000"), "{text}");
    }
}
