//! Test harness: `spawn_app()` gives each test a freshly migrated database, its own stream
//! prefix, and the API on a random port, all against the real PostgreSQL and NATS. Nothing is
//! mocked. Dropping the `TestApp` stops its tasks and removes its database and streams.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paystream_api::AppState;
use paystream_shared::config::Config;
use paystream_shared::store::merchants::{self, Role};

pub mod cluster;
pub mod provider;
pub mod webhooks;

pub fn nats_url() -> String {
    std::env::var("NATS_URL")
        .unwrap_or_else(|_| paystream_shared::config::DEFAULT_NATS_URL.to_owned())
}

/// A binary of this workspace, built next to the test executables (`target/<profile>/`).
/// Cargo builds a package's binaries whenever its integration tests build, and every package
/// with a binary has at least one.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run the whole workspace's tests (cargo nextest run --workspace)",
        path.display()
    );
    path
}

pub use paystream_shared::testing::{database_server_url, TestDb};

pub struct TestApp {
    pub address: String,
    pub api_key: String,
    pub merchant_id: String,
    pub pool: PgPool,
    pub prefix: String,
    pub config: Arc<Config>,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    /// Stops only the outbox relay (tests that kill it mid-batch).
    pub relay_shutdown: CancellationToken,
    pub sim_url: String,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub topology: paystream_nats::topology::Topology,
    pub db: TestDb,
    /// Where the API calls the vault (`config.vault_url`). Its listener is bound at spawn so
    /// the API knows the address; the vault itself runs once [`TestApp::start_vault`] is called.
    pub vault_url: String,
    vault_listener: std::sync::Mutex<Option<TcpListener>>,
}

/// The configuration a test process would read, pointed at this test's database and prefix.
pub fn test_config(db_url: &str, prefix: &str, nats: &str, acquirer: &str) -> Config {
    let db_url = db_url.to_owned();
    let prefix = prefix.to_owned();
    let nats = nats.to_owned();
    let acquirer = acquirer.to_owned();
    Config::from_lookup(move |k| match k {
        "DATABASE_URL" => Some(db_url.clone()),
        "NATS_URL" => Some(nats.clone()),
        "PAYSTREAM_ACQUIRER_URL" => Some(acquirer.clone()),
        "PAYSTREAM_STREAM_PREFIX" => Some(prefix.clone()),
        // The simulator signs with the development notification secret.
        "PAYSTREAM_ENV" => Some("development".to_owned()),
        "PAYSTREAM_RETRY_BASE_MS" => Some("10".to_owned()),
        // Tests run side by side, each with several in-process pools, against one server.
        "PAYSTREAM_DB_POOL_SIZE" => Some("8".to_owned()),
        "PAYSTREAM_IDEMPOTENCY_LOCK_TTL_MS" => Some("2000".to_owned()),
        "PAYSTREAM_ACQUIRER_TIMEOUT_MS" => Some("500".to_owned()),
        // Webhook sinks in tests listen on 127.0.0.1.
        "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE" => Some("true".to_owned()),
        "PAYSTREAM_WEBHOOK_TIMEOUT_MS" => Some("2000".to_owned()),
        _ => None,
    })
    .expect("test configuration")
}

/// The API (with its outbox relay) and the acquirer simulator, on the shared NATS server.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(&nats_url()).await
}

/// Like [`spawn_app`], with the test configuration changed by `configure` first (a rate
/// limit, a timeout); the API and the workers the app starts all use the changed one.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_configured(&nats_url(), configure).await
}

/// Like [`spawn_app`], against the NATS server at `nats` (tests that stop the broker run
/// their own).
pub async fn spawn_app_on(nats: &str) -> TestApp {
    spawn_app_configured(nats, |_| {}).await
}

