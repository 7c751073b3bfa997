//! The simulator driven through its HTTP surface with poem's test client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::endpoint::BoxEndpoint;
use poem::test::TestClient;
use poem::{EndpointExt, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ledger::ChargeStatus;
use crate::{app, Sim, SimConfig};

struct Harness {
    sim: Arc<Sim>,
    cli: TestClient<BoxEndpoint<'static, Response>>,
}

struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
}

fn harness() -> Harness {
    harness_with(SimConfig {
        timeout_hang: Duration::from_millis(50),
        public_url: Some("http://sim.test".into()),
        seed: Some(1),
        ..SimConfig::default()
    })
}

fn harness_with(config: SimConfig) -> Harness {
    let sim = Sim::new(config, CancellationToken::new());
    let cli = TestClient::new(app(Arc::clone(&sim)).map_to_response().boxed());
    Harness { sim, cli }
}

impl Harness {
    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        self.post_raw(path, key, body.to_string()).await
    }

    async fn post_raw(&self, path: &str, key: Option<&str>, body: String) -> Answer {
        let mut req = self
            .cli
            .post(path)
            .content_type("application/json")
            .body(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        answer(req.send().await.0).await
    }

    async fn get(&self, path: &str) -> Answer {
        answer(self.cli.get(path).send().await.0).await
    }

    async fn pay(&self, reference: &str, pm: &str, capture: bool) -> Answer {
        self.post(
            "/v1/payments",
            Some(&format!("{reference}:authorize")),
            &payment(reference, pm, capture),
        )
        .await
    }

    async fn sim_charges(&self, reference: &str) -> Vec<Value> {
        let a = self
            .get(&format!("/sim/charges?reference={reference}"))
            .await;
        assert_eq!(a.status, 200);
        a.body["data"].as_array().unwrap().clone()
    }

    async fn faults(&self, body: Value) -> Answer {
        self.post("/sim/faults", None, &body).await
    }
}

async fn answer(resp: Response) -> Answer {
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let bytes = resp.into_body().into_vec().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        body,
        replayed,
    }
}

fn payment(reference: &str, pm: &str, capture: bool) -> Value {
    json!({"reference": reference, "amount": 1099, "currency": "usd", "paymentMethod": pm, "capture": capture})
}

fn card_payment(reference: &str, number: &str, exp_year: i32) -> Value {
    json!({
        "reference": reference, "amount": 500, "currency": "eur", "capture": true,
        "card": {"number": number, "expMonth": 12, "expYear": exp_year, "cvc": "123"}
    })
}

#[tokio::test]
async fn approved_cards_capture_or_authorize() {
    let h = harness();
    for (reference, pm) in [
        ("pi_visa", "pm_card_visa"),
        ("pi_mc", "pm_card_mastercard"),
        ("pi_dispute", "pm_card_createDispute"),
    ] {
        let a = h.pay(reference, pm, true).await;
        assert_eq!(a.status, 200, "{pm}: {}", a.body);
        assert_eq!(a.body["status"], "captured");
        assert_eq!(a.body["amount"], 1099);
        assert_eq!(a.body["amountCaptured"], 1099);
        assert_eq!(a.body["currency"], "usd");
        assert_eq!(a.body["reference"], reference);
        assert!(a.body["id"].as_str().unwrap().starts_with("ch_"));
        assert!(!a.replayed);
    }
    let a = h.pay("pi_manual", "pm_card_visa", false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["status"], "authorized");
    assert_eq!(a.body["amountCaptured"], 0);

    let ledger = h.sim.ledger();
    let disputed: Vec<_> = ledger
        .charges(None)
        .into_iter()
        .filter(|c| c.disputes_later)
        .map(|c| c.reference.clone())
        .collect();
    assert_eq!(disputed, ["pi_dispute"]);
}

#[tokio::test]
async fn declines_are_402_with_codes_and_recorded() {
    let h = harness();
    for (pm, decline_code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_insufficientFunds", "insufficient_funds"),
    ] {
        let reference = format!("pi_{pm}");
        let a = h.pay(&reference, pm, true).await;
        assert_eq!(a.status, 402, "{pm}");
        assert_eq!(a.body["status"], "declined");
        assert_eq!(a.body["code"], "card_declined");
        assert_eq!(a.body["declineCode"], decline_code);
        assert!(a.body["message"].as_str().unwrap().len() > 5);
        let charges = h.sim_charges(&reference).await;
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0]["status"], "declined");
    }
}

#[tokio::test]
async fn three_ds_card_requires_action_with_a_redirect() {
    let h = harness();
    let a = h
        .post(
            "/v1/payments",
            Some("k3ds"),
            &json!({"reference": "pi_3ds", "amount": 100, "currency": "gbp",
                    "paymentMethod": "pm_card_threeDSecureRequired", "capture": true,
                    "returnUrl": "https://shop.test/done"}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["status"], "requires_action");
    let id = a.body["id"].as_str().unwrap();
    assert_eq!(
        a.body["redirectUrl"],
        format!("http://sim.test/sim/3ds/{id}")
    );
    assert_eq!(a.body["returnUrl"], "https://shop.test/done");
}

#[tokio::test]
async fn processing_error_is_a_500_every_time_and_charges_nothing() {
    let h = harness();
    for _ in 0..2 {
        let a = h.pay("pi_err", "pm_card_processingError", true).await;
        assert_eq!(a.status, 500);
        assert_eq!(a.body["error"]["code"], "processing_error");
        assert!(!a.replayed);
    }
    assert!(h.sim_charges("pi_err").await.is_empty());
}

#[tokio::test]
async fn raw_cards_are_decided_by_number() {
    let h = harness();
    let a = h
        .post(
            "/v1/payments",
            Some("c1"),
            &card_payment("pi_c1", "4242424242424242", 2099),
        )
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("captured"))
    );
    let a = h
        .post(
            "/v1/payments",
            Some("c2"),
            &card_payment("pi_c2", "4111111111111111", 2099),
        )
        .await;
    assert_eq!(a.status, 402);
    assert_eq!(a.body["declineCode"], "generic_decline");
    let a = h
        .post(
            "/v1/payments",
            Some("c3"),
            &card_payment("pi_c3", "4242424242424242", 2001),
        )
        .await;
    assert_eq!(a.status, 402);
    assert_eq!(a.body["code"], "expired_card");
    let a = h
        .post(
            "/v1/payments",
            Some("c4"),
            &card_payment("pi_c4", "4000000000000002", 2099),
        )
        .await;
    assert_eq!(a.body["declineCode"], "generic_decline");
}

