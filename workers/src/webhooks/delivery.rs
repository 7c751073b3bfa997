//! The delivery step: sign one event and POST it to one endpoint, record the attempt, and
//! decide what happens next.
//!
//! The attempt count lives in the delivery row and is claimed before the HTTP call, so it is
//! exact across redeliveries and worker crashes; JetStream's own delivery count (which also
//! counts the naks of a saturated endpoint) decides nothing. Retries are naks with the
//! contract's delay, so no worker sleeps on a message. Which command may act on a row is
//! decided by `cycle_message_id` (see the migration):
//!
//! - `pending`, command of the current cycle: attempt it.
//! - `pending`, any other command (an older cycle's, or a dead letter replayed after the API
//!   already redelivered): ack and drop it; the current cycle's command does the work.
//! - `succeeded`: ack; it was delivered.
//! - `failed`, the command that failed it (a stale redelivery): ack.
//! - `failed`, another command: a dead letter replayed by the operator. It starts a new cycle
//!   with a fresh budget of attempts, and drives it from now on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::audit::Actor;
use paystream_shared::domain::webhook::{
    is_forbidden_ip, signature_header, DeliveryStatus, ResponseClass, WebhookSecret, WebhookUrl,
};
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::webhooks::{
    self as store, AttemptRecord, Claim, DeliveryWork, Recorded,
};
use paystream_shared::store::StoreError;
use paystream_shared::telemetry::scrub;
use paystream_shared::webhooks::queue::WebhookCommand;
use paystream_shared::webhooks::secret_box::SecretBox;
use paystream_shared::webhooks::views::WebhookPayload;

use super::batch::{BatchFn, Coalescer};
use super::limiter::EndpointLimiter;
use super::resolver::{BlockedAddress, GuardedResolver};
use super::WORKER;

/// The longest `Retry-After` we honour: an endpoint asking for days would otherwise park the
/// delivery (and its message) far beyond any useful time.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an answer's body we read (so the connection can be reused); the rest is dropped.
const MAX_BODY_READ: usize = 16 * 1024;
/// How early a command may come back before the row's `next_retry_at` and still be attempted.
const EARLY_SLACK: Duration = Duration::from_millis(50);

/// How the step is tuned. The defaults are what the webhook-worker runs with.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// One attempt's whole budget: connect, send, answer (docs/webhooks.md: 10 s).
    pub timeout: Duration,
    pub allow_private: bool,
    /// In-flight deliveries per subscription in one process.
    pub per_endpoint: usize,
    /// The nak delay for a delivery whose endpoint is at its bound: between this and twice it.
    pub saturation_delay: Duration,
    /// The most deliveries one statement loads, claims or records.
    pub max_batch: usize,
}

/// Batches of one kind in PostgreSQL at once: one runs while the next fills up.
const RUNNERS: usize = 2;

