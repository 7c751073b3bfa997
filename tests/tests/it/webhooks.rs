//! Webhooks end to end: subscription API -> events -> fan-out -> signed delivery to a real
//! HTTP sink on 127.0.0.1, with retries, dead letters, redelivery, rotation, private-address
//! protection and a worker process killed mid-run.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use paystream_nats::consumer::ConsumerSpec;
use paystream_shared::domain::webhook::WebhookSecret;
use paystream_shared::retry::{RetrySchedule, MAX_ATTEMPTS};
use paystream_shared::store::merchants::Role;
use paystream_shared::webhooks::secret_box::SecretBox;
use paystream_tests::webhooks::{Answer, Sink};
use paystream_tests::{eventually, spawn_app, TestApp};
use paystream_workers::webhooks::{self as wh, delivery::Deliverer};

const WAIT: Duration = Duration::from_secs(30);

/// Creates an intent with a test card (which records `payment_intent.created`) and returns
/// that event's id.
async fn created_event(app: &TestApp) -> String {
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    app.event_id_for(pi["id"].as_str().unwrap(), "payment_intent.created")
        .await
}

async fn delivery_attempts(
    app: &TestApp,
    delivery_id: &str,
) -> Vec<(i32, i32, String, Option<i32>)> {
    sqlx::query_as(
        "SELECT cycle, attempt, outcome, response_code FROM webhook_delivery_attempts
         WHERE delivery_id = $1 ORDER BY cycle, attempt",
    )
    .bind(delivery_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// No table holds `secret` (or its key material after `whsec_`) in clear.
async fn assert_no_clear_secret(app: &TestApp, secret: &str) {
    let material = &secret["whsec_".len()..];
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(t::text, ' ') FROM (
             SELECT encode(coalesce(response_body, ''), 'escape') || encode(coalesce(response_sealed, ''), 'escape') AS t
               FROM idempotency_keys
             UNION ALL SELECT s::text FROM webhook_subscriptions s
             UNION ALL SELECT a::text FROM audit_log a) x",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!dump.contains(material));
    assert!(!dump.contains(secret));
}

async fn dead_letters_for(app: &TestApp, object_id: &str) -> Vec<paystream_nats::dlq::DeadLetter> {
    paystream_nats::dlq::list(&app.js, &app.topology)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.object_id.as_deref() == Some(object_id))
        .collect()
}

#[tokio::test]
async fn a_subscribed_sink_receives_payment_succeeded_signed() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    let sub = app
        .subscribe(&sink.url("/hooks"), &["payment_intent.succeeded"])
        .await;
    let secret = sub["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert!(sub["id"].as_str().unwrap().starts_with("we_"));
    assert_eq!(sub["active"], true);
    assert_eq!(sub["events"], json!(["payment_intent.succeeded"]));
    let _confirm = app.start_confirm_worker();
    let _webhooks = app.start_webhook_worker();

    let pi = app.create_and_confirm("pm_card_visa").await;
    let got = sink.wait_for("/hooks", 1, WAIT).await;
    let hook = &got[0];
    assert!(hook.verifies_with(secret), "signature: {:?}", hook.headers);
    let body = hook.json();
    assert_eq!(body["type"], "payment_intent.succeeded");
    assert_eq!(body["data"]["id"], pi.as_str());
    assert_eq!(body["data"]["status"], "succeeded");
    assert_eq!(hook.header("webhook-id"), body["id"].as_str().unwrap());
    assert_eq!(hook.header("content-type"), "application/json");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    let ts: i64 = hook.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);

    // The event is the one the API lists, and the delivery is recorded.
    let event_id = body["id"].as_str().unwrap();
    let event = app.get(&format!("/api/events/{event_id}")).await;
    assert_eq!(event.status, 200);
    assert_eq!(event.body["data"], body["data"]);
    assert_eq!(event.body["createdAt"], body["createdAt"]);
    let d = app.wait_for_delivery(event_id, "succeeded").await;
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["responseCode"], 200);
    assert_eq!(d["url"], sink.url("/hooks").as_str());
    assert!(d["deliveredAt"].is_string());
    assert!(d["id"].as_str().unwrap().starts_with("wd_"));

    // Only the subscribed type arrives: created and processing events were not delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received_on("/hooks").len(), 1);
}

