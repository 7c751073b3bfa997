//! Notifications from the acquirer: verified before anything is parsed, stored once, processed
//! through the state machines, never moving an object backwards, and unusable ones kept in the
//! dead letters.

use std::time::Duration;

use chrono::Utc;
use paystream_nats::dlq;
use paystream_shared::domain::provider_event::sign;
use paystream_shared::retry::RetrySchedule;
use paystream_tests::provider::notification;
use paystream_tests::{eventually, spawn_app, TestApp};
use paystream_workers::provider_events::{ProcessError, ProviderEventProcessor};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_refund(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(WAIT, &format!("refund {id} to be {status}"), || async {
        let r = app.get(&format!("/api/refunds/{id}")).await;
        (r.body["status"] == status).then_some(r.body)
    })
    .await
}

/// Waits until a stored notification has an outcome; returns it.
async fn wait_outcome(app: &TestApp, event_id: &str) -> String {
    eventually(WAIT, &format!("{event_id} to be processed"), || async {
        app.provider_event(event_id).await.and_then(|e| e.outcome)
    })
    .await
}

async fn count(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A refund of `amount` that the acquirer accepted but has not settled, with the simulator's
/// own notifications switched off so the test alone decides what paystream hears. Returns our
/// refund and the acquirer's view of it.
async fn unsettled_refund(app: &TestApp, pi: &str, amount: i64) -> (String, Value) {
    app.sim_faults(json!({"refundSettlementMs": 600_000, "notifications": {"dropRate": 1}}))
        .await;
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": amount}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let at_acquirer = eventually(WAIT, "the acquirer to hold the refund", || async {
        app.sim_refunds(&id).await.into_iter().next()
    })
    .await;
    assert_eq!(at_acquirer["status"], "pending");
    (id, at_acquirer)
}

