//! Client-side confirmation: every intent's `clientSecret`, what a publishable key may do with
//! it (and nothing more), the limit on wrong secrets, and that the secret is in no table, log
//! line, NATS message or webhook body (docs/api.md "Client-side confirmation").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use paystream_shared::store::merchants::Role;
use paystream_tests::webhooks::Sink;
use paystream_tests::{spawn_app, Reply, TestApp};

const WAIT: Duration = Duration::from_secs(30);

fn secret_of(pi: &Value) -> String {
    pi["clientSecret"]
        .as_str()
        .unwrap_or_else(|| panic!("no clientSecret in {pi}"))
        .to_owned()
}

async fn get_client_side(app: &TestApp, key: &str, id: &str, secret: Option<&str>) -> Reply {
    let mut rb = app
        .http
        .get(format!("{}/api/payment-intents/{id}", app.address))
        .bearer_auth(key);
    if let Some(secret) = secret {
        rb = rb.query(&[("clientSecret", secret)]);
    }
    app.raw(rb).await
}

async fn confirm_client_side(app: &TestApp, key: &str, id: &str, body: Value) -> Reply {
    app.raw(
        app.http
            .post(format!("{}/api/payment-intents/{id}/confirm", app.address))
            .bearer_auth(key)
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn secret_keys_get_each_intents_client_secret_from_create_get_list_and_replays() {
    let app = spawn_app().await;
    let created = app
        .post_idem(
            "/api/payment-intents",
            "cs-create",
            json!({"amount": 500, "currency": "usd", "customerId": "cus_1"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap();
    let secret = secret_of(&created.body);
    let random = secret
        .strip_prefix(&format!("{id}_secret_"))
        .expect("{id}_secret_{random}");
    // 160 bits, as hex.
    assert_eq!(random.len(), 40, "{secret}");
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");

    let replay = app
        .post_idem(
            "/api/payment-intents",
            "cs-create",
            json!({"amount": 500, "currency": "usd", "customerId": "cus_1"}),
        )
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(secret_of(&replay.body), secret);

    let got = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(secret_of(&got.body), secret);
    let other = app.create_intent(json!({})).await;
    assert_ne!(secret_of(&other), secret);
    let list = app.get("/api/payment-intents?limit=10").await;
    let items = list.body["data"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for pi in items {
        let s = secret_of(pi);
        assert!(s.starts_with(&format!("{}_secret_", pi["id"].as_str().unwrap())));
    }
    // Confirm and cancel answer it to a secret key too.
    let canceled = app
        .post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await;
    assert_eq!(secret_of(&canceled.body), secret);
}

#[tokio::test]
async fn a_publishable_key_reads_and_confirms_only_with_the_right_secret() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let pk = app.publishable_key().await;
    let pi = app
        .create_intent(
            json!({"metadata": {"order": "o_1"}, "returnUrl": "https://shop.example/done"}),
        )
        .await;
    let id = pi["id"].as_str().unwrap();
    let secret = secret_of(&pi);
    let other = app.create_intent(json!({})).await;
    let other_secret = secret_of(&other);

    let r = get_client_side(&app, &pk, id, Some(&secret)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], id);
    assert_eq!(r.body["status"], "requires_payment_method");
    assert!(r.body.get("clientSecret").is_none(), "{}", r.text);
    assert_eq!(r.body["metadata"], json!({}), "{}", r.text);

    // Wrong, missing, another intent's secret, or a missing intent: one and the same 404.
    let missing = get_client_side(&app, &pk, "pi_doesnotexist", Some(&secret)).await;
    assert_eq!(missing.status, 404);
    let wrong = format!("{}0", &secret[..secret.len() - 1]);
    let missing_for_id = |r: &Reply| {
        assert_eq!(r.status, 404, "{}", r.text);
        assert_eq!(r.error_code(), "resource_missing");
        assert_eq!(
            r.body["error"]["message"],
            format!("No such payment_intent: '{id}'"),
            "{}",
            r.text
        );
        assert!(
            !r.text.contains(&secret) && !r.text.contains("_secret_"),
            "{}",
            r.text
        );
    };
    for presented in [
        Some(wrong.as_str()),
        None,
        Some(other_secret.as_str()),
        Some(""),
    ] {
        missing_for_id(&get_client_side(&app, &pk, id, presented).await);
        let body = json!({"clientSecret": presented, "paymentMethodId": "pm_card_visa"});
        missing_for_id(&confirm_client_side(&app, &pk, id, body).await);
    }
    // Another merchant's publishable key, even with the right secret.
    let foreign = app.other_merchant("globex", Role::Publishable).await;
    missing_for_id(&get_client_side(&app, &foreign, id, Some(&secret)).await);
    // A stored method of another customer is not the shopper's to use.
    app.start_vault().await;
    let token = app
        .tokenize(
            &pk,
            json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}}),
        )
        .await;
    let theirs = app
        .post(
            "/api/payment-methods",
            json!({"type": "card", "token": token.body["id"], "customerId": "cus_someone_else"}),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    let body = json!({"clientSecret": secret, "paymentMethodId": theirs.body["id"]});
    let r = confirm_client_side(&app, &pk, id, body).await;
    r.assert_error(400, "resource_missing");

    // Nothing else accepts a publishable key.
    for (method, path) in [
        ("GET", "/api/payment-intents".to_owned()),
        ("POST", "/api/payment-intents".to_owned()),
        ("POST", format!("/api/payment-intents/{id}/cancel")),
        ("POST", format!("/api/payment-intents/{id}/capture")),
        ("POST", format!("/api/payment-intents/{id}/refund")),
        ("GET", "/api/payment-methods".to_owned()),
        ("POST", "/api/refunds".to_owned()),
        ("GET", "/api/events".to_owned()),
        ("GET", "/api/balance".to_owned()),
    ] {
        let rb = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.address))
            .bearer_auth(&pk);
        let rb = if method == "POST" {
            rb.json(&json!({"clientSecret": secret}))
        } else {
            rb
        };
        let r = app.raw(rb).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text);
        assert_eq!(r.error_code(), "role_not_allowed", "{method} {path}");
    }

    // The right secret confirms, under an Idempotency-Key like every POST.
    let body = json!({"clientSecret": secret, "paymentMethodId": "pm_card_visa"});
    let confirm = |key: &'static str| {
        app.raw(
            app.http
                .post(format!("{}/api/payment-intents/{id}/confirm", app.address))
                .bearer_auth(&pk)
                .header("Idempotency-Key", key)
                .json(&body),
        )
    };
    let r = confirm("browser-1").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.body.get("clientSecret").is_none());
    assert_eq!(r.body["metadata"], json!({}));
    let again = confirm("browser-1").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(again.body.get("clientSecret").is_none());
    let done = app.wait_for_status(id, &["succeeded"], WAIT).await;
    assert_eq!(done["amountReceived"], 1099, "{done}");
    // The merchant still sees its metadata.
    assert_eq!(done["metadata"]["order"], "o_1");
}