#[tokio::test]
async fn same_key_same_body_replays_exactly_and_charges_once() {
    let h = harness();
    let first = h.pay("pi_once", "pm_card_visa", true).await;
    // The same JSON with its keys in another order and other spacing is the same request.
    let reordered = r#"{ "capture": true, "paymentMethod": "pm_card_visa", "currency": "usd",
                         "amount": 1099, "reference": "pi_once" }"#;
    let second = h
        .post_raw("/v1/payments", Some("pi_once:authorize"), reordered.into())
        .await;
    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body);
    assert!(second.replayed);
    assert_eq!(h.sim_charges("pi_once").await.len(), 1);

    let declined = h.pay("pi_no", "pm_card_chargeDeclined", true).await;
    let again = h.pay("pi_no", "pm_card_chargeDeclined", true).await;
    assert_eq!((again.status, &again.body), (402, &declined.body));
    assert!(again.replayed);
    assert_eq!(h.sim_charges("pi_no").await.len(), 1);
}

#[tokio::test]
async fn same_key_with_another_request_is_422_and_runs_nothing() {
    let h = harness();
    h.pay("pi_k", "pm_card_visa", true).await;
    let mut other = payment("pi_k", "pm_card_visa", true);
    other["amount"] = json!(2000);
    let a = h.post("/v1/payments", Some("pi_k:authorize"), &other).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.body["error"]["code"], "idempotency_key_reused");
    let charge_id = h.sim_charges("pi_k").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = h
        .post(
            &format!("/v1/payments/{charge_id}/void"),
            Some("pi_k:authorize"),
            &json!({}),
        )
        .await;
    assert_eq!(a.status, 422);
    let charges = h.sim_charges("pi_k").await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["amount"], 1099);
    assert_eq!(charges[0]["status"], "captured");
}

#[tokio::test]
async fn idempotency_key_is_required_and_checked() {
    let h = harness();
    let body = payment("pi_nokey", "pm_card_visa", true);
    let a = h.post("/v1/payments", None, &body).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "idempotency_key_missing");
    let long = "k".repeat(256);
    let a = h.post("/v1/payments", Some(&long), &body).await;
    assert_eq!(a.body["error"]["code"], "idempotency_key_invalid");
    let a = h.post("/v1/payments", Some("tab\there"), &body).await;
    assert_eq!(a.status, 400);
    assert!(h.sim_charges("pi_nokey").await.is_empty());
}

#[tokio::test]
async fn bad_input_is_400_never_5xx_and_never_echoes_a_card() {
    let h = harness();
    let good = card_payment("pi_bad", "4242424242424242", 2099);
    let with = |pointer: &str, value: Value| {
        let mut body = good.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body.to_string()
    };
    let mut no_card = good.clone();
    no_card.as_object_mut().unwrap().remove("card");
    let mut both = good.clone();
    both["paymentMethod"] = json!("pm_card_visa");
    let mut unknown_field = good.clone();
    unknown_field["tip"] = json!(1);
    let mut no_capture = good.clone();
    no_capture.as_object_mut().unwrap().remove("capture");
    let cases: Vec<(&str, String, &str)> = vec![
        ("not json", "{\"reference\":".into(), "body_invalid"),
        ("trailing", format!("{good} x"), "body_invalid"),
        (
            "fraction",
            with("/amount", json!(10.99)),
            "parameter_invalid",
        ),
        (
            "string amount",
            with("/amount", json!("1099")),
            "parameter_invalid",
        ),
        ("zero", with("/amount", json!(0)), "amount_too_small"),
        (
            "huge",
            with("/amount", json!(100_000_000)),
            "amount_too_large",
        ),
        (
            "currency",
            with("/currency", json!("xyz")),
            "currency_invalid",
        ),
        (
            "reference",
            with("/reference", json!("")),
            "parameter_invalid",
        ),
        (
            "number",
            with("/card/number", json!("4242-4242-4242-4242")),
            "invalid_number",
        ),
        (
            "numeric number",
            with("/card/number", json!(4242424242424242u64)),
            "parameter_invalid",
        ),
        (
            "month",
            with("/card/expMonth", json!(13)),
            "invalid_expiry_month",
        ),
        (
            "year",
            with("/card/expYear", json!(25)),
            "invalid_expiry_year",
        ),
        ("cvc", with("/card/cvc", json!("12a")), "invalid_cvc"),
        ("neither", no_card.to_string(), "parameter_invalid"),
        ("both", both.to_string(), "parameter_invalid"),
        (
            "unknown field",
            unknown_field.to_string(),
            "parameter_invalid",
        ),
        ("no capture", no_capture.to_string(), "parameter_invalid"),
        (
            "unknown pm",
            payment("pi_bad", "pm_card_amex", true).to_string(),
            "payment_method_unknown",
        ),
        (
            "return url",
            {
                let mut b = good.clone();
                b["returnUrl"] = json!("javascript:alert(1)");
                b.to_string()
            },
            "url_invalid",
        ),
    ];
    for (i, (name, body, code)) in cases.into_iter().enumerate() {
        let a = h
            .post_raw("/v1/payments", Some(&format!("bad-{i}")), body)
            .await;
        assert_eq!(a.status, 400, "{name}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{name}: {}", a.body);
        assert!(!a.body.to_string().contains("4242424242424242"), "{name}");
    }
    let a = h
        .post_raw(
            "/v1/payments",
            Some("bad-missing"),
            json!({"amount": 1}).to_string(),
        )
        .await;
    assert_eq!(a.body["error"]["message"], "missing field `reference`");
    let a = h
        .post_raw(
            "/v1/payments",
            Some("bad-fraction"),
            with("/amount", json!(10.99)),
        )
        .await;
    assert_eq!(a.body["error"]["param"], "amount");
    assert!(h.sim_charges("pi_bad").await.is_empty());
}

