use paystream_shared::store::merchants::{self, Role};
use paystream_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn missing_malformed_and_revoked_keys_are_401() {
    let app = spawn_app().await;
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/payment-intents",
            None,
            None,
            None,
        )
        .await;
    r.assert_error(401, "unauthorized");
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/payment-intents",
            Some("sk_wrong"),
            None,
            None,
        )
        .await;
    r.assert_error(401, "unauthorized");
    assert!(
        !r.text.contains("sk_wrong"),
        "the error never echoes the key"
    );
    let r = app
        .raw(
            app.http
                .get(format!("{}/api/payment-intents", app.address))
                .header("Authorization", "Basic abc"),
        )
        .await;
    r.assert_error(401, "unauthorized");

    let keys = merchants::list_keys(&app.pool).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(merchants::revoke_key(&app.pool, &keys[0].id).await.unwrap());
    assert!(!merchants::revoke_key(&app.pool, &keys[0].id).await.unwrap());
    app.get("/api/payment-intents")
        .await
        .assert_error(401, "unauthorized");
}

/// The API caches key lookups for at most `key_cache::TTL`: a key revoked while it is cached
/// is refused once that second has passed, without a restart.
#[tokio::test]
async fn a_revoked_key_is_refused_within_the_cache_window() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/payment-intents").await.status, 200);
    assert_eq!(
        app.get("/api/payment-intents").await.status,
        200,
        "served from the cache now"
    );
    let keys = merchants::list_keys(&app.pool).await.unwrap();
    assert!(merchants::revoke_key(&app.pool, &keys[0].id).await.unwrap());
    tokio::time::sleep(paystream_api::key_cache::TTL + std::time::Duration::from_millis(50)).await;
    app.get("/api/payment-intents")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn read_only_keys_may_read_but_not_write() {
    let app = spawn_app().await;
    let pi = app.create_intent(json!({})).await;
    let mut conn = app.pool.acquire().await.unwrap();
    let ro = merchants::create_key(&mut conn, "acme", Role::ReadOnly, None)
        .await
        .unwrap();
    let secret = ro.secret.expose().clone();
    let r = app
        .get_as(
            &secret,
            &format!("/api/payment-intents/{}", pi["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status, 200, "same merchant, so the read works");
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/payment-intents",
            Some(&secret),
            None,
            Some(json!({"amount": 1, "currency": "usd", "customerId": "c"})),
        )
        .await;
    r.assert_error(403, "role_not_allowed");
}

#[tokio::test]
async fn bootstrap_key_is_idempotent() {
    let app = spawn_app().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let a = merchants::ensure_bootstrap_key(&mut conn, "demo", "sk_bootstrap_0123456789")
        .await
        .unwrap();
    let b = merchants::ensure_bootstrap_key(&mut conn, "demo", "sk_bootstrap_0123456789")
        .await
        .unwrap();
    assert_eq!(a, b);
    drop(conn);
    let r = app
        .get_as("sk_bootstrap_0123456789", "/api/payment-intents")
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_recovers() {
    let app = paystream_tests::spawn_app_with(|c| c.rate_limit_per_sec = 5).await;
    let replies = futures::future::join_all((0..20).map(|_| app.get("/api/payment-intents"))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), 20, "only 200s and 429s");
    assert!(ok >= 5, "the burst is one second's worth: {ok}");
    // Tokens come back at 5/s while the burst is served, so how many pass depends on the
    // machine's speed; on any machine most of 20 at once do not.
    assert!(!limited.is_empty(), "none of 20 limited");
    for r in &limited {
        r.assert_error(429, "rate_limited");
        let secs: u64 = r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in whole seconds");
        assert!(secs >= 1, "{secs}");
    }

    // A limited POST never takes its Idempotency-Key, so the retry runs.
    let body = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1"});
    let r = app
        .post_idem("/api/payment-intents", "after-429", body.clone())
        .await;
    r.assert_error(429, "rate_limited");

    // Operations, the docs and the acquirer's notifications are outside any key's limit, and
    // another key has a bucket of its own.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        let r = app
            .raw(app.http.get(format!("{}{path}", app.address)))
            .await;
        assert_eq!(r.status, 200, "{path}");
    }
    let r = app
        .raw(
            app.http
                .post(format!("{}/api/provider/webhooks", app.address))
                .body("{}"),
        )
        .await;
    r.assert_error(400, "signature_missing");
    let other = app.other_merchant("globex", Role::Admin).await;
    assert_eq!(app.get_as(&other, "/api/payment-intents").await.status, 200);

    let wait: u64 = limited[0].headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let r = app.get("/api/payment-intents").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post_idem("/api/payment-intents", "after-429", body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn publishable_keys_are_refused_by_every_api_route_but_the_client_side_calls() {
    let app = spawn_app().await;
    let pi = app.create_intent(json!({})).await;
    let mut conn = app.pool.acquire().await.unwrap();
    let pk = merchants::create_key(&mut conn, "acme", Role::Publishable, None)
        .await
        .unwrap();
    let secret = pk.secret.expose().clone();
    assert!(secret.starts_with("pk_"), "a publishable key is a pk_ key");
    let id = pi["id"].as_str().unwrap();
    // The client-side read needs the intent's client secret: without one it is a 404.
    let r = app
        .request(
            reqwest::Method::GET,
            &format!("/api/payment-intents/{id}"),
            Some(&secret),
            None,
            None,
        )
        .await;
    r.assert_error(404, "resource_missing");
    for (method, path) in [
        (reqwest::Method::GET, "/api/payment-intents".to_owned()),
        (reqwest::Method::POST, "/api/payment-intents".to_owned()),
        (
            reqwest::Method::POST,
            format!("/api/payment-intents/{id}/cancel"),
        ),
        (reqwest::Method::GET, "/api/events".to_owned()),
    ] {
        let body = (method == reqwest::Method::POST)
            .then(|| json!({"amount": 1, "currency": "usd", "customerId": "c"}));
        let r = app
            .request(method.clone(), &path, Some(&secret), None, body)
            .await;
        r.assert_error(403, "role_not_allowed");
    }
    let r = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(r.status, 200, "the intent was left alone: {}", r.text);
    assert_eq!(r.body["status"], pi["status"]);
}
