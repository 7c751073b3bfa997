//! The workers' money paths under the interleavings that lose or misdirect money: a worker
//! whose read went stale, a capture whose command was dead-lettered, a 3-D Secure outcome whose
//! notification was dropped, a hold never released, a charge on an intent that says it failed.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::commands::PaymentCommand;
use paystream_shared::retry::RetrySchedule;
use paystream_tests::{eventually, spawn_app, TestApp};
use paystream_workers::acquirer::{Acquirer, HttpAcquirer};
use paystream_workers::confirm::ConfirmWorker;
use paystream_workers::reconcile;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn acquirer(app: &TestApp) -> Arc<dyn Acquirer> {
    Arc::new(HttpAcquirer::new(&app.sim_url, Duration::from_millis(500)).unwrap())
}

fn first_delivery(subject: &str) -> DeliveryInfo {
    DeliveryInfo {
        subject: subject.to_owned(),
        delivered: 1,
        stream_sequence: 1,
        message_id: None,
        last: false,
    }
}

async fn manual_intent(app: &TestApp, amount: i64, confirm: bool) -> String {
    let pi = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual",
                              "amount": amount, "confirm": confirm}),
        )
        .await;
    pi["id"].as_str().unwrap().to_owned()
}

/// Backdates an intent past reconciliation's stuck threshold, as if it had sat for ten minutes.
async fn age(app: &TestApp, id: &str) {
    sqlx::query(
        "UPDATE payment_intents SET updated_at = now() - interval '10 minutes' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn reconcile_now(app: &TestApp) -> reconcile::Report {
    reconcile::run_once(&app.pool, &acquirer(app), TimeDelta::minutes(5))
        .await
        .unwrap()
}

/// The charges the acquirer holds for an intent, as its API shows them (with amounts).
async fn acquirer_charges(app: &TestApp, id: &str) -> Vec<Value> {
    let body: Value = app
        .http
        .get(format!("{}/v1/payments?reference={id}", app.sim_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"].as_array().cloned().unwrap_or_default()
}

/// What each captured charge of an intent captured.
async fn captured(app: &TestApp, id: &str) -> Vec<i64> {
    acquirer_charges(app, id)
        .await
        .iter()
        .filter(|c| c["status"] == "captured" || c["status"] == "refunded")
        .map(|c| c["amountCaptured"].as_i64().unwrap_or(0))
        .collect()
}

/// Defect: the confirm worker's write was guarded on `status = 'processing'` only, and a manual
/// capture re-enters `processing`. Here the authorize call times out, the acquirer's notification
/// moves the intent to `requires_capture`, the merchant captures, and only then does the
/// worker's in-process retry learn the authorization: it must not write `requires_capture` back
/// over the capture in flight.
#[tokio::test]
async fn a_retrying_authorize_never_writes_over_a_capture_in_flight() {
    let app = spawn_app().await;
    let _notifications = app.start_refund_worker();
    let id = manual_intent(&app, 10000, false).await;
    app.sim_faults(json!({"timeoutRate": 1})).await;
    let r = app
        .post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);

    // The worker's step, driven directly so the interleaving is exact: its first attempt hangs,
    // and its retries are a second apart.
    let worker = ConfirmWorker::new(
        app.pool.clone(),
        acquirer(&app),
        RetrySchedule::new(Duration::from_millis(1000), 5),
    );
    // The command as the API queued it, with the version it was issued for.
    let queued: Value = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE subject = 'cmd.payment.confirm' AND payload->>'paymentIntentId' = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let command: PaymentCommand = serde_json::from_value(queued).unwrap();
    assert!(matches!(
        command,
        PaymentCommand::ConfirmV1 {
            intent_version: Some(_),
            ..
        }
    ));
    let step = tokio::spawn(async move {
        worker
            .handle(command, &first_delivery("cmd.payment.confirm"))
            .await
    });
    // The lost answer's notification authorizes the intent meanwhile.
    app.wait_for_status(&id, &["requires_capture"], Duration::from_secs(10))
        .await;
    app.sim_faults(json!({})).await;
    let r = app
        .post(&format!("/api/payment-intents/{id}/capture"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["status"], "processing");
    assert!(!step.is_finished(), "the worker must still be retrying");

    let outcome = step.await.unwrap();
    assert!(
        matches!(outcome, Outcome::Ack),
        "a stale outcome is acked: {outcome:?}"
    );
    let pi = app.get(&format!("/api/payment-intents/{id}")).await.body;
    assert_eq!(pi["status"], "processing", "the capture is still in flight");

    let _worker = app.start_confirm_worker();
    let pi = app
        .wait_for_status(
            &id,
            &["succeeded", "requires_capture"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amountReceived"], 10000);
    let charges = app.sim_charges(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(captured(&app, &id).await, vec![10000]);
}

/// Defect: a partial capture's amount lived only in its command; once that command was
/// dead-lettered, reconciliation captured the whole authorization.
#[tokio::test]
async fn a_dead_lettered_partial_capture_is_finished_for_the_amount_asked() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = manual_intent(&app, 10000, true).await;
    app.wait_for_status(&id, &["requires_capture"], Duration::from_secs(20))
        .await;

    // An acquirer outage long enough to spend every delivery of the capture.
    app.sim_faults(json!({"errorRate": 1})).await;
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/capture"),
            json!({"amountToCapture": 6000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    eventually(
        Duration::from_secs(30),
        "the capture to be dead-lettered",
        || async {
            paystream_nats::dlq::list(&app.js, &app.topology)
                .await
                .unwrap()
                .into_iter()
                .find(|d| {
                    d.object_id.as_deref() == Some(id.as_str())
                        && d.origin_subject == "cmd.payment.capture"
                })
        },
    )
    .await;
    app.sim_faults(json!({})).await;

    age(&app, &id).await;
    let report = reconcile_now(&app).await;
    assert_eq!(report.commands_requeued, 1, "{report:?}");
    let pi = app
        .wait_for_status(&id, &["succeeded"], Duration::from_secs(20))
        .await;
    assert_eq!(pi["amountReceived"], 6000, "{pi}");
    assert_eq!(captured(&app, &id).await, vec![6000]);
}

/// Completes the 3-D Secure challenge of `charge` at the acquirer, as the cardholder would.
async fn complete_challenge(app: &TestApp, charge: &str, result: &str) {
    // The browser would follow the 303 to the shop; the test only wants the acquirer's answer.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser
        .post(format!("{}/sim/3ds/{charge}", app.sim_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("result={result}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
}

/// A 3-D Secure payment the cardholder completed while the acquirer's notification of it was
/// lost: paystream still says `requires_action`.
async fn paid_challenge_nobody_heard_of(app: &TestApp) -> String {
    app.sim_faults(json!({})).await;
    let id = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    app.wait_for_status(&id, &["requires_action"], Duration::from_secs(20))
        .await;
    app.sim_faults(json!({"notifications": {"dropRate": 1}}))
        .await;
    let charge = acquirer_charges(app, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    complete_challenge(app, &charge, "succeeded").await;
    assert_eq!(captured(app, &id).await, vec![1099], "the money was taken");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pi = app.get(&format!("/api/payment-intents/{id}")).await.body;
    assert_eq!(
        pi["status"], "requires_action",
        "the notification was dropped"
    );
    age(app, &id).await;
    id
}

/// Defect: reconciliation looked only at `processing`, and abandonment canceled an intent
/// left in `requires_action` without asking the acquirer, although the cardholder had paid.
#[tokio::test]
async fn a_3ds_payment_whose_notification_was_lost_is_reconciled_not_abandoned() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let _notifications = app.start_refund_worker();

    let reconciled = paid_challenge_nobody_heard_of(&app).await;
    let report = reconcile_now(&app).await;
    assert_eq!(report.intents_corrected, 1, "{report:?}");
    let pi = app
        .get(&format!("/api/payment-intents/{reconciled}"))
        .await
        .body;
    assert_eq!(
        (&pi["status"], &pi["amountReceived"], &pi["nextAction"]),
        (&json!("succeeded"), &json!(1099), &Value::Null),
        "{pi}"
    );
    // Reconciliation's capture posted the charge.
    app.assert_posted_once(&reconciled).await;

    let abandoned = paid_challenge_nobody_heard_of(&app).await;
    let canceled = paystream_workers::deadlines::cancel_abandoned(
        &app.pool,
        &acquirer(&app),
        paystream_shared::domain::now(),
        TimeDelta::minutes(5),
        100,
    )
    .await
    .unwrap();
    assert_eq!(canceled, 0, "a paid intent is not abandoned");
    let pi = app
        .get(&format!("/api/payment-intents/{abandoned}"))
        .await
        .body;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(captured(&app, &abandoned).await, vec![1099]);
}

/// Defect: an authentic notification that a canceled intent was charged after all was only
/// recorded as ignored, and the customer paid for nothing. The money goes back, once.
#[tokio::test]
async fn an_orphan_charge_on_a_canceled_intent_is_refunded_once() {
    use paystream_tests::provider::notification;
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let _notifications = app.start_refund_worker();
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    let amount = pi["amount"].as_i64().unwrap();
    let r = app
        .post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The acquirer charged it anyway, and says so.
    let charge: Value = app
        .http
        .post(format!("{}/v1/payments", app.sim_url))
        .header("Idempotency-Key", format!("{id}:authorize"))
        .json(
            &json!({"reference": id, "amount": amount, "currency": "usd",
                      "paymentMethod": "pm_card_visa", "capture": true}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let charge_id = charge["id"].as_str().unwrap().to_owned();
    // Twice, as two notifications: the money still goes back once.
    for _ in 0..2 {
        let r = app
            .notify(&notification("payment.succeeded", charge.clone()))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    eventually(
        Duration::from_secs(20),
        "the orphan charge to be refunded",
        || async { (app.acquirer_totals(&id).await == (amount, amount)).then_some(()) },
    )
    .await;
    let letter = eventually(
        Duration::from_secs(20),
        "the operator to be told",
        || async {
            paystream_nats::dlq::list(&app.js, &app.topology)
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.object_id.as_deref() == Some(id.as_str()))
        },
    )
    .await;
    assert!(letter.last_error.contains("orphan charge"), "{letter:?}");
    assert!(letter.last_error.contains(&charge_id), "{letter:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refunds = app
        .sim_refunds(&paystream_workers::confirm::orphan_refund_reference(
            &charge_id,
        ))
        .await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(app.acquirer_totals(&id).await, (amount, amount));
    let pi = app.get(&format!("/api/payment-intents/{id}")).await.body;
    assert_eq!(pi["status"], "canceled");
    let actions = app.audit_actions(&id).await;
    assert!(
        actions
            .iter()
            .any(|(a, _)| a == "payment_intent.orphan_charge_returned"),
        "{actions:?}"
    );
}

/// Defect: a 4xx from the acquirer that is not a documented decline (the acquirer could not
/// read our request) became the customer's decline. It is an integration error: the intent
/// stays `processing` for reconciliation and the command goes to the operator.
#[tokio::test]
async fn an_acquirer_4xx_that_is_not_a_decline_does_not_fail_the_payment() {
    let app = spawn_app().await;
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    // A payment method the acquirer does not know: it answers 400 `payment_method_unknown`.
    sqlx::query("UPDATE payment_intents SET status = 'processing', payment_method_id = 'pm_card_unheardof' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let worker = ConfirmWorker::new(
        app.pool.clone(),
        acquirer(&app),
        RetrySchedule::new(Duration::from_millis(10), 2),
    );
    let outcome = worker
        .handle(
            PaymentCommand::ConfirmV1 {
                payment_intent_id: id.clone(),
                merchant_id: app.merchant_id.clone(),
                intent_version: None,
            },
            &first_delivery("cmd.payment.confirm"),
        )
        .await;
    let Outcome::DeadLetter(reason) = outcome else {
        panic!("an integration error goes to the operator: {outcome:?}");
    };
    assert!(reason.contains("payment_method_unknown"), "{reason}");
    let pi = app.get(&format!("/api/payment-intents/{id}")).await.body;
    assert_eq!(pi["status"], "processing", "{pi}");
    assert_eq!(pi["lastPaymentError"], Value::Null);
}

/// Defect: a dead-lettered void was never retried, and the customer's hold was never released.
#[tokio::test]
async fn a_dead_lettered_void_is_retried_until_the_hold_is_released() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = manual_intent(&app, 5000, true).await;
    app.wait_for_status(&id, &["requires_capture"], Duration::from_secs(20))
        .await;
    app.sim_faults(json!({"errorRate": 1})).await;
    let r = app
        .post(&format!("/api/payment-intents/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    eventually(
        Duration::from_secs(30),
        "the void to be dead-lettered",
        || async {
            paystream_nats::dlq::list(&app.js, &app.topology)
                .await
                .unwrap()
                .into_iter()
                .find(|d| {
                    d.object_id.as_deref() == Some(id.as_str())
                        && d.origin_subject == "cmd.payment.cancel"
                })
        },
    )
    .await;
    app.sim_faults(json!({})).await;
    assert_eq!(acquirer_charges(&app, &id).await[0]["status"], "authorized");

    age(&app, &id).await;
    let report = reconcile_now(&app).await;
    assert_eq!(
        (report.voids_checked, report.commands_requeued),
        (1, 1),
        "{report:?}"
    );
    eventually(
        Duration::from_secs(20),
        "the hold to be released",
        || async { (acquirer_charges(&app, &id).await[0]["status"] == "voided").then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the release to be recorded",
        || async {
            let confirmed: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT void_confirmed_at FROM payment_intents WHERE id = $1")
                    .bind(&id)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            confirmed
        },
    )
    .await;
    age(&app, &id).await;
    assert_eq!(
        reconcile_now(&app).await.voids_checked,
        0,
        "nothing left to ask"
    );
}