#[tokio::test]
async fn capture_rules() {
    let h = harness();
    let id = h.pay("pi_cap", "pm_card_visa", false).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/payments/{id}/capture");
    let a = h
        .post(&path, Some("cap-big"), &json!({"amount": 5000}))
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (400, &json!("amount_too_large"))
    );
    let a = h.post(&path, Some("cap-1"), &json!({"amount": 600})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "captured");
    assert_eq!(a.body["amountCaptured"], 600);
    let replay = h.post(&path, Some("cap-1"), &json!({"amount": 600})).await;
    assert_eq!((replay.status, replay.replayed), (200, true));
    let a = h.post(&path, Some("cap-2"), &json!({})).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_already_captured"))
    );
    let a = h
        .post("/v1/payments/ch_nope/capture", Some("cap-3"), &json!({}))
        .await;
    assert_eq!(a.status, 404);

    let declined = h
        .pay("pi_cap_d", "pm_card_chargeDeclined", false)
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = h
        .post(
            &format!("/v1/payments/{declined}/capture"),
            Some("cap-4"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_not_capturable"))
    );

    // No body at all captures the whole authorization.
    let whole = h.pay("pi_cap_w", "pm_card_visa", false).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = h
        .post_raw(
            &format!("/v1/payments/{whole}/capture"),
            Some("cap-5"),
            String::new(),
        )
        .await;
    assert_eq!(a.body["amountCaptured"], 1099);
}

#[tokio::test]
async fn void_rules() {
    let h = harness();
    let id_of = |a: Answer| a.body["id"].as_str().unwrap().to_owned();
    let auth = id_of(h.pay("pi_v1", "pm_card_visa", false).await);
    let void = |id: &str| format!("/v1/payments/{id}/void");
    let a = h.post(&void(&auth), Some("v1"), &json!({})).await;
    assert_eq!((a.status, &a.body["status"]), (200, &json!("voided")));
    let a = h.post(&void(&auth), Some("v1b"), &json!({})).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_already_voided"))
    );
    let a = h
        .post(
            &format!("/v1/payments/{auth}/capture"),
            Some("v1c"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_not_capturable"))
    );

    let captured = id_of(h.pay("pi_v2", "pm_card_visa", true).await);
    let a = h.post(&void(&captured), Some("v2"), &json!({})).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_already_captured"))
    );

    let declined = id_of(h.pay("pi_v3", "pm_card_chargeDeclined", true).await);
    let a = h.post(&void(&declined), Some("v3"), &json!({})).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_not_voidable"))
    );

    let pending = id_of(h.pay("pi_v4", "pm_card_threeDSecureRequired", true).await);
    let a = h.post(&void(&pending), Some("v4"), &json!({})).await;
    assert_eq!(a.body["status"], "voided");

    let a = h.post(&void("ch_nope"), Some("v5"), &json!({})).await;
    assert_eq!(a.status, 404);
    let a = h
        .post(&void(&pending), Some("v6"), &json!({"reason": "x"}))
        .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn refund_rules() {
    let h = harness();
    let charge = h.pay("pi_r", "pm_card_visa", true).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refund = |amount: i64, reference: &str| json!({"payment": charge, "amount": amount, "reference": reference});
    let a = h
        .post("/v1/refunds", Some("re_1:refund"), &refund(400, "re_1"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["id"].as_str().unwrap().starts_with("rf_"));
    assert_eq!(a.body["status"], "succeeded");
    assert_eq!(a.body["payment"], charge.as_str());
    assert_eq!(a.body["reference"], "re_1");
    let replay = h
        .post("/v1/refunds", Some("re_1:refund"), &refund(400, "re_1"))
        .await;
    assert_eq!(
        (replay.body["id"].clone(), replay.replayed),
        (a.body["id"].clone(), true)
    );

    let a = h
        .post("/v1/refunds", Some("re_2:refund"), &refund(700, "re_2"))
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (400, &json!("amount_too_large"))
    );
    let a = h
        .post("/v1/refunds", Some("re_3:refund"), &refund(699, "re_3"))
        .await;
    assert_eq!(a.status, 200);
    let list = h.get("/v1/payments?reference=pi_r").await;
    assert_eq!(list.body["data"][0]["status"], "refunded");
    assert_eq!(list.body["data"][0]["amountRefunded"], 1099);
    let a = h
        .post("/v1/refunds", Some("re_4:refund"), &refund(1, "re_4"))
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_already_refunded"))
    );

    let auth = h.pay("pi_r2", "pm_card_visa", false).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = h
        .post(
            "/v1/refunds",
            Some("re_5:refund"),
            &json!({"payment": auth, "amount": 1, "reference": "re_5"}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("charge_not_captured"))
    );
    let a = h
        .post(
            "/v1/refunds",
            Some("re_6:refund"),
            &json!({"payment": "ch_nope", "amount": 1, "reference": "re_6"}),
        )
        .await;
    assert_eq!(a.status, 404);
    let a = h
        .post(
            "/v1/refunds",
            Some("re_7:refund"),
            &json!({"payment": auth, "amount": -5, "reference": "re_7"}),
        )
        .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn status_by_reference() {
    let h = harness();
    h.pay("pi_list", "pm_card_visa", false).await;
    let a = h.get("/v1/payments?reference=pi_list").await;
    assert_eq!(a.status, 200);
    let data = a.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["status"], "authorized");
    assert!(data[0]["createdAt"].as_str().unwrap().ends_with('Z'));
    let a = h.get("/v1/payments?reference=pi_none").await;
    assert_eq!(a.body["data"], json!([]));
    let a = h.get("/v1/payments").await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (400, &json!("parameter_missing"))
    );
    // The test view has exactly the contract's fields.
    let charges = h.sim_charges("pi_list").await;
    let mut keys: Vec<_> = charges[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["amount", "currency", "id", "reference", "status"]);
    h.pay("pi_list2", "pm_card_visa", false).await;
    let all = h.get("/sim/charges").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn error_rate_fails_before_doing_anything() {
    let h = harness();
    let a = h.faults(json!({"errorRate": 1.0})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["errorPerMillion"], 1_000_000);
    for _ in 0..3 {
        let a = h.pay("pi_fault", "pm_card_visa", true).await;
        assert_eq!(
            (a.status, &a.body["error"]["code"]),
            (500, &json!("simulated_error"))
        );
    }
    let a = h.get("/v1/payments?reference=pi_fault").await;
    assert_eq!(a.status, 500);
    assert!(h.sim_charges("pi_fault").await.is_empty());
    // The test controls never misbehave.
    assert_eq!(h.get("/healthz").await.status, 200);

    h.faults(json!({})).await;
    let a = h.pay("pi_fault", "pm_card_visa", true).await;
    assert_eq!((a.status, a.replayed), (200, false));
    assert_eq!(h.sim_charges("pi_fault").await.len(), 1);
}

