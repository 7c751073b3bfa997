//! `paystream bench`: drives a running stack over HTTP, exactly as a merchant would, and reports
//! full payments per second and the latency from sending the confirm to seeing `succeeded`.
//!
//! Each of `--concurrency` slots loops: create an intent with `pm_card_visa`, confirm it, wait
//! until it is `succeeded`, take the next one. How "seeing `succeeded`" works matters, because
//! the watching itself loads the API it measures and its interval is the measurement's error:
//!
//! - `--observe list` (the default): one observer pages through
//!   `GET /api/payment-intents?customerId=<run>_<block>&status=succeeded&limit=<n>`, newest
//!   first, down to the oldest intent of that block still waiting, every `--poll-ms`. Each
//!   block of 100 payments has its own `customerId`, which keeps other traffic out of the pages
//!   and bounds what one look costs the database; `n` is how many of the block's intents can
//!   lie above that point, so one page suffices. One request observes up to 100 payments, so
//!   the watching costs a request or a few per cycle however many payments are in flight.
//!   Intents that wait unusually long (a decline, a stuck worker) are checked one by one
//!   instead, and a payment not `succeeded` within `--timeout-secs` counts as failed.
//! - `--observe get`: every payment polls its own `GET /api/payment-intents/{id}`, 5 ms at first,
//!   doubling up to 50 ms: simple, but one request per look per payment.
//!
//! Every observation carries its own error bound: the intent turned `succeeded` after the last
//! look that did not see it was sent, and before the look that saw it came back. The observed
//! latency is the upper end of that window; the report prints how wide the windows were. As a
//! cross-check it also prints the latency to the `updatedAt` the worker stamped on the intent
//! (the same clock when the bench runs on the stack's machine), which is a lower bound: the
//! worker stamps the row before its transaction commits.
//!
//! All arithmetic is on integer microseconds; rates and milliseconds are printed as fixed-point
//! numbers (three decimals) computed with integers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use paystream_shared::config::Config;

/// How the bench learns that a payment succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Observe {
    /// The bench's own webhook endpoint receives `payment_intent.succeeded` and verifies it.
    Webhook,
    /// One observer pages the list of succeeded intents of this run (batched looks).
    List,
    /// Every payment polls its own intent.
    Get,
}

impl Observe {
    fn as_str(self) -> &'static str {
        match self {
            Observe::Webhook => "webhook",
            Observe::List => "list",
            Observe::Get => "get",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// How many payments to run (create, confirm, wait for `succeeded`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub payments: u64,
    /// How many payments are in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Open loop: start this many payments per second whatever the answers (with
    /// `--duration`; `--payments` and `--concurrency` are then unused). Latency counts from
    /// each payment's intended start.
    #[arg(long, requires = "duration", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: Option<u64>,
    /// Open loop: for this many seconds.
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,
    /// Write an SVG plot: throughput per second over the run, and the latency distribution.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The API to drive: a URL, or host:port as in PAYSTREAM_API_ADDR.
    #[arg(long, env = "PAYSTREAM_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api: String,
    /// An admin secret key of the merchant to charge.
    #[arg(long, env = "PAYSTREAM_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Afterwards, measure PostgreSQL's own ceiling with pgbench (-N, 10 s) on a scratch database.
    #[arg(long)]
    pub pgbench: bool,
    /// How `succeeded` is observed.
    #[arg(long, value_enum, default_value = "webhook")]
    pub observe: Observe,
    /// The list observer's interval between cycles, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// A payment not `succeeded` this long after its confirm counts as failed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    /// Send no Idempotency-Key (and so retry only requests that never reached the API).
    #[arg(long)]
    pub no_idempotency_keys: bool,
}

impl BenchArgs {
    pub(crate) fn load(&self) -> Load {
        match self.rate {
            Some(per_second) => Load::Open { per_second },
            None => Load::Closed {
                concurrency: self.concurrency,
            },
        }
    }

