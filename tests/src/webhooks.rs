//! Webhook test support: a real HTTP sink on 127.0.0.1 that records what it receives and
//! answers what the test scripted, and `TestApp` helpers to subscribe it and run the worker.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Path};
use poem::{EndpointExt, Response, Route, Server};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use paystream_shared::domain::webhook::WebhookSecret;

use crate::{eventually, TestApp};

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub at: Instant,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Verifies the Standard Webhooks signature with `secret`.
    pub fn verifies_with(&self, secret: &str) -> bool {
        let secret = WebhookSecret::parse(secret).expect("a whsec_ secret");
        let ts: i64 = self.header("webhook-timestamp").parse().unwrap_or(0);
        secret.verify(
            self.header("webhook-id"),
            ts,
            &self.body,
            self.header("webhook-signature"),
        )
    }
}

/// How the sink answers one request.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    /// Per path: answers to give in order, then the path's default, then 200.
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    defaults: Mutex<HashMap<String, Answer>>,
}

/// An HTTP server on 127.0.0.1:0 standing in for a merchant's webhook endpoint.
pub struct Sink {
    pub base: String,
    state: Arc<SinkState>,
    shutdown: CancellationToken,
}

#[poem::handler]
async fn receive(
    req: &poem::Request,
    Path(path): Path<String>,
    body: poem::Body,
    state: Data<&Arc<SinkState>>,
) -> Response {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let body = body.into_vec().await.unwrap_or_default();
    let path = format!("/{path}");
    let answer = {
        let mut scripts = state.scripts.lock().unwrap();
        scripts.get_mut(&path).and_then(VecDeque::pop_front)
    }
    .or_else(|| state.defaults.lock().unwrap().get(&path).copied())
    .unwrap_or(Answer::status(200));
    state.received.lock().unwrap().push(Received {
        path,
        at: Instant::now(),
        headers,
        body,
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK))
        .body("");
    if let Some(secs) = answer.retry_after {
        resp.headers_mut().insert("Retry-After", secs.into());
    }
    resp
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
        let state = Arc::new(SinkState::default());
        let shutdown = CancellationToken::new();
        let app = Route::new()
            .at("/*path", poem::post(receive))
            .data(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::ZERO))
                .await;
        });
        Sink {
            base,
            state,
            shutdown,
        }
    }

    /// The URL of `path` (e.g. `/hooks`) on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The next requests to `path` get these answers, in order.
    pub fn script(&self, path: &str, answers: &[Answer]) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(answers.iter().copied());
    }

    /// Every request to `path` past its script gets `answer`.
    pub fn default_answer(&self, path: &str, answer: Answer) {
        self.state
            .defaults
            .lock()
            .unwrap()
            .insert(path.to_owned(), answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `path` received at least `n` requests; returns them all.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(timeout, &format!("{n} requests on {path}"), || async {
            let got = self.received_on(path);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// Subscribes `url` to `events`; asserts the 201 and returns the subscription (with secret).
    pub async fn subscribe(&self, url: &str, events: &[&str]) -> Value {
        let r = self
            .post(
                "/api/webhooks/subscribe",
                json!({"url": url, "events": events}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
        r.body
    }

    /// Starts an in-process webhook worker (both consumers) with this app's configuration.
    pub fn start_webhook_worker(&self) -> CancellationToken {
        self.start_webhook_worker_with((*self.config).clone())
    }

    pub fn start_webhook_worker_with(
        &self,
        config: paystream_shared::config::Config,
    ) -> CancellationToken {
        let token = self.shutdown.child_token();
        let stop = token.clone();
        tokio::spawn(async move {
            if let Err(e) = paystream_workers::webhooks::run_webhook_worker(config, stop).await {
                panic!("webhook worker stopped: {e}");
            }
        });
        token
    }

    /// Starts a `webhook-worker` process with this app's configuration; its stderr goes to
    /// `log` so tests can read what it logged.
    pub fn spawn_webhook_worker_process(&self, log: &std::path::Path) -> std::process::Child {
        let stderr = std::fs::File::create(log).expect("log file");
        std::process::Command::new(crate::binary("webhook-worker"))
            .env("DATABASE_URL", &self.db.url)
            .env("NATS_URL", &self.config.nats_url)
            .env(
                "PAYSTREAM_STREAM_REPLICAS",
                self.config.nats.stream_replicas.to_string(),
            )
            .env("PAYSTREAM_STREAM_PREFIX", &self.prefix)
            .env("PAYSTREAM_ENV", "development")
            .env("PAYSTREAM_RETRY_BASE_MS", "10")
            .env("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "2000")
            .env("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "true")
            .env(
                "RUST_LOG",
                "debug,sqlx=warn,async_nats=warn,hyper=warn,reqwest=warn",
            )
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn webhook-worker")
    }

    /// The deliveries of one event, as the API lists them.
    pub async fn deliveries_of(&self, event_id: &str) -> Vec<Value> {
        let r = self
            .get(&format!(
                "/api/webhooks/events?eventId={event_id}&limit=100"
            ))
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        r.body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the one delivery of `event_id` to reach `status`; returns it.
    pub async fn wait_for_delivery(&self, event_id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(30),
            &format!("delivery of {event_id} to be {status}"),
            || async {
                self.deliveries_of(event_id)
                    .await
                    .into_iter()
                    .find(|d| d["status"] == status)
            },
        )
        .await
    }

    /// The id of the newest event of `event_type` about `object_id`, once it exists.
    pub async fn event_id_for(&self, object_id: &str, event_type: &str) -> String {
        eventually(
            Duration::from_secs(30),
            &format!("{event_type} for {object_id}"),
            || async {
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM events WHERE object_id = $1 AND type = $2 ORDER BY created_at DESC LIMIT 1",
                )
                .bind(object_id)
                .bind(event_type)
                .fetch_optional(&self.pool)
                .await
                .expect("events")
            },
        )
        .await
    }
}
