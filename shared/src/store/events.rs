//! The `events` table: the record of every event, listable through the API. Events of a
//! payment intent's transition are written by the transition's own statement (`change.rs`);
//! every other event goes through [`insert`], always beside its outbox row. Merchants read
//! them through [`get_event`] and [`list_events`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::outbox::EventEnvelope;
use crate::store::StoreError;
use crate::webhooks::views::WebhookEventView;

/// Records `envelope` as an event about `object_id`, in the caller's transaction.
pub async fn insert(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    object_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (id, merchant_id, type, object_id, data, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&envelope.id)
    .bind(&envelope.merchant_id)
    .bind(&envelope.event_type)
    .bind(object_id)
    .bind(&envelope.data)
    .bind(envelope.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct EventRow {
    id: String,
    #[sqlx(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl From<EventRow> for WebhookEventView {
    fn from(r: EventRow) -> Self {
        WebhookEventView {
            id: r.id,
            event_type: r.event_type,
            data: r.data,
            created_at: r.created_at,
        }
    }
}

pub async fn get_event<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<WebhookEventView>, StoreError> {
    let row = sqlx::query_as::<_, EventRow>(
        "SELECT id, type, data, created_at FROM events WHERE id = $1 AND merchant_id = $2",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// Newest first, optionally of one type; `starting_after` is an event id of this merchant.
pub async fn list_events<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    event_type: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<WebhookEventView>, StoreError> {
    let rows = sqlx::query_as::<_, EventRow>(
        "SELECT id, type, data, created_at FROM events
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR type = $2)
           AND ($3::text IS NULL OR (created_at, id) < (
                SELECT c.created_at, c.id FROM events c WHERE c.id = $3 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC
         LIMIT $4",
    )
    .bind(merchant_id)
    .bind(event_type)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}
