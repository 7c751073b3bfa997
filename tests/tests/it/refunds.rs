//! Refunds: never more than was received, exact `amountRefunded`, at most one refund at the
//! acquirer per refund of ours.

use std::time::Duration;

use paystream_shared::store::merchants::Role;
use paystream_tests::{eventually, spawn_app};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_refund(app: &paystream_tests::TestApp, id: &str, status: &str) -> serde_json::Value {
    eventually(WAIT, &format!("refund {id} to be {status}"), || async {
        let r = app.get(&format!("/api/refunds/{id}")).await;
        (r.body["status"] == status).then_some(r.body)
    })
    .await
}

#[tokio::test]
async fn partial_then_full_refund_ends_refunded_with_the_exact_amount() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pi = app.succeeded_intent(1000).await;

    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": 300, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["amount"], 300);
    assert_eq!(r.body["currency"], "usd");
    assert!(r.body["id"].as_str().unwrap().starts_with("re_"));
    let first = wait_refund(&app, r.body["id"].as_str().unwrap(), "succeeded").await;
    assert!(first["processedAt"].is_string());
    let intent = app.get(&format!("/api/payment-intents/{pi}")).await.body;
    assert_eq!(
        (
            intent["status"].as_str().unwrap(),
            intent["amountRefunded"].as_i64().unwrap()
        ),
        ("succeeded", 300)
    );

    // No amount: everything that is left, through the intent's alias.
    let r = app
        .post(&format!("/api/payment-intents/{pi}/refund"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["amount"], 700);
    wait_refund(&app, r.body["id"].as_str().unwrap(), "succeeded").await;
    let intent = app.wait_for_status(&pi, &["refunded"], WAIT).await;
    assert_eq!(intent["amountRefunded"], 1000);
    assert_eq!(app.acquirer_totals(&pi).await, (1000, 1000));

    app.post(&format!("/api/payment-intents/{pi}/refund"), json!({}))
        .await
        .assert_error(409, "invalid_state_transition");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM events WHERE type LIKE 'refund.%' ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.succeeded"
        ]
    );
    let list = app.get(&format!("/api/refunds?paymentIntentId={pi}")).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(list.body["data"][0]["amount"], 700, "newest first");
}

#[tokio::test]
async fn ten_concurrent_refunds_of_forty_percent_accept_at_most_two() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let pi = app.succeeded_intent(1000).await;
    let replies = futures::future::join_all((0..10).map(|_| {
        app.post(
            "/api/refunds",
            json!({"paymentIntentId": pi, "amount": 400}),
        )
    }))
    .await;
    let accepted = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        accepted,
        2,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 201) {
        r.assert_error(400, "amount_too_large");
    }
    let total: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::bigint FROM refunds WHERE status <> 'failed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(total <= 1000);
    assert_eq!(total, 800);
}

