//! One way to wire a worker process: [`WorkerProcess`] owns its pool, its NATS connection,
//! its outbox relay, its consumers (each with the max-deliveries safety net and a periodic
//! metrics line), its `/healthz` and one stop policy. A binary declares what it runs:
//!
//! ```no_run
//! # use paystream_workers::runtime::{WorkerProcess, WorkerError};
//! # async fn wire<H: paystream_nats::Handler>(config: paystream_shared::config::Config, step: H,
//! #     shutdown: tokio_util::sync::CancellationToken) -> Result<(), WorkerError> {
//! let spec = paystream_workers::runtime::refund_spec(&config);
//! WorkerProcess::connect(&config, config.db_pool_size)
//!     .await?
//!     .consumer(spec, step)
//!     .run(shutdown)
//!     .await
//! # }
//! ```
//!
//! The stop policy: the process runs until `shutdown` fires or any of its parts (a consume
//! loop, a task) ends for good; then every other part is stopped, finishes what it holds, and
//! the process returns the first error. A supervisor thus sees a process whose consumer
//! cannot run exit, rather than a process half alive.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paystream_nats::consumer::{self, ConsumerSpec, DeliveryInfo, Handler, Outcome};
use paystream_nats::max_deliveries;
use paystream_nats::metrics::WorkerMetrics;
use paystream_nats::relay;
use paystream_nats::topology::{self, Stream, Topology};
use paystream_shared::config::Config;
use paystream_shared::retry::{RetrySchedule, MAX_ATTEMPTS};

use crate::acquirer::{HttpAcquirer, VaultClient};
use crate::confirm::{ConfirmWorker, WORKER as CONFIRM_WORKER};
use crate::health;
use crate::provider_events::{ProviderEventProcessor, WORKER as PROVIDER_EVENTS_WORKER};
use crate::refund::{RefundWorker, WORKER as REFUND_WORKER};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] paystream_shared::db::DbError),
    #[error(transparent)]
    Nats(#[from] paystream_nats::topology::NatsError),
    #[error("acquirer client: {0}")]
    Acquirer(String),
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
}

/// How often a worker logs its counters (processed, retried, dead-lettered, latency).
pub const METRICS_LOG_INTERVAL: Duration = Duration::from_secs(15);

/// The longest one message's in-process handling may take: every attempt timing out plus every
/// backoff at its longest. The ack wait must exceed it, or a slow but healthy worker would see
/// its message redelivered to another meanwhile.
pub fn handling_budget(config: &Config) -> Duration {
    let schedule = RetrySchedule::new(config.retry_base, MAX_ATTEMPTS);
    let backoffs: Duration = (1..MAX_ATTEMPTS)
        .map(|n| schedule.deterministic_part(n) + config.retry_base)
        .sum();
    backoffs + vault_timeout(config) * MAX_ATTEMPTS
}

/// How long the worker waits for one forward through the vault: the vault's own call to the
/// acquirer (bounded by the same `PAYSTREAM_ACQUIRER_TIMEOUT_MS`) plus its hop. A direct call
/// to the acquirer is bounded by less, so this is each attempt's longest.
pub fn vault_timeout(config: &Config) -> Duration {
    config.acquirer_timeout + VAULT_HOP
}

/// What the vault's own work adds to a forward (unsealing, its audit row).
pub const VAULT_HOP: Duration = Duration::from_secs(1);

/// The confirm worker's consumer: every payment command, five deliveries, an ack wait above
/// the handling budget.
pub fn confirm_spec(config: &Config) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(Stream::PaymentCommands, CONFIRM_WORKER, "cmd.payment.>");
    spec.ack_wait = handling_budget(config) + Duration::from_secs(5);
    spec
}

/// A step that wakes the process's relay once it is done: whatever it committed, including
/// outbox rows, is then published at once.
struct WakingRelay<H> {
    inner: H,
    waker: relay::Waker,
}

#[paystream_nats::async_trait]
impl<H: Handler> Handler for WakingRelay<H> {
    type Command = H::Command;
    const WRITES_OUTBOX: bool = H::WRITES_OUTBOX;

    async fn handle(&self, cmd: Self::Command, delivery: &DeliveryInfo) -> Outcome {
        let outcome = self.inner.handle(cmd, delivery).await;
        self.waker.wake();
        outcome
    }

    fn object_id(cmd: &Self::Command) -> Option<String> {
        H::object_id(cmd)
    }
}

/// What a consumer gets from its process when it starts.
struct Wiring {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    topology: Topology,
    waker: relay::Waker,
    shutdown: CancellationToken,
}

type StartConsumer = Box<dyn FnOnce(Wiring) -> BoxFuture<'static, Result<(), WorkerError>> + Send>;
type StartTask =
    Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, Result<(), WorkerError>> + Send>;

