//! The consume loop every worker runs. The safety net for the messages it cannot settle (a
//! worker that crashes or hangs on every delivery) is `max_deliveries`, run beside it.
//!
//! A worker supplies a [`Handler`]: decode nothing, parse nothing, just decide (pure decision
//! plus I/O) and return an [`Outcome`]. The loop here owns everything around it: the durable
//! pull consumer, bounded concurrency, decoding the versioned command, ack/nak, the dead-letter
//! stream, metrics, surviving NATS restarts and graceful shutdown.
//!
//! # Wiring a worker
//! ```no_run
//! # use std::sync::Arc;
//! # use paystream_nats::{consumer, max_deliveries, ConsumerSpec, Stream, Topology, WorkerMetrics};
//! # async fn wire<H: paystream_nats::Handler>(handler: H) -> Result<(), paystream_nats::NatsError> {
//! let topology = Topology::new("");
//! let (client, js) = paystream_nats::connect("nats://127.0.0.1:4222").await?;
//! topology.ensure(&js).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let spec = ConsumerSpec::new(Stream::PaymentCommands, "confirm-worker", "cmd.payment.confirm");
//! let watch = tokio::spawn({
//!     let (client, js, topology, shutdown) = (client.clone(), js.clone(), topology.clone(), shutdown.clone());
//!     async move {
//!         max_deliveries::run_watch(&client, &js, &topology, Stream::PaymentCommands, "confirm-worker", shutdown).await
//!     }
//! });
//! let metrics = Arc::new(WorkerMetrics::new());
//! consumer::run(&js, &topology, spec, Arc::new(handler), metrics, shutdown.clone()).await?;
//! let _ = watch.await;
//! # Ok(()) }
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::dlq::{self, NewDeadLetter};
use crate::metrics::WorkerMetrics;
use crate::topology::{NatsError, Stream, Topology};

/// How long one pull request waits on the server for messages. Short, because a pull request
/// does not survive a nats-server restart: after one, the loop notices within this time (plus
/// [`FETCH_GRACE`]) and asks again.
pub const FETCH_EXPIRES: Duration = Duration::from_secs(2);
/// How long past [`FETCH_EXPIRES`] to wait for the server's end-of-request before giving the
/// request up as lost.
pub const FETCH_GRACE: Duration = Duration::from_secs(1);
/// How long an ack or a dead-letter publish may wait for the server's confirmation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an ack or a dead-letter publish is tried before giving up on it, and the pause
/// between tries: enough to span a JetStream leader election (a few seconds).
const SETTLE_ATTEMPTS: u32 = 3;
const SETTLE_PAUSE: Duration = Duration::from_millis(500);
/// The redelivery delay after a handler panicked, or when a dead letter could not be filed.
const FAILURE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What to do with a message once the handler has looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do, because the object already moved on): ack it.
    Ack,
    /// A transient failure: JetStream redelivers it after the delay, or, when this was the
    /// last allowed delivery, it goes to the dead-letter stream.
    Retry { delay: Duration, reason: String },
    /// It will never succeed (the reason is kept with it): file it as a dead letter, then ack.
    DeadLetter(String),
}

impl Outcome {
    /// A transient failure: redeliver after `delay`. The reason is what a dead letter will say
    /// if this turns out to be the last delivery.
    pub fn retry(delay: Duration, reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            delay,
            reason: reason.into(),
        }
    }
}

/// What the handler knows about the delivery beside the command itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The logical subject (without the stream prefix), e.g. `cmd.payment.confirm`.
    pub subject: String,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub delivered: u64,
    pub stream_sequence: u64,
    /// The publisher's `Nats-Msg-Id` (the outbox row id for relayed messages).
    pub message_id: Option<String>,
    /// No redelivery follows this one: asking for a retry now files the message as a dead
    /// letter. A step may settle the object differently on its last chance.
    pub last: bool,
}

