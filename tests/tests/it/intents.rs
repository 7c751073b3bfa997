use std::collections::HashSet;

use paystream_shared::store::merchants::Role;
use paystream_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn create_then_get_returns_the_contract_object() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"description": "order 42", "metadata": {"order": "42"}, "captureMethod": "manual"}))
        .await;
    let id = pi["id"].as_str().unwrap();
    assert!(id.starts_with("pi_"));
    assert_eq!(pi["amount"], 1099);
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["status"], "requires_payment_method");
    assert_eq!(pi["amountCapturable"], 0);
    assert_eq!(pi["amountReceived"], 0);
    assert_eq!(pi["amountRefunded"], 0);
    assert_eq!(pi["customerId"], "cus_1");
    assert_eq!(pi["captureMethod"], "manual");
    assert_eq!(pi["metadata"]["order"], "42");
    assert!(pi["createdAt"].as_str().unwrap().ends_with('Z'));

    let got = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, pi);

    // With a payment method it starts ready to confirm.
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa", "currency": "JPY", "amount": 500}))
        .await;
    assert_eq!(pi["status"], "requires_confirmation");
    assert_eq!(pi["currency"], "jpy");
    assert_eq!(pi["paymentMethodId"], "pm_card_visa");

    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE subject = 'evt.payment_intent.created'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(created, 2, "each create writes its event to the outbox");
}

#[tokio::test]
async fn another_merchants_intent_is_a_404_everywhere() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let id = pi["id"].as_str().unwrap();
    let other = app.other_merchant("globex", Role::Admin).await;

    app.get_as(&other, &format!("/api/payment-intents/{id}"))
        .await
        .assert_error(404, "resource_missing");
    for action in ["confirm", "cancel", "capture"] {
        let r = app
            .request(
                reqwest::Method::POST,
                &format!("/api/payment-intents/{id}/{action}"),
                Some(&other),
                None,
                Some(json!({})),
            )
            .await;
        r.assert_error(404, "resource_missing");
    }
    let list = app.get_as(&other, "/api/payment-intents").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 0);
    app.get_as(&other, &format!("/api/payment-intents?startingAfter={id}"))
        .await
        .assert_error(400, "resource_missing");
    let audit = app
        .get_as(&other, &format!("/api/audit-log?objectId={id}"))
        .await;
    assert_eq!(audit.body["data"].as_array().unwrap().len(), 0);
    // The owner still sees it unchanged.
    assert_eq!(
        app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
        "requires_confirmation"
    );
    app.get("/api/payment-intents/pi_doesnotexist")
        .await
        .assert_error(404, "resource_missing");
    app.get("/api/payment-intents/not-an-id")
        .await
        .assert_error(404, "resource_missing");
}

#[tokio::test]
async fn list_is_newest_first_with_cursor_and_filters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let customer = if i % 2 == 0 { "cus_even" } else { "cus_odd" };
        ids.push(
            app.create_intent(json!({"customerId": customer, "amount": 100 + i}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.reverse(); // newest first

    let page1 = app.get("/api/payment-intents?limit=2").await;
    assert_eq!(page1.status, 200);
    let got: Vec<_> = page1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids[..2]);
    assert_eq!(page1.body["hasMore"], true);

    let page2 = app
        .get(&format!(
            "/api/payment-intents?limit=2&startingAfter={}",
            ids[1]
        ))
        .await;
    let got: Vec<_> = page2.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids[2..4]);
    let page3 = app
        .get(&format!(
            "/api/payment-intents?limit=2&startingAfter={}",
            ids[3]
        ))
        .await;
    assert_eq!(page3.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3.body["hasMore"], false);

    let even = app.get("/api/payment-intents?customerId=cus_even").await;
    assert_eq!(even.body["data"].as_array().unwrap().len(), 3);
    let all = app.get("/api/payment-intents").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 5);

    app.post(
        &format!("/api/payment-intents/{}/cancel", ids[0]),
        json!({}),
    )
    .await;
    let canceled = app.get("/api/payment-intents?status=canceled").await;
    assert_eq!(canceled.body["data"][0]["id"], ids[0].as_str());
    assert_eq!(canceled.body["data"].as_array().unwrap().len(), 1);

    app.get("/api/payment-intents?status=bogus")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/payment-intents?limit=0")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/payment-intents?limit=101")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/payment-intents?limit=abc")
        .await
        .assert_error(400, "parameter_invalid");
}

#[tokio::test]
async fn confirm_moves_to_processing_and_queues_the_command_in_the_same_transaction() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let id = pi["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/confirm"),
            json!({"currency": "usd"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "processing");

    let commands: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE subject = 'cmd.payment.confirm'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        commands,
        vec![
            json!({"type": "payment.confirm.v1", "paymentIntentId": id, "merchantId": app.merchant_id,
                   "intentVersion": 1})
        ]
    );
    assert!(app
        .outbox_subjects()
        .await
        .contains(&"evt.payment_intent.processing".to_owned()));

    // Confirming again is a state conflict, not a silent no-op.
    app.post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
        .await
        .assert_error(409, "invalid_state_transition");
    // And cancel of a processing intent is refused by the state machine.
    app.post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await
        .assert_error(409, "invalid_state_transition");
    assert_eq!(
        app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
        "processing"
    );
}

