//! Client-side confirmation in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver). The demo checkout (crate `paystream-demo`) creates the intent on
//! its server with the secret key and gives the page only the client secret and the
//! publishable key. The card is typed into the vault's own card fields (an iframe on the
//! vault's origin), which hand the page a token; the page confirms at the API from the browser
//! (cross-origin, so the API's CORS is part of what is tested), goes through the simulator's
//! challenge page when asked, and back to the return URL. Chrome's own network log then shows
//! that no request from the browser carried a secret key and that the card number went to the
//! vault alone. Also the CORS rules the page depends on, over plain HTTP.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{json, Value};

use paystream_tests::{eventually, spawn_app, TestApp};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(60);
const THREE_DS_CARD: &str = "4000002760003184";
const VISA: &str = "4242424242424242";
const DECLINED_CARD: &str = "4000000000000002";

/// chromedriver on a free port, with one headless Chromium session on a fresh profile.
/// [`Browser::quit`] ends the session (Chromium exits); dropping it (a failed test) kills
/// Chromium's and chromedriver's processes by their ids, and removes the profile either way.
struct Browser {
    client: Client,
    /// chromedriver's URL, for the performance log (not part of WebDriver proper).
    driver_url: String,
    driver: Child,
    /// The browser process, from the session's `goog:processID`.
    chromium: Option<u32>,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        // Never skipped: CI must have run the browser test, so a missing browser is a failure.
        assert!(
            Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file(),
            "{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/install-browser"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(WAIT, "chromedriver to be ready", || async {
            let r = http.get(format!("{url}/status")).send().await.ok()?;
            let body: Value = r.json().await.ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        let profile = std::env::temp_dir().join(format!(
            "paystream-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            // Chrome's DevTools network events, read back by `Browser::requests`.
            "goog:loggingPrefs": {"performance": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        // fantoccini's hyper-rustls links aws-lc-rs and reqwest links ring, so rustls cannot
        // pick a provider by itself; ring, as everywhere else in paystream.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session");
        let chromium = client
            .capabilities()
            .and_then(|c| c.get("goog:processID"))
            .and_then(Value::as_u64)
            .and_then(|pid| u32::try_from(pid).ok());
        Browser {
            client,
            driver_url: url,
            driver,
            chromium,
            profile,
        }
    }

    /// Ends the session the WebDriver way: Chromium closes its windows and exits.
    async fn quit(mut self) {
        let client = self.client.clone();
        client.close().await.expect("the session ends");
        self.chromium = None;
    }

    /// Waits for the element `css` on the current page.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        let found = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.url().await),
        }
    }

    /// Every request the browser sent since the last call, from Chrome's performance log
    /// (`Network.requestWillBeSent`): its URL, headers and body, as JSON.
    async fn requests(&self) -> Vec<Value> {
        let session = self
            .client
            .session_id()
            .await
            .expect("a session id")
            .expect("a session");
        let log: Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&json!({"type": "performance"}))
            .send()
            .await
            .expect("the performance log")
            .json()
            .await
            .expect("a JSON log");
        log["value"]
            .as_array()
            .expect("log entries")
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .map(|m| m["message"]["params"]["request"].clone())
            .collect()
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Types into the field `css`.
    async fn fill(&self, css: &str, text: &str) {
        self.element(css)
            .await
            .send_keys(text)
            .await
            .expect("typed");
    }

    /// The text of `css` once it is one of `wanted` (the return page refreshes itself while the
    /// intent moves, so the element is looked up afresh each time).
    async fn text_becomes(&self, css: &str, wanted: &[&str]) -> String {
        eventually(
            WAIT,
            &format!("{css} to read one of {wanted:?}"),
            || async {
                let text = self
                    .client
                    .find(Locator::Css(css))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                wanted.contains(&text.as_str()).then_some(text)
            },
        )
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only by id, and only the processes this test started.
        if let Some(pid) = self.chromium.filter(|pid| *pid > 1) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The demo checkout for `app`'s merchant (its secret key on the server, a new publishable
/// key in the page), on a port of its own; its URL.
async fn serve_demo(app: &TestApp) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind demo");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let config = paystream_demo::DemoConfig {
        api_url: app.address.clone(),
        vault_url: app.vault_url.clone(),
        secret_key: app.api_key.clone(),
        // The key lists the demo's origin, as `paystream up` makes it.
        publishable_key: app.publishable_key_for(&[&url]).await,
    };
    tokio::spawn(paystream_demo::run(
        listener,
        config,
        app.shutdown.child_token(),
    ));
    url
}

/// What one payment on the demo page did: the intent, the status the return page shows (and
/// its error line), and every request the browser sent.
struct Paid {
    id: String,
    status: String,
    error: Option<String>,
    requests: Vec<Value>,
}

/// Pays 10.99 USD with `card` on the demo page in Chromium, typing it into the vault's card
/// fields; answers a 3-D Secure challenge with `challenge` when one is given; waits on the
/// return page for a final status.
async fn pay(app: &TestApp, card: &str, challenge: Option<&str>) -> Paid {
    app.start_vault().await;
    let demo = serve_demo(app).await;
    let browser = Browser::start().await;
    browser.client.goto(&demo).await.expect("the checkout page");
    // The card fields are the vault's page, in the iframe; the page itself has none.
    browser
        .element("iframe#card")
        .await
        .enter_frame()
        .await
        .expect("into the card fields");
    let at: String = browser
        .client
        .execute("return window.location.origin", vec![])
        .await
        .expect("the frame's origin")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(at, app.vault_url, "the card fields are served by the vault");
    browser.fill("#number", card).await;
    browser.fill("#expiry", "12/34").await;
    browser.fill("#cvc", "123").await;
    browser
        .client
        .enter_parent_frame()
        .await
        .expect("back to the page");
    // Enabled once the card fields said they are ready.
    eventually(WAIT, "the Pay button to be enabled", || async {
        browser
            .element("#pay")
            .await
            .is_enabled()
            .await
            .ok()
            .filter(|e| *e)
    })
    .await;
    browser.element("#pay").await.click().await.expect("Pay");

    if let Some(button) = challenge {
        // The page tokenized at the vault, confirmed from the browser, and followed the
        // intent's redirect to the issuer's challenge, served by the simulator.
        let found = browser
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(&format!(
                "//button[normalize-space()='{button}']"
            )))
            .await;
        let challenge = match found {
            Ok(button) => button,
            Err(e) => panic!("no {button:?} button at {}: {e}", browser.url().await),
        };
        let at = browser.url().await;
        assert!(at.starts_with(&format!("{}/sim/3ds/", app.sim_url)), "{at}");
        challenge.click().await.expect("the challenge button");
    }

    let status = browser
        .text_becomes("#status", &["succeeded", "failed"])
        .await;
    let error = match browser.client.find(Locator::Css("#error")).await {
        Ok(e) => e.text().await.ok(),
        Err(_) => None,
    };
    let back = browser.url().await;
    let id = back
        .strip_prefix(&format!("{demo}/return?payment_intent="))
        .unwrap_or_else(|| panic!("not the return URL: {back}"))
        .to_owned();
    let requests = browser.requests().await;
    browser.quit().await;
    Paid {
        id,
        status,
        error,
        requests,
    }
}

/// From the browser's own network log: no request carried a secret key (`sk_`), the card
/// number went to the vault and nowhere else, and the API was called with the publishable
/// key (the confirm from the browser).
fn assert_what_the_browser_sent(app: &TestApp, paid: &Paid, card: &str) {
    let mut to_vault = 0;
    let mut confirms = 0;
    for r in &paid.requests {
        let url = r["url"].as_str().unwrap_or_default();
        let seen = format!("{} {} {}", url, r["headers"], r["postData"]);
        assert!(
            !seen.contains("sk_"),
            "a secret key left the browser: {seen}"
        );
        assert!(
            !seen.contains(&app.api_key),
            "the secret key left the browser: {seen}"
        );
        if seen.contains(card) {
            assert!(
                url.starts_with(&format!("{}/vault/", app.vault_url)),
                "the card number went to {url}"
            );
            to_vault += 1;
        }
        if url.starts_with(&format!("{}/api/payment-intents/", app.address))
            && url.ends_with("/confirm")
            && r["method"] == "POST"
        {
            assert!(seen.contains("pk_"), "{seen}");
            confirms += 1;
        }
    }
    assert_eq!(to_vault, 1, "one tokenization: {:#?}", paid.requests);
    assert!(confirms >= 1, "the browser confirmed: {:#?}", paid.requests);
}

async fn intent(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn a_visa_typed_into_the_vaults_card_fields_pays_from_the_browser() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let paid = pay(&app, VISA, None).await;
    assert_eq!(paid.status, "succeeded");
    assert_what_the_browser_sent(&app, &paid, VISA);
    let pi = intent(&app, &paid.id).await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amountReceived"], paystream_demo::AMOUNT);
    let method = pi["paymentMethodId"].as_str().unwrap_or_default();
    let pm = app.get(&format!("/api/payment-methods/{method}")).await;
    assert_eq!(pm.body["card"]["last4"], "4242", "{}", pm.text);
    assert_eq!(pm.body["customerId"], paystream_demo::CUSTOMER);
}

#[tokio::test]
async fn a_card_typed_into_the_checkout_page_pays_after_3ds_in_a_real_browser() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let paid = pay(&app, THREE_DS_CARD, Some("Complete authentication")).await;
    assert_eq!(paid.status, "succeeded");
    assert_what_the_browser_sent(&app, &paid, THREE_DS_CARD);
    let pi = intent(&app, &paid.id).await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amountReceived"], paystream_demo::AMOUNT);
    let charges = app.sim_charges(&paid.id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["status"], "captured", "{charges:?}");
    // The card the browser typed is the intent's payment method, stored at the vault.
    let method = pi["paymentMethodId"].as_str().unwrap_or_default();
    let pm = app.get(&format!("/api/payment-methods/{method}")).await;
    assert_eq!(pm.status, StatusCode::OK, "{}", pm.text);
    assert_eq!(pm.body["card"]["last4"], "3184", "{}", pm.text);
    assert_eq!(pm.body["customerId"], paystream_demo::CUSTOMER);
}

#[tokio::test]
async fn failing_3ds_in_a_real_browser_fails_the_intent_and_captures_nothing() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let paid = pay(&app, THREE_DS_CARD, Some("Fail authentication")).await;
    assert_eq!(paid.status, "failed");
    assert_what_the_browser_sent(&app, &paid, THREE_DS_CARD);
    let pi = intent(&app, &paid.id).await;
    assert_eq!(pi["status"], "failed", "{pi}");
    assert_eq!(
        pi["lastPaymentError"]["code"], "authentication_failed",
        "{pi}"
    );
    assert_eq!(pi["amountReceived"], 0);
    assert_eq!(app.acquirer_totals(&paid.id).await, (0, 0));
    let charges = app.sim_charges(&paid.id).await;
    assert!(
        charges.iter().all(|c| c["status"] != "captured"),
        "{charges:?}"
    );
}

