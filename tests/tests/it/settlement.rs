//! Settlement reconciliation end to end: real captures and refunds through the workers, the
//! real simulator settling over HTTP, and the scheduler's settlement step run directly.

use std::time::Duration;

use chrono::TimeDelta;
use paystream_shared::ledger;
use paystream_tests::{spawn_app, spawn_app_with, TestApp};
use paystream_workers::settlement::{self, RoundReport, SettlementClient};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DEFAULT_WINDOW: TimeDelta = TimeDelta::days(2);

fn client(app: &TestApp) -> SettlementClient {
    SettlementClient::new(&app.sim_url, Duration::from_secs(5)).unwrap()
}

async fn settle_at_sim(app: &TestApp) -> Value {
    let r = app
        .http
        .post(format!("{}/sim/settle", app.sim_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn round(app: &TestApp, window: TimeDelta) -> RoundReport {
    settlement::run_once(&app.pool, &client(app), window)
        .await
        .unwrap()
}

async fn refund(app: &TestApp, pi: &str, amount: i64) -> String {
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": amount}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    paystream_tests::eventually(Duration::from_secs(30), "the refund to succeed", || async {
        let r = app.get(&format!("/api/refunds/{id}")).await;
        (r.body["status"] == "succeeded").then_some(())
    })
    .await;
    id
}

async fn balance(app: &TestApp) -> (i64, i64) {
    let b = ledger::balance(&app.pool, &app.merchant_id).await.unwrap();
    (
        b.pending.get("usd").copied().unwrap_or(0),
        b.available.get("usd").copied().unwrap_or(0),
    )
}

/// (kind, reference) of every discrepancy, oldest first.
async fn discrepancies(app: &TestApp) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT kind, reference FROM settlement_discrepancies ORDER BY created_at, id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn events(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = $1")
        .bind(format!("evt.{event_type}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn ledger_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn verify(app: &TestApp) {
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(ledger::verify(&mut conn).await.unwrap(), Ok(()));
}

#[tokio::test]
async fn a_clean_settlement_moves_pending_to_available_and_pays_it_out() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let _refunds = app.start_refund_worker();
    let a = app.succeeded_intent(1000).await;
    let b = app.succeeded_intent(2500).await;
    let re = refund(&app, &a, 400).await;

    // Fees: 1000 -> 29 + 30, 2500 -> 73 (72.5 half up) + 30. Refunds keep the fee.
    let net = (1000 - 59) + (2500 - 103) - 400;
    assert_eq!(balance(&app).await, (net, 0));

    let payouts = settle_at_sim(&app).await;
    assert_eq!(payouts["data"][0]["amount"], net);
    let r = round(&app, DEFAULT_WINDOW).await;
    assert_eq!(
        r,
        RoundReport {
            payouts_fetched: 1,
            reports_reconciled: 1,
            reports_failed: 0,
            discrepancies: 0
        }
    );
    // Settled into available, then paid out of it.
    assert_eq!(balance(&app).await, (0, 0));
    assert!(discrepancies(&app).await.is_empty());
    verify(&app).await;

    let list = app.get("/api/payouts").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    let payout = &list.body["data"][0];
    let po = payout["id"].as_str().unwrap().to_owned();
    assert!(po.starts_with("po_"));
    assert_eq!(payout["amount"], net);
    assert_eq!(payout["currency"], "usd");
    assert_eq!(payout["status"], "paid");
    assert_eq!(
        payout["reconciliation"],
        json!({"status": "matched", "lines": 3, "matched": 3, "discrepancies": 0})
    );
    assert_eq!(payout["acquirerPayoutId"], payouts["data"][0]["id"]);
    let one = app.get(&format!("/api/payouts/{po}")).await;
    assert_eq!(one.body, *payout);
    assert_eq!(events(&app, "payout.paid").await, 1);

    // Every movement shows settled in the payout.
    for source in [&a, &b, &re] {
        let (status, payout_id): (String, Option<String>) =
            sqlx::query_as("SELECT status, payout_id FROM balance_transactions WHERE source = $1")
                .bind(source)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), payout_id.as_deref()),
            ("available", Some(po.as_str()))
        );
    }

    // Fetching again changes nothing; so does applying the same report a second time, even
    // when forced past the guard that normally skips a reconciled report.
    let entries = ledger_rows(&app).await;
    assert_eq!(round(&app, DEFAULT_WINDOW).await, RoundReport::default());
    sqlx::query("UPDATE settlement_reports SET status = 'pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    let again = round(&app, DEFAULT_WINDOW).await;
    assert_eq!(again.reports_reconciled, 1);
    assert_eq!(again.discrepancies, 0);
    assert_eq!(ledger_rows(&app).await, entries);
    assert_eq!(events(&app, "payout.paid").await, 1);
    assert_eq!(app.get(&format!("/api/payouts/{po}")).await.body, *payout);
    verify(&app).await;

    // Another merchant sees none of it.
    let other = app
        .other_merchant("globex", paystream_shared::store::merchants::Role::Admin)
        .await;
    let theirs = app.get_as(&other, "/api/payouts").await;
    assert_eq!(theirs.body["data"], json!([]));
    app.get_as(&other, &format!("/api/payouts/{po}"))
        .await
        .assert_error(404, "resource_missing");
}

