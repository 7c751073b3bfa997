//! `vault.tokens`: single-use, short-lived handles on a record.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

pub struct NewToken<'a> {
    pub id: &'a str,
    pub merchant_id: &'a str,
    pub record_id: &'a str,
    pub kind: &'a str,
    pub created_by: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut PgConnection, t: NewToken<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vault.tokens (id, merchant_id, record_id, kind, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(t.id)
    .bind(t.merchant_id)
    .bind(t.record_id)
    .bind(t.kind)
    .bind(t.created_by)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses the token, once: one guarded UPDATE, so of two concurrent consumes the row lock lets
/// exactly one see `used_at IS NULL`. Returns the record id; `None` when the token is unknown,
/// another merchant's, expired or used.
pub async fn consume(
    conn: &mut PgConnection,
    id: &str,
    merchant_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE vault.tokens SET used_at = now()
         WHERE id = $1 AND merchant_id = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING record_id",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(conn)
    .await
}

/// The kind (`card`, `bank_account`) of a token `consume` would accept now, without using it:
/// a caller that expects one kind learns of a mismatch before the token is spent. A token's
/// kind never changes, so checking first and consuming after decides the same.
pub async fn live_kind(
    conn: &mut PgConnection,
    id: &str,
    merchant_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT kind FROM vault.tokens
         WHERE id = $1 AND merchant_id = $2 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(conn)
    .await
}

/// Makes a token expire now, for other crates' tests of what an expired token gets (the
/// lifetime itself is fixed at 15 minutes).
#[cfg(feature = "testing")]
pub async fn expire_now(pool: &sqlx::PgPool, id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE vault.tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Forgets tokens that expired unused, with their records and data keys: a card nobody
/// stored is not kept. One statement (the foreign keys are checked at its end), so a token
/// consumed meanwhile (`used_at` set) is never touched, and neither is a stored record.
pub async fn purge_expired(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "WITH t AS (
             DELETE FROM vault.tokens WHERE used_at IS NULL AND expires_at < now()
             RETURNING record_id
         ), r AS (
             DELETE FROM vault.records
             WHERE id IN (SELECT record_id FROM t) AND stored_at IS NULL
             RETURNING data_key_id
         )
         DELETE FROM vault.data_keys WHERE id IN (SELECT data_key_id FROM r)",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