/// One worker's step. Implement with `#[paystream_nats::async_trait]` (re-exported).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The versioned, tagged payload type; a message that does not decode into it is filed as
    /// a dead letter at once, because redelivering it cannot help.
    type Command: DeserializeOwned + Send + 'static;

    async fn handle(&self, cmd: Self::Command, delivery: &DeliveryInfo) -> Outcome;

    /// The object a command is about (a payment intent id, a refund id ...), filed with a dead
    /// letter so an operator can find it.
    fn object_id(_cmd: &Self::Command) -> Option<String> {
        None
    }

    /// Whether the step may commit outbox rows (events, follow-up commands). A worker process
    /// runs an outbox relay, and wakes it after each handled message, for steps that do; a
    /// step that writes none (a webhook delivery) spares the relay a look per message.
    const WRITES_OUTBOX: bool = true;
}

/// A durable pull consumer and how the loop drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub stream: Stream,
    /// The durable consumer's name without the prefix (the topology adds it).
    pub durable: String,
    /// The logical subject filter, e.g. `cmd.payment.confirm`.
    pub filter_subject: String,
    /// Deliveries before a message that keeps asking for retries is dead-lettered. `-1` is
    /// unlimited (then nothing is ever dead-lettered for retrying).
    pub max_deliver: i64,
    /// How long a delivery may stay unacked before JetStream redelivers it. It must exceed the
    /// handler's worst case (its whole in-process retry budget), or a slow-but-alive handler
    /// sees its message redelivered to someone else meanwhile.
    pub ack_wait: Duration,
    /// Unacked messages the server lets all of this consumer's workers hold at once.
    pub max_ack_pending: i64,
    /// Messages one process handles at once.
    pub concurrency: usize,
    /// The most messages asked for in one pull request.
    pub fetch_batch: usize,
}

impl ConsumerSpec {
    /// Defaults for a command consumer: five deliveries (ARCHITECTURE.md, retries), a 90 s ack wait
    /// (above the 5-attempt in-process budget with 10 s acquirer timeouts: about 65 s), 16
    /// messages at once per process.
    pub fn new(
        stream: Stream,
        durable: impl Into<String>,
        filter_subject: impl Into<String>,
    ) -> Self {
        Self {
            stream,
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(90),
            max_ack_pending: 1_000,
            concurrency: 16,
            fetch_batch: 64,
        }
    }

    /// The server-side consumer configuration for this spec.
    pub fn consumer_config(&self, topology: &Topology) -> pull::Config {
        let name = topology.consumer_name(&self.durable);
        pull::Config {
            durable_name: Some(name),
            description: Some(format!("paystream {}", self.filter_subject)),
            filter_subject: topology.subject(&self.filter_subject),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            // As many copies as the stream, said explicitly: a consumer made before the stream
            // was scaled up would otherwise keep its old count (a consumer inherits the
            // stream's only when it is created), and lose its place with its one node.
            num_replicas: topology.replicas(),
            ..Default::default()
        }
    }

    /// Whether a retry at `delivered` would exceed the delivery budget.
    fn retries_exhausted(&self, delivered: u64) -> bool {
        u64::try_from(self.max_deliver).is_ok_and(|max| max > 0 && delivered >= max)
    }
}

struct Shared<H> {
    js: jetstream::Context,
    client: async_nats::Client,
    topology: Topology,
    spec: ConsumerSpec,
    handler: Arc<H>,
    metrics: Arc<WorkerMetrics>,
}