    pub(crate) fn total_payments(&self) -> u64 {
        match (self.rate, self.duration) {
            (Some(rate), Some(secs)) => rate.saturating_mul(secs),
            _ => self.payments,
        }
    }
}

/// Transient failures (connection errors, 5xx, 429) are retried this often; with an
/// Idempotency-Key a retried POST cannot run twice.
const MAX_RETRIES: u32 = 3;
/// A list page; the contract's maximum.
const PAGE: usize = 100;
/// Payments per `customerId`. Filtered by customer, PostgreSQL may read every intent of that
/// customer and sort them (payment_intents_merchant_customer has no `id` for the tie-break), so
/// a customer per block bounds what one look reads, and one page holds a whole block.
const BLOCK: u64 = 100;
/// The per-payment GET schedule: 5 ms, doubling, at most 50 ms.
const GET_FIRST: Duration = Duration::from_millis(5);
const GET_MAX: Duration = Duration::from_millis(50);
/// The list observer checks an intent on its own once it has waited this long, or four times
/// the mean latency so far if that is longer, and then at most this often.
const STRAGGLER_AFTER: Duration = Duration::from_secs(2);
const STRAGGLER_RECHECK: Duration = Duration::from_millis(500);
/// How many one-by-one checks the list observer runs at once.
const STRAGGLER_PARALLEL: usize = 16;
/// pgbench's run, as the issue asks: `-n -N -T 10`.
const PGBENCH_SECS: u64 = 10;
const PGBENCH_DB: &str = "paystream_pgbench";

mod payments;
mod pgbench;
mod plot;
mod report;
pub mod rss;
mod sink;
pub mod stats;

pub use payments::SinkFigures;
use payments::*;
pub(crate) use pgbench::with_database;
use pgbench::*;
pub use pgbench::{parse_pgbench_tps, pg_env};
pub use report::{Json, Pgbench, Report};
use stats::*;
pub use stats::{fixed3, milli_rate, percentile, Summary};

async fn preflight(api: &Api) -> anyhow::Result<()> {
    let (status, body) = api
        .call(Method::GET, "/api/payment-intents?limit=1", None, None)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the API at {} ({e}); is `paystream up` running?",
                api.base
            )
        })?;
    match status {
        StatusCode::OK => Ok(()),
        StatusCode::UNAUTHORIZED => bail!(
            "the API at {} refused the key (HTTP 401): pass an admin key with --key or PAYSTREAM_BOOTSTRAP_API_KEY",
            api.base
        ),
        other => bail!(
            "the API at {} answered {} to a list request",
            api.base,
            describe(other, &body)
        ),
    }
}

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let Some(key) = args
        .key
        .clone()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
    else {
        bail!(
            "no API key: pass --key or set PAYSTREAM_BOOTSTRAP_API_KEY (the admin key `paystream up` \
             uses, or the demo key it prints)"
        );
    };
    let base = api_base(&args.api);
    // An https API with a private CA (`paystream up --tls`) is trusted via PAYSTREAM_CA_CERT.
    let http = paystream_shared::tls::client_builder(config.tls.ca_cert.as_deref())?
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        http,
        base: base.clone(),
        key,
        retries: Arc::new(AtomicU64::new(0)),
    };
    preflight(&api).await?;
    if !args.json {
        match args.load() {
            Load::Closed { concurrency } => eprintln!(
                "running {} payments, {concurrency} in flight, observed by {}, against {base} ...",
                args.payments,
                args.observe.as_str()
            ),
            Load::Open { per_second } => eprintln!(
                "starting {per_second} payments/s for {} s (open loop), observed by {}, against {base} ...",
                args.duration.unwrap_or_default(),
                args.observe.as_str()
            ),
        }
    }
    let target = rss::Target {
        database: database_name(config.database_url.expose()),
        nats_port: crate::up::nats_port(&config.nats_url),
    };
    let measured = drive(api, &args, target).await?;
    if let Some(path) = &args.plot {
        plot::write(path, &measured).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut report = Report::from_measured(&base, &args, measured);
    if args.pgbench {
        if !args.json {
            eprintln!("running pgbench for {PGBENCH_SECS} s on a scratch database ...");
        }
        report.pgbench = Some(pgbench(config, args.concurrency).await);
    }
    let json = report.to_json().render();
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 1), Some(7));
        assert_eq!(percentile(&[7], 99), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50), Some(50));
        assert_eq!(percentile(&hundred, 90), Some(90));
        assert_eq!(percentile(&hundred, 99), Some(99));
        assert_eq!(percentile(&hundred, 100), Some(100));
        // Ten values: p50 is the 5th, p90 the 9th, p99 rounds up to the 10th.
        let ten: Vec<u64> = (1..=10).map(|v| v * 10).collect();
        assert_eq!(percentile(&ten, 50), Some(50));
        assert_eq!(percentile(&ten, 90), Some(90));
        assert_eq!(percentile(&ten, 99), Some(100));
        // Three values: ceil(0.5 * 3) = 2nd.
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
    }

    #[test]
    fn summaries_sort_and_are_ordered() {
        let s = Summary::of(vec![900, 100, 500, 300, 700]).unwrap();
        assert_eq!(
            s,
            Summary {
                p50: 500,
                p90: 900,
                p99: 900,
                max: 900
            }
        );
        assert!(Summary::of(Vec::new()).is_none());
        let many: Vec<u64> = (0..1000).rev().collect();
        let s = Summary::of(many).unwrap();
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (499, 899, 989, 999));
    }

    #[test]
    fn fixed_point_rates_and_milliseconds() {
        assert_eq!(fixed3(0), "0.000");
        assert_eq!(fixed3(12_345), "12.345");
        assert_eq!(fixed3(7), "0.007");
        // 5000 payments in 6.25 s is 800 per second.
        assert_eq!(milli_rate(5000, 6_250_000), 800_000);
        // 2 in 3 s: 0.666 (truncated).
        assert_eq!(fixed3(milli_rate(2, 3_000_000)), "0.666");
        assert_eq!(milli_rate(5, 0), 0);
        assert_eq!(
            milli_rate(u64::MAX, 1),
            u128::from(u64::MAX) * 1_000_000_000
        );
    }

    #[test]
    fn json_is_valid_and_has_no_floats_in_the_making() {
        let j = Json::obj([
            ("a", Json::Int(3)),
            ("b", Json::Fixed3(1_500)),
            ("c", Json::Null),
            ("d\"", Json::Str("x\"y".into())),
            ("e", Json::obj([("p50", Json::Fixed3(12))])),
        ]);
        let text = j.render();
        assert_eq!(
            text,
            r#"{"a":3,"b":1.500,"c":null,"d\"":"x\"y","e":{"p50":0.012}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["a"], 3);
        assert_eq!(parsed["d\""], "x\"y");
    }

    #[test]
    fn pgbench_output() {
        let out = "pgbench (15.8)\ntransaction type: <builtin: simple update>\n\
                   number of transactions actually processed: 12345\n\
                   latency average = 5.123 ms\n\
                   initial connection time = 12.3 ms\n\
                   tps = 1234.567890 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out), Some(1_234_567));
        assert_eq!(parse_pgbench_tps("tps = 12.5 (x)"), Some(12_500));
        assert_eq!(parse_pgbench_tps("tps = 99 (x)"), Some(99_000));
        assert_eq!(parse_pgbench_tps("nothing"), None);
        assert_eq!(parse_pgbench_tps("tps = nan"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(api_base("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(api_base("https://api.example/"), "https://api.example");
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/paystream?sslmode=disable",
                "x"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        let env = pg_env(
            "postgres://u%40x:p%2Fw@db.local:6543/app?sslmode=require",
            "s",
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGDATABASE"), Some("s"));
        assert_eq!(get("PGHOST"), Some("db.local"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGUSER"), Some("u@x"));
        assert_eq!(get("PGPASSWORD"), Some("p/w"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        let env = pg_env("postgres://postgres@127.0.0.1/paystream", "s").unwrap();
        assert!(env.contains(&("PGPORT".to_owned(), "5432".to_owned())));
        assert!(!env.iter().any(|(k, _)| k == "PGPASSWORD"));
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    fn intent(status: &str, error: Option<serde_json::Value>) -> IntentSeen {
        IntentSeen {
            id: "pi_1".into(),
            status: status.into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_payment_error: error,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&intent("succeeded", None)), Verdict::Succeeded);
        assert_eq!(verdict(&intent("processing", None)), Verdict::Waiting);
        assert_eq!(
            verdict(&intent("failed", Some(json!({"code": "card_declined"})))),
            Verdict::Failed("ended in failed (card_declined)".into())
        );
        assert_eq!(
            verdict(&intent("requires_action", None)),
            Verdict::Failed("ended in requires_action".into())
        );
    }

    #[test]
    fn the_report_carries_the_contracted_fields() {
        let r = Report {
            api: "http://x".into(),
            payments: 10,
            concurrency: 2,
            observe: Observe::List,
            poll_ms: 5,
            succeeded: 9,
            failures: BTreeMap::from([("confirm: HTTP 409".to_owned(), 1)]),
            wall_us: 2_000_000,
            latency: Some(Summary {
                p50: 1_500,
                p90: 2_000,
                p99: 3_000,
                max: 3_001,
            }),
            recorded: None,
            uncertainty: None,
            create: None,
            confirm: None,
            observer_requests: 4,
            observer_errors: 0,
            retries: 0,
            clock_skewed: 0,
            pgbench: Some(Pgbench::Ran {
                tps_milli: 1_000_500,
                clients: 2,
                requested: 4,
            }),
            rate: Some(5),
            duration_secs: Some(2),
            max_send_lag_us: Some(1_250),
            webhook: Some(Summary {
                p50: 4_000,
                p90: 5_000,
                p99: 6_000,
                max: 7_000,
            }),
            intended: None,
            sink: Some(SinkFigures {
                received: 10,
                invalid_signatures: 0,
                duplicates: 1,
            }),
            timeline: vec![4, 5],
            processes: vec![rss::ProcessFigures {
                name: "paystream-api".into(),
                pid: 7,
                first_kb: 14_000,
                last_kb: 15_000,
                peak_kb: 20_000,
                cpu_ticks: 3,
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json().render()).unwrap();
        assert_eq!(v["payments"], 10);
        assert_eq!(v["concurrency"], 2);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["latencyUs"]["p99"], 3_000);
        assert_eq!(v["observation"]["requestsPerPayment"].to_string(), "0.4");
        assert_eq!(v["failures"]["confirm: HTTP 409"], 1);
        let text = r.to_json().render();
        assert!(
            text.contains(r#""seconds":2.000,"paymentsPerSecond":4.500"#),
            "{text}"
        );
        assert!(text.contains(r#""latencyMs":{"p50":1.500,"p90":2.000,"p99":3.000,"max":3.001}"#));
        assert!(text.contains(r#""pgbenchTps":1000.500"#));
        let table = r.to_table();
        assert!(
            table.contains("4.500 payments/s") && table.contains("1000.500 tps"),
            "{table}"
        );
        assert!(table.contains("failed x1: confirm: HTTP 409"));
        assert!(table.contains("2 clients (of 4: "), "{table}");
        assert_eq!(v["succeededToWebhookMs"]["p99"].to_string(), "6.0");
        assert_eq!(v["load"]["loop"], "open");
        assert_eq!(v["load"]["maxSendLagMs"].to_string(), "1.25");
        assert_eq!(v["webhooks"]["duplicates"], 1);
        assert_eq!(v["throughputPerSecond"], json!([4, 5]));
        assert_eq!(v["processes"]["paystream-api"]["peakRssKb"], 20_000);
        // 3 ticks of 10 ms over 9 payments.
        assert_eq!(
            v["processes"]["paystream-api"]["cpuMsPerPayment"].to_string(),
            "3.333"
        );
        assert!(table.contains("5/s for 2 s, open loop"), "{table}");
        assert!(table.contains("updatedAt -> webhook received"), "{table}");
        assert!(table.contains("1 duplicates"), "{table}");
    }
}
