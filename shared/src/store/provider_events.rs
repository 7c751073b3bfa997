//! Stored acquirer notifications. The API records each one with the command that queues its
//! processing, in one transaction; the processor locks the row, applies it and records the
//! outcome in the transaction that applied it, so "processed once" is a database fact.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::commands::{ProviderEventCommand, SUBJECT_PROVIDER_EVENT};
use crate::domain::provider_event::{Envelope, ProcessingOutcome};
use crate::outbox;

/// One notification as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProviderEvent {
    pub id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// The whole notification body as received.
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// Whether [`record`] stored a new notification or recognised one it already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
}

const COLUMNS: &str = "id, type, payload, created_at, received_at, processed_at, outcome, error";

/// Stores a verified notification and queues its processing, in the caller's transaction. A
/// notification whose id is already stored changes nothing: no second row, no second command.
pub async fn record(
    conn: &mut PgConnection,
    envelope: &Envelope,
    payload: &serde_json::Value,
) -> Result<Recorded, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO provider_events (id, type, payload, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(envelope.id.as_str())
    .bind(&envelope.event_type)
    .bind(payload)
    .bind(envelope.created_at)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Recorded::Duplicate);
    }
    let command = ProviderEventCommand::ProcessV1 {
        event_id: envelope.id.as_str().to_owned(),
    };
    outbox::enqueue(conn, SUBJECT_PROVIDER_EVENT, &command.to_json()).await?;
    Ok(Recorded::New)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
) -> Result<Option<ProviderEvent>, StoreError> {
    Ok(sqlx::query_as::<_, ProviderEvent>(&format!(
        "SELECT {COLUMNS} FROM provider_events WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Reads a notification and locks it for the rest of the transaction, so two deliveries of
/// its command never process it side by side.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<ProviderEvent>, StoreError> {
    Ok(sqlx::query_as::<_, ProviderEvent>(&format!(
        "SELECT {COLUMNS} FROM provider_events WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Marks a locked notification processed with its outcome, in the transaction that applied it.
pub async fn mark_processed(
    conn: &mut PgConnection,
    id: &str,
    outcome: ProcessingOutcome,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE provider_events SET processed_at = now(), outcome = $2, error = NULL
         WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(outcome.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records why a notification could not be applied. It stays unprocessed: when an operator
/// fixes the cause and redelivers it from the dead letters, it is applied then.
pub async fn mark_dead_lettered<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE provider_events SET outcome = 'dead_lettered', error = $2
         WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}
