//! The chaos run's merchant and cardholder: payments, 3-D Secure challenges answered over
//! plain HTTP, refunds, and a webhook endpoint that verifies what it receives.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{EndpointExt, Route, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{Mayhem, Rng};
use paystream_shared::domain::webhook::WebhookSecret;

/// The events the sink subscribes to; the check wants each of them delivered.
pub const SUBSCRIBED: [&str; 5] = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "refund.created",
    "refund.succeeded",
    "refund.failed",
];

/// The 409 of a key whose first request still runs (docs/idempotency.md).
const IDEMPOTENCY_IN_USE: &str = "idempotency_key_in_use";

/// How long one request is retried while the API is down or failing.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// How long the driver waits for a payment to reach a state it acts on.
const WAIT_FOR: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    key: String,
    mayhem: Arc<Mayhem>,
}

impl Client {
    pub fn new(api: &str, key: &str, mayhem: Arc<Mayhem>) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            api: api.to_owned(),
            key: key.to_owned(),
            mayhem,
        })
    }

    /// A request to the API, retried with the same Idempotency-Key (for a POST) while the
    /// API is unreachable, answers 5xx or 429, or times out.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            let mut rb = self
                .http
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(&self.key);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(k) = idempotency_key {
                rb = rb.header("Idempotency-Key", k);
            }
            if let Ok(r) = rb.send().await {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                // The first attempt still holds the key (it may have died with the API and
                // its claim not expired yet): the same request again, later.
                let in_use =
                    status == StatusCode::CONFLICT && body["error"]["code"] == IDEMPOTENCY_IN_USE;
                let transient =
                    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || in_use;
                if !transient {
                    return Ok((status, body));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{method} {path}: no answer within {} s",
                    RETRY_FOR.as_secs()
                );
            }
            self.mayhem.driver_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn get_intent(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/payment-intents/{id}"),
                None,
                None,
            )
            .await?;
        if status != StatusCode::OK {
            bail!("GET {id}: {status}");
        }
        Ok(body)
    }

    /// Polls an intent until its status is one of `statuses`.
    pub async fn wait_for(&self, id: &str, statuses: &[&str]) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT_FOR;
        loop {
            let pi = self.get_intent(id).await?;
            let status = pi["status"].as_str().unwrap_or_default();
            if statuses.contains(&status) {
                return Ok(pi);
            }
            if Instant::now() >= deadline {
                bail!("{id} still {status}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn sim_faults(&self, sim: &str, faults: Value) {
        for _ in 0..20 {
            let ok = self
                .http
                .post(format!("{sim}/sim/faults"))
                .json(&faults)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("could not set the simulator's faults");
    }

    /// The simulator's `acquirer_sim_faults_injected_total` by kind.
    pub async fn sim_fault_counts(&self, sim: &str) -> BTreeMap<String, u64> {
        let text = match self.http.get(format!("{sim}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        parse_fault_counts(&text)
    }

    pub async fn sim_get(&self, sim: &str, path: &str) -> anyhow::Result<Value> {
        let mut last = None;
        for _ in 0..10 {
            match self.http.get(format!("{sim}{path}")).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) => last = Some(anyhow::anyhow!("{path}: {}", r.status())),
                Err(e) => last = Some(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{path}: no answer")))
    }
}

pub fn parse_fault_counts(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("acquirer_sim_faults_injected_total{kind=\""))
        .filter_map(|rest| {
            let (kind, value) = rest.split_once("\"} ")?;
            Some((kind.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[derive(Default)]
pub struct SinkState {
    secret: Mutex<Option<WebhookSecret>>,
    /// Event ids received with a valid signature.
    pub delivered: Mutex<HashSet<String>>,
    pub bad_signatures: std::sync::atomic::AtomicU64,
}

#[poem::handler]
async fn receive(
    req: &poem::Request,
    body: Vec<u8>,
    state: Data<&Arc<SinkState>>,
) -> poem::http::StatusCode {
    if req.method() == poem::http::Method::GET {
        // The 3-D Secure `returnUrl`: where the cardholder's browser lands at the end.
        return poem::http::StatusCode::OK;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let valid = state
        .secret
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| {
            s.verify(
                &header("webhook-id"),
                ts,
                &body,
                &header("webhook-signature"),
            )
        });
    if !valid {
        state.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return poem::http::StatusCode::BAD_REQUEST;
    }
    if let Some(id) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
    {
        state
            .delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
    }
    poem::http::StatusCode::NO_CONTENT
}

pub struct Sink {
    pub state: Arc<SinkState>,
    url: String,
    subscription: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Sink {
    pub async fn start(client: &Client) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the webhook sink")?;
        let url = format!("http://{}", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let state = Arc::new(SinkState::default());
        let stop = CancellationToken::new();
        let server = {
            let app = Route::new()
                .at("/*path", poem::get(receive).post(receive))
                .data(state.clone());
            let acceptor = TcpAcceptor::from_std(listener)?;
            let stop = stop.clone();
            tokio::spawn(async move {
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::ZERO))
                    .await
            })
        };
        let (status, body) = client
            .call(
                Method::POST,
                "/api/webhooks/subscribe",
                Some(&json!({"url": format!("{url}/hooks"), "events": SUBSCRIBED})),
                Some("chaos-subscribe"),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("subscribing the sink answered {status}: {body}");
        }
        let secret = WebhookSecret::parse(body["secret"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("the subscription's secret: {}", e.message))?;
        *state
            .secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secret);
        Ok(Sink {
            state,
            url,
            subscription: body["id"].as_str().unwrap_or_default().to_owned(),
            stop,
            server,
        })
    }

    pub fn return_url(&self) -> String {
        format!("{}/return", self.url)
    }

    pub async fn close(self, client: &Client) {
        let _ = client
            .call(
                Method::DELETE,
                &format!("/api/webhooks/subscriptions/{}", self.subscription),
                None,
                None,
            )
            .await;
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// What the driver did with one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driven {
    pub id: String,
    /// The API accepted the confirm. Without that (the API unreachable for all of
    /// `RETRY_FOR`), `requires_confirmation` is where the intent rightly stays.
    pub confirmed: bool,
    /// For 3-D Secure: the cardholder's side got through (the challenge answered and the
    /// callback reached). Otherwise `requires_action` is where the intent rightly waits.
    pub challenged: bool,
}

/// One payment, start to end; `None` when it was never created.
pub async fn one_payment(
    client: &Client,
    mut rng: Rng,
    i: u64,
    return_url: &str,
) -> Option<Driven> {
    let roll = rng.below(100);
    let (method, three_ds) = match roll {
        0..=14 => ("pm_card_threeDSecureRequired", true),
        15..=24 => ("pm_card_chargeDeclined", false),
        _ => ("pm_card_visa", false),
    };
    let amount = 500 + rng.below(99_500);
    let mut body = json!({
        "amount": amount,
        "currency": "usd",
        "customerId": format!("cus_chaos_{}", i % 100),
        "paymentMethodId": method,
    });
    if three_ds {
        body["returnUrl"] = json!(return_url);
    }
    let key = |what: &str| format!("chaos-{i}-{what}");
    let created = client
        .call(
            Method::POST,
            "/api/payment-intents",
            Some(&body),
            Some(&key("create")),
        )
        .await;
    let id = match created {
        Ok((s, b)) if s.is_success() => b["id"].as_str()?.to_owned(),
        _ => return None,
    };
    let confirmed = client
        .call(
            Method::POST,
            &format!("/api/payment-intents/{id}/confirm"),
            Some(&json!({})),
            Some(&key("confirm")),
        )
        .await
        .is_ok_and(|(s, _)| s.is_success());
    let mut driven = Driven {
        id: id.clone(),
        confirmed,
        // Nothing to get through without 3-D Secure.
        challenged: !three_ds,
    };
    if !confirmed {
        return Some(driven);
    }
    if three_ds {
        let pass = rng.below(100) >= 20;
        driven.challenged = challenge(client, &id, pass).await.is_ok();
        return Some(driven);
    }
    // A refund for a third of the successful payments: a part of it, then more than is left,
    // which must be refused.
    let refund = roll >= 25 && rng.below(3) == 0;
    if refund && client.wait_for(&id, &["succeeded", "failed"]).await.ok()?["status"] == "succeeded"
    {
        let part = 1 + rng.below(amount);
        let _ = client
            .call(
                Method::POST,
                "/api/refunds",
                Some(&json!({"paymentIntentId": id, "amount": part})),
                Some(&key("refund")),
            )
            .await;
        let _ = client
            .call(
                Method::POST,
                "/api/refunds",
                Some(&json!({"paymentIntentId": id, "amount": amount - part + 1})),
                Some(&key("refund-over")),
            )
            .await;
    }
    Some(driven)
}

/// The cardholder's side of 3-D Secure: the challenge page's form, then the redirect back to
/// paystream's callback, both over plain HTTP, retried while either end is down.
async fn challenge(client: &Client, id: &str, pass: bool) -> anyhow::Result<()> {
    let pi = client.wait_for(id, &["requires_action", "failed"]).await?;
    let Some(url) = pi["nextAction"]["redirectToUrl"]["url"].as_str() else {
        return Ok(()); // it failed before the challenge
    };
    let result = if pass { "succeeded" } else { "failed" };
    let deadline = Instant::now() + RETRY_FOR;
    let callback = loop {
        let posted = client
            .http
            .post(url)
            .form(&[("result", result)])
            .send()
            .await;
        if let Ok(r) = posted {
            if r.status() == StatusCode::SEE_OTHER {
                if let Some(loc) = r.headers().get("location").and_then(|v| v.to_str().ok()) {
                    break loc.to_owned();
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("{id}: the challenge page did not answer");
        }
        client.mayhem.driver_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The browser follows the redirect to paystream; while the API is down it would retry.
    loop {
        match client.http.get(&callback).send().await {
            Ok(r) if !r.status().is_server_error() => return Ok(()),
            _ if Instant::now() >= deadline => bail!("{id}: the callback did not answer"),
            _ => {
                client.mayhem.driver_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_counters_are_read_from_the_metrics() {
        let text = "# TYPE acquirer_sim_faults_injected_total counter\n\
                    acquirer_sim_faults_injected_total{kind=\"error\"} 12\n\
                    acquirer_sim_faults_injected_total{kind=\"notification_dropped\"} 3\n\
                    acquirer_sim_requests_total 99\n";
        let m = parse_fault_counts(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["error"], 12);
        assert_eq!(m["notification_dropped"], 3);
    }
}
