//! `POST /vault/internal/forward`: the number goes from the vault to the acquirer and nowhere
//! else; the acquirer's idempotency key holds through repeats.

use serde_json::{json, Value};

use paystream_shared::store::merchants::Role;
use paystream_vault::store::audit;

use crate::{bank, harness, SERVICE_TOKEN};

#[tokio::test]
async fn a_forwarded_authorization_charges_exactly_once_however_often_it_is_sent() {
    let h = harness().await;
    let vault_ref = h.stored_card("4242424242424242").await;
    let first = h.forward_authorize(&vault_ref, "pi_fwd_1").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["status"], "captured");
    assert_eq!(first.body["reference"], "pi_fwd_1");
    assert_eq!(first.headers["Vault-Forwarded"], "acquirer");
    assert!(!first.text.contains("4242424242424242"));
    let again =
        futures::future::join_all((0..3).map(|_| h.forward_authorize(&vault_ref, "pi_fwd_1")))
            .await;
    for r in &again {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.body["id"], first.body["id"],
            "the acquirer's stored answer"
        );
    }
    let charges = h.sim_charges("pi_fwd_1").await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["status"], "captured");

    // The audit log names the service, the object and the time of every forward; no number.
    let entries = audit::for_object(&h.db.pool, &vault_ref).await.unwrap();
    let forwards: Vec<_> = entries.iter().filter(|e| e.action == "forward").collect();
    assert_eq!(forwards.len(), 4);
    assert!(forwards.iter().all(|e| e.actor == "service"
        && e.merchant_id.as_deref() == Some(h.merchant_id.as_str())
        && e.detail["acquirerStatus"] == 200
        && e.detail["path"] == "/v1/payments"));
    assert!(entries
        .iter()
        .all(|e| !e.detail.to_string().contains("4242424242424242")));
}

#[tokio::test]
async fn declines_and_3ds_come_back_as_the_acquirer_said() {
    let h = harness().await;
    let declined = h.stored_card("4000000000000002").await;
    let r = h.forward_authorize(&declined, "pi_fwd_declined").await;
    assert_eq!(r.status, 402, "{}", r.text);
    assert_eq!(r.body["code"], "card_declined");
    assert_eq!(r.headers["Vault-Forwarded"], "acquirer");
    let funds = h.stored_card("4000000000009995").await;
    let r = h.forward_authorize(&funds, "pi_fwd_funds").await;
    assert_eq!(r.status, 402, "{}", r.text);
    assert_eq!(r.body["declineCode"], "insufficient_funds");
    let three_ds = h.stored_card("4000002760003184").await;
    let r = h.forward_authorize(&three_ds, "pi_fwd_3ds").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "requires_action");
    assert!(r.body["redirectUrl"].is_string());
    let failing = h.stored_card("4000000000000119").await;
    let r = h.forward_authorize(&failing, "pi_fwd_err").await;
    assert_eq!(r.status, 500, "the acquirer's own 5xx: {}", r.text);
    assert_eq!(r.headers["Vault-Forwarded"], "acquirer");

    // A bank account goes with its account number.
    let tok = h.tokenize(bank("000123456789")).await;
    let stored = h
        .consume(tok.body["id"].as_str().unwrap(), &h.merchant_id)
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body["type"], "bank_account");
    let r = h
        .forward_authorize(stored.body["vaultRef"].as_str().unwrap(), "pi_fwd_bank")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A debit: accepted now, settled by the bank later.
    assert_eq!(r.body["status"], "pending");
}

#[tokio::test]
async fn forwards_are_refused_unless_everything_checks_out() {
    let h = harness().await;
    let vault_ref = h.stored_card("4242424242424242").await;
    let body = |merchant: &str, vault_ref: &str, path: &str, extra: serde_json::Value| {
        let mut inner =
            json!({"reference": "pi_x", "amount": 100, "currency": "usd", "capture": true});
        inner
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"merchantId": merchant, "vaultRef": vault_ref, "path": path,
               "idempotencyKey": "pi_x:authorize", "body": inner})
    };
    h.service(
        "/vault/internal/forward",
        body(&h.merchant_id, &vault_ref, "/v1/refunds", json!({})),
    )
    .await
    .assert_error(400, "path_not_allowed");
    h.service(
        "/vault/internal/forward",
        body(
            &h.merchant_id,
            &vault_ref,
            "//evil.example/v1/payments",
            json!({}),
        ),
    )
    .await
    .assert_error(400, "path_not_allowed");
    let (_, other) = h.new_key("globex", Role::Admin).await;
    h.service(
        "/vault/internal/forward",
        body(&other, &vault_ref, "/v1/payments", json!({})),
    )
    .await
    .assert_error(404, "resource_missing");
    h.service(
        "/vault/internal/forward",
        body(&h.merchant_id, "vr_unknown", "/v1/payments", json!({})),
    )
    .await
    .assert_error(404, "resource_missing");
    // A token that was never consumed is no stored payment method.
    let unconsumed = h.card_token("4242424242424242").await;
    let record: String = sqlx::query_scalar("SELECT record_id FROM vault.tokens WHERE id = $1")
        .bind(unconsumed["id"].as_str().unwrap())
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    h.service(
        "/vault/internal/forward",
        body(&h.merchant_id, &record, "/v1/payments", json!({})),
    )
    .await
    .assert_error(404, "resource_missing");
    h.service(
        "/vault/internal/forward",
        body(
            &h.merchant_id,
            &vault_ref,
            "/v1/payments",
            json!({"card": {"number": "4000000000000002"}}),
        ),
    )
    .await
    .assert_error(400, "parameter_invalid");
    let r = h
        .post_raw(
            "/vault/internal/forward",
            Some("not the service token"),
            None,
            body(&h.merchant_id, &vault_ref, "/v1/payments", json!({})).to_string(),
        )
        .await;
    r.assert_error(401, "unauthorized");
    let r = h
        .post_raw(
            "/vault/internal/forward",
            Some(&h.key),
            None,
            body(&h.merchant_id, &vault_ref, "/v1/payments", json!({})).to_string(),
        )
        .await;
    r.assert_error(401, "unauthorized");
    assert!(
        h.sim_charges("pi_x").await.is_empty(),
        "nothing reached the acquirer"
    );
    let _ = SERVICE_TOKEN;
}

