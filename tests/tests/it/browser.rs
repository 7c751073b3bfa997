//! 3-D Secure in a real browser: Debian's Chromium, headless, driven through chromedriver
//! (WebDriver). The demo checkout page (crate `paystream-demo`) tokenizes a card at the vault
//! from its script with a publishable key (a cross-origin call, so the vault's CORS is part of
//! what is tested), its server creates and confirms the intent, and the browser goes through
//! the simulator's challenge page and back to the return URL. Also the CORS rules the page
//! depends on, over plain HTTP.

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

/// chromedriver on a free port, with one headless Chromium session on a fresh profile.
/// [`Browser::quit`] ends the session (Chromium exits); dropping it (a failed test) kills
/// Chromium's and chromedriver's processes by their ids, and removes the profile either way.
struct Browser {
    client: Client,
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
        publishable_key: app.publishable_key().await,
    };
    tokio::spawn(paystream_demo::run(
        listener,
        config,
        app.shutdown.child_token(),
    ));
    url
}

/// Pays 10.99 USD with the 3-D Secure test card on the demo page in Chromium, answers the
/// challenge with `button`, and waits on the return page for a final status; returns the
/// intent's id and the status the page shows.
async fn pay_with_three_ds(app: &TestApp, button: &str) -> (String, String) {
    app.start_vault().await;
    let demo = serve_demo(app).await;
    let browser = Browser::start().await;
    browser.client.goto(&demo).await.expect("the checkout page");
    browser.fill("#number", THREE_DS_CARD).await;
    browser.fill("#expiry", "12/34").await;
    browser.fill("#cvc", "123").await;
    browser.element("#pay").await.click().await.expect("Pay");

    // The page tokenized at the vault, its server confirmed, and the browser is at the
    // issuer's challenge, served by the simulator.
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

    let status = browser
        .text_becomes("#status", &["succeeded", "failed"])
        .await;
    let back = browser.url().await;
    let id = back
        .strip_prefix(&format!("{demo}/return?payment_intent="))
        .unwrap_or_else(|| panic!("not the return URL: {back}"))
        .to_owned();
    browser.quit().await;
    (id, status)
}

async fn intent(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/api/payment-intents/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn a_card_typed_into_the_checkout_page_pays_after_3ds_in_a_real_browser() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let (id, shown) = pay_with_three_ds(&app, "Complete authentication").await;
    assert_eq!(shown, "succeeded");
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amountReceived"], paystream_demo::AMOUNT);
    let charges = app.sim_charges(&id).await;
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
    let (id, shown) = pay_with_three_ds(&app, "Fail authentication").await;
    assert_eq!(shown, "failed");
    let pi = intent(&app, &id).await;
    assert_eq!(pi["status"], "failed", "{pi}");
    assert_eq!(
        pi["lastPaymentError"]["code"], "authentication_failed",
        "{pi}"
    );
    assert_eq!(pi["amountReceived"], 0);
    assert_eq!(app.acquirer_totals(&id).await, (0, 0));
    let charges = app.sim_charges(&id).await;
    assert!(
        charges.iter().all(|c| c["status"] != "captured"),
        "{charges:?}"
    );
}

/// The preflight a browser sends before the checkout page's tokenization.
async fn preflight(app: &TestApp, url: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight sent")
}

#[tokio::test]
async fn only_the_vaults_tokens_route_answers_cors() {
    let app = spawn_app().await;
    app.start_vault().await;
    let tokens = format!("{}/vault/tokens", app.vault_url);

    let r = preflight(&app, &tokens).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
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

    // The token itself, and a refusal, both carry the origin so the page can read them.
    let pk = app.publishable_key().await;
    let card = json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}});
    let r = app
        .http
        .post(&tokens)
        .header("Origin", "https://other.example")
        .bearer_auth(&pk)
        .json(&card)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://other.example"
    );
    let r = app
        .http
        .post(&tokens)
        .header("Origin", "https://shop.example")
        .bearer_auth("pk_not_a_key")
        .json(&card)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // Without an Origin it is not a CORS request, and nothing is added.
    let r = app.tokenize(&pk, card.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // Every other route of the vault, and the API, answers no CORS: a browser refuses them.
    for url in [
        format!("{}/vault/internal/forward", app.vault_url),
        format!("{}/vault/internal/kek/rewrap", app.vault_url),
        format!("{}/api/payment-intents", app.address),
        format!("{}/api/payment-methods", app.address),
    ] {
        let r = preflight(&app, &url).await;
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
        .header("Origin", "https://shop.example")
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("access-control-allow-origin").is_none());
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
        !html.contains(&app.api_key),
        "the secret key is in the page"
    );
    // The card inputs have no name, so no form submission can carry the card anywhere.
    let inputs: Vec<&str> = html
        .split("<input")
        .skip(1)
        .map(|rest| &rest[..rest.find('>').unwrap_or(rest.len())])
        .collect();
    assert_eq!(inputs.len(), 3, "{html}");
    assert!(inputs.iter().all(|i| !i.contains("name=")), "{inputs:?}");

    for body in [
        json!({}),
        json!({"token": "4242424242424242"}),
        json!({"token": "tok_x", "card": 1}),
    ] {
        let r = http
            .post(format!("{demo}/pay"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    // The API's refusal reaches the shopper with its status.
    let r = http
        .post(format!("{demo}/pay"))
        .json(&json!({"token": "tok_0000000000000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer}"
    );

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
