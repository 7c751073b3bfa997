//! `paystream bench-webhooks`: webhook deliveries per second and the latency from an event's
//! `createdAt` to its receipt, against a running stack (`paystream up`).
//!
//! It starts a sink on 127.0.0.1:0 (the stack must allow private webhook addresses, which
//! `paystream up` does), subscribes it to `payment_intent.created` through the API (once per
//! `--subscriptions`, each on its own path, so one event fans out to that many deliveries),
//! then creates `--events` payment intents at `--concurrency`. Each creation is one event, so
//! the API's create rate bounds the event rate; more subscriptions put more deliveries behind
//! each event and so measure the delivery side past that bound. The sink verifies every
//! signature, and the subscriptions are deleted afterwards.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{EndpointExt, Route, Server};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench::stats::Summary;
use paystream_shared::config::Config;
use paystream_shared::domain::webhook::WebhookSecret;

#[derive(Debug, clap::Args)]
pub struct BenchWebhooksArgs {
    /// How many events to create (one payment intent each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// How many creations are in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Subscriptions of the sink: each event is delivered this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub subscriptions: u64,
    /// The API: a URL, or host:port as in PAYSTREAM_API_ADDR.
    #[arg(long, env = "PAYSTREAM_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api: String,
    /// An admin secret key of the merchant to use.
    #[arg(long, env = "PAYSTREAM_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    #[arg(long)]
    pub json: bool,
    /// Also write the report, deliveries over time and the latency histogram as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Draw deliveries per second over time and the latency distribution as SVG here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// One delivery the sink received.
struct Hit {
    at: DateTime<Utc>,
    created_at: Option<DateTime<Utc>>,
    valid: bool,
}

#[derive(Default)]
struct SinkState {
    /// The secret of each subscription, by the sink path it delivers to.
    secrets: Mutex<HashMap<String, WebhookSecret>>,
    /// (path, webhook-id) -> first receipt; a redelivery counts once.
    hits: Mutex<HashMap<(String, String), Hit>>,
    duplicates: Mutex<u64>,
}

#[poem::handler]
async fn receive(
    req: &poem::Request,
    body: Vec<u8>,
    state: Data<&Arc<SinkState>>,
) -> poem::http::StatusCode {
    let at = Utc::now();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("webhook-id");
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let valid = state
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&path)
        .is_some_and(|s| s.verify(&id, ts, &body, &header("webhook-signature")));
    let created_at = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["createdAt"].as_str().map(str::to_owned))
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    let mut hits = state.hits.lock().unwrap_or_else(|p| p.into_inner());
    if hits.contains_key(&(path.clone(), id.clone())) {
        *state.duplicates.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    } else {
        hits.insert(
            (path, id),
            Hit {
                at,
                created_at,
                valid,
            },
        );
    }
    poem::http::StatusCode::NO_CONTENT
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub events: u64,
    pub subscriptions: u64,
    pub concurrency: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub duplicates: u64,
    pub invalid_signatures: u64,
    /// Events created per second (the API's create rate).
    pub events_per_sec: f64,
    /// Deliveries received per second, first creation to last receipt.
    pub deliveries_per_sec: f64,
    pub latency_ms: Percentiles,
}

/// Receipts over time and the latency distribution, for `--out` and `--plot`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    /// The width of one step of `deliveries_per_sec`, from the first event's `createdAt`.
    pub step_ms: u64,
    pub deliveries_per_sec: Vec<f64>,
    /// The width of one bin of `latency_counts`, from 0.
    pub bin_ms: u64,
    /// Deliveries whose event -> receipt latency fell in each bin.
    pub latency_counts: Vec<u64>,
}

/// How many latency bins the histogram has.
const LATENCY_BINS: u64 = 50;

impl Shape {
    /// From each receipt's offset after the first event's `createdAt` and its latency, both in
    /// microseconds.
    #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
    pub fn of(offsets_us: &[u64], latencies_us: &[u64], step_ms: u64) -> Shape {
        let step_us = step_ms.max(1) * 1000;
        let steps = offsets_us.iter().max().map_or(0, |m| m / step_us + 1);
        let mut per_step = vec![0u64; usize::try_from(steps).unwrap_or(0)];
        for o in offsets_us {
            if let Some(slot) = per_step.get_mut(usize::try_from(o / step_us).unwrap_or(usize::MAX))
            {
                *slot += 1;
            }
        }
        let max_ms = latencies_us.iter().max().map_or(0, |m| m / 1000);
        let bin_ms = (max_ms / LATENCY_BINS + 1).max(1);
        let mut latency_counts = vec![0u64; usize::try_from(max_ms / bin_ms + 1).unwrap_or(0)];
        for l in latencies_us {
            if let Some(slot) =
                latency_counts.get_mut(usize::try_from(l / 1000 / bin_ms).unwrap_or(usize::MAX))
            {
                *slot += 1;
            }
        }
        if latencies_us.is_empty() {
            latency_counts.clear();
        }
        let per_sec = 1000.0 / step_ms.max(1) as f64;
        Shape {
            step_ms: step_ms.max(1),
            deliveries_per_sec: per_step.into_iter().map(|n| n as f64 * per_sec).collect(),
            bin_ms,
            latency_counts,
        }
    }
}

