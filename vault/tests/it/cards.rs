//! `POST /vault/tokens`: validation, keys and roles, idempotency, fingerprints.

use serde_json::json;

use paystream_shared::store::merchants::Role;

use crate::{bank, card, harness};

#[tokio::test]
async fn a_card_becomes_a_token_with_display_fields_only() {
    let h = harness().await;
    let r = h.tokenize(card("4242424242424242")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let b = &r.body;
    assert!(b["id"].as_str().unwrap().starts_with("tok_"), "{b}");
    assert_eq!(b["type"], "card");
    assert_eq!(b["card"]["brand"], "visa");
    assert_eq!(b["card"]["last4"], "4242");
    assert_eq!(b["card"]["expMonth"], 12);
    assert_eq!(b["card"]["expYear"], 2099);
    assert_eq!(b["card"]["funding"], "credit");
    assert!(b["card"]["fingerprint"].as_str().unwrap().len() >= 16);
    assert!(!r.text.contains("4242424242424242") && !r.text.contains("\"123\""));
    let created = chrono::DateTime::parse_from_rfc3339(b["createdAt"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(b["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_minutes(), 15);

    let r = h.tokenize(bank("000123456789")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["type"], "bank_account");
    let ba = &r.body["bankAccount"];
    assert_eq!(ba["last4"], "6789");
    assert_eq!(ba["routingNumber"], "110000000");
    assert_eq!(ba["country"], "US");
    assert_eq!(ba["accountHolderType"], "individual");
    assert_eq!(ba["bankName"], "STRIPE TEST BANK");
    assert!(!r.text.contains("000123456789"));
}

#[tokio::test]
async fn every_invalid_card_or_account_is_a_400_naming_its_param() {
    let h = harness().await;
    let with = |path: &str, value: serde_json::Value| {
        let mut b = card("4242424242424242");
        *b.pointer_mut(path).unwrap() = value;
        b
    };
    let mut unknown = card("4242424242424242");
    unknown["card"]["name"] = json!("Jenny");
    let mut unknown_top = card("4242424242424242");
    unknown_top["customer"] = json!("cus_1");
    let mut both = card("4242424242424242");
    both["bankAccount"] = bank("000123456789")["bankAccount"].clone();
    let mut bad_routing = bank("000123456789");
    bad_routing["bankAccount"]["routingNumber"] = json!("110000001");
    let mut bad_holder = bank("000123456789");
    bad_holder["bankAccount"]["accountHolderType"] = json!("trust");
    let cases = [
        (
            with("/card/number", json!("4242424242424241")),
            "incorrect_number",
            "card.number",
        ),
        (
            with("/card/number", json!("42424242")),
            "incorrect_number",
            "card.number",
        ),
        (
            with("/card/expYear", json!(2020)),
            "expired_card",
            "card.expYear",
        ),
        (
            with("/card/expMonth", json!(0)),
            "invalid_expiry_month",
            "card.expMonth",
        ),
        (with("/card/cvc", json!("12")), "invalid_cvc", "card.cvc"),
        (with("/card/cvc", json!("12345")), "invalid_cvc", "card.cvc"),
        (
            with("/card/cvc", json!(123)),
            "parameter_invalid",
            "card.cvc",
        ),
        (
            with("/card/number", json!(4242424242424242u64)),
            "parameter_invalid",
            "card.number",
        ),
        (unknown, "parameter_unknown", "card.name"),
        (unknown_top, "parameter_unknown", "customer"),
        (
            json!({"card": {"number": "4242424242424242"}}),
            "parameter_missing",
            "card.expMonth",
        ),
        (json!({}), "parameter_missing", "card"),
        (both, "parameter_invalid", "bankAccount"),
        (
            bad_routing,
            "routing_number_invalid",
            "bankAccount.routingNumber",
        ),
        (
            bank("12"),
            "account_number_invalid",
            "bankAccount.accountNumber",
        ),
        (
            bad_holder,
            "parameter_invalid",
            "bankAccount.accountHolderType",
        ),
    ];
    for (body, code, param) in cases {
        let r = h.tokenize(body.clone()).await;
        r.assert_error(400, code);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
        assert!(!r.text.contains("4242424242424242"), "{}", r.text);
        assert!(!r.text.contains("4242424242424241"), "{}", r.text);
    }
    let r = h
        .post_raw("/vault/tokens", Some(&h.key), None, "{not json".into())
        .await;
    r.assert_error(400, "invalid_json");
    let r = h
        .post_raw("/vault/tokens", Some(&h.key), None, "x".repeat(100_000))
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.records")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing invalid was stored");
}

#[tokio::test]
async fn publishable_and_secret_keys_tokenize_and_nothing_else_does() {
    let h = harness().await;
    let (pk, _) = h.new_key("acme", Role::Publishable).await;
    assert!(pk.starts_with("pk_"));
    let r = h.tokenize_as(&pk, card("5555555555554444")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["card"]["brand"], "mastercard");
    let (ro, _) = h.new_key("acme", Role::ReadOnly).await;
    h.tokenize_as(&ro, card("4242424242424242"))
        .await
        .assert_error(403, "role_not_allowed");
    h.tokenize_as("sk_not_a_key", card("4242424242424242"))
        .await
        .assert_error(401, "unauthorized");
    h.post_raw(
        "/vault/tokens",
        None,
        None,
        card("4242424242424242").to_string(),
    )
    .await
    .assert_error(401, "unauthorized");
    // The service credential is for the internal endpoints, not for tokens.
    h.tokenize_as(crate::SERVICE_TOKEN, card("4242424242424242"))
        .await
        .assert_error(401, "unauthorized");
    // And a merchant key does not open the internal endpoints.
    let tok = h.card_token("4242424242424242").await;
    let r = h
        .post_raw(
            &format!(
                "/vault/internal/tokens/{}/consume",
                tok["id"].as_str().unwrap()
            ),
            Some(&h.key),
            None,
            json!({"merchantId": h.merchant_id}).to_string(),
        )
        .await;
    r.assert_error(401, "unauthorized");
    h.post_raw("/nowhere", None, None, String::new())
        .await
        .assert_error(404, "resource_missing");
}

#[tokio::test]
async fn idempotency_key_replays_the_token_and_refuses_another_body() {
    let h = harness().await;
    let body = card("4242424242424242").to_string();
    let first = h
        .post_raw(
            "/vault/tokens",
            Some(&h.key),
            Some("tok-order-1"),
            body.clone(),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(first.headers.get("Idempotent-Replayed").is_none());
    // The same body with its keys in another order is the same request.
    let reordered = r#"{"card": {"cvc": "123", "expYear": 2099, "expMonth": 12, "number": "4242424242424242"}}"#;
    let again = h
        .post_raw(
            "/vault/tokens",
            Some(&h.key),
            Some("tok-order-1"),
            reordered.into(),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["Idempotent-Replayed"], "true");
    assert_eq!(again.body, first.body);
    let other = h
        .post_raw(
            "/vault/tokens",
            Some(&h.key),
            Some("tok-order-1"),
            card("5555555555554444").to_string(),
        )
        .await;
    other.assert_error(422, "idempotency_key_reused");
    // A validation error is an answer too, replayed with its status.
    let bad = card("4242424242424241").to_string();
    h.post_raw("/vault/tokens", Some(&h.key), Some("tok-bad"), bad.clone())
        .await
        .assert_error(400, "incorrect_number");
    let replay = h
        .post_raw("/vault/tokens", Some(&h.key), Some("tok-bad"), bad)
        .await;
    replay.assert_error(400, "incorrect_number");
    assert_eq!(replay.headers["Idempotent-Replayed"], "true");
    // Keys are per merchant: another merchant's same key runs anew.
    let (other_key, _) = h.new_key("globex", Role::Admin).await;
    let r = h
        .post_raw(
            "/vault/tokens",
            Some(&other_key),
            Some("tok-order-1"),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_ne!(r.body["id"], first.body["id"]);

    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.tokens")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(tokens, 2, "the replay created nothing");
    let stored: Vec<String> = sqlx::query_scalar("SELECT t::text FROM vault.idempotency_keys t")
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
    for row in stored {
        for e in crate::encodings("4242424242424242") {
            assert!(!row.contains(&e), "stored replay holds the number: {row}");
        }
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_token() {
    let h = harness().await;
    let body = card("4242424242424242").to_string();
    let replies = futures::future::join_all((0..6).map(|_| {
        h.post_raw(
            "/vault/tokens",
            Some(&h.key),
            Some("tok-race"),
            body.clone(),
        )
    }))
    .await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{replies:?}");
    assert!(replies
        .iter()
        .all(|r| r.body["id"] == replies[0].body["id"]));
}

#[tokio::test]
async fn fingerprints_are_per_card_and_per_merchant() {
    let h = harness().await;
    let a1 = h.card_token("4242424242424242").await;
    let a2 = h.card_token("4242424242424242").await;
    let a3 = h.card_token("5555555555554444").await;
    assert_ne!(a1["id"], a2["id"], "two tokens");
    assert_eq!(a1["card"]["fingerprint"], a2["card"]["fingerprint"]);
    assert_ne!(a1["card"]["fingerprint"], a3["card"]["fingerprint"]);
    let (other, _) = h.new_key("globex", Role::Admin).await;
    let b = h.tokenize_as(&other, card("4242424242424242")).await;
    assert_eq!(b.status, 201);
    assert_ne!(b.body["card"]["fingerprint"], a1["card"]["fingerprint"]);
    let k1 = h.tokenize(bank("000123456789")).await;
    let k2 = h.tokenize(bank("000123456789")).await;
    let k3 = h.tokenize_as(&other, bank("000123456789")).await;
    assert_eq!(
        k1.body["bankAccount"]["fingerprint"],
        k2.body["bankAccount"]["fingerprint"]
    );
    assert_ne!(
        k1.body["bankAccount"]["fingerprint"],
        k3.body["bankAccount"]["fingerprint"]
    );
}

#[tokio::test]
async fn tokens_are_single_use_and_expire() {
    let h = harness().await;
    let tok = h.card_token("4242424242424242").await;
    let id = tok["id"].as_str().unwrap();
    // Another merchant's token is as invalid as an unknown one.
    let (_, other_merchant) = h.new_key("globex", Role::Admin).await;
    h.consume(id, &other_merchant)
        .await
        .assert_error(400, "token_invalid");
    h.consume("tok_unknown", &h.merchant_id)
        .await
        .assert_error(400, "token_invalid");
    let r = h.consume(id, &h.merchant_id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["vaultRef"].as_str().unwrap().starts_with("vr_"));
    assert_eq!(r.body["type"], "card");
    assert_eq!(r.body["card"], tok["card"], "the same display fields");
    h.consume(id, &h.merchant_id)
        .await
        .assert_error(400, "token_invalid");

    let expired = h.card_token("4242424242424242").await;
    let expired_id = expired["id"].as_str().unwrap();
    sqlx::query("UPDATE vault.tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired_id)
        .execute(&h.db.pool)
        .await
        .unwrap();
    h.consume(expired_id, &h.merchant_id)
        .await
        .assert_error(400, "token_invalid");

    // Without the service credential nothing is consumed.
    let fresh = h.card_token("4242424242424242").await;
    let fresh_id = fresh["id"].as_str().unwrap();
    let r = h
        .post_raw(
            &format!("/vault/internal/tokens/{fresh_id}/consume"),
            Some("svc_test_token_0123456780"),
            None,
            json!({"merchantId": h.merchant_id}).to_string(),
        )
        .await;
    r.assert_error(401, "unauthorized");
    assert_eq!(h.consume(fresh_id, &h.merchant_id).await.status, 200);
}

#[tokio::test]
async fn two_concurrent_consumes_of_one_token_have_one_winner() {
    let h = harness().await;
    for _ in 0..5 {
        let tok = h.card_token("4242424242424242").await;
        let id = tok["id"].as_str().unwrap();
        let replies =
            futures::future::join_all((0..4).map(|_| h.consume(id, &h.merchant_id))).await;
        let won: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
        assert_eq!(won.len(), 1, "{replies:?}");
        for r in replies.iter().filter(|r| r.status != 200) {
            r.assert_error(400, "token_invalid");
        }
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM vault.records WHERE stored_at IS NOT NULL")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 5);
}

#[tokio::test]
async fn an_expired_unused_token_is_forgotten_with_its_sealed_card() {
    let h = harness().await;
    let expired = h.card_token("4242424242424242").await;
    let kept = h.card_token("4242424242424242").await;
    let stored = h.stored_card("5555555555554444").await;
    let count = |sql: &'static str| {
        let pool = h.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = count("SELECT count(*) FROM vault.data_keys").await;
    sqlx::query(
        "UPDATE vault.tokens SET expires_at = now() - interval '1 second' WHERE id = ANY($1)",
    )
    .bind(vec![
        expired["id"].as_str().unwrap().to_owned(),
        // A used token past its expiry: its record is stored and must stay.
        sqlx::query_scalar::<_, String>("SELECT id FROM vault.tokens WHERE record_id = $1")
            .bind(&stored)
            .fetch_one(&h.db.pool)
            .await
            .unwrap(),
    ])
    .execute(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        paystream_vault::store::tokens::purge_expired(&h.db.pool)
            .await
            .unwrap(),
        1,
        "one data key deleted"
    );
    assert_eq!(
        count("SELECT count(*) FROM vault.data_keys").await,
        before - 1
    );
    assert_eq!(count("SELECT count(*) FROM vault.records").await, 2);
    assert_eq!(count("SELECT count(*) FROM vault.tokens").await, 2);
    h.consume(expired["id"].as_str().unwrap(), &h.merchant_id)
        .await
        .assert_error(400, "token_invalid");
    assert_eq!(
        h.consume(kept["id"].as_str().unwrap(), &h.merchant_id)
            .await
            .status,
        200
    );
    assert_eq!(
        h.forward_authorize(&stored, "pi_after_purge").await.status,
        200
    );
    assert_eq!(
        paystream_vault::store::idempotency::purge_expired(&h.db.pool)
            .await
            .unwrap(),
        0
    );
}
