//! Disputes: chargebacks from the simulator's notifications, the money they move, evidence,
//! submit and close, the refund guard, and concurrent duplicate notifications.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use paystream_shared::store::balance_transactions;
use paystream_shared::store::merchants::Role;
use paystream_tests::provider::notification;
use paystream_tests::{eventually, spawn_app, Reply, TestApp};

const WAIT: Duration = Duration::from_secs(30);
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

/// The one dispute of an intent, once it exists.
async fn dispute_of(app: &TestApp, pi: &str) -> Value {
    eventually(WAIT, &format!("a dispute on {pi}"), || async {
        let r = app
            .get(&format!("/api/disputes?paymentIntentId={pi}"))
            .await;
        r.body["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await
}

async fn wait_dispute(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(WAIT, &format!("dispute {id} to be {status}"), || async {
        let r = app.get(&format!("/api/disputes/{id}")).await;
        (r.body["status"] == status).then_some(r.body)
    })
    .await
}

/// A `multipart/form-data` body: `(name, filename, content)` per part.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "paystreamtestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(app: &TestApp, id: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Reply {
    let (content_type, body) = form(parts);
    app.raw(
        app.http
            .post(format!("{}/api/disputes/{id}/evidence", app.address))
            .bearer_auth(&app.api_key)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn open_chargeback(app: &TestApp, pi: &str) {
    let r = app
        .http
        .post(format!("{}/sim/disputes", app.sim_url))
        .json(&json!({"reference": pi, "reason": "product_not_received"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn event_types(app: &TestApp, object_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT type FROM events WHERE object_id = $1 ORDER BY created_at, id")
        .bind(object_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn ledger_and_audit_verify(app: &TestApp) {
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(
        paystream_shared::ledger::verify(&mut conn).await.unwrap(),
        Ok(())
    );
    let report = paystream_shared::audit::verify(&app.pool).await.unwrap();
    assert_eq!(report.first_bad, None);
}

#[tokio::test]
async fn a_dispute_card_is_charged_back_withdrawn_and_cannot_be_refunded() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.create_and_confirm("pm_card_createDispute").await;
    app.wait_for_status(&pi, &["succeeded"], WAIT).await;

    let d = dispute_of(&app, &pi).await;
    let id = d["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("dp_"));
    assert_eq!(d["status"], "needs_response");
    assert_eq!(
        (d["amount"].as_i64(), d["currency"].as_str()),
        (Some(1099), Some("usd"))
    );
    assert_eq!(d["reason"], "fraudulent");
    assert_eq!(d["evidenceDetails"]["submissionCount"], 0);
    assert_eq!(d["evidenceDetails"]["pastDue"], false);
    assert_eq!(d["balanceTransactions"].as_array().unwrap().len(), 1);

    // The amount and the dispute fee left the merchant's balance.
    let bts = balance_transactions::for_source(&app.pool, &app.merchant_id, &id)
        .await
        .unwrap();
    assert_eq!(bts.len(), 1);
    assert_eq!(bts[0].reporting_category, "dispute");
    assert_eq!(
        (bts[0].amount, bts[0].fee, bts[0].net),
        (-1099, 1500, -2599)
    );
    assert_eq!(
        event_types(&app, &id).await,
        ["dispute.created", "dispute.funds_withdrawn"]
    );

    // Refunding a disputed payment is refused.
    let r = app
        .post("/api/refunds", json!({"paymentIntentId": pi}))
        .await;
    r.assert_error(409, "charge_disputed");

    // Filters and other merchants.
    let r = app.get("/api/disputes?status=needs_response").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = app.get("/api/disputes?status=won").await;
    assert!(r.body["data"].as_array().unwrap().is_empty());
    app.get("/api/disputes?status=open")
        .await
        .assert_error(400, "parameter_invalid");
    let other = app.other_merchant("other", Role::Admin).await;
    let r = app.get_as(&other, &format!("/api/disputes/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.get_as(&other, "/api/disputes").await;
    assert!(r.body["data"].as_array().unwrap().is_empty());
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/api/disputes/{id}/close"),
            Some(&other),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The creation is in the audit log, by the acquirer.
    let r = app.get(&format!("/api/audit-log?objectId={id}")).await;
    let entries = r.body["data"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "dispute.created" && e["actor"] == "acquirer"),
        "{}",
        r.text
    );
    ledger_and_audit_verify(&app).await;
}

#[tokio::test]
async fn winning_evidence_wins_and_reinstates_anything_else_loses() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let win_pi = app.succeeded_intent(5000).await;
    let lose_pi = app.succeeded_intent(3000).await;
    open_chargeback(&app, &win_pi).await;
    open_chargeback(&app, &lose_pi).await;
    let win = dispute_of(&app, &win_pi).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lose = dispute_of(&app, &lose_pi).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Evidence with a receipt, readable again.
    let r = upload(
        &app,
        &win,
        &[
            (
                "uncategorizedText",
                None,
                b"winning_evidence: delivered and signed for",
            ),
            ("productDescription", None, b"A blue kettle"),
            ("receipt", Some("receipt.pdf"), PDF),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["evidence"]["productDescription"], "A blue kettle");
    let files = r.body["evidence"]["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["contentType"], "application/pdf");
    assert_eq!(files[0]["purpose"], "receipt");
    assert_eq!(files[0]["size"], PDF.len());
    assert_eq!(r.body["evidenceDetails"]["hasEvidence"], true);
    let file_id = files[0]["id"].as_str().unwrap();
    let back = app
        .http
        .get(format!(
            "{}/api/disputes/{win}/files/{file_id}",
            app.address
        ))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert_eq!(back.bytes().await.unwrap().as_ref(), PDF);
    // At rest it is sealed, not the PDF.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM dispute_files WHERE id = $1")
        .bind(file_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!sealed.windows(5).any(|w| w == b"%PDF-"));
    let r = upload(
        &app,
        &lose,
        &[("uncategorizedText", None, b"we have no receipt")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    for id in [&win, &lose] {
        let r = app
            .post(&format!("/api/disputes/{id}/submit"), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["status"], "under_review");
        assert_eq!(r.body["evidenceDetails"]["submissionCount"], 1);
        // Once only; no more evidence either.
        app.post(&format!("/api/disputes/{id}/submit"), json!({}))
            .await
            .assert_error(409, "dispute_not_editable");
        upload(&app, id, &[("refundPolicy", None, b"none")])
            .await
            .assert_error(409, "dispute_not_editable");
    }
    let won = wait_dispute(&app, &win, "won").await;
    let lost = wait_dispute(&app, &lose, "lost").await;
    assert_eq!(won["balanceTransactions"].as_array().unwrap().len(), 2);
    assert_eq!(lost["balanceTransactions"].as_array().unwrap().len(), 1);
    let bts = balance_transactions::for_source(&app.pool, &app.merchant_id, &win)
        .await
        .unwrap();
    let reversal = bts
        .iter()
        .find(|b| b.reporting_category == "dispute_reversal")
        .expect("a reinstatement");
    assert_eq!((reversal.amount, reversal.fee), (5000, 0));
    assert!(event_types(&app, &win)
        .await
        .contains(&"dispute.funds_reinstated".to_owned()));
    let lost_events = event_types(&app, &lose).await;
    assert!(lost_events.contains(&"dispute.closed".to_owned()));
    assert!(!lost_events.contains(&"dispute.funds_reinstated".to_owned()));
    // Disputes that ended free the payment for refunds again.
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": win_pi, "amount": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    ledger_and_audit_verify(&app).await;
}

#[tokio::test]
async fn twenty_concurrent_duplicate_chargebacks_make_one_dispute_and_one_withdrawal() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(2500).await;
    let charge = app.sim_charges(&pi).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = json!({"id": "chb_concurrent1", "payment": charge, "reference": pi,
        "amount": 2500, "currency": "usd", "reason": "duplicate", "status": "needs_response",
        "evidenceDueBy": "2099-01-01T00:00:00Z", "createdAt": "2026-01-01T00:00:00Z"});
    // Twenty notifications with their own ids for one chargeback, plus one sent twice.
    let mut events: Vec<Value> = (0..20)
        .map(|_| notification("dispute.created", data.clone()))
        .collect();
    events.push(events[0].clone());
    let answers = futures::future::join_all(events.iter().map(|e| app.notify(e))).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    for e in &events {
        let id = e["id"].as_str().unwrap();
        eventually(WAIT, &format!("{id} processed"), || async {
            app.provider_event(id).await?.processed_at
        })
        .await;
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM disputes WHERE payment_intent_id = $1")
            .bind(&pi)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    let d = dispute_of(&app, &pi).await;
    let bts =
        balance_transactions::for_source(&app.pool, &app.merchant_id, d["id"].as_str().unwrap())
            .await
            .unwrap();
    assert_eq!(bts.len(), 1);

    // A chargeback that does not match its intent is refused (dead-lettered), not created.
    let mut bad = data.clone();
    bad["id"] = json!("chb_toomuch");
    bad["amount"] = json!(999_999);
    let e = notification("dispute.created", bad);
    assert_eq!(app.notify(&e).await.status, StatusCode::OK);
    let id = e["id"].as_str().unwrap();
    eventually(WAIT, "the mismatched chargeback dead-lettered", || async {
        app.provider_event(id).await?.error
    })
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM disputes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    ledger_and_audit_verify(&app).await;
}

#[tokio::test]
async fn evidence_is_checked_by_content_and_size_and_close_accepts_the_loss() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(1200).await;
    open_chargeback(&app, &pi).await;
    let id = dispute_of(&app, &pi).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // HTML named .png, an oversized file, an unknown field: 400, nothing stored.
    upload(
        &app,
        &id,
        &[(
            "receipt",
            Some("receipt.png"),
            b"<html><script>x</script></html>",
        )],
    )
    .await
    .assert_error(400, "parameter_invalid");
    let mut big = b"%PDF-".to_vec();
    big.resize(6 * 1024 * 1024, b'a');
    upload(&app, &id, &[("receipt", Some("big.pdf"), &big)])
        .await
        .assert_error(400, "parameter_invalid");
    upload(&app, &id, &[("cardNumber", None, b"x")])
        .await
        .assert_error(400, "parameter_invalid");
    let nine: Vec<(&str, Option<&str>, &[u8])> = (0..9)
        .map(|_| ("uncategorizedFile", Some("a.pdf"), PDF))
        .collect();
    upload(&app, &id, &nine)
        .await
        .assert_error(400, "parameter_invalid");
    // Not a form at all: a 400 too.
    let r = app
        .post(
            &format!("/api/disputes/{id}/evidence"),
            json!({"uncategorizedText": "x"}),
        )
        .await;
    r.assert_error(400, "body_invalid");
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, None, None)
        .await;
    for path in [
        "/disputes",
        "/disputes/{id}",
        "/disputes/{id}/submit",
        "/disputes/{id}/close",
        "/disputes/{id}/evidence",
        "/disputes/{id}/files/{file_id}",
    ] {
        assert!(spec.body["paths"][path].is_object(), "{path} is documented");
    }
    let r = app.get(&format!("/api/disputes/{id}")).await;
    assert!(r.body["evidence"]["files"].as_array().unwrap().is_empty());
    assert_eq!(r.body["evidenceDetails"]["hasEvidence"], false);
    app.get(&format!("/api/disputes/{id}/files/file_nope"))
        .await
        .assert_error(404, "resource_missing");
    app.get("/api/disputes/dp_nope")
        .await
        .assert_error(404, "resource_missing");

    let r = app
        .post(&format!("/api/disputes/{id}/close"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "lost");
    app.post(&format!("/api/disputes/{id}/close"), json!({}))
        .await
        .assert_error(409, "dispute_not_editable");
    upload(&app, &id, &[("refundPolicy", None, b"none")])
        .await
        .assert_error(409, "dispute_not_editable");
    let r = app.get(&format!("/api/audit-log?objectId={id}")).await;
    assert!(r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "dispute.closed"
            && e["actor"].as_str().unwrap().starts_with("api_key:")));
}

#[tokio::test]
async fn a_refund_racing_a_chargeback_waits_for_it_and_is_refused() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let pi = app.succeeded_intent(4000).await;
    let intent = paystream_shared::store::payment_intents::get(&app.pool, &app.merchant_id, &pi)
        .await
        .unwrap()
        .unwrap();
    // The chargeback's transaction holds the intent's lock, as the processor does...
    let mut tx = app.pool.begin().await.unwrap();
    let locked =
        paystream_shared::store::payment_intents::get_for_update(&mut tx, &app.merchant_id, &pi)
            .await
            .unwrap()
            .unwrap();
    paystream_shared::store::disputes::create(
        &mut tx,
        &locked,
        paystream_shared::store::disputes::NewDispute {
            acquirer_dispute_id: "chb_race1",
            acquirer_charge_id: intent.acquirer_charge_id.as_deref().unwrap(),
            amount: intent.amount_received,
            currency: intent.currency,
            reason: "fraudulent",
            evidence_due_by: chrono::Utc::now() + chrono::Duration::days(7),
        },
        &paystream_shared::audit::Actor::System("acquirer"),
    )
    .await
    .unwrap()
    .expect("created");
    // ...while a refund arrives: it must wait for the lock, not decide without the dispute.
    let refund = {
        let app = &app;
        let pi = pi.clone();
        async move {
            app.post("/api/refunds", json!({"paymentIntentId": pi}))
                .await
        }
    };
    let commit = async {
        // Until the refund is waiting on the lock, the race has not begun.
        eventually(WAIT, "the refund to wait on the intent's lock", || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
        tx.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(refund, commit);
    r.assert_error(409, "charge_disputed");
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refunds WHERE payment_intent_id = $1")
            .bind(&pi)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(refunds, 0);
}

/// Sends a chargeback notification for `pi` due at `due`, and waits for its dispute.
async fn chargeback_due(
    app: &TestApp,
    pi: &str,
    chb: &str,
    due: chrono::DateTime<chrono::Utc>,
) -> String {
    let charge = app.sim_charges(pi).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = json!({"id": chb, "payment": charge, "reference": pi, "amount": 700,
        "currency": "usd", "reason": "general", "status": "needs_response",
        "evidenceDueBy": due.to_rfc3339(), "createdAt": "2026-01-01T00:00:00Z"});
    let r = app.notify(&notification("dispute.created", data)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    dispute_of(app, pi).await["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_deadline_alert_fires_once_at_48_hours_and_a_missed_deadline_is_lost() {
    use paystream_workers::dispute_deadlines::{alert_approaching, expire_past_due};
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let now = chrono::Utc::now();
    let soon_pi = app.succeeded_intent(700).await;
    let later_pi = app.succeeded_intent(700).await;
    let missed_pi = app.succeeded_intent(700).await;
    let soon = chargeback_due(
        &app,
        &soon_pi,
        "chb_soon",
        now + chrono::Duration::hours(47),
    )
    .await;
    let later = chargeback_due(
        &app,
        &later_pi,
        "chb_later",
        now + chrono::Duration::hours(49),
    )
    .await;
    let missed = chargeback_due(
        &app,
        &missed_pi,
        "chb_missed",
        now - chrono::Duration::minutes(1),
    )
    .await;

    // Evidence is refused once the deadline has passed.
    upload(&app, &missed, &[("refundPolicy", None, b"30 days")])
        .await
        .assert_error(409, "dispute_not_editable");
    app.post(&format!("/api/disputes/{missed}/submit"), json!({}))
        .await
        .assert_error(409, "dispute_not_editable");

    // Two rounds (a restart, a new leader): one alert each for the two within 48 h.
    let first = alert_approaching(&app.pool, 100).await.unwrap();
    let second = alert_approaching(&app.pool, 100).await.unwrap();
    assert_eq!((first, second), (2, 0));
    let alerts = |id: String| {
        let app = &app;
        async move {
            event_types(app, &id)
                .await
                .iter()
                .filter(|t| *t == "dispute.deadline_approaching")
                .count()
        }
    };
    assert_eq!(alerts(soon.clone()).await, 1);
    assert_eq!(alerts(later.clone()).await, 0);

    assert_eq!(expire_past_due(&app.pool, 100).await.unwrap(), 1);
    assert_eq!(expire_past_due(&app.pool, 100).await.unwrap(), 0);
    let r = app.get(&format!("/api/disputes/{missed}")).await;
    assert_eq!(r.body["status"], "lost");
    assert_eq!(r.body["evidenceDetails"]["pastDue"], true);
    assert_eq!(
        app.get(&format!("/api/disputes/{soon}")).await.body["status"],
        "needs_response"
    );
    // The lost dispute keeps its withdrawal and frees the payment for refunds.
    assert_eq!(r.body["balanceTransactions"].as_array().unwrap().len(), 1);
    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": missed_pi, "amount": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    ledger_and_audit_verify(&app).await;
}

#[tokio::test]
async fn a_chargeback_and_its_reversal_are_settled_by_the_acquirers_report() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    // The worker that handles the acquirer's notifications, chargebacks among them.
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(5000).await;
    open_chargeback(&app, &pi).await;
    let dp = dispute_of(&app, &pi).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = upload(
        &app,
        &dp,
        &[("uncategorizedText", None, b"winning_evidence: signed for")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(&format!("/api/disputes/{dp}/submit"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    wait_dispute(&app, &dp, "won").await;
    let chb: String = sqlx::query_scalar("SELECT acquirer_dispute_id FROM disputes WHERE id = $1")
        .bind(&dp)
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // Charge 5000 less 175 in fees; the chargeback -5000 and the 1500 dispute fee; the
    // reversal +5000 with no fee.
    let net = (5000 - 175) + (-5000 - 1500) + 5000;
    let b = paystream_shared::ledger::balance(&app.pool, &app.merchant_id)
        .await
        .unwrap();
    assert_eq!(b.pending.get("usd").copied(), Some(net));

    let r = app
        .http
        .post(format!("{}/sim/settle", app.sim_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let payouts: Value = r.json().await.unwrap();
    assert_eq!(payouts["data"].as_array().unwrap().len(), 1);
    assert_eq!(payouts["data"][0]["amount"], net);
    let apo = payouts["data"][0]["id"].as_str().unwrap().to_owned();
    let csv = app
        .http
        .get(format!("{}/v1/payouts/{apo}/report.csv", app.sim_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    lines.sort_by(|a, b| a[1].cmp(&b[1]));
    let shape: Vec<(&str, &str, i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l[1].as_str(),
                l[2].as_str(),
                l[5].parse().unwrap(),
                l[6].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("charge", pi.as_str(), 5000, 175),
            ("chargeback", pi.as_str(), -5000, 1500),
            ("chargeback_reversal", pi.as_str(), 5000, 0),
        ]
    );
    // Both dispute lines name the acquirer's chargeback.
    assert_eq!(lines[1][3], chb);
    assert_eq!(lines[2][3], chb);

    let client =
        paystream_workers::settlement::SettlementClient::new(&app.sim_url, Duration::from_secs(5))
            .unwrap();
    let report =
        paystream_workers::settlement::run_once(&app.pool, &client, chrono::TimeDelta::days(2))
            .await
            .unwrap();
    assert_eq!((report.reports_reconciled, report.discrepancies), (1, 0));
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM settlement_discrepancies")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(kinds.is_empty(), "{kinds:?}");
    // Settled into available and paid out of it: nothing pending, nothing left.
    let b = paystream_shared::ledger::balance(&app.pool, &app.merchant_id)
        .await
        .unwrap();
    assert_eq!(
        (
            b.pending.get("usd").copied(),
            b.available.get("usd").copied()
        ),
        (Some(0), Some(0))
    );
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT reporting_category, status FROM balance_transactions
         WHERE source = $1 OR source = $2 ORDER BY reporting_category",
    )
    .bind(&pi)
    .bind(&dp)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let want = |c: &str| (c.to_owned(), "available".to_owned());
    assert_eq!(
        statuses,
        vec![want("charge"), want("dispute"), want("dispute_reversal")]
    );
    let list = app.get("/api/payouts").await;
    assert_eq!(list.body["data"][0]["amount"], net);
    assert_eq!(
        list.body["data"][0]["reconciliation"],
        json!({"status": "matched", "lines": 3, "matched": 3, "discrepancies": 0})
    );
    ledger_and_audit_verify(&app).await;
}
