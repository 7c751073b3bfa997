//! Idempotency keys on every POST, after Stripe's design (one row per merchant and key, in
//! PostgreSQL): the request's fingerprint, a lock with a TTL, and the stored response.
//!
//! - A new key locks its row and runs the request.
//! - The same key with the same method, path and canonical body replays the stored response
//!   (`Idempotent-Replayed: true`); with anything different it is a 422 and nothing runs.
//! - Concurrent requests with one key wait for the holder and then replay its answer. A holder
//!   that died leaves a lock that expires after the TTL, and the next request takes over.
//! - Handlers that change state store their response in their own transaction
//!   ([`complete`]), so a crash between commit and storing cannot make a retry run twice.
//!   Validation errors are stored afterwards; 5xx, 404, 409 and 429 release the key, because
//!   retrying them may rightly give another answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poem::http::{Method, StatusCode};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use paystream_shared::webhooks::secret_box::SecretBox;

use crate::error::{to_contract_response, ApiError};
use crate::{AppState, MAX_BODY_BYTES};

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// How long a finished key is kept; older rows are treated as unused and purged.
pub const RETENTION_HOURS: i64 = 24;

/// Put in the request's extensions while a keyed request runs.
#[derive(Clone)]
pub struct Scope {
    merchant_id: String,
    key: String,
    stored: Arc<AtomicBool>,
}

/// Stores the response in the handler's transaction. Without a key this does nothing.
pub async fn complete(
    req: &Request,
    conn: &mut PgConnection,
    status: StatusCode,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(scope) = req.extensions().get::<Scope>() else {
        return Ok(());
    };
    store(conn, &scope.merchant_id, &scope.key, status, body).await?;
    scope.stored.store(true, Ordering::SeqCst);
    Ok(())
}

/// [`complete`] for an answer that carries a secret: `public` (without it) is what the row
/// shows, and `full` (the answer as sent) is kept sealed for the replay.
pub async fn complete_sealed(
    req: &Request,
    conn: &mut PgConnection,
    status: StatusCode,
    public: &[u8],
    full: &[u8],
    sealer: &SecretBox,
) -> Result<(), ApiError> {
    let Some(scope) = req.extensions().get::<Scope>() else {
        return Ok(());
    };
    store(conn, &scope.merchant_id, &scope.key, status, public).await?;
    let sealed = sealer.seal(full, &sealing_context(&scope.merchant_id, &scope.key));
    sqlx::query(
        "UPDATE idempotency_keys SET response_sealed = $3 WHERE merchant_id = $1 AND key = $2",
    )
    .bind(&scope.merchant_id)
    .bind(&scope.key)
    .bind(sealed)
    .execute(conn)
    .await?;
    scope.stored.store(true, Ordering::SeqCst);
    Ok(())
}

/// Binds a sealed answer to its (merchant, key), so it cannot be replayed under another.
fn sealing_context(merchant_id: &str, key: &str) -> Vec<u8> {
    format!("idempotency\x1f{merchant_id}\x1f{key}").into_bytes()
}

