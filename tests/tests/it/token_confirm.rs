//! Confirming with a vault token under one Idempotency-Key: the token is spent once, the
//! acquirer charged once, and a retry (after the first answer, or racing it) replays the
//! first answer instead of finding the token used up; a confirm refused for what it lacks
//! leaves the token unspent.

use std::time::Duration;

use serde_json::{json, Value};

use paystream_tests::{spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(30);

async fn tokenized_intent(app: &TestApp) -> (String, String) {
    let token = app
        .tokenize(
            &app.publishable_key().await,
            json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}}),
        )
        .await;
    assert_eq!(token.status, 201, "{}", token.text);
    let intent = app.create_intent(json!({})).await;
    (
        intent["id"].as_str().unwrap().to_owned(),
        token.body["id"].as_str().unwrap().to_owned(),
    )
}

fn confirm_body(token: &str) -> Value {
    json!({"paymentMethod": {"type": "card", "token": token}, "returnUrl": "https://shop.example/back"})
}

#[tokio::test]
async fn a_retried_token_confirm_replays_its_answer_and_charges_once() {
    let app = spawn_app().await;
    app.start_vault().await;
    let _confirm = app.start_confirm_worker();
    let (id, token) = tokenized_intent(&app).await;
    let path = format!("/api/payment-intents/{id}/confirm");

    // Refused before the vault is asked: the token stays usable.
    let refused = app
        .post_idem(
            &path,
            "tok-no-return-url",
            json!({"paymentMethod": {"type": "card", "token": token}}),
        )
        .await;
    refused.assert_error(400, "parameter_missing");
    // The confirm below spends the same token: the refusal left it unspent.

    let first = app
        .post_idem(&path, "tok-retry", confirm_body(&token))
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let again = app
        .post_idem(&path, "tok-retry", confirm_body(&token))
        .await;
    // A replay answers 200 with the first answer's body (docs/idempotency.md).
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "{}",
        again.text
    );
    assert_eq!(again.body, first.body);

    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    // A new key cannot spend the token twice either.
    let other = app
        .post_idem(&path, "tok-other", confirm_body(&token))
        .await;
    assert!(other.status.is_client_error(), "{}", other.text);
}

#[tokio::test]
async fn racing_token_confirms_under_one_key_make_one_charge() {
    let app = spawn_app().await;
    app.start_vault().await;
    let _confirm = app.start_confirm_worker();
    let (id, token) = tokenized_intent(&app).await;
    let path = format!("/api/payment-intents/{id}/confirm");

    let (a, b) = tokio::join!(
        app.post_idem(&path, "tok-race", confirm_body(&token)),
        app.post_idem(&path, "tok-race", confirm_body(&token)),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 202], "{} / {}", a.text, b.text);
    let replayed = [&a, &b]
        .iter()
        .filter(|r| r.headers.get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 1, "{} / {}", a.text, b.text);

    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    // The vault spent the token once: another intent cannot use it.
    let other = app.create_intent(json!({})).await;
    let again = app
        .post_idem(
            &format!(
                "/api/payment-intents/{}/confirm",
                other["id"].as_str().unwrap()
            ),
            "tok-race-other",
            confirm_body(&token),
        )
        .await;
    assert!(again.status.is_client_error(), "{}", again.text);
}