/// Like [`spawn_app_on`], with the configuration changed by `configure` first (the cluster
/// tests set three stream replicas).
pub async fn spawn_app_configured(nats: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDb::new().await;
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let shutdown = CancellationToken::new();

    // The API's listener is bound first so the simulator knows where to send notifications.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    let sim_listener = TcpListener::bind("127.0.0.1:0").expect("bind simulator");
    let sim_url = format!("http://{}", sim_listener.local_addr().expect("addr"));
    let sim_config = acquirer_sim::SimConfig {
        timeout_hang: Duration::from_secs(5),
        notify_url: Some(format!("{address}/api/provider/webhooks")),
        callback_url: Some(address.clone()),
        // The challenge URLs it hands out must reach this simulator, not the default port.
        public_url: Some(sim_url.clone()),
        ..Default::default()
    };
    tokio::spawn(acquirer_sim::run(
        sim_listener,
        sim_config,
        shutdown.clone(),
    ));

    let vault_listener = TcpListener::bind("127.0.0.1:0").expect("bind vault");
    let vault_url = format!("http://{}", vault_listener.local_addr().expect("addr"));
    let mut config = test_config(&db.url, &prefix, nats, &sim_url);
    config.vault_url = vault_url.clone();
    configure(&mut config);
    let config = Arc::new(config);
    let (client, js) = paystream_nats::topology::connect(nats)
        .await
        .expect("NATS is running");
    let topology = paystream_nats::topology::Topology::from_config(&config);
    topology.ensure(&js).await.expect("streams");

    let mut conn = db.pool.acquire().await.expect("connection");
    let key = merchants::create_key(&mut conn, "acme", Role::Admin, None)
        .await
        .expect("merchant key");
    drop(conn);
    let relay_waker = paystream_nats::relay::Waker::new();
    let state = AppState {
        pool: db.pool.clone(),
        nats: Some(client.clone()),
        config: config.clone(),
        metrics: Arc::default(),
        relay_waker: relay_waker.clone(),
    };
    tokio::spawn(paystream_api::run(listener, state, shutdown.clone()));
    let relay_shutdown = shutdown.child_token();
    tokio::spawn(paystream_nats::relay::run(
        db.pool.clone(),
        js.clone(),
        topology.clone(),
        relay_waker,
        relay_shutdown.clone(),
    ));
    TestApp {
        address,
        api_key: key.secret.expose().clone(),
        merchant_id: key.merchant_id,
        pool: db.pool.clone(),
        prefix,
        config,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        shutdown,
        relay_shutdown,
        sim_url,
        nats: client,
        js,
        topology,
        db,
        vault_url,
        vault_listener: std::sync::Mutex::new(Some(vault_listener)),
    }
}

/// A response read whole: status, headers and JSON body (or `Value::Null`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn error_param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or("")
    }

    /// Asserts the contract's error shape and status, and returns the reply for more checks.
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.error_code(), code, "{}", self.text);
        assert!(self.body["error"]["type"].is_string(), "{}", self.text);
        assert!(self.body["error"]["message"].is_string(), "{}", self.text);
        self
    }
}

impl TestApp {
    /// Starts the vault in this process, on the listener bound at spawn, with this test's
    /// database (schema `vault`), the simulator, and the development KEK and service
    /// credential (the API presents the same). Returns its URL. Once only.
    pub async fn start_vault(&self) -> String {
        let listener = self
            .vault_listener
            .lock()
            .expect("vault listener")
            .take()
            .expect("the vault is started once");
        let (db_url, sim_url) = (self.db.url.clone(), self.sim_url.clone());
        let config = paystream_vault::config::VaultConfig::from_lookup(move |k| match k {
            "DATABASE_URL" => Some(db_url.clone()),
            "PAYSTREAM_ACQUIRER_URL" => Some(sim_url.clone()),
            "PAYSTREAM_ENV" => Some("development".to_owned()),
            "PAYSTREAM_DB_POOL_SIZE" => Some("4".to_owned()),
            _ => None,
        })
        .expect("vault configuration");
        tokio::spawn(paystream_vault::run(
            listener,
            config,
            self.shutdown.child_token(),
        ));
        let health = format!("{}/readyz", self.vault_url);
        eventually(Duration::from_secs(30), "the vault to be ready", || async {
            self.http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
                .then_some(())
        })
        .await;
        self.vault_url.clone()
    }

