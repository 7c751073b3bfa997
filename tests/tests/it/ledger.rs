//! The ledger: captures and refunds post balanced transactions exact to the minor unit, once
//! per source, in the transaction of the state change; the entries cannot be edited; and
//! `paystream ledger verify` catches what was edited behind the triggers' back.

use std::time::Duration;

use futures::StreamExt;
use paystream_shared::audit::Actor;
use paystream_shared::ledger::{self, Violation};
use paystream_shared::store::merchants::Role;
use paystream_shared::store::{payment_intents, refunds};
use paystream_tests::{eventually, spawn_app, spawn_app_with, TestApp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

async fn succeeded(app: &TestApp, amount: i64, currency: &str) -> String {
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_visa", "confirm": true,
                              "amount": amount, "currency": currency}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    id
}

async fn refund(app: &TestApp, pi: &str, amount: i64) -> String {
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": amount}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    eventually(WAIT, &format!("refund {id} to succeed"), || async {
        let r = app.get(&format!("/api/refunds/{id}")).await;
        (r.body["status"] == "succeeded").then_some(())
    })
    .await;
    id
}

/// The balance as `GET /api/balance` shows it: (pending, available) in `currency`.
async fn balance(app: &TestApp, key: Option<&str>, currency: &str) -> (i64, i64) {
    let r = match key {
        Some(k) => app.get_as(k, "/api/balance").await,
        None => app.get("/api/balance").await,
    };
    assert_eq!(r.status, 200, "{}", r.text);
    let pick = |side: &str| {
        r.body[side]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["currency"] == currency)
            .map_or(0, |b| b["amount"].as_i64().unwrap())
    };
    (pick("pending"), pick("available"))
}

async fn transactions(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/api/balance-transactions?limit=100{query}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_array().unwrap().clone()
}

/// Runs `paystream ledger verify --json` against the app's database: (exit ok, verdict).
fn verify_cli(app: &TestApp) -> (bool, Value) {
    let out = std::process::Command::new(paystream_tests::binary("paystream"))
        .args(["ledger", "verify", "--json"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), verdict)
}

async fn verify(app: &TestApp) -> Result<(), Violation> {
    let mut conn = app.pool.acquire().await.unwrap();
    ledger::verify(&mut conn).await.unwrap()
}

#[tokio::test]
async fn capture_and_refunds_post_exact_balances_and_fees_in_usd_and_jpy() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    // (currency, amount, fee by 290 bps + 30): USD 10.00 -> 29 + 30; JPY 5001 -> 145.029 -> 145, + 30.
    for (currency, amount, fee) in [("usd", 1000, 59), ("jpy", 5001, 175)] {
        let pi = succeeded(&app, amount, currency).await;
        assert_eq!(balance(&app, None, currency).await, (amount - fee, 0));
        let charge = transactions(&app, &format!("&source={pi}")).await;
        assert_eq!(charge.len(), 1, "{charge:?}");
        let c = &charge[0];
        assert!(c["id"].as_str().unwrap().starts_with("txn_"));
        assert_eq!(
            (&c["type"], &c["reportingCategory"], &c["status"]),
            (&json!("charge"), &json!("charge"), &json!("pending"))
        );
        assert_eq!(
            (c["amount"].as_i64(), c["fee"].as_i64(), c["net"].as_i64()),
            (Some(amount), Some(fee), Some(amount - fee))
        );
        assert_eq!(c["currency"], currency);
        assert!(c.get("payoutId").is_none(), "pending: no payout");

        // A partial refund comes out of pending; the fee is not returned.
        let re1 = refund(&app, &pi, 301).await;
        assert_eq!(balance(&app, None, currency).await, (amount - fee - 301, 0));
        let r = transactions(&app, &format!("&source={re1}")).await;
        assert_eq!(
            (
                r[0]["type"].as_str(),
                r[0]["amount"].as_i64(),
                r[0]["fee"].as_i64(),
                r[0]["net"].as_i64()
            ),
            (Some("refund"), Some(-301), Some(0), Some(-301))
        );
        // The rest: the merchant is left paying the fee.
        refund(&app, &pi, amount - 301).await;
        app.wait_for_status(&pi, &["refunded"], WAIT).await;
        assert_eq!(balance(&app, None, currency).await, (-fee, 0));
    }
    let refunds_only = transactions(&app, "&type=refund").await;
    assert_eq!(refunds_only.len(), 4);
    assert!(refunds_only.iter().all(|t| t["type"] == "refund"));
    assert_eq!(transactions(&app, "").await.len(), 6);
    assert_eq!(verify(&app).await, Ok(()));
    let (ok, verdict) = verify_cli(&app);
    assert!(ok, "{verdict}");
    assert_eq!(verdict["transactions"], 6);
}

