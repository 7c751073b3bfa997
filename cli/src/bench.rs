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
    /// One observer pages the list of succeeded intents of this run (batched looks).
    List,
    /// Every payment polls its own intent.
    Get,
}

impl Observe {
    fn as_str(self) -> &'static str {
        match self {
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
    #[arg(long, value_enum, default_value = "list")]
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

// ---------------------------------------------------------------------------------------------
// Integer statistics and fixed-point output.

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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A small JSON tree whose numbers are integers or fixed-point decimals, so the output needs
/// no float anywhere. Strings go through serde_json for escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Int(u128),
    /// Thousandths, printed with three decimals.
    Fixed3(u128),
    Str(String),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Fixed3(n) => out.push_str(&fixed3(*n)),
            Json::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Milliseconds with three decimals from microsecond percentiles (`latencyMs` and friends).
fn summary_ms(s: Option<Summary>) -> Json {
    match s {
        None => Json::Null,
        Some(s) => Json::obj([
            ("p50", Json::Fixed3(s.p50.into())),
            ("p90", Json::Fixed3(s.p90.into())),
            ("p99", Json::Fixed3(s.p99.into())),
            ("max", Json::Fixed3(s.max.into())),
        ]),
    }
}

/// The same percentiles as integer microseconds, for readers that want no decimals at all.
fn summary_us(s: Option<Summary>) -> Json {
    match s {
        None => Json::Null,
        Some(s) => Json::obj([
            ("p50", Json::Int(s.p50.into())),
            ("p90", Json::Int(s.p90.into())),
            ("p99", Json::Int(s.p99.into())),
            ("max", Json::Int(s.max.into())),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// `http://` in front of a bare host:port (PAYSTREAM_API_ADDR's form), no trailing slash.
pub fn api_base(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    retries: Arc<AtomicU64>,
}

/// The fields of a payment intent the bench reads; serde skips the rest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntentSeen {
    id: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_payment_error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    data: Vec<IntentSeen>,
    has_more: bool,
}

/// "HTTP 409 invalid_state_transition" from an answer, for failure reasons.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {} {code}", status.as_u16()).trim().to_owned()
}

/// A transport failure without its URL (which names an intent, so every failure would count
/// on its own) and with its causes ("connection refused" is in a source, not the message).
fn transport_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Api {
    /// One request, retried on transient failures when repeating it is safe: always for GET,
    /// for POST only with an Idempotency-Key or when no connection was made.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let repeatable = method == Method::GET || idempotency_key.is_some();
        let mut attempt = 0;
        loop {
            let mut rb = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.key);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(k) = idempotency_key {
                rb = rb.header("Idempotency-Key", k);
            }
            let result = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.bytes().await.map(|b| (status, b.to_vec()))
                }
                Err(e) => Err(e),
            };
            let transient = match &result {
                Ok((s, _)) => {
                    repeatable && (s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS)
                }
                Err(e) => repeatable || e.is_connect(),
            };
            if transient && attempt < MAX_RETRIES {
                attempt += 1;
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25) * 2u32.pow(attempt)).await;
                continue;
            }
            return result.map_err(|e| format!("{method} {}", transport_error(e)));
        }
    }

    async fn get_intent(&self, id: &str) -> Result<IntentSeen, String> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/payment-intents/{id}"),
                None,
                None,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("GET payment intent: {}", describe(status, &body)));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("GET payment intent: unreadable answer: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What a look at one intent says.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Succeeded,
    Waiting,
    Failed(String),
}

fn verdict(pi: &IntentSeen) -> Verdict {
    match pi.status.as_str() {
        "succeeded" => Verdict::Succeeded,
        // Still on its way (a look may even precede the confirm's commit).
        "processing" | "requires_confirmation" => Verdict::Waiting,
        other => {
            let code = pi
                .last_payment_error
                .as_ref()
                .and_then(|e| e["code"].as_str())
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            Verdict::Failed(format!("ended in {other}{code}"))
        }
    }
}

