//! What every test here needs: a stream prefix of its own on the real NATS, and (for the
//! relay) a freshly migrated database on the real PostgreSQL. Both are removed when the guard
//! is dropped, also when the test fails.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paystream_nats::consumer::{self, ConsumerSpec, DeliveryInfo, Handler, Outcome};
use paystream_nats::metrics::MetricsSnapshot;
use paystream_nats::{Stream, Topology, WorkerMetrics};

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn unique_prefix() -> String {
    format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A topology with its own prefix, its streams created.
pub struct TestNats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
}

impl TestNats {
    pub async fn new() -> TestNats {
        let (client, js) = paystream_nats::connect(&nats_url())
            .await
            .expect("NATS must run at NATS_URL");
        let topology = Topology::new(&unique_prefix());
        topology.ensure(&js).await.expect("ensure streams");
        TestNats {
            client,
            js,
            topology,
        }
    }

    pub async fn stream(&self, stream: Stream) -> jetstream::stream::Stream {
        self.js
            .get_stream(self.topology.stream_name(stream))
            .await
            .expect("stream exists")
    }

    /// Messages currently stored in `stream`.
    pub async fn count(&self, stream: Stream) -> u64 {
        self.stream(stream)
            .await
            .info()
            .await
            .expect("stream info")
            .state
            .messages
    }

    pub async fn publish(&self, logical: &str, payload: impl Into<bytes::Bytes>) {
        self.js
            .publish(self.topology.subject(logical), payload.into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    pub async fn publish_cmd(&self, logical: &str, cmd: &TestCommand) {
        self.publish(logical, serde_json::to_vec(cmd).expect("json"))
            .await;
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        // Drop may run inside a runtime we must not block; delete on a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((_, js)) = paystream_nats::connect(&nats_url()).await {
                    let _ = topology.delete_all(&js).await;
                }
            });
        })
        .join();
    }
}

pub use paystream_shared::testing::TestDb;

/// What the relay tests do with their database.
#[async_trait::async_trait]
pub trait OutboxDb {
    async fn enqueue(&self, subject: &str, payload: serde_json::Value) -> uuid::Uuid;
    async fn unpublished(&self) -> i64;
}

#[async_trait::async_trait]
impl OutboxDb for TestDb {
    /// Queues one outbox row in its own transaction, as the API would.
    async fn enqueue(&self, subject: &str, payload: serde_json::Value) -> uuid::Uuid {
        let mut tx = self.pool.begin().await.expect("begin");
        let id = paystream_shared::outbox::enqueue(&mut tx, subject, &payload)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        id
    }

    async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The command the test handler understands: what to do is in the message itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "test.v1", rename_all = "camelCase")]
pub struct TestCommand {
    pub id: String,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Ack,
    /// Retry on the first delivery, ack on the next.
    RetryOnce,
    RetryAlways,
    DeadLetter,
    /// Take a while, then ack.
    SlowAck,
    Panic,
}

impl TestCommand {
    pub fn new(id: &str, action: Action) -> Self {
        Self {
            id: id.to_owned(),
            action,
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<(TestCommand, DeliveryInfo)>>,
    pub finished: Mutex<Vec<String>>,
    pub started: tokio::sync::Notify,
}

impl Recorder {
    pub fn deliveries_of(&self, id: &str) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c.id == id)
            .map(|(_, d)| d.delivered)
            .collect()
    }

    pub fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub struct TestHandler {
    pub recorder: Arc<Recorder>,
    pub slow: Duration,
    pub retry_delay: Duration,
}

impl TestHandler {
    pub fn new() -> Self {
        Self {
            recorder: Arc::default(),
            slow: Duration::from_millis(300),
            retry_delay: Duration::from_millis(50),
        }
    }
}

#[paystream_nats::async_trait]
impl Handler for TestHandler {
    type Command = TestCommand;

    async fn handle(&self, cmd: TestCommand, delivery: &DeliveryInfo) -> Outcome {
        self.recorder
            .seen
            .lock()
            .unwrap()
            .push((cmd.clone(), delivery.clone()));
        self.recorder.started.notify_waiters();
        let outcome = match cmd.action {
            Action::Ack => Outcome::Ack,
            Action::RetryOnce if delivery.delivered == 1 => {
                Outcome::retry(self.retry_delay, "the test asked for a retry")
            }
            Action::RetryOnce => Outcome::Ack,
            Action::RetryAlways => Outcome::retry(self.retry_delay, "the test asked for a retry"),
            Action::DeadLetter => Outcome::DeadLetter(format!("refused {}\nby the test", cmd.id)),
            Action::SlowAck => {
                tokio::time::sleep(self.slow).await;
                Outcome::Ack
            }
            Action::Panic => panic!("handler exploded on {}", cmd.id),
        };
        self.recorder.finished.lock().unwrap().push(cmd.id.clone());
        outcome
    }

    fn object_id(cmd: &TestCommand) -> Option<String> {
        Some(cmd.id.clone())
    }
}

/// A spec with sub-second timings for tests.
pub fn fast_spec(stream: Stream, durable: &str, filter: &str) -> ConsumerSpec {
    ConsumerSpec {
        max_deliver: 3,
        ack_wait: Duration::from_millis(800),
        concurrency: 4,
        fetch_batch: 8,
        ..ConsumerSpec::new(stream, durable, filter)
    }
}

/// A consume loop running in the background.
pub struct Running {
    pub shutdown: CancellationToken,
    pub metrics: Arc<WorkerMetrics>,
    pub task: JoinHandle<Result<(), paystream_nats::NatsError>>,
}

impl Running {
    /// Waits (up to 5 s) until the loop's counters satisfy `done`.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&MetricsSnapshot) -> bool) {
        eventually(Duration::from_secs(5), what, || {
            let reached = done(&self.metrics.snapshot());
            async move { reached }
        })
        .await;
    }

    pub async fn stop(self) -> Result<(), paystream_nats::NatsError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loop stops after shutdown")
            .expect("the loop task does not panic")
    }
}

pub fn start(nats: &TestNats, spec: ConsumerSpec, handler: Arc<TestHandler>) -> Running {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(WorkerMetrics::new());
    let (js, topology) = (nats.js.clone(), nats.topology.clone());
    let task = tokio::spawn({
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        async move { consumer::run(&js, &topology, spec, handler, metrics, shutdown).await }
    });
    Running {
        shutdown,
        metrics,
        task,
    }
}
