//! The API's request path: answers for every state, the panic guard, authentication schemes,
//! the `Request-Id` header and the wording of parse errors.

use std::time::Duration;

use paystream_tests::spawn_app;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Confirming an intent that is past confirmation (`requires_capture`, `requires_action`) is a
/// state conflict the state machine answers, not a panic that drops the connection, and it
/// leaves the Idempotency-Key free for the next request.
#[tokio::test]
async fn confirm_in_requires_capture_or_requires_action_is_a_409() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();

    let manual = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual", "confirm": true}),
        )
        .await;
    let manual = manual["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&manual, &["requires_capture"], WAIT)
        .await;

    let three_ds = app
        .create_intent(json!({
            "paymentMethodId": "pm_card_threeDSecureRequired",
            "returnUrl": "https://shop.example/back",
            "confirm": true
        }))
        .await;
    let three_ds = three_ds["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&three_ds, &["requires_action"], WAIT)
        .await;

    for (id, status) in [
        (&manual, "requires_capture"),
        (&three_ds, "requires_action"),
    ] {
        let path = format!("/api/payment-intents/{id}/confirm");
        let key = format!("confirm-again-{id}");
        let r = app.post_idem(&path, &key, json!({})).await;
        r.assert_error(409, "invalid_state_transition");
        assert!(r.text.contains(status), "{}", r.text);
        // A 409 is not cached and releases the key at once: the same request runs again now
        // (and is refused again) instead of waiting for the lock's TTL.
        let again = tokio::time::timeout(
            Duration::from_millis(1500),
            app.post_idem(&path, &key, json!({})),
        )
        .await
        .expect("the key was released");
        again.assert_error(409, "invalid_state_transition");
        assert_eq!(
            app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
            status
        );
    }
}

/// Stripe's clients send the key as HTTP Basic (`curl -u sk_...:`); it works as Bearer does,
/// and a malformed Basic header is a 401 in the contract's shape.
#[tokio::test]
async fn http_basic_auth_is_accepted_like_bearer() {
    let app = spawn_app().await;
    let url = |path: &str| format!("{}{path}", app.address);
    let r = app
        .raw(
            app.http
                .post(url("/api/payment-intents"))
                .basic_auth(&app.api_key, Some(""))
                .header("Idempotency-Key", "basic-1")
                .json(&json!({"amount": 1099, "currency": "usd", "customerId": "cus_basic"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = app
        .raw(
            app.http
                .get(url(&format!("/api/payment-intents/{id}")))
                .basic_auth(&app.api_key, None::<&str>),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["customerId"], "cus_basic");

    for header in [
        "Basic not-base64!",
        "Basic OnNrX3Bhc3N3b3Jk", // ":sk_password": no user name
        "Basic",
        "Basic c2tfbm9fc3VjaF9rZXk6", // "sk_no_such_key:"
    ] {
        let r = app
            .raw(
                app.http
                    .get(url("/api/payment-intents"))
                    .header("Authorization", header),
            )
            .await;
        r.assert_error(401, "unauthorized");
    }
}

/// Every answer carries a fresh `Request-Id`: successes, errors, unknown routes, operations
/// endpoints. One a client sends is not echoed.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let id_of = |r: &paystream_tests::Reply| {
        r.headers
            .get("Request-Id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no Request-Id on {} {}", r.status, r.text))
            .to_owned()
    };
    let mut seen = std::collections::HashSet::new();
    let replies = [
        app.get("/healthz").await,
        app.get("/api/payment-intents").await,
        app.get("/api/no-such-route").await,
        app.get("/no-such-route").await,
        app.request(
            reqwest::Method::GET,
            "/api/payment-intents",
            None,
            None,
            None,
        )
        .await,
        app.post("/api/payment-intents", json!({"amount": 10.99}))
            .await,
        app.raw(
            app.http
                .get(format!("{}/api/payment-intents", app.address))
                .bearer_auth(&app.api_key)
                .header("Request-Id", "req_chosen_by_the_client"),
        )
        .await,
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 404, 404, 401, 400, 200]);
    for r in &replies {
        let id = id_of(r);
        assert!(id.starts_with("req_") && id.len() == 36, "{id}");
        assert!(seen.insert(id), "ids are unique");
    }
}

/// `"amount": 10.99` is refused in the API's terms, on every money field, without the
/// parser's vocabulary.
#[tokio::test]
async fn fractional_amounts_say_they_must_be_minor_units() {
    let app = spawn_app().await;
    for (path, body, param) in [
        (
            "/api/payment-intents",
            json!({"amount": 10.99, "currency": "usd", "customerId": "c"}),
            "amount",
        ),
        (
            "/api/payment-intents",
            json!({"amount": "1099", "currency": "usd", "customerId": "c"}),
            "amount",
        ),
        (
            "/api/payment-intents/pi_00000000000000000000000000000000/capture",
            json!({"amountToCapture": 5.5}),
            "amountToCapture",
        ),
        (
            "/api/refunds",
            json!({"paymentIntentId": "pi_00000000000000000000000000000000", "amount": 1.5}),
            "amount",
        ),
    ] {
        let r = app.post(path, body).await;
        r.assert_error(400, "parameter_invalid");
        assert_eq!(r.error_param(), param, "{}", r.text);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("integer count of the currency's minor unit")
                && message.contains("1099"),
            "{message}"
        );
        for internal in ["i64", "floating point", "line 1", "column"] {
            assert!(!message.contains(internal), "{message}");
        }
    }
}

