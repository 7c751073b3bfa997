//! Sealing-key rotation online (`paystream keys rotate-sealing`): values sealed by a deployment
//! that had only the old key are re-sealed under the new one while webhooks are delivered and
//! evidence files uploaded; nothing becomes unreadable, every value ends under the new key
//! (checked in SQL on each value's header), and the webhook secrets still sign the same.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use paystream_api::AppState;
use paystream_shared::audit::Actor;
use paystream_shared::config::Config;
use paystream_shared::secret::Secret;
use paystream_shared::webhooks::rotation;
use paystream_shared::webhooks::secret_box::SecretBox;
use paystream_tests::webhooks::Sink;
use paystream_tests::{eventually, spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(60);
const OLD: [u8; 32] = [11; 32];
const NEW: [u8; 32] = [12; 32];
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

/// Another API process on the app's database, with `config`: the deployment before (or
/// after) the one `spawn_app` runs.
async fn start_api(app: &TestApp, config: Config) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    // A pool of its own, as another process would have.
    let pool = paystream_shared::db::connect(&app.db.url, 4).await.unwrap();
    let state = AppState {
        pool,
        nats: Some(app.nats.clone()),
        config: Arc::new(config),
        metrics: Arc::default(),
        relay_waker: paystream_nats::relay::Waker::new(),
    };
    tokio::spawn(paystream_api::run(listener, state, app.shutdown.clone()));
    address
}

fn with_keys(app: &TestApp, current: [u8; 32], previous: Option<[u8; 32]>) -> Config {
    let mut config = (*app.config).clone();
    config.webhook_secret_key = Secret::new(current);
    config.webhook_secret_key_previous = previous.map(Secret::new);
    config
}

