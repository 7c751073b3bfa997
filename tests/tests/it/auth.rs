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
