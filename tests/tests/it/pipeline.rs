//! The payment pipeline end to end: API -> outbox -> relay -> JetStream -> confirm worker ->
//! acquirer simulator -> state, audit and events.

use std::time::Duration;

use paystream_tests::spawn_app;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_visa_payment_succeeds_with_exactly_one_charge() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_visa").await;
    let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 1099);
    assert_eq!(pi["amountCapturable"], 0);
    let charges = app.sim_charges(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["amount"], 1099);
    assert_eq!(charges[0]["currency"], "usd");

    let events: Vec<String> =
        sqlx::query_scalar("SELECT type FROM events WHERE object_id = $1 ORDER BY created_at")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        [
            "payment_intent.created",
            "payment_intent.processing",
            "payment_intent.succeeded"
        ]
    );
    let audit = app.get(&format!("/api/audit-log?objectId={id}")).await;
    assert_eq!(audit.body["data"][0]["actor"], "worker:confirm-worker");
    assert_eq!(audit.body["data"][0]["after"]["status"], "succeeded");
}

#[tokio::test]
async fn declines_end_failed_with_the_issuers_reason() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let declined = app.create_and_confirm("pm_card_chargeDeclined").await;
    let poor = app.create_and_confirm("pm_card_insufficientFunds").await;
    let pi = app.wait_for_status(&declined, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "card_declined");
    assert_eq!(pi["amountReceived"], 0);
    let pi = app.wait_for_status(&poor, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "card_declined");
    assert_eq!(pi["lastPaymentError"]["declineCode"], "insufficient_funds");
    assert!(app
        .sim_charges(&poor)
        .await
        .iter()
        .all(|c| c["status"] != "captured"));
}

#[tokio::test]
async fn three_d_secure_and_manual_capture() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let tds = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    let pi = app.wait_for_status(&tds, &["requires_action"], WAIT).await;
    assert_eq!(pi["nextAction"]["type"], "redirect_to_url");
    assert!(pi["nextAction"]["redirectToUrl"]["url"]
        .as_str()
        .unwrap()
        .starts_with("http"));
    assert_eq!(
        pi["nextAction"]["redirectToUrl"]["returnUrl"],
        "https://shop.example/back"
    );

    let manual = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual", "confirm": true}),
        )
        .await;
    let id = manual["id"].as_str().unwrap();
    let pi = app.wait_for_status(id, &["requires_capture"], WAIT).await;
    assert_eq!(pi["amountCapturable"], 1099);
    assert!(pi["authorizationExpiresAt"].is_string());
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/capture"),
            json!({"amountToCapture": 600}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let pi = app.wait_for_status(id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 600);
    assert_eq!(app.sim_charges(id).await.len(), 1);
}

#[tokio::test]
async fn canceling_an_intent_waiting_for_3ds_voids_its_charge_once() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    app.wait_for_status(&id, &["requires_action"], WAIT).await;
    let cancel = |key: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.post_idem(&format!("/api/payment-intents/{id}/cancel"), key, json!({}))
                .await
        }
    };
    let (a, b) = tokio::join!(cancel("c-1"), cancel("c-2"));
    // One cancel wins; the other finds it canceled already (409), never a second void.
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let pi = app.wait_for_status(&id, &["canceled"], WAIT).await;
    assert!(pi["nextAction"].is_null());
    // A late 3-D Secure answer can no longer take the money: the charge is voided.
    paystream_tests::eventually(WAIT, "the charge to be voided", || async {
        let charges = app.sim_charges(&id).await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        (charges[0]["status"] == "voided").then_some(())
    })
    .await;
    let voids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE subject = 'cmd.payment.cancel' AND payload->>'paymentIntentId' = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(voids, 1);
}