#[tokio::test]
async fn timeout_rate_charges_then_hangs_and_a_retry_gets_the_stored_answer() {
    let h = harness();
    h.faults(json!({"timeoutRate": 1})).await;
    let started = Instant::now();
    let first = h.pay("pi_slow", "pm_card_visa", true).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(first.status, 200);
    assert_eq!(h.sim_charges("pi_slow").await.len(), 1);

    let retry = h.pay("pi_slow", "pm_card_visa", true).await;
    assert_eq!((retry.status, retry.replayed), (200, true));
    assert_eq!(retry.body, first.body);
    h.faults(json!({"timeoutRate": 0})).await;
    let after = h.pay("pi_slow", "pm_card_visa", true).await;
    assert!(after.replayed);
    assert_eq!(h.sim_charges("pi_slow").await.len(), 1);
}

#[tokio::test]
async fn latency_is_added_to_v1_calls() {
    let h = harness();
    h.faults(json!({"latencyMs": 40})).await;
    let started = Instant::now();
    h.get("/v1/payments?reference=x").await;
    assert!(started.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn fault_settings_replace_each_other_and_are_validated() {
    let h = harness();
    h.faults(json!({"errorRate": 0.25, "notifications": {"dropRate": 0.5, "reorder": true}}))
        .await;
    let a = h.get("/sim/faults").await;
    assert_eq!(a.body["errorPerMillion"], 250_000);
    assert_eq!(a.body["notifications"]["dropPerMillion"], 500_000);
    assert_eq!(a.body["notifications"]["reorder"], true);
    h.faults(json!({"latencyMs": 1})).await;
    let a = h.get("/sim/faults").await;
    assert_eq!(a.body["errorPerMillion"], 0);
    assert_eq!(a.body["notifications"]["reorder"], false);

    for bad in [
        json!({"errorRate": 1.5}),
        json!({"timeoutRate": -0.1}),
        json!({"errorRate": "0.5"}),
        json!({"latencyMs": -1}),
        json!({"surprise": true}),
    ] {
        let a = h.faults(bad.clone()).await;
        assert_eq!(a.status, 400, "{bad}");
    }
    assert_eq!(h.get("/sim/faults").await.body["latencyMs"], 1);
}

#[tokio::test]
async fn reset_forgets_everything() {
    let h = harness();
    h.pay("pi_reset", "pm_card_visa", true).await;
    h.faults(json!({"latencyMs": 5})).await;
    let a = h.post("/sim/reset", None, &json!({})).await;
    assert_eq!(a.status, 204);
    assert!(h.sim_charges("pi_reset").await.is_empty());
    assert_eq!(h.get("/sim/faults").await.body["latencyMs"], 0);
    // The key is forgotten too: the same request charges afresh.
    let a = h.pay("pi_reset", "pm_card_visa", true).await;
    assert!(!a.replayed);
    assert_eq!(h.sim_charges("pi_reset").await.len(), 1);
}

#[tokio::test]
async fn health_and_metrics() {
    let h = harness();
    let a = h.get("/healthz").await;
    assert_eq!(a.status, 200);
    h.pay("pi_m", "pm_card_visa", true).await;
    h.pay("pi_m", "pm_card_visa", true).await;
    h.faults(json!({"errorRate": 1})).await;
    h.pay("pi_m", "pm_card_visa", true).await;
    let resp = h.cli.get("/metrics").send().await;
    resp.assert_status_is_ok();
    let text = resp.0.into_body().into_string().await.unwrap();
    assert!(text.contains("acquirer_sim_requests_total 3\n"), "{text}");
    assert!(text.contains("acquirer_sim_charges_total 1\n"), "{text}");
    assert!(
        text.contains("acquirer_sim_idempotent_replays_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("acquirer_sim_faults_injected_total{kind=\"error\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn hung_calls_end_at_shutdown() {
    let shutdown = CancellationToken::new();
    let sim = Sim::new(
        SimConfig {
            timeout_hang: Duration::from_secs(300),
            ..SimConfig::default()
        },
        shutdown.clone(),
    );
    let cli = TestClient::new(app(Arc::clone(&sim)));
    sim.set_faults(crate::Faults {
        timeout_per_million: crate::faults::PER_MILLION,
        ..crate::Faults::default()
    });
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        shutdown.cancel();
    });
    let started = Instant::now();
    let resp = cli
        .post("/v1/payments")
        .header("Idempotency-Key", "k")
        .body_json(&payment("pi_hang", "pm_card_visa", true))
        .send()
        .await;
    resp.assert_status_is_ok();
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap();
    // Without a configured public URL, handed-out links use the contract's default address.
    assert_eq!(sim.public_url, crate::DEFAULT_ACQUIRER_URL);
}

#[test]
fn listen_address_comes_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(crate::listen_addr(env(&[])).unwrap(), "127.0.0.1:8090");
    assert_eq!(
        crate::listen_addr(env(&[("ACQUIRER_SIM_ADDR", "0.0.0.0:9000")])).unwrap(),
        "0.0.0.0:9000"
    );
    for (url, addr) in [
        ("http://localhost:7001/", "localhost:7001"),
        ("http://sim.internal", "sim.internal:80"),
        ("https://sim.internal/base?x=1", "sim.internal:443"),
        ("http://[::1]:7002", "[::1]:7002"),
        ("http://[::1]", "[::1]:80"),
    ] {
        let lookup = move |k: &str| (k == "PAYSTREAM_ACQUIRER_URL").then(|| url.to_owned());
        assert_eq!(crate::listen_addr(lookup).unwrap(), addr, "{url}");
    }
    for url in ["ftp://x:1", "http://", "http://user@host:1"] {
        let lookup = move |k: &str| (k == "PAYSTREAM_ACQUIRER_URL").then(|| url.to_owned());
        assert!(crate::listen_addr(lookup).is_err(), "{url}");
    }
}

#[test]
fn config_comes_from_the_environment() {
    let c = SimConfig::from_lookup(|_| None).unwrap();
    assert_eq!(c.timeout_hang, Duration::from_secs(30));
    assert_eq!((c.public_url, c.seed), (None, None));
    let c = SimConfig::from_lookup(|k| match k {
        "ACQUIRER_SIM_HANG_MS" => Some("250".into()),
        "ACQUIRER_SIM_SEED" => Some("9".into()),
        "PAYSTREAM_ACQUIRER_URL" => Some("http://acquirer:8090/".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.timeout_hang, Duration::from_millis(250));
    assert_eq!(c.seed, Some(9));
    assert_eq!(c.public_url.as_deref(), Some("http://acquirer:8090"));
    let err =
        SimConfig::from_lookup(|k| (k == "ACQUIRER_SIM_SEED").then(|| "x".into())).unwrap_err();
    assert!(err.to_string().contains("ACQUIRER_SIM_SEED"));
}

#[test]
fn notification_settings_come_from_the_environment() {
    let c = SimConfig::from_lookup(|_| None).unwrap();
    assert_eq!(c.notify_url, None);
    // The default secret is the one paystream's own configuration defaults to.
    let ours = paystream_shared::config::Config::development_defaults().unwrap();
    assert_eq!(
        c.notify_secret.expose(),
        ours.acquirer_webhook_secret.expose()
    );
    assert_eq!(c.notify_secret.expose(), crate::DEFAULT_NOTIFY_SECRET);
    let c = SimConfig::from_lookup(|k| match k {
        "ACQUIRER_SIM_NOTIFY_URL" => Some("http://127.0.0.1:8080/api/provider/webhooks".into()),
        "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET" => Some("s3cret".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        c.notify_url.as_deref(),
        Some("http://127.0.0.1:8080/api/provider/webhooks")
    );
    assert_eq!(c.notify_secret.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    let err =
        SimConfig::from_lookup(|k| (k == "ACQUIRER_SIM_NOTIFY_URL").then(|| "api:8080".into()))
            .unwrap_err();
    assert!(err.to_string().contains("ACQUIRER_SIM_NOTIFY_URL"));
}

/// A simulator that queues notifications (nothing sends them: the test reads the queue).
fn notifying() -> (
    Harness,
    tokio::sync::mpsc::UnboundedReceiver<crate::notify::Notification>,
) {
    let h = harness_with(SimConfig {
        timeout_hang: Duration::from_millis(20),
        seed: Some(3),
        notify_url: Some("http://paystream.test/api/provider/webhooks".into()),
        ..SimConfig::default()
    });
    let rx = h.sim.notifications.take_receiver().unwrap();
    (h, rx)
}

fn queued(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::notify::Notification>,
) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(n) = rx.try_recv() {
        let body: Value = serde_json::from_slice(&n.body).unwrap();
        assert_eq!(body["type"], n.event_type);
        assert_eq!(body["id"], n.id.as_str());
        out.push(body);
    }
    out
}

#[tokio::test]
async fn refunds_settle_later_when_asked_to() {
    let (h, mut rx) = notifying();
    let charge = h.pay("pi_async", "pm_card_visa", true).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        queued(&mut rx).is_empty(),
        "a synchronous answer is not repeated"
    );
    h.faults(json!({"refundSettlementMs": 30})).await;
    let body = json!({"payment": charge, "amount": 600, "reference": "re_async"});
    let a = h.post("/v1/refunds", Some("re_async:refund"), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "pending");
    // The amount is reserved at once: no second refund can exceed the capture meanwhile.
    let over = json!({"payment": charge, "amount": 500, "reference": "re_over"});
    let a2 = h.post("/v1/refunds", Some("re_over:refund"), &over).await;
    assert_eq!(a2.body["error"]["code"], "amount_too_large");
    let now = h.get("/v1/refunds?reference=re_async").await;
    assert_eq!(now.body["data"][0]["status"], "pending");

    tokio::time::sleep(Duration::from_millis(150)).await;
    let now = h.get("/v1/refunds?reference=re_async").await;
    assert_eq!(now.body["data"][0]["status"], "succeeded");
    assert_eq!(now.body["data"][0]["id"], a.body["id"]);
    // A replay answers what the first call answered.
    let replay = h.post("/v1/refunds", Some("re_async:refund"), &body).await;
    assert!(replay.replayed);
    assert_eq!(replay.body["status"], "pending");

    let sent = queued(&mut rx);
    let kinds: Vec<&str> = sent.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["refund.pending", "refund.succeeded"]);
    for n in &sent {
        assert!(n["id"].as_str().unwrap().starts_with("aevt_"));
        assert!(chrono::DateTime::parse_from_rfc3339(n["createdAt"].as_str().unwrap()).is_ok());
        assert_eq!(n["data"]["reference"], "re_async");
        assert_eq!(n["data"]["payment"], charge.as_str());
        assert_eq!(n["data"]["amount"], 600);
        assert_eq!(n["data"]["id"], a.body["id"]);
    }
    assert_ne!(sent[0]["id"], sent[1]["id"]);
    assert_eq!(sent[1]["data"]["status"], "succeeded");
}

#[tokio::test]
async fn a_failed_settlement_releases_the_amount() {
    let (h, mut rx) = notifying();
    let charge = h.pay("pi_fail", "pm_card_visa", true).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.faults(json!({"refundSettlementMs": 10, "refundFailureRate": 1}))
        .await;
    let body = json!({"payment": charge, "amount": 1099, "reference": "re_f"});
    assert_eq!(
        h.post("/v1/refunds", Some("re_f:refund"), &body).await.body["status"],
        "pending"
    );
    assert_eq!(h.sim_charges("pi_fail").await[0]["status"], "refunded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = h.get("/v1/refunds?reference=re_f").await;
    assert_eq!(now.body["data"][0]["status"], "failed");
    assert_eq!(now.body["data"][0]["failureReason"], "refund_declined");
    let list = h.get("/v1/payments?reference=pi_fail").await;
    assert_eq!(list.body["data"][0]["status"], "captured");
    assert_eq!(list.body["data"][0]["amountRefunded"], 0);
    let kinds: Vec<Value> = queued(&mut rx)
        .into_iter()
        .map(|n| n["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("refund.pending"), json!("refund.failed")]);

    assert_eq!(
        h.get("/v1/refunds?reference=nobody").await.body,
        json!({"data": []})
    );
    let a = h.get("/v1/refunds").await;
    assert_eq!(
        (a.status, &a.body["error"]["param"]),
        (400, &json!("reference"))
    );
}

#[tokio::test]
async fn outcomes_whose_answer_was_lost_are_announced() {
    let (h, mut rx) = notifying();
    h.faults(json!({"timeoutRate": 1})).await;
    let captured = h.pay("pi_lost", "pm_card_visa", true).await;
    let declined = h.pay("pi_no", "pm_card_chargeDeclined", true).await;
    let challenged = h
        .post(
            "/v1/payments",
            Some("pi_3ds:authorize"),
            &json!({"reference": "pi_3ds", "amount": 1099, "currency": "usd",
                    "paymentMethod": "pm_card_threeDSecureRequired", "capture": true,
                    "returnUrl": "https://shop.test/back"}),
        )
        .await;
    let authorized = h.pay("pi_auth", "pm_card_visa", false).await;
    let charge = authorized.body["id"].as_str().unwrap().to_owned();
    let capture = h
        .post(
            &format!("/v1/payments/{charge}/capture"),
            Some("cap"),
            &json!({}),
        )
        .await;
    assert_eq!(capture.body["status"], "captured");
    let refund = json!({"payment": charge, "amount": 100, "reference": "re_lost"});
    h.post("/v1/refunds", Some("re_lost:refund"), &refund).await;
    // A replay of a lost answer announces nothing new.
    h.pay("pi_lost", "pm_card_visa", true).await;
    // Voiding has no notification.
    let voidable = h.pay("pi_void", "pm_card_visa", false).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.post(
        &format!("/v1/payments/{voidable}/void"),
        Some("v"),
        &json!({}),
    )
    .await;

    let sent = queued(&mut rx);
    let summary: Vec<(String, String)> = sent
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_owned(),
                n["data"]["reference"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        summary,
        [
            s("payment.succeeded", "pi_lost"),
            s("payment.failed", "pi_no"),
            s("payment.requires_action", "pi_3ds"),
            s("payment.succeeded", "pi_auth"),
            s("payment.succeeded", "pi_auth"),
            s("refund.succeeded", "re_lost"),
            s("payment.succeeded", "pi_void"),
        ]
    );
    assert_eq!(sent[0]["data"], captured.body);
    assert_eq!(sent[1]["data"]["declineCode"], "generic_decline");
    assert_eq!(
        sent[2]["data"]["redirectUrl"],
        challenged.body["redirectUrl"]
    );
    assert_eq!(sent[3]["data"]["status"], "authorized");
    assert_eq!(sent[4]["data"]["status"], "captured");
    assert_eq!(sent[5]["data"]["status"], "succeeded");
    assert_eq!(declined.status, 402);
}

#[tokio::test]
async fn without_a_notification_url_nothing_is_queued() {
    let h = harness();
    h.faults(json!({"timeoutRate": 1, "refundSettlementMs": 5}))
        .await;
    let charge = h.pay("pi_quiet", "pm_card_visa", true).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"payment": charge, "amount": 1, "reference": "re_q"});
    h.post("/v1/refunds", Some("re_q:refund"), &body).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut rx = h.sim.notifications.take_receiver().unwrap();
    assert!(rx.try_recv().is_err());
    // Settlement happens with or without anyone to tell.
    let now = h.get("/v1/refunds?reference=re_q").await;
    assert_eq!(now.body["data"][0]["status"], "succeeded");
}

#[tokio::test]
async fn stored_cards_without_cvc_and_bank_accounts_are_charged_by_number() {
    let h = harness();
    let mut body = card_payment("pi_on_file", "4242424242424242", 2099);
    body["card"].as_object_mut().unwrap().remove("cvc");
    let a = h
        .post("/v1/payments", Some("pi_on_file:authorize"), &body)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "captured");
    let mut declined = card_payment("pi_on_file_2", "4000000000000002", 2099);
    declined["card"].as_object_mut().unwrap().remove("cvc");
    let a = h
        .post("/v1/payments", Some("pi_on_file_2:authorize"), &declined)
        .await;
    assert_eq!(a.status, 402, "{}", a.body);

    let bank = |reference: &str, account: &str| {
        json!({
            "reference": reference, "amount": 700, "currency": "usd", "capture": true,
            "bankAccount": {"country": "US", "routingNumber": "110000000", "accountNumber": account,
                            "accountHolderName": "Jenny Rosen", "accountHolderType": "individual"}
        })
    };
    let a = h
        .post(
            "/v1/payments",
            Some("pi_bank_ok:authorize"),
            &bank("pi_bank_ok", "000123456789"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A debit is accepted now and settled by the customer's bank a moment later.
    assert_eq!(a.body["status"], "pending");
    let charge = a.body["id"].as_str().unwrap().to_owned();
    let voided = h
        .post(
            &format!("/v1/payments/{charge}/void"),
            Some("void-pending"),
            &json!({}),
        )
        .await;
    assert_eq!(voided.status, 409, "{}", voided.body);
    assert_eq!(voided.body["error"]["code"], "charge_not_voidable");
    for (reference, account) in [("pi_closed", "000111111116"), ("pi_poor", "000222222227")] {
        let a = h
            .post(
                "/v1/payments",
                Some(&format!("{reference}:authorize")),
                &bank(reference, account),
            )
            .await;
        assert_eq!(a.body["status"], "pending", "{}", a.body);
    }
    let a = h.pay("pi_bank_test", "pm_bank_account", true).await;
    assert_eq!(a.body["status"], "pending", "{}", a.body);
    let a = h.pay("pi_bank_manual", "pm_bank_account", false).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "capture_required");
    let settled = |reference: &str| {
        let ledger = h.sim.ledger();
        let charge = ledger.charges(Some(reference)).into_iter().next().cloned();
        charge.filter(|c| c.status != ChargeStatus::Pending)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ["pi_bank_ok", "pi_closed", "pi_poor", "pi_bank_test"]
        .iter()
        .any(|r| settled(r).is_none())
    {
        assert!(Instant::now() < deadline, "debits never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = settled("pi_bank_ok").unwrap();
    assert_eq!(
        (ok.status, ok.amount_captured),
        (ChargeStatus::Captured, 700)
    );
    assert_eq!(
        settled("pi_bank_test").unwrap().status,
        ChargeStatus::Captured
    );
    let closed = settled("pi_closed").unwrap();
    assert_eq!(closed.status, ChargeStatus::Declined);
    assert_eq!(closed.decline.unwrap().code, "account_closed");
    assert_eq!(
        settled("pi_poor").unwrap().decline.unwrap().code,
        "insufficient_funds"
    );
    let a = h
        .post(
            "/v1/payments",
            Some("pi_bank_bad:authorize"),
            &bank("pi_bank_bad", "12"),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "account_number_invalid");
}

#[tokio::test]
async fn the_challenge_page_serves_two_forms_and_redirects_to_the_signed_callback() {
    let h = harness_with(SimConfig {
        public_url: Some("http://sim.test".into()),
        callback_url: Some("http://paystream.test".into()),
        ..SimConfig::default()
    });
    let a = h
        .post(
            "/v1/payments",
            Some("k3ds"),
            &json!({"reference": "pi_3ds", "amount": 1099, "currency": "usd",
                    "paymentMethod": "pm_card_threeDSecureRequired", "capture": false,
                    "returnUrl": "https://shop.test/done"}),
        )
        .await;
    let id = a.body["id"].as_str().unwrap().to_owned();
    let path = format!("/sim/3ds/{id}");

    let page = h.cli.get(&path).send().await;
    page.assert_status_is_ok();
    page.assert_content_type("text/html; charset=utf-8");
    let text = page.0.into_body().into_string().await.unwrap();
    assert!(
        text.contains("10.99 USD") && text.contains("pi_3ds"),
        "{text}"
    );
    assert!(text.contains("Complete authentication") && text.contains("Fail authentication"));
    assert_eq!(
        text.matches(&format!("method=\"post\" action=\"{path}\""))
            .count(),
        2
    );
    assert!(text.contains("value=\"succeeded\"") && text.contains("value=\"failed\""));
    assert!(
        !text.contains("<script") && !text.contains("http"),
        "{text}"
    );

    let submit = |result: &'static str| {
        h.cli
            .post(&path)
            .content_type("application/x-www-form-urlencoded")
            .body(format!("result={result}"))
            .send()
    };
    let first = submit("succeeded").await;
    first.assert_status(poem::http::StatusCode::SEE_OTHER);
    let location = first.0.header("location").unwrap().to_owned();
    let prefix = "http://paystream.test/api/payment-intents/pi_3ds/3ds/callback?result=";
    let token = location.strip_prefix(prefix).expect(&location);
    let secret = crate::DEFAULT_NOTIFY_SECRET.as_bytes();
    let verified = paystream_domain::three_ds::ResultToken::verify(
        secret,
        Some(token),
        "pi_3ds",
        chrono::Utc::now(),
    )
    .unwrap();
    assert_eq!(verified.charge, id);
    assert_eq!(
        verified.outcome,
        paystream_domain::three_ds::ChallengeOutcome::Authorized
    );
    assert_eq!(h.sim_charges("pi_3ds").await[0]["status"], "authorized");

    // A second answer, even the other one, changes nothing and answers the same.
    let again = submit("failed").await;
    again.assert_status(poem::http::StatusCode::SEE_OTHER);
    assert_eq!(again.0.header("location"), Some(location.as_str()));
    assert_eq!(h.sim_charges("pi_3ds").await[0]["status"], "authorized");

    let missing = h.cli.get("/sim/3ds/ch_nope").send().await;
    missing.assert_status(poem::http::StatusCode::NOT_FOUND);
    missing.assert_content_type("text/html; charset=utf-8");
    let bad = h
        .cli
        .post(&path)
        .content_type("application/x-www-form-urlencoded")
        .body("result=maybe")
        .send()
        .await;
    bad.assert_status(poem::http::StatusCode::BAD_REQUEST);
}

#[test]
fn the_callback_url_comes_from_its_setting_or_the_notification_url() {
    let lookup = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let c = SimConfig::from_lookup(lookup(&[(
        "ACQUIRER_SIM_NOTIFY_URL",
        "http://127.0.0.1:8080/api/provider/webhooks",
    )]))
    .unwrap();
    let sim = Sim::new(c, CancellationToken::new());
    assert_eq!(
        sim.callback_base().as_deref(),
        Some("http://127.0.0.1:8080")
    );
    let c = SimConfig::from_lookup(lookup(&[
        (
            "ACQUIRER_SIM_NOTIFY_URL",
            "http://internal:8080/api/provider/webhooks",
        ),
        ("ACQUIRER_SIM_CALLBACK_URL", "https://pay.example/"),
    ]))
    .unwrap();
    let sim = Sim::new(c, CancellationToken::new());
    assert_eq!(sim.callback_base().as_deref(), Some("https://pay.example"));
    assert!(SimConfig::from_lookup(lookup(&[("ACQUIRER_SIM_CALLBACK_URL", "ftp://x")])).is_err());
}

async fn report_rows(h: &Harness, payout: &str) -> Vec<Vec<String>> {
    let resp = h
        .cli
        .get(format!("/v1/payouts/{payout}/report.csv"))
        .send()
        .await
        .0;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = resp.into_body().into_string().await.unwrap();
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn settling_pays_out_captures_less_fees_and_refunds_once_per_currency() {
    let h = harness();
    assert_eq!(h.pay("pi_a", "pm_card_visa", true).await.status, 200);
    let b = h.pay("pi_b", "pm_card_visa", true).await;
    // Authorized only: nothing to settle yet.
    assert_eq!(h.pay("pi_c", "pm_card_visa", false).await.status, 200);
    let jpy = json!({"reference": "pi_j", "amount": 5000, "currency": "jpy", "paymentMethod": "pm_card_visa", "capture": true});
    assert_eq!(
        h.post("/v1/payments", Some("pi_j:authorize"), &jpy)
            .await
            .status,
        200
    );
    let refund = json!({"payment": b.body["id"], "amount": 300, "reference": "re_b"});
    assert_eq!(
        h.post("/v1/refunds", Some("re_b:refund"), &refund)
            .await
            .status,
        200
    );

    let settled = h.post("/sim/settle", None, &json!({})).await;
    assert_eq!(settled.status, 200);
    let payouts = settled.body["data"].as_array().unwrap().clone();
    assert_eq!(payouts.len(), 2, "{}", settled.body);
    let (jpy_payout, usd_payout) = (&payouts[0], &payouts[1]);
    assert_eq!(jpy_payout["currency"], "jpy");
    // 5000 yen: 145 + 30 in fees.
    assert_eq!(jpy_payout["amount"], 5000 - 175);
    assert_eq!(usd_payout["currency"], "usd");
    // Two charges of 1099 (fee 32 + 30 = 62 each), one refund of 300.
    assert_eq!(usd_payout["amount"], 2 * (1099 - 62) - 300);
    assert_eq!(usd_payout["lines"], 3);
    assert!(usd_payout["id"].as_str().unwrap().starts_with("apo_"));
    assert!(usd_payout["arrivalDate"].as_str().unwrap().len() == 10);

    let rows = report_rows(&h, usd_payout["id"].as_str().unwrap()).await;
    assert_eq!(rows[0].join(","), crate::REPORT_HEADER.join(","));
    assert_eq!(rows.len(), 4);
    let charge = rows.iter().find(|r| r[2] == "pi_b").unwrap();
    assert_eq!(&charge[1..=1], ["charge"]);
    assert_eq!(charge[3], b.body["id"].as_str().unwrap());
    assert_eq!(charge[4..8], ["usd", "1099", "62", "1037"]);
    let refund_row = rows.iter().find(|r| r[2] == "re_b").unwrap();
    assert_eq!(refund_row[1], "refund");
    assert_eq!(refund_row[5..8], ["-300", "0", "-300"]);

    // Nothing is settled twice; a later capture goes into the next payout.
    assert_eq!(
        h.post("/sim/settle", None, &json!({})).await.body["data"],
        json!([])
    );
    let c = h.sim_charges("pi_c").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cap = h
        .post(
            &format!("/v1/payments/{c}/capture"),
            Some("c:capture"),
            &json!({}),
        )
        .await;
    assert_eq!(cap.status, 200);
    let next = h.post("/sim/settle", None, &json!({})).await.body["data"][0].clone();
    assert_eq!(next["lines"], 1);

    // The list, oldest first, and after a cursor.
    let all = h.get("/v1/payouts").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(all.body["hasMore"], false);
    let first = h.get("/v1/payouts?limit=1").await;
    assert_eq!(first.body["data"][0]["id"], jpy_payout["id"]);
    assert_eq!(first.body["hasMore"], true);
    let after = h
        .get(&format!(
            "/v1/payouts?after={}",
            usd_payout["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(after.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(after.body["data"][0]["id"], next["id"]);
    assert_eq!(h.get("/v1/payouts?after=apo_nope").await.status, 404);
    assert_eq!(h.get("/v1/payouts?limit=0").await.status, 400);
    assert_eq!(h.get("/v1/payouts?limit=x").await.status, 400);
    let missing = h.cli.get("/v1/payouts/apo_nope/report.csv").send().await.0;
    assert_eq!(missing.status().as_u16(), 404);

    // Reset forgets payouts too.
    assert_eq!(h.post("/sim/reset", None, &json!({})).await.status, 204);
    assert_eq!(h.get("/v1/payouts").await.body["data"], json!([]));
}

#[tokio::test]
async fn settlement_faults_corrupt_the_report_not_the_books() {
    let h = harness();
    assert_eq!(h.pay("pi_a", "pm_card_visa", true).await.status, 200);
    let set = h
        .faults(json!({"settlement": {"amountSkewRate": 1, "feeSkewRate": 1.0, "duplicateRate": 1, "extraRate": 1}}))
        .await;
    assert_eq!(set.status, 200);
    assert_eq!(set.body["settlement"]["amountSkewPerMillion"], 1_000_000);
    let payout = h.post("/sim/settle", None, &json!({})).await.body["data"][0].clone();
    let rows = report_rows(&h, payout["id"].as_str().unwrap()).await;
    // Header, the line twice, and one made-up line under the same reference.
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1], rows[2]);
    assert_eq!(rows[1][5..8], ["1100", "63", "1037"]);
    assert_eq!(rows[3][2], "pi_a");
    assert_ne!(rows[3][3], rows[1][3]);
    assert_eq!(payout["amount"], 1037 * 2 + 941);

    h.faults(json!({"settlement": {"dropRate": 1}})).await;
    assert_eq!(h.pay("pi_b", "pm_card_visa", true).await.status, 200);
    let dropped = h.post("/sim/settle", None, &json!({})).await.body["data"][0].clone();
    assert_eq!(dropped["lines"], 0);
    assert_eq!(dropped["amount"], 0);
    // Dropped from the report is still settled: it never comes back.
    h.faults(json!({})).await;
    assert_eq!(
        h.post("/sim/settle", None, &json!({})).await.body["data"],
        json!([])
    );

    let bad = h.faults(json!({"settlement": {"dropRate": 2}})).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["param"], "settlement.dropRate");
}

#[tokio::test]
async fn the_simulator_settles_on_its_own_timer() {
    let h = harness_with(SimConfig {
        seed: Some(1),
        settle_every: Duration::from_millis(20),
        ..SimConfig::default()
    });
    h.sim.start_settlement_timer(h.sim.config.settle_every);
    assert_eq!(h.pay("pi_a", "pm_card_visa", true).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = h.get("/v1/payouts").await;
        if list.body["data"].as_array().is_some_and(|d| !d.is_empty()) {
            assert_eq!(list.body["data"][0]["lines"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "no payout within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_fee_schedule_and_settlement_period_come_from_the_environment() {
    let c = SimConfig::from_lookup(|_| None).unwrap();
    assert_eq!(c.settle_every, crate::DEFAULT_SETTLE_EVERY);
    assert_eq!(c.dispute_fee, 1500);
    assert_eq!(
        (c.fees.percent_bps(), c.fees.fixed().minor_units()),
        (290, 30)
    );
    let c = SimConfig::from_lookup(|k| match k {
        "PAYSTREAM_FEE_PERCENT_BPS" => Some("150".into()),
        "PAYSTREAM_FEE_FIXED" => Some("0".into()),
        "ACQUIRER_SIM_SETTLE_EVERY_SECS" => Some("0".into()),
        "PAYSTREAM_DISPUTE_FEE" => Some("2000".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.dispute_fee, 2000);
    assert_eq!(
        (c.fees.percent_bps(), c.fees.fixed().minor_units()),
        (150, 0)
    );
    assert!(c.settle_every.is_zero());
    for (var, value) in [
        ("PAYSTREAM_FEE_PERCENT_BPS", "10001"),
        ("PAYSTREAM_FEE_PERCENT_BPS", "99999999999"),
        ("PAYSTREAM_FEE_FIXED", "-1"),
        ("PAYSTREAM_FEE_FIXED", "99999999999999999999"),
        ("ACQUIRER_SIM_SETTLE_EVERY_SECS", "soon"),
        ("PAYSTREAM_DISPUTE_FEE", "-1"),
        ("PAYSTREAM_DISPUTE_FEE", "18446744073709551615"),
    ] {
        let err = SimConfig::from_lookup(|k| (k == var).then(|| value.to_owned())).unwrap_err();
        assert!(err.to_string().contains(var), "{var}={value}: {err}");
    }
}
