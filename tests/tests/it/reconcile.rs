//! Reconciliation and the scheduler's jobs: drift between our books and the acquirer's is
//! repaired through the state machine, audited as the reconciliation actor.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use paystream_tests::{spawn_app, TestApp};
use paystream_workers::acquirer::{Acquirer, HttpAcquirer};
use paystream_workers::{reconcile, scheduler};
use serde_json::json;

fn acquirer(app: &TestApp) -> Arc<dyn Acquirer> {
    Arc::new(HttpAcquirer::new(&app.sim_url, Duration::from_secs(2)).unwrap())
}

/// An intent left in `processing` with no command in flight, as if the message was lost,
/// and untouched for ten minutes.
async fn stranded_processing(app: &TestApp, payment_method: &str) -> String {
    let pi = app
        .create_intent(json!({"paymentMethodId": payment_method}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE payment_intents SET status = 'processing', updated_at = now() - interval '10 minutes' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

async fn charge_at_acquirer(app: &TestApp, id: &str, payment_method: &str) {
    let r = app
        .http
        .post(format!("{}/v1/payments", app.sim_url))
        .header("Idempotency-Key", format!("{id}:authorize"))
        .json(&json!({"reference": id, "amount": 1099, "currency": "usd", "paymentMethod": payment_method, "capture": true}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status() == 402,
        "{}",
        r.status()
    );
}

#[tokio::test]
async fn a_charge_we_never_recorded_is_applied_from_the_acquirers_books() {
    let app = spawn_app().await;
    let paid = stranded_processing(&app, "pm_card_visa").await;
    charge_at_acquirer(&app, &paid, "pm_card_visa").await;
    let declined = stranded_processing(&app, "pm_card_chargeDeclined").await;
    charge_at_acquirer(&app, &declined, "pm_card_chargeDeclined").await;
    let fresh = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE payment_intents SET status = 'processing' WHERE id = $1")
        .bind(&fresh)
        .execute(&app.pool)
        .await
        .unwrap();

    let report = reconcile::run_once(&app.pool, &acquirer(&app), TimeDelta::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        report.intents_checked, 2,
        "the fresh one is not stuck yet: {report:?}"
    );
    assert_eq!(report.intents_corrected, 2);

    let pi = app.get(&format!("/api/payment-intents/{paid}")).await.body;
    assert_eq!(
        (
            pi["status"].as_str().unwrap(),
            pi["amountReceived"].as_i64().unwrap()
        ),
        ("succeeded", 1099)
    );
    assert_eq!(
        app.get(&format!("/api/payment-intents/{declined}"))
            .await
            .body["status"],
        "failed"
    );
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM audit_log WHERE object_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(&paid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(actor, "reconciliation");
    assert_eq!(app.sim_charges(&paid).await.len(), 1);

    // A second pass finds nothing left to do.
    let again = reconcile::run_once(&app.pool, &acquirer(&app), TimeDelta::minutes(5))
        .await
        .unwrap();
    assert_eq!(again.intents_checked, 0);
}

#[tokio::test]
async fn an_intent_the_acquirer_never_saw_is_requeued_not_failed() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let id = stranded_processing(&app, "pm_card_visa").await;
    let report = reconcile::run_once(&app.pool, &acquirer(&app), TimeDelta::minutes(5))
        .await
        .unwrap();
    assert_eq!(report.commands_requeued, 1, "{report:?}");
    app.wait_for_status(&id, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    let requeued: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE object_id = $1 AND action = 'reconciliation.requeued'")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(requeued, 1);
}

#[tokio::test]
async fn one_scheduler_leads_at_a_time() {
    let app = spawn_app().await;
    let first = scheduler::try_lead(&app.pool)
        .await
        .unwrap()
        .expect("the first takes the lead");
    assert!(
        scheduler::try_lead(&app.pool).await.unwrap().is_none(),
        "a second stands by"
    );
    drop(first);
    let mut second =
        paystream_tests::eventually(Duration::from_secs(5), "leadership to pass on", || async {
            scheduler::try_lead(&app.pool).await.unwrap()
        })
        .await;
    assert!(second.still_held().await);
}

#[tokio::test]
async fn purge_removes_expired_keys_and_old_published_outbox_rows() {
    let app = spawn_app().await;
    app.post_idem(
        "/api/payment-intents",
        "old-key",
        json!({"amount": 5, "currency": "usd", "customerId": "c"}),
    )
    .await;
    app.post_idem(
        "/api/payment-intents",
        "new-key",
        json!({"amount": 6, "currency": "usd", "customerId": "c"}),
    )
    .await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old-key'").execute(&app.pool).await.unwrap();
    paystream_tests::eventually(Duration::from_secs(10), "the relay to publish", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    sqlx::query("UPDATE outbox SET published_at = now() - interval '2 days' WHERE id = (SELECT id FROM outbox ORDER BY created_at LIMIT 1)")
        .execute(&app.pool)
        .await
        .unwrap();
    let (keys, rows) = scheduler::purge(&app.pool).await.unwrap();
    assert_eq!((keys, rows), (1, 1));
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["new-key"]);

    // A statement deletes one batch; the scheduler repeats until a batch comes back short.
    for amount in [7, 8] {
        let r = app
            .post(
                "/api/payment-intents",
                json!({"amount": amount, "currency": "usd", "customerId": "c"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    sqlx::query("UPDATE outbox SET published_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    let old: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(old >= 3, "{old}");
    let one = paystream_shared::store::outbox::purge_published(
        &app.pool,
        scheduler::OUTBOX_RETENTION_HOURS,
        1,
    )
    .await
    .unwrap();
    assert_eq!(one, 1);
    // Batches of one: the rest only goes if the loop repeats until a batch comes back short.
    let (_, rest) = scheduler::purge_in_batches(&app.pool, 1).await.unwrap();
    assert_eq!(i64::try_from(rest).unwrap(), old - 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// On a server without autovacuum (this machine's runs with `autovacuum = off`), the
/// scheduler's round vacuums the tables every payment churns; with it, it leaves them to it.
#[tokio::test]
async fn the_churned_tables_are_vacuumed_where_autovacuum_does_not_run() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_visa").await;
    app.wait_for_status(&id, &["succeeded"], Duration::from_secs(20))
        .await;
    let vacuums = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT relname::text, vacuum_count FROM pg_stat_user_tables
             WHERE relname = ANY($1) ORDER BY relname",
        )
        .bind(scheduler::CHURNED_TABLES.as_slice())
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    let before = vacuums().await;
    assert_eq!(before.len(), scheduler::CHURNED_TABLES.len(), "{before:?}");
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let ran = scheduler::vacuum_churned(&app.pool).await.unwrap();
    assert_eq!(ran, autovacuum != "on");
    if ran {
        paystream_tests::eventually(Duration::from_secs(10), "the vacuums counted", || async {
            let after = vacuums().await;
            before
                .iter()
                .zip(&after)
                .all(|((t, b), (u, a))| t == u && a > b)
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn the_scheduler_process_reconciles_on_its_interval() {
    let app = spawn_app().await;
    let id = stranded_processing(&app, "pm_card_visa").await;
    charge_at_acquirer(&app, &id, "pm_card_visa").await;
    let mut config = (*app.config).clone();
    config.reconcile_interval = Duration::from_millis(200);
    config.reconcile_stuck_after = Duration::from_secs(60);
    let token = app.shutdown.child_token();
    let handle = tokio::spawn(scheduler::run_scheduler(config, token.clone()));
    app.wait_for_status(&id, &["succeeded"], Duration::from_secs(20))
        .await;
    token.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn with_every_notification_dropped_reconciliation_settles_refunds_and_intents() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let _refunds = app.start_refund_worker();
    let paid = app.succeeded_intent(1000).await;
    // The acquirer settles refunds later and tells nobody; a charge's answer was lost too.
    app.sim_faults(json!({"refundSettlementMs": 100, "notifications": {"dropRate": 1}}))
        .await;
    let r = app
        .post("/api/refunds", json!({"paymentIntentId": paid}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let refund = r.body["id"].as_str().unwrap().to_owned();
    let stranded = stranded_processing(&app, "pm_card_visa").await;
    charge_at_acquirer(&app, &stranded, "pm_card_visa").await;

    // The refund worker got `pending`; with no notification it stays there.
    paystream_tests::eventually(
        Duration::from_secs(20),
        "the acquirer to take the refund",
        || async {
            let id: Option<String> =
                sqlx::query_scalar("SELECT acquirer_refund_id FROM refunds WHERE id = $1")
                    .bind(&refund)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            id.map(|_| ())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.get(&format!("/api/refunds/{refund}")).await.body["status"],
        "pending"
    );

    let report = reconcile::run_once(&app.pool, &acquirer(&app), TimeDelta::zero())
        .await
        .unwrap();
    assert_eq!(
        (report.refunds_corrected, report.intents_corrected),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(
        app.get(&format!("/api/refunds/{refund}")).await.body["status"],
        "succeeded"
    );
    let pi = app.get(&format!("/api/payment-intents/{paid}")).await.body;
    assert_eq!(
        (
            pi["status"].as_str().unwrap(),
            pi["amountRefunded"].as_i64().unwrap()
        ),
        ("refunded", 1000)
    );
    assert_eq!(
        app.get(&format!("/api/payment-intents/{stranded}"))
            .await
            .body["status"],
        "succeeded"
    );
    assert_eq!(app.acquirer_totals(&paid).await, (1000, 1000));
}
