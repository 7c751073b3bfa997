//! Stored payment methods charged through the vault: real vault, API, workers, PostgreSQL,
//! NATS and simulator. The confirm worker never sees a number; it asks the vault to forward
//! the authorization, and the simulator's books show what was charged.

use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use paystream_tests::{eventually, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(30);
const RETURN_URL: &str = "https://shop.example/back";

pub fn card(number: &str) -> Value {
    json!({"card": {"number": number, "expMonth": 12, "expYear": 2034, "cvc": "123"}})
}

pub fn bank(account: &str) -> Value {
    json!({"bankAccount": {
        "country": "US",
        "routingNumber": "110000000",
        "accountNumber": account,
        "accountHolderName": "Jane Doe",
        "accountHolderType": "individual",
    }})
}

/// Tokenizes `instrument` with a publishable key and stores it as a payment method of
/// `cus_1`; the `pm_` id.
pub async fn stored_method(app: &TestApp, pk: &str, instrument: Value) -> String {
    let kind = if instrument.get("card").is_some() {
        "card"
    } else {
        "bank_account"
    };
    let tok = app.tokenize(pk, instrument).await;
    assert_eq!(tok.status, 201, "{}", tok.text);
    let r = app
        .post(
            "/api/payment-methods",
            json!({"type": kind, "token": tok.body["id"], "customerId": "cus_1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// An app with its vault and both workers running, and a publishable key.
async fn app_with_vault() -> (TestApp, String) {
    let app = spawn_app().await;
    app.start_vault().await;
    let _ = app.start_confirm_worker();
    let _ = app.start_refund_worker();
    let pk = app.publishable_key().await;
    (app, pk)
}

/// Creates an intent for `pm` with `extra` and confirms it with a return URL; its id.
pub async fn confirm(app: &TestApp, pm: &str, extra: Value) -> String {
    let mut body = json!({"paymentMethodId": pm, "returnUrl": RETURN_URL});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let id = app.create_intent(body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    id
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Presses the challenge page's button for `result` over plain HTTP and follows the 303 to
/// paystream's callback; returns where the callback sends the browser.
async fn answer_challenge(url: &str, result: &str) -> String {
    let b = browser();
    let page = b.get(url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Complete authentication"));
    let posted = b
        .post(url)
        .form(&[("result", result)])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    let callback = posted.headers()[LOCATION].to_str().unwrap().to_owned();
    let back = b.get(&callback).send().await.unwrap();
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    back.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokenized_cards_are_charged_through_the_vault_like_the_test_methods() {
    let (app, pk) = app_with_vault().await;
    for number in ["4242424242424242", "5555555555554444"] {
        let pm = stored_method(&app, &pk, card(number)).await;
        let id = confirm(&app, &pm, json!({})).await;
        let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
        assert_eq!(pi["amountReceived"], 1099, "{pi}");
        assert_eq!(pi["paymentMethodId"], pm.as_str());
        let charges = app.sim_charges(&id).await;
        assert_eq!(charges.len(), 1, "{number}: {charges:?}");
        assert_eq!(charges[0]["status"], "captured");
    }
    let declined = stored_method(&app, &pk, card("4000000000000002")).await;
    let id = confirm(&app, &declined, json!({})).await;
    let pi = app.wait_for_status(&id, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "card_declined", "{pi}");
    assert_eq!(pi["lastPaymentError"]["declineCode"], "generic_decline");

    let broke = stored_method(&app, &pk, card("4000000000009995")).await;
    let id = confirm(&app, &broke, json!({})).await;
    let pi = app.wait_for_status(&id, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "card_declined", "{pi}");
    assert_eq!(pi["lastPaymentError"]["declineCode"], "insufficient_funds");
    assert_eq!(pi["amountReceived"], 0);
}

#[tokio::test]
async fn a_tokenized_card_the_acquirer_cannot_process_fails_after_every_retry() {
    let (app, pk) = app_with_vault().await;
    let pm = stored_method(&app, &pk, card("4000000000000119")).await;
    let id = confirm(&app, &pm, json!({})).await;
    let pi = app.wait_for_status(&id, &["failed"], WAIT).await;
    assert_eq!(pi["lastPaymentError"]["code"], "processing_error", "{pi}");
    assert!(app.sim_charges(&id).await.is_empty());
    // Retried like a direct call: each of the 5 deliveries spent its 5 attempts.
    let requests = app.sim_requests().await;
    assert!(requests >= 25, "{requests}");
}

#[tokio::test]
async fn a_tokenized_3ds_card_is_challenged_and_completes_or_fails() {
    let (app, pk) = app_with_vault().await;
    for (result, want) in [("succeeded", "succeeded"), ("failed", "failed")] {
        let pm = stored_method(&app, &pk, card("4000002760003184")).await;
        let id = confirm(&app, &pm, json!({})).await;
        let pi = app.wait_for_status(&id, &["requires_action"], WAIT).await;
        assert_eq!(pi["nextAction"]["type"], "redirect_to_url", "{pi}");
        assert_eq!(pi["nextAction"]["redirectToUrl"]["returnUrl"], RETURN_URL);
        let url = pi["nextAction"]["redirectToUrl"]["url"].as_str().unwrap();
        assert!(url.starts_with(&app.sim_url), "{url}");
        let back = answer_challenge(url, result).await;
        assert_eq!(back, format!("{RETURN_URL}?payment_intent={id}"));
        let pi = app.wait_for_status(&id, &[want], WAIT).await;
        let charges = app.sim_charges(&id).await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        if want == "succeeded" {
            assert_eq!(pi["amountReceived"], 1099);
            assert_eq!(charges[0]["status"], "captured");
        } else {
            assert_eq!(pi["lastPaymentError"]["code"], "authentication_failed");
        }
    }
}

#[tokio::test]
async fn confirming_a_stored_card_needs_a_return_url_but_a_plain_test_card_does_not() {
    let (app, pk) = app_with_vault().await;
    let pm = stored_method(&app, &pk, card("4242424242424242")).await;
    let pi = app.create_intent(json!({"paymentMethodId": pm})).await;
    let r = app
        .post(
            &format!(
                "/api/payment-intents/{}/confirm",
                pi["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    r.assert_error(400, "parameter_missing");
    assert_eq!(r.error_param(), "returnUrl");
    let r = app
        .post(
            "/api/payment-intents",
            json!({"amount": 500, "currency": "usd", "customerId": "cus_1",
                   "paymentMethodId": pm, "confirm": true}),
        )
        .await;
    r.assert_error(400, "parameter_missing");
    assert_eq!(r.error_param(), "returnUrl");
    // A bank account never asks for 3-D Secure; nor does pm_card_visa.
    let account = stored_method(&app, &pk, bank("000123456789")).await;
    for method in [account.as_str(), "pm_card_visa"] {
        let r = app
            .post(
                "/api/payment-intents",
                json!({"amount": 500, "currency": "usd", "customerId": "cus_1",
                       "paymentMethodId": method, "confirm": true}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{method}: {}", r.text);
    }
}

#[tokio::test]
async fn a_stored_card_is_captured_later_and_refunded() {
    let (app, pk) = app_with_vault().await;
    let pm = stored_method(&app, &pk, card("4242424242424242")).await;
    let id = confirm(
        &app,
        &pm,
        json!({"captureMethod": "manual", "amount": 2000}),
    )
    .await;
    let pi = app.wait_for_status(&id, &["requires_capture"], WAIT).await;
    assert_eq!(pi["amountCapturable"], 2000, "{pi}");
    let r = app
        .post(
            &format!("/api/payment-intents/{id}/capture"),
            json!({"amountToCapture": 1500}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 1500, "{pi}");
    let charges = app.sim_charges(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["status"], "captured");

    let r = app
        .post(
            "/api/refunds",
            json!({"paymentIntentId": id, "amount": 500}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let refund = r.body["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the refund to settle", || async {
        let r = app.get(&format!("/api/refunds/{refund}")).await;
        (r.body["status"] == "succeeded").then_some(())
    })
    .await;
    assert_eq!(app.acquirer_totals(&id).await, (1500, 500));
}

#[tokio::test]
async fn bank_debits_stay_processing_until_the_acquirer_settles_them() {
    let (app, pk) = app_with_vault().await;
    for (account, want, code) in [
        ("000123456789", "succeeded", None),
        ("000111111116", "failed", Some("account_closed")),
        ("000222222227", "failed", Some("insufficient_funds")),
    ] {
        let pm = stored_method(&app, &pk, bank(account)).await;
        let id = confirm(&app, &pm, json!({"amount": 700})).await;
        let pi = app.wait_for_status(&id, &[want], WAIT).await;
        assert_eq!(pi["lastPaymentError"]["code"].as_str(), code, "{pi}");
        let charges = app.sim_charges(&id).await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        // The worker left it processing; the acquirer's notification ended it.
        let actions = app.audit_actions(&id).await;
        let last = actions.last().unwrap();
        assert_eq!(last.1, "acquirer", "{actions:?}");
        assert!(
            !actions
                .iter()
                .any(|(_, actor)| actor == "worker:confirm-worker"),
            "{actions:?}"
        );
        if want == "succeeded" {
            assert_eq!(pi["amountReceived"], 700);
        }
    }
    // The test bank account settles the same way.
    let id = confirm(&app, "pm_bank_account", json!({})).await;
    app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(app.audit_actions(&id).await.last().unwrap().1, "acquirer");
}

#[tokio::test]
async fn a_vault_killed_mid_forward_charges_once_and_the_payment_completes_when_it_is_back() {
    // Backoffs long enough that the restart comes before the retries are spent.
    let app = paystream_tests::spawn_app_with(|c| c.retry_base = Duration::from_millis(200)).await;
    let log = std::env::temp_dir().join(format!("{}vault.log", app.prefix));
    let mut vault = app.start_vault_process(&log).await;
    let _c = app.start_confirm_worker();
    let pk = app.publishable_key().await;
    let pm = stored_method(&app, &pk, card("4242424242424242")).await;
    // The acquirer charges, then withholds its answer (the vault is left waiting on it), and
    // its notification is lost: only the confirm worker's retries can finish the payment.
    app.sim_faults(json!({"timeoutRate": 1, "notifications": {"dropRate": 1}}))
        .await;
    let id = confirm(&app, &pm, json!({})).await;
    eventually(WAIT, "the forwarded authorization to charge", || async {
        (!app.sim_charges(&id).await.is_empty()).then_some(())
    })
    .await;
    vault.kill().unwrap(); // SIGKILL, mid-forward
    vault.wait().unwrap();
    assert_eq!(
        app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
        "processing"
    );
    app.sim_faults(json!({"notifications": {"dropRate": 1}}))
        .await;
    let mut vault = app.start_vault_process(&log).await;
    let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 1099);
    let charges = app.sim_charges(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["status"], "captured");
    vault.kill().unwrap();
    vault.wait().unwrap();
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn a_vault_down_for_every_retry_dead_letters_the_charge_and_a_replay_completes_it() {
    let app = spawn_app().await;
    let log = std::env::temp_dir().join(format!("{}vault.log", app.prefix));
    let mut vault = app.start_vault_process(&log).await;
    let _c = app.start_confirm_worker();
    let pk = app.publishable_key().await;
    let pm = stored_method(&app, &pk, card("5555555555554444")).await;
    vault.kill().unwrap();
    vault.wait().unwrap();

    let id = confirm(&app, &pm, json!({})).await;
    let dead = eventually(WAIT, "the dead letter", || async {
        let all = paystream_nats::dlq::list(&app.js, &app.topology)
            .await
            .unwrap();
        all.into_iter()
            .find(|d| d.object_id.as_deref() == Some(id.as_str()))
    })
    .await;
    assert_eq!(dead.origin_subject, "cmd.payment.confirm");
    let pi = app.get(&format!("/api/payment-intents/{id}")).await.body;
    assert_eq!(pi["status"], "processing", "{pi}");
    assert!(app.sim_charges(&id).await.is_empty());

    // `paystream dlq replay` once the vault is back.
    let mut vault = app.start_vault_process(&log).await;
    paystream_nats::dlq::replay(&app.js, &app.topology, dead.id)
        .await
        .unwrap();
    let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 1099);
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    vault.kill().unwrap();
    vault.wait().unwrap();
    let _ = std::fs::remove_file(&log);
}