struct DeclaredConsumer {
    durable: String,
    metrics: Arc<WorkerMetrics>,
    writes_outbox: bool,
    start: StartConsumer,
}

/// A worker process under construction: declare its consumers and tasks, then [`run`] it.
///
/// [`run`]: WorkerProcess::run
pub struct WorkerProcess {
    config: Config,
    pool: PgPool,
    consumers: Vec<DeclaredConsumer>,
    tasks: Vec<StartTask>,
}

impl WorkerProcess {
    /// Opens the process's PostgreSQL pool (`pool_size` connections); its steps share it.
    pub async fn connect(config: &Config, pool_size: u32) -> Result<Self, WorkerError> {
        // Every worker may capture (and so charge a fee): by this process's configuration.
        paystream_shared::ledger::install_fee_schedule(config.fees);
        paystream_shared::ledger::install_dispute_fee(config.dispute_fee);
        let pool = paystream_shared::db::connect(config.database_url.expose(), pool_size).await?;
        Ok(Self {
            config: config.clone(),
            pool,
            consumers: Vec::new(),
            tasks: Vec::new(),
        })
    }

    /// The process's pool, for building its steps.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Runs `step` on the durable consumer `spec` describes. Its counters appear on
    /// `/metrics` and in the periodic log line under the durable name.
    pub fn consumer<H: Handler>(mut self, spec: ConsumerSpec, step: H) -> Self {
        let durable = spec.durable.clone();
        let metrics = Arc::new(WorkerMetrics::new());
        let for_loop = metrics.clone();
        let start: StartConsumer = Box::new(move |w: Wiring| {
            async move { run_one_consumer(w, spec, step, for_loop).await }.boxed()
        });
        self.consumers.push(DeclaredConsumer {
            durable,
            metrics,
            writes_outbox: H::WRITES_OUTBOX,
            start,
        });
        self
    }

    /// Runs `task` beside the consumers (the scheduler's leader loop), under the same stop
    /// policy: it must return once the token it is given is cancelled.
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stop| task(stop).boxed()));
        self
    }

    /// Runs everything declared until `shutdown` fires or one part ends (see the module's
    /// stop policy).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Self {
            config,
            pool,
            consumers,
            tasks,
        } = self;
        let stop = shutdown.child_token();
        let uses_nats = !consumers.is_empty();
        // Healthy means PostgreSQL answers, and NATS too for a process that consumes.
        let _health = health::start(
            &config,
            pool.clone(),
            uses_nats,
            consumers
                .iter()
                .map(|c| (c.durable.clone(), c.metrics.clone()))
                .collect(),
            &stop,
        )
        .await?;

        let mut background: Vec<JoinHandle<()>> = Vec::new();
        let mut parts: Vec<BoxFuture<'static, Result<(), WorkerError>>> = Vec::new();
        let mut client = None;
        if uses_nats {
            let (nats, js) = topology::connect_with(&config.nats).await?;
            let topology = Topology::from_config(&config);
            topology.ensure(&js).await?;
            // The steps' outbox rows (events, follow-up commands) go out through this
            // process's own relay, woken after every handled message, instead of waiting for
            // another process's poll. One relay serves every consumer of the process.
            let waker = relay::Waker::new();
            if consumers.iter().any(|c| c.writes_outbox) {
                let relay_pool =
                    paystream_shared::db::connect(config.database_url.expose(), 2).await?;
                background.push(tokio::spawn({
                    let (js, topology, waker, stop) =
                        (js.clone(), topology.clone(), waker.clone(), stop.clone());
                    async move {
                        if let Err(e) = relay::run(relay_pool, js, topology, waker, stop).await {
                            tracing::error!(error = %e, "outbox relay stopped");
                        }
                    }
                }));
            }
            for declared in consumers {
                background.push(log_metrics(
                    declared.durable,
                    declared.metrics.clone(),
                    stop.clone(),
                ));
                parts.push((declared.start)(Wiring {
                    client: nats.clone(),
                    js: js.clone(),
                    topology: topology.clone(),
                    waker: waker.clone(),
                    shutdown: stop.clone(),
                }));
            }
            client = Some(nats);
        }
        for task in tasks {
            parts.push(task(stop.clone()));
        }

        // One stop policy: whichever part ends first, for whatever reason, stops the rest.
        let results = futures::future::join_all(parts.into_iter().map(|part| {
            let stop = stop.clone();
            async move {
                let result = part.await;
                stop.cancel();
                result
            }
        }))
        .await;
        stop.cancel();
        for handle in background {
            let _ = handle.await;
        }
        if let Some(client) = client {
            client.drain().await.ok();
        }
        results.into_iter().collect()
    }
}

