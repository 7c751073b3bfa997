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
//! - The lock is fenced (`store::idempotency_keys`): a holder slower than the TTL whose key a
//!   retry took over cannot store its answer, so [`complete`] fails with 409
//!   `idempotency_key_in_use` and the handler's transaction rolls back all it did. Only the
//!   request that holds the lock commits.
//! - Whatever the handler did, a key whose answer was not stored and committed is released
//!   at once: after an error, a failed commit, or a panic (answered as the opaque 500).
//! - The payment intents' own POSTs (create, confirm, capture, cancel: the hot path) take the
//!   key inside the handler's transaction instead ([`begin`]): the claim, the work and the
//!   answer commit together, one commit fewer per request. The uncommitted row is the lock: a
//!   concurrent duplicate waits on it and then replays the answer, a holder that dies or fails
//!   rolls it back (so there is nothing to release and no lock to lose), and a retry waits at
//!   most the lock's TTL for a holder stalled inside its transaction, then gets 409
//!   `idempotency_key_in_use` and runs nothing.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use poem::http::{Method, StatusCode};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicU8;
use std::sync::Mutex;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use paystream_shared::store::idempotency_keys::{self as store, sealing_context, Existing};
use paystream_shared::webhooks::secret_box::SecretBox;

use crate::error::{panic_response, to_contract_response, ApiError};
use crate::{AppState, MAX_BODY_BYTES};

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// How long a finished key is kept; older rows are treated as unused and purged.
pub const RETENTION_HOURS: i32 = store::RETENTION_HOURS;

/// The key is not claimed yet: the handler claims it in its transaction ([`begin`]).
const DEFERRED: u8 = 0;
/// Claimed inside the handler's (uncommitted) transaction.
const IN_TX: u8 = 1;
/// Claimed and committed before the handler ran, with a TTL and the fencing token.
const HELD: u8 = 2;

/// A status and body stored under a key.
type StoredAnswer = (StatusCode, Vec<u8>);

/// Put in the request's extensions while a keyed request runs.
#[derive(Clone)]
pub struct Scope {
    merchant_id: String,
    key: String,
    method: String,
    path: String,
    fingerprint: Vec<u8>,
    state: AppState,
    /// The fencing token this request holds the lock with.
    token: Uuid,
    /// [`DEFERRED`], [`IN_TX`] or [`HELD`].
    mode: Arc<AtomicU8>,
    /// An answer found under the key when [`begin`] tried to claim it: the layer sends it
    /// instead of whatever the handler made of the error [`begin`] returned.
    replay: Arc<Mutex<Option<StoredAnswer>>>,
    /// Set once the handler stored its answer in its transaction. It says nothing about
    /// whether that transaction committed: a key is released after any answer that is not a
    /// success, and the release finds a committed answer and leaves it alone.
    stored: Arc<AtomicBool>,
}

/// Stores the response in the handler's transaction. Without a key this does nothing. If the
/// request lost its lock to a retry (it ran longer than the lock's TTL), nothing may commit:
/// the error is returned for the handler to pass on, dropping (rolling back) its transaction.
pub async fn complete(
    req: &Request,
    conn: &mut PgConnection,
    status: StatusCode,
    body: &[u8],
) -> Result<(), ApiError> {
    store_in(req, conn, status, body, None).await
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
    let sealed = sealer.seal(full, &sealing_context(&scope.merchant_id, &scope.key));
    store_in(req, conn, status, public, Some(&sealed)).await
}

async fn store_in(
    req: &Request,
    conn: &mut PgConnection,
    status: StatusCode,
    body: &[u8],
    sealed: Option<&[u8]>,
) -> Result<(), ApiError> {
    let Some(scope) = req.extensions().get::<Scope>() else {
        return Ok(());
    };
    let held = store::store_response(
        conn,
        &scope.merchant_id,
        &scope.key,
        scope.token,
        status.as_u16(),
        body,
        sealed,
    )
    .await?;
    if !held {
        tracing::warn!(
            merchant_id = %scope.merchant_id,
            "idempotency key lock lost to a retry while the request ran; rolling it back"
        );
        return Err(ApiError::idempotency_in_use());
    }
    scope.stored.store(true, Ordering::SeqCst);
    Ok(())
}

