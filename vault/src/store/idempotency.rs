//! `vault.idempotency_keys`: the answers of `POST /vault/tokens` under an Idempotency-Key.
//!
//! The key is claimed by an INSERT in the request's own transaction. A concurrent request with
//! the same key blocks on the primary key until the first commits (then it finds the stored
//! answer) or rolls back (then its own INSERT goes through): PostgreSQL serializes them, and a
//! crash leaves nothing locked.

use sqlx::PgConnection;

pub enum Claim {
    /// This request holds the key; store its answer with [`store`] before committing.
    Claimed,
    /// An answer is stored for this key.
    Stored {
        request_mac: Vec<u8>,
        status: u16,
        body: serde_json::Value,
    },
}

/// Keys older than this are forgotten (the contract keeps them 24 hours).
pub const KEEP_HOURS: i32 = 24;

pub async fn claim(
    conn: &mut PgConnection,
    merchant_id: &str,
    key: &str,
    request_mac: &[u8],
) -> Result<Claim, sqlx::Error> {
    // An expired answer is forgotten first, so the key works again.
    sqlx::query(
        "DELETE FROM vault.idempotency_keys WHERE merchant_id = $1 AND key = $2
         AND created_at < now() - make_interval(hours => $3)",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(KEEP_HOURS)
    .execute(&mut *conn)
    .await?;
    let claimed = sqlx::query(
        "INSERT INTO vault.idempotency_keys (merchant_id, key, request_mac, response_status, response_body)
         VALUES ($1, $2, $3, 0, 'null') ON CONFLICT (merchant_id, key) DO NOTHING",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(request_mac)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Claim::Claimed);
    }
    let (request_mac, status, body): (Vec<u8>, i16, serde_json::Value) = sqlx::query_as(
        "SELECT request_mac, response_status, response_body FROM vault.idempotency_keys
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Claim::Stored {
        request_mac,
        status: u16::try_from(status).unwrap_or(500),
        body,
    })
}

pub async fn store(
    conn: &mut PgConnection,
    merchant_id: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vault.idempotency_keys SET response_status = $3, response_body = $4
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets answers older than [`KEEP_HOURS`].
pub async fn purge_expired(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM vault.idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(KEEP_HOURS)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
