//! `paystream seed-history`: the history it writes is one the running system could have
//! written, and the system goes on from it as from its own.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use paystream_cli::seed_history::{seed, SeedError, SeedOptions};
use paystream_shared::domain::money::{Amount, Currency};
use paystream_shared::store::history::BatchCounts;
use paystream_shared::store::merchants::{self, Role};
use paystream_tests::webhooks::Sink;
use paystream_tests::{spawn_app, TestDb};
use sqlx::PgPool;

async fn assert_whole(pool: &PgPool) -> u64 {
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        paystream_shared::ledger::verify(&mut conn).await.unwrap(),
        Ok(()),
        "ledger verify"
    );
    let audit = paystream_shared::audit::verify(pool).await.unwrap();
    assert!(
        audit.first_bad.is_none(),
        "audit verify: {:?}",
        audit.first_bad.map(|b| (b.id, b.reason))
    );
    audit.entries
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn options(payments: u64, batch: u32) -> SeedOptions {
    SeedOptions {
        payments,
        batch,
        days: 28,
    }
}

/// The pending balance as `GET /api/balance` shows it, in usd.
async fn pending_usd(app: &paystream_tests::TestApp) -> i64 {
    let r = app.get("/api/balance").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["pending"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["currency"] == "usd")
        .and_then(|b| b["amount"].as_i64())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_seeded_history_is_whole_and_the_system_goes_on_from_it() {
    let app = spawn_app().await;
    let sink = Sink::start().await;
    let sub = app.subscribe(&sink.url("/hooks"), &["*"]).await;
    let refunds_only = app
        .subscribe(&sink.url("/refunds"), &["refund.succeeded"])
        .await;

    // Three batches, the last one short.
    let mut batches = Vec::new();
    let report = seed(&app.pool, &app.api_key, &options(2000, 700), |b| {
        batches.push((b.number, b.of, b.counts.intents))
    })
    .await
    .unwrap();
    assert_eq!(batches, [(1, 3, 700), (2, 3, 700), (3, 3, 600)]);
    assert_eq!(report.merchant_id, app.merchant_id);

    // Out of each 100: 75 captured, 10 partly and 2 fully refunded, 8 declined, 5 canceled.
    let by_status: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM payment_intents WHERE merchant_id = $1 GROUP BY status",
    )
    .bind(&app.merchant_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let want: BTreeMap<String, i64> = [
        ("canceled", 100),
        ("failed", 160),
        ("refunded", 40),
        ("succeeded", 1700),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    assert_eq!(by_status, want);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM refunds WHERE status = 'succeeded'"
        )
        .await,
        240
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM payment_intents WHERE amount_refunded > 0 AND status = 'succeeded'"
        )
        .await,
        200
    );
    // Created, processing (not for a cancel) and the outcome; two per refund.
    let events = 3 * 1900 + 2 * 100 + 2 * 240;
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM events").await,
        events
    );
    // Every event went to the catch-all subscription; refund.succeeded to the other too.
    let deliveries = events + 240;
    let counted = count(
        &app.pool,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded' AND attempt = 1",
    )
    .await;
    assert_eq!(counted, deliveries);
    let sub_id = sub["id"].as_str().unwrap();
    let to_refunds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.subscription_id = $1 AND e.type = 'refund.succeeded'",
    )
    .bind(refunds_only["id"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(to_refunds, 240);
    let to_all: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1")
            .bind(sub_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(to_all, events);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_delivery_attempts").await,
        deliveries
    );
    assert_eq!(
        report.totals,
        BatchCounts {
            intents: 2000,
            events,
            audit_entries: events + 240,
            outbox: events + 1900 + 240 + deliveries,
            refunds: 240,
            deliveries,
            postings: 1740 + 240,
            entries: 3 * 1740 + 2 * 240,
        }
    );
    // Everything is published: the relay finds nothing to do.
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM outbox").await,
        report.totals.outbox
    );
    // The history is in the past, each life in order.
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM payment_intents WHERE created_at >= now() - interval '1 hour'
                OR created_at < now() - interval '28 days 1 minute' OR updated_at < created_at"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM refunds r JOIN payment_intents p ON p.id = r.payment_intent_id
             WHERE r.created_at <= p.created_at OR r.created_at > now()"
        )
        .await,
        0
    );

    let entries = assert_whole(&app.pool).await;
    // The webhook subscriptions' own two entries, and the history's.
    assert_eq!(
        entries,
        u64::try_from(report.totals.audit_entries).unwrap() + 2
    );

    // Every fee is the schedule's, and the balance is the postings' sum.
    let charges: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT amount, fee, net FROM balance_transactions WHERE type = 'charge' AND merchant_id = $1",
    )
    .bind(&app.merchant_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(charges.len(), 1740, "87 captures in each 100");
    let usd = Currency::parse("usd").unwrap();
    for (amount, fee, net) in &charges {
        let want = paystream_shared::ledger::fee_for(Amount::from_stored(*amount), usd);
        assert_eq!(*fee, want.minor_units(), "the fee of {amount}");
        assert_eq!(*net, amount - fee);
    }
    let owed: i64 = sqlx::query_scalar(
        "SELECT (sum(amount_received - amount_refunded))::bigint FROM payment_intents WHERE merchant_id = $1",
    )
    .bind(&app.merchant_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let fees: i64 = charges.iter().map(|c| c.1).sum();
    let pending = pending_usd(&app).await;
    assert_eq!(pending, owed - fees);
    let posted: i64 = sqlx::query_scalar(
        "SELECT (-sum(amount))::bigint FROM ledger_entries WHERE account = 'merchant_pending' AND merchant_id = $1",
    )
    .bind(&app.merchant_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(pending, posted);

    // The API lists the history newest first and shows each intent as its last event did.
    let page = app.get("/api/payment-intents?limit=100").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let listed = page.body["data"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(page.body["hasMore"], true);
    let created: Vec<&str> = listed
        .iter()
        .map(|p| p["createdAt"].as_str().unwrap())
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    // Every seeded row reads back through the API: page through all intents and refunds.
    for (path, total) in [("/api/payment-intents", 2000), ("/api/refunds", 240)] {
        let mut seen = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let cursor = after
                .as_ref()
                .map(|a| format!("&startingAfter={a}"))
                .unwrap_or_default();
            let page = app.get(&format!("{path}?limit=100{cursor}")).await;
            assert_eq!(page.status, 200, "{path}: {}", page.text);
            let data = page.body["data"].as_array().unwrap();
            for item in data {
                seen.insert(item["id"].as_str().unwrap().to_owned());
            }
            if page.body["hasMore"] != true {
                break;
            }
            after = data.last().map(|i| i["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), total, "{path}");
    }
    let declined = app.get("/api/payment-intents?status=failed&limit=1").await;
    assert_eq!(
        declined.body["data"][0]["lastPaymentError"]["code"], "card_declined",
        "{}",
        declined.text
    );
    let (id, last_event): (String, serde_json::Value) = sqlx::query_as(
        "SELECT e.object_id, e.data FROM events e JOIN payment_intents p ON p.id = e.object_id
         WHERE e.type = 'payment_intent.succeeded' AND p.amount_refunded = 0 LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let shown = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    for (field, value) in last_event.as_object().unwrap() {
        assert_eq!(&shown.body[field], value, "{field} of {id}");
    }

    // A new payment through the API, on top of the history.
    let _worker = app.start_confirm_worker();
    let _hooks = app.start_webhook_worker();
    let new = app.succeeded_intent(1234).await;
    let fee = paystream_shared::ledger::fee_for(Amount::from_stored(1234), usd).minor_units();
    assert_eq!(pending_usd(&app).await, pending + 1234 - fee);
    app.assert_posted_once(&new).await;
    assert_whole(&app.pool).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while sink.received_on("/hooks").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the new payment's events reach the subscription"));
    // Nothing of the history was left to deliver: whatever arrived is about the new payment.
    for hook in sink.received() {
        assert_eq!(hook.json()["data"]["id"], new.as_str(), "{:?}", hook.json());
    }
}

#[tokio::test]
async fn a_second_seed_adds_as_many_again() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let key = merchants::create_key(&mut conn, "acme", Role::Developer, None)
        .await
        .unwrap();
    drop(conn);
    let secret = key.secret.expose().clone();
    let first = seed(&db.pool, &secret, &options(300, 300), |_| {})
        .await
        .unwrap();
    let balances_after_one: Vec<(String, i64)> =
        sqlx::query_as("SELECT account, SUM(balance)::bigint FROM ledger_accounts GROUP BY account ORDER BY account")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let second = seed(&db.pool, &secret, &options(300, 128), |_| {})
        .await
        .unwrap();
    assert_eq!((first.batches, second.batches), (1, 3));
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM payment_intents").await,
        600
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM refunds").await, 72);
    let ids: HashSet<String> = sqlx::query_scalar("SELECT id FROM payment_intents")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 600);
    assert!(ids.iter().all(|id| id.starts_with("pi_") && id.len() == 35));
    // No subscription, no deliveries.
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM webhook_deliveries").await,
        0
    );
    assert_eq!(first.totals.deliveries + second.totals.deliveries, 0);
    // The balances grew by the second seed's postings rather than being replaced.
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT account, SUM(balance)::bigint FROM ledger_accounts GROUP BY account ORDER BY account")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for ((account, once), (_, twice)) in balances_after_one.iter().zip(&balances) {
        assert!(twice.abs() > once.abs(), "{account}: {once} then {twice}");
    }
    assert_whole(&db.pool).await;
}

#[tokio::test]
async fn only_a_key_that_can_pay_gets_a_history() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let reader = merchants::create_key(&mut conn, "acme", Role::ReadOnly, None)
        .await
        .unwrap();
    drop(conn);
    let err = seed(&db.pool, reader.secret.expose(), &options(10, 10), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SeedError::KeyCannotPay { .. }), "{err}");
    let err = seed(&db.pool, "sk_nobody", &options(10, 10), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SeedError::UnknownKey), "{err}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM payment_intents").await,
        0
    );
}

#[tokio::test]
async fn the_command_reports_each_batch_and_its_rate() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let key = merchants::create_key(&mut conn, "acme", Role::Admin, None)
        .await
        .unwrap();
    drop(conn);
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .env("DATABASE_URL", &db.url)
        .env("PAYSTREAM_ENV", "development")
        .args(["seed-history", "--payments", "150", "--batch", "100"])
        .args(["--key", key.secret.expose()])
        .output()
        .expect("run paystream");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batches: Vec<&str> = stdout.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(batches.len(), 2, "{stdout}");
    assert!(
        batches[0].starts_with("batch 1/2: 100 payments"),
        "{stdout}"
    );
    assert!(batches[1].starts_with("batch 2/2: 50 payments"), "{stdout}");
    assert!(batches.iter().all(|l| l.contains(" rows/s")), "{stdout}");
    assert!(stdout.contains("done: merchant"), "{stdout}");
    assert!(stdout.contains("150 intents"), "{stdout}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM payment_intents").await,
        150
    );
    assert_whole(&db.pool).await;
}