#[tokio::test]
async fn refunding_what_pending_refunds_already_cover_is_amount_too_large() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    // No refund worker: the first refund stays pending, the intent stays `succeeded`.
    let pi = app.succeeded_intent(800).await;
    let r = app
        .post("/api/refunds", json!({"paymentIntentId": pi}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["amount"], 800);
    for body in [
        json!({"paymentIntentId": pi}),
        json!({"paymentIntentId": pi, "amount": 1}),
    ] {
        let r = app.post("/api/refunds", body).await;
        r.assert_error(400, "amount_too_large");
        assert_eq!(r.error_param(), "amount");
    }
    app.post(&format!("/api/payment-intents/{pi}/refund"), json!({}))
        .await
        .assert_error(400, "amount_too_large");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn refund_rules_and_bad_input() {
    let app = spawn_app().await;
    let unpaid = app.create_intent(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post("/api/refunds", json!({"paymentIntentId": unpaid}))
        .await
        .assert_error(409, "invalid_state_transition");
    app.post("/api/refunds", json!({"paymentIntentId": "pi_missing"}))
        .await
        .assert_error(404, "resource_missing");
    app.post("/api/refunds", json!({"paymentIntentId": "nope"}))
        .await
        .assert_error(404, "resource_missing");
    app.post("/api/refunds", json!({}))
        .await
        .assert_error(400, "parameter_missing");
    app.post(
        "/api/refunds",
        json!({"paymentIntentId": unpaid, "amount": 0}),
    )
    .await
    .assert_error(400, "amount_too_small");
    app.post(
        "/api/refunds",
        json!({"paymentIntentId": unpaid, "amount": 1.5}),
    )
    .await
    .assert_error(400, "parameter_invalid");
    app.post(
        "/api/refunds",
        json!({"paymentIntentId": unpaid, "reason": "regret"}),
    )
    .await
    .assert_error(400, "parameter_invalid");
    app.get("/api/refunds/re_missing")
        .await
        .assert_error(404, "resource_missing");

    let _c = app.start_confirm_worker();
    let pi = app.succeeded_intent(500).await;
    app.post(
        "/api/refunds",
        json!({"paymentIntentId": pi, "amount": 501}),
    )
    .await
    .assert_error(400, "amount_too_large");
    // Another merchant cannot refund or see it.
    let other = app.other_merchant("globex", Role::Admin).await;
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/refunds",
            Some(&other),
            None,
            Some(json!({"paymentIntentId": pi})),
        )
        .await;
    r.assert_error(404, "resource_missing");
    let mine = app
        .post_idem(
            "/api/refunds",
            "refund-once",
            json!({"paymentIntentId": pi, "amount": 100}),
        )
        .await;
    assert_eq!(mine.status, 201);
    let again = app
        .post_idem(
            "/api/refunds",
            "refund-once",
            json!({"paymentIntentId": pi, "amount": 100}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], mine.body["id"]);
    let id = mine.body["id"].as_str().unwrap();
    app.get_as(&other, &format!("/api/refunds/{id}"))
        .await
        .assert_error(404, "resource_missing");
    // A list cursor must be a refund of the caller's, as in every other list.
    let page = app.get(&format!("/api/refunds?startingAfter={id}")).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["data"], json!([]));
    let r = app.get("/api/refunds?startingAfter=re_missing").await;
    r.assert_error(400, "resource_missing");
    assert_eq!(r.error_param(), "startingAfter");
    let r = app
        .get_as(&other, &format!("/api/refunds?startingAfter={id}"))
        .await;
    r.assert_error(400, "resource_missing");
    assert_eq!(r.error_param(), "startingAfter");
    assert_eq!(
        app.get_as(&other, "/api/refunds").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "the idempotent replay created nothing");
}

#[tokio::test]
async fn a_killed_refund_worker_never_refunds_twice() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let mut intents = Vec::new();
    for _ in 0..20 {
        intents.push(app.succeeded_intent(1000).await);
    }
    app.sim_faults(json!({"latencyMs": 20})).await;
    let mut victim = app.spawn_worker_process("refund-worker");
    for pi in &intents {
        for _ in 0..2 {
            let r = app
                .post(
                    "/api/refunds",
                    json!({"paymentIntentId": pi, "amount": 500}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
    }
    eventually(WAIT, "some refunds to settle", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (n >= 8).then_some(())
    })
    .await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(victim.id().to_string())
        .status()
        .unwrap();
    let _ = victim.wait();
    let mut replacement = app.spawn_worker_process("refund-worker");
    eventually(
        Duration::from_secs(90),
        "every refund to settle",
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'succeeded'")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            (n == 40).then_some(())
        },
    )
    .await;
    for pi in &intents {
        assert_eq!(
            app.acquirer_totals(pi).await,
            (1000, 1000),
            "{pi}: one acquirer refund per refund of ours"
        );
        assert_eq!(
            app.get(&format!("/api/payment-intents/{pi}")).await.body["status"],
            "refunded"
        );
    }
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(replacement.id().to_string())
        .status()
        .unwrap();
    let _ = replacement.wait();
}
