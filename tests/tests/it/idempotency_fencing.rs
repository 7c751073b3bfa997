//! The Idempotency-Key lock under failure: a panicking handler, a commit that fails, and a
//! holder slower than the lock's TTL. The layer is the real one (`idempotency::around`) over
//! real PostgreSQL; the panic and the failed commit come from endpoints written for the test,
//! since no public route panics or fails its commit on purpose.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::middleware::CatchPanic;
use poem::test::TestClient;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use serde_json::json;
use tracing::instrument::WithSubscriber;

use paystream_api::error::{ApiError, PanicAnswer};
use paystream_api::{idempotency, AppState};
use paystream_tests::{spawn_app_with, TestApp};

/// Long enough that a test finishing in time proves the key was released, not expired.
const LONG_TTL: Duration = Duration::from_secs(60);

fn state(app: &TestApp) -> AppState {
    AppState {
        pool: app.pool.clone(),
        nats: None,
        config: app.config.clone(),
        metrics: Arc::default(),
        relay_waker: paystream_nats::relay::Waker::new(),
    }
}

/// `ep` behind the same layers as the API's `/api` routes: the Idempotency-Key (for this
/// app's merchant) and the panic guard.
fn guarded<E: Endpoint + 'static>(app: &TestApp, ep: E) -> impl Endpoint {
    let state = state(app);
    let merchant = app.merchant_id.clone();
    ep.around(move |ep, req| {
        let (state, merchant) = (state.clone(), merchant.clone());
        async move { idempotency::around(&ep, req, &state, &merchant).await }
    })
    .with(CatchPanic::new().with_handler(PanicAnswer))
}

/// Stores `{"ok": true}` as the answer in its own transaction and commits, as handlers do.
async fn answer_and_commit(pool: &sqlx::PgPool, req: &Request) -> poem::Result<Response> {
    let body = br#"{"ok":true}"#;
    let mut tx = pool.begin().await.map_err(ApiError::from)?;
    idempotency::complete(req, &mut tx, StatusCode::CREATED, body).await?;
    tx.commit().await.map_err(ApiError::from)?;
    Ok(body.with_status(StatusCode::CREATED).into_response())
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_the_opaque_500_logs_why_and_frees_its_key() {
    let app = spawn_app_with(|c| c.idempotency_lock_ttl = LONG_TTL).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = app.pool.clone();
    let counter = calls.clone();
    let ep = poem::endpoint::make(move |req: Request| {
        let (pool, counter) = (pool.clone(), counter.clone());
        async move {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("handler bug: status table out of date");
            }
            answer_and_commit(&pool, &req).await
        }
    });
    let client = TestClient::new(guarded(&app, ep));

    let logs = LogBuffer::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .finish();
    let resp = client
        .post("/things")
        .header("Idempotency-Key", "panics-once")
        .body_json(&json!({"a": 1}))
        .send()
        .with_subscriber(subscriber)
        .await;
    resp.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(!body.to_string().contains("status table"), "{body}");
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("handler bug: status table out of date"),
        "the cause is logged: {logged}"
    );

    // The key is free at once, not after the 60 s TTL: the retry runs and is answered.
    let retry = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .post("/things")
            .header("Idempotency-Key", "panics-once")
            .body_json(&json!({"a": 1}))
            .send(),
    )
    .await
    .expect("the key was released");
    retry.assert_status(StatusCode::CREATED);
    let replay = client
        .post("/things")
        .header("Idempotency-Key", "panics-once")
        .body_json(&json!({"a": 1}))
        .send()
        .await;
    replay.assert_status_is_ok();
    replay.assert_header("Idempotent-Replayed", "true");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Without a key, the guard around every route answers the same opaque 500.
    calls.store(0, Ordering::SeqCst);
    let resp = client.post("/things").body_json(&json!({})).send().await;
    resp.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    resp.assert_json(json!({"error": {
        "type": "api_error", "code": "internal_error",
        "message": "An unexpected error occurred; it has been logged. Retrying with the same Idempotency-Key is safe."
    }}))
    .await;
}