/// The handler's transaction. On a route whose key is claimed in the handler, the claim is the
/// transaction's first statement, so it commits with the work and the answer; everywhere else
/// this is `pool.begin()`. When the key is taken, this decides as the layer does: an error to
/// return as it is (422 for another request under the key, 409 if the holder outlasts the
/// lock's TTL), or an answer to replay, which the layer sends in place of the error.
pub async fn begin(
    req: &Request,
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, ApiError> {
    let Some(scope) = req.extensions().get::<Scope>() else {
        return Ok(pool.begin().await?);
    };
    if scope.mode.load(Ordering::SeqCst) != DEFERRED {
        return Ok(pool.begin().await?);
    }
    let ttl = scope.state.config.idempotency_lock_ttl;
    // The wait on a holder's uncommitted row is bounded by the lock's TTL, as the wait on a
    // committed lock is; set in the BEGIN's own round trip, and lifted by the claim once it
    // holds the key, so the handler's own statements wait as they always did.
    let mut tx = pool
        .begin_with(format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'",
            ttl.as_millis().max(1)
        ))
        .await?;
    match store::claim_in_transaction(&mut tx, &scope.request(), ttl, scope.token).await {
        Ok(true) => {
            scope.mode.store(IN_TX, Ordering::SeqCst);
            return Ok(tx);
        }
        Ok(false) => {}
        Err(e) if is_lock_timeout(&e) => return Err(ApiError::idempotency_busy()),
        Err(e) => return Err(e.into()),
    }
    tx.rollback().await?;
    // Answered already, or locked by a request that claimed it before running.
    match wait_for_key(&scope.state, &scope.request(), scope.token).await? {
        Begin::Run => {
            scope.mode.store(HELD, Ordering::SeqCst);
            Ok(pool.begin().await?)
        }
        Begin::Replay { status, body } => {
            *scope.replay.lock().unwrap_or_else(|p| p.into_inner()) = Some((status, body));
            // Never sent: the layer answers the replay instead.
            Err(ApiError::idempotency_busy())
        }
    }
}

/// PostgreSQL's `lock_not_available`: the `lock_timeout` ran out.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

impl Scope {
    fn request(&self) -> store::Request<'_> {
        store::Request {
            merchant_id: &self.merchant_id,
            key: &self.key,
            method: &self.method,
            path: &self.path,
            fingerprint: &self.fingerprint,
        }
    }
}

/// Whether the route's handler claims its key itself, with [`begin`]: the payment intents'
/// create, confirm, capture and cancel, whose handlers take their transaction from [`begin`]
/// before anything but reads. Every other route is claimed by the layer before it runs.
fn claims_in_handler(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/payment-intents") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), ["", id, "confirm" | "capture" | "cancel"] if !id.is_empty())
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

fn replay_of(state: &AppState, merchant_id: &str, key: &str, existing: Existing) -> Option<Begin> {
    let (Some(status), Some(body)) = (existing.response_status, existing.response_body) else {
        return None;
    };
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let body = match existing.response_sealed {
        None => body,
        Some(sealed) => {
            let sealer = SecretBox::from_config(&state.config);
            match sealer.open(&sealed, &sealing_context(merchant_id, key)) {
                Ok(full) => full,
                // Sealed under a key this process no longer has: the answer without its
                // secret is still the truth about the object.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a sealed idempotent answer; replaying it without its secret");
                    body
                }
            }
        }
    };
    Some(Begin::Replay { status, body })
}

