//! The payment intents' deadlines, kept by the scheduler: an uncaptured authorization is voided
//! when it expires (once, at the acquirer too, and never after a capture), merchants hear
//! about it a day before, and intents nobody paid are canceled as abandoned.

use std::time::Duration;

use chrono::TimeDelta;
use paystream_shared::domain::now;
use paystream_tests::{eventually, spawn_app, TestApp};
use paystream_workers::deadlines::{self, BATCH, EXPIRING_NOTICE};
use paystream_workers::scheduler;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A manual-capture intent the confirm worker authorized (`requires_capture`, with a charge
/// `authorized` at the simulator). Needs a confirm worker running.
async fn authorized(app: &TestApp) -> String {
    let pi = app
        .create_intent(
            json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual", "confirm": true}),
        )
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    let pi = app.wait_for_status(&id, &["requires_capture"], WAIT).await;
    assert!(pi["authorizationExpiresAt"].is_string(), "{pi}");
    id
}

/// Moves an intent's authorization expiry to `offset` from now (negative: already expired).
async fn expire_in(app: &TestApp, id: &str, offset: &str) {
    sqlx::query(
        "UPDATE payment_intents SET authorization_expires_at = now() + $2::interval WHERE id = $1",
    )
    .bind(id)
    .bind(offset)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Makes an intent look created, and last changed, `age` ago.
async fn age(app: &TestApp, id: &str, age: &str) {
    sqlx::query(
        "UPDATE payment_intents SET created_at = now() - $2::interval, updated_at = now() - $2::interval WHERE id = $1",
    )
    .bind(id)
    .bind(age)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn expire_now(app: &TestApp) -> usize {
    deadlines::expire_authorizations(&app.pool, now(), BATCH)
        .await
        .unwrap()
}

async fn announce_now(app: &TestApp) -> usize {
    deadlines::announce_expiring_authorizations(&app.pool, now(), EXPIRING_NOTICE, BATCH)
        .await
        .unwrap()
}

async fn abandon_now(app: &TestApp, after: TimeDelta) -> usize {
    let acquirer: std::sync::Arc<dyn paystream_workers::acquirer::Acquirer> = std::sync::Arc::new(
        paystream_workers::acquirer::HttpAcquirer::new(
            &app.sim_url,
            std::time::Duration::from_secs(2),
        )
        .unwrap(),
    );
    deadlines::cancel_abandoned(&app.pool, &acquirer, now(), after, BATCH)
        .await
        .unwrap()
}

async fn intent(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// How many events of `event_type` were recorded for the intent.
async fn events(app: &TestApp, id: &str, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE object_id = $1 AND type = $2")
        .bind(id)
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// How many outbox rows on `subject` concern the intent (commands name it in
/// `paymentIntentId`, events in `data.id`).
async fn queued(app: &TestApp, id: &str, subject: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE subject = $2
           AND (payload->>'paymentIntentId' = $1 OR payload->'data'->>'id' = $1)",
    )
    .bind(id)
    .bind(subject)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// The audit entries of the intent for `action`, as (actor, after).
async fn audited(app: &TestApp, id: &str, action: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT actor, after FROM audit_log WHERE object_id = $1 AND action = $2")
        .bind(id)
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// The one charge the simulator holds for the intent, once it has `status`.
async fn sim_charge_reaches(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(
        WAIT,
        &format!("the charge of {id} to be {status}"),
        || async {
            let charges = app.sim_charges(id).await;
            if charges.is_empty() {
                return None;
            }
            assert_eq!(charges.len(), 1, "one charge per intent: {charges:?}");
            (charges[0]["status"] == status).then(|| charges[0].clone())
        },
    )
    .await
}

#[tokio::test]
async fn an_expired_authorization_is_voided_once_however_often_the_step_runs() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = authorized(&app).await;
    assert_eq!(expire_now(&app).await, 0, "seven days are not up yet");

    expire_in(&app, &id, "-1 minute").await;
    // Two runs at once (leaders overlapping in a hand-over), then a retry.
    let (a, b) = tokio::join!(
        deadlines::expire_authorizations(&app.pool, now(), BATCH),
        deadlines::expire_authorizations(&app.pool, now(), BATCH)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    assert_eq!(expire_now(&app).await, 0);

    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "canceled", "{pi}");
    assert_eq!(pi["cancellationReason"], "expired");
    assert_eq!(pi["amountCapturable"], 0);
    assert!(pi["canceledAt"].is_string());

    sim_charge_reaches(&app, &id, "voided").await;
    // Give a second void, if one had been queued, time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.sim_requests().await,
        2,
        "the acquirer saw the authorization and one void"
    );
    assert_eq!(queued(&app, &id, "cmd.payment.cancel").await, 1);
    assert_eq!(events(&app, &id, "payment_intent.canceled").await, 1);
    let data: Value = sqlx::query_scalar(
        "SELECT data FROM events WHERE object_id = $1 AND type = 'payment_intent.canceled'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(data["cancellationReason"], "expired");
    let entries = audited(&app, &id, "payment_intent.canceled").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "scheduler");
}

#[tokio::test]
async fn an_authorization_is_captured_in_time_or_voided_never_both() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let capture = |id: &str| {
        let path = format!("/api/payment-intents/{id}/capture");
        let app = &app;
        async move { app.post(&path, json!({})).await }
    };

    // The capture first, in time: the expiry later finds the intent moved on.
    let captured = authorized(&app).await;
    let r = capture(&captured).await;
    assert_eq!(r.status, 202, "{}", r.text);
    expire_in(&app, &captured, "-1 minute").await;
    assert_eq!(expire_now(&app).await, 0);
    app.wait_for_status(&captured, &["succeeded"], WAIT).await;
    sim_charge_reaches(&app, &captured, "captured").await;

    // The expiry first: the capture is refused.
    let expired = authorized(&app).await;
    expire_in(&app, &expired, "-1 minute").await;
    assert_eq!(expire_now(&app).await, 1);
    capture(&expired)
        .await
        .assert_error(409, "invalid_state_transition");
    sim_charge_reaches(&app, &expired, "voided").await;

    // Past the deadline, before the scheduler's round: the capture is refused all the same.
    let late = authorized(&app).await;
    expire_in(&app, &late, "-1 minute").await;
    capture(&late)
        .await
        .assert_error(409, "charge_expired_for_capture");
    assert_eq!(
        intent(&app, &late).await["status"],
        "requires_capture",
        "the refusal changes nothing; the scheduler cancels"
    );

    // Both at once: the capture is refused either way, and the expiry happens exactly once.
    for _ in 0..3 {
        let id = authorized(&app).await;
        expire_in(&app, &id, "-1 minute").await;
        let (r, canceled) = tokio::join!(
            capture(&id),
            deadlines::expire_authorizations(&app.pool, now(), BATCH)
        );
        let canceled = canceled.unwrap();
        assert_eq!(r.status, 409, "{}", r.text);
        let code = r.body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            code == "charge_expired_for_capture" || code == "invalid_state_transition",
            "{}",
            r.text
        );
        assert!(canceled >= 1);
        assert_eq!(intent(&app, &id).await["cancellationReason"], "expired");
        sim_charge_reaches(&app, &id, "voided").await;
        assert_eq!(queued(&app, &id, "cmd.payment.capture").await, 0);
        assert_eq!(events(&app, &id, "payment_intent.succeeded").await, 0);
        assert_eq!(events(&app, &id, "payment_intent.canceled").await, 1);
    }
}

#[tokio::test]
async fn intents_left_unpaid_are_canceled_as_abandoned_and_recent_ones_are_not() {
    let app = spawn_app().await;
    let create = |body: Value| {
        let app = &app;
        async move {
            app.create_intent(body).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let unconfirmed = create(json!({"paymentMethodId": "pm_card_visa"})).await;
    let no_method = create(json!({})).await;
    let recent = create(json!({"paymentMethodId": "pm_card_visa"})).await;
    let authorized =
        create(json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual"})).await;
    assert_eq!(
        intent(&app, &unconfirmed).await["status"],
        "requires_confirmation"
    );
    assert_eq!(
        intent(&app, &no_method).await["status"],
        "requires_payment_method"
    );
    // An authorization is the expiry job's business, however old.
    sqlx::query("UPDATE payment_intents SET status = 'requires_capture', amount_capturable = amount WHERE id = $1")
        .bind(&authorized)
        .execute(&app.pool)
        .await
        .unwrap();
    for id in [&unconfirmed, &no_method, &authorized] {
        age(&app, id, "25 hours").await;
    }
    age(&app, &recent, "1 hour").await;

    let day = TimeDelta::hours(24);
    assert_eq!(abandon_now(&app, day).await, 2);
    assert_eq!(
        abandon_now(&app, day).await,
        0,
        "a second run finds nothing"
    );

    for id in [&unconfirmed, &no_method] {
        let pi = intent(&app, id).await;
        assert_eq!(
            (&pi["status"], &pi["cancellationReason"]),
            (&json!("canceled"), &json!("abandoned")),
            "{pi}"
        );
        assert!(pi["canceledAt"].is_string());
        assert_eq!(events(&app, id, "payment_intent.canceled").await, 1);
        assert_eq!(queued(&app, id, "evt.payment_intent.canceled").await, 1);
        let entries = audited(&app, id, "payment_intent.canceled").await;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "scheduler");
        assert_eq!(entries[0].1["cancellationReason"], "abandoned");
        // Nothing reached the acquirer, so there is nothing to void.
        assert_eq!(queued(&app, id, "cmd.payment.cancel").await, 0);
    }
    assert_eq!(
        intent(&app, &recent).await["status"],
        "requires_confirmation"
    );
    assert_eq!(
        intent(&app, &authorized).await["status"],
        "requires_capture"
    );

    // The threshold is the configured one, not a fixed day.
    assert_eq!(abandon_now(&app, TimeDelta::minutes(30)).await, 1);
    assert_eq!(
        intent(&app, &recent).await["cancellationReason"],
        "abandoned"
    );
}

#[tokio::test]
async fn an_unfinished_3ds_challenge_is_abandoned_and_its_charge_voided() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_threeDSecureRequired").await;
    app.wait_for_status(&id, &["requires_action"], WAIT).await;
    sim_charge_reaches(&app, &id, "requires_action").await;
    assert_eq!(abandon_now(&app, TimeDelta::hours(24)).await, 0);

    age(&app, &id, "25 hours").await;
    assert_eq!(abandon_now(&app, TimeDelta::hours(24)).await, 1);
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "canceled", "{pi}");
    assert_eq!(pi["cancellationReason"], "abandoned");
    assert!(pi["nextAction"].is_null(), "{pi}");
    // The challenge can no longer turn into a payment at the acquirer.
    sim_charge_reaches(&app, &id, "voided").await;
    assert_eq!(queued(&app, &id, "cmd.payment.cancel").await, 1);
}

#[tokio::test]
async fn the_expiring_notice_goes_out_once_a_day_before_expiry() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let expiring = authorized(&app).await;
    let expired = authorized(&app).await;
    assert_eq!(announce_now(&app).await, 0, "seven days away is not soon");

    expire_in(&app, &expiring, "23 hours").await;
    expire_in(&app, &expired, "-1 minute").await;
    let before = intent(&app, &expiring).await;
    // Two runs at once (leaders overlapping in a hand-over), then a later one, as after a
    // restart: the mark lives in the database, not in a scheduler's memory.
    let (a, b) = tokio::join!(
        deadlines::announce_expiring_authorizations(&app.pool, now(), EXPIRING_NOTICE, BATCH),
        deadlines::announce_expiring_authorizations(&app.pool, now(), EXPIRING_NOTICE, BATCH)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    assert_eq!(announce_now(&app).await, 0);

    let event_type = "payment_intent.authorization_expiring";
    assert_eq!(events(&app, &expiring, event_type).await, 1);
    assert_eq!(
        queued(&app, &expiring, &format!("evt.{event_type}")).await,
        1
    );
    let entries = audited(&app, &expiring, event_type).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "scheduler");
    assert_eq!(entries[0].1["id"], json!(expiring));
    // Already expired: that one gets canceled instead, not warned.
    assert_eq!(events(&app, &expired, event_type).await, 0);

    // Merchants see it like any other event; the intent itself is unchanged.
    let listed = app.get(&format!("/api/events?type={event_type}")).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let data = listed.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{}", listed.text);
    assert_eq!(data[0]["data"]["id"], json!(expiring));
    assert_eq!(data[0]["data"]["status"], "requires_capture");
    assert_eq!(intent(&app, &expiring).await, before);

    // It can still be captured after the warning.
    let r = app
        .post(
            &format!("/api/payment-intents/{expiring}/capture"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    app.wait_for_status(&expiring, &["succeeded"], WAIT).await;
}

#[tokio::test]
async fn the_scheduler_process_keeps_the_deadlines_on_its_interval() {
    let app = spawn_app().await;
    let abandoned = app.create_intent(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    age(&app, &abandoned, "25 hours").await;
    // Authorizations as the confirm worker leaves them, minus the acquirer (no charge to void).
    let mut held = Vec::new();
    for offset in ["-1 minute", "2 hours"] {
        let id = app
            .create_intent(json!({"paymentMethodId": "pm_card_visa", "captureMethod": "manual"}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        sqlx::query("UPDATE payment_intents SET status = 'requires_capture', amount_capturable = amount WHERE id = $1")
            .bind(&id)
            .execute(&app.pool)
            .await
            .unwrap();
        expire_in(&app, &id, offset).await;
        held.push(id);
    }

    let mut config = (*app.config).clone();
    config.reconcile_interval = Duration::from_millis(200);
    let token = app.shutdown.child_token();
    let handle = tokio::spawn(scheduler::run_scheduler(config, token.clone()));
    let pi = app.wait_for_status(&abandoned, &["canceled"], WAIT).await;
    assert_eq!(pi["cancellationReason"], "abandoned");
    let pi = app.wait_for_status(&held[0], &["canceled"], WAIT).await;
    assert_eq!(pi["cancellationReason"], "expired");
    eventually(WAIT, "the expiring notice", || async {
        (events(&app, &held[1], "payment_intent.authorization_expiring").await == 1).then_some(())
    })
    .await;
    // Later rounds change nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    token.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(
        events(&app, &held[1], "payment_intent.authorization_expiring").await,
        1
    );
    assert_eq!(intent(&app, &held[1]).await["status"], "requires_capture");
    assert_eq!(events(&app, &abandoned, "payment_intent.canceled").await, 1);
}