/// Two charts in one SVG: deliveries per second over time, and how many deliveries took how
/// long from their event's `createdAt` to the sink.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub fn plot(path: &std::path::Path, report: &Report, shape: &Shape) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let step_s = shape.step_ms as f64 / 1000.0;
    let seconds = shape.deliveries_per_sec.len() as f64 * step_s;
    let peak = shape.deliveries_per_sec.iter().copied().fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "webhook deliveries/s ({} subscriptions, {:.0}/s overall)",
                report.subscriptions, report.deliveries_per_sec
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds.max(step_s), 0.0..(peak * 1.1).max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("seconds after the first event")
        .y_desc("deliveries/s")
        .draw()?;
    chart.draw_series(LineSeries::new(
        shape
            .deliveries_per_sec
            .iter()
            .enumerate()
            .map(|(n, v)| (n as f64 * step_s, *v)),
        &BLUE,
    ))?;
    let bin = shape.bin_ms;
    let bins = shape.latency_counts.len() as u64;
    let most = shape.latency_counts.iter().copied().max().unwrap_or(0);
    let mut hist = ChartBuilder::on(&bottom)
        .caption(
            format!(
                "event createdAt -> received (p50 {:.0} ms, p99 {:.0} ms)",
                report.latency_ms.p50, report.latency_ms.p99
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..(bins * bin).max(1), 0u64..(most + most / 10 + 1))?;
    hist.configure_mesh()
        .x_desc("milliseconds")
        .y_desc("deliveries")
        .draw()?;
    hist.draw_series(shape.latency_counts.iter().enumerate().map(|(n, c)| {
        let x = n as u64 * bin;
        Rectangle::new([(x, 0), (x + bin, *c)], BLUE.mix(0.6).filled())
    }))?;
    root.present()?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Milliseconds from the microsecond summary of the one percentile definition both
    /// benches share (`bench::stats`); zeros when nothing was received.
    fn from_micros(summary: Option<Summary>) -> Self {
        #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        let s = summary.unwrap_or(Summary {
            p50: 0,
            p90: 0,
            p99: 0,
            max: 0,
        });
        Percentiles {
            p50: ms(s.p50),
            p90: ms(s.p90),
            p99: ms(s.p99),
            max: ms(s.max),
        }
    }
}