#[tokio::test]
async fn a_declined_card_shows_its_decline_message_on_the_return_page() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let paid = pay(&app, DECLINED_CARD, None).await;
    assert_eq!(paid.status, "failed");
    assert_what_the_browser_sent(&app, &paid, DECLINED_CARD);
    let pi = intent(&app, &paid.id).await;
    assert_eq!(pi["lastPaymentError"]["code"], "card_declined", "{pi}");
    let message = pi["lastPaymentError"]["message"]
        .as_str()
        .unwrap_or_default();
    let shown = paid.error.unwrap_or_default();
    assert!(
        shown.starts_with("card_declined") && !message.is_empty() && shown.contains(message),
        "the page shows {shown:?}, the intent says {message:?}"
    );
}

/// The preflight a browser on `origin` sends before a cross-origin `method`.
async fn preflight_from(app: &TestApp, url: &str, origin: &str, method: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight sent")
}

const SHOP: &str = "https://shop.example";
const OTHER: &str = "https://other.example";

#[tokio::test]
async fn cors_answers_only_a_keys_origins_and_only_on_the_client_side_routes() {
    let app = spawn_app().await;
    app.start_vault().await;
    let tokens = format!("{}/vault/tokens", app.vault_url);
    let pk = app.publishable_key_for(&[SHOP]).await;

    // The vault's tokens: the preflight for a listed origin, and a refusal for another.
    let r = preflight_from(&app, &tokens, SHOP, "POST").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], SHOP);
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    assert_eq!(h["vary"], "Origin");
    // No cookies are involved, so none are allowed across origins.
    assert!(h.get("access-control-allow-credentials").is_none());
    let r = preflight_from(&app, &tokens, OTHER, "POST").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");

    // The token itself carries the origin only when the key lists it.
    let card = json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}});
    for (origin, allowed) in [(SHOP, true), (OTHER, false)] {
        let r = app
            .http
            .post(&tokens)
            .header("Origin", origin)
            .bearer_auth(&pk)
            .json(&card)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(
            r.headers().get("access-control-allow-origin").is_some(),
            allowed,
            "{origin}"
        );
    }
    // A key without origins is used from servers only: no CORS for it anywhere.
    let bare = app.publishable_key().await;
    let r = app
        .http
        .post(&tokens)
        .header("Origin", SHOP)
        .bearer_auth(&bare)
        .json(&card)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Without an Origin it is not a CORS request, and nothing is added.
    let r = app.tokenize(&pk, card.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // The API's two client-side calls answer the key's origins, each with its own method.
    let pi = app.create_intent(json!({})).await;
    let id = pi["id"].as_str().unwrap();
    let secret = pi["clientSecret"].as_str().unwrap();
    for (path, method) in [
        (format!("/api/payment-intents/{id}"), "GET"),
        (format!("/api/payment-intents/{id}/confirm"), "POST"),
    ] {
        let url = format!("{}{path}", app.address);
        let r = preflight_from(&app, &url, SHOP, method).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
        assert_eq!(r.headers()["access-control-allow-methods"], method);
        let r = preflight_from(&app, &url, OTHER, method).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    let read = |origin: &'static str| {
        app.http
            .get(format!("{}/api/payment-intents/{id}", app.address))
            .query(&[("clientSecret", secret)])
            .header("Origin", origin)
            .bearer_auth(&pk)
            .send()
    };
    let r = read(SHOP).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
    let r = read(OTHER).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Every other route of the vault, and the API, answers no CORS: a browser refuses them.
    for url in [
        format!("{}/vault/internal/forward", app.vault_url),
        format!("{}/vault/internal/kek/rewrap", app.vault_url),
        format!("{}/vault/elements", app.vault_url),
        format!("{}/api/payment-intents", app.address),
        format!("{}/api/payment-intents/{id}/cancel", app.address),
        format!("{}/api/payment-intents/{id}/3ds/callback", app.address),
        format!("{}/api/payment-methods", app.address),
        format!("{}/api/refunds", app.address),
    ] {
        let r = preflight_from(&app, &url, SHOP, "POST").await;
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{url} answered CORS: {:?}",
            r.headers()
        );
        assert!(r.status().is_client_error(), "{url}: {}", r.status());
    }
    let r = app
        .http
        .get(format!("{}/api/payment-intents", app.address))
        .header("Origin", SHOP)
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_vaults_card_fields_are_served_only_for_a_keys_own_origin() {
    let app = spawn_app().await;
    app.start_vault().await;
    let pk = app.publishable_key_for(&[SHOP]).await;
    let elements = |key: &str, origin: &str| {
        app.http
            .get(format!("{}/vault/elements", app.vault_url))
            .query(&[("key", key), ("origin", origin)])
            .send()
    };
    let r = elements(&pk, SHOP).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains(&format!("frame-ancestors {SHOP}")), "{csp}");
    let html = r.text().await.unwrap();
    assert!(
        html.contains(&format!("const PARENT = \"{SHOP}\";")),
        "{html}"
    );
    assert!(html.contains("event.origin !== PARENT"), "{html}");
    for (key, origin, status) in [
        (pk.as_str(), OTHER, StatusCode::FORBIDDEN),
        (app.api_key.as_str(), SHOP, StatusCode::FORBIDDEN),
        ("pk_not_a_key", SHOP, StatusCode::UNAUTHORIZED),
        (pk.as_str(), "javascript:alert(1)", StatusCode::BAD_REQUEST),
    ] {
        let r = elements(key, origin).await.unwrap();
        assert_eq!(r.status(), status, "{origin}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let html = r.text().await.unwrap();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains(&app.api_key), "{html}");
    }
    let r = app
        .http
        .get(format!("{}/vault/elements", app.vault_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_demo_checkout_refuses_what_its_page_never_sends() {
    let app = spawn_app().await;
    app.start_vault().await;
    let demo = serve_demo(&app).await;
    let http = &app.http;

    let page = http.get(&demo).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("\"{}\"", app.vault_url)), "{html}");
    assert!(
        !html.contains(&app.api_key) && !html.contains("sk_"),
        "a secret key is in the page"
    );
    // The page has no card field of its own: the card is typed into the vault's iframe.
    assert!(!html.contains("<input"), "{html}");
    assert!(html.contains("<iframe id=\"card\""), "{html}");
    // It holds the client secret of an intent its server just created for the basket.
    let secret = html
        .split("const CLIENT_SECRET = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a client secret in the page");
    let id = secret.split("_secret_").next().unwrap();
    let pi = intent(&app, id).await;
    assert_eq!(pi["clientSecret"], secret);
    assert_eq!(pi["status"], "requires_payment_method");
    assert_eq!(pi["amount"], paystream_demo::AMOUNT);

    let r = http.get(format!("{demo}/return")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .get(format!("{demo}/return?payment_intent=pi_missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The return page of an intent still moving refreshes itself; a final one does not.
    let pi = app.create_intent(json!({})).await;
    let id = pi["id"].as_str().unwrap();
    let page = http
        .get(format!("{demo}/return?payment_intent={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<strong id=\"status\">requires_payment_method</strong>"),
        "{html}"
    );
    assert!(!html.contains("http-equiv=\"refresh\""), "{html}");
    // No worker runs here, so a confirmed intent stays `processing`.
    let id = app.create_and_confirm("pm_card_visa").await;
    let html = http
        .get(format!("{demo}/return?payment_intent={id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<strong id=\"status\">processing</strong>"),
        "{html}"
    );
    assert!(html.contains("http-equiv=\"refresh\""), "{html}");
}
