//! What every worker binary does around its step: connect, make sure the topology exists, run
//! the consume loop, the max-deliveries safety net and the periodic metrics line, and stop
//! cleanly on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use paystream_nats::consumer::{self, ConsumerSpec, DeliveryInfo, Handler, Outcome};
use paystream_nats::metrics::WorkerMetrics;
use paystream_nats::relay;
use paystream_nats::topology::{self, Stream, Topology};
use paystream_shared::config::Config;
use paystream_shared::retry::{RetrySchedule, MAX_ATTEMPTS};

use crate::acquirer::HttpAcquirer;
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
    backoffs + config.acquirer_timeout * MAX_ATTEMPTS
}

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
    inner: Arc<H>,
    waker: relay::Waker,
}

#[paystream_nats::async_trait]
impl<H: Handler> Handler for WakingRelay<H> {
    type Command = H::Command;

    async fn handle(&self, cmd: Self::Command, delivery: &DeliveryInfo) -> Outcome {
        let outcome = self.inner.handle(cmd, delivery).await;
        self.waker.wake();
        outcome
    }

    fn object_id(cmd: &Self::Command) -> Option<String> {
        H::object_id(cmd)
    }
}

/// Runs a consumer with its safety net, metrics log and outbox relay until `shutdown`.
pub async fn run_consumer<H: Handler>(
    config: &Config,
    spec: ConsumerSpec,
    handler: Arc<H>,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let (client, js) = topology::connect(&config.nats_url).await?;
    let topology = Topology::new(&config.stream_prefix);
    topology.ensure(&js).await?;
    // The step's outbox rows (events, follow-up commands) go out through this process's own
    // relay, woken after every handled message, instead of waiting for another process's poll.
    // Webhook deliveries write no outbox rows, so their consumer runs none.
    let waker = relay::Waker::new();
    let relay = if spec.stream == Stream::WebhookDeliveries {
        None
    } else {
        let relay_pool = paystream_shared::db::connect(config.database_url.expose(), 2).await?;
        Some(tokio::spawn(relay::run(
            relay_pool,
            js.clone(),
            topology.clone(),
            waker.clone(),
            shutdown.clone(),
        )))
    };
    let handler = Arc::new(WakingRelay {
        inner: handler,
        waker,
    });
    let name = spec.durable.clone();
    let watch = {
        let (client, js, topology, shutdown, durable, stream) = (
            client.clone(),
            js.clone(),
            topology.clone(),
            shutdown.clone(),
            spec.durable.clone(),
            spec.stream,
        );
        tokio::spawn(async move {
            if let Err(e) = paystream_nats::max_deliveries::run_watch(
                &client, &js, &topology, stream, &durable, shutdown,
            )
            .await
            {
                tracing::error!(error = %e, "max-deliveries watch stopped");
            }
        })
    };
    let logger = {
        let (metrics, shutdown, name) = (metrics.clone(), shutdown.clone(), name.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_LOG_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let s = metrics.snapshot();
                        tracing::info!(worker = %name, metrics = ?s, "worker metrics");
                    }
                }
            }
        })
    };
    let result = consumer::run(&js, &topology, spec, handler, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = watch.await;
    let _ = logger.await;
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    client.drain().await.ok();
    result.map_err(WorkerError::from)
}

/// The `confirm-worker` process, minus reading its configuration.
pub async fn run_confirm_worker(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let pool =
        paystream_shared::db::connect(config.database_url.expose(), config.db_pool_size).await?;
    let acquirer = HttpAcquirer::new(&config.acquirer_url, config.acquirer_timeout)
        .map_err(|e| WorkerError::Acquirer(e.to_string()))?;
    let metrics = Arc::new(WorkerMetrics::new());
    let _health = health::start(
        &config,
        pool.clone(),
        true,
        vec![(CONFIRM_WORKER, metrics.clone())],
        &shutdown,
    )
    .await?;
    let worker = ConfirmWorker::new(
        pool,
        Arc::new(acquirer),
        RetrySchedule::new(config.retry_base, MAX_ATTEMPTS),
    );
    run_consumer(
        &config,
        confirm_spec(&config),
        Arc::new(worker),
        metrics,
        shutdown,
    )
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

/// The `refund-worker` process, minus reading its configuration: the refund consumer and,
/// beside it, the consumer that applies the acquirer's notifications.
///
/// Why here and not in a process of its own: most notifications settle refunds, which is
/// this process's business already (same tables, same store functions, same pool); applying
/// one needs no acquirer call, so it cannot starve the refund consumer of anything but a
/// database connection; and the contract's list of binaries, `paystream up` and the compose
/// file stay as they are. Each consumer has its own durable name and scales with the number of
/// refund-worker replicas. When either consumer stops for good it cancels `shutdown`, which
/// stops the other, so the process exits and its supervisor sees it.
pub async fn run_refund_worker(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let pool =
        paystream_shared::db::connect(config.database_url.expose(), config.db_pool_size).await?;
    let acquirer = HttpAcquirer::new(&config.acquirer_url, config.acquirer_timeout)
        .map_err(|e| WorkerError::Acquirer(e.to_string()))?;
    let schedule = RetrySchedule::new(config.retry_base, MAX_ATTEMPTS);
    let (refund_metrics, event_metrics) = (
        Arc::new(WorkerMetrics::new()),
        Arc::new(WorkerMetrics::new()),
    );
    let _health = health::start(
        &config,
        pool.clone(),
        true,
        vec![
            (REFUND_WORKER, refund_metrics.clone()),
            (PROVIDER_EVENTS_WORKER, event_metrics.clone()),
        ],
        &shutdown,
    )
    .await?;
    let worker = RefundWorker::new(pool.clone(), Arc::new(acquirer), schedule);
    let notifications = ProviderEventProcessor::new(pool, schedule);
    let (refunds, events) = tokio::join!(
        run_consumer(
            &config,
            refund_spec(&config),
            Arc::new(worker),
            refund_metrics,
            shutdown.clone(),
        ),
        run_consumer(
            &config,
            provider_events_spec(),
            Arc::new(notifications),
            event_metrics,
            shutdown,
        ),
    );
    refunds.and(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_wait_exceeds_the_whole_retry_budget() {
        let config = Config::from_lookup(|_| None).unwrap();
        // 1 s base, 10 s timeouts: backoffs at most 2+3+5+9 = 19 s, attempts 50 s.
        assert_eq!(handling_budget(&config), Duration::from_secs(69));
        assert!(confirm_spec(&config).ack_wait > handling_budget(&config));
    }
}
