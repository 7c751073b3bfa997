//! The `idempotency_keys` table: one row per (merchant, key) with the request's fingerprint,
//! a lock with a TTL and a fencing token, and the stored answer. The API's idempotency layer
//! decides; every statement that writes the table is here.
//!
//! The lock is fenced: whoever takes it writes a fresh `lock_token`, and both storing the
//! answer and releasing the key are guarded on that token. A holder slower than the TTL, whose
//! lock a retry took over, can then neither store its answer nor free the key it no longer
//! holds; its caller rolls back everything the request did.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::webhooks::rotation::SealedRow;

/// How long a finished key is kept; older rows count as unused, are reclaimed by a new request
/// and purged by the scheduler.
pub const RETENTION_HOURS: i32 = 24;

/// A key's row as a new request finds it.
#[derive(Debug, sqlx::FromRow)]
pub struct Existing {
    pub request_method: String,
    pub request_path: String,
    pub fingerprint: Vec<u8>,
    pub response_status: Option<i32>,
    pub response_body: Option<Vec<u8>>,
    pub response_sealed: Option<Vec<u8>>,
    pub lock_expired: bool,
}

/// What identifies one request under a key.
pub struct Request<'a> {
    pub merchant_id: &'a str,
    pub key: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub fingerprint: &'a [u8],
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

const CLAIM: &str =
    "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, fingerprint,
                                   locked_until, lock_token)
     VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::double precision / 1000), $7)
     ON CONFLICT (merchant_id, key) DO UPDATE SET
        request_method = EXCLUDED.request_method, request_path = EXCLUDED.request_path,
        fingerprint = EXCLUDED.fingerprint, locked_until = EXCLUDED.locked_until,
        lock_token = EXCLUDED.lock_token,
        response_status = NULL, response_body = NULL, response_sealed = NULL,
        created_at = now()
     WHERE idempotency_keys.created_at < now() - make_interval(hours => $8)";

async fn run_claim(
    db: impl PgExecutor<'_>,
    sql: &str,
    req: &Request<'_>,
    ttl: Duration,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(sql)
        .bind(req.merchant_id)
        .bind(req.key)
        .bind(req.method)
        .bind(req.path)
        .bind(req.fingerprint)
        .bind(ttl_ms(ttl))
        .bind(token)
        .bind(RETENTION_HOURS)
        .fetch_optional(db)
        .await?;
    Ok(claimed.is_some())
}

/// Takes a key nobody holds: inserts its row, or reclaims a row past the retention window as
/// if it were new. True when `token` now holds the lock.
pub async fn claim(
    db: impl PgExecutor<'_>,
    req: &Request<'_>,
    ttl: Duration,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    run_claim(db, &format!("{CLAIM} RETURNING 1"), req, ttl, token).await
}

/// [`claim`] as the first statement of a transaction that began with a `SET LOCAL
/// lock_timeout` to bound the wait on another request's uncommitted claim of the key. Once
/// the key is held the timeout is lifted in the same statement, so it never applies to the
/// rest of the transaction's work.
pub async fn claim_in_transaction(
    conn: &mut PgConnection,
    req: &Request<'_>,
    ttl: Duration,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    run_claim(
        conn,
        &format!("{CLAIM} RETURNING set_config('lock_timeout', '0', true)"),
        req,
        ttl,
        token,
    )
    .await
}

