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

/// On a route the layer claims before the handler runs, a holder slower than the lock's TTL
/// loses the key to a retry; when it wakes, it must commit nothing. The first call sleeps past
/// the TTL before storing its answer, the retry takes the key over meanwhile and answers.
/// Without the fence both commit.
#[tokio::test]
async fn a_holder_that_lost_its_key_to_a_retry_commits_nothing() {
    let app = spawn_app_with(|c| c.idempotency_lock_ttl = Duration::from_millis(300)).await;
    sqlx::query("CREATE TABLE fenced_runs (n INT)")
        .execute(&app.pool)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = app.pool.clone();
    let counter = calls.clone();
    let ep = poem::endpoint::make(move |req: Request| {
        let (pool, counter) = (pool.clone(), counter.clone());
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut tx = pool.begin().await.map_err(ApiError::from)?;
            sqlx::query("INSERT INTO fenced_runs VALUES ($1)")
                .bind(i32::try_from(n).unwrap())
                .execute(&mut *tx)
                .await
                .map_err(ApiError::from)?;
            if n == 0 {
                // Stalls past the TTL while the retry takes the key over and answers.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let body = format!(r#"{{"run":{n}}}"#);
            idempotency::complete(&req, &mut tx, StatusCode::CREATED, body.as_bytes()).await?;
            tx.commit().await.map_err(ApiError::from)?;
            Ok::<_, poem::Error>(body.with_status(StatusCode::CREATED).into_response())
        }
    });
    let client = Arc::new(TestClient::new(guarded(&app, ep)));
    let send = {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                let resp = client
                    .post("/things")
                    .header("Idempotency-Key", "fenced")
                    .body_json(&json!({}))
                    .send()
                    .await;
                let status = resp.0.status();
                (status, resp.0.into_body().into_string().await.unwrap())
            }
        }
    };
    let a = tokio::spawn(send());
    paystream_tests::eventually(Duration::from_secs(10), "A to run", || async {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = send().await;
    assert_eq!(b.0, StatusCode::CREATED, "the retry took over: {b:?}");
    let a = a.await.unwrap();
    assert_eq!(a.0, StatusCode::CONFLICT, "{a:?}");
    assert!(a.1.contains("idempotency_key_in_use"), "{a:?}");
    let runs: Vec<i32> = sqlx::query_scalar("SELECT n FROM fenced_runs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, vec![1], "only the retry's work committed");
    let (replay_status, replay) = send().await;
    assert_eq!(replay_status, StatusCode::OK);
    assert_eq!(replay, r#"{"run":1}"#);
}

/// The payment intents claim their key inside the handler's transaction, so a holder cannot
/// lose it: the uncommitted row is the lock. A holder stalled past the lock's TTL (its insert
/// waits on a SHARE lock a transaction of the test holds on `payment_intents`) keeps the key;
/// the retry waits the TTL, is refused with 409 and runs nothing; then the holder commits, and
/// the key replays its answer. One intent, one confirm command, one charge.
#[tokio::test]
async fn a_stalled_holder_keeps_its_key_and_the_retry_runs_nothing() {
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
    let post = || {
        let (http, url, key, body) = (
            app.http.clone(),
            format!("{}/api/payment-intents", app.address),
            app.api_key.clone(),
            body.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "fenced")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let a = tokio::spawn(post());
    let db = app.pool.clone();
    paystream_tests::eventually(
        Duration::from_secs(10),
        "A to hold its key and wait on the table lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%INSERT INTO payment_intents%'",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = post().await;
    let b_status = b.status().as_u16();
    let b_text = b.text().await.unwrap();
    assert_eq!(b_status, 409, "{b_text}");
    assert!(b_text.contains("idempotency_key_in_use"), "{b_text}");

    blocker.commit().await.unwrap();
    let a = a.await.unwrap();
    assert_eq!(a.status().as_u16(), 201);

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