/// Claims the key for `token` (committed, with the TTL), waiting out a live holder, or finds
/// the answer to replay.
async fn wait_for_key(
    state: &AppState,
    req: &store::Request<'_>,
    token: Uuid,
) -> Result<Begin, ApiError> {
    let ttl = state.config.idempotency_lock_ttl;
    let mut wait = Duration::from_millis(5);
    loop {
        if store::claim(&state.pool, req, ttl, token).await? {
            return Ok(Begin::Run);
        }
        let Some(existing) = store::find(&state.pool, req.merchant_id, req.key).await? else {
            continue; // released between our two statements: try to claim it again
        };
        if existing.request_method != req.method
            || existing.request_path != req.path
            || existing.fingerprint != req.fingerprint
        {
            return Err(ApiError::idempotency_reused());
        }
        let lock_expired = existing.lock_expired;
        if let Some(replay) = replay_of(state, req.merchant_id, req.key, existing) {
            return Ok(replay);
        }
        if lock_expired
            && store::take_over(&state.pool, req.merchant_id, req.key, ttl, token).await?
        {
            tracing::warn!(
                merchant_id = req.merchant_id,
                "idempotency key lock expired; taking over from a dead or stalled holder"
            );
            return Ok(Begin::Run);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

async fn release(state: &AppState, merchant_id: &str, key: &str, token: Uuid) {
    if let Err(e) = store::release(&state.pool, merchant_id, key, token).await {
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
    // A multipart upload (dispute evidence, up to 8 files of 5 MB) is streamed by its handler,
    // never buffered here to be fingerprinted; it runs without replay (docs/api.md).
    let multipart = req
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let Some(raw_key) = req.headers().get(HEADER).filter(|_| !multipart) else {
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
    let request = store::Request {
        merchant_id,
        key: &key,
        method: method.as_str(),
        path: &path,
        fingerprint: &fp,
    };

    let token = Uuid::new_v4();
    let deferred = claims_in_handler(&path);
    if !deferred {
        if let Begin::Replay { status, body } = wait_for_key(state, &request, token).await? {
            return Ok(replay_response(status, body));
        }
    }
    let stored = Arc::new(AtomicBool::new(false));
    let scope = Scope {
        merchant_id: merchant_id.to_owned(),
        key: key.clone(),
        method: method.as_str().to_owned(),
        path: path.clone(),
        fingerprint: fp.clone(),
        state: state.clone(),
        token,
        mode: Arc::new(AtomicU8::new(if deferred { DEFERRED } else { HELD })),
        replay: Arc::default(),
        stored: stored.clone(),
    };
    req.extensions_mut().insert(scope.clone());
    req.set_body(Body::from(body));
    // A panic must not leave the key locked until its TTL: catch it here, where the key is
    // known. The handler's transaction was dropped while unwinding, so nothing it did
    // commits (a claim in it included); the client gets the opaque 500, and a retry runs at
    // once.
    let result = AssertUnwindSafe(ep.call(req)).catch_unwind().await;
    let mode = scope.mode.load(Ordering::SeqCst);
    let mut resp = match result {
        Ok(Ok(r)) => r.into_response(),
        Ok(Err(e)) => to_contract_response(e),
        Err(panic) => {
            let resp = panic_response(panic.as_ref());
            if mode == HELD {
                release(state, merchant_id, &key, token).await;
            }
            return Ok(resp);
        }
    };
    if let Some((status, body)) = scope
        .replay
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Ok(replay_response(status, body));
    }
    let status = resp.status();
    let stored = stored.load(Ordering::SeqCst);
    if stored && status.is_success() {
        return Ok(resp);
    }
    if !stored && cacheable(status) {
        if mode != HELD {
            // The handler answered without holding the key (a rejection before its
            // transaction, or one inside it, which rolled the claim back): claim it now to
            // store the rejection, unless another request answered under the key meanwhile.
            if let Begin::Replay { status, body } = wait_for_key(state, &request, token).await? {
                return Ok(replay_response(status, body));
            }
        }
        let bytes = resp.take_body().into_vec().await.unwrap_or_default();
        let mut conn = state.pool.acquire().await.map_err(ApiError::from)?;
        let held = store::store_response(
            &mut conn,
            merchant_id,
            &key,
            token,
            status.as_u16(),
            &bytes,
            None,
        )
        .await
        .map_err(ApiError::from)?;
        if !held {
            // A retry holds the key now; its answer is the one to keep.
            tracing::warn!(
                merchant_id,
                "idempotency key lock lost before a rejection was stored"
            );
        }
        resp.set_body(bytes);
    } else if mode == HELD {
        // An error after the answer was stored means the transaction did not commit
        // (a failed commit, say): the row still shows no answer, and the release
        // frees it. A committed answer is left alone by the release. A claim made in the
        // handler's transaction went with its rollback: nothing to release.
        release(state, merchant_id, &key, token).await;
    }
    Ok(resp)
}

/// A stored answer sent again. Successes replay as 200, as the contract says; a stored
/// rejection keeps its status so a client cannot mistake it for success.
fn replay_response(status: StatusCode, body: Vec<u8>) -> Response {
    let status = if status.is_success() {
        StatusCode::OK
    } else {
        status
    };
    Response::builder()
        .status(status)
        .content_type("application/json")
        .header(REPLAYED_HEADER, "true")
        .body(body)
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
    fn which_routes_claim_in_the_handler() {
        assert!(claims_in_handler("/api/payment-intents"));
        assert!(claims_in_handler("/api/payment-intents/pi_1/confirm"));
        assert!(claims_in_handler("/api/payment-intents/pi_1/capture"));
        assert!(claims_in_handler("/api/payment-intents/pi_1/cancel"));
        assert!(!claims_in_handler("/api/payment-intents/pi_1/refund"));
        assert!(!claims_in_handler("/api/payment-intents//confirm"));
        assert!(!claims_in_handler("/api/payment-intents/pi_1/confirm/x"));
        assert!(!claims_in_handler("/api/payment-intentsx"));
        assert!(!claims_in_handler("/api/refunds"));
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