/// The key's row, if any.
pub async fn find(
    db: impl PgExecutor<'_>,
    merchant_id: &str,
    key: &str,
) -> Result<Option<Existing>, sqlx::Error> {
    sqlx::query_as::<_, Existing>(
        "SELECT request_method, request_path, fingerprint, response_status, response_body,
                response_sealed, coalesce(locked_until < now(), false) AS lock_expired
         FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .fetch_optional(db)
    .await
}

/// Takes the lock of an unanswered key whose TTL ran out, with a new token. True when `token`
/// now holds it. If the old holder is alive after all, its token no longer matches and it can
/// store nothing.
pub async fn take_over(
    db: impl PgExecutor<'_>,
    merchant_id: &str,
    key: &str,
    ttl: Duration,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query_scalar::<_, i32>(
        "UPDATE idempotency_keys
         SET locked_until = now() + make_interval(secs => $3::double precision / 1000), lock_token = $4
         WHERE merchant_id = $1 AND key = $2 AND response_status IS NULL AND locked_until < now()
         RETURNING 1",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(ttl_ms(ttl))
    .bind(token)
    .fetch_optional(db)
    .await?;
    Ok(taken.is_some())
}

/// Stores the answer (and its sealed full copy, for answers that carry a secret) and unlocks
/// the key, only if `token` still holds the lock. False means the lock was lost: the caller
/// must not commit anything the request did.
#[allow(clippy::too_many_arguments)]
pub async fn store_response(
    conn: &mut PgConnection,
    merchant_id: &str,
    key: &str,
    token: Uuid,
    status: u16,
    body: &[u8],
    sealed: Option<&[u8]>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE idempotency_keys
         SET response_status = $4, response_body = $5, response_sealed = $6,
             locked_until = NULL, lock_token = NULL
         WHERE merchant_id = $1 AND key = $2 AND lock_token = $3 AND response_status IS NULL",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(token)
    .bind(i32::from(status))
    .bind(body)
    .bind(sealed)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Frees an unanswered key `token` holds, so a retry runs at once instead of waiting out the
/// TTL. A key whose answer was stored, or whose lock another request took over, is left alone.
pub async fn release(
    db: impl PgExecutor<'_>,
    merchant_id: &str,
    key: &str,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE merchant_id = $1 AND key = $2 AND lock_token = $3 AND response_status IS NULL",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(token)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes up to `limit` keys past the retention window, oldest first; the scheduler's
/// clean-up calls this until a batch comes back short (in batches, as
/// `outbox::purge_published`, so no one statement runs for long).
pub async fn purge_expired(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE (merchant_id, key) IN ( \
             SELECT merchant_id, key FROM idempotency_keys \
             WHERE created_at < now() - make_interval(hours => $1) \
             ORDER BY created_at LIMIT $2)",
    )
    .bind(RETENTION_HOURS)
    .bind(limit)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Binds a sealed answer to its (merchant, key), so it cannot be replayed under another.
pub fn sealing_context(merchant_id: &str, key: &str) -> Vec<u8> {
    format!("idempotency\x1f{merchant_id}\x1f{key}").into_bytes()
}

/// Up to `limit` keys after `after` (merchant id, key) whose sealed answer does not start with
/// `header` (the current sealing key's), locked until the caller's transaction ends so no
/// answer is stored over a re-sealed one unseen.
pub async fn lock_sealed_not_under(
    conn: &mut PgConnection,
    header: &[u8],
    after: &[String],
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let (merchant, key) = match after {
        [m, k] => (m.as_str(), k.as_str()),
        _ => ("", ""),
    };
    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT merchant_id, key, response_sealed FROM idempotency_keys
         WHERE response_sealed IS NOT NULL
           AND substring(response_sealed from 1 for octet_length($1::bytea)) <> $1
           AND (merchant_id, key) > ($2, $3)
         ORDER BY merchant_id, key LIMIT $4 FOR UPDATE",
    )
    .bind(header)
    .bind(merchant)
    .bind(key)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(merchant_id, key, sealed)| SealedRow {
            table: "idempotency_keys",
            aad: vec![sealing_context(&merchant_id, &key)],
            id: format!("{merchant_id}/{key}"),
            pk: vec![merchant_id, key],
            values: vec![Some(sealed)],
        })
        .collect())
}

/// Replaces a sealed answer, only if it is still `row`'s (compare-and-set): false if it
/// changed since it was read.
pub async fn replace_sealed(
    conn: &mut PgConnection,
    row: &SealedRow,
    resealed: &[Option<Vec<u8>>],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET response_sealed = $3
         WHERE merchant_id = $1 AND key = $2 AND response_sealed = $4",
    )
    .bind(&row.pk[0])
    .bind(&row.pk[1])
    .bind(&resealed[0])
    .bind(&row.values[0])
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sealed answers not under `header`'s key.
pub async fn count_sealed_not_under<'e>(
    db: impl PgExecutor<'e>,
    header: &[u8],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE response_sealed IS NOT NULL
           AND substring(response_sealed from 1 for octet_length($1::bytea)) <> $1",
    )
    .bind(header)
    .fetch_one(db)
    .await
}
