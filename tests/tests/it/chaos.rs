//! Failure injection against the real parts: a worker process killed with SIGKILL, the broker
//! restarted, the relay dying between publish and mark. After each, every intent reaches its
//! final state with exactly one charge.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paystream_tests::{spawn_app, spawn_app_on, TestApp};
use serde_json::json;

async fn create_confirmed(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        let batch = futures::future::join_all(chunk.iter().map(|_| {
            app.create_intent(json!({"paymentMethodId": "pm_card_visa", "confirm": true}))
        }))
        .await;
        ids.extend(
            batch
                .into_iter()
                .map(|pi| pi["id"].as_str().unwrap().to_owned()),
        );
    }
    ids
}

async fn succeeded_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payment_intents WHERE status = 'succeeded'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn assert_all_succeeded_once(app: &TestApp, ids: &[String], timeout: Duration) {
    let n = i64::try_from(ids.len()).unwrap();
    paystream_tests::eventually(timeout, "every intent to succeed", || async {
        (succeeded_count(app).await == n).then_some(())
    })
    .await;
    let stuck: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_intents WHERE status <> 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stuck, 0);
    for id in ids {
        let charges = app.sim_charges(id).await;
        assert_eq!(charges.len(), 1, "{id}: {charges:?}");
    }
}

fn kill(child: &mut Child, signal: &str) {
    Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn a_confirm_worker_killed_mid_batch_loses_nothing_and_charges_once() {
    let app = spawn_app().await;
    // Slow the acquirer a little so the kill lands with work in flight.
    app.sim_faults(json!({"latencyMs": 15})).await;
    let mut victim = app.spawn_confirm_worker_process();
    let mut survivor = app.spawn_confirm_worker_process();
    let ids = create_confirmed(&app, 200).await;
    paystream_tests::eventually(Duration::from_secs(60), "some progress", || async {
        (succeeded_count(&app).await >= 40).then_some(())
    })
    .await;
    kill(&mut victim, "-KILL");
    let mut replacement = app.spawn_confirm_worker_process();
    assert_all_succeeded_once(&app, &ids, Duration::from_secs(120)).await;
    kill(&mut survivor, "-TERM");
    kill(&mut replacement, "-TERM");
}

struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start(port: u16, store: &std::path::Path) -> NatsServer {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        NatsServer { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child, "-KILL");
    }
}

#[tokio::test]
async fn restarting_nats_server_mid_run_loses_nothing() {
    let store =
        std::env::temp_dir().join(format!("paystream-nats-{}", uuid::Uuid::new_v4().simple()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = NatsServer::start(port, &store);
    let app = spawn_app_on(&nats.url()).await;
    let _worker = app.start_confirm_worker();
    let mut ids = create_confirmed(&app, 30).await;

    kill(&mut nats.child, "-KILL");
    // Payments keep being accepted while the broker is down: they wait in the outbox.
    ids.extend(create_confirmed(&app, 30).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = NatsServer::start(port, &store);
    assert_all_succeeded_once(&app, &ids, Duration::from_secs(90)).await;
    drop(restarted);
    drop(app);
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn a_relay_that_died_between_publish_and_mark_republishes_without_double_applying() {
    let app = spawn_app().await;
    app.relay_shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = create_confirmed(&app, 25).await;

    // What the dead relay did before dying: published every row (with its id) but marked none.
    let rows: Vec<(uuid::Uuid, String, serde_json::Value)> = sqlx::query_as("SELECT id, subject, payload FROM outbox WHERE published_at IS NULL ORDER BY created_at, id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        25 * 3,
        "created, processing and the confirm command per intent"
    );
    for (id, subject, payload) in &rows {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        app.js
            .publish_with_headers(
                app.topology.subject(subject),
                headers,
                serde_json::to_vec(payload).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A new relay takes over and publishes the same rows again.
    let relay = app.shutdown.child_token();
    tokio::spawn(paystream_nats::relay::run(
        app.pool.clone(),
        app.js.clone(),
        app.topology.clone(),
        paystream_nats::relay::Waker::new(),
        relay.clone(),
    ));
    paystream_tests::eventually(Duration::from_secs(20), "the outbox to drain", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let events = app
        .js
        .get_stream(
            app.topology
                .stream_name(paystream_nats::topology::Stream::Events),
        )
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        events, 50,
        "JetStream dropped every duplicate: one message per event row"
    );
    let _worker = app.start_confirm_worker();
    assert_all_succeeded_once(&app, &ids, Duration::from_secs(60)).await;
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'payment_intent.succeeded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audit, 25);
}