/// Runs the consume loop until `shutdown` fires, then stops fetching, finishes and settles the
/// messages in hand, and returns.
///
/// NATS being unreachable is not an error here: the loop logs, backs off and tries again, for
/// as long as it takes. It returns an error only for what waiting cannot fix: the stream does
/// not exist, or the server refuses the consumer's configuration.
pub async fn run<H: Handler>(
    js: &jetstream::Context,
    topology: &Topology,
    spec: ConsumerSpec,
    handler: Arc<H>,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> Result<(), NatsError> {
    let concurrency = spec.concurrency.max(1);
    let fetch_batch = spec.fetch_batch.max(1);
    let shared = Arc::new(Shared {
        js: js.clone(),
        client: js.client(),
        topology: topology.clone(),
        spec,
        handler,
        metrics,
    });
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut consumer: Option<jetstream::consumer::PullConsumer> = None;

    'fetching: while !shutdown.is_cancelled() {
        reap(&mut tasks);
        let pull = match &consumer {
            Some(c) => c,
            None => match ensure_consumer(&shared.js, &shared.topology, &shared.spec).await {
                Ok(c) => consumer.insert(c),
                Err(Setup::Fatal(e)) => {
                    drain(&mut tasks).await;
                    return Err(e);
                }
                Err(Setup::Transient(e)) => {
                    tracing::warn!(error = %e, "cannot set up the consumer yet; retrying");
                    backoff.wait(&shutdown).await;
                    continue;
                }
            },
        };

        // Ask only for as many messages as there are free slots, so every message the server
        // hands over starts at once and none sits in a buffer while its ack_wait runs out.
        let free = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.acquire() => {
                drop(permit);
                slots.available_permits().min(fetch_batch)
            }
        };
        let mut batch = match pull
            .batch()
            .max_messages(free)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed; backing off");
                consumer = None;
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        let deadline = tokio::time::sleep(FETCH_EXPIRES + FETCH_GRACE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Messages already delivered to us but not started go back at once
                    // rather than after ack_wait.
                    while let Some(Some(Ok(msg))) = batch.next().now_or_never() {
                        nak(&msg, Duration::ZERO).await;
                    }
                    break 'fetching;
                }
                next = batch.next() => match next {
                    None => break,
                    Some(Ok(msg)) => {
                        backoff.reset();
                        // Never waits: the request asked for no more than the free slots.
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break 'fetching;
                        };
                        let shared = shared.clone();
                        tasks.spawn(async move {
                            process(&shared, msg).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        // For example "409 Consumer Deleted" or a leadership change: set the
                        // consumer up again before the next request.
                        tracing::warn!(error = %e, "pull request ended with an error");
                        consumer = None;
                        backoff.wait(&shutdown).await;
                        break;
                    }
                },
                // After the messages: a delivery already in hand when the deadline passes is
                // handled, not dropped with the request to wait out its ack_wait.
                _ = &mut deadline => {
                    // No end-of-request from the server: it restarted or the connection
                    // dropped and the request died with it. Ask again.
                    tracing::debug!("pull request expired without an answer; asking again");
                    break;
                }
            }
        }
    }

    drain(&mut tasks).await;
    Ok(())
}

/// Collects tasks that already finished, so the set does not grow without bound.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.try_join_next() {
        log_join(result);
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.join_next().await {
        log_join(result);
    }
}

fn log_join(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "message task failed");
    }
}

enum Setup {
    Fatal(NatsError),
    Transient(NatsError),
}

async fn ensure_consumer(
    js: &jetstream::Context,
    topology: &Topology,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::PullConsumer, Setup> {
    let stream_name = topology.stream_name(spec.stream);
    let stream = js
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|e| Setup::Fatal(NatsError::js("open stream", e)))?;
    let config = spec.consumer_config(topology);
    let consumer = config.durable_name.clone().unwrap_or_default();
    stream.create_consumer(config).await.map_err(|source| {
        use jetstream::stream::ConsumerErrorKind;
        match source.kind() {
            ConsumerErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Setup::Fatal(NatsError::StreamMissing(stream_name.clone()))
            }
            // A 4xx is the server's verdict on the configuration and will not change by
            // waiting; a 5xx (no quorum or no stream leader yet) is waited out.
            ConsumerErrorKind::JetStream(e) if !refusal_is_transient(&e) => {
                Setup::Fatal(NatsError::Consumer {
                    stream: stream_name.clone(),
                    consumer: consumer.clone(),
                    source,
                })
            }
            _ => Setup::Transient(NatsError::Consumer {
                stream: stream_name.clone(),
                consumer: consumer.clone(),
                source,
            }),
        }
    })
}

/// Whether a JetStream refusal to set the consumer up is the cluster between states rather
/// than a verdict on the configuration. A configuration the server rejects answers 4xx; a
/// stream or consumer whose raft group has no leader yet answers 5xx: 503 "temporarily
/// unavailable", but also 500 "stream is offline" (10118) or "cluster can not handle request"
/// (10009) while a freshly created R3 stream elects its first leader. Giving up on a 5xx ended
/// the consume loop, and with it the worker, for good: nothing consumed until a restart.
fn refusal_is_transient(e: &jetstream::Error) -> bool {
    e.code() >= 500
}

