//! The HTTP acquirer client against the real simulator over HTTP: every call, the error
//! classes, retries under injected faults, and idempotency keys that survive a timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use acquirer_sim::{spawn, SimConfig, SpawnedSim};
use paystream_shared::retry::{RetrySchedule, MAX_ATTEMPTS};
use paystream_workers::acquirer::*;
use serde_json::{json, Value};

fn sim() -> SpawnedSim {
    spawn(SimConfig {
        timeout_hang: Duration::from_secs(3),
        seed: Some(42),
        ..SimConfig::default()
    })
    .unwrap()
}

fn client(sim: &SpawnedSim, timeout: Duration) -> HttpAcquirer {
    HttpAcquirer::new(&sim.url, timeout).unwrap()
}

fn authorize(reference: &str, payment_method: &str, capture: bool) -> AuthorizeRequest {
    AuthorizeRequest {
        reference: reference.to_owned(),
        amount: 1099,
        currency: "usd".to_owned(),
        payment_method: paystream_workers::acquirer::Instrument::Test(payment_method.to_owned()),
        capture,
        return_url: None,
    }
}

fn fast(attempts: u32) -> RetrySchedule {
    RetrySchedule::new(Duration::from_millis(1), attempts)
}

async fn set_faults(sim: &SpawnedSim, faults: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/sim/faults", sim.url))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn sim_charges(sim: &SpawnedSim, reference: &str) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{}/sim/charges?reference={reference}", sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn authorizes_captures_voids_and_refunds_through_the_simulator() {
    let sim = sim();
    let acq = client(&sim, Duration::from_secs(5));

    let outcome = acq
        .authorize(&authorize("pi_a", "pm_card_visa", true))
        .await;
    let PaymentOutcome::Captured { charge_id, amount } = outcome.unwrap() else {
        panic!("expected a capture");
    };
    assert!(charge_id.starts_with("ch_"));
    assert_eq!(amount, 1099);

    let refund = RefundRequest {
        charge_id: charge_id.clone(),
        amount: 99,
        reference: "re_1".to_owned(),
    };
    let receipt = acq.refund(&refund).await.unwrap();
    assert!(receipt.id.starts_with("rf_"));
    assert_eq!(
        (receipt.amount, receipt.status),
        (99, RefundStatus::Succeeded)
    );
    // The same refund again is the same refund, not a second one.
    assert_eq!(acq.refund(&refund).await.unwrap(), receipt);
    let charges = acq.charges_for_reference("pi_a").await.unwrap();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].amount_refunded, 99);
    assert_eq!(charges[0].status, ChargeStatus::Captured);
    assert_eq!(charges[0].currency, "usd");

    let outcome = acq
        .authorize(&authorize("pi_m", "pm_card_mastercard", false))
        .await
        .unwrap();
    let PaymentOutcome::Authorized { charge_id, amount } = outcome else {
        panic!("expected an authorization, got {outcome:?}");
    };
    assert_eq!(amount, 1099);
    let captured = acq
        .capture(&CaptureRequest {
            charge_id: charge_id.clone(),
            amount: Some(1000),
        })
        .await
        .unwrap();
    assert_eq!(
        (captured.status, captured.amount_captured),
        (ChargeStatus::Captured, 1000)
    );

    let outcome = acq
        .authorize(&authorize("pi_v", "pm_card_visa", false))
        .await
        .unwrap();
    let PaymentOutcome::Authorized { charge_id, .. } = outcome else {
        panic!("expected an authorization, got {outcome:?}");
    };
    let voided = acq.void(&VoidRequest { charge_id }).await.unwrap();
    assert_eq!(voided.status, ChargeStatus::Voided);
    assert!(acq
        .charges_for_reference("pi_none")
        .await
        .unwrap()
        .is_empty());
}
#[tokio::test]
async fn refunds_are_found_by_reference_with_their_current_status() {
    let sim = sim();
    let acq = client(&sim, Duration::from_secs(5));
    assert_eq!(acq.refund_by_reference("re_none").await.unwrap(), None);
    let PaymentOutcome::Captured { charge_id, .. } = acq
        .authorize(&authorize("pi_r", "pm_card_visa", true))
        .await
        .unwrap()
    else {
        panic!("expected a capture");
    };
    set_faults(&sim, json!({"refundSettlementMs": 50})).await;
    let request = RefundRequest {
        charge_id,
        amount: 300,
        reference: "re_async".to_owned(),
    };
    let receipt = acq.refund(&request).await.unwrap();
    assert_eq!(receipt.status, RefundStatus::Pending);
    let found = acq.refund_by_reference("re_async").await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.amount),
        (receipt.id.as_str(), 300)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found = acq.refund_by_reference("re_async").await.unwrap().unwrap();
    assert_eq!(found.status, RefundStatus::Succeeded);
    set_faults(&sim, json!({"errorRate": 1})).await;
    assert!(acq
        .refund_by_reference("re_async")
        .await
        .unwrap_err()
        .is_transient());
}
#[tokio::test]
async fn declines_are_outcomes_and_3ds_asks_for_action() {
    let sim = sim();
    let acq = client(&sim, Duration::from_secs(5));
    for (pm, decline_code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_insufficientFunds", "insufficient_funds"),
    ] {
        let outcome = acq.authorize(&authorize(pm, pm, true)).await.unwrap();
        let PaymentOutcome::Declined {
            code,
            decline_code: got,
            message,
        } = outcome
        else {
            panic!("{pm}: expected a decline, got {outcome:?}");
        };
        assert_eq!(code, "card_declined", "{pm}");
        assert_eq!(got.as_deref(), Some(decline_code), "{pm}");
        assert!(!message.is_empty());
    }
    let mut req = authorize("pi_3ds", "pm_card_threeDSecureRequired", true);
    req.return_url = Some("https://shop.test/back".to_owned());
    let outcome = acq.authorize(&req).await.unwrap();
    let PaymentOutcome::ActionRequired {
        charge_id,
        redirect_url,
    } = outcome
    else {
        panic!("expected action, got {outcome:?}");
    };
    assert_eq!(redirect_url, format!("{}/sim/3ds/{charge_id}", sim.url));
}
#[tokio::test]
async fn server_errors_are_transient_and_client_errors_final() {
    let sim = sim();
    let acq = client(&sim, Duration::from_secs(5));
    let err = acq
        .authorize(&authorize("pi_pe", "pm_card_processingError", true))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("500"), "{err}");

    let err = acq
        .authorize(&authorize("pi_x", "pm_card_unknown", true))
        .await
        .unwrap_err();
    let AcquirerError::Rejected { status, code, .. } = &err else {
        panic!("expected a rejection, got {err}");
    };
    assert_eq!((*status, code.as_str()), (400, "payment_method_unknown"));
    assert!(!err.is_transient());

    // A final answer is not retried.
    let PaymentOutcome::Captured { charge_id, .. } = acq
        .authorize(&authorize("pi_c", "pm_card_visa", true))
        .await
        .unwrap()
    else {
        panic!("expected a capture");
    };
    let attempts = AtomicU32::new(0);
    let capture = CaptureRequest {
        charge_id,
        amount: None,
    };
    let err = with_retries(&fast(MAX_ATTEMPTS), || {
        attempts.fetch_add(1, Ordering::SeqCst);
        acq.capture(&capture)
    })
    .await
    .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert!(
        matches!(err, AcquirerError::Rejected { status: 409, .. }),
        "{err}"
    );

    set_faults(&sim, json!({"errorRate": 1})).await;
    let err = acq.charges_for_reference("pi_c").await.unwrap_err();
    assert!(err.is_transient());
}
#[tokio::test]
async fn retries_reach_exactly_one_charge_at_a_50_percent_error_rate() {
    let sim = sim();
    let acq = client(&sim, Duration::from_secs(5));
    set_faults(&sim, json!({"errorRate": 0.5})).await;
    let attempts = AtomicU32::new(0);
    for i in 0..5 {
        let reference = format!("pi_flaky_{i}");
        let req = authorize(&reference, "pm_card_visa", true);
        // A generous budget: at one failure in two, twenty failures in a row would take
        // about a million runs.
        let outcome = with_retries(&fast(20), || {
            attempts.fetch_add(1, Ordering::SeqCst);
            acq.authorize(&req)
        })
        .await
        .unwrap();
        assert!(matches!(outcome, PaymentOutcome::Captured { .. }));
        set_faults(&sim, json!({})).await;
        assert_eq!(sim_charges(&sim, &reference).await.len(), 1, "{reference}");
        set_faults(&sim, json!({"errorRate": 0.5})).await;
    }
    assert!(
        attempts.load(Ordering::SeqCst) > 5,
        "no failure was injected"
    );
}
#[tokio::test]
async fn a_timed_out_charge_is_found_again_by_its_key() {
    let sim = sim();
    let acq = client(&sim, Duration::from_millis(300));
    set_faults(&sim, json!({"timeoutRate": 1})).await;
    let req = authorize("pi_slow", "pm_card_visa", true);
    let err = acq.authorize(&req).await.unwrap_err();
    assert_eq!(
        err,
        AcquirerError::Transient {
            reason: "no answer within 300 ms".to_owned(),
            code: None,
        }
    );
    // The acquirer charged even though we never heard back.
    let charges = sim_charges(&sim, "pi_slow").await;
    assert_eq!(charges.len(), 1);

    set_faults(&sim, json!({})).await;
    let outcome = with_retries(&fast(MAX_ATTEMPTS), || acq.authorize(&req))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        PaymentOutcome::Captured {
            charge_id: charges[0]["id"].as_str().unwrap().to_owned(),
            amount: 1099
        }
    );
    assert_eq!(sim_charges(&sim, "pi_slow").await.len(), 1);
}
#[tokio::test]
async fn connection_failures_are_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let acq =
        HttpAcquirer::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
    let err = acq.charges_for_reference("pi_x").await.unwrap_err();
    assert!(matches!(err, AcquirerError::Transient { .. }), "{err}");
}