/// One consumer: its max-deliveries watch beside its consume loop, both until `shutdown`.
async fn run_one_consumer<H: Handler>(
    wiring: Wiring,
    spec: ConsumerSpec,
    step: H,
    metrics: Arc<WorkerMetrics>,
) -> Result<(), WorkerError> {
    let Wiring {
        client,
        js,
        topology,
        waker,
        shutdown,
    } = wiring;
    let watch = tokio::spawn({
        let (js, topology, shutdown, durable, stream) = (
            js.clone(),
            topology.clone(),
            shutdown.clone(),
            spec.durable.clone(),
            spec.stream,
        );
        async move {
            if let Err(e) =
                max_deliveries::run_watch(&client, &js, &topology, stream, &durable, shutdown).await
            {
                tracing::error!(error = %e, "max-deliveries watch stopped");
            }
        }
    });
    let result = if H::WRITES_OUTBOX {
        let step = Arc::new(WakingRelay { inner: step, waker });
        consumer::run(&js, &topology, spec, step, metrics, shutdown.clone()).await
    } else {
        consumer::run(
            &js,
            &topology,
            spec,
            Arc::new(step),
            metrics,
            shutdown.clone(),
        )
        .await
    };
    // The watch serves this consumer only; it ends with it.
    shutdown.cancel();
    let _ = watch.await;
    result.map_err(WorkerError::from)
}

/// Logs a consumer's counters every [`METRICS_LOG_INTERVAL`] until `stop`.
fn log_metrics(
    name: String,
    metrics: Arc<WorkerMetrics>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_LOG_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let s = metrics.snapshot();
                    tracing::info!(worker = %name, metrics = ?s, "worker metrics");
                }
            }
        }
    })
}

/// The `confirm-worker` process: the payment commands' consumer.
pub async fn run_confirm_worker(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let process = WorkerProcess::connect(&config, config.db_pool_size).await?;
    let worker = ConfirmWorker::new(
        process.pool(),
        Arc::new(acquirer(&config)?),
        RetrySchedule::new(config.retry_base, MAX_ATTEMPTS),
    );
    process
        .consumer(confirm_spec(&config), worker)
        .run(shutdown)
        .await
}

/// The refund worker's consumer: every refund command, like the confirm worker's.
pub fn refund_spec(config: &Config) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(Stream::RefundCommands, REFUND_WORKER, "cmd.refund.>");
    spec.ack_wait = handling_budget(config) + Duration::from_secs(5);
    spec
}

/// The consumer of acquirer notifications: five deliveries, then the dead letters. Its step
/// calls nobody outside PostgreSQL, so the default ack wait is ample.
pub fn provider_events_spec() -> ConsumerSpec {
    ConsumerSpec::new(
        Stream::ProviderEvents,
        PROVIDER_EVENTS_WORKER,
        "cmd.provider_event.>",
    )
}

/// The `refund-worker` process: the refund consumer and, beside it, the consumer that applies
/// the acquirer's notifications.
///
/// Why here and not in a process of its own: most notifications settle refunds, which is
/// this process's business already (same tables, same store functions, same pool); applying
/// one needs no acquirer call, so it cannot starve the refund consumer of anything but a
/// database connection; and the list of binaries, `paystream up` and the compose file stay as
/// they are. Each consumer has its own durable name and scales with the number of
/// refund-worker replicas.
pub async fn run_refund_worker(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let process = WorkerProcess::connect(&config, config.db_pool_size).await?;
    let schedule = RetrySchedule::new(config.retry_base, MAX_ATTEMPTS);
    let refunds = RefundWorker::new(process.pool(), Arc::new(acquirer(&config)?), schedule);
    let notifications = ProviderEventProcessor::new(process.pool(), schedule);
    process
        .consumer(refund_spec(&config), refunds)
        .consumer(provider_events_spec(), notifications)
        .run(shutdown)
        .await
}

/// The HTTP client of the configured acquirer, with the vault for stored payment methods when
/// this process has the vault's service credential.
pub fn acquirer(config: &Config) -> Result<HttpAcquirer, WorkerError> {
    let vault = match &config.vault_service_token {
        Some(token) => Some(
            VaultClient::configured(
                &config.vault_url,
                token.clone(),
                vault_timeout(config),
                config.tls.ca_cert.as_deref(),
            )
            .map_err(|e| WorkerError::Acquirer(e.to_string()))?,
        ),
        None => None,
    };
    Ok(HttpAcquirer::trusting(
        &config.acquirer_url,
        config.acquirer_timeout,
        config.tls.ca_cert.as_deref(),
    )
    .map_err(|e| WorkerError::Acquirer(e.to_string()))?
    .with_vault(vault))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_wait_exceeds_the_whole_retry_budget() {
        let config = Config::development_defaults().unwrap();
        // 1 s base, 10 s timeouts and the vault's 1 s: backoffs at most 2+3+5+9 = 19 s,
        // attempts 55 s.
        assert_eq!(handling_budget(&config), Duration::from_secs(74));
        assert!(confirm_spec(&config).ack_wait > handling_budget(&config));
    }
}