#[tokio::test]
async fn confirm_validates_currency_payment_method_and_return_url() {
    let app = spawn_app().await;
    let bare = app.create_intent(json!({})).await;
    let id = bare["id"].as_str().unwrap();
    app.post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
        .await
        .assert_error(400, "parameter_missing");
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/confirm"),
            json!({"paymentMethodId": "pm_card_visa", "currency": "eur"}),
        )
        .await;
    r.assert_error(400, "currency_mismatch");
    assert_eq!(r.error_param(), "currency");
    app.post(
        &format!("/api/payment-intents/{id}/confirm"),
        json!({"currency": "zzz"}),
    )
    .await
    .assert_error(400, "currency_invalid");
    app.post(
        &format!("/api/payment-intents/{id}/confirm"),
        json!({"paymentMethodId": "pm_nope"}),
    )
    .await
    .assert_error(400, "resource_missing");
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/confirm"),
            json!({"paymentMethodId": "pm_card_threeDSecureRequired"}),
        )
        .await;
    r.assert_error(400, "parameter_missing");
    assert_eq!(r.error_param(), "returnUrl");
    assert_eq!(
        app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
        "requires_payment_method",
        "failed confirms change nothing"
    );

    // Attaching the method at confirm walks requires_payment_method -> requires_confirmation -> processing.
    let r = app
        .post(&format!("/api/payment-intents/{id}/confirm"), json!({"paymentMethodId": "pm_card_threeDSecureRequired", "returnUrl": "https://shop.example/back"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["paymentMethodId"], "pm_card_threeDSecureRequired");
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT after->>'status' FROM audit_log WHERE object_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "requires_payment_method",
            "requires_confirmation",
            "processing"
        ]
    );
}

#[tokio::test]
async fn create_with_confirm_true_is_confirmed_at_once() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa", "confirm": true}))
        .await;
    assert_eq!(pi["status"], "processing");
    let subjects = app.outbox_subjects().await;
    assert!(
        subjects.contains(&"cmd.payment.confirm".to_owned()),
        "{subjects:?}"
    );
    let r = app
        .post(
            "/api/payment-intents",
            json!({"amount": 5, "currency": "usd", "customerId": "c", "confirm": true}),
        )
        .await;
    r.assert_error(400, "parameter_missing");
}

#[tokio::test]
async fn concurrent_confirms_give_one_202_and_one_command() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let path = format!(
        "/api/payment-intents/{}/confirm",
        pi["id"].as_str().unwrap()
    );
    let replies = futures::future::join_all((0..10).map(|_| app.post(&path, json!({})))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    for r in replies.iter().filter(|r| r.status == 409) {
        assert_eq!(r.error_code(), "invalid_state_transition");
    }
    let commands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'cmd.payment.confirm'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(commands, 1);
}

#[tokio::test]
async fn cancel_is_final_and_validates_its_reason() {
    let app = spawn_app().await;
    let pi = app.create_intent(json!({})).await;
    let id = pi["id"].as_str().unwrap();
    app.post(
        &format!("/api/payment-intents/{id}/cancel"),
        json!({"cancellationReason": "bored"}),
    )
    .await
    .assert_error(400, "parameter_invalid");
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/cancel"),
            json!({"cancellationReason": "duplicate"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "canceled");
    assert_eq!(r.body["cancellationReason"], "duplicate");
    assert!(r.body["canceledAt"].is_string());
    app.post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await
        .assert_error(409, "invalid_state_transition");
    app.post(
        &format!("/api/payment-intents/{id}/confirm"),
        json!({"paymentMethodId": "pm_card_visa"}),
    )
    .await
    .assert_error(409, "invalid_state_transition");
    assert!(app
        .outbox_subjects()
        .await
        .contains(&"evt.payment_intent.canceled".to_owned()));
}

#[tokio::test]
async fn capture_only_applies_to_authorized_intents() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual"}))
        .await;
    let id = pi["id"].as_str().unwrap();
    app.post(&format!("/api/payment-intents/{id}/capture"), json!({}))
        .await
        .assert_error(409, "invalid_state_transition");

    // Put it where the confirm worker would leave a manual-capture intent.
    sqlx::query("UPDATE payment_intents SET status = 'requires_capture', amount_capturable = amount WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/capture"),
            json!({"amountToCapture": 5000}),
        )
        .await;
    r.assert_error(400, "amount_too_large");
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/capture"),
            json!({"amountToCapture": 1000}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "processing");
    let cmd: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE subject = 'cmd.payment.capture'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(cmd["amountToCapture"], 1000);

    // Cancel of an authorization queues a void.
    let pi2 = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual"}))
        .await;
    let id2 = pi2["id"].as_str().unwrap();
    sqlx::query("UPDATE payment_intents SET status = 'requires_capture', amount_capturable = amount, acquirer_charge_id = 'ch_authorized' WHERE id = $1")
        .bind(id2)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post(&format!("/api/payment-intents/{id2}/cancel"), json!({}))
        .await;
    assert_eq!(r.body["status"], "canceled");
    assert_eq!(r.body["amountCapturable"], 0);
    let voids: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'paymentIntentId' FROM outbox WHERE subject = 'cmd.payment.cancel'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(voids, vec![id2.to_owned()]);
    let uniq: HashSet<_> = app.outbox_subjects().await.into_iter().collect();
    assert!(uniq.contains("evt.payment_intent.canceled"));
}