#[tokio::test]
async fn a_sink_failing_twice_gets_it_on_the_third_attempt_with_growing_gaps() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    sink.script("/flaky", &[Answer::status(500), Answer::status(503)]);
    let sub = app.subscribe(&sink.url("/flaky"), &["*"]).await;
    // A slower schedule than the suite's 10 ms, so the gaps stand out from scheduling noise.
    let mut config = (*app.config).clone();
    config.retry_base = Duration::from_millis(150);
    let _webhooks = app.start_webhook_worker_with(config);

    let event_id = created_event(&app).await;
    let got = sink.wait_for("/flaky", 3, WAIT).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == event_id));
    assert!(got
        .iter()
        .all(|r| r.verifies_with(sub["secret"].as_str().unwrap())));
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(gap1 >= Duration::from_millis(150), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(300), "{gap2:?}");
    assert!(
        gap2 + Duration::from_millis(50) > gap1,
        "{gap1:?} then {gap2:?}"
    );

    let d = app.wait_for_delivery(&event_id, "succeeded").await;
    assert_eq!(d["attempt"], 3);
    let attempts = delivery_attempts(&app, d["id"].as_str().unwrap()).await;
    let codes: Vec<_> = attempts.iter().map(|a| (a.2.as_str(), a.3)).collect();
    assert_eq!(
        codes,
        [
            ("retry", Some(500)),
            ("retry", Some(503)),
            ("succeeded", Some(200))
        ]
    );
    let next: Vec<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "SELECT next_retry_at FROM webhook_delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(d["id"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(next[0].is_some() && next[1].is_some() && next[2].is_none());
    let durations: Vec<Option<i32>> = sqlx::query_scalar(
        "SELECT duration_ms FROM webhook_delivery_attempts WHERE delivery_id = $1",
    )
    .bind(d["id"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(durations.iter().all(Option::is_some));
}

#[tokio::test]
async fn an_always_500_sink_gets_five_attempts_then_a_dead_letter_that_replays() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    sink.default_answer("/down", Answer::status(500));
    let sub = app.subscribe(&sink.url("/down"), &["*"]).await;
    let _webhooks = app.start_webhook_worker();

    let event_id = created_event(&app).await;
    let d = app.wait_for_delivery(&event_id, "failed").await;
    assert_eq!(d["attempt"], 5);
    assert_eq!(d["responseCode"], 500);
    assert!(d["error"].as_str().unwrap().contains("5 attempts"), "{d}");
    let delivery_id = d["id"].as_str().unwrap().to_owned();
    let dead = eventually(WAIT, "the dead letter", || async {
        let dl = dead_letters_for(&app, &delivery_id).await;
        (!dl.is_empty()).then_some(dl)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].origin_subject, "cmd.webhook.deliver");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received_on("/down").len(), 5);

    // `paystream dlq replay` path: the endpoint is back; the replayed command starts a new
    // cycle with a fresh budget and delivers with the same webhook-id.
    sink.default_answer("/down", Answer::status(200));
    paystream_nats::dlq::replay(&app.js, &app.topology, dead[0].id)
        .await
        .unwrap();
    let d = app.wait_for_delivery(&event_id, "succeeded").await;
    assert_eq!(d["attempt"], 1);
    let got = sink.received_on("/down");
    assert_eq!(got.len(), 6);
    assert_eq!(got[5].header("webhook-id"), event_id);
    assert!(got[5].verifies_with(sub["secret"].as_str().unwrap()));
    let cycles: Vec<i32> = delivery_attempts(&app, &delivery_id)
        .await
        .iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(cycles, [1, 1, 1, 1, 1, 2]);
}