#[tokio::test]
async fn each_report_fault_is_flagged_as_its_own_kind_once() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let cases = [
        (json!({"amountSkewRate": 1}), "amount_mismatch"),
        (json!({"feeSkewRate": 1}), "fee_mismatch"),
        (json!({"extraRate": 1}), "unknown_in_report"),
        (json!({"duplicateRate": 1}), "duplicate_in_report"),
    ];
    for (seen, (fault, kind)) in cases.into_iter().enumerate() {
        let pi = app.succeeded_intent(1000).await;
        app.sim_faults(json!({ "settlement": fault })).await;
        settle_at_sim(&app).await;
        app.sim_faults(json!({})).await;
        let before = events(&app, "settlement.discrepancy_found").await;
        let r = round(&app, DEFAULT_WINDOW).await;
        assert_eq!(
            (r.reports_reconciled, r.discrepancies),
            (1, 1),
            "{kind}: {r:?}"
        );
        let all = discrepancies(&app).await;
        assert_eq!(all.len(), seen + 1, "{kind}: {all:?}");
        assert_eq!(all[seen], (kind.to_owned(), Some(pi.clone())), "{kind}");
        assert_eq!(
            events(&app, "settlement.discrepancy_found").await,
            before + 1,
            "{kind}"
        );
        // The same report again files nothing new.
        assert_eq!(round(&app, DEFAULT_WINDOW).await, RoundReport::default());
    }
    // The money moved by our books, whatever the report said: nothing is pending.
    assert_eq!(balance(&app).await.0, 0);
    verify(&app).await;

    let list = app.get("/api/settlement/discrepancies?status=open").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let data = list.body["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 4);
    let first = &data[0];
    assert!(first["id"].as_str().unwrap().starts_with("sd_"));
    assert_eq!(first["kind"], "duplicate_in_report");
    let payout_id = first["payoutId"].as_str().unwrap().to_owned();
    let by_payout = app
        .get(&format!(
            "/api/settlement/discrepancies?payoutId={payout_id}"
        ))
        .await;
    assert_eq!(by_payout.body["data"].as_array().unwrap().len(), 1);
    let amount = data
        .iter()
        .find(|d| d["kind"] == "amount_mismatch")
        .unwrap();
    assert_eq!(
        (amount["expected"].as_str(), amount["actual"].as_str()),
        (Some("1000"), Some("1001"))
    );

    // Resolving: audited with the actor, once.
    let id = first["id"].as_str().unwrap();
    let path = format!("/api/settlement/discrepancies/{id}/resolve");
    app.post(&path, json!({}))
        .await
        .assert_error(400, "parameter_missing");
    let resolved = app
        .post(&path, json!({"note": "acquirer confirmed the repeat"}))
        .await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.text);
    assert_eq!(resolved.body["status"], "resolved");
    assert_eq!(
        resolved.body["resolutionNote"],
        "acquirer confirmed the repeat"
    );
    app.post(&path, json!({"note": "again"}))
        .await
        .assert_error(409, "invalid_state_transition");
    let audit = app.get(&format!("/api/audit-log?objectId={id}")).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"resolved"), "{}", audit.text);
    let open = app.get("/api/settlement/discrepancies?status=open").await;
    assert_eq!(open.body["data"].as_array().unwrap().len(), 3);
    app.get("/api/settlement/discrepancies?status=maybe")
        .await
        .assert_error(400, "parameter_invalid");

    // The operator's view: every open one.
    let out = std::process::Command::new(paystream_tests::binary("paystream"))
        .args(["settlement", "discrepancies", "--json"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|d| d["status"] == "open" && d["merchantId"] == app.merchant_id.as_str()));
    let out = std::process::Command::new(paystream_tests::binary("paystream"))
        .args(["settlement", "discrepancies", "--all"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains("duplicate_in_report") && text.contains("resolved"),
        "{text}"
    );

    let other = app
        .other_merchant("globex", paystream_shared::store::merchants::Role::Admin)
        .await;
    let theirs = app.get_as(&other, "/api/settlement/discrepancies").await;
    assert_eq!(theirs.body["data"], json!([]));
    let r = app
        .request(
            reqwest::Method::POST,
            &path,
            Some(&other),
            None,
            Some(json!({"note": "mine"})),
        )
        .await;
    r.assert_error(404, "resource_missing");
}