#[tokio::test]
async fn signatures_are_checked_before_anything_is_parsed() {
    let app = spawn_app().await;
    let event = notification("refund.succeeded", json!({"id": "rf_1"}));
    let body = event.to_string().into_bytes();
    let secret = app
        .config
        .acquirer_webhook_secret
        .expose()
        .as_bytes()
        .to_vec();
    let now = Utc::now().timestamp();

    app.notify_raw(&body, None)
        .await
        .assert_error(400, "signature_missing");
    app.notify_raw(&body, Some(&sign(b"not the secret", now, &body)))
        .await
        .assert_error(400, "signature_invalid");
    app.notify_raw(&body, Some("t=abc,v1=00"))
        .await
        .assert_error(400, "signature_invalid");
    app.notify_at(&event, now - 6 * 60)
        .await
        .assert_error(400, "signature_timestamp_out_of_tolerance");
    // Garbage that is not even JSON is refused for its signature, not its syntax.
    app.notify_raw(b"{not json", Some(&sign(b"wrong", now, b"{not json")))
        .await
        .assert_error(400, "signature_invalid");
    // A signed body that is not an event is refused for what it is.
    let junk = br#"{"hello": "world"}"#;
    let r = app.notify_raw(junk, Some(&sign(&secret, now, junk))).await;
    r.assert_error(400, "parameter_invalid");
    let not_text = reqwest::header::HeaderValue::from_bytes(b"t=1,v1=\xff").unwrap();
    let r = app
        .raw(
            app.http
                .post(app.notify_url())
                .header("Acquirer-Signature", not_text)
                .body(body.clone()),
        )
        .await;
    r.assert_error(400, "signature_invalid");
    let huge = vec![b' '; 300 * 1024];
    let r = app
        .notify_raw(&huge, Some(&sign(&secret, now, &huge)))
        .await;
    r.assert_error(413, "body_too_large");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing refused is stored");

    // Four minutes ahead is inside the tolerance; no API key is needed, and none is looked at.
    let r = app.notify_at(&event, now + 4 * 60).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"received": true, "duplicate": false}));
    let id = event["id"].as_str().unwrap();
    let row = app.provider_event(id).await.expect("stored");
    assert_eq!(row.event_type, "refund.succeeded");
    assert_eq!(row.payload, event);
    assert!(row.processed_at.is_none());
    assert_eq!(
        app.outbox_subjects().await.last().map(String::as_str),
        Some("cmd.provider_event.process")
    );

    // The rest of /api is still behind the key; the docs list the route.
    app.request(reqwest::Method::GET, "/api/refunds", None, None, None)
        .await
        .assert_error(401, "unauthorized");
    let r = app
        .http
        .get(format!("{}/api/provider/webhooks", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let spec: Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented = &spec["paths"]["/provider/webhooks"]["post"];
    assert!(documented.is_object(), "{}", spec["paths"]);
    assert!(documented["security"].as_array().is_none_or(Vec::is_empty));
}

#[tokio::test]
async fn a_duplicate_event_changes_nothing() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(1000).await;
    let (refund, at_acquirer) = unsettled_refund(&app, &pi, 400).await;

    let mut settled = at_acquirer.clone();
    settled["status"] = json!("succeeded");
    let event = notification("refund.succeeded", settled);
    let first = app.notify(&event).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let body = wait_refund(&app, &refund, "succeeded").await;
    assert!(body["processedAt"].is_string());
    let id = event["id"].as_str().unwrap();
    assert_eq!(wait_outcome(&app, id).await, "applied");

    for _ in 0..2 {
        let again = app.notify(&event).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.body["duplicate"], true);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM provider_events WHERE id = $1",
            id
        )
        .await,
        1
    );
    assert_eq!(
        app.audit_actions(&refund)
            .await
            .into_iter()
            .filter(|(action, _)| action == "refund.succeeded")
            .collect::<Vec<_>>(),
        [("refund.succeeded".to_owned(), "acquirer".to_owned())]
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE subject = 'cmd.provider_event.process' AND payload->>'eventId' = $1",
            id
        )
        .await,
        1
    );
    let intent = app.get(&format!("/api/payment-intents/{pi}")).await.body;
    assert_eq!(intent["amountRefunded"], 400);

    // A redelivered command for a processed event is acked and does nothing; one for an
    // event that was never stored is unusable.
    let processor = ProviderEventProcessor::new(
        app.pool.clone(),
        RetrySchedule::new(Duration::from_millis(10), 5),
    );
    assert_eq!(processor.apply(id).await.unwrap(), None);
    assert!(matches!(
        processor.apply("aevt_never").await,
        Err(ProcessError::Unusable(_))
    ));
}

#[tokio::test]
async fn refund_succeeded_before_refund_pending_ends_succeeded() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(500).await;
    let (refund, at_acquirer) = unsettled_refund(&app, &pi, 500).await;

    let pending = notification("refund.pending", at_acquirer.clone());
    let mut settled = at_acquirer;
    settled["status"] = json!("succeeded");
    let succeeded = notification("refund.succeeded", settled);
    assert_eq!(app.notify(&succeeded).await.status, 200);
    wait_refund(&app, &refund, "succeeded").await;
    assert_eq!(app.notify(&pending).await.status, 200);
    assert_eq!(
        wait_outcome(&app, pending["id"].as_str().unwrap()).await,
        "ignored"
    );

    let r = app.get(&format!("/api/refunds/{refund}")).await;
    assert_eq!(r.body["status"], "succeeded");
    let intent = app.wait_for_status(&pi, &["refunded"], WAIT).await;
    assert_eq!(intent["amountRefunded"], 500);
    let actions = app.audit_actions(&refund).await;
    assert!(
        actions.contains(&("provider_event.ignored".to_owned(), "acquirer".to_owned())),
        "{actions:?}"
    );
    let ignored: Value = sqlx::query_scalar(
        "SELECT after FROM audit_log WHERE object_id = $1 AND action = 'provider_event.ignored'",
    )
    .bind(&refund)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ignored["providerEvent"]["id"], pending["id"]);
    assert!(ignored["reason"].as_str().unwrap().contains("succeeded"));
}

