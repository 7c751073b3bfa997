//! The `outbox` table: every write to it. Rows are queued in the writer's own transaction
//! (so a message exists exactly when the change it announces committed), claimed and marked by
//! the relay in the nats crate, and purged by the scheduler once published.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One queued message as the relay reads it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    /// Becomes the message's `Nats-Msg-Id`, so a re-publish is dropped by JetStream.
    pub id: Uuid,
    /// The subject without the stream prefix; the relay adds it.
    pub subject: String,
    pub payload: serde_json::Value,
}

/// Queues one message for `subject` (without the stream prefix; the relay adds it).
/// The returned id becomes the message's `Nats-Msg-Id`.
pub async fn enqueue(
    conn: &mut PgConnection,
    subject: &str,
    payload: &serde_json::Value,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    enqueue_with_id(conn, id, subject, payload).await?;
    Ok(id)
}

/// Like [`enqueue`], under an id the caller chose first: the webhook pipeline records the id
/// (which becomes the `Nats-Msg-Id`) on the delivery row the message drives.
pub async fn enqueue_with_id(
    conn: &mut PgConnection,
    id: Uuid,
    subject: &str,
    payload: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (id, subject, payload) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(subject)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether anything waits to be published. Relays are woken often and several run at once,
/// so most wake-ups find nothing of their own: one cheap autocommit read (on the partial
/// index) spares those a transaction.
pub async fn any_unpublished(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)")
        .fetch_one(pool)
        .await
}

/// Claims up to `batch` unpublished rows, oldest first, for the caller's transaction. The
/// row locks keep other relays off them until it ends (`SKIP LOCKED`: they take the next
/// rows instead of waiting), so concurrent relays never publish one row at the same time.
pub async fn claim_unpublished(
    conn: &mut PgConnection,
    batch: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, subject, payload FROM outbox WHERE published_at IS NULL \
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(conn)
    .await
}

/// Marks rows JetStream acknowledged as published, in the transaction that claimed them.
pub async fn mark_published(conn: &mut PgConnection, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Deletes up to `limit` rows published more than `retention_hours` ago (kept until then for
/// inspection), oldest first; the caller repeats while a full batch comes back. Unpublished
/// rows are never deleted, however old. In batches, because one statement over a day of a
/// busy system's rows is one long transaction: it holds back what vacuum may reclaim
/// everywhere in the database for as long as it runs.
pub async fn purge_published(
    pool: &PgPool,
    retention_hours: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN ( \
             SELECT id FROM outbox WHERE published_at IS NOT NULL \
             AND published_at < now() - make_interval(hours => $1) \
             ORDER BY published_at LIMIT $2)",
    )
    .bind(retention_hours)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}
