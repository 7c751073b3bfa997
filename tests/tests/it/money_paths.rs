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
    let command = PaymentCommand::ConfirmV1 {
        payment_intent_id: id.clone(),
        merchant_id: app.merchant_id.clone(),
    };
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