    /// Starts (or, after it was killed, restarts) the `vault` binary as a child process on the
    /// address reserved at spawn, with this test's database and simulator, the development KEK
    /// and service credential, and `RUST_LOG=debug`; its stdout and stderr are appended to
    /// `log`. Returns once it is ready. Not together with [`TestApp::start_vault`].
    pub async fn start_vault_process(&self, log: &std::path::Path) -> std::process::Child {
        // The reserved port is handed to the child: the listener is closed first.
        drop(self.vault_listener.lock().expect("vault listener").take());
        let addr = self.vault_url.trim_start_matches("http://").to_owned();
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("vault log file")
        };
        let child = std::process::Command::new(binary("vault"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("PAYSTREAM_VAULT_ADDR", &addr)
            .env("PAYSTREAM_ACQUIRER_URL", &self.sim_url)
            .env("PAYSTREAM_ENV", "development")
            .env("PAYSTREAM_DB_POOL_SIZE", "2")
            .env("RUST_LOG", "debug")
            .stdout(file())
            .stderr(file())
            .spawn()
            .expect("start the vault binary");
        let health = format!("{}/readyz", self.vault_url);
        eventually(
            Duration::from_secs(30),
            "the vault process to be ready",
            || async {
                self.http
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(())
            },
        )
        .await;
        child
    }

    /// A publishable (`pk_`) key of this app's merchant, for the vault's tokens.
    pub async fn publishable_key(&self) -> String {
        let mut conn = self.pool.acquire().await.expect("connection");
        let name: String = sqlx::query_scalar("SELECT name FROM merchants WHERE id = $1")
            .bind(&self.merchant_id)
            .fetch_one(&mut *conn)
            .await
            .expect("merchant name");
        merchants::create_key(&mut conn, &name, Role::Publishable, None)
            .await
            .expect("publishable key")
            .secret
            .expose()
            .clone()
    }

    /// A publishable key of this app's merchant that browsers may use from `origins` (CORS,
    /// the vault's card fields).
    pub async fn publishable_key_for(&self, origins: &[&str]) -> String {
        let key = self.publishable_key().await;
        let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
        sqlx::query("UPDATE api_keys SET allowed_origins = $2 WHERE key_hash = $1")
            .bind(merchants::hash_secret(&key))
            .bind(&origins)
            .execute(&self.pool)
            .await
            .expect("origins set");
        key
    }

    /// Tokenizes `instrument` (`{"card": {...}}` or `{"bankAccount": {...}}`) at the vault
    /// with `key`; the vault's answer.
    pub async fn tokenize(&self, key: &str, instrument: Value) -> Reply {
        self.raw(
            self.http
                .post(format!("{}/vault/tokens", self.vault_url))
                .bearer_auth(key)
                .json(&instrument),
        )
        .await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.address, path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(i) = idem {
            rb = rb.header("Idempotency-Key", i);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request sent");
        read(resp).await
    }

    pub async fn raw(&self, rb: reqwest::RequestBuilder) -> Reply {
        read(rb.send().await.expect("request sent")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(
            Method::POST,
            path,
            Some(&self.api_key.clone()),
            None,
            Some(body),
        )
        .await
    }

    pub async fn post_idem(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(
            Method::POST,
            path,
            Some(&self.api_key.clone()),
            Some(key),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, Some(&self.api_key.clone()), None, None)
            .await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Reply {
        self.request(Method::GET, path, Some(key), None, None).await
    }

    /// Creates an intent (default 1099 usd for `cus_1`, fields in `extra` override) and
    /// asserts the 201.
    pub async fn create_intent(&self, extra: Value) -> Value {
        let mut body = json!({"amount": 1099, "currency": "usd", "customerId": "cus_1"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.post("/api/payment-intents", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    /// A second merchant with its own admin key.
    pub async fn other_merchant(&self, name: &str, role: Role) -> String {
        let mut conn = self.pool.acquire().await.expect("connection");
        merchants::create_key(&mut conn, name, role, None)
            .await
            .expect("key")
            .secret
            .expose()
            .clone()
    }

    /// Starts a `confirm-worker` process with this app's configuration.
    pub fn spawn_confirm_worker_process(&self) -> std::process::Child {
        self.spawn_worker_process("confirm-worker")
    }

    /// Starts a worker binary (`confirm-worker`, `refund-worker` ...) with this app's configuration.
    pub fn spawn_worker_process(&self, name: &str) -> std::process::Child {
        std::process::Command::new(binary(name))
            .env("DATABASE_URL", &self.db.url)
            .env("NATS_URL", &self.config.nats_url)
            .env(
                "PAYSTREAM_STREAM_REPLICAS",
                self.config.nats.stream_replicas.to_string(),
            )
            .env("PAYSTREAM_STREAM_PREFIX", &self.prefix)
            .env("PAYSTREAM_ENV", "development")
            .env("PAYSTREAM_ACQUIRER_URL", &self.sim_url)
            .env("PAYSTREAM_VAULT_URL", &self.vault_url)
            .env("PAYSTREAM_RETRY_BASE_MS", "10")
            .env("PAYSTREAM_DB_POOL_SIZE", "8")
            .env("PAYSTREAM_ACQUIRER_TIMEOUT_MS", "500")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    /// Starts an in-process confirm worker; cancel the token to stop it.
    pub fn start_confirm_worker(&self) -> CancellationToken {
        let token = self.shutdown.child_token();
        let config = (*self.config).clone();
        spawn_worker(
            "confirm worker",
            paystream_workers::runtime::run_confirm_worker(config, token.clone()),
        );
        token
    }

    /// Starts an in-process refund worker; cancel the token to stop it.
    pub fn start_refund_worker(&self) -> CancellationToken {
        let token = self.shutdown.child_token();
        let config = (*self.config).clone();
        spawn_worker(
            "refund worker",
            paystream_workers::runtime::run_refund_worker(config, token.clone()),
        );
        token
    }

    /// A payment intent that reached `succeeded` (needs a confirm worker running).
    pub async fn succeeded_intent(&self, amount: i64) -> String {
        let pi = self
            .create_intent(
                json!({"paymentMethodId": "pm_card_visa", "confirm": true, "amount": amount}),
            )
            .await;
        let id = pi["id"].as_str().expect("id").to_owned();
        self.wait_for_status(&id, &["succeeded"], Duration::from_secs(30))
            .await;
        id
    }

    /// Asserts the ledger is whole (`paystream ledger verify`'s checks: every transaction
    /// balances, every balance equals its entries, the intents and refunds match the ledger)
    /// and that `source` (a `pi_` or `re_`) posted exactly once.
    pub async fn assert_posted_once(&self, source: &str) {
        let mut conn = self.pool.acquire().await.expect("connection");
        let verdict = paystream_shared::ledger::verify(&mut conn)
            .await
            .expect("ledger verify");
        assert_eq!(verdict, Ok(()), "the ledger is whole");
        let postings: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ledger_transactions WHERE source_id = $1")
                .bind(source)
                .fetch_one(&mut *conn)
                .await
                .expect("count postings");
        assert_eq!(postings, 1, "{source} posts once");
    }

    /// What the acquirer holds for an intent: (captured, refunded) in minor units.
    pub async fn acquirer_totals(&self, reference: &str) -> (i64, i64) {
        let r = self
            .http
            .get(format!(
                "{}/v1/payments?reference={reference}",
                self.sim_url
            ))
            .send()
            .await
            .expect("acquirer status");
        let body: Value = r.json().await.expect("json");
        let charges = body["data"].as_array().cloned().unwrap_or_default();
        charges.iter().fold((0, 0), |(c, r), ch| {
            (
                c + ch["amountCaptured"].as_i64().unwrap_or(0),
                r + ch["amountRefunded"].as_i64().unwrap_or(0),
            )
        })
    }

    /// Sets the simulator's faults (docs/acquirer.md, `POST /sim/faults`).
    pub async fn sim_faults(&self, faults: Value) {
        let r = self
            .http
            .post(format!("{}/sim/faults", self.sim_url))
            .json(&faults)
            .send()
            .await
            .expect("sim faults");
        assert!(r.status().is_success(), "sim faults: {}", r.status());
    }

    /// The charges the simulator holds for one payment intent.
    /// Every `/v1` call the simulator has answered (its `acquirer_sim_requests_total`).
    pub async fn sim_requests(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.sim_url))
            .send()
            .await
            .expect("sim metrics")
            .text()
            .await
            .expect("sim metrics text");
        metric(&text, "acquirer_sim_requests_total")
            .unwrap_or_else(|| panic!("no acquirer_sim_requests_total in {text}"))
    }

    pub async fn sim_charges(&self, reference: &str) -> Vec<Value> {
        let r = self
            .http
            .get(format!(
                "{}/sim/charges?reference={reference}",
                self.sim_url
            ))
            .send()
            .await
            .expect("sim charges");
        let body: Value = r.json().await.expect("sim json");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Creates a payment intent for `payment_method` and confirms it; returns its id.
    pub async fn create_and_confirm(&self, payment_method: &str) -> String {
        let pi = self.create_intent(json!({"paymentMethodId": payment_method, "returnUrl": "https://shop.example/back"})).await;
        let id = pi["id"].as_str().expect("id").to_owned();
        let r = self
            .post(&format!("/api/payment-intents/{id}/confirm"), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        id
    }

    /// Waits until the intent reaches one of `statuses`; returns it.
    pub async fn wait_for_status(&self, id: &str, statuses: &[&str], timeout: Duration) -> Value {
        let path = format!("/api/payment-intents/{id}");
        eventually(timeout, &format!("{id} to reach {statuses:?}"), || async {
            let r = self.get(&path).await;
            let status = r.body["status"].as_str().unwrap_or("").to_owned();
            statuses.contains(&status.as_str()).then_some(r.body)
        })
        .await
    }

    pub async fn outbox_subjects(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT subject FROM outbox ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .expect("outbox")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let (topology, url) = (self.topology.clone(), self.config.nats_url.clone());
        // Remove this test's streams so repeated runs do not pile up data in the broker.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // The URL may be a cluster's list of seeds.
                if let Ok(Ok((_client, js))) =
                    tokio::time::timeout(Duration::from_secs(2), paystream_nats::connect(&url))
                        .await
                {
                    let _ = tokio::time::timeout(Duration::from_secs(5), topology.delete_all(&js))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
/// The value of one series (`name` or `name{labels}`) in a Prometheus text document.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs an in-process worker. A worker that stops with an error leaves the test waiting for
/// work nobody does, and its error would be dropped with the task: say it, so the timeout
/// that follows names its cause.
fn spawn_worker<F>(name: &'static str, worker: F)
where
    F: std::future::Future<Output = Result<(), paystream_workers::runtime::WorkerError>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = worker.await {
            eprintln!("the in-process {name} stopped: {e}");
        }
    });
}