fn api_url(raw: &str) -> String {
    let raw = raw.trim_end_matches('/');
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

pub async fn run(config: &Config, args: BenchWebhooksArgs) -> anyhow::Result<ExitCode> {
    let Some(key) = args.key.clone() else {
        bail!("--key (or PAYSTREAM_BOOTSTRAP_API_KEY) is required: an admin key of the merchant to use");
    };
    let api = api_url(&args.api);
    // An https API with a private CA (`paystream up --tls`) is trusted via PAYSTREAM_CA_CERT.
    let http = paystream_shared::tls::client_builder(config.tls.ca_cert.as_deref())?
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()?;

    // The sink.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
    let sink = format!("http://{}", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    let state = Arc::new(SinkState::default());
    let stop = CancellationToken::new();
    let server = {
        let app = Route::new()
            .at("/*path", poem::post(receive))
            .data(state.clone());
        let acceptor = TcpAcceptor::from_std(listener)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::ZERO))
                .await
        })
    };

    // The subscriptions.
    let mut subscription_ids = Vec::new();
    for n in 0..args.subscriptions {
        let path = format!("/s{n}");
        let resp = http
            .post(format!("{api}/api/webhooks/subscribe"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"url": format!("{sink}{path}"), "events": ["payment_intent.created"]}))
            .send()
            .await
            .context("subscribing the sink")?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("subscribing the sink answered {status}: {body} (is PAYSTREAM_WEBHOOK_ALLOW_PRIVATE on?)");
        }
        let secret = WebhookSecret::parse(body["secret"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!(e.message))?;
        state
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, secret);
        subscription_ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }

    // The events.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut creators = Vec::new();
    for _ in 0..args.concurrency {
        let (http, api, key, next) = (http.clone(), api.clone(), key.clone(), next.clone());
        let total = args.events;
        creators.push(tokio::spawn(async move {
            let mut failed = 0u64;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let ok = http
                    .post(format!("{api}/api/payment-intents"))
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"amount": 1099, "currency": "usd", "customerId": "cus_bench_webhooks"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 201);
                if !ok {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for c in creators {
        failed += c.await.unwrap_or(0);
    }
    let created_in = started.elapsed();
    if failed > 0 {
        eprintln!("{failed} creations failed");
    }
    let created = args.events.saturating_sub(failed);
    let expected = created * args.subscriptions;

    // Wait for the deliveries.
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut last_count = 0;
    loop {
        let count = state.hits.lock().unwrap_or_else(|p| p.into_inner()).len();
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        if count >= expected || Instant::now() >= deadline {
            break;
        }
        if !args.json && count / 1000 != last_count / 1000 {
            eprintln!("  {count}/{expected} delivered");
        }
        last_count = count;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();

    // Clean up: the sink is about to go away.
    for id in &subscription_ids {
        let _ = http
            .delete(format!("{api}/api/webhooks/subscriptions/{id}"))
            .bearer_auth(&key)
            .send()
            .await;
    }
    stop.cancel();
    let _ = server.await;

    let hits = state.hits.lock().unwrap_or_else(|p| p.into_inner());
    let first_created = hits.values().filter_map(|h| h.created_at).min();
    let offsets: Vec<u64> = match first_created {
        Some(first) => hits
            .values()
            .map(|h| u64::try_from((h.at - first).num_microseconds().unwrap_or(0)).unwrap_or(0))
            .collect(),
        None => Vec::new(),
    };
    let last_receipt = hits.values().map(|h| h.at).max();
    let latencies: Vec<u64> = hits
        .values()
        .filter_map(|h| {
            h.created_at
                .map(|c| u64::try_from((h.at - c).num_microseconds().unwrap_or(0)).unwrap_or(0))
        })
        .collect();
    let received = u64::try_from(hits.len()).unwrap_or(u64::MAX);
    let invalid = u64::try_from(hits.values().filter(|h| !h.valid).count()).unwrap_or(0);
    let window = match (
        last_receipt,
        hits.values().filter_map(|h| h.created_at).min(),
    ) {
        (Some(last), Some(first)) => (last - first).to_std().unwrap_or(elapsed),
        _ => elapsed,
    };
    #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
    let report = Report {
        events: created,
        subscriptions: args.subscriptions,
        concurrency: args.concurrency,
        deliveries_expected: expected,
        deliveries_received: received,
        duplicates: *state.duplicates.lock().unwrap_or_else(|p| p.into_inner()),
        invalid_signatures: invalid,
        events_per_sec: created as f64 / created_in.as_secs_f64().max(1e-9),
        deliveries_per_sec: received as f64 / window.as_secs_f64().max(1e-9),
        latency_ms: Percentiles::from_micros(Summary::of(latencies.clone())),
    };
    let shape = Shape::of(&offsets, &latencies, 250);
    if let Some(path) = &args.out {
        let doc = serde_json::json!({"report": &report, "shape": &shape});
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot(path, &report, &shape).with_context(|| format!("drawing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "events {} ({:.0}/s created, concurrency {}), subscriptions {}",
            report.events, report.events_per_sec, report.concurrency, report.subscriptions
        );
        println!(
            "deliveries {}/{} received, {:.0}/s, {} duplicates, {} bad signatures",
            report.deliveries_received,
            report.deliveries_expected,
            report.deliveries_per_sec,
            report.duplicates,
            report.invalid_signatures
        );
        println!(
            "event createdAt -> received: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.latency_ms.p50,
            report.latency_ms.p90,
            report.latency_ms.p99,
            report.latency_ms.max
        );
    }
    Ok(if received >= expected && invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        // The same nearest-rank definition as `paystream bench`.
        let p = Percentiles::from_micros(Summary::of((1..=100).map(|ms| ms * 1000).collect()));
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let none = Percentiles::from_micros(Summary::of(Vec::new()));
        assert_eq!(none.max, 0.0);
        assert_eq!(api_url("127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(api_url("https://x"), "https://x");
    }

    #[test]
    fn shape_counts_every_receipt_once_and_plots() {
        // Receipts at 0.1 s and 0.2 s (the first 250 ms step), 0.3 s and 0.6 s; latencies 1..=4 ms.
        let s = Shape::of(
            &[100_000, 200_000, 300_000, 600_000],
            &[1000, 2000, 3000, 4000],
            250,
        );
        assert_eq!(s.deliveries_per_sec, vec![8.0, 4.0, 4.0]);
        assert_eq!(s.bin_ms, 1);
        assert_eq!(s.latency_counts, vec![0, 1, 1, 1, 1]);
        assert_eq!(s.latency_counts.iter().sum::<u64>(), 4);
        let wide = Shape::of(&[], &[0, 500_000, 1_000_000], 100);
        assert!(wide.deliveries_per_sec.is_empty());
        assert_eq!(wide.bin_ms, 21);
        assert_eq!(wide.latency_counts.iter().sum::<u64>(), 3);
        assert!(Shape::of(&[], &[], 0).latency_counts.is_empty());

        let report = Report {
            events: 1,
            subscriptions: 1,
            concurrency: 1,
            deliveries_expected: 4,
            deliveries_received: 4,
            duplicates: 0,
            invalid_signatures: 0,
            events_per_sec: 1.0,
            deliveries_per_sec: 8.0,
            latency_ms: Percentiles::from_micros(Summary::of(vec![1000, 4000])),
        };
        let path = std::env::temp_dir().join(format!("bench-webhooks-{}.svg", std::process::id()));
        plot(&path, &report, &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("deliveries/s"));
    }
}