/// The API as a real process, its JSON log lines on stderr written to a file.
struct ApiProcess {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl ApiProcess {
    async fn start(app: &paystream_tests::TestApp) -> ApiProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!(
            "paystream-api-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let child = std::process::Command::new(paystream_tests::binary("paystream-api"))
            .env("DATABASE_URL", &app.db.url)
            .env("NATS_URL", &app.config.nats_url)
            .env("PAYSTREAM_STREAM_PREFIX", &app.prefix)
            .env("PAYSTREAM_ACQUIRER_URL", &app.sim_url)
            .env("PAYSTREAM_ENV", "development")
            .env("PAYSTREAM_API_ADDR", format!("127.0.0.1:{port}"))
            .env("PAYSTREAM_DB_POOL_SIZE", "4")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn paystream-api");
        let url = format!("http://127.0.0.1:{port}");
        let http = app.http.clone();
        paystream_tests::eventually(WAIT, "paystream-api to answer", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(format!("{url}/healthz"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        ApiProcess { child, url, log }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The log lines written for a request carry its `Request-Id` in their `request` span.
#[tokio::test]
async fn the_log_lines_of_a_request_carry_its_request_id() {
    let app = spawn_app().await;
    let api = ApiProcess::start(&app).await;
    let r = app
        .raw(
            app.http
                .post(format!("{}/api/payment-intents", api.url))
                .bearer_auth(&app.api_key)
                .json(&json!({"amount": 10.99, "currency": "usd", "customerId": "c"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let id = r.headers["Request-Id"].to_str().unwrap().to_owned();
    let line =
        paystream_tests::eventually(Duration::from_secs(10), "the request's log line", || {
            let found = api
                .lines()
                .into_iter()
                .find(|l| l.to_string().contains(&id));
            async move { found }
        })
        .await;
    let span = line["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "request"))
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(span["request_id"], id.as_str(), "{line}");
    assert_eq!(line["fields"]["code"], "parameter_invalid", "{line}");
}

/// A card number glued to letters (`pm4242424242424242`) is neither echoed in the 400 nor
/// written to the API's log, wherever it was sent: body, path or query.
#[tokio::test]
async fn card_numbers_next_to_letters_reach_no_answer_and_no_log_line() {
    let app = spawn_app().await;
    let api = ApiProcess::start(&app).await;
    let cards = ["4242424242424242", "4000000000000002", "5555555555554444"];
    let sent = [
        format!("pm{}", cards[0]),
        format!("card_{}x", cards[1]),
        format!("{}abc", cards[2]),
        format!("pm_{}", cards[0]),
    ];
    for pm in &sent {
        let r = app
            .raw(
                app.http
                    .post(format!("{}/api/payment-intents", api.url))
                    .bearer_auth(&app.api_key)
                    .json(&json!({"amount": 1099, "currency": "usd", "customerId": "c", "paymentMethodId": pm})),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error_param(), "paymentMethodId", "{}", r.text);
        for card in cards {
            assert!(!r.text.contains(card), "{pm}: {}", r.text);
            assert!(!r.text.contains(&card[..12]), "{pm}: {}", r.text);
        }
        let r = app
            .raw(
                app.http
                    .get(format!(
                        "{}/api/payment-intents/{pm}?customerId={pm}",
                        api.url
                    ))
                    .bearer_auth(&app.api_key),
            )
            .await;
        // `pm_<number>` stands alone (an underscore is no letter): the front door refuses it
        // as card data; glued to letters it is only an unknown id.
        if pm.starts_with("pm_") {
            r.assert_error(400, "card_data_not_allowed");
        } else {
            assert_eq!(r.status, 404, "{}", r.text);
        }
        assert!(cards.iter().all(|c| !r.text.contains(c)), "{}", r.text);
    }
    // The rejected requests were logged (with their paths), and scrubbed.
    paystream_tests::eventually(Duration::from_secs(10), "the rejections' log lines", || {
        let text = api.text();
        let done = text.matches("request rejected").count()
            + text.matches("request refused").count()
            >= 2 * sent.len();
        async move { done.then_some(()) }
    })
    .await;
    let logs = api.text();
    for card in cards {
        assert!(!logs.contains(card), "{card} reached a log line");
        assert!(
            !logs.contains(&card[..12]),
            "part of {card} reached a log line"
        );
    }
}