async fn process<H: Handler>(shared: &Shared<H>, msg: jetstream::Message) {
    let (delivered, stream_sequence) = match msg.info() {
        Ok(info) => (
            u64::try_from(info.delivered).unwrap_or(1),
            info.stream_sequence,
        ),
        Err(e) => {
            tracing::error!(error = %e, subject = %msg.subject, "not a JetStream delivery; ignored");
            return;
        }
    };
    let subject = shared
        .topology
        .logical_subject(msg.subject.as_str())
        .unwrap_or(msg.subject.as_str())
        .to_owned();
    let message_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    let delivery = DeliveryInfo {
        subject,
        delivered,
        stream_sequence,
        message_id,
        last: shared.spec.retries_exhausted(delivered),
    };
    let span = tracing::info_span!(
        "message",
        subject = %delivery.subject,
        seq = delivery.stream_sequence,
        delivered = delivery.delivered,
    );
    async {
        shared.metrics.record_processed();
        let started = Instant::now();
        let (outcome, object_id) = match serde_json::from_slice::<H::Command>(&msg.payload) {
            Ok(cmd) => {
                let object_id = H::object_id(&cmd);
                // A panicking handler must not take the message down with its task: the
                // message would sit unacked until ack_wait. Treat it as a transient failure.
                let outcome = AssertUnwindSafe(shared.handler.handle(cmd, &delivery))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        let what = panic_message(panic.as_ref());
                        tracing::error!(panic = %what, "handler panicked");
                        Outcome::retry(FAILURE_RETRY_DELAY, format!("the handler panicked: {what}"))
                    });
                (outcome, object_id)
            }
            Err(e) => {
                shared.metrics.record_decode_failure();
                (
                    Outcome::DeadLetter(format!("cannot decode the command: {e}")),
                    None,
                )
            }
        };
        shared.metrics.observe_latency(started.elapsed());
        settle(shared, &msg, &delivery, outcome, object_id.as_deref()).await;
    }
    .instrument(span)
    .await;
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

async fn settle<H: Handler>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivery: &DeliveryInfo,
    outcome: Outcome,
    object_id: Option<&str>,
) {
    match outcome {
        Outcome::Ack => {
            if ack_confirmed(&shared.client, msg).await {
                shared.metrics.record_acked();
            }
        }
        Outcome::Retry { reason, .. } if shared.spec.retries_exhausted(delivery.delivered) => {
            let reason = format!(
                "still failing after {} deliveries: {reason}",
                delivery.delivered
            );
            dead_letter(shared, msg, delivery, &reason, object_id).await;
        }
        Outcome::Retry { delay, .. } => {
            nak(msg, delay).await;
            shared.metrics.record_retried();
        }
        Outcome::DeadLetter(reason) => {
            dead_letter(shared, msg, delivery, &reason, object_id).await;
        }
    }
}

async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivery: &DeliveryInfo,
    reason: &str,
    object_id: Option<&str>,
) {
    let letter = NewDeadLetter {
        origin: shared.spec.stream,
        origin_subject: &delivery.subject,
        origin_sequence: delivery.stream_sequence,
        deliveries: delivery.delivered,
        last_error: reason,
        object_id,
        payload: msg.payload.clone(),
    };
    // Tried again across a leader election of DEAD_LETTERS: a repeat of a publish that did
    // land is dropped by the duplicate window (the letter's Nats-Msg-Id is its origin).
    let mut filed = dlq::file(&shared.js, &shared.topology, letter.clone()).await;
    for attempt in 2..=SETTLE_ATTEMPTS {
        let Err(e) = &filed else { break };
        tracing::warn!(error = %e, attempt, "cannot file the dead letter yet; trying again");
        tokio::time::sleep(SETTLE_PAUSE).await;
        filed = dlq::file(&shared.js, &shared.topology, letter.clone()).await;
    }
    match filed {
        Ok(id) => {
            tracing::warn!(dead_letter = id, reason, "message dead-lettered");
            shared.metrics.record_dead_lettered();
            // Only now: had we crashed before the dead letter was stored, the original would
            // have come back instead of vanishing.
            ack_confirmed(&shared.client, msg).await;
        }
        Err(e) => {
            // Keep the original. If this was its last delivery JetStream will not send it
            // again, and the max-deliveries watch files it instead.
            tracing::error!(error = %e, reason, "cannot file the dead letter; the message stays queued");
            nak(msg, FAILURE_RETRY_DELAY).await;
        }
    }
}