#[tokio::test]
async fn only_a_capture_older_than_the_window_is_missing_from_the_report() {
    let app = spawn_app_with(|c| c.settlement_window = Duration::from_secs(3)).await;
    let _confirm = app.start_confirm_worker();
    let old = app.succeeded_intent(1000).await;
    // Waiting for time to pass is the point here: the window is a duration.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let fresh = app.succeeded_intent(1000).await;
    app.sim_faults(json!({"settlement": {"dropRate": 1}})).await;
    settle_at_sim(&app).await;
    let window = TimeDelta::from_std(app.config.settlement_window).unwrap();
    let r = round(&app, window).await;
    assert_eq!(r.discrepancies, 1, "{r:?}");
    assert_eq!(
        discrepancies(&app).await,
        [("missing_in_report".to_owned(), Some(old.clone()))]
    );
    assert!(fresh.starts_with("pi_"));
    assert_eq!(events(&app, "settlement.discrepancy_found").await, 1);
    // Flagged once, however many reports go by without it.
    app.sim_faults(json!({})).await;
    let later = app.succeeded_intent(500).await;
    settle_at_sim(&app).await;
    round(&app, window).await;
    let missing: Vec<_> = discrepancies(&app)
        .await
        .into_iter()
        .filter(|(_, r)| r.as_deref() == Some(old.as_str()))
        .collect();
    assert_eq!(missing.len(), 1);
    assert!(!discrepancies(&app)
        .await
        .iter()
        .any(|(_, r)| r.as_deref() == Some(later.as_str())));
    verify(&app).await;
}

#[tokio::test]
async fn a_charge_captured_just_now_is_not_missing() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let _pi = app.succeeded_intent(1000).await;
    app.sim_faults(json!({"settlement": {"dropRate": 1}})).await;
    settle_at_sim(&app).await;
    let r = round(&app, DEFAULT_WINDOW).await;
    assert_eq!((r.reports_reconciled, r.discrepancies), (1, 0));
    assert!(discrepancies(&app).await.is_empty());
    // Still pending: no report settled it.
    assert_eq!(balance(&app).await, (1000 - 59, 0));
}

#[tokio::test]
async fn a_malformed_report_is_alerted_and_applies_nothing() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let _pi = app.succeeded_intent(1000).await;
    let _pj = app.succeeded_intent(2000).await;
    app.sim_faults(json!({"settlement": {"malformedRate": 1, "amountSkewRate": 1}}))
        .await;
    settle_at_sim(&app).await;
    let entries = ledger_rows(&app).await;
    let failed_before = settlement::reports_failed();
    let r = round(&app, DEFAULT_WINDOW).await;
    assert_eq!((r.reports_reconciled, r.reports_failed), (0, 1), "{r:?}");
    assert!(settlement::reports_failed() > failed_before);
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_reason FROM settlement_reports")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(reason.unwrap().contains("line 3"));
    // Nothing of it: no settlement, no payout, no discrepancy (the skewed lines were read
    // before the bad one), no event.
    assert_eq!(ledger_rows(&app).await, entries);
    assert_eq!(balance(&app).await.0, (1000 - 59) + (2000 - 88));
    assert!(discrepancies(&app).await.is_empty());
    assert_eq!(app.get("/api/payouts").await.body["data"], json!([]));
    assert_eq!(events(&app, "settlement.discrepancy_found").await, 0);
    // Tried again next round, failing the same way, still applying nothing.
    let again = round(&app, DEFAULT_WINDOW).await;
    assert_eq!(again.reports_failed, 1);
    verify(&app).await;
}