#[tokio::test]
async fn a_burst_of_wrong_secrets_is_rate_limited_and_then_even_the_right_one_waits() {
    let app = spawn_app().await;
    let pk = app.publishable_key().await;
    let pi = app.create_intent(json!({})).await;
    let id = pi["id"].as_str().unwrap();
    let secret = secret_of(&pi);
    let mut limited = None;
    // 20 failures a minute per address: 60 guesses cannot all be answered, however slowly.
    for i in 0..60 {
        let r = get_client_side(&app, &pk, id, Some(&format!("{id}_secret_{i:040}"))).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 404, "{}", r.text);
    }
    let limited = limited.expect("a 429 within 60 wrong secrets");
    assert_eq!(limited.error_code(), "rate_limited");
    assert!(limited.headers.get("retry-after").is_some());
    // While limited, a right guess is not told apart from a wrong one.
    let r = get_client_side(&app, &pk, id, Some(&secret)).await;
    assert_eq!(r.status, 429, "{}", r.text);
    // A secret key's calls are not affected.
    let r = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(r.status, 200);
}

/// NATS messages seen: subject and payload.
type Published = Vec<(String, Vec<u8>)>;

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_client_secret_is_in_no_table_log_line_nats_message_or_webhook_body() {
    let logs = LogBuffer::default();
    let sink_logs = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || sink_logs.clone())
            .finish(),
    )
    .expect("this test process's only subscriber");

    let app = spawn_app().await;
    app.start_vault().await;
    let _confirm = app.start_confirm_worker();
    let _webhooks = app.start_webhook_worker();
    let sink = Sink::start().await;
    app.subscribe(&sink.url("/all"), &["*"]).await;
    // Every message published on this test's subjects, as it goes by.
    let nats = async_nats::connect(paystream_tests::nats_url())
        .await
        .unwrap();
    let mut messages = nats.subscribe(">").await.unwrap();
    let seen: Arc<Mutex<Published>> = Arc::default();
    let collected = seen.clone();
    let prefix = app.prefix.clone();
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            if m.subject.as_str().starts_with(&prefix) {
                collected
                    .lock()
                    .unwrap()
                    .push((m.subject.to_string(), m.payload.to_vec()));
            }
        }
    });

    let pk = app.publishable_key().await;
    let created = app
        .post_idem(
            "/api/payment-intents",
            "leak-create",
            json!({"amount": 1099, "currency": "usd", "customerId": "cus_leak",
                   "returnUrl": "https://shop.example/done", "metadata": {"k": "v"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = secret_of(&created.body);
    let random = secret.rsplit('_').next().unwrap().to_owned();

    // The browser's side: read, a wrong guess, tokenize, confirm with the token.
    assert_eq!(
        get_client_side(&app, &pk, &id, Some(&secret)).await.status,
        200
    );
    assert_eq!(
        get_client_side(&app, &pk, &id, Some("nope")).await.status,
        404
    );
    let token = app
        .tokenize(
            &pk,
            json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}}),
        )
        .await;
    assert_eq!(token.status, 201, "{}", token.text);
    let r = app
        .raw(
            app.http
                .post(format!("{}/api/payment-intents/{id}/confirm", app.address))
                .bearer_auth(&pk)
                .header("Idempotency-Key", "leak-confirm")
                .json(
                    &json!({"clientSecret": secret, "returnUrl": "https://shop.example/done",
                              "paymentMethod": {"type": "card", "token": token.body["id"]}}),
                ),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let done = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(secret_of(&done), secret);
    // created, processing, succeeded: every event reached the webhook sink.
    let hooks = sink.wait_for("/all", 3, WAIT).await;
    let refund = app
        .post(&format!("/api/payment-intents/{id}/refund"), json!({}))
        .await;
    assert!(refund.status.is_success(), "{}", refund.text);

    for hook in &hooks {
        let body = String::from_utf8_lossy(&hook.body);
        assert!(!body.contains(&random), "a webhook body: {body}");
        assert!(!body.contains("clientSecret"), "a webhook body: {body}");
    }
    let published = seen.lock().unwrap().clone();
    assert!(!published.is_empty(), "no NATS message seen");
    for (subject, payload) in &published {
        let text = String::from_utf8_lossy(payload);
        assert!(!text.contains(&random), "NATS {subject}: {text}");
    }
    let hex: String = random.bytes().map(|b| format!("{b:02x}")).collect();
    for (table, rows) in crate::card_data::dump_every_table(&app).await {
        assert!(!rows.contains(&random), "{table} holds the client secret");
        assert!(
            !rows.contains(&hex),
            "{table} holds the client secret, as bytes"
        );
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!logged.is_empty());
    assert!(
        !logged.contains(&random),
        "a log line holds the client secret"
    );
    let dead = paystream_nats::dlq::list(&app.js, &app.topology)
        .await
        .unwrap();
    for d in dead {
        assert!(!format!("{d:?}").contains(&random), "a dead letter");
    }
}
