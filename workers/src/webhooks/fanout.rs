//! The fan-out step: one event from the EVENTS stream becomes one delivery per matching
//! active subscription of the event's merchant. The delivery rows and their
//! `cmd.webhook.deliver` outbox rows are written by one statement, so they exist together or
//! not at all, and the unique (event, subscription) key makes a redelivered event a no-op.

use std::time::Duration;

use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::outbox::EventEnvelope;
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::webhooks as store;
use paystream_shared::store::StoreError;

pub struct FanOut {
    pool: PgPool,
    schedule: RetrySchedule,
}

impl FanOut {
    pub fn new(pool: PgPool, schedule: RetrySchedule) -> Self {
        Self { pool, schedule }
    }

    fn retry(&self, delivery: &DeliveryInfo) -> Outcome {
        let attempt = u32::try_from(delivery.delivered).unwrap_or(u32::MAX);
        Outcome::retry(
            self.schedule.delay_for_attempt(attempt),
            "the fan-out could not be recorded",
        )
    }
}

/// PostgreSQL's foreign-key violation: the event names no row in `events`.
fn is_missing_reference(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503"))
}

#[paystream_nats::async_trait]
impl Handler for FanOut {
    type Command = EventEnvelope;

    async fn handle(&self, event: EventEnvelope, delivery: &DeliveryInfo) -> Outcome {
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, event = %event.id, "fan-out cannot reach the database");
                return self.retry(delivery);
            }
        };
        match store::fan_out(&mut conn, &event).await {
            Ok(created) => {
                if !created.is_empty() {
                    tracing::debug!(event = %event.id, deliveries = created.len(), "fanned out");
                }
                Outcome::Ack
            }
            Err(e) if is_missing_reference(&e) => Outcome::DeadLetter(format!(
                "event {} is not in the events table; nothing to deliver",
                event.id
            )),
            Err(e) => {
                tracing::warn!(error = %e, event = %event.id, "fan-out failed; retrying");
                self.retry(delivery)
            }
        }
    }

    fn object_id(event: &EventEnvelope) -> Option<String> {
        Some(event.id.clone())
    }
}

/// How long a fan-out may run before JetStream hands its event to another worker: two short
/// statements, so anything near this means the database is in trouble.
pub const FANOUT_ACK_WAIT: Duration = Duration::from_secs(30);