#[tokio::test]
async fn balance_reads_never_cross_merchants_and_lists_page_and_refuse_bad_filters() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    for amount in [1000, 2000, 3000] {
        succeeded(&app, amount, "usd").await;
    }
    let other = app.other_merchant("other-merchant", Role::Admin).await;
    let r = app.get_as(&other, "/api/balance").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"available": [], "pending": []}));
    let mine = transactions(&app, "").await;
    assert_eq!(mine.len(), 3);
    let theirs = app
        .get_as(
            &other,
            &format!(
                "/api/balance-transactions?source={}",
                mine[0]["source"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(theirs.body["data"], json!([]));
    // Another merchant's balance transaction is no cursor of theirs.
    app.get_as(
        &other,
        &format!(
            "/api/balance-transactions?startingAfter={}",
            mine[0]["id"].as_str().unwrap()
        ),
    )
    .await
    .assert_error(400, "resource_missing");

    // Newest first, one page at a time.
    let page = app.get("/api/balance-transactions?limit=2").await;
    assert_eq!(page.body["hasMore"], true);
    let last = page.body["data"][1]["id"].as_str().unwrap().to_owned();
    assert_eq!(page.body["data"][0]["amount"], 3000);
    let rest = app
        .get(&format!(
            "/api/balance-transactions?limit=2&startingAfter={last}"
        ))
        .await;
    assert_eq!(rest.body["hasMore"], false);
    assert_eq!(rest.body["data"][0]["amount"], 1000);

    app.get("/api/balance-transactions?type=fee")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/balance-transactions?source=pi_%27--")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/balance-transactions?payoutId=")
        .await
        .assert_error(400, "parameter_invalid");
    app.get("/api/balance-transactions?limit=0")
        .await
        .assert_error(400, "parameter_invalid");
    assert_eq!(
        transactions(&app, "&payoutId=po_none").await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn a_redelivered_capture_or_refund_posts_once_even_when_racing() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = succeeded(&app, 1000, "usd").await;
    let re = refund(&app, &pi, 400).await;
    let (merchant, pool) = (app.merchant_id.clone(), app.pool.clone());
    let intent = payment_intents::get(&pool, &merchant, &pi)
        .await
        .unwrap()
        .unwrap();

    // The same capture posted again, twice at once, in two transactions: nothing more.
    let again = futures::future::join_all((0..2).map(|_| {
        let (pool, intent) = (pool.clone(), intent.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let posted = ledger::post_charge(&mut tx, &intent).await.unwrap();
            tx.commit().await.unwrap();
            posted
        }
    }))
    .await;
    assert!(again.iter().all(Option::is_none), "{again:?}");

    // The refund's settlement delivered again: already settled, nothing posted.
    let mut tx = pool.begin().await.unwrap();
    let settled = refunds::settle(
        &mut tx,
        &re,
        refunds::Settlement::Succeeded {
            acquirer_refund_id: None,
        },
        &Actor::Worker("refund-worker"),
    )
    .await
    .unwrap();
    assert!(settled.is_none());
    let refund = refunds::get(&mut *tx, &merchant, &re)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger::post_refund(&mut tx, &refund)
        .await
        .unwrap()
        .is_none());
    tx.commit().await.unwrap();

    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM ledger_transactions GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kinds, [("charge".to_owned(), 1), ("refund".to_owned(), 1)]);
    assert_eq!(balance(&app, None, "usd").await, (1000 - 59 - 400, 0));
    assert_eq!(verify(&app).await, Ok(()));
}

