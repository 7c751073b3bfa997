//! The fan-out step: one event from the EVENTS stream becomes one delivery per matching
//! active subscription of the event's merchant. The delivery rows and their
//! `cmd.webhook.deliver` outbox rows are written by one statement, so they exist together or
//! not at all, and the unique (event, subscription) key makes a redelivered event a no-op.
//!
//! The events in hand at once share that statement (see [`super::batch`]): a batch of events
//! costs two statements, not two per event.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::outbox::EventEnvelope;
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::webhooks as store;
use paystream_shared::store::StoreError;

use super::batch::{BatchFn, Coalescer};
use super::MAX_BATCH;

/// What the fan-out of one event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fanned {
    /// The deliveries created (none if the event was fanned out before, or nobody listens).
    Created(Vec<String>),
    /// The event names no row in `events`.
    MissingEvent,
}

pub struct FanOut {
    batches: Coalescer<EventEnvelope, Result<Fanned, String>>,
    schedule: RetrySchedule,
}

impl FanOut {
    pub fn new(pool: PgPool, schedule: RetrySchedule) -> Self {
        Self::with_max_batch(pool, schedule, MAX_BATCH)
    }

    /// At most `max_batch` events per statement.
    pub fn with_max_batch(pool: PgPool, schedule: RetrySchedule, max_batch: usize) -> Self {
        let run: BatchFn<EventEnvelope, Result<Fanned, String>> =
            Arc::new(move |events: Vec<EventEnvelope>| {
                let pool = pool.clone();
                Box::pin(async move { Ok(fan_out_batch(&pool, &events).await) })
            });
        Self {
            batches: Coalescer::start(2, max_batch, run),
            schedule,
        }
    }

    fn retry(&self, delivery: &DeliveryInfo) -> Outcome {
        let attempt = u32::try_from(delivery.delivered).unwrap_or(u32::MAX);
        Outcome::retry(
            self.schedule.delay_for_attempt(attempt),
            "the fan-out could not be recorded",
        )
    }
}

/// PostgreSQL's foreign-key violation: an event names no row in `events`.
fn is_missing_reference(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503"))
}

/// One answer per event. The whole batch in one statement; if an event of it is missing from
/// `events` (which fails the statement), each event again on its own, so only that one is
/// dead-lettered and the others go through.
async fn fan_out_batch(pool: &PgPool, events: &[EventEnvelope]) -> Vec<Result<Fanned, String>> {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return vec![Err(format!("cannot reach the database: {e}")); events.len()],
    };
    match store::fan_out_many(&mut conn, events).await {
        Ok(created) => created
            .into_iter()
            .map(|c| Ok(Fanned::Created(c)))
            .collect(),
        Err(e) if is_missing_reference(&e) && events.len() > 1 => {
            let mut out = Vec::with_capacity(events.len());
            for event in events {
                out.push(match store::fan_out(&mut conn, event).await {
                    Ok(c) => Ok(Fanned::Created(c)),
                    Err(e) if is_missing_reference(&e) => Ok(Fanned::MissingEvent),
                    Err(e) => Err(e.to_string()),
                });
            }
            out
        }
        Err(e) if is_missing_reference(&e) => vec![Ok(Fanned::MissingEvent)],
        Err(e) => vec![Err(e.to_string()); events.len()],
    }
}

#[paystream_nats::async_trait]
impl Handler for FanOut {
    type Command = EventEnvelope;

    async fn handle(&self, event: EventEnvelope, delivery: &DeliveryInfo) -> Outcome {
        let id = event.id.clone();
        match self.batches.call(event).await.map_err(|e| e.to_string()) {
            Ok(Ok(Fanned::Created(created))) => {
                if !created.is_empty() {
                    tracing::debug!(event = %id, deliveries = created.len(), "fanned out");
                }
                Outcome::Ack
            }
            Ok(Ok(Fanned::MissingEvent)) => Outcome::DeadLetter(format!(
                "event {id} is not in the events table; nothing to deliver"
            )),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, event = %id, "fan-out failed; retrying");
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