/// PostgreSQL's deadlock (40P01) and serialization (40001) failures: two batches touched the
/// same rows in another order (two copies of one command). Worth one immediate retry.
fn is_lock_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// A batch function over `pool` from a store function, retried once on a lock conflict.
fn batch_fn<Q, R, F, Fut>(pool: PgPool, f: F) -> BatchFn<Q, R>
where
    Q: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(PgPool, Arc<Vec<Q>>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
{
    Arc::new(move |requests: Vec<Q>| {
        let pool = pool.clone();
        let requests = Arc::new(requests);
        Box::pin(async move {
            match f(pool.clone(), requests.clone()).await {
                Err(e) if is_lock_conflict(&e) => f(pool, requests).await,
                other => other,
            }
            .map_err(|e| e.to_string())
        })
    })
}

pub struct Deliverer {
    pool: PgPool,
    /// The three statements of every attempt, each shared by all deliveries waiting for it.
    loads: Coalescer<String, Option<DeliveryWork>>,
    claims: Coalescer<Claim, Option<i32>>,
    records: Coalescer<Recorded, bool>,
    http: reqwest::Client,
    secrets: SecretBox,
    schedule: RetrySchedule,
    limiter: EndpointLimiter,
    options: DeliveryOptions,
}

/// What one HTTP attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Timeout, refused or reset connection, TLS failure, DNS failure: worth retrying.
    Transport(String),
    /// The endpoint resolves (or is written as) an address we may not connect to.
    Blocked(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    RetryIn(Duration),
    /// Final failure: the delivery is `failed` and its command goes to the dead letters.
    Fail(String),
    /// 410 Gone: like `Fail`, and the subscription is disabled.
    Gone,
}

/// The contract's rules for one attempt's result. `attempt` is 1-based.
pub fn decide(result: &SendResult, attempt: u32, schedule: &RetrySchedule) -> Verdict {
    let retry = |what: String, retry_after: Option<Duration>| {
        if attempt >= schedule.max_attempts() {
            return Verdict::Fail(format!("{what}; gave up after {attempt} attempts"));
        }
        let backoff = schedule.delay_for_attempt(attempt);
        let delay = match retry_after {
            Some(asked) if asked > backoff => asked.min(MAX_RETRY_AFTER),
            _ => backoff,
        };
        Verdict::RetryIn(delay)
    };
    match result {
        SendResult::Answered {
            status,
            retry_after,
        } => match ResponseClass::of(*status) {
            ResponseClass::Success => Verdict::Delivered,
            ResponseClass::Gone => Verdict::Gone,
            ResponseClass::Final => Verdict::Fail(format!("HTTP {status}: not retried")),
            ResponseClass::Retry => {
                // Retry-After is honoured on 429 and 503, where it is meant.
                let honoured = if matches!(status, 429 | 503) {
                    *retry_after
                } else {
                    None
                };
                retry(format!("HTTP {status}"), honoured)
            }
        },
        SendResult::Transport(e) => retry(e.clone(), None),
        SendResult::Blocked(e) => Verdict::Fail(e.clone()),
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

/// The reqwest client deliveries use: the attempt timeout, no redirects (a 3xx is a final
/// answer, and following one could lead anywhere), no proxy from the environment (the
/// resolver must see the endpoint's own host), and the guarded resolver.
pub fn http_client(options: &DeliveryOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver::new(
            options.allow_private,
        )))
        .pool_max_idle_per_host(options.per_endpoint)
        .user_agent(concat!("paystream-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The error text of a failed request, down its source chain, without the URL (the
/// delivery row names the URL already) and scrubbed like a log line.
fn describe(err: &reqwest::Error) -> String {
    let mut out = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    let mut out = scrub(&out);
    out.truncate(500);
    out
}

fn blocked_in(err: &reqwest::Error) -> Option<BlockedAddress> {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BlockedAddress>() {
            return Some(b.clone());
        }
        source = s.source();
    }
    None
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

impl Deliverer {
    pub fn new(
        pool: PgPool,
        secrets: SecretBox,
        schedule: RetrySchedule,
        options: DeliveryOptions,
    ) -> Result<Self, reqwest::Error> {
        let max = options.max_batch;
        let loads = Coalescer::start(
            RUNNERS,
            max,
            batch_fn(pool.clone(), |pool, ids: Arc<Vec<String>>| async move {
                let found: HashMap<String, DeliveryWork> = store::load_work_many(&pool, &ids)
                    .await?
                    .into_iter()
                    .map(|w| (w.id.clone(), w))
                    .collect();
                // A delivery asked for twice (two copies of its command) gets its row twice.
                Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
            }),
        );
        let claims = Coalescer::start(
            RUNNERS,
            max,
            batch_fn(pool.clone(), |pool, claims: Arc<Vec<Claim>>| async move {
                store::claim_attempts(&pool, &claims).await
            }),
        );
        let records = Coalescer::start(
            RUNNERS,
            max,
            batch_fn(pool.clone(), |pool, done: Arc<Vec<Recorded>>| async move {
                store::record_attempts(&pool, &done).await
            }),
        );
        Ok(Self {
            loads,
            claims,
            records,
            http: http_client(&options)?,
            limiter: EndpointLimiter::new(options.per_endpoint),
            pool,
            secrets,
            schedule,
            options,
        })
    }

    fn saturated(&self) -> Outcome {
        let base = self.options.saturation_delay;
        let jitter = rand::thread_rng().gen_range(Duration::ZERO..=base);
        Outcome::retry(
            base + jitter,
            "the endpoint has too many deliveries in flight",
        )
    }

    /// A transient failure of our own (database): come back along the same schedule,
    /// continued by how often JetStream delivered the command already.
    fn retry_later(&self, delivery: &DeliveryInfo) -> Outcome {
        let n = u32::try_from(delivery.delivered).unwrap_or(u32::MAX).min(8);
        Outcome::retry(
            self.schedule.delay_for_attempt(n),
            "the delivery could not be recorded",
        )
    }

    /// The secrets that sign: the current one, and the one a rotation replaced while its
    /// overlap lasts.
    fn signing_secrets(&self, work: &DeliveryWork) -> Result<Vec<WebhookSecret>, String> {
        let mut secrets = vec![self
            .secrets
            .open_secret(&work.secret_sealed, &work.subscription_id)
            .map_err(|e| e.to_string())?];
        if let (Some(sealed), Some(until)) = (
            &work.previous_secret_sealed,
            work.previous_secret_expires_at,
        ) {
            if until > Utc::now() {
                secrets.push(
                    self.secrets
                        .open_secret(sealed, &work.subscription_id)
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        Ok(secrets)
    }

    /// One signed POST. `webhook-id` is the event id: the same on every attempt, every
    /// redelivery and every endpoint, so a receiver can dedupe on it.
    pub async fn send(&self, work: &DeliveryWork, secrets: &[WebhookSecret]) -> SendResult {
        match WebhookUrl::parse(&work.url) {
            Ok(url) => {
                // A literal address never reaches the resolver, so it is checked here.
                if let Some(ip) = url.literal_ip() {
                    if !self.options.allow_private && is_forbidden_ip(ip) {
                        return SendResult::Blocked(format!(
                            "refused to connect: {ip} is a loopback, private, link-local or reserved address"
                        ));
                    }
                }
            }
            Err(e) => return SendResult::Blocked(e.message),
        }
        let body = match serde_json::to_vec(&WebhookPayload {
            id: &work.event_id,
            event_type: &work.event_type,
            created_at: work.event_created_at,
            data: &work.event_data,
        }) {
            Ok(b) => b,
            Err(e) => return SendResult::Transport(format!("cannot encode the event: {e}")),
        };
        let timestamp = Utc::now().timestamp();
        let refs: Vec<&WebhookSecret> = secrets.iter().collect();
        let signature = signature_header(&refs, &work.event_id, timestamp, &body);
        let sent = self
            .http
            .post(&work.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &work.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()));
                // Read a little of the body so the connection goes back to the pool; an
                // endpoint that streams forever is cut off by the client's timeout.
                let mut read = 0;
                while read < MAX_BODY_READ {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                SendResult::Answered {
                    status,
                    retry_after,
                }
            }
            Err(e) => match blocked_in(&e) {
                Some(b) => SendResult::Blocked(b.to_string()),
                None => SendResult::Transport(describe(&e)),
            },
        }
    }

    async fn deliver(
        &self,
        delivery_id: &str,
        subscription_id: &str,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        // The bound comes first, before any database work: a saturated endpoint's commands
        // cost one nak each and nothing else.
        let Some(permit) = self.limiter.try_acquire(subscription_id) else {
            return self.saturated();
        };
        let mut work = match self.loads.call(delivery_id.to_owned()).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                return Outcome::DeadLetter(format!("delivery {delivery_id} does not exist"))
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery = delivery_id, "cannot load the delivery");
                return self.retry_later(delivery);
            }
        };
        let status = match work.status() {
            Ok(s) => s,
            Err(e) => return Outcome::DeadLetter(e.to_string()),
        };
        let msg_id = delivery.message_id.as_deref();
        let current = match (work.cycle_message_id.as_deref(), msg_id) {
            (Some(ours), Some(this)) => ours == this,
            _ => true,
        };
        match status {
            DeliveryStatus::Succeeded => return Outcome::Ack,
            DeliveryStatus::Pending if !current => {
                tracing::debug!(
                    delivery = delivery_id,
                    "superseded command; the current cycle's command delivers"
                );
                return Outcome::Ack;
            }
            DeliveryStatus::Failed if current => return Outcome::Ack,
            DeliveryStatus::Failed => {
                // A replayed dead letter: a new cycle with a fresh budget of attempts.
                let msg_id = msg_id.unwrap_or_default();
                match store::start_replay_cycle(&self.pool, delivery_id, work.cycle, msg_id).await {
                    Ok(Some(cycle)) => {
                        tracing::info!(
                            delivery = delivery_id,
                            cycle,
                            "replayed delivery starts a new cycle"
                        );
                        work.cycle = cycle;
                        work.attempt = 0;
                        work.next_retry_at = None;
                        work.cycle_message_id = Some(msg_id.to_owned());
                    }
                    // Changed meanwhile (a concurrent redelivery): look again later.
                    Ok(None) => return self.retry_later(delivery),
                    Err(e) => {
                        tracing::warn!(error = %e, delivery = delivery_id, "cannot restart the delivery");
                        return self.retry_later(delivery);
                    }
                }
            }
            DeliveryStatus::Pending => {}
        }

        if work.subscription_deleted || !work.subscription_active {
            let why = if work.subscription_deleted {
                "the subscription was deleted"
            } else {
                "the subscription is disabled"
            };
            return match store::fail_without_attempt(&self.pool, delivery_id, work.cycle, why).await
            {
                Ok(_) => Outcome::Ack,
                Err(_) => self.retry_later(delivery),
            };
        }
        if let Some(at) = work.next_retry_at {
            let early = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if early > EARLY_SLACK {
                return Outcome::retry(early, "the next attempt is not due yet");
            }
        }
        let max = i32::try_from(self.schedule.max_attempts()).unwrap_or(i32::MAX);
        if work.attempt >= max {
            // Every attempt was claimed by a worker that never recorded it (crashes).
            let why =
                format!("all {max} attempts were used up by workers that stopped mid-attempt");
            return match store::fail_without_attempt(&self.pool, delivery_id, work.cycle, &why)
                .await
            {
                Ok(true) => Outcome::DeadLetter(why),
                Ok(false) => Outcome::Ack,
                Err(_) => self.retry_later(delivery),
            };
        }
        let secrets = match self.signing_secrets(&work) {
            Ok(s) => s,
            Err(e) => {
                // The configured key cannot open the secret: no attempt can succeed until an
                // operator fixes the key, then replays the dead letter.
                let why = format!("cannot sign: {e}");
                let _ =
                    store::fail_without_attempt(&self.pool, delivery_id, work.cycle, &why).await;
                return Outcome::DeadLetter(why);
            }
        };
        let claim = Claim {
            delivery_id: delivery_id.to_owned(),
            cycle: work.cycle,
            attempt_before: work.attempt,
        };
        let attempt = match self.claims.call(claim).await {
            Ok(Some(n)) => n,
            // Another copy of this command claimed it: look again once that attempt is over.
            Ok(None) => return self.retry_later(delivery),
            Err(e) => {
                tracing::warn!(error = %e, delivery = delivery_id, "cannot claim an attempt");
                return self.retry_later(delivery);
            }
        };

        let started = Instant::now();
        let result = self.send(&work, &secrets).await;
        let elapsed = started.elapsed();
        drop(permit);

        let attempt_no = u32::try_from(attempt).unwrap_or(u32::MAX);
        let verdict = decide(&result, attempt_no, &self.schedule);
        let (response_code, error) = match &result {
            SendResult::Answered { status, .. } => (
                Some(i32::from(*status)),
                (!ResponseClass::of(*status).eq(&ResponseClass::Success))
                    .then(|| format!("HTTP {status}")),
            ),
            SendResult::Transport(e) | SendResult::Blocked(e) => (None, Some(e.clone())),
        };
        let (outcome, next_retry_at) = match &verdict {
            Verdict::Delivered => ("succeeded", None),
            Verdict::RetryIn(d) => (
                "retry",
                Some(Utc::now() + TimeDelta::from_std(*d).unwrap_or(TimeDelta::zero())),
            ),
            Verdict::Fail(_) | Verdict::Gone => ("failed", None),
        };
        let record = AttemptRecord {
            outcome,
            response_code,
            error: match &verdict {
                Verdict::Fail(why) => Some(why.clone()),
                Verdict::Gone => {
                    Some("HTTP 410: the endpoint is gone; subscription disabled".into())
                }
                _ => error,
            },
            duration_ms: millis(elapsed),
            next_retry_at,
        };
        let recorded = Recorded {
            delivery_id: delivery_id.to_owned(),
            cycle: work.cycle,
            attempt,
            record,
        };
        let applied = match self.records.call(recorded).await {
            Ok(applied) => applied,
            Err(e) => {
                // The attempt happened but is not recorded: the command comes back and the
                // next claim marks this attempt abandoned. The endpoint may see it twice.
                tracing::warn!(error = %e, delivery = delivery_id, "cannot record the attempt");
                return self.retry_later(delivery);
            }
        };
        tracing::debug!(
            delivery = delivery_id,
            attempt,
            outcome,
            ?response_code,
            "attempt recorded"
        );
        if !applied {
            // A redelivery started a new cycle while this attempt ran; its command takes over.
            return Outcome::Ack;
        }
        match verdict {
            Verdict::Delivered => Outcome::Ack,
            Verdict::RetryIn(d) => Outcome::retry(d, "the endpoint failed; retrying on schedule"),
            Verdict::Fail(why) => {
                tracing::warn!(delivery = delivery_id, attempt, reason = %why, "webhook delivery failed");
                Outcome::DeadLetter(why)
            }
            Verdict::Gone => {
                self.disable(subscription_id).await;
                Outcome::DeadLetter("HTTP 410 Gone: subscription disabled".to_owned())
            }
        }
    }

    /// Disables a subscription whose endpoint answered 410, audited as this worker's act.
    async fn disable(&self, subscription_id: &str) {
        let result = async {
            let mut tx = self.pool.begin().await?;
            let changed = store::disable_subscription(
                &mut tx,
                subscription_id,
                "the endpoint answered 410 Gone",
                &Actor::Worker(WORKER),
            )
            .await?;
            tx.commit().await?;
            Ok::<bool, paystream_shared::store::StoreError>(changed)
        }
        .await;
        match result {
            Ok(true) => tracing::warn!(
                subscription = subscription_id,
                "endpoint answered 410 Gone; subscription disabled"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, subscription = subscription_id, "cannot disable the subscription")
            }
        }
    }
}

#[paystream_nats::async_trait]
impl Handler for Deliverer {
    type Command = WebhookCommand;
    // A delivery records its attempt in its own row and queues nothing.
    const WRITES_OUTBOX: bool = false;

    async fn handle(&self, cmd: WebhookCommand, delivery: &DeliveryInfo) -> Outcome {
        match &cmd {
            WebhookCommand::DeliverV1 {
                delivery_id,
                subscription_id,
            } => self.deliver(delivery_id, subscription_id, delivery).await,
        }
    }

    fn object_id(cmd: &WebhookCommand) -> Option<String> {
        Some(cmd.delivery_id().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(Duration::from_millis(100), 5)
    }

    fn answered(status: u16, retry_after: Option<u64>) -> SendResult {
        SendResult::Answered {
            status,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn success_retry_and_final_answers() {
        let s = schedule();
        assert_eq!(decide(&answered(200, None), 1, &s), Verdict::Delivered);
        assert_eq!(decide(&answered(204, None), 5, &s), Verdict::Delivered);
        for retry in [500, 502, 503, 408, 429] {
            match decide(&answered(retry, None), 1, &s) {
                Verdict::RetryIn(d) => {
                    assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200))
                }
                other => panic!("{retry}: {other:?}"),
            }
        }
        match decide(&answered(500, None), 3, &s) {
            Verdict::RetryIn(d) => {
                assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(500))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decide(&answered(500, None), 5, &s), Verdict::Fail(why) if why.contains("5 attempts"))
        );
        assert!(
            matches!(decide(&answered(400, None), 1, &s), Verdict::Fail(why) if why.contains("400"))
        );
        assert!(matches!(
            decide(&answered(302, None), 1, &s),
            Verdict::Fail(_)
        ));
        assert_eq!(decide(&answered(410, None), 1, &s), Verdict::Gone);
        assert!(matches!(
            decide(&SendResult::Transport("timed out".into()), 2, &s),
            Verdict::RetryIn(_)
        ));
        assert!(matches!(
            decide(&SendResult::Transport("timed out".into()), 5, &s),
            Verdict::Fail(_)
        ));
        assert_eq!(
            decide(&SendResult::Blocked("no".into()), 1, &s),
            Verdict::Fail("no".into())
        );
    }

    #[test]
    fn retry_after_is_honoured_when_longer_on_429_and_503_only() {
        let s = schedule();
        assert_eq!(
            decide(&answered(429, Some(7)), 1, &s),
            Verdict::RetryIn(Duration::from_secs(7))
        );
        assert_eq!(
            decide(&answered(503, Some(7)), 1, &s),
            Verdict::RetryIn(Duration::from_secs(7))
        );
        // Shorter than the backoff: the backoff wins.
        let slow = RetrySchedule::new(Duration::from_secs(10), 5);
        assert!(
            matches!(decide(&answered(429, Some(1)), 1, &slow), Verdict::RetryIn(d) if d >= Duration::from_secs(10))
        );
        // 500 with Retry-After: not honoured.
        assert!(
            matches!(decide(&answered(500, Some(7)), 1, &s), Verdict::RetryIn(d) if d < Duration::from_secs(1))
        );
        // Capped.
        assert_eq!(
            decide(&answered(429, Some(86_400)), 1, &s),
            Verdict::RetryIn(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_formats() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:20 GMT", now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(12)), 12);
        assert_eq!(millis(Duration::from_secs(u64::MAX / 2)), i32::MAX);
    }
}