#[tokio::test]
async fn entries_are_append_only_and_verify_names_what_was_changed_behind_the_triggers() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let pi = succeeded(&app, 1000, "usd").await;
    let pool = &app.pool;
    for sql in [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET source_id = 'pi_other'",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_entries CASCADE",
    ] {
        let err = sqlx::query(sql).execute(pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(verify(&app).await, Ok(()));

    // Behind the triggers' back: one entry one cent larger.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE ledger_entries SET amount = amount + 1 WHERE account = 'fees'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let ltx: String = sqlx::query_scalar("SELECT id FROM ledger_transactions")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        verify(&app).await,
        Err(Violation::Unbalanced {
            id: ltx.clone(),
            sum: 1
        })
    );
    let (ok, verdict) = verify_cli(&app);
    assert!(!ok, "{verdict}");
    assert!(
        verdict["firstViolation"].as_str().unwrap().contains(&ltx),
        "{verdict}"
    );

    // Balanced again, but the fees account's running balance no longer matches its entries.
    sqlx::query("UPDATE ledger_entries SET amount = amount - 1 WHERE account = 'fees'")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE ledger_accounts SET balance = balance - 5 WHERE account = 'fees'
         AND slot = (SELECT min(slot) FROM ledger_accounts WHERE account = 'fees')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    assert!(
        matches!(verify(&app).await, Err(Violation::Drifted { account, balance: -64, sum: -59, .. }) if account == "fees")
    );
    sqlx::query(
        "UPDATE ledger_accounts SET balance = balance + 5 WHERE account = 'fees'
         AND slot = (SELECT min(slot) FROM ledger_accounts WHERE account = 'fees')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();

    // An entry moved to another merchant balances but is misfiled.
    sqlx::query("UPDATE ledger_entries SET merchant_id = 'mer_other' WHERE account = 'fees'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(matches!(
        verify(&app).await,
        Err(Violation::Misfiled { .. })
    ));
    sqlx::query("UPDATE ledger_entries SET merchant_id = $1 WHERE account = 'fees'")
        .bind(&app.merchant_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(verify(&app).await, Ok(()));

    // The intent says it refunded what the ledger never posted.
    sqlx::query("UPDATE payment_intents SET amount_refunded = 7 WHERE id = $1")
        .bind(&pi)
        .execute(&mut *conn)
        .await
        .unwrap();
    let Err(Violation::Mismatch { id, detail }) = verify(&app).await else {
        panic!("a mismatch");
    };
    assert_eq!(id, pi);
    assert!(detail.contains("refunded 7"), "{detail}");
    let (ok, verdict) = verify_cli(&app);
    assert!(!ok);
    assert!(verdict["firstViolation"].as_str().unwrap().contains(&pi));
}

#[tokio::test]
async fn a_thousand_concurrent_captures_and_refunds_leave_the_ledger_balanced() {
    let app = spawn_app_with(|c| c.rate_limit_per_sec = 0).await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    const INTENTS: usize = 400;
    // Manual-capture intents, authorized by the worker.
    let ids: Vec<(String, i64)> = futures::stream::iter(0..INTENTS)
        .map(|i| {
            let app = &app;
            async move {
                let pi = app
                    .create_intent(json!({"paymentMethodId": "pm_card_visa", "confirm": true,
                        "captureMethod": "manual", "amount": 1000 + i64::try_from(i).unwrap()}))
                    .await;
                (
                    pi["id"].as_str().unwrap().to_owned(),
                    pi["amount"].as_i64().unwrap(),
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (id, _) in &ids {
        app.wait_for_status(id, &["requires_capture"], WAIT).await;
    }

    // 400 captures (every other one partial) and 600 refunds, all at once: each intent is
    // captured and then refunded in one or two parts while the others are captured.
    let expected: Vec<(i64, i64)> = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, (id, amount))| {
            let app = &app;
            async move {
                let amount = *amount;
                let captured = if i % 2 == 0 { amount } else { amount - 100 };
                let r = app
                    .post(
                        &format!("/api/payment-intents/{id}/capture"),
                        json!({"amountToCapture": captured}),
                    )
                    .await;
                assert!(r.status.is_success(), "{}", r.text);
                app.wait_for_status(id, &["succeeded"], WAIT).await;
                let parts: &[i64] = if i % 2 == 0 { &[100, 200] } else { &[captured] };
                for part in parts {
                    let r = app
                        .post(
                            "/api/refunds",
                            json!({"paymentIntentId": id, "amount": part}),
                        )
                        .await;
                    assert_eq!(r.status, 201, "{}", r.text);
                }
                (captured, parts.iter().sum::<i64>())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let refunded_total: i64 = expected.iter().map(|(_, r)| r).sum();
    eventually(
        Duration::from_secs(180),
        "every refund to settle",
        || async {
            let settled: i64 =
                sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'succeeded'")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            (settled == 600).then_some(())
        },
    )
    .await;

    let fees: i64 = expected
        .iter()
        .map(|(c, _)| {
            // 2.9 % half up + 30, integer arithmetic.
            (c * 290 + 5_000) / 10_000 + 30
        })
        .sum();
    let captured_total: i64 = expected.iter().map(|(c, _)| c).sum();
    assert_eq!(
        balance(&app, None, "usd").await,
        (captured_total - fees - refunded_total, 0)
    );
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM ledger_transactions GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        [("charge".to_owned(), 400), ("refund".to_owned(), 600)]
    );
    assert_eq!(verify(&app).await, Ok(()));
    let (ok, verdict) = verify_cli(&app);
    assert!(ok, "{verdict}");
    assert_eq!(verdict["transactions"], 1000);
}

#[tokio::test]
async fn settling_into_a_payout_moves_pending_to_available_then_out_once() {
    use paystream_shared::domain::ids::IdKind;
    use paystream_shared::domain::ledger::{Account, BalanceStatus, Posting, PostingKind};
    use paystream_shared::domain::money::{Amount, Currency};
    use paystream_shared::store::balance_transactions;

    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = succeeded(&app, 1000, "usd").await;
    let re = refund(&app, &pi, 400).await;
    let (merchant, pool) = (app.merchant_id.clone(), app.pool.clone());
    let usd = Currency::parse("usd").unwrap();
    assert_eq!(
        ledger::fee_for(Amount::from_stored(1000), usd).minor_units(),
        59
    );
    assert!(ledger::posted(&pool, PostingKind::Charge, &pi)
        .await
        .unwrap());
    assert!(!ledger::posted(&pool, PostingKind::Payout, &pi)
        .await
        .unwrap());

    // The acquirer's payout settles both movements: 941 - 400 = 541.
    let payout = IdKind::Payout.generate();
    let moved: Vec<String> = [pi.as_str(), re.as_str()]
        .iter()
        .map(|source| source.to_string())
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for source in &moved {
        let bts = balance_transactions::for_source(&mut *tx, &merchant, source)
            .await
            .unwrap();
        assert_eq!(bts.len(), 1);
        assert!(ledger::settle(&mut tx, &merchant, &bts[0].id, &payout)
            .await
            .unwrap());
        // The same line again (a report processed twice): nothing.
        assert!(!ledger::settle(&mut tx, &merchant, &bts[0].id, &payout)
            .await
            .unwrap());
    }
    tx.commit().await.unwrap();
    assert_eq!(balance(&app, None, "usd").await, (0, 541));
    let settled = transactions(&app, &format!("&payoutId={payout}")).await;
    assert_eq!(settled.len(), 2);
    assert!(settled
        .iter()
        .all(|t| t["status"] == "available" && t["payoutId"] == json!(payout)));

    let mut tx = pool.begin().await.unwrap();
    let paid = ledger::post_payout(&mut tx, &merchant, usd, &payout, 541)
        .await
        .unwrap()
        .expect("first posting");
    assert_eq!(
        (paid.amount, paid.net, paid.status),
        (-541, -541, BalanceStatus::Available)
    );
    assert!(ledger::post_payout(&mut tx, &merchant, usd, &payout, 541)
        .await
        .unwrap()
        .is_none());
    tx.commit().await.unwrap();
    assert_eq!(balance(&app, None, "usd").await, (0, 0));

    // Every account of the movement is back at zero (summed over its slots).
    let nonzero: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM ledger_accounts
         GROUP BY merchant_id, currency, account HAVING SUM(balance) <> 0) AS a",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(nonzero, 0);

    // An adjustment: a balanced posting of the caller's making, shown once.
    let posting = Posting::new(
        &merchant,
        usd,
        PostingKind::Adjustment,
        "sd_test",
        &[(Account::MerchantAvailable, -25), (Account::Payouts, 25)],
    )
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let adj = ledger::post_adjustment(&mut tx, &posting, "fee", 25, 0, BalanceStatus::Available)
        .await
        .unwrap()
        .expect("first posting");
    assert_eq!(adj.source, "sd_test");
    assert!(
        ledger::post_adjustment(&mut tx, &posting, "fee", 25, 0, BalanceStatus::Available)
            .await
            .unwrap()
            .is_none()
    );
    tx.commit().await.unwrap();
    assert_eq!(balance(&app, None, "usd").await, (0, 25));
    let shown = transactions(&app, "&type=adjustment").await;
    assert_eq!(
        (&shown[0]["reportingCategory"], &shown[0]["amount"]),
        (&json!("fee"), &json!(25))
    );
    let payouts = transactions(&app, "&type=payout").await;
    assert_eq!(payouts[0]["source"], json!(payout));
    assert_eq!(verify(&app).await, Ok(()));
}
