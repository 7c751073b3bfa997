//! Bad input gets a clear 4xx in the contract's shape, never a 5xx, and never loses data
//! already accepted.

use paystream_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn every_bad_create_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let base = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let many_keys: serde_json::Map<String, serde_json::Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = vec![
        (with("amount", json!(10.99)), "parameter_invalid", "amount"),
        (with("amount", json!(1e3)), "parameter_invalid", "amount"),
        (with("amount", json!("1099")), "parameter_invalid", "amount"),
        (with("amount", json!(0)), "amount_too_small", "amount"),
        (with("amount", json!(-5)), "amount_too_small", "amount"),
        (
            with("amount", json!(100_000_000)),
            "amount_too_large",
            "amount",
        ),
        (
            with("amount", json!(99_999_999_999_999_999_999.0)),
            "parameter_invalid",
            "amount",
        ),
        (
            with("currency", json!("xyz")),
            "currency_invalid",
            "currency",
        ),
        (
            with("currency", json!(840)),
            "parameter_invalid",
            "currency",
        ),
        (without("amount"), "parameter_missing", "amount"),
        (without("currency"), "parameter_missing", "currency"),
        (without("customerId"), "parameter_missing", "customerId"),
        (
            with("customerId", json!("")),
            "parameter_invalid",
            "customerId",
        ),
        (
            with("metadata", json!(many_keys)),
            "metadata_invalid",
            "metadata",
        ),
        (
            with("metadata", json!({"k".repeat(41): "v"})),
            "metadata_invalid",
            "metadata",
        ),
        (
            with("metadata", json!({"note": "v".repeat(501)})),
            "metadata_invalid",
            "metadata[note]",
        ),
        (
            with("metadata", json!({"n": 5})),
            "parameter_invalid",
            "metadata.n",
        ),
        (
            with("captureMethod", json!("later")),
            "parameter_invalid",
            "captureMethod",
        ),
        (
            with("returnUrl", json!("ftp://x")),
            "url_invalid",
            "returnUrl",
        ),
        (
            with("description", json!("d".repeat(1001))),
            "parameter_invalid",
            "description",
        ),
        (
            with("paymentMethodId", json!("4242424242424242")),
            "card_data_not_allowed",
            "paymentMethodId",
        ),
        (
            with("surprise", json!(true)),
            "parameter_unknown",
            "surprise",
        ),
    ];
    for (body, code, param) in cases {
        let r = app.post("/api/payment-intents", body.clone()).await;
        r.assert_error(400, code);
        assert_eq!(r.error_param(), param, "{body} -> {}", r.text);
        assert!(
            !r.text.contains("4242424242424242"),
            "an error body never echoes a card number: {}",
            r.text
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_intents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing was created by bad input");
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let app = spawn_app().await;
    let pi = app.create_intent(json!({})).await;
    let url = format!("{}/api/payment-intents", app.address);
    let send = |body: Vec<u8>, ct: &'static str| {
        app.http
            .post(&url)
            .bearer_auth(&app.api_key)
            .header("Content-Type", ct)
            .body(body)
    };

    app.raw(send(b"{\"amount\": 10".to_vec(), "application/json"))
        .await
        .assert_error(400, "invalid_json");
    app.raw(send(b"not json at all".to_vec(), "application/json"))
        .await
        .assert_error(400, "invalid_json");
    app.raw(send(b"[]".to_vec(), "application/json"))
        .await
        .assert_error(400, "parameter_invalid");
    app.raw(send(
        b"amount=5".to_vec(),
        "application/x-www-form-urlencoded",
    ))
    .await
    .assert_error(400, "parameter_invalid");
    let huge = format!(
        "{{\"amount\": 5, \"currency\": \"usd\", \"customerId\": \"c\", \"description\": \"{}\"}}",
        "x".repeat(300 * 1024)
    );
    app.raw(send(huge.clone().into_bytes(), "application/json"))
        .await
        .assert_error(413, "body_too_large");
    // The same with an Idempotency-Key goes through the key's own body read.
    app.raw(send(huge.into_bytes(), "application/json").header("Idempotency-Key", "big"))
        .await
        .assert_error(413, "body_too_large");

    // Data accepted before the bad input is untouched.
    let got = app
        .get(&format!(
            "/api/payment-intents/{}",
            pi["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got.body, pi);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_contract_shape() {
    let app = spawn_app().await;
    app.get("/api/nothing-here")
        .await
        .assert_error(404, "resource_missing");
    let r = app
        .request(
            reqwest::Method::DELETE,
            "/api/payment-intents",
            Some(&app.api_key.clone()),
            None,
            None,
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    assert!(r.body["error"]["code"].is_string(), "{}", r.text);
}

#[tokio::test]
async fn a_nul_character_is_a_400_on_every_route_never_a_5xx() {
    let app = spawn_app().await;
    // Bodies are checked as they are parsed, so the error names the field.
    let base = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let bodies = [
        (
            "/api/payment-intents",
            with("customerId", json!("a\u{0}b")),
            "customerId",
        ),
        (
            "/api/payment-intents",
            with("description", json!("line\u{0}")),
            "description",
        ),
        (
            "/api/payment-intents",
            with("metadata", json!({"note": "x\u{0}y"})),
            "metadata.note",
        ),
        (
            "/api/payment-intents",
            with("metadata", json!({"k\u{0}": "v"})),
            "metadata",
        ),
        (
            "/api/payment-intents",
            with("description", json!("bell \u{7}")),
            "description",
        ),
        (
            "/api/refunds",
            json!({"paymentIntentId": "pi_\u{0}"}),
            "paymentIntentId",
        ),
        (
            "/api/webhooks/subscribe",
            json!({"url": "https://shop.example/\u{0}", "events": ["*"]}),
            "url",
        ),
    ];
    for (i, (path, body, param)) in bodies.into_iter().enumerate() {
        let r = app.post(path, body.clone()).await;
        r.assert_error(400, "parameter_invalid");
        assert_eq!(r.error_param(), param, "{path} {body} -> {}", r.text);
        // The same through the Idempotency-Key's own body read.
        app.post_idem(path, &format!("nul-{i}"), body)
            .await
            .assert_error(400, "parameter_invalid");
    }

    // Path and query values reach PostgreSQL as they are; its refusal is a 400 too.
    let intent = app.create_intent(json!({})).await;
    let pi = intent["id"].as_str().unwrap();
    for path in [
        "/api/refunds/re_%00x".to_owned(),
        "/api/refunds?paymentIntentId=pi_%00x".to_owned(),
        "/api/refunds?startingAfter=re_%00x".to_owned(),
        "/api/payment-intents?customerId=a%00b".to_owned(),
        "/api/payment-intents?startingAfter=pi_%00x".to_owned(),
        "/api/webhooks/events?subscriptionId=we_%00x".to_owned(),
        "/api/webhooks/events?startingAfter=wd_%00x".to_owned(),
        "/api/events?startingAfter=evt_%00x".to_owned(),
        "/api/audit-log?objectId=a%00b".to_owned(),
        format!("/api/audit-log?objectId={pi}&startingAfter=aud_%00x"),
    ] {
        let r = app.get(&path).await;
        assert!(!r.status.is_server_error(), "{path} -> {}", r.text);
        r.assert_error(400, "parameter_invalid");
    }
    for path in [
        "/api/payment-intents/pi_%00x/cancel",
        "/api/payment-intents/pi_%00x/refund",
    ] {
        let r = app.post(path, json!({})).await;
        assert!(!r.status.is_server_error(), "{path} -> {}", r.text);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_intents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "nothing was created by bad input");
}

#[tokio::test]
async fn error_bodies_never_echo_a_card_number_or_a_key() {
    let app = spawn_app().await;
    // A Luhn-valid test card, and a string the scrubber knows as a secret key.
    let pan = "4242424242424242";
    let key = "sk_test_0123456789abcdefXYZ";
    let base = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let mut replies = Vec::new();
    for secret in [pan, key] {
        for path in [
            format!("/api/payment-intents/{secret}"),
            format!("/api/refunds/{secret}"),
            format!("/api/events/{secret}"),
            format!("/api/payment-intents?status={secret}"),
            format!("/api/events?type={secret}"),
            format!("/api/webhooks/events?eventId={secret}"),
            format!("/api/webhooks/events?status={secret}"),
            format!("/api/payment-intents?startingAfter={secret}"),
        ] {
            replies.push((path.clone(), app.get(&path).await));
        }
        for body in [
            with("currency", json!(secret)),
            with("currency", json!(format!("abcd {secret}"))),
            with("metadata", json!({secret: "v".repeat(501)})),
            with(secret, json!(1)),
        ] {
            replies.push((
                body.to_string(),
                app.post("/api/payment-intents", body).await,
            ));
        }
        replies.push((
            "refund".to_owned(),
            app.post("/api/refunds", json!({"paymentIntentId": secret}))
                .await,
        ));
    }
    for (what, r) in &replies {
        assert!(r.status.is_client_error(), "{what} -> {}", r.text);
        assert!(r.body["error"]["code"].is_string(), "{what} -> {}", r.text);
        for secret in [pan, key, "42424242", "0123456789abcdef"] {
            assert!(
                !r.text.contains(secret),
                "{what}: the error body echoes `{secret}`: {}",
                r.text
            );
        }
    }
}

#[tokio::test]
async fn values_outside_a_documented_enum_are_a_400_naming_the_field() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/api/payment-intents",
            json!({"amount": 1000, "currency": "usd", "customerId": "cus_1", "captureMethod": "later"}),
        )
        .await;
    r.assert_error(400, "parameter_invalid");
    assert_eq!(r.error_param(), "captureMethod");
    assert!(r.text.contains("automatic"), "{}", r.text);
    // The reason is checked before the intent is looked up.
    let id = "pi_any";
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": id, "reason": "because"}),
        )
        .await;
    r.assert_error(400, "parameter_invalid");
    assert_eq!(r.error_param(), "reason");
}
