//! The vault against real PostgreSQL (a database of its own per test) and the real acquirer
//! simulator over HTTP. Nothing is mocked.

mod cards;
mod forward;
mod invariants;
mod rotation;

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paystream_shared::store::merchants::{self, Role};
use paystream_shared::testing::TestDb;
use paystream_vault::config::VaultConfig;

pub const SERVICE_TOKEN: &str = "svc_test_token_0123456789";
pub const KEK_A: [u8; 32] = [7; 32];
pub const KEK_B: [u8; 32] = [9; 32];

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A running vault; dropping it stops it.
pub struct Vault {
    pub url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), paystream_vault::StartError>>>,
}

impl Vault {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Harness {
    pub db: TestDb,
    pub sim: acquirer_sim::SpawnedSim,
    pub http: reqwest::Client,
    /// An admin (secret) key of merchant `acme`.
    pub key: String,
    pub merchant_id: String,
    pub vault: Option<Vault>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.body["error"]["code"], code, "{}", self.text);
        assert!(self.body["error"]["type"].is_string(), "{}", self.text);
        assert!(self.body["error"]["message"].is_string(), "{}", self.text);
        self
    }

    pub fn param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or("")
    }
}

pub fn vault_config(
    db_url: &str,
    acquirer: &str,
    kek: &[u8; 32],
    previous: Option<&[u8; 32]>,
) -> VaultConfig {
    let pairs = [
        ("DATABASE_URL", db_url.to_owned()),
        ("PAYSTREAM_ACQUIRER_URL", acquirer.to_owned()),
        ("PAYSTREAM_VAULT_KEK", b64(kek)),
        ("PAYSTREAM_VAULT_SERVICE_TOKEN", SERVICE_TOKEN.to_owned()),
        ("PAYSTREAM_DB_POOL_SIZE", "4".to_owned()),
        ("PAYSTREAM_ACQUIRER_TIMEOUT_MS", "3000".to_owned()),
    ];
    let previous = previous.map(|p| b64(p));
    VaultConfig::from_lookup(move |k| {
        if k == "PAYSTREAM_VAULT_KEK_PREVIOUS" {
            return previous.clone();
        }
        pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .expect("vault configuration")
}

pub async fn start_vault(config: VaultConfig) -> Vault {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(paystream_vault::run(listener, config, shutdown.clone()));
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Vault {
        url,
        shutdown,
        task: Some(task),
    }
}

pub async fn harness() -> Harness {
    harness_with_kek(&KEK_A).await
}

pub async fn harness_with_kek(kek: &[u8; 32]) -> Harness {
    let db = TestDb::new().await;
    let sim = acquirer_sim::spawn(acquirer_sim::SimConfig::default()).expect("simulator");
    let mut conn = db.pool.acquire().await.unwrap();
    let key = merchants::create_key(&mut conn, "acme", Role::Admin, None)
        .await
        .unwrap();
    drop(conn);
    let vault = start_vault(vault_config(&db.url, &sim.url, kek, None)).await;
    Harness {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        key: key.secret.expose().clone(),
        merchant_id: key.merchant_id,
        db,
        sim,
        vault: Some(vault),
    }
}

async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

impl Harness {
    pub fn url(&self) -> &str {
        &self.vault.as_ref().expect("vault running").url
    }

    pub async fn stop_vault(&mut self) {
        if let Some(v) = self.vault.take() {
            v.stop().await;
        }
    }

    /// Stops the vault and starts it again with these KEKs.
    pub async fn restart_vault(&mut self, kek: &[u8; 32], previous: Option<&[u8; 32]>) {
        if let Some(v) = self.vault.take() {
            v.stop().await;
        }
        self.vault =
            Some(start_vault(vault_config(&self.db.url, &self.sim.url, kek, previous)).await);
    }

    pub async fn new_key(&self, merchant: &str, role: Role) -> (String, String) {
        let mut conn = self.db.pool.acquire().await.unwrap();
        let k = merchants::create_key(&mut conn, merchant, role, None)
            .await
            .unwrap();
        (k.secret.expose().clone(), k.merchant_id)
    }

    pub async fn post_raw(
        &self,
        path: &str,
        bearer: Option<&str>,
        idempotency_key: Option<&str>,
        body: String,
    ) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn tokenize_as(&self, key: &str, body: Value) -> Reply {
        self.post_raw("/vault/tokens", Some(key), None, body.to_string())
            .await
    }

    pub async fn tokenize(&self, body: Value) -> Reply {
        self.tokenize_as(&self.key, body).await
    }

    /// A token for `number`, asserted 201.
    pub async fn card_token(&self, number: &str) -> Value {
        let r = self.tokenize(card(number)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body
    }

    pub async fn service(&self, path: &str, body: Value) -> Reply {
        self.post_raw(path, Some(SERVICE_TOKEN), None, body.to_string())
            .await
    }

    pub async fn consume(&self, token: &str, merchant_id: &str) -> Reply {
        self.service(
            &format!("/vault/internal/tokens/{token}/consume"),
            json!({"merchantId": merchant_id}),
        )
        .await
    }

    /// Tokenizes and consumes `number`: the stored record's `vaultRef`.
    pub async fn stored_card(&self, number: &str) -> String {
        let tok = self.card_token(number).await;
        let r = self
            .consume(tok["id"].as_str().unwrap(), &self.merchant_id)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["vaultRef"].as_str().unwrap().to_owned()
    }

    /// Forwards an authorization of `reference` for `vault_ref` with the acquirer key the
    /// confirm worker uses.
    pub async fn forward_authorize(&self, vault_ref: &str, reference: &str) -> Reply {
        self.service(
            "/vault/internal/forward",
            json!({
                "merchantId": self.merchant_id,
                "vaultRef": vault_ref,
                "path": "/v1/payments",
                "idempotencyKey": format!("{reference}:authorize"),
                "body": {"reference": reference, "amount": 1099, "currency": "usd", "capture": true},
            }),
        )
        .await
    }

    pub async fn sim_charges(&self, reference: &str) -> Vec<Value> {
        let r: Value = self
            .http
            .get(format!(
                "{}/sim/charges?reference={reference}",
                self.sim.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"].as_array().cloned().unwrap_or_default()
    }
}

/// The real `vault` binary on `port`, against this harness's database and simulator.
pub fn spawn_vault_binary(h: &Harness, port: u16, rust_log: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_vault"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &h.db.url)
        .env("PAYSTREAM_VAULT_ADDR", format!("127.0.0.1:{port}"))
        .env("PAYSTREAM_ACQUIRER_URL", &h.sim.url)
        .env("PAYSTREAM_VAULT_KEK", b64(&KEK_A))
        .env("PAYSTREAM_VAULT_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("PAYSTREAM_DB_POOL_SIZE", "2")
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the vault binary")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_healthy(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the vault at {url} never answered /healthz");
}

pub fn card(number: &str) -> Value {
    json!({"card": {"number": number, "expMonth": 12, "expYear": 2099, "cvc": "123"}})
}

pub fn bank(account: &str) -> Value {
    json!({"bankAccount": {"country": "US", "routingNumber": "110000000", "accountNumber": account,
        "accountHolderName": "Jenny Rosen"}})
}

/// Every text form a number could take in a table dump: as digits, as the hex of its ASCII
/// bytes (how PostgreSQL prints `bytea`) and as base64.
pub fn encodings(number: &str) -> Vec<String> {
    vec![
        number.to_owned(),
        hex::encode(number.as_bytes()),
        b64(number.as_bytes()),
    ]
}

/// The text of every row of every table in `schema`, one string per table.
pub async fn dump_schema(pool: &sqlx::PgPool, schema: &str) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{t}\" t"))
                .fetch_all(pool)
                .await
                .unwrap();
        out.push((format!("{schema}.{t}"), rows.join("\n")));
    }
    out
}
