//! The `events` table: the record of every event, listable through the API. Events of a
//! payment intent's transition are written by the transition's own statement (`change.rs`);
//! every other event goes through [`insert`], always beside its outbox row.

use sqlx::PgConnection;

use crate::outbox::EventEnvelope;

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