#[tokio::test]
async fn a_charge_captured_behind_a_cancel_is_refunded_and_reaches_the_operator() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let created = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual", "confirm": true}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, &["requires_capture"], WAIT).await;
    // The acquirer captures on its own just before our cancel reaches it.
    let charge = app.sim_charges(&id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let captured = app
        .http
        .post(format!("{}/v1/payments/{charge}/capture", app.sim_url))
        .header("Idempotency-Key", format!("{charge}:behind-our-back"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(captured.status(), 200, "{}", captured.text().await.unwrap());
    let r = app
        .post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The refused void is not swallowed: the customer's money goes back by itself, and the
    // operator hears of it in the dead letters, saying what was done.
    let letter =
        paystream_tests::eventually(WAIT, "the orphan charge in the dead letters", || async {
            paystream_nats::dlq::list(&app.js, &app.topology)
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.object_id.as_deref() == Some(id.as_str()))
        })
        .await;
    let shown = format!("{letter:?}");
    assert!(shown.contains("orphan charge"), "{shown}");
    assert!(shown.contains("given back"), "{shown}");
    assert!(shown.contains(&charge), "{shown}");
    let amount = created["amount"].as_i64().unwrap();
    assert_eq!(
        app.acquirer_totals(&id).await,
        (amount, amount),
        "refunded in full"
    );
    let returned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE object_id = $1 AND action = 'payment_intent.orphan_charge_returned'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(returned, 1);
}

#[tokio::test]
async fn concurrent_confirms_give_one_charge() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    let path = format!("/api/payment-intents/{id}/confirm");
    let replies = futures::future::join_all((0..8).map(|_| app.post(&path, json!({})))).await;
    assert_eq!(replies.iter().filter(|r| r.status == 202).count(), 1);
    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim_charges(&id).await.len(), 1);
}

async fn all_succeed_once_under_faults(faults: serde_json::Value) {
    let app = spawn_app().await;
    app.sim_faults(faults).await;
    let _w1 = app.start_confirm_worker();
    let _w2 = app.start_confirm_worker();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.create_and_confirm("pm_card_visa").await);
    }
    for id in &ids {
        app.wait_for_status(id, &["succeeded"], Duration::from_secs(90))
            .await;
    }
    for id in &ids {
        let charges = app.sim_charges(id).await;
        assert_eq!(charges.len(), 1, "{id}: {charges:?}");
    }
}

#[tokio::test]
async fn half_of_acquirer_calls_failing_still_charges_each_intent_once() {
    all_succeed_once_under_faults(json!({"errorRate": 0.5})).await;
}

#[tokio::test]
async fn timeouts_after_the_charge_never_charge_twice() {
    all_succeed_once_under_faults(json!({"timeoutRate": 0.3})).await;
}

#[tokio::test]
async fn a_redelivered_command_for_a_finished_intent_changes_nothing() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_visa").await;
    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    // Publish the same confirm again, as a redelivery would.
    let cmd =
        json!({"type": "payment.confirm.v1", "paymentIntentId": id, "merchantId": app.merchant_id});
    app.js
        .publish(
            app.topology.subject("cmd.payment.confirm"),
            serde_json::to_vec(&cmd).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE object_id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audit, 3, "created, processing, succeeded: nothing more");
    assert_eq!(app.sim_charges(&id).await.len(), 1);
}

#[tokio::test]
async fn a_card_the_acquirer_cannot_process_fails_once_every_delivery_is_spent() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_processingError").await;
    let pi = app.wait_for_status(&id, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "processing_error");
    assert_eq!(pi["amountReceived"], 0);
    assert!(app.sim_charges(&id).await.is_empty());
    // Settled, not parked: nothing waits in the dead letters for an operator.
    let parked: Vec<_> = paystream_nats::dlq::list(&app.js, &app.topology)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.object_id.as_deref() == Some(id.as_str()))
        .collect();
    assert!(parked.is_empty(), "{parked:?}");
    // Not given up early: each of the 5 deliveries spent its 5 in-process attempts first.
    let requests = app.sim_requests().await;
    assert!(requests >= 25, "{requests}");
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE object_id = $1 AND action = 'payment_intent.payment_failed'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(failures, 1);
}
