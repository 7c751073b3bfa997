//! The webhook worker: two durable consumers in one process.
//!
//! - **Fan-out** (`webhook-fanout` on EVENTS, `evt.>`): each event becomes one delivery row per
//!   matching active subscription, with its `cmd.webhook.deliver` command, in one statement.
//! - **Delivery** (`webhook-delivery` on WEBHOOK_DELIVERIES): signs and POSTs, records every
//!   attempt, retries by nak with the contract's delay, dead-letters what fails for good.
//!
//! Both are at-least-once and idempotent: the fan-out by the unique (event, subscription)
//! key, the delivery by the attempt claimed in its row before each HTTP call.

pub mod batch;
pub mod delivery;
pub mod fanout;
pub mod limiter;
pub mod resolver;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use paystream_nats::consumer::ConsumerSpec;
use paystream_nats::topology::Stream;
use paystream_shared::config::Config;
use paystream_shared::retry::{RetrySchedule, MAX_ATTEMPTS};
use paystream_shared::webhooks::queue::SUBJECT_WEBHOOK_DELIVER;
use paystream_shared::webhooks::secret_box::SecretBox;

use crate::runtime::{WorkerError, WorkerProcess};
use delivery::{Deliverer, DeliveryOptions};
use fanout::FanOut;

/// The actor name in audit entries (a 410 disabling a subscription).
pub const WORKER: &str = "webhook-worker";
pub const FANOUT_DURABLE: &str = "webhook-fanout";
pub const DELIVERY_DURABLE: &str = "webhook-delivery";

/// Deliveries one process has in flight at once. They wait on the network, not the CPU, and
/// hold no database connection while they wait (their statements are batched, see
/// [`batch`]), so this can be far above the pool size.
pub const DELIVERY_CONCURRENCY: usize = 512;
/// The most deliveries one statement loads, claims or records, and events one fan-out
/// statement takes.
pub const MAX_BATCH: usize = 256;
/// In flight per endpoint (subscription) and process: a quarter of the total, so three dead
/// endpoints timing out together still leave a quarter of the slots to everybody else.
pub const PER_ENDPOINT: usize = DELIVERY_CONCURRENCY / 4;
/// Unacked commands the server lets the delivery consumer hold: retries waiting out their
/// delay count against it, so it must be far above what a few dead endpoints can park there,
/// or they would stop the server from handing out anything else.
pub const DELIVERY_MAX_ACK_PENDING: i64 = 100_000;
/// The nak delay (up to twice this) of a command whose endpoint is at its bound.
pub const SATURATION_DELAY: Duration = Duration::from_millis(200);

/// The fan-out consumer: every event, five deliveries (a database outage longer than the
/// schedule sends the event to the dead letters, from where it can be replayed).
pub fn fanout_spec() -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(Stream::Events, FANOUT_DURABLE, "evt.>");
    spec.ack_wait = fanout::FANOUT_ACK_WAIT;
    // Events wait for their batch's statement, not for the network: enough in hand that one
    // fan-out batch runs while the next fills.
    spec.concurrency = 256;
    spec.fetch_batch = 128;
    spec
}

/// The delivery consumer. `max_deliver` is unlimited: the attempt count in the delivery row
/// decides when a delivery has failed (JetStream's count also grows with every saturation
/// nak), and an attempt is claimed before its HTTP call, so even a command that crashes its
/// worker every time is dead-lettered after five claims. The ack wait covers one attempt's
/// timeout with room for the database work around it.
pub fn delivery_spec(config: &Config) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        Stream::WebhookDeliveries,
        DELIVERY_DURABLE,
        SUBJECT_WEBHOOK_DELIVER,
    );
    spec.max_deliver = -1;
    spec.ack_wait = config.webhook_timeout * 3;
    spec.max_ack_pending = DELIVERY_MAX_ACK_PENDING;
    spec.concurrency = DELIVERY_CONCURRENCY;
    spec.fetch_batch = 256;
    spec
}

pub fn delivery_options(config: &Config) -> DeliveryOptions {
    DeliveryOptions {
        timeout: config.webhook_timeout,
        allow_private: config.webhook_allow_private,
        per_endpoint: PER_ENDPOINT,
        saturation_delay: SATURATION_DELAY,
        max_batch: MAX_BATCH,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookWorkerError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Db(#[from] paystream_shared::db::DbError),
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The `webhook-worker` process: the fan-out and the delivery consumers.
pub async fn run_webhook_worker(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), WebhookWorkerError> {
    if config.webhook_allow_private {
        tracing::warn!("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE is on: deliveries may reach loopback and private addresses");
    }
    let process = WorkerProcess::connect(&config, config.db_pool_size).await?;
    let schedule = RetrySchedule::new(config.retry_base, MAX_ATTEMPTS);
    let deliverer = Deliverer::new(
        process.pool(),
        SecretBox::from_config(&config),
        schedule,
        delivery_options(&config),
    )?;
    let fanout = FanOut::new(process.pool(), schedule);
    process
        .consumer(fanout_spec(), fanout)
        .consumer(delivery_spec(&config), deliverer)
        .run(shutdown)
        .await
        .map_err(WebhookWorkerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_let_our_own_count_decide() {
        let config = Config::development_defaults().unwrap();
        let d = delivery_spec(&config);
        assert_eq!(d.max_deliver, -1);
        assert_eq!(d.ack_wait, Duration::from_secs(30));
        assert!(d.ack_wait > config.webhook_timeout);
        assert!(PER_ENDPOINT < d.concurrency);
        let f = fanout_spec();
        assert_eq!(f.filter_subject, "evt.>");
        assert!(f.max_deliver > 0);
        let o = delivery_options(&config);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert!(!o.allow_private);
    }
}
