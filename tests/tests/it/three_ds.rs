//! 3-D Secure end to end, driven as a browser without JavaScript would: the challenge page at
//! the simulator over real HTTP, its form POST, and each 303 followed by hand.

use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use paystream_shared::domain::money::Amount;
use paystream_shared::domain::three_ds::{ChallengeOutcome, ResultToken};
use paystream_tests::{eventually, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(30);
const RETURN_URL: &str = "https://shop.example/back?order=42";

/// A browser that does not follow redirects, so each hop is checked.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An intent for the 3-D Secure test card, confirmed and waiting in `requires_action`;
/// returns its id and the challenge URL.
async fn challenged(app: &TestApp, capture_method: &str) -> (String, String) {
    let pi = app
        .create_intent(json!({"paymentMethodId": "pm_card_threeDSecureRequired",
                              "returnUrl": RETURN_URL, "captureMethod": capture_method}))
        .await;
    let id = pi["id"].as_str().unwrap().to_owned();
    let r = app
        .post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let pi = app.wait_for_status(&id, &["requires_action"], WAIT).await;
    let url = pi["nextAction"]["redirectToUrl"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, url)
}

/// Opens the challenge page, checks it, presses the button for `result`; returns where the
/// simulator sends the browser (paystream's callback).
async fn answer_challenge(url: &str, result: &str) -> String {
    let b = browser();
    let page = b.get(url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Complete authentication"), "{html}");
    assert!(html.contains("Fail authentication"), "{html}");
    assert!(html.contains("10.99 USD"), "{html}");
    let action = url.split_once("://").unwrap().1;
    let action = &action[action.find('/').unwrap()..];
    assert_eq!(
        html.matches(&format!("<form method=\"post\" action=\"{action}\">"))
            .count(),
        2,
        "{html}"
    );
    let posted = b
        .post(url)
        .form(&[("result", result)])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    posted.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// Follows the callback as the browser would; returns (status, Location).
async fn follow(location: &str) -> (StatusCode, Option<String>, String) {
    let r = browser().get(location).send().await.unwrap();
    let status = r.status();
    let to = r
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, to, r.text().await.unwrap())
}

fn back_url(id: &str) -> String {
    format!("{RETURN_URL}&payment_intent={id}")
}

async fn intent(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/payment-intents/{id}")).await.body
}

async fn transitions(app: &TestApp, id: &str, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE object_id = $1 AND action = $2")
        .bind(id)
        .bind(action)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn notification_outcomes(app: &TestApp, id: &str) -> Vec<Option<String>> {
    sqlx::query_scalar(
        "SELECT outcome FROM provider_events WHERE payload->'data'->>'reference' = $1 \
         AND type <> 'payment.requires_action' ORDER BY received_at",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

fn secret(app: &TestApp) -> Vec<u8> {
    app.config
        .acquirer_webhook_secret
        .expose()
        .as_bytes()
        .to_vec()
}

#[tokio::test]
async fn three_ds_complete_authentication_succeeds_with_one_charge() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let (id, url) = challenged(&app, "automatic").await;
    let callback = answer_challenge(&url, "succeeded").await;
    assert!(
        callback.starts_with(&format!(
            "{}/api/payment-intents/{id}/3ds/callback?result=",
            app.address
        )),
        "{callback}"
    );
    let (status, to, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(to.as_deref(), Some(back_url(&id).as_str()));
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amountReceived"], 1099);
    assert!(pi["nextAction"].is_null());
    let charges = app.sim_charges(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["status"], "captured");

    // A second press of the button, and a reload of the callback, change nothing.
    let b = browser();
    let again = b
        .post(&url)
        .form(&[("result", "failed")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.headers()[LOCATION].to_str().unwrap(), callback);
    let (status, to, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(to.as_deref(), Some(back_url(&id).as_str()));
    assert_eq!(intent(&app, &id).await["status"], "succeeded");
    assert_eq!(app.sim_charges(&id).await.len(), 1);
}

#[tokio::test]
async fn three_ds_failed_authentication_fails_the_intent() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let (id, url) = challenged(&app, "automatic").await;
    let callback = answer_challenge(&url, "failed").await;
    let (status, to, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(to.as_deref(), Some(back_url(&id).as_str()));
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "failed", "{pi}");
    assert_eq!(pi["lastPaymentError"]["code"], "authentication_failed");
    assert!(pi["nextAction"].is_null());
}

#[tokio::test]
async fn three_ds_callback_alone_completes_when_the_notification_is_dropped() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let (id, url) = challenged(&app, "automatic").await;
    app.sim_faults(json!({"notifications": {"dropRate": 1}}))
        .await;
    let callback = answer_challenge(&url, "succeeded").await;
    let (status, _, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(intent(&app, &id).await["status"], "succeeded");
    assert!(notification_outcomes(&app, &id).await.is_empty());
    // The callback's capture posted its charge in the same transaction.
    app.assert_posted_once(&id).await;
}

#[tokio::test]
async fn three_ds_notification_alone_completes_when_the_callback_never_comes() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let (id, url) = challenged(&app, "automatic").await;
    // The browser is closed after the challenge: the callback is never followed.
    let _callback = answer_challenge(&url, "succeeded").await;
    let pi = app.wait_for_status(&id, &["succeeded"], WAIT).await;
    assert_eq!(pi["amountReceived"], 1099);
    assert_eq!(
        notification_outcomes(&app, &id).await,
        [Some("applied".to_owned())]
    );
}

#[tokio::test]
async fn three_ds_callback_and_notification_each_move_it_once() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let (id, url) = challenged(&app, "automatic").await;
    // Confirming already passed through `processing` once, before the challenge.
    let before = transitions(&app, &id, "payment_intent.processing").await;
    let callback = answer_challenge(&url, "succeeded").await;
    let (status, _, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let outcomes = eventually(WAIT, "the notification to be processed", || async {
        let o = notification_outcomes(&app, &id).await;
        (o.len() == 1 && o[0].is_some()).then_some(o)
    })
    .await;
    // Whichever came first applied it; the other found it done.
    assert!(
        matches!(outcomes[0].as_deref(), Some("applied" | "unchanged")),
        "{outcomes:?}"
    );
    assert_eq!(intent(&app, &id).await["status"], "succeeded");
    assert_eq!(
        transitions(&app, &id, "payment_intent.processing").await,
        before + 1,
        "one move to processing"
    );
    assert_eq!(
        transitions(&app, &id, "payment_intent.succeeded").await,
        1,
        "one move to succeeded"
    );
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    // Two messengers of one capture, one charge posting.
    app.assert_posted_once(&id).await;
}

#[tokio::test]
async fn three_ds_bad_tokens_are_400_and_move_nothing() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    // No refund worker: nothing but the callback could move the intents.
    let (id, url) = challenged(&app, "automatic").await;
    let (other, other_url) = challenged(&app, "automatic").await;
    let charge = app.sim_charges(&id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let callback = answer_challenge(&url, "succeeded").await;
    let good = callback.split_once("result=").unwrap().1.to_owned();
    let base = format!("{}/api/payment-intents/{id}/3ds/callback", app.address);

    let (payload, tag) = good.split_once('.').unwrap();
    let mut tampered_tag = tag.to_owned().into_bytes();
    tampered_tag[3] = if tampered_tag[3] == b'A' { b'B' } else { b'A' };
    let tampered_tag = format!("{payload}.{}", String::from_utf8(tampered_tag).unwrap());
    let forged = ResultToken::new(
        &id,
        &charge,
        ChallengeOutcome::Authorized,
        Amount::from_stored(1099),
        chrono::Utc::now(),
    )
    .sign(b"not the acquirer's secret");
    let forged_payload = format!("{}.{tag}", forged.split_once('.').unwrap().0);
    let expired = ResultToken::new(
        &id,
        &charge,
        ChallengeOutcome::Captured,
        Amount::from_stored(1099),
        chrono::Utc::now() - chrono::TimeDelta::minutes(11),
    )
    .sign(&secret(&app));
    let other_callback = answer_challenge(&other_url, "succeeded").await;
    let for_other = other_callback.split_once("result=").unwrap().1.to_owned();

    for (what, query) in [
        ("tampered signature", format!("?result={tampered_tag}")),
        ("payload under another key", format!("?result={forged}")),
        ("tampered payload", format!("?result={forged_payload}")),
        ("expired", format!("?result={expired}")),
        ("another intent's token", format!("?result={for_other}")),
        ("missing", String::new()),
        ("empty", "?result=".to_owned()),
        ("garbage", "?result=not-a-token".to_owned()),
    ] {
        let (status, to, body) = follow(&format!("{base}{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(to, None, "{what}");
        assert!(body.contains("could not be verified"), "{what}: {body}");
    }
    // Bytes that are not even text are refused by the query parser, still a 400.
    let (status, _, _) = follow(&format!("{base}?result=%00%FF")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nor does the right token at the wrong intent's callback.
    let (status, _, _) = follow(&format!(
        "{}/api/payment-intents/{other}/3ds/callback?result={good}",
        app.address
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for pi in [&id, &other] {
        assert_eq!(intent(&app, pi).await["status"], "requires_action");
        assert_eq!(transitions(&app, pi, "payment_intent.succeeded").await, 0);
    }
    // The genuine one still works.
    let (status, _, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(intent(&app, &id).await["status"], "succeeded");
}

#[tokio::test]
async fn three_ds_with_manual_capture_holds_the_authorization() {
    let app = spawn_app().await;
    let _c = app.start_confirm_worker();
    let (id, url) = challenged(&app, "manual").await;
    let callback = answer_challenge(&url, "succeeded").await;
    let (status, to, _) = follow(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(to.as_deref(), Some(back_url(&id).as_str()));
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "requires_capture", "{pi}");
    assert_eq!(pi["amountCapturable"], 1099);
    assert!(pi["authorizationExpiresAt"].is_string());
    assert_eq!(app.sim_charges(&id).await[0]["status"], "authorized");
}

#[tokio::test]
async fn three_ds_callback_is_documented_without_a_key() {
    let app = spawn_app().await;
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(spec.status, StatusCode::OK);
    let op = &spec.body["paths"]["/payment-intents/{id}/3ds/callback"]["get"];
    assert!(op.is_object(), "{}", spec.text);
    let responses = &op["responses"];
    let location = responses["303"]["headers"]
        .as_object()
        .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("location")));
    assert!(location.is_some(), "{op}");
    assert!(
        responses["400"]["content"]["text/html; charset=utf-8"].is_object(),
        "{op}"
    );
    assert!(
        op["security"].as_array().is_none_or(|s| s.is_empty()),
        "the browser carries no key: {op}"
    );
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["id", "result"]);
    // No key is asked for at the callback either.
    let (status, _, _) = follow(&format!(
        "{}/api/payment-intents/pi_nope/3ds/callback",
        app.address
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_card_number_sent_to_the_3ds_callback_is_refused_with_its_html_page() {
    let app = spawn_app().await;
    // A browser lands on the callback: even the card guard's refusal is the documented HTML
    // 400, never the API's JSON, and it never repeats the number.
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/payment-intents/pi_x/3ds/callback?result=4242424242424242",
            None,
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(!r.text.contains("4242424242424242"), "{}", r.text);
    // Any other route keeps the contract's JSON refusal.
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/payment-intents?customerId=4242424242424242",
            None,
            None,
            None,
        )
        .await;
    r.assert_error(400, "card_data_not_allowed");
}