/// Reconciling one payout of 100,000 lines, by hand:
/// `cargo nextest run -p paystream-tests --run-ignored only -E 'test(reconciling_a_payout_of_100k_lines)' --no-capture`.
/// The ledger is filled in bulk (copies of one real capture, under the acquirer's real charge
/// ids); the report is the simulator's; what is timed is the scheduler's settlement step.
/// Prints the time and the test process's peak resident memory before and after.
#[tokio::test]
#[ignore = "a measurement, run by hand (README, Settlement at scale)"]
async fn reconciling_a_payout_of_100k_lines() {
    const N: usize = 100_000;
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    let template = app.succeeded_intent(1000).await;

    // The acquirer's side: N real captured charges, 64 calls at a time.
    let refs: Vec<String> = (0..N).map(|i| format!("pi_bench{i:06}")).collect();
    let mut charges = Vec::with_capacity(N);
    for chunk in refs.chunks(64) {
        let calls = chunk.iter().map(|r| {
            let http = app.http.clone();
            let url = format!("{}/v1/payments", app.sim_url);
            let body = json!({"reference": r, "amount": 1000, "currency": "usd",
                "paymentMethod": "pm_card_visa", "capture": true});
            let key = format!("{r}:authorize");
            async move {
                let v: Value = http
                    .post(url)
                    .header("Idempotency-Key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["id"].as_str().unwrap().to_owned()
            }
        });
        charges.extend(futures::future::join_all(calls).await);
    }

    println!("{N} charges made at the acquirer");
    // Our side: N copies of the template's intent, postings and balance transaction.
    let mut tx = app.pool.begin().await.unwrap();
    let bulk = [
        "INSERT INTO payment_intents
         SELECT (jsonb_populate_record(NULL::payment_intents, to_jsonb(t)
             || jsonb_build_object('id', r.ref, 'acquirer_charge_id', r.ch,
                                   'client_secret', r.ref || '_secret_bench'))).*
         FROM payment_intents t, unnest($2::text[], $3::text[]) AS r(ref, ch) WHERE t.id = $1",
        "INSERT INTO ledger_transactions
         SELECT (jsonb_populate_record(NULL::ledger_transactions, to_jsonb(t)
             || jsonb_build_object('id', 'ltx_' || r.ref, 'source_id', r.ref))).*
         FROM ledger_transactions t, unnest($2::text[], $3::text[]) AS r(ref, ch)
         WHERE t.source_id = $1 AND t.kind = 'charge'",
        "INSERT INTO ledger_entries (transaction_id, merchant_id, currency, account, amount)
         SELECT 'ltx_' || r.ref, e.merchant_id, e.currency, e.account, e.amount
         FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id,
              unnest($2::text[], $3::text[]) AS r(ref, ch)
         WHERE t.source_id = $1 AND t.kind = 'charge'",
        "UPDATE ledger_accounts a SET balance = a.balance + e.amount * cardinality($2::text[])
         FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
         WHERE t.source_id = $1 AND t.kind = 'charge' AND a.merchant_id = e.merchant_id
           AND a.currency = e.currency AND a.account = e.account AND a.slot = ledger_slot($1)
           AND cardinality($3::text[]) >= 0",
        "INSERT INTO balance_transactions
         SELECT (jsonb_populate_record(NULL::balance_transactions, to_jsonb(b)
             || jsonb_build_object('id', 'txn_' || r.ref, 'source', r.ref,
                                   'ledger_transaction_id', 'ltx_' || r.ref))).*
         FROM balance_transactions b, unnest($2::text[], $3::text[]) AS r(ref, ch)
         WHERE b.source = $1",
    ];
    for statement in bulk {
        sqlx::query(statement)
            .bind(&template)
            .bind(&refs)
            .bind(&charges)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE").execute(&app.pool).await.unwrap();
    verify(&app).await;

    println!("{N} captures booked in the ledger");
    let payouts = settle_at_sim(&app).await;
    assert_eq!(payouts["data"][0]["lines"], N + 1);
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let r = round(&app, DEFAULT_WINDOW).await;
    let took = started.elapsed();
    let after = peak_rss_kib();
    assert_eq!((r.reports_reconciled, r.discrepancies), (1, 0), "{r:?}");
    assert_eq!(balance(&app).await, (0, 0));
    verify(&app).await;
    println!(
        "reconciled {} lines in {} ms; peak RSS of the test process {} MiB before, {} MiB after",
        N + 1,
        took.as_millis(),
        before / 1024,
        after / 1024
    );
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_cursor_the_acquirer_forgot_lists_from_the_start_and_a_lost_report_is_retried() {
    let app = spawn_app().await;
    let _confirm = app.start_confirm_worker();
    // A payout we recorded that the acquirer no longer knows (it was reset, say).
    paystream_shared::store::settlement_reports::record(
        &app.pool,
        "apo_forgotten",
        "usd",
        0,
        chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    app.succeeded_intent(1000).await;
    settle_at_sim(&app).await;
    let r = round(&app, DEFAULT_WINDOW).await;
    assert_eq!(r.payouts_fetched, 1, "{r:?}");
    assert_eq!((r.reports_reconciled, r.reports_failed), (1, 1), "{r:?}");
    // Its report cannot be fetched: it stays pending, not failed (nothing says it is
    // malformed), and is asked for again next round.
    let forgotten = paystream_shared::store::settlement_reports::get(&app.pool, "apo_forgotten")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(forgotten.status, "pending");
    assert_eq!(round(&app, DEFAULT_WINDOW).await.reports_failed, 1);
    assert_eq!(balance(&app).await, (0, 0));

    // An acquirer that answers nonsense is an error of the round, never a panic.
    let broken = SettlementClient::new("http://127.0.0.1:1", Duration::from_millis(200)).unwrap();
    assert!(settlement::run_once(&app.pool, &broken, DEFAULT_WINDOW)
        .await
        .is_err());
    assert!(SettlementClient::new("not a url", Duration::from_secs(1)).is_err());
}