#[tokio::test]
async fn reordered_and_duplicated_notifications_settle_every_refund_exactly_once() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let intents: Vec<String> =
        futures::future::join_all([600, 900, 1200].map(|a| app.succeeded_intent(a))).await;
    let _r = app.start_refund_worker();
    app.sim_faults(json!({
        "refundSettlementMs": 40,
        "notifications": {"reorder": true, "duplicateRate": 0.5}
    }))
    .await;
    let mut refunds = Vec::new();
    for (pi, amounts) in intents.iter().zip([[100, 500], [450, 450], [1, 1199]]) {
        for amount in amounts {
            let r = app
                .post(
                    "/api/refunds",
                    json!({"paymentIntentId": pi, "amount": amount}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            refunds.push(r.body["id"].as_str().unwrap().to_owned());
        }
    }
    for id in &refunds {
        wait_refund(&app, id, "succeeded").await;
    }
    for (pi, total) in intents.iter().zip([600, 900, 1200]) {
        let intent = app.wait_for_status(pi, &["refunded"], WAIT).await;
        assert_eq!(intent["amountRefunded"], total, "{pi}");
        assert_eq!(app.acquirer_totals(pi).await, (total, total), "{pi}");
    }
    // Let the stragglers (duplicates, late `pending`s) in, then count.
    eventually(WAIT, "every notification to be processed", || async {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM provider_events WHERE processed_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_events")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (open == 0 && total == 12).then_some(())
    })
    .await;
    for id in &refunds {
        assert_eq!(
            count(
                &app,
                "SELECT count(*) FROM audit_log WHERE object_id = $1 AND action = 'refund.succeeded'",
                id
            )
            .await,
            1,
            "{id}"
        );
        assert_eq!(
            count(
                &app,
                "SELECT count(*) FROM events WHERE object_id = $1 AND type = 'refund.succeeded'",
                id
            )
            .await,
            1,
            "{id}"
        );
        // Duplicated, reordered settlements: one refund posting each.
        app.assert_posted_once(id).await;
    }
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM provider_events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| ["applied", "unchanged", "ignored"].contains(&o.as_str())),
        "{outcomes:?}"
    );
    // Reordering did happen: some `refund.pending` arrived after its `refund.succeeded`.
    assert!(outcomes.iter().any(|o| o == "ignored"), "{outcomes:?}");
}