/// Acks and waits for the server to confirm it received the ack (a plain ack is
/// fire-and-forget and can vanish with a dropped connection, which would mean a needless
/// redelivery). On 2.9 the confirmation says "received", not "was still pending": an ack for a
/// delivery that already timed out is confirmed too; the redelivery then finds the object
/// already moved on (rule 2). The request goes through the client's shared reply inbox
/// rather than a subscription per ack, which matters at a thousand messages a second.
///
/// An ack that is not confirmed is sent again (up to [`SETTLE_ATTEMPTS`] times): during a
/// consumer leader election the first one finds no responder or times out, and the new
/// leader takes the repeat. A second ack of a message is harmless; a lost one costs a
/// redelivery after `ack_wait`, which the handler's idempotence absorbs.
async fn ack_confirmed(client: &async_nats::Client, msg: &jetstream::Message) -> bool {
    let Some(reply) = msg.reply.clone() else {
        return false;
    };
    for attempt in 1..=SETTLE_ATTEMPTS {
        let ack: Bytes = AckKind::Ack.into();
        match tokio::time::timeout(CONFIRM_TIMEOUT, client.request(reply.clone(), ack)).await {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, attempt, "ack not confirmed; sending it again");
            }
            Err(_) => tracing::warn!(attempt, "ack not confirmed in time; sending it again"),
        }
        tokio::time::sleep(SETTLE_PAUSE).await;
    }
    tracing::warn!("ack never confirmed; the message may be redelivered");
    false
}

/// Fire-and-forget: if a nak is lost, ack_wait brings the message back anyway.
async fn nak(msg: &jetstream::Message, delay: Duration) {
    let kind = AckKind::Nak((!delay.is_zero()).then_some(delay));
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "nak failed; the message comes back after ack_wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u64, err_code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": description,
        }))
        .expect("a JetStream API error")
    }

    #[test]
    fn a_leaderless_stream_is_waited_out_and_a_bad_configuration_is_not() {
        // What a three-node cluster answers while a new R3 stream elects its first leader.
        assert!(refusal_is_transient(&refusal(
            500,
            10118,
            "stream is offline"
        )));
        assert!(refusal_is_transient(&refusal(
            500,
            10009,
            "JetStream cluster can not handle request"
        )));
        assert!(refusal_is_transient(&refusal(
            503,
            10008,
            "JetStream system temporarily unavailable"
        )));
        // The server's verdict on the configuration: waiting cannot change it.
        assert!(!refusal_is_transient(&refusal(
            400,
            10093,
            "consumer filter subject is not a valid subset of the interest subjects"
        )));
        assert!(!refusal_is_transient(&refusal(
            400,
            10013,
            "consumer name already in use"
        )));
    }

    #[test]
    fn spec_defaults_and_consumer_config() {
        let spec = ConsumerSpec::new(Stream::PaymentCommands, "confirm", "cmd.payment.confirm");
        assert_eq!(spec.max_deliver, 5);
        assert!(spec.concurrency >= 1 && spec.fetch_batch >= 1);
        let config = spec.consumer_config(&Topology::new("x_"));
        assert_eq!(config.durable_name.as_deref(), Some("x_confirm"));
        assert_eq!(config.filter_subject, "x_cmd.payment.confirm");
        assert_eq!(config.ack_policy, jetstream::consumer::AckPolicy::Explicit);
        assert_eq!(config.max_deliver, 5);
        assert_eq!(config.ack_wait, Duration::from_secs(90));
    }

    #[test]
    fn retry_budget() {
        let mut spec = ConsumerSpec::new(Stream::RefundCommands, "r", "cmd.refund.process");
        spec.max_deliver = 3;
        assert!(!spec.retries_exhausted(2));
        assert!(spec.retries_exhausted(3));
        assert!(spec.retries_exhausted(4));
        spec.max_deliver = -1;
        assert!(!spec.retries_exhausted(1_000));
    }

    #[test]
    fn panic_messages() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42u8), "non-string panic payload");
    }
}