#[tokio::test]
async fn a_400_is_final_after_one_attempt_and_the_api_redelivers_it() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    sink.script("/strict", &[Answer::status(400)]);
    app.subscribe(&sink.url("/strict"), &["payment_intent.created"])
        .await;
    let _webhooks = app.start_webhook_worker();
    let event_id = created_event(&app).await;
    let d = app.wait_for_delivery(&event_id, "failed").await;
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["responseCode"], 400);
    let delivery_id = d["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the dead letter", || async {
        (!dead_letters_for(&app, &delivery_id).await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received_on("/strict").len(), 1);

    // Redeliver through the API: the same delivery row, a new cycle, the same webhook-id.
    let r = app
        .post(&format!("/api/events/{event_id}/redeliver"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["data"][0]["id"], delivery_id.as_str());
    assert_eq!(r.body["data"][0]["status"], "pending");
    assert_eq!(r.body["data"][0]["attempt"], 0);
    let d = app.wait_for_delivery(&event_id, "succeeded").await;
    assert_eq!(d["id"], delivery_id.as_str());
    let got = sink.received_on("/strict");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-id"), event_id);

    // The old dead letter replayed now is a stale copy: acked, nothing sent again.
    let dl = dead_letters_for(&app, &delivery_id).await;
    paystream_nats::dlq::replay(&app.js, &app.topology, dl[0].id)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received_on("/strict").len(), 2);
    assert_eq!(app.deliveries_of(&event_id).await.len(), 1);
}

#[tokio::test]
async fn a_redelivered_event_creates_no_second_delivery() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    app.subscribe(&sink.url("/once"), &["*"]).await;
    let _webhooks = app.start_webhook_worker();
    let event_id = created_event(&app).await;
    app.wait_for_delivery(&event_id, "succeeded").await;

    // The same event again on the EVENTS stream (as after a relay crash outside the
    // duplicate window): the fan-out sees it and creates nothing.
    let (data, created_at, merchant): (Value, chrono::DateTime<chrono::Utc>, String) =
        sqlx::query_as("SELECT data, created_at, merchant_id FROM events WHERE id = $1")
            .bind(&event_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let envelope = json!({"id": event_id, "type": "payment_intent.created", "merchantId": merchant,
        "createdAt": created_at, "data": data});
    for _ in 0..2 {
        app.js
            .publish(
                app.topology.subject("evt.payment_intent.created"),
                serde_json::to_vec(&envelope).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(WAIT, "the fan-out to drain", || async {
        let stream = app
            .js
            .get_stream(app.topology.stream_name(paystream_nats::Stream::Events))
            .await
            .ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(&app.topology.consumer_name(wh::FANOUT_DURABLE))
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.deliveries_of(&event_id).await.len(), 1);
    assert_eq!(sink.received_on("/once").len(), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn after_rotation_deliveries_verify_with_the_old_and_the_new_secret() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    let sub = app.subscribe(&sink.url("/rot"), &["*"]).await;
    let old = sub["secret"].as_str().unwrap().to_owned();
    let id = sub["id"].as_str().unwrap();
    let r = app
        .post_idem(
            &format!("/api/webhooks/subscriptions/{id}/rotate-secret"),
            "rotate-1",
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    // A replay of the rotation is the original answer, secret included (no second rotation),
    // though no secret is stored in clear.
    let again = app
        .post_idem(
            &format!("/api/webhooks/subscriptions/{id}/rotate-secret"),
            "rotate-1",
            json!({}),
        )
        .await;
    assert_eq!(again.headers["Idempotent-Replayed"], "true");
    assert_eq!(again.body, r.body);
    assert_no_clear_secret(&app, &new).await;

    let _webhooks = app.start_webhook_worker();
    created_event(&app).await;
    let got = sink.wait_for("/rot", 1, WAIT).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    assert!(got[0].verifies_with(&new));
    assert!(got[0].verifies_with(&old));
    assert!(!got[0].verifies_with(WebhookSecret::generate().expose()));

    // Once the overlap is over only the new secret signs.
    sqlx::query(
        "UPDATE webhook_subscriptions SET previous_secret_expires_at = now() - interval '1 second'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    created_event(&app).await;
    let got = sink.wait_for("/rot", 2, WAIT).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    assert!(got[1].verifies_with(&new));
    assert!(!got[1].verifies_with(&old));
}

#[tokio::test]
async fn private_addresses_are_refused_at_subscribe_and_at_connect_time() {
    let app = spawn_app().await;
    // A second API on the same database with the production default: no private addresses.
    let mut strict = (*app.config).clone();
    strict.webhook_allow_private = false;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let strict_api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paystream_api::run(
        listener,
        paystream_api::AppState {
            pool: app.pool.clone(),
            nats: None,
            config: Arc::new(strict.clone()),
            metrics: Arc::default(),
            relay_waker: Default::default(),
        },
        app.shutdown.child_token(),
    ));
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://10.0.0.5/x",
        "http://0.0.0.0/",
    ] {
        let r = app
            .raw(
                app.http
                    .post(format!("{strict_api}/api/webhooks/subscribe"))
                    .bearer_auth(&app.api_key)
                    .json(&json!({"url": url, "events": ["*"]})),
            )
            .await;
        r.assert_error(400, "url_not_allowed");
        assert_eq!(r.error_param(), "url");
    }

    // A host name passes the text check; the resolver refuses it when it resolves to loopback.
    let sink = Sink::start().await;
    let port = sink.base.rsplit(':').next().unwrap().to_owned();
    let r = app
        .raw(
            app.http
                .post(format!("{strict_api}/api/webhooks/subscribe"))
                .bearer_auth(&app.api_key)
                .json(&json!({"url": format!("http://localhost:{port}/x"), "events": ["*"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let _webhooks = app.start_webhook_worker_with(strict);
    let event_id = created_event(&app).await;
    let d = app.wait_for_delivery(&event_id, "failed").await;
    assert_eq!(d["attempt"], 1);
    assert!(d["responseCode"].is_null());
    assert!(d["error"].as_str().unwrap().contains("refused"), "{d}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_410_disables_the_subscription_and_is_audited() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    sink.default_answer("/gone", Answer::status(410));
    let sub = app.subscribe(&sink.url("/gone"), &["*"]).await;
    let id = sub["id"].as_str().unwrap();
    let _webhooks = app.start_webhook_worker();
    let first = created_event(&app).await;
    let d = app.wait_for_delivery(&first, "failed").await;
    assert_eq!(d["responseCode"], 410);
    let list = eventually(WAIT, "the subscription to be disabled", || async {
        let r = app.get("/api/webhooks/subscriptions").await;
        (r.body["data"][0]["active"] == false).then_some(r)
    })
    .await;
    assert_eq!(list.body["data"][0]["id"], id);
    let audit = app.get(&format!("/api/audit-log?objectId={id}")).await;
    assert_eq!(
        audit.body["data"][0]["action"],
        "webhook_subscription.disabled"
    );
    assert_eq!(audit.body["data"][0]["actor"], "worker:webhook-worker");
    // Nothing more goes to a disabled subscription, and redelivering to it is refused.
    created_event(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received_on("/gone").len(), 1);
    app.post(
        &format!("/api/events/{first}/redeliver"),
        json!({"subscriptionId": id}),
    )
    .await
    .assert_error(409, "subscription_inactive");
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_a_healthy_one() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    sink.default_answer(
        "/slow",
        Answer {
            status: 200,
            retry_after: None,
            delay: Duration::from_millis(1500),
        },
    );
    app.subscribe(&sink.url("/slow"), &["*"]).await;
    app.subscribe(&sink.url("/fast"), &["*"]).await;
    // A small worker: 4 slots in all, 2 per endpoint.
    let config = (*app.config).clone();
    let pool = paystream_shared::db::connect(&app.db.url, 8).await.unwrap();
    let mut options = wh::delivery_options(&config);
    options.per_endpoint = 2;
    options.saturation_delay = Duration::from_millis(50);
    let deliverer = Deliverer::new(
        pool.clone(),
        SecretBox::new(config.webhook_secret_key.expose()),
        RetrySchedule::new(config.retry_base, MAX_ATTEMPTS),
        options,
    )
    .unwrap();
    let mut spec: ConsumerSpec = wh::delivery_spec(&config);
    spec.concurrency = 4;
    spec.fetch_batch = 4;
    let fanout = wh::fanout::FanOut::new(pool, RetrySchedule::new(config.retry_base, 5));
    let process = paystream_workers::runtime::WorkerProcess::connect(&config, 4)
        .await
        .unwrap()
        .consumer(spec, deliverer)
        .consumer(wh::fanout_spec(), fanout);
    tokio::spawn(process.run(app.shutdown.child_token()));

    for _ in 0..10 {
        app.create_intent(json!({})).await;
    }
    sink.wait_for("/fast", 10, WAIT).await;
    let slow_so_far = sink.received_on("/slow").len();
    // Ten slow deliveries two at a time take 7.5 s at the least; every fast one arrived while
    // slow ones were still outstanding, so none of them queued behind the slow endpoint.
    assert!(slow_so_far < 10, "{slow_so_far}");
    sink.wait_for("/slow", 10, WAIT).await;
}

#[tokio::test]
async fn a_killed_webhook_worker_loses_no_delivery() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    // Slow answers, so the kill lands with deliveries in flight.
    sink.default_answer(
        "/k",
        Answer {
            status: 200,
            retry_after: None,
            delay: Duration::from_millis(100),
        },
    );
    let sub = app
        .subscribe(&sink.url("/k"), &["payment_intent.created"])
        .await;
    let secret = sub["secret"].as_str().unwrap().to_owned();
    let dir = std::env::temp_dir();
    let log1 = dir.join(format!("{}-webhook-1.log", app.prefix));
    let log2 = dir.join(format!("{}-webhook-2.log", app.prefix));
    let mut victim = app.spawn_webhook_worker_process(&log1);
    let mut ids = Vec::new();
    for _ in 0..40 {
        let pi = app.create_intent(json!({})).await;
        ids.push(pi["id"].as_str().unwrap().to_owned());
    }
    sink.wait_for("/k", 5, WAIT).await;
    std::process::Command::new("kill")
        .args(["-KILL", &victim.id().to_string()])
        .status()
        .unwrap();
    victim.wait().unwrap();
    let mut replacement = app.spawn_webhook_worker_process(&log2);

    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM events WHERE type = 'payment_intent.created' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 40);
    eventually(Duration::from_secs(60), "every event delivered", || async {
        let got: std::collections::HashSet<String> = sink
            .received_on("/k")
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        expected.iter().all(|e| got.contains(e)).then_some(())
    })
    .await;
    assert!(sink
        .received_on("/k")
        .iter()
        .all(|r| r.verifies_with(&secret)));
    // A delivery the victim sent but never recorded is attempted again once its ack wait
    // runs out; then every row ends `succeeded`.
    eventually(
        Duration::from_secs(60),
        "every delivery recorded",
        || async {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (unfinished == 0).then_some(())
        },
    )
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &replacement.id().to_string()])
        .status()
        .unwrap();
    replacement.wait().unwrap();
    // Debug logs of both processes: deliveries were logged, the secret never was.
    for log in [&log1, &log2] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.contains(&secret[6..]), "secret in {}", log.display());
        let _ = std::fs::remove_file(log);
    }
}

/// Many deliveries in flight in one process, batched claims and records, and the process
/// SIGKILLed in the middle: every (event, subscription) still arrives, and the only ones an
/// endpoint sees twice are those whose attempt was claimed and never recorded when the
/// process died (its `abandoned` attempt says so).
#[tokio::test]
async fn a_webhook_worker_killed_mid_batch_duplicates_only_what_was_in_flight() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    let paths = ["/b0", "/b1", "/b2", "/b3"];
    let mut secrets = std::collections::HashMap::new();
    let mut path_of = std::collections::HashMap::new();
    for path in paths {
        // Slow enough answers that the kill finds a batch of attempts in flight.
        sink.default_answer(
            path,
            Answer {
                status: 200,
                retry_after: None,
                delay: Duration::from_millis(800),
            },
        );
        let sub = app
            .subscribe(&sink.url(path), &["payment_intent.created"])
            .await;
        secrets.insert(path, sub["secret"].as_str().unwrap().to_owned());
        path_of.insert(sub["id"].as_str().unwrap().to_owned(), path);
    }
    let dir = std::env::temp_dir();
    let log1 = dir.join(format!("{}-webhook-batch-1.log", app.prefix));
    let log2 = dir.join(format!("{}-webhook-batch-2.log", app.prefix));
    // The events first, so the worker starts with all 240 deliveries to do at once.
    for _ in 0..60 {
        app.create_intent(json!({})).await;
    }
    let mut victim = app.spawn_webhook_worker_process(&log1);
    let in_flight = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_delivery_attempts WHERE outcome = 'in_flight'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n
    };
    eventually(WAIT, "some delivered and many in flight", || async {
        (!sink.received().is_empty() && in_flight().await >= 20).then_some(())
    })
    .await;
    std::process::Command::new("kill")
        .args(["-KILL", &victim.id().to_string()])
        .status()
        .unwrap();
    victim.wait().unwrap();
    // What the dead process left claimed and unrecorded: the most the endpoints may see twice.
    let left_in_flight: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.event_id, d.subscription_id FROM webhook_delivery_attempts a
         JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE a.outcome = 'in_flight'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        !left_in_flight.is_empty(),
        "the kill landed between batches"
    );
    let mut replacement = app.spawn_webhook_worker_process(&log2);

    let events: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM events WHERE type = 'payment_intent.created' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 60);
    eventually(
        Duration::from_secs(90),
        "every delivery recorded",
        || async {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            let total: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
                .fetch_one(&app.pool)
                .await
                .unwrap();
            (unfinished == 0 && total == 240).then_some(())
        },
    )
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &replacement.id().to_string()])
        .status()
        .unwrap();
    replacement.wait().unwrap();

    // None lost: every event reached every endpoint, each copy signed with its secret.
    let mut seen: std::collections::HashMap<(&str, String), usize> =
        std::collections::HashMap::new();
    for path in paths {
        for r in sink.received_on(path) {
            assert!(r.verifies_with(&secrets[path]), "bad signature on {path}");
            *seen
                .entry((path, r.header("webhook-id").to_owned()))
                .or_default() += 1;
        }
    }
    for path in paths {
        for e in &events {
            assert!(
                seen.contains_key(&(path, e.clone())),
                "{e} never reached {path}"
            );
        }
    }
    // Duplicated only what the victim had in flight, each at most once more. (An attempt that
    // timed out on this loaded machine and was retried may also arrive twice; it says so in
    // its attempt rows.)
    let retried: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT d.event_id, d.subscription_id FROM webhook_delivery_attempts a
         JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE a.outcome = 'retry'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let allowed: std::collections::HashSet<(&str, String)> = left_in_flight
        .iter()
        .chain(&retried)
        .map(|(event, sub)| (path_of[sub.as_str()], event.clone()))
        .collect();
    for (pair, n) in &seen {
        if *n > 1 {
            assert!(
                allowed.contains(pair),
                "{pair:?} arrived {n} times but was not in flight"
            );
            let was_retried = retried
                .iter()
                .any(|(event, sub)| (path_of[sub.as_str()], event) == (pair.0, &pair.1));
            if !was_retried {
                assert_eq!(*n, 2, "{pair:?}");
            }
        }
    }
    // The attempts the victim never recorded are marked abandoned, one per unrecorded claim.
    let abandoned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery_attempts WHERE outcome = 'abandoned'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(abandoned, i64::try_from(left_in_flight.len()).unwrap());
    for log in [&log1, &log2] {
        let _ = std::fs::remove_file(log);
    }
}