#[tokio::test]
async fn a_malformed_but_signed_event_lands_in_the_dead_letters() {
    let app = spawn_app().await;
    let _r = app.start_refund_worker();
    let unknown = notification(
        "refund.succeeded",
        json!({"id": "rf_1", "payment": "ch_1", "reference": "re_nobody", "amount": 5,
               "currency": "usd", "status": "succeeded"}),
    );
    let bad_data = notification("payment.succeeded", json!({"id": "ch_1"}));
    // `dispute.updated` is a type paystream sends merchants, never one it takes from the acquirer.
    let unsupported = notification("dispute.updated", json!({"id": "dp_1"}));
    for event in [&unknown, &bad_data, &unsupported] {
        let r = app.notify(event).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let letters = eventually(WAIT, "three dead letters", || async {
        let letters = dlq::list(&app.js, &app.topology).await.unwrap();
        (letters.len() == 3).then_some(letters)
    })
    .await;
    for (event, needle) in [
        (&unknown, "no refund re_nobody"),
        (&bad_data, "missing field"),
        (&unsupported, "dispute.updated"),
    ] {
        let id = event["id"].as_str().unwrap();
        let letter = letters
            .iter()
            .find(|l| l.object_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters:?}"));
        assert_eq!(letter.origin_subject, "cmd.provider_event.process");
        assert!(letter.last_error.contains(needle), "{}", letter.last_error);
        assert_eq!(letter.deliveries, 1, "dead-lettered at once, not retried");
        let row = app.provider_event(id).await.unwrap();
        assert_eq!(row.outcome.as_deref(), Some("dead_lettered"));
        assert!(row.processed_at.is_none());
        assert!(row.error.unwrap().contains(needle));
    }
}

#[tokio::test]
async fn a_late_payment_succeeded_settles_a_processing_intent() {
    let app = spawn_app().await;
    // Every acquirer answer is lost: the confirm worker never hears how its charge went.
    app.sim_faults(json!({"timeoutRate": 1})).await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.create_and_confirm("pm_card_visa").await;
    let intent = app.wait_for_status(&pi, &["succeeded"], WAIT).await;
    assert_eq!(intent["amountReceived"], 1099);
    assert_eq!(app.sim_charges(&pi).await.len(), 1, "exactly one charge");
    // The notification's capture posted the charge.
    app.assert_posted_once(&pi).await;
    let actions = app.audit_actions(&pi).await;
    assert!(
        actions.contains(&("payment_intent.succeeded".to_owned(), "acquirer".to_owned())),
        "{actions:?}"
    );

    // The other late outcomes land the same way.
    let declined = app.create_and_confirm("pm_card_chargeDeclined").await;
    let challenged = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    let manual = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual",
                              "confirm": true}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = app.wait_for_status(&declined, &["failed"], WAIT).await;
    assert_eq!(failed["lastPaymentError"]["declineCode"], "generic_decline");
    let action = app
        .wait_for_status(&challenged, &["requires_action"], WAIT)
        .await;
    assert!(action["nextAction"]["redirectToUrl"]["url"]
        .as_str()
        .unwrap()
        .contains("/sim/3ds/"));
    let held = app
        .wait_for_status(&manual, &["requires_capture"], WAIT)
        .await;
    assert_eq!(held["amountCapturable"], 1099);
    assert!(held["authorizationExpiresAt"].is_string());
    app.sim_faults(json!({})).await;
}

#[tokio::test]
async fn a_refund_the_acquirer_fails_later_ends_failed_and_frees_the_amount() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(800).await;
    app.sim_faults(json!({"refundSettlementMs": 20, "refundFailureRate": 1}))
        .await;
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": 800}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let failed = wait_refund(&app, &id, "failed").await;
    assert_eq!(failed["failureReason"], "refund_declined");
    let intent = app.get(&format!("/api/payment-intents/{pi}")).await.body;
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["amountRefunded"], 0);
    assert_eq!(app.acquirer_totals(&pi).await, (800, 0));
    // The amount can be refunded again.
    app.sim_faults(json!({})).await;
    let again = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": 800}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    wait_refund(&app, again.body["id"].as_str().unwrap(), "succeeded").await;
}