#[tokio::test]
async fn a_commit_that_fails_after_the_answer_was_stored_frees_the_key() {
    let app = spawn_app_with(|c| c.idempotency_lock_ttl = LONG_TTL).await;
    // A constraint checked only at commit makes the first commit fail for real.
    sqlx::query("CREATE TABLE fails_at_commit (n INT UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        .execute(&app.pool)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = app.pool.clone();
    let counter = calls.clone();
    let ep = poem::endpoint::make(move |req: Request| {
        let (pool, counter) = (pool.clone(), counter.clone());
        async move {
            if counter.fetch_add(1, Ordering::SeqCst) > 0 {
                return answer_and_commit(&pool, &req).await;
            }
            let mut tx = pool.begin().await.map_err(ApiError::from)?;
            sqlx::query("INSERT INTO fails_at_commit VALUES (1), (1)")
                .execute(&mut *tx)
                .await
                .map_err(ApiError::from)?;
            idempotency::complete(&req, &mut tx, StatusCode::CREATED, b"{}").await?;
            tx.commit().await.map_err(ApiError::from)?;
            Ok::<_, poem::Error>(Response::builder().status(StatusCode::CREATED).finish())
        }
    });
    let client = TestClient::new(guarded(&app, ep));
    let send = || {
        client
            .post("/things")
            .header("Idempotency-Key", "commit-fails")
            .body_json(&json!({}))
            .send()
    };
    send()
        .await
        .assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = tokio::time::timeout(Duration::from_secs(5), send())
        .await
        .expect("the key was released");
    retry.assert_status(StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A holder slower than the lock's TTL loses the key to a retry; when it wakes, it must commit
/// nothing. Holder A is made slow for real: a transaction of the test holds a SHARE lock on
/// `payment_intents`, so A's insert waits while its key's lock expires. B, the retry, takes
/// the key over and waits on the same lock; then the lock goes and both run on. Without the
/// fence both commit: two intents, two confirm commands, two charges.
#[tokio::test]
async fn a_holder_that_lost_its_key_to_a_retry_commits_nothing() {
    let app = spawn_app_with(|c| c.idempotency_lock_ttl = Duration::from_millis(300)).await;
    let _worker = app.start_confirm_worker();
    let body = json!({
        "amount": 2500, "currency": "usd", "customerId": "cus_fence",
        "paymentMethodId": "pm_card_visa", "confirm": true
    });

    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE payment_intents IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let locked_until = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT locked_until FROM idempotency_keys WHERE key = 'fenced'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap()
        .flatten()
    };

    let a = {
        let (http, url, key, body) = (
            app.http.clone(),
            format!("{}/api/payment-intents", app.address),
            app.api_key.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "fenced")
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    let first_lock =
        paystream_tests::eventually(Duration::from_secs(10), "A to take the key", || {
            locked_until()
        })
        .await;
    // Past A's TTL, B finds the lock expired and takes the key over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = {
        let (http, url, key, body) = (
            app.http.clone(),
            format!("{}/api/payment-intents", app.address),
            app.api_key.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "fenced")
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    paystream_tests::eventually(
        Duration::from_secs(10),
        "B to take the key over",
        || async { locked_until().await.filter(|t| *t > first_lock) },
    )
    .await;
    // Both wait on the table lock now; let them go.
    tokio::time::sleep(Duration::from_millis(100)).await;
    blocker.commit().await.unwrap();

    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    let bodies = [a.text().await.unwrap(), b.text().await.unwrap()];
    assert!(
        statuses.contains(&201) && statuses.contains(&409),
        "one runs, the one that lost its lock is refused: {statuses:?} {bodies:?}"
    );
    let refused = &bodies[statuses.iter().position(|s| *s == 409).unwrap()];
    assert!(refused.contains("idempotency_key_in_use"), "{refused}");

    let intents: Vec<String> =
        sqlx::query_scalar("SELECT id FROM payment_intents WHERE customer_id = 'cus_fence'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(intents.len(), 1, "exactly one intent: {intents:?}");
    let commands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'cmd.payment.confirm'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(commands, 1);
    app.wait_for_status(&intents[0], &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(app.sim_charges(&intents[0]).await.len(), 1);

    // The key now replays the answer that counted.
    let replay = app.post_idem("/api/payment-intents", "fenced", body).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.body["id"], intents[0].as_str());
}