/// Events fanned out in one batch: one missing from `events` fails the batch's statement,
/// then each event is fanned out alone, so only the missing one is dead-lettered; a second
/// pass over the same events creates nothing.
#[tokio::test]
async fn a_fan_out_batch_with_a_missing_event_dead_letters_only_that_one() {
    use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
    use paystream_shared::outbox::EventEnvelope;

    let app = spawn_app().await;
    let sink = Sink::start().await;
    app.subscribe(&sink.url("/f"), &["payment_intent.created"])
        .await;
    app.subscribe(&sink.url("/g"), &["*"]).await;
    for _ in 0..3 {
        app.create_intent(json!({})).await;
    }
    let rows: Vec<(String, String, String, chrono::DateTime<chrono::Utc>, Value)> = sqlx::query_as(
        "SELECT id, type, merchant_id, created_at, data FROM events
             WHERE type = 'payment_intent.created' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let mut events: Vec<EventEnvelope> = rows
        .into_iter()
        .map(
            |(id, event_type, merchant_id, created_at, data)| EventEnvelope {
                id,
                event_type,
                merchant_id,
                created_at,
                data,
            },
        )
        .collect();
    let mut missing = events[0].clone();
    missing.id = "evt_0123456789abcdef0123456789abcdef".into();
    events.insert(1, missing.clone());
    let fanout = wh::fanout::FanOut::with_max_batch(
        app.pool.clone(),
        RetrySchedule::new(Duration::from_millis(10), 5),
        64,
    );
    let info = DeliveryInfo {
        subject: "evt.payment_intent.created".into(),
        delivered: 1,
        stream_sequence: 1,
        message_id: None,
        last: false,
    };
    let deliveries = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        n
    };
    for pass in 0..2 {
        let outcomes =
            futures::future::join_all(events.iter().map(|e| fanout.handle(e.clone(), &info))).await;
        for (event, outcome) in events.iter().zip(outcomes) {
            if event.id == missing.id {
                assert!(
                    matches!(&outcome, Outcome::DeadLetter(why) if why.contains("not in the events table")),
                    "{outcome:?}"
                );
            } else {
                assert!(matches!(outcome, Outcome::Ack), "pass {pass}: {outcome:?}");
            }
        }
        // Three events, two subscriptions each; the second pass adds nothing.
        assert_eq!(deliveries().await, 6, "pass {pass}");
    }
    let commands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'cmd.webhook.deliver'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(commands, 6, "one command per delivery");
}

