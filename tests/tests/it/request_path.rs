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