/// How a payment's wait ended, as the watcher saw it.
#[derive(Debug)]
enum Seen {
    /// Seen `succeeded` in an answer that arrived at `at`; the previous look, sent at
    /// `window_start`, had not seen it yet.
    Succeeded {
        at: Instant,
        window_start: Instant,
        updated_at: DateTime<Utc>,
    },
    Failed(String),
}

/// A confirmed payment the list observer is watching for.
struct Waiting {
    block: u64,
    created_at: DateTime<Utc>,
    sent: Instant,
    /// When the latest look that did not see it succeeded was sent.
    last_look: Instant,
    /// When the observer may check it on its own again (stragglers only).
    next_check: Instant,
    tx: oneshot::Sender<Seen>,
}

struct Run {
    api: Api,
    /// With the block number, every intent's `customerId`: the list pages hold this run's
    /// intents only, and a block's at most [`BLOCK`].
    run_id: String,
    payments: u64,
    observe: Observe,
    poll: Duration,
    timeout: Duration,
    idempotency: bool,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// How many of this run's intents each block created at each instant, from the oldest
    /// block still waiting: sizes the list pages to what can lie above a block's horizon.
    created: Mutex<BTreeMap<(u64, DateTime<Utc>), u64>>,
    wake: Notify,
    observer_requests: AtomicU64,
    observer_errors: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

/// One payment's measurements (microseconds).
#[derive(Debug)]
struct Outcome {
    create_us: u64,
    confirm_us: Option<u64>,
    result: Result<Done, String>,
}

#[derive(Debug)]
struct Done {
    observed_us: u64,
    uncertainty_us: u64,
    /// To the worker's `updatedAt`; `None` when that lies before the confirm was sent, which
    /// only happens when the bench's clock and the stack's disagree.
    recorded_us: Option<u64>,
}

impl Run {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters here (every edit is one insert or remove), so a poisoned lock is still usable.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn created(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, DateTime<Utc>), u64>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, pi: &IntentSeen, block: u64, sent: Instant) -> oneshot::Receiver<Seen> {
        *self.created().entry((block, pi.created_at)).or_insert(0) += 1;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            pi.id.clone(),
            Waiting {
                block,
                created_at: pi.created_at,
                sent,
                last_look: sent,
                next_check: sent,
                tx,
            },
        );
        // A stored permit if the observer is busy, so no registration is ever missed.
        self.wake.notify_one();
        rx
    }

    /// An intent is a straggler once it waited this long: four times the mean latency so far,
    /// and at least [`STRAGGLER_AFTER`].
    fn straggler_after(&self) -> Duration {
        let count = self.latency_count.load(Ordering::Relaxed);
        let mean = self
            .latency_sum_us
            .load(Ordering::Relaxed)
            .checked_div(count)
            .unwrap_or(0);
        STRAGGLER_AFTER.max(Duration::from_micros(mean.saturating_mul(4)))
    }

    async fn one_payment(&self, i: u64) -> Outcome {
        let key = |what: &str| {
            self.idempotency
                .then(|| format!("{}-{i}-{what}", self.run_id))
        };
        let block = i / BLOCK;
        let body = json!({
            "amount": 1000 + i % 1000,
            "currency": "usd",
            "customerId": format!("{}_{block}", self.run_id),
            "paymentMethodId": "pm_card_visa",
        });
        let started = Instant::now();
        let created = self
            .api
            .call(
                Method::POST,
                "/api/payment-intents",
                Some(&body),
                key("create").as_deref(),
            )
            .await;
        let create_us = micros(started.elapsed());
        let failed = |reason: String, confirm_us: Option<u64>| Outcome {
            create_us,
            confirm_us,
            result: Err(reason),
        };
        let intent: IntentSeen = match created {
            // 200 is an idempotent replay of our own create after a retry.
            Ok((s, b)) if s == StatusCode::CREATED || s == StatusCode::OK => {
                match serde_json::from_slice(&b) {
                    Ok(pi) => pi,
                    Err(e) => return failed(format!("create: unreadable answer: {e}"), None),
                }
            }
            Ok((s, b)) => return failed(format!("create: {}", describe(s, &b)), None),
            Err(e) => return failed(format!("create: {e}"), None),
        };

        let sent = Instant::now();
        let sent_wall = Utc::now();
        // Registered before the confirm goes out: the worker may finish before the 202 is back.
        let rx = (self.observe == Observe::List).then(|| self.register(&intent, block, sent));
        let confirmed = self
            .api
            .call(
                Method::POST,
                &format!("/api/payment-intents/{}/confirm", intent.id),
                Some(&json!({})),
                key("confirm").as_deref(),
            )
            .await;
        let confirm_us = micros(sent.elapsed());
        let problem = match confirmed {
            Ok((s, _)) if s == StatusCode::ACCEPTED || s == StatusCode::OK => None,
            Ok((s, b)) => Some(describe(s, &b)),
            Err(e) => Some(e),
        };
        if let Some(p) = problem {
            self.lock().remove(&intent.id);
            return failed(format!("confirm: {p}"), Some(confirm_us));
        }

        let seen = match rx {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Seen::Failed("the observer stopped".to_owned())),
            None => self.poll_one(&intent.id, sent).await,
        };
        match seen {
            Seen::Succeeded {
                at,
                window_start,
                updated_at,
            } => {
                let observed_us = micros(at.saturating_duration_since(sent));
                self.latency_sum_us
                    .fetch_add(observed_us, Ordering::Relaxed);
                self.latency_count.fetch_add(1, Ordering::Relaxed);
                let recorded_us = (updated_at - sent_wall)
                    .num_microseconds()
                    .and_then(|us| u64::try_from(us).ok());
                Outcome {
                    create_us,
                    confirm_us: Some(confirm_us),
                    result: Ok(Done {
                        observed_us,
                        uncertainty_us: micros(at.saturating_duration_since(window_start)),
                        recorded_us,
                    }),
                }
            }
            Seen::Failed(reason) => failed(reason, Some(confirm_us)),
        }
    }

    /// `--observe get`: look at this one intent until it is final, 5 ms doubling to 50 ms.
    async fn poll_one(&self, id: &str, sent: Instant) -> Seen {
        let mut wait = GET_FIRST;
        let mut last_look = sent;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(GET_MAX);
            let look = Instant::now();
            self.observer_requests.fetch_add(1, Ordering::Relaxed);
            let pi = match self.api.get_intent(id).await {
                Ok(pi) => pi,
                Err(e) => return Seen::Failed(e),
            };
            match verdict(&pi) {
                Verdict::Succeeded => {
                    return Seen::Succeeded {
                        at: Instant::now(),
                        window_start: last_look,
                        updated_at: pi.updated_at,
                    }
                }
                Verdict::Failed(reason) => return Seen::Failed(reason),
                Verdict::Waiting => {}
            }
            last_look = look;
            if sent.elapsed() > self.timeout {
                return Seen::Failed(format!(
                    "still {} {} s after its confirm",
                    pi.status,
                    self.timeout.as_secs()
                ));
            }
        }
    }

    /// `--observe list`: until `done`, every `poll` while anything waits, page through this
    /// run's succeeded intents down to the oldest one waiting, then check stragglers singly.
    async fn observe_list(&self, done: CancellationToken) {
        loop {
            while self.lock().is_empty() {
                if done.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = done.cancelled() => {}
                }
            }
            let cycle = Instant::now();
            let straggle = self.straggler_after();
            let young = |w: &Waiting| cycle.saturating_duration_since(w.sent) < straggle;
            // Per block, the oldest young intent waiting: pages need go no further down.
            let (horizons, oldest_block) = {
                let waiting = self.lock();
                let mut horizons: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
                for w in waiting.values().filter(|w| young(w)) {
                    let h = horizons.entry(w.block).or_insert(w.created_at);
                    *h = (*h).min(w.created_at);
                }
                (horizons, waiting.values().map(|w| w.block).min())
            };
            if let Some(oldest) = oldest_block {
                // Earlier blocks are settled and are never paged again.
                let mut created = self.created();
                *created = created.split_off(&(oldest, DateTime::<Utc>::MIN_UTC));
            }
            // The blocks are looked at concurrently, so a cycle takes one request's time.
            let looks = horizons.into_iter().map(|(block, horizon)| {
                // At most this many succeeded intents of the block lie at or above its horizon,
                // so one page of this size reaches it: no row is sent twice in a cycle.
                let window: u64 = self
                    .created()
                    .range((block, horizon)..=(block, DateTime::<Utc>::MAX_UTC))
                    .map(|(_, n)| n)
                    .sum();
                let limit = usize::try_from(window).unwrap_or(PAGE).clamp(1, PAGE);
                async move { (block, self.page_down_to(block, horizon, limit).await) }
            });
            let looked: Vec<u64> = futures::future::join_all(looks)
                .await
                .into_iter()
                .filter_map(|(block, complete)| complete.then_some(block))
                .collect();
            // Every young intent of those blocks that waited when the cycle began was in range
            // of a page and not yet succeeded as of a snapshot taken after `cycle`.
            for w in self.lock().values_mut() {
                if w.sent <= cycle && young(w) && looked.contains(&w.block) {
                    w.last_look = w.last_look.max(cycle);
                }
            }
            self.check_stragglers(straggle).await;
            tokio::time::sleep_until((cycle + self.poll).into()).await;
        }
    }

    /// Pages a block newest first until a page ends below `horizon`. Returns whether it got
    /// there.
    async fn page_down_to(&self, block: u64, horizon: DateTime<Utc>, limit: usize) -> bool {
        let mut cursor: Option<String> = None;
        loop {
            let after = cursor
                .as_deref()
                .map(|c| format!("&startingAfter={c}"))
                .unwrap_or_default();
            let path = format!(
                "/api/payment-intents?customerId={}_{block}&status=succeeded&limit={limit}{after}",
                self.run_id
            );
            self.observer_requests.fetch_add(1, Ordering::Relaxed);
            let page = match self.api.call(Method::GET, &path, None, None).await {
                Ok((StatusCode::OK, body)) => serde_json::from_slice::<Page>(&body).ok(),
                _ => None,
            };
            let at = Instant::now();
            let Some(page) = page else {
                self.observer_errors.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            {
                let mut waiting = self.lock();
                for pi in &page.data {
                    if let Some(w) = waiting.remove(&pi.id) {
                        let _ = w.tx.send(Seen::Succeeded {
                            at,
                            window_start: w.last_look,
                            updated_at: pi.updated_at,
                        });
                    }
                }
            }
            // Equal timestamps may straddle pages, so only a strictly older last entry stops.
            match page.data.last() {
                Some(last) if page.has_more && last.created_at >= horizon => {
                    cursor = Some(last.id.clone());
                }
                _ => return true,
            }
        }
    }

    /// Times out what waited too long, and looks one by one at intents that wait far longer
    /// than usual: they may have failed (never in the succeeded list), and keeping them out of
    /// the horizon keeps the pages few.
    async fn check_stragglers(&self, straggle: Duration) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut waiting = self.lock();
            let expired: Vec<String> = waiting
                .iter()
                .filter(|(_, w)| now.saturating_duration_since(w.sent) > self.timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(w) = waiting.remove(&id) {
                    let _ = w.tx.send(Seen::Failed(format!(
                        "not succeeded {} s after its confirm",
                        self.timeout.as_secs()
                    )));
                }
            }
            for (id, w) in waiting.iter_mut() {
                if now.saturating_duration_since(w.sent) >= straggle && now >= w.next_check {
                    w.next_check = now + STRAGGLER_RECHECK;
                    due.push(id.clone());
                }
            }
        }
        if due.is_empty() {
            return;
        }
        futures::stream::iter(due)
            .map(|id| async move {
                self.observer_requests.fetch_add(1, Ordering::Relaxed);
                let look = Instant::now();
                let result = self.api.get_intent(&id).await;
                (id, look, result)
            })
            .buffer_unordered(STRAGGLER_PARALLEL)
            .for_each(|(id, look, result)| {
                let mut waiting = self.lock();
                match result.as_ref().map(verdict) {
                    Ok(Verdict::Waiting) => {
                        if let Some(w) = waiting.get_mut(&id) {
                            w.last_look = w.last_look.max(look);
                        }
                    }
                    Ok(Verdict::Succeeded) => {
                        if let (Some(w), Ok(pi)) = (waiting.remove(&id), &result) {
                            let _ = w.tx.send(Seen::Succeeded {
                                at: Instant::now(),
                                window_start: w.last_look,
                                updated_at: pi.updated_at,
                            });
                        }
                    }
                    Ok(Verdict::Failed(reason)) => {
                        if let Some(w) = waiting.remove(&id) {
                            let _ = w.tx.send(Seen::Failed(reason));
                        }
                    }
                    // Looked at again after STRAGGLER_RECHECK, or timed out.
                    Err(_) => {
                        self.observer_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                futures::future::ready(())
            })
            .await;
    }
}