#[tokio::test]
async fn an_unreachable_acquirer_is_a_retryable_error_and_the_retry_charges_once() {
    let mut h = harness().await;
    let vault_ref = h.stored_card("4242424242424242").await;
    // Point the vault at a port where nothing listens, as if the acquirer were down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let live_url = h.sim.url.clone();
    h.sim.url = dead_url;
    h.restart_vault(&crate::KEK_A, None).await;
    h.sim.url = live_url;
    let r = h.forward_authorize(&vault_ref, "pi_fwd_down").await;
    r.assert_error(502, "acquirer_unreachable");
    assert!(r.headers.get("Vault-Forwarded").is_none());
    h.restart_vault(&crate::KEK_A, None).await;
    for _ in 0..2 {
        let r = h.forward_authorize(&vault_ref, "pi_fwd_down").await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(h.sim_charges("pi_fwd_down").await.len(), 1);
}

#[tokio::test]
async fn a_vault_killed_mid_forward_causes_no_second_charge() {
    let mut h = harness().await;
    let vault_ref = h.stored_card("4242424242424242").await;
    h.stop_vault().await;
    let port = crate::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = crate::spawn_vault_binary(&h, port, "info");
    crate::wait_healthy(&url).await;
    // The acquirer charges, then hangs before answering; the vault dies while it waits.
    let http = reqwest::Client::new();
    http.post(format!("{}/sim/faults", h.sim.url))
        .json(&json!({"timeoutRate": 1}))
        .send()
        .await
        .unwrap();
    let request = json!({
        "merchantId": h.merchant_id, "vaultRef": vault_ref, "path": "/v1/payments",
        "idempotencyKey": "pi_killed:authorize",
        "body": {"reference": "pi_killed", "amount": 1099, "currency": "usd", "capture": true},
    });
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        let request = request.clone();
        async move {
            http.post(format!("{url}/vault/internal/forward"))
                .bearer_auth(SERVICE_TOKEN)
                .json(&request)
                .send()
                .await
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.sim_charges("pi_killed").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the forward reached the acquirer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the caller never got an answer"
    );

    // Back up, the caller retries with the same key: the acquirer's stored charge answers.
    http.post(format!("{}/sim/faults", h.sim.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let mut child = crate::spawn_vault_binary(&h, port, "info");
    crate::wait_healthy(&url).await;
    let r = http
        .post(format!("{url}/vault/internal/forward"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "captured");
    let charges = h.sim_charges("pi_killed").await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(body["id"], charges[0]["id"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn the_client_paystream_uses_consumes_and_forwards() {
    let h = harness().await;
    let client = paystream_vault::client::VaultClient::new(
        h.url(),
        paystream_shared::secret::Secret::new(SERVICE_TOKEN.to_owned()),
    )
    .unwrap();
    let tok = h.card_token("5555555555554444").await;
    let id = tok["id"].as_str().unwrap();
    // A caller expecting another kind is refused, and the token stays usable.
    let (status, refused) = client
        .consume(id, &h.merchant_id, Some("bank_account"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "parameter_invalid");
    assert_eq!(refused["error"]["param"], "type");
    let stored = client
        .consume(id, &h.merchant_id, Some("card"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["card"]["last4"], "4444");
    let (status, refused) = client
        .consume(id, &h.merchant_id, None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "token_invalid");
    let forwarded = client
        .forward(
            &h.merchant_id,
            stored["vaultRef"].as_str().unwrap(),
            "/v1/payments",
            &json!({"reference": "pi_client", "amount": 250, "currency": "eur", "capture": false}),
            "pi_client:authorize",
        )
        .await
        .unwrap();
    let charge: Value = serde_json::from_slice(&forwarded.body).unwrap();
    assert_eq!(forwarded.status, 200, "{charge}");
    assert!(forwarded.from_acquirer);
    assert_eq!(charge["status"], "authorized");
    assert_eq!(h.sim_charges("pi_client").await.len(), 1);
    // The vault's own refusal is not marked as the acquirer's.
    let refused = client
        .forward(
            &h.merchant_id,
            "vr_missing",
            "/v1/payments",
            &json!({}),
            "k",
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 404);
    assert!(!refused.from_acquirer);
}