#[tokio::test]
async fn subscription_api_validates_and_never_lists_secrets() {
    let app = spawn_app().await;
    let bad = [
        (
            json!({"url": "ftp://x.example/", "events": ["*"]}),
            "url_invalid",
            "url",
        ),
        (
            json!({"url": "https://u:p@x.example/", "events": ["*"]}),
            "url_invalid",
            "url",
        ),
        (
            json!({"url": "not a url", "events": ["*"]}),
            "url_invalid",
            "url",
        ),
        (
            json!({"url": format!("https://x.example/{}", "a".repeat(2100)), "events": ["*"]}),
            "url_invalid",
            "url",
        ),
        (
            json!({"url": "https://x.example/", "events": []}),
            "parameter_invalid",
            "events",
        ),
        (
            json!({"url": "https://x.example/", "events": ["payment_intent.exploded"]}),
            "event_type_invalid",
            "events[0]",
        ),
        (
            json!({"url": "https://x.example/", "events": ["*", "refund.created"]}),
            "parameter_invalid",
            "events[1]",
        ),
        (
            json!({"url": "https://x.example/", "events": "*"}),
            "parameter_invalid",
            "events",
        ),
        (
            json!({"url": "https://x.example/", "events": ["*"], "secret": "mine"}),
            "parameter_unknown",
            "secret",
        ),
        (json!({"events": ["*"]}), "parameter_missing", "url"),
    ];
    for (body, code, param) in bad {
        let r = app.post("/api/webhooks/subscribe", body.clone()).await;
        r.assert_error(400, code);
        assert_eq!(r.error_param(), param, "{body}");
    }

    let a = app.subscribe("https://a.example/hooks", &["*"]).await;
    let b = app
        .subscribe(
            "https://b.example/hooks",
            &["refund.created", "refund.failed"],
        )
        .await;
    let list = app.get("/api/webhooks/subscriptions").await;
    assert_eq!(list.status, 200);
    assert!(!list.text.contains("whsec_"), "{}", list.text);
    assert_eq!(list.body["data"][0]["id"], b["id"]);
    assert_eq!(list.body["data"][1]["id"], a["id"]);
    assert_eq!(list.body["hasMore"], false);
    let page = app.get("/api/webhooks/subscriptions?limit=1").await;
    assert_eq!(page.body["hasMore"], true);
    let next = app
        .get(&format!(
            "/api/webhooks/subscriptions?limit=1&startingAfter={}",
            b["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next.body["data"][0]["id"], a["id"]);
    app.get("/api/webhooks/subscriptions?startingAfter=we_nope")
        .await
        .assert_error(400, "resource_missing");

    // The stored secret is sealed, never in clear.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sealed FROM webhook_subscriptions WHERE id = $1")
            .bind(a["id"].as_str().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let secret = a["secret"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(&secret[6..]));
    // An idempotent replay of subscribe is the original answer, secret included.
    let first = app
        .post_idem(
            "/api/webhooks/subscribe",
            "sub-1",
            json!({"url": "https://c.example/", "events": ["*"]}),
        )
        .await;
    assert!(first.body["secret"].is_string());
    let replay = app
        .post_idem(
            "/api/webhooks/subscribe",
            "sub-1",
            json!({"url": "https://c.example/", "events": ["*"]}),
        )
        .await;
    assert_eq!(replay.headers["Idempotent-Replayed"], "true");
    assert_eq!(replay.body, first.body);
    assert_no_clear_secret(&app, first.body["secret"].as_str().unwrap()).await;
    // Bound to its (merchant, key): a sealed answer moved under another key does not open, and
    // the replay falls back to the answer without its secret.
    let moved = app
        .post_idem(
            "/api/webhooks/subscribe",
            "sub-2",
            json!({"url": "https://d.example/", "events": ["*"]}),
        )
        .await;
    sqlx::query(
        "UPDATE idempotency_keys SET response_sealed = (SELECT response_sealed FROM idempotency_keys WHERE key = 'sub-1')
         WHERE key = 'sub-2'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let replay = app
        .post_idem(
            "/api/webhooks/subscribe",
            "sub-2",
            json!({"url": "https://d.example/", "events": ["*"]}),
        )
        .await;
    assert_eq!(replay.body["id"], moved.body["id"]);
    assert!(!replay.text.contains("whsec_"), "{}", replay.text);
    // A key reused after its 24 h is a new key: the old sealed answer goes with the old one.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'sub-1'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let body = json!({"amount": 500, "currency": "usd", "customerId": "cus_reuse"});
    let fresh = app
        .post_idem("/api/payment-intents", "sub-1", body.clone())
        .await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    let again = app.post_idem("/api/payment-intents", "sub-1", body).await;
    assert_eq!(again.headers["Idempotent-Replayed"], "true");
    assert_eq!(again.body, fresh.body);
    assert!(!again.text.contains("whsec_"), "{}", again.text);

    // Delete: gone from the list, 404 afterwards; the audit log records it without a secret.
    let id = a["id"].as_str().unwrap();
    let del = app
        .request(
            Method::DELETE,
            &format!("/api/webhooks/subscriptions/{id}"),
            Some(&app.api_key),
            None,
            None,
        )
        .await;
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(del.body, json!({"id": id, "deleted": true}));
    app.request(
        Method::DELETE,
        &format!("/api/webhooks/subscriptions/{id}"),
        Some(&app.api_key),
        None,
        None,
    )
    .await
    .assert_error(404, "resource_missing");
    let audit = app.get(&format!("/api/audit-log?objectId={id}")).await;
    assert_eq!(
        audit.body["data"][0]["action"],
        "webhook_subscription.deleted"
    );
    assert!(!audit.text.contains("whsec_"));
    // b, and the subscriptions of keys sub-1 and sub-2, remain (a was deleted).
    let list = app.get("/api/webhooks/subscriptions").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn another_merchants_webhook_objects_are_404() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    let sub = app.subscribe(&sink.url("/m"), &["*"]).await;
    let _webhooks = app.start_webhook_worker();
    let event_id = created_event(&app).await;
    app.wait_for_delivery(&event_id, "succeeded").await;
    let sub_id = sub["id"].as_str().unwrap();

    let other = app.other_merchant("globex", Role::Admin).await;
    app.get_as(&other, &format!("/api/events/{event_id}"))
        .await
        .assert_error(404, "resource_missing");
    let events = app.get_as(&other, "/api/events").await;
    assert_eq!(events.body["data"], json!([]));
    app.get_as(&other, &format!("/api/webhooks/events?eventId={event_id}"))
        .await
        .assert_error(404, "resource_missing");
    app.get_as(
        &other,
        &format!("/api/webhooks/events?subscriptionId={sub_id}"),
    )
    .await
    .assert_error(404, "resource_missing");
    let deliveries = app.get_as(&other, "/api/webhooks/events").await;
    assert_eq!(deliveries.body["data"], json!([]));
    let subs = app.get_as(&other, "/api/webhooks/subscriptions").await;
    assert_eq!(subs.body["data"], json!([]));
    app.request(
        Method::DELETE,
        &format!("/api/webhooks/subscriptions/{sub_id}"),
        Some(&other),
        None,
        None,
    )
    .await
    .assert_error(404, "resource_missing");
    app.request(
        Method::POST,
        &format!("/api/webhooks/subscriptions/{sub_id}/rotate-secret"),
        Some(&other),
        None,
        Some(json!({})),
    )
    .await
    .assert_error(404, "resource_missing");
    app.request(
        Method::POST,
        &format!("/api/events/{event_id}/redeliver"),
        Some(&other),
        None,
        Some(json!({})),
    )
    .await
    .assert_error(404, "resource_missing");
    // Our own event redelivered to another merchant's subscription: 404 as well.
    let other_sub = app
        .request(
            Method::POST,
            "/api/webhooks/subscribe",
            Some(&other),
            None,
            Some(json!({"url": sink.url("/o"), "events": ["*"]})),
        )
        .await;
    assert_eq!(other_sub.status, 201);
    app.post(
        &format!("/api/events/{event_id}/redeliver"),
        json!({"subscriptionId": other_sub.body["id"]}),
    )
    .await
    .assert_error(404, "resource_missing");
    // The other merchant's subscription got none of our events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received_on("/o").is_empty());
}

#[tokio::test]
async fn events_list_filter_page_and_fetch() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let pi = app.create_and_confirm("pm_card_visa").await;
    app.wait_for_status(&pi, &["succeeded"], WAIT).await;
    let all = app.get("/api/events").await;
    assert_eq!(all.status, 200);
    let types: Vec<&str> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "payment_intent.succeeded",
            "payment_intent.processing",
            "payment_intent.created"
        ]
    );
    let e0 = &all.body["data"][0];
    assert!(e0["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(e0["data"]["id"], pi.as_str());
    assert!(e0["createdAt"].is_string());
    let only = app.get("/api/events?type=payment_intent.processing").await;
    assert_eq!(only.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(only.body["data"][0]["type"], "payment_intent.processing");
    let page = app.get("/api/events?limit=2").await;
    assert_eq!(page.body["hasMore"], true);
    let rest = app
        .get(&format!(
            "/api/events?startingAfter={}",
            page.body["data"][1]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest.body["data"][0]["type"], "payment_intent.created");
    assert_eq!(rest.body["hasMore"], false);
    let one = app
        .get(&format!("/api/events/{}", e0["id"].as_str().unwrap()))
        .await;
    assert_eq!(&one.body, e0);

    app.get("/api/events?type=nope")
        .await
        .assert_error(400, "event_type_invalid");
    app.get("/api/events?limit=0")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/events/evt_missing")
        .await
        .assert_error(404, "resource_missing");
    app.get("/api/events/pi_wrongkind")
        .await
        .assert_error(404, "resource_missing");
    app.get("/api/webhooks/events?status=done")
        .await
        .assert_error(400, "parameter_invalid");
    app.post("/api/events/evt_missing/redeliver", json!({}))
        .await
        .assert_error(404, "resource_missing");
    app.post(
        &format!("/api/events/{}/redeliver", e0["id"].as_str().unwrap()),
        json!({"subscriptionId": "we_missing"}),
    )
    .await
    .assert_error(404, "resource_missing");
    app.post(
        &format!("/api/events/{}/redeliver", e0["id"].as_str().unwrap()),
        json!({"nope": 1}),
    )
    .await
    .assert_error(400, "parameter_unknown");
    // No subscription selects it: nothing to redeliver, nothing created.
    let r = app
        .post(
            &format!("/api/events/{}/redeliver", e0["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["data"], json!([]));
    // A subscription that does not select the type cannot be named.
    let sub = app
        .subscribe("https://x.example/", &["refund.created"])
        .await;
    app.post(
        &format!("/api/events/{}/redeliver", e0["id"].as_str().unwrap()),
        json!({"subscriptionId": sub["id"]}),
    )
    .await
    .assert_error(400, "parameter_invalid");
}