/// What a whole run measured.
struct Measured {
    outcomes: Vec<Outcome>,
    wall: Duration,
    observer_requests: u64,
    observer_errors: u64,
    retries: u64,
}

async fn drive(api: Api, args: &BenchArgs) -> Measured {
    let run = Arc::new(Run {
        api: api.clone(),
        run_id: format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        payments: args.payments,
        observe: args.observe,
        poll: Duration::from_millis(args.poll_ms),
        timeout: Duration::from_secs(args.timeout_secs),
        idempotency: !args.no_idempotency_keys,
        next: AtomicU64::new(0),
        waiting: Mutex::new(HashMap::new()),
        created: Mutex::new(BTreeMap::new()),
        wake: Notify::new(),
        observer_requests: AtomicU64::new(0),
        observer_errors: AtomicU64::new(0),
        latency_sum_us: AtomicU64::new(0),
        latency_count: AtomicU64::new(0),
    });
    let done = CancellationToken::new();
    let observer = (args.observe == Observe::List).then(|| {
        let (run, done) = (run.clone(), done.clone());
        tokio::spawn(async move { run.observe_list(done).await })
    });
    let started = Instant::now();
    let slots: Vec<_> = (0..args.concurrency.min(args.payments))
        .map(|_| {
            let run = run.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let i = run.next.fetch_add(1, Ordering::Relaxed);
                    if i >= run.payments {
                        break;
                    }
                    outcomes.push(run.one_payment(i).await);
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for slot in slots {
        match slot.await {
            Ok(mut o) => outcomes.append(&mut o),
            Err(e) => eprintln!("a bench task failed: {e}"),
        }
    }
    let wall = started.elapsed();
    done.cancel();
    if let Some(observer) = observer {
        let _ = observer.await;
    }
    Measured {
        outcomes,
        wall,
        observer_requests: run.observer_requests.load(Ordering::Relaxed),
        observer_errors: run.observer_errors.load(Ordering::Relaxed),
        retries: api.retries.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pgbench {
    /// `clients` is below `requested` when the server had fewer free connection slots.
    Ran {
        tps_milli: u128,
        clients: u64,
        requested: u64,
    },
    Skipped(String),
}

#[derive(Debug)]
pub struct Report {
    pub api: String,
    pub payments: u64,
    pub concurrency: u64,
    pub observe: Observe,
    pub poll_ms: u64,
    pub succeeded: u64,
    pub failures: BTreeMap<String, u64>,
    pub wall_us: u64,
    pub latency: Option<Summary>,
    pub recorded: Option<Summary>,
    pub uncertainty: Option<Summary>,
    pub create: Option<Summary>,
    pub confirm: Option<Summary>,
    pub observer_requests: u64,
    pub observer_errors: u64,
    pub retries: u64,
    pub clock_skewed: u64,
    pub pgbench: Option<Pgbench>,
}

impl Report {
    fn from_measured(api: &str, args: &BenchArgs, m: Measured) -> Report {
        let mut failures = BTreeMap::new();
        let (mut latency, mut recorded, mut uncertainty, mut create, mut confirm) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut clock_skewed = 0;
        for o in &m.outcomes {
            create.push(o.create_us);
            confirm.extend(o.confirm_us);
            match &o.result {
                Ok(d) => {
                    latency.push(d.observed_us);
                    uncertainty.push(d.uncertainty_us);
                    match d.recorded_us {
                        Some(r) => recorded.push(r),
                        None => clock_skewed += 1,
                    }
                }
                Err(reason) => *failures.entry(reason.clone()).or_insert(0) += 1,
            }
        }
        let succeeded = u64::try_from(latency.len()).unwrap_or(u64::MAX);
        let accounted = u64::try_from(m.outcomes.len()).unwrap_or(u64::MAX);
        if accounted < args.payments {
            failures.insert(
                "lost with a failed bench task".to_owned(),
                args.payments - accounted,
            );
        }
        Report {
            api: api.to_owned(),
            payments: args.payments,
            concurrency: args.concurrency,
            observe: args.observe,
            poll_ms: args.poll_ms,
            succeeded,
            failures,
            wall_us: micros(m.wall),
            latency: Summary::of(latency),
            recorded: Summary::of(recorded),
            uncertainty: Summary::of(uncertainty),
            create: Summary::of(create),
            confirm: Summary::of(confirm),
            observer_requests: m.observer_requests,
            observer_errors: m.observer_errors,
            retries: m.retries,
            clock_skewed,
            pgbench: None,
        }
    }

    pub fn failed(&self) -> u64 {
        self.payments.saturating_sub(self.succeeded)
    }

    fn milli_per_second(&self) -> u128 {
        milli_rate(self.succeeded, self.wall_us)
    }

    fn poll_description(&self) -> String {
        match self.observe {
            Observe::List => format!("list pages every {} ms", self.poll_ms),
            Observe::Get => "a GET per payment every 5-50 ms".to_owned(),
        }
    }

    pub fn to_json(&self) -> Json {
        let (pgbench_tps, pgbench_clients) = match &self.pgbench {
            Some(Pgbench::Ran {
                tps_milli, clients, ..
            }) => (Json::Fixed3(*tps_milli), Json::Int((*clients).into())),
            _ => (Json::Null, Json::Null),
        };
        let per_payment = (u128::from(self.observer_requests) * 1000)
            .checked_div(u128::from(self.payments))
            .unwrap_or(0);
        Json::obj([
            ("payments", Json::Int(self.payments.into())),
            ("concurrency", Json::Int(self.concurrency.into())),
            ("seconds", Json::Fixed3((self.wall_us / 1000).into())),
            ("paymentsPerSecond", Json::Fixed3(self.milli_per_second())),
            ("latencyMs", summary_ms(self.latency)),
            ("failed", Json::Int(self.failed().into())),
            ("pgbenchTps", pgbench_tps),
            ("pgbenchClients", pgbench_clients),
            ("succeeded", Json::Int(self.succeeded.into())),
            ("latencyUs", summary_us(self.latency)),
            ("recordedLatencyMs", summary_ms(self.recorded)),
            ("createMs", summary_ms(self.create)),
            ("confirmMs", summary_ms(self.confirm)),
            (
                "observation",
                Json::obj([
                    ("method", Json::Str(self.observe.as_str().to_owned())),
                    ("pollMs", Json::Int(self.poll_ms.into())),
                    ("requests", Json::Int(self.observer_requests.into())),
                    ("requestsPerPayment", Json::Fixed3(per_payment)),
                    ("errors", Json::Int(self.observer_errors.into())),
                    ("uncertaintyMs", summary_ms(self.uncertainty)),
                ]),
            ),
            ("retries", Json::Int(self.retries.into())),
            ("clockSkewed", Json::Int(self.clock_skewed.into())),
            (
                "failures",
                Json::Obj(
                    self.failures
                        .iter()
                        .map(|(k, v)| (k.clone(), Json::Int((*v).into())))
                        .collect(),
                ),
            ),
        ])
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "paystream bench: {} payments, {} in flight, against {}",
                self.payments, self.concurrency, self.api
            ),
        );
        line(
            &mut out,
            format!(
                "  succeeded {}, failed {}, in {} s: {} payments/s",
                self.succeeded,
                self.failed(),
                fixed3((self.wall_us / 1000).into()),
                fixed3(self.milli_per_second())
            ),
        );
        line(
            &mut out,
            format!(
                "  {:<38} {:>10} {:>10} {:>10} {:>10}",
                "latency (ms)", "p50", "p90", "p99", "max"
            ),
        );
        for (name, s) in [
            ("confirm sent -> succeeded seen", self.latency),
            ("confirm sent -> worker's updatedAt", self.recorded),
            ("create request", self.create),
            ("confirm request (202)", self.confirm),
            ("observation window (error bound)", self.uncertainty),
        ] {
            let cells = match s {
                Some(s) => [s.p50, s.p90, s.p99, s.max].map(|v| fixed3(v.into())),
                None => ["-"; 4].map(str::to_owned),
            };
            line(
                &mut out,
                format!(
                    "  {:<38} {:>10} {:>10} {:>10} {:>10}",
                    name, cells[0], cells[1], cells[2], cells[3]
                ),
            );
        }
        let per_payment = (u128::from(self.observer_requests) * 1000)
            .checked_div(u128::from(self.payments))
            .unwrap_or(0);
        line(
            &mut out,
            format!(
                "  observed by {}: {} requests ({} per payment), {} errors; {} retried requests",
                self.poll_description(),
                self.observer_requests,
                fixed3(per_payment),
                self.observer_errors,
                self.retries
            ),
        );
        line(
            &mut out,
            "  (seen is an upper bound, late by at most the observation window; updatedAt is a \
             lower bound, stamped before the worker's commit)"
                .to_owned(),
        );
        if self.clock_skewed > 0 {
            line(
                &mut out,
                format!(
                    "  {} updatedAt stamps precede their confirm: the stack's clock differs from this one",
                    self.clock_skewed
                ),
            );
        }
        match &self.pgbench {
            Some(Pgbench::Ran {
                tps_milli,
                clients,
                requested,
            }) => {
                let capped = if clients < requested {
                    format!(" (of {requested}: the other connection slots are in use)")
                } else {
                    String::new()
                };
                line(
                    &mut out,
                    format!(
                        "  PostgreSQL ceiling: pgbench -N, {clients} clients{capped}, {PGBENCH_SECS} s: {} tps",
                        fixed3(*tps_milli)
                    ),
                );
            }
            Some(Pgbench::Skipped(why)) => line(&mut out, format!("  pgbench not run: {why}")),
            None => {}
        }
        for (reason, count) in &self.failures {
            line(&mut out, format!("  failed x{count}: {reason}"));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// pgbench.

/// The thousandths in pgbench's `tps = 1234.567890 (without initial connection time)`.
pub fn parse_pgbench_tps(output: &str) -> Option<u128> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tps = "))?;
    let number = line.strip_prefix("tps = ")?.split_whitespace().next()?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = whole.parse().ok()?;
    let mut milli = 0u128;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(3)
        .enumerate()
    {
        let d = u128::from(c.to_digit(10)?);
        milli += d * 10u128.pow(2 - u32::try_from(i).ok()?);
    }
    Some(whole * 1000 + milli)
}

fn find_pgbench() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian keeps the client tools of each server version under /usr/lib/postgresql/<v>/bin.
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.reverse();
    std::env::split_paths(&path)
        .chain(debian)
        .map(|d| d.join("pgbench"))
        .find(|p| p.is_file())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq environment for `database` on the server of `database_url`. Passed through the
/// environment rather than the command line, where a password would show in the process list.
pub fn pg_env(database_url: &str, database: &str) -> anyhow::Result<Vec<(String, String)>> {
    let url = reqwest::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    let mut env = vec![("PGDATABASE".to_owned(), database.to_owned())];
    if let Some(host) = url.host_str() {
        env.push((
            "PGHOST".to_owned(),
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        ));
    }
    env.push(("PGPORT".to_owned(), url.port().unwrap_or(5432).to_string()));
    if !url.username().is_empty() {
        env.push(("PGUSER".to_owned(), percent_decode(url.username())));
    }
    if let Some(p) = url.password() {
        env.push(("PGPASSWORD".to_owned(), percent_decode(p)));
    }
    for (k, v) in url.query_pairs() {
        if k == "sslmode" {
            env.push(("PGSSLMODE".to_owned(), v.into_owned()));
        }
    }
    Ok(env)
}

/// `database_url` pointing at another database of the same server.
fn with_database(database_url: &str, database: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Runs `pgbench -i`, then `pgbench -n -N -c C -j 2 -T 10` on a scratch database, which is
/// dropped afterwards whatever happened.
async fn pgbench(config: &Config, concurrency: u64) -> Pgbench {
    let Some(bin) = find_pgbench() else {
        return Pgbench::Skipped(
            "no pgbench on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql-client)"
                .to_owned(),
        );
    };
    let server = config.database_url.expose();
    let outcome = match pgbench_on(&bin, server, concurrency).await {
        Ok(p) => p,
        Err(e) => Pgbench::Skipped(format!("{e:#}")),
    };
    let dropped = async {
        let admin = paystream_shared::db::connect(&with_database(server, "postgres")?, 1).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {PGBENCH_DB} WITH (FORCE)"
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("could not drop the scratch database {PGBENCH_DB}: {e:#}");
    }
    outcome
}

async fn pgbench_on(bin: &Path, server: &str, concurrency: u64) -> anyhow::Result<Pgbench> {
    let url = with_database(server, PGBENCH_DB)?;
    paystream_shared::db::ensure_database(&url).await?;
    // pgbench opens one connection per client; leave the server a few for everyone else.
    let pool = paystream_shared::db::connect(&url, 1).await?;
    let headroom: i64 = sqlx::query_scalar(
        "SELECT current_setting('max_connections')::int8
              - current_setting('superuser_reserved_connections')::int8
              - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let cap = u64::try_from(headroom.saturating_sub(4))
        .unwrap_or(1)
        .max(1);
    let clients = concurrency.min(cap);
    let env = pg_env(server, PGBENCH_DB)?;

    let init = tokio::process::Command::new(bin)
        .args(["-i", "-q"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let run = tokio::process::Command::new(bin)
        .args(["-n", "-N"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(PGBENCH_SECS.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    match parse_pgbench_tps(&stdout) {
        Some(tps_milli) if run.status.success() => Ok(Pgbench::Ran {
            tps_milli,
            clients,
            requested: concurrency,
        }),
        _ => bail!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&run.stderr).trim()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The command.

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
    let http = reqwest::Client::builder()
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
        eprintln!(
            "running {} payments, {} in flight, against {base} ...",
            args.payments, args.concurrency
        );
    }
    let measured = drive(api, &args).await;
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
    }
}