#[tokio::test]
async fn a_completed_challenge_moves_through_processing_and_stale_news_is_ignored() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    app.wait_for_status(&pi, &["requires_action"], WAIT).await;
    let charge = app.sim_charges(&pi).await.remove(0);
    let charge_id = charge["id"].as_str().unwrap();
    let charge_body = |status: &str| {
        json!({"id": charge_id, "reference": pi, "amount": 1099, "currency": "usd",
               "status": status, "amountCaptured": 1099, "amountRefunded": 0,
               "redirectUrl": "https://acquirer.test/3ds"})
    };
    let stale = {
        let mut event = notification("payment.requires_action", charge_body("requires_action"));
        event["createdAt"] = json!("2020-01-01T00:00:00.000Z");
        event
    };
    let done = notification("payment.succeeded", charge_body("captured"));
    assert_eq!(app.notify(&done).await.status, 200);
    let intent = app.wait_for_status(&pi, &["succeeded"], WAIT).await;
    assert_eq!(intent["amountReceived"], 1099);
    assert!(intent["nextAction"].is_null());
    assert_eq!(app.notify(&stale).await.status, 200);
    assert_eq!(
        wait_outcome(&app, stale["id"].as_str().unwrap()).await,
        "ignored"
    );
    let actions: Vec<String> = app
        .audit_actions(&pi)
        .await
        .into_iter()
        .map(|(action, _)| action)
        .collect();
    let tail = &actions[actions.len() - 3..];
    assert_eq!(
        tail,
        [
            "payment_intent.processing",
            "payment_intent.succeeded",
            "provider_event.ignored"
        ]
    );
    let intent = app.get(&format!("/api/payment-intents/{pi}")).await.body;
    assert_eq!(intent["status"], "succeeded");

    // The acquirer's numbers must match ours; a notification that disagrees is an operator's
    // problem, not something to apply.
    let mut wrong = charge_body("captured");
    wrong["amount"] = json!(5);
    let wrong = notification("payment.succeeded", wrong);
    assert_eq!(app.notify(&wrong).await.status, 200);
    let letters = eventually(WAIT, "a dead letter", || async {
        let letters = dlq::list(&app.js, &app.topology).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert!(
        letters[0].last_error.contains("1099"),
        "{}",
        letters[0].last_error
    );
}

#[tokio::test]
async fn what_we_already_know_is_unchanged_and_contradictions_are_dead_lettered() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let pi = app.succeeded_intent(700).await;
    let charge = app.sim_charges(&pi).await.remove(0);
    let charge_id = charge["id"].as_str().unwrap().to_owned();
    // The refund worker cannot reach the acquirer, so the refund stays pending without an
    // acquirer id until a notification supplies one.
    app.sim_faults(json!({"errorRate": 1})).await;
    let _r = app.start_refund_worker();
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": 200}),
        )
        .await;
    let refund = r.body["id"].as_str().unwrap().to_owned();
    let data = |id: &str| {
        json!({"id": id, "payment": charge_id, "reference": refund, "amount": 200,
               "currency": "usd", "status": "pending"})
    };
    let pending = notification("refund.pending", data("rf_first"));
    assert_eq!(app.notify(&pending).await.status, 200);
    assert_eq!(
        wait_outcome(&app, pending["id"].as_str().unwrap()).await,
        "applied"
    );
    let known: Option<String> =
        sqlx::query_scalar("SELECT acquirer_refund_id FROM refunds WHERE id = $1")
            .bind(&refund)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(known.as_deref(), Some("rf_first"));
    let again = notification("refund.pending", data("rf_first"));
    assert_eq!(app.notify(&again).await.status, 200);
    assert_eq!(
        wait_outcome(&app, again["id"].as_str().unwrap()).await,
        "unchanged"
    );

    // A settlement of another acquirer refund under our id, and a success for another charge,
    // contradict what we hold.
    let other_refund = notification("refund.succeeded", data("rf_second"));
    let mut other = charge.clone();
    other["id"] = json!("ch_other");
    other["amountCaptured"] = json!(700);
    let other_charge = notification("payment.succeeded", other);
    let mut same = charge.clone();
    same["amountCaptured"] = json!(700);
    let same_charge = notification("payment.succeeded", same);
    for event in [&other_refund, &other_charge, &same_charge] {
        assert_eq!(app.notify(event).await.status, 200);
    }
    assert_eq!(
        wait_outcome(&app, same_charge["id"].as_str().unwrap()).await,
        "unchanged"
    );
    let letters = eventually(WAIT, "two dead letters", || async {
        let letters: Vec<_> = dlq::list(&app.js, &app.topology)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.origin_subject == "cmd.provider_event.process")
            .collect();
        (letters.len() == 2).then_some(letters)
    })
    .await;
    let reason = |id: &Value| {
        letters
            .iter()
            .find(|l| l.object_id.as_deref() == id.as_str())
            .map(|l| l.last_error.clone())
            .unwrap()
    };
    assert!(reason(&other_refund["id"]).contains("rf_first"));
    assert!(reason(&other_charge["id"]).contains(&charge_id));
    let r = app.get(&format!("/api/refunds/{refund}")).await;
    assert_eq!(r.body["status"], "pending");
    app.sim_faults(json!({})).await;
}