async fn post(app: &TestApp, base: &str, path: &str, idem: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", idem)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn upload_pdf(app: &TestApp, base: &str, dispute: &str, name: &str) -> String {
    let boundary = "paystreamsealingboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"receipt\"; filename=\"{name}\"\r\nContent-Type: application/pdf\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(PDF);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = app
        .http
        .post(format!("{base}/api/disputes/{dispute}/evidence"))
        .bearer_auth(&app.api_key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{v}");
    v["evidence"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["filename"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn download(app: &TestApp, base: &str, dispute: &str, file: &str) -> (StatusCode, Vec<u8>) {
    let r = app
        .http
        .get(format!("{base}/api/disputes/{dispute}/files/{file}"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

async fn dispute_on(app: &TestApp) -> String {
    let pi = app.succeeded_intent(4000).await;
    let r = app
        .http
        .post(format!("{}/sim/disputes", app.sim_url))
        .json(&json!({"reference": pi, "reason": "product_not_received"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    eventually(WAIT, "the dispute", || async {
        let r = app
            .get(&format!("/api/disputes?paymentIntentId={pi}"))
            .await;
        r.body["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

/// Sealed values per table not under `header`, and all of them.
async fn not_under(app: &TestApp, header: &[u8]) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for (table, col) in [
        ("webhook_subscriptions", "secret_sealed"),
        ("webhook_subscriptions", "previous_secret_sealed"),
        ("idempotency_keys", "response_sealed"),
        ("dispute_files", "sealed"),
    ] {
        let (off, all): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE substring({col} from 1 for 9) <> $1), count({col}) FROM {table}"
        ))
        .bind(header)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        out.push((format!("{table}.{col}"), off, all));
    }
    out
}

#[tokio::test]
async fn rotating_the_sealing_key_while_webhooks_deliver_and_evidence_uploads_loses_nothing() {
    // The deployment mid-rotation: the new key seals, the old one still opens.
    let app = spawn_app_with(|c| {
        c.webhook_secret_key = Secret::new(NEW);
        c.webhook_secret_key_previous = Some(Secret::new(OLD));
    })
    .await;
    let _confirm = app.start_confirm_worker();
    // Chargeback notifications become disputes through the refund worker's consumer.
    let _refunds = app.start_refund_worker();
    // The deployment before it, on the same database, sealing with the old key alone.
    let old_api = start_api(&app, with_keys(&app, OLD, None)).await;
    let old_box = SecretBox::new(&OLD);
    let new_box = SecretBox::with_previous(&NEW, Some(&OLD));

    let sink = Sink::start().await;
    let mut secrets = Vec::new();
    for i in 0..3 {
        let (status, sub) = post(
            &app,
            &old_api,
            "/api/webhooks/subscribe",
            &format!("sub-{i}"),
            json!({"url": sink.url(&format!("/s{i}")), "events": ["payment_intent.created"]}),
        )
        .await;
        assert_eq!(status, 201, "{sub}");
        secrets.push((
            sub["id"].as_str().unwrap().to_owned(),
            sub["secret"].as_str().unwrap().to_owned(),
        ));
    }
    // One rolled by the old deployment: its previous secret is sealed too.
    let (status, rolled) = post(
        &app,
        &old_api,
        &format!("/api/webhooks/subscriptions/{}/rotate-secret", secrets[0].0),
        "roll-0",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{rolled}");
    secrets[0].1 = rolled["secret"].as_str().unwrap().to_owned();
    let disputes = [dispute_on(&app).await, dispute_on(&app).await];
    let mut files = Vec::new();
    for (i, d) in disputes.iter().enumerate() {
        files.push((
            d.clone(),
            upload_pdf(&app, &old_api, d, &format!("old-{i}.pdf")).await,
        ));
    }
    let before = not_under(&app, &new_box.current_header()).await;
    for (column, off, all) in &before {
        assert!(
            *all > 0 && off == all,
            "{column}: {off} of {all} under the old key"
        );
    }
    let old_header = old_box.current_header();
    assert_eq!(
        not_under(&app, &old_header)
            .await
            .iter()
            .map(|c| c.1)
            .sum::<i64>(),
        0,
        "all sealed by the old deployment"
    );

    // Rotate while deliveries are under way and new files arrive (the new key seals those).
    let _webhooks = app.start_webhook_worker();
    let intents = async {
        for _ in 0..10 {
            app.create_intent(json!({})).await;
        }
    };
    let uploads = async {
        let mut ids = Vec::new();
        for i in 0..4 {
            let d = &disputes[i % 2];
            ids.push((
                d.clone(),
                upload_pdf(&app, &app.address, d, &format!("new-{i}.pdf")).await,
            ));
        }
        ids
    };
    let actor = Actor::Operator("test".into());
    // The command runs as a process of its own, with its own connections.
    let cli_pool = paystream_shared::db::connect(&app.db.url, 2).await.unwrap();
    let rotate = rotation::rotate(&cli_pool, &new_box, 1, &actor, |_, _| {});
    let ((), new_files, report) = tokio::join!(intents, uploads, rotate);
    let report = report.unwrap();
    files.extend(new_files);
    assert!(report.unreadable.is_empty(), "{report:?}");
    assert_eq!(report.changed, 0, "{report:?}");
    assert_eq!(report.remaining, 0, "{report:?}");
    assert_eq!(report.resealed["webhook_subscriptions"], 3, "{report:?}");
    assert_eq!(report.resealed["dispute_files"], 2, "{report:?}");
    // The three subscribes and the roll kept sealed replay copies.
    assert_eq!(report.resealed["idempotency_keys"], 4, "{report:?}");

    // Every value is now under the new key, by its header.
    for (column, off, all) in not_under(&app, &new_box.current_header()).await {
        assert!(
            all > 0 && off == 0,
            "{column}: {off} of {all} not under the new key"
        );
    }

    // Retire the old key: a deployment with the new key alone reads everything.
    let new_api = start_api(&app, with_keys(&app, NEW, None)).await;
    for (d, f) in &files {
        assert_eq!(
            download(&app, &new_api, d, f).await,
            (StatusCode::OK, PDF.to_vec()),
            "{f}"
        );
    }
    // The replay copy of a subscribe still carries its secret.
    let (status, replay) = post(
        &app,
        &new_api,
        "/api/webhooks/subscribe",
        "sub-1",
        json!({"url": sink.url("/s1"), "events": ["payment_intent.created"]}),
    )
    .await;
    // Replays answer 200 (docs/api.md, Idempotency-Key), with the original body.
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["id"], secrets[1].0.as_str());
    assert_eq!(replay["secret"], secrets[1].1.as_str());
    // Every delivery verifies with the secret the merchant was given before the rotation.
    for (i, (_, secret)) in secrets.iter().enumerate() {
        let got = sink.wait_for(&format!("/s{i}"), 10, WAIT).await;
        for r in &got {
            assert!(r.verifies_with(secret), "delivery to /s{i} does not verify");
        }
    }
    // The old key alone could no longer read a thing: the rotation really re-sealed.
    let old_only = start_api(&app, with_keys(&app, OLD, None)).await;
    let (status, _) = download(&app, &old_only, &files[0].0, &files[0].1).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    // Audited, with the key ids and counts only.
    let (after, actor): (Value, String) = sqlx::query_as(
        "SELECT after, actor FROM audit_log WHERE action = 'sealing_key.rotated' AND object_id = $1",
    )
    .bind(new_box.current_id())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(actor, "operator:test");
    assert_eq!(after["keyId"], new_box.current_id());
    assert_eq!(after["remaining"], 0);
    assert!(paystream_shared::audit::verify(&app.pool)
        .await
        .unwrap()
        .first_bad
        .is_none());

    // A second run is a no-op: nothing re-sealed, no audit entry.
    let again = rotation::rotate(&app.pool, &new_box, 1, &actor_of(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.total_resealed(), 0);
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'sealing_key.rotated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(entries, 1);
}

fn actor_of() -> Actor {
    Actor::Operator("test".into())
}