async fn store(
    conn: &mut PgConnection,
    merchant_id: &str,
    key: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4, locked_until = NULL,
                response_sealed = NULL
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .bind(i32::from(status.as_u16()))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

fn validate_key(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(ApiError::invalid(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(raw.to_owned())
}

/// SHA-256 over method, path and the body as canonical JSON (keys sorted, no insignificant
/// whitespace), so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same request.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let canonical = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec()),
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => b"{}".to_vec(),
        Err(_) => body.to_vec(),
    };
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(&canonical);
    h.finalize().to_vec()
}

enum Begin {
    Run,
    Replay { status: StatusCode, body: Vec<u8> },
}

#[derive(sqlx::FromRow)]
struct Existing {
    request_method: String,
    request_path: String,
    fingerprint: Vec<u8>,
    response_status: Option<i32>,
    response_body: Option<Vec<u8>>,
    response_sealed: Option<Vec<u8>>,
    lock_expired: bool,
}

async fn begin(
    state: &AppState,
    merchant_id: &str,
    key: &str,
    method: &Method,
    path: &str,
    fp: &[u8],
) -> Result<Begin, ApiError> {
    let ttl_ms = i64::try_from(state.config.idempotency_lock_ttl.as_millis()).unwrap_or(i64::MAX);
    let mut wait = Duration::from_millis(5);
    loop {
        // Insert, or reclaim a row older than the retention window as if it were new.
        let claimed = sqlx::query_scalar::<_, i32>(
            "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, fingerprint, locked_until)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::double precision / 1000))
             ON CONFLICT (merchant_id, key) DO UPDATE SET
                request_method = EXCLUDED.request_method, request_path = EXCLUDED.request_path,
                fingerprint = EXCLUDED.fingerprint, locked_until = EXCLUDED.locked_until,
                response_status = NULL, response_body = NULL, response_sealed = NULL,
                created_at = now()
             WHERE idempotency_keys.created_at < now() - make_interval(hours => $7)
             RETURNING 1",
        )
        .bind(merchant_id)
        .bind(key)
        .bind(method.as_str())
        .bind(path)
        .bind(fp)
        .bind(ttl_ms)
        .bind(i32::try_from(RETENTION_HOURS).unwrap_or(24))
        .fetch_optional(&state.pool)
        .await?;
        if claimed.is_some() {
            return Ok(Begin::Run);
        }
        let existing = sqlx::query_as::<_, Existing>(
            "SELECT request_method, request_path, fingerprint, response_status, response_body,
                    response_sealed, coalesce(locked_until < now(), false) AS lock_expired
             FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
        )
        .bind(merchant_id)
        .bind(key)
        .fetch_optional(&state.pool)
        .await?;
        let Some(existing) = existing else {
            continue; // released between our two statements: try to claim it again
        };
        if existing.request_method != method.as_str()
            || existing.request_path != path
            || existing.fingerprint != fp
        {
            return Err(ApiError::idempotency_reused());
        }
        if let (Some(status), Some(body)) = (existing.response_status, existing.response_body) {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let body = match existing.response_sealed {
                None => body,
                Some(sealed) => {
                    let sealer = SecretBox::new(state.config.webhook_secret_key.expose());
                    match sealer.open(&sealed, &sealing_context(merchant_id, key)) {
                        Ok(full) => full,
                        // Sealed under a key this process no longer has: the answer without
                        // its secret is still the truth about the object.
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot open a sealed idempotent answer; replaying it without its secret");
                            body
                        }
                    }
                }
            };
            return Ok(Begin::Replay { status, body });
        }
        if existing.lock_expired {
            let taken = sqlx::query_scalar::<_, i32>(
                "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3::double precision / 1000)
                 WHERE merchant_id = $1 AND key = $2 AND response_status IS NULL AND locked_until < now()
                 RETURNING 1",
            )
            .bind(merchant_id)
            .bind(key)
            .bind(ttl_ms)
            .fetch_optional(&state.pool)
            .await?;
            if taken.is_some() {
                tracing::warn!(
                    merchant_id,
                    "idempotency key lock expired; taking over from a dead holder"
                );
                return Ok(Begin::Run);
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

async fn release(state: &AppState, merchant_id: &str, key: &str) {
    let res = sqlx::query("DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND response_status IS NULL")
        .bind(merchant_id)
        .bind(key)
        .execute(&state.pool)
        .await;
    if let Err(e) = res {
        // The lock then simply expires after its TTL.
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}

/// Whether a response may be replayed for the same key: successes, and rejections of the
/// request itself (its body or parameters), which the same request will always get again.
fn cacheable(status: StatusCode) -> bool {
    status.is_success()
        || matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY
        )
}

/// Runs a POST under its Idempotency-Key (if any).
pub async fn around<E: Endpoint>(
    ep: &E,
    mut req: Request,
    state: &AppState,
    merchant_id: &str,
) -> poem::Result<Response> {
    let Some(raw_key) = req.headers().get(HEADER) else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let key = raw_key
        .to_str()
        .map_err(|_| {
            ApiError::invalid(
                "idempotency_key_invalid",
                "Idempotency-Key must be printable ASCII",
            )
        })
        .and_then(validate_key)?;
    let body = req
        .take_body()
        .into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    let method = req.method().clone();
    let path = req.original_uri().path().to_owned();
    let fp = fingerprint(&method, &path, &body);

    match begin(state, merchant_id, &key, &method, &path, &fp).await? {
        Begin::Replay { status, body } => {
            // Successes replay as 200, as the contract says; a stored rejection keeps its status
            // so a client cannot mistake it for success.
            let status = if status.is_success() {
                StatusCode::OK
            } else {
                status
            };
            Ok(Response::builder()
                .status(status)
                .content_type("application/json")
                .header(REPLAYED_HEADER, "true")
                .body(body))
        }
        Begin::Run => {
            let stored = Arc::new(AtomicBool::new(false));
            req.extensions_mut().insert(Scope {
                merchant_id: merchant_id.to_owned(),
                key: key.clone(),
                stored: stored.clone(),
            });
            req.set_body(Body::from(body));
            let mut resp = match ep.call(req).await {
                Ok(r) => r.into_response(),
                Err(e) => to_contract_response(e),
            };
            if stored.load(Ordering::SeqCst) {
                return Ok(resp);
            }
            let status = resp.status();
            if cacheable(status) {
                let bytes = resp.take_body().into_vec().await.unwrap_or_default();
                let mut conn = state.pool.acquire().await.map_err(ApiError::from)?;
                store(&mut conn, merchant_id, &key, status, &bytes)
                    .await
                    .map_err(ApiError::from)?;
                resp.set_body(bytes);
            } else {
                release(state, merchant_id, &key).await;
            }
            Ok(resp)
        }
    }
}

/// Deletes keys past the retention window; the scheduler calls this periodically.
pub async fn purge_expired(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(i32::try_from(RETENTION_HOURS).unwrap_or(24))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_canonical_json() {
        let a = fingerprint(&Method::POST, "/api/x", br#"{"a":1,"b":{"c":2,"d":3}}"#);
        let b = fingerprint(
            &Method::POST,
            "/api/x",
            b"{ \"b\": {\"d\":3, \"c\":2}, \"a\": 1 }",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint(&Method::POST, "/api/y", br#"{"a":1,"b":{"c":2,"d":3}}"#)
        );
        assert_ne!(
            a,
            fingerprint(&Method::POST, "/api/x", br#"{"a":2,"b":{"c":2,"d":3}}"#)
        );
        assert_eq!(
            fingerprint(&Method::POST, "/p", b""),
            fingerprint(&Method::POST, "/p", b"{}")
        );
        assert_ne!(
            fingerprint(&Method::POST, "/p", b"not json"),
            fingerprint(&Method::POST, "/p", b"{}")
        );
    }

    #[test]
    fn key_shape() {
        assert!(validate_key("abc-123").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(256)).is_err());
        assert!(validate_key("tab\there").is_err());
        assert!(validate_key(&"k".repeat(255)).is_ok());
    }

    #[test]
    fn what_is_cached() {
        assert!(cacheable(StatusCode::CREATED));
        assert!(cacheable(StatusCode::BAD_REQUEST));
        assert!(!cacheable(StatusCode::CONFLICT));
        assert!(!cacheable(StatusCode::NOT_FOUND));
        assert!(!cacheable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!cacheable(StatusCode::TOO_MANY_REQUESTS));
    }
}
