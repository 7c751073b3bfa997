use std::collections::HashSet;

use paystream_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn replay_returns_the_original_body_and_runs_nothing() {
    let app = spawn_app().await;
    let body = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1", "metadata": {"a": "1", "b": "2"}});
    let first = app
        .post_idem("/api/payment-intents", "key-1", body.clone())
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(first.headers.get("Idempotent-Replayed").is_none());

    // Same request with keys in another order: the canonical JSON is the same.
    let reordered = json!({"metadata": {"b": "2", "a": "1"}, "customerId": "cus_1", "currency": "usd", "amount": 1099});
    let again = app
        .post_idem("/api/payment-intents", "key-1", reordered)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers.get("Idempotent-Replayed").unwrap(), "true");
    assert_eq!(again.body, first.body);

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_intents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn same_key_with_other_parameters_is_a_422_and_nothing_runs() {
    let app = spawn_app().await;
    app.post_idem(
        "/api/payment-intents",
        "k",
        json!({"amount": 100, "currency": "usd", "customerId": "c"}),
    )
    .await;
    let r = app
        .post_idem(
            "/api/payment-intents",
            "k",
            json!({"amount": 200, "currency": "usd", "customerId": "c"}),
        )
        .await;
    r.assert_error(422, "idempotency_key_reused");
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let r = app
        .post_idem(
            &format!(
                "/api/payment-intents/{}/confirm",
                pi["id"].as_str().unwrap()
            ),
            "k",
            json!({}),
        )
        .await;
    r.assert_error(422, "idempotency_key_reused");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_intents WHERE amount = 200")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    assert_eq!(
        app.get(&format!(
            "/api/payment-intents/{}",
            pi["id"].as_str().unwrap()
        ))
        .await
        .body["status"],
        "requires_confirmation"
    );

    // Keys are scoped per merchant: another merchant may use the same key freely.
    let other = app
        .other_merchant("globex", paystream_shared::store::merchants::Role::Admin)
        .await;
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/payment-intents",
            Some(&other),
            Some("k"),
            Some(json!({"amount": 300, "currency": "usd", "customerId": "c"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn fifty_concurrent_identical_requests_run_once() {
    let app = spawn_app().await;
    let body = json!({"amount": 4200, "currency": "eur", "customerId": "cus_race", "paymentMethodId": "pm_card_visa", "confirm": true});
    let replies = futures::future::join_all(
        (0..50).map(|_| app.post_idem("/api/payment-intents", "race-key", body.clone())),
    )
    .await;
    let ids: HashSet<_> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every caller sees the same intent: {ids:?}");
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.status == 200 && r.headers.get("Idempotent-Replayed").is_some())
            .count(),
        49
    );
    let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_intents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(intents, 1);
    let confirms: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'cmd.payment.confirm'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(confirms, 1, "one confirm command, not fifty");
}

#[tokio::test]
async fn a_dead_holder_releases_the_key_after_the_lock_ttl() {
    let app = spawn_app().await;
    let body = json!({"amount": 700, "currency": "usd", "customerId": "c"});
    let fp = paystream_api::idempotency::fingerprint(
        &poem::http::Method::POST,
        "/api/payment-intents",
        &serde_json::to_vec(&body).unwrap(),
    );
    // A holder that locked the key and died: the lock is still live for a moment.
    sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, fingerprint, locked_until)
         VALUES ($1, 'orphan', 'POST', '/api/payment-intents', $2, now() + interval '300 milliseconds')",
    )
    .bind(&app.merchant_id)
    .bind(&fp)
    .execute(&app.pool)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = app.post_idem("/api/payment-intents", "orphan", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "it waited for the lock to expire"
    );
}

#[tokio::test]
async fn validation_errors_replay_but_conflicts_release_the_key() {
    let app = spawn_app().await;
    let bad = app
        .post_idem(
            "/api/payment-intents",
            "bad",
            json!({"amount": 0, "currency": "usd", "customerId": "c"}),
        )
        .await;
    bad.assert_error(400, "amount_too_small");
    let replay = app
        .post_idem(
            "/api/payment-intents",
            "bad",
            json!({"amount": 0, "currency": "usd", "customerId": "c"}),
        )
        .await;
    replay.assert_error(400, "amount_too_small");
    assert_eq!(replay.headers.get("Idempotent-Replayed").unwrap(), "true");

    // A 409 is not stored: once the state allows it, the same key runs.
    let pi = app.create_intent(json!({})).await;
    let id = pi["id"].as_str().unwrap();
    sqlx::query("UPDATE payment_intents SET status = 'processing' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.post_idem(
        &format!("/api/payment-intents/{id}/cancel"),
        "c1",
        json!({}),
    )
    .await
    .assert_error(409, "invalid_state_transition");
    sqlx::query("UPDATE payment_intents SET status = 'requires_payment_method' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post_idem(
            &format!("/api/payment-intents/{id}/cancel"),
            "c1",
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    app.post_idem("/api/payment-intents", &"k".repeat(256), json!({}))
        .await
        .assert_error(400, "idempotency_key_invalid");
}

#[tokio::test]
async fn expired_keys_are_purged_and_reusable() {
    let app = spawn_app().await;
    let body = json!({"amount": 800, "currency": "usd", "customerId": "c"});
    let first = app
        .post_idem("/api/payment-intents", "old", body.clone())
        .await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    // Past the retention the key is new again.
    let second = app.post_idem("/api/payment-intents", "old", body).await;
    assert_eq!(second.status, 201);
    assert_ne!(second.body["id"], first.body["id"]);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        paystream_shared::store::idempotency_keys::purge_expired(&app.pool, 100)
            .await
            .unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
