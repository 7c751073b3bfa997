//! Secrets stay where they belong, across the whole system at once. One scenario runs every
//! process as a real child at `RUST_LOG=debug`: the API, the four worker binaries, the vault
//! and the acquirer simulator, each with its own log file. It tokenizes a card (with CVC) and
//! a bank account with a publishable key, stores them as payment methods, pays (also through
//! 3-D Secure's challenge page and callback), refunds, opens a dispute and submits evidence
//! with a file, receives signed webhooks at a local sink, rolls the API key, rotates the
//! webhook secret and the vault's KEK, and sends card numbers where they do not belong.
//!
//! Then it searches, for every card number (digits, spaced, dashed, hex), CVC, bank account
//! number, secret key, webhook secret, KEK, webhook sealing key and service credential:
//! every log line of every process, every error body the scenario received, every row of
//! every table of every schema, every message published on the test's subjects and every
//! message left in its streams, and every webhook body the sink received. A hit names where.
//! The sources are checked to be non-empty, and a value planted in a real table and a real
//! stream is found by the same reading code, so the search cannot pass by reading nothing.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use reqwest::header::LOCATION;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use paystream_nats::topology::{Stream, Topology};
use paystream_shared::store::merchants::{self, Role};
use paystream_tests::webhooks::Sink;
use paystream_tests::{binary, eventually, nats_url, TestDb};

const WAIT: Duration = Duration::from_secs(40);
const VISA: &str = "4242424242424242";
const VISA_CVC: &str = "739";
/// The simulator challenges this card (docs/acquirer.md).
const THREE_DS: &str = "4000002760003184";
const THREE_DS_CVC: &str = "582";
const ACCOUNT: &str = "000123456789";
const RETURN_URL: &str = "https://shop.example/back";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";
/// The processes of the system, by binary name; each gets a log file of its own.
const PROCESSES: [&str; 7] = [
    "acquirer-sim",
    "paystream-api",
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
    "vault",
];

// ---------------------------------------------------------------------------------------
// The search: what to look for, where, and what a hit says.

/// One value that must not appear, with the spellings it could take.
#[derive(Debug, Clone)]
struct Needle {
    what: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Any of these substrings is a hit.
    Exact(Vec<String>),
    /// A CVC is too short to search for alone: a hit is the digits, not inside a longer digit
    /// run, within a few characters after `cvc`, or as a JSON string of their own (`"739"`).
    Cvc(String),
}

impl Needle {
    /// A card or account number: digits, in groups of four by spaces or dashes, and as the
    /// hex a `bytea` column or a debug print of bytes would show.
    fn number(what: &str, digits: &str) -> Needle {
        let groups: Vec<String> = digits
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        Needle {
            what: what.to_owned(),
            kind: Kind::Exact(vec![
                digits.to_owned(),
                groups.join(" "),
                groups.join("-"),
                hex(digits.as_bytes()),
            ]),
        }
    }

    fn secret(what: &str, value: &str) -> Needle {
        Needle {
            what: what.to_owned(),
            kind: Kind::Exact(vec![value.to_owned(), hex(value.as_bytes())]),
        }
    }

    /// Raw key material: its base64 (how it is configured) and its hex.
    fn key(what: &str, bytes: &[u8]) -> Needle {
        Needle {
            what: what.to_owned(),
            kind: Kind::Exact(vec![
                base64::engine::general_purpose::STANDARD.encode(bytes),
                hex(bytes),
            ]),
        }
    }

    fn cvc(what: &str, digits: &str) -> Needle {
        Needle {
            what: what.to_owned(),
            kind: Kind::Cvc(digits.to_owned()),
        }
    }

    /// The byte offset of the first hit in `text`, if any.
    fn find(&self, text: &str) -> Option<usize> {
        match &self.kind {
            Kind::Exact(spellings) => spellings.iter().filter_map(|s| text.find(s)).min(),
            Kind::Cvc(digits) => {
                if let Some(at) = text.find(&format!("\"{digits}\"")) {
                    return Some(at);
                }
                let lower = text.to_ascii_lowercase();
                let bytes = lower.as_bytes();
                lower.match_indices("cvc").find_map(|(at, _)| {
                    let from = at + 3;
                    let window = &lower[from..(from + 8 + digits.len()).min(lower.len())];
                    window.match_indices(digits.as_str()).find_map(|(i, _)| {
                        let start = from + i;
                        let end = start + digits.len();
                        let free = !bytes[start - 1].is_ascii_digit()
                            && bytes.get(end).is_none_or(|b| !b.is_ascii_digit());
                        free.then_some(start)
                    })
                })
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One text read from somewhere, named so a hit says where it was.
struct Source {
    place: String,
    text: String,
}

/// Every hit of every needle in every source, as "what in place: excerpt" lines.
fn search<'a>(sources: impl IntoIterator<Item = &'a Source>, needles: &[Needle]) -> Vec<String> {
    let mut hits = Vec::new();
    for source in sources {
        for needle in needles {
            if let Some(at) = needle.find(&source.text) {
                let line = source.text[..at].matches('\n').count() + 1;
                let excerpt: String = source.text[at.saturating_sub(80)..]
                    .chars()
                    .take(200)
                    .collect();
                hits.push(format!(
                    "{} in {} (line {line}): …{excerpt}…",
                    needle.what, source.place
                ));
            }
        }
    }
    hits
}

// ---------------------------------------------------------------------------------------
// The system, as child processes.

/// A port free now; the child binds it a moment later.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn random_bytes() -> [u8; 32] {
    let mut out = [0; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One response the scenario received, kept for the search of error bodies.
struct Recorded {
    what: String,
    status: u16,
    text: String,
}

struct Reply {
    status: u16,
    body: Value,
    text: String,
}

struct Stack {
    db: TestDb,
    topology: Topology,
    logs: PathBuf,
    /// What every process is given (secrets included: they are what the search looks for).
    env: Vec<(&'static str, String)>,
    api: String,
    sim: String,
    vault: String,
    vault_addr: String,
    children: Vec<(&'static str, Child)>,
    vault_child: Option<Child>,
    http: reqwest::Client,
    replies: Mutex<Vec<Recorded>>,
    key: Mutex<String>,
}

impl Stack {
    async fn start(kek: &[u8; 32], sealing: &[u8; 32], service: &str, acquirer: &str) -> Stack {
        let db = TestDb::new().await;
        let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let logs = std::env::temp_dir().join(format!("{prefix}secrecy"));
        std::fs::create_dir_all(&logs).expect("log directory");
        let (api_addr, sim_addr, vault_addr) = (free_addr(), free_addr(), free_addr());
        let api = format!("http://{api_addr}");
        let sim = format!("http://{sim_addr}");
        let vault = format!("http://{vault_addr}");
        let env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("NATS_URL", nats_url()),
            ("PAYSTREAM_STREAM_PREFIX", prefix.clone()),
            // Production mode: no public development secret or KEK is accepted, so each
            // secret the processes hold is one of the fresh random values set here, and the
            // search knows them all. Plain HTTP is allowed because every listener is loopback.
            ("PAYSTREAM_ENV", "production".to_owned()),
            ("PAYSTREAM_API_ADDR", api_addr),
            ("PAYSTREAM_ACQUIRER_URL", sim.clone()),
            ("PAYSTREAM_VAULT_URL", vault.clone()),
            ("PAYSTREAM_VAULT_SERVICE_TOKEN", service.to_owned()),
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", b64(sealing)),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", acquirer.to_owned()),
            ("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
            ("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "2000".to_owned()),
            ("PAYSTREAM_RETRY_BASE_MS", "10".to_owned()),
            ("PAYSTREAM_ACQUIRER_TIMEOUT_MS", "2000".to_owned()),
            ("PAYSTREAM_DB_POOL_SIZE", "3".to_owned()),
            ("PAYSTREAM_RECONCILE_INTERVAL_SECS", "2".to_owned()),
            ("ACQUIRER_SIM_ADDR", sim_addr),
            ("ACQUIRER_SIM_PUBLIC_URL", sim.clone()),
            (
                "ACQUIRER_SIM_NOTIFY_URL",
                format!("{api}/api/provider/webhooks"),
            ),
            ("ACQUIRER_SIM_CALLBACK_URL", api.clone()),
            ("RUST_LOG", "debug".to_owned()),
        ];
        let mut stack = Stack {
            db,
            topology: Topology::new(&prefix),
            logs,
            env,
            api,
            sim,
            vault,
            vault_addr,
            children: Vec::new(),
            vault_child: None,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            replies: Mutex::default(),
            key: Mutex::default(),
        };
        let mut conn = stack.db.pool.acquire().await.expect("connection");
        let key = merchants::create_key(&mut conn, "acme", Role::Admin, None)
            .await
            .expect("merchant key");
        *stack.key.lock().unwrap() = key.secret.expose().clone();
        drop(conn);
        for name in &PROCESSES[..6] {
            let child = stack.spawn(name, &[]);
            stack.children.push((name, child));
        }
        stack.start_vault(kek, None).await;
        for url in [stack.sim.clone(), stack.api.clone()] {
            stack.wait_healthy(&format!("{url}/healthz")).await;
        }
        stack
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts a binary with the stack's environment and `extra`; stdout and stderr are
    /// appended to its log file (a restarted vault keeps writing to the same one).
    fn spawn(&self, name: &str, extra: &[(&str, String)]) -> Child {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("log file");
        let mut command = Command::new(binary(name));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for (k, v) in extra {
            command.env(k, v);
        }
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"))
    }

    /// (Re)starts the vault with `kek`, and `previous` readable beside it.
    async fn start_vault(&mut self, kek: &[u8; 32], previous: Option<&[u8; 32]>) {
        self.stop_vault();
        let mut extra = vec![
            ("PAYSTREAM_VAULT_ADDR", self.vault_addr.clone()),
            ("PAYSTREAM_VAULT_KEK", b64(kek)),
        ];
        if let Some(p) = previous {
            extra.push(("PAYSTREAM_VAULT_KEK_PREVIOUS", b64(p)));
        }
        self.vault_child = Some(self.spawn("vault", &extra));
        let ready = format!("{}/readyz", self.vault);
        self.wait_healthy(&ready).await;
    }

    fn stop_vault(&mut self) {
        if let Some(mut child) = self.vault_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for `url` to answer 200; a child that exits meanwhile fails the test at once,
    /// with the end of its log (a database refusing connections stops the vault, say).
    async fn wait_healthy(&mut self, url: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let up = self
                .http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            let vault = self.vault_child.as_mut().map(|c| ("vault", c));
            let children = self.children.iter_mut().map(|(n, c)| (*n, c));
            for (name, child) in children.chain(vault) {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                        .unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                    panic!("{name} exited ({status}) while waiting for {url}:\n{tail}");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {url} to answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn key(&self) -> String {
        self.key.lock().unwrap().clone()
    }

    /// Sends a request and keeps its answer for the search.
    async fn send(&self, what: &str, rb: RequestBuilder) -> Reply {
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        self.replies.lock().unwrap().push(Recorded {
            what: what.to_owned(),
            status,
            text: text.clone(),
        });
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    fn api_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(self.key())
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(
            &format!("POST {path}"),
            self.api_request(Method::POST, path)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(&format!("GET {path}"), self.api_request(Method::GET, path))
            .await
    }

    async fn ok(&self, path: &str, body: Value, status: u16) -> Value {
        let r = self.post(path, body).await;
        assert_eq!(r.status, status, "POST {path}: {}", r.text);
        r.body
    }

    async fn wait_for(&self, path: &str, field: &str, wanted: &[&str]) -> Value {
        eventually(WAIT, &format!("{path} {field} in {wanted:?}"), || async {
            let r = self.get(path).await;
            let got = r.body[field].as_str().unwrap_or_default().to_owned();
            wanted.contains(&got.as_str()).then_some(r.body)
        })
        .await
    }

    async fn tokenize(&self, key: &str, instrument: Value) -> Reply {
        self.send(
            "POST /vault/tokens",
            self.http
                .post(format!("{}/vault/tokens", self.vault))
                .bearer_auth(key)
                .json(&instrument),
        )
        .await
    }

    /// Tokenizes with the publishable key and stores the token as a method of `cus_1`.
    async fn stored_method(&self, pk: &str, kind: &str, instrument: Value) -> String {
        let tok = self.tokenize(pk, instrument).await;
        assert_eq!(tok.status, 201, "{}", tok.text);
        let pm = self
            .ok(
                "/api/payment-methods",
                json!({"type": kind, "token": tok.body["id"], "customerId": "cus_1"}),
                201,
            )
            .await;
        pm["id"].as_str().expect("pm id").to_owned()
    }

    /// Creates and confirms an intent for `pm`; its id.
    async fn pay(&self, pm: &str, amount: i64) -> String {
        let pi = self
            .ok(
                "/api/payment-intents",
                json!({"amount": amount, "currency": "usd", "customerId": "cus_1",
                       "paymentMethodId": pm, "returnUrl": RETURN_URL}),
                201,
            )
            .await;
        let id = pi["id"].as_str().expect("pi id").to_owned();
        self.ok(
            &format!("/api/payment-intents/{id}/confirm"),
            json!({}),
            202,
        )
        .await;
        id
    }

    async fn intent(&self, id: &str, wanted: &[&str]) -> Value {
        self.wait_for(&format!("/api/payment-intents/{id}"), "status", wanted)
            .await
    }

    /// Answers the simulator's challenge page like a browser, and follows the 303 to the
    /// API's callback; the callback's own redirect is the merchant's return URL.
    async fn pass_challenge(&self, url: &str) {
        let page = self.send("GET challenge", self.http.get(url)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let posted = self
            .http
            .post(url)
            .form(&[("result", "succeeded")])
            .send()
            .await
            .expect("challenge answer");
        assert_eq!(posted.status(), 303);
        let callback = posted.headers()[LOCATION].to_str().unwrap().to_owned();
        let back = self
            .http
            .get(&callback)
            .send()
            .await
            .expect("3-D Secure callback");
        assert_eq!(back.status(), 303);
        assert!(back.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with(RETURN_URL));
    }

    /// Runs the `paystream` command with the stack's database and credentials; (stdout,
    /// stderr), asserting it succeeded.
    fn paystream(&self, args: &[&str]) -> (String, String) {
        let out = Command::new(binary("paystream"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .expect("run paystream");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "paystream {args:?}: {stdout}{stderr}");
        (stdout, stderr)
    }

    /// Every row of every table of every schema (the vault's included: its sealed columns
    /// are ciphertext, which no spelling searched for can match), one source per table.
    async fn tables(&self) -> Vec<Source> {
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema::text, table_name::text FROM information_schema.tables \
             WHERE table_type = 'BASE TABLE' \
               AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("tables");
        let mut out = Vec::new();
        for (schema, table) in tables {
            let name = format!("\"{schema}\".\"{table}\"");
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {name} t"))
                    .fetch_all(&self.db.pool)
                    .await
                    .expect("rows");
            out.push(Source {
                place: format!("table {schema}.{table} ({} rows)", rows.len()),
                text: rows.join("\n"),
            });
        }
        out
    }

    /// Every message still held by each of the test's streams (work queues keep only what is
    /// not yet acked; EVENTS and DEAD_LETTERS keep everything), one source per message.
    async fn stored_messages(&self, js: &async_nats::jetstream::Context) -> Vec<Source> {
        let mut out = Vec::new();
        for s in Stream::ALL {
            let name = self.topology.stream_name(s);
            let Ok(mut stream) = js.get_stream(&name).await else {
                continue;
            };
            let info = stream.info().await.expect("stream info").state.clone();
            if info.messages == 0 {
                continue;
            }
            for seq in info.first_sequence..=info.last_sequence {
                if let Ok(m) = stream.get_raw_message(seq).await {
                    out.push(Source {
                        place: format!("stream {name} message {seq} ({})", m.subject),
                        text: format!("{:?}\n{}", m.headers, String::from_utf8_lossy(&m.payload)),
                    });
                }
            }
        }
        out
    }

    /// Stops every child (exact pids it started), the vault last.
    fn set_env(&mut self, name: &'static str, value: String) {
        self.env.retain(|(k, _)| *k != name);
        self.env.push((name, value));
    }

    /// Restarts every process but the vault with the stack's current environment.
    async fn restart_processes(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        for name in &PROCESSES[..6] {
            let child = self.spawn(name, &[]);
            self.children.push((name, child));
        }
        let api = self.api.clone();
        self.wait_healthy(&format!("{api}/healthz")).await;
    }

    fn stop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        self.stop_vault();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
        // A failed run keeps the logs it searched, for whoever reads the failure.
        if std::thread::panicking() {
            eprintln!("the processes' logs are kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
        // The streams go with the test, like spawn_app's.
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(nats_url()))
                        .await
                {
                    let js = async_nats::jetstream::new(client);
                    let _ = tokio::time::timeout(Duration::from_secs(5), topology.delete_all(&js))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A `multipart/form-data` body with one text part and one PDF file part.
fn evidence_form() -> (String, Vec<u8>) {
    let boundary = "secrecytestboundary0PzC8q";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"productDescription\"\r\n\r\nA blue kettle\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"receipt\"; filename=\"receipt.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(PDF);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `paystream keys rotate-sealing` in the order an operator follows: every process restarted
/// with the new key current and the old one readable, the rotation run, then every process
/// restarted with the new key alone. The payments and webhooks after it prove nothing was
/// left under the old key, and the search looks for both keys.
async fn rotate_sealing_key(stack: &mut Stack, old: &[u8; 32], new: &[u8; 32]) -> String {
    stack.set_env("PAYSTREAM_WEBHOOK_SECRET_KEY", b64(new));
    stack.set_env("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS", b64(old));
    stack.restart_processes().await;
    let (out, err) = stack.paystream(&["keys", "rotate-sealing"]);
    // The subscription's secrets, the evidence file and the replay copies were sealed under
    // the old key: a rotation that moved nothing proves nothing.
    assert!(
        out.contains("done: ") && !out.contains("done: 0 rows"),
        "{out}{err}"
    );
    stack
        .env
        .retain(|(k, _)| *k != "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS");
    stack.restart_processes().await;
    format!("{out}\n{err}")
}

#[tokio::test]
async fn no_secret_reaches_a_log_an_error_a_table_a_stream_or_a_webhook() {
    let (kek, new_kek) = (random_bytes(), random_bytes());
    let (sealing, new_sealing) = (random_bytes(), random_bytes());
    let service = format!("svc_{}", uuid::Uuid::new_v4().simple());
    let acquirer = format!("acq_{}", uuid::Uuid::new_v4().simple());
    // Everything published on the test's subjects, listened to before anything runs: the
    // command streams are work queues, so an acked message is gone by the time of the search.
    let nats = async_nats::connect(nats_url()).await.expect("NATS");
    let js = async_nats::jetstream::new(nats.clone());
    let published: Arc<Mutex<Vec<Source>>> = Arc::default();
    let mut stack = Stack::start(&kek, &sealing, &service, &acquirer).await;
    for s in Stream::ALL {
        for subject in stack.topology.stream_config(s).subjects {
            let mut sub = nats.subscribe(subject).await.expect("subscribe");
            let sink = published.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    sink.lock().unwrap().push(Source {
                        place: format!("a message published on {}", m.subject),
                        text: format!("{:?}\n{}", m.headers, String::from_utf8_lossy(&m.payload)),
                    });
                }
            });
        }
    }
    nats.flush().await.expect("subscriptions registered");
    scenario(
        &mut stack,
        &js,
        &published,
        [&kek, &new_kek, &sealing, &new_sealing],
        &service,
        &acquirer,
    )
    .await;
}

/// The scenario and the search; returns once everything is proved.
async fn scenario(
    stack: &mut Stack,
    js: &async_nats::jetstream::Context,
    published: &Arc<Mutex<Vec<Source>>>,
    [kek, new_kek, sealing, new_sealing]: [&[u8; 32]; 4],
    service: &str,
    acquirer: &str,
) {
    let first_key = stack.key();
    let pk = {
        let mut conn = stack.db.pool.acquire().await.expect("connection");
        merchants::create_key(&mut conn, "acme", Role::Publishable, None)
            .await
            .expect("publishable key")
            .secret
            .expose()
            .clone()
    };

    // Webhooks to a local sink, every event type; subscribed with an Idempotency-Key, so the
    // replay copy of the answer that shows the secret is stored too.
    let sink = Sink::start().await;
    let sub = stack
        .ok(
            "/api/webhooks/subscribe",
            json!({"url": sink.url("/hooks"), "events": ["*"]}),
            201,
        )
        .await;
    let sub_id = sub["id"].as_str().expect("we id").to_owned();
    let first_whsec = sub["secret"].as_str().expect("whsec").to_owned();

    // Tokenize at the vault with the publishable key, store, pay.
    let card = |number: &str, cvc: &str| json!({"card": {"number": number, "expMonth": 12, "expYear": 2034, "cvc": cvc}});
    let visa = stack.stored_method(&pk, "card", card(VISA, VISA_CVC)).await;
    let three_ds = stack
        .stored_method(&pk, "card", card(THREE_DS, THREE_DS_CVC))
        .await;
    let bank = stack
        .stored_method(
            &pk,
            "bank_account",
            json!({"bankAccount": {"country": "US", "routingNumber": "110000000",
                "accountNumber": ACCOUNT, "accountHolderName": "Jane Doe",
                "accountHolderType": "individual"}}),
        )
        .await;
    let paid = stack.pay(&visa, 2000).await;
    stack.intent(&paid, &["succeeded"]).await;
    let challenged = stack.pay(&three_ds, 1099).await;
    let pi = stack.intent(&challenged, &["requires_action"]).await;
    let url = pi["nextAction"]["redirectToUrl"]["url"]
        .as_str()
        .expect("challenge url")
        .to_owned();
    stack.pass_challenge(&url).await;
    stack.intent(&challenged, &["succeeded"]).await;
    let debit = stack.pay(&bank, 1500).await;
    stack.intent(&debit, &["processing", "succeeded"]).await;

    // Refund part of the first payment.
    let refund = stack
        .ok(
            "/api/refunds",
            json!({"paymentIntentId": paid, "amount": 500}),
            201,
        )
        .await;
    let refund_id = refund["id"].as_str().expect("re id").to_owned();
    stack
        .wait_for(
            &format!("/api/refunds/{refund_id}"),
            "status",
            &["succeeded"],
        )
        .await;

    // A chargeback on the challenged payment, answered with evidence and a file.
    let r = stack
        .send(
            "POST /sim/disputes",
            stack
                .http
                .post(format!("{}/sim/disputes", stack.sim))
                .json(&json!({"reference": challenged, "reason": "product_not_received"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let dispute = eventually(WAIT, "the dispute", || async {
        let r = stack
            .get(&format!("/api/disputes?paymentIntentId={challenged}"))
            .await;
        r.body["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await;
    let dispute_id = dispute["id"].as_str().expect("dp id").to_owned();
    let (content_type, body) = evidence_form();
    let r = stack
        .send(
            "POST evidence",
            stack
                .api_request(
                    Method::POST,
                    &format!("/api/disputes/{dispute_id}/evidence"),
                )
                .header("content-type", content_type)
                .body(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["evidence"]["files"].as_array().map(Vec::len),
        Some(1)
    );
    stack
        .ok(
            &format!("/api/disputes/{dispute_id}/submit"),
            json!({}),
            200,
        )
        .await;

    // Card numbers, CVCs and an account number where they do not belong: refused, and the
    // refusals are searched with every other answer.
    for body in [
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "metadata": {"card": VISA, "cvc": VISA_CVC}}),
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "description": "paid with 4242 4242 4242 4242"}),
        json!({"amount": 100, "currency": "usd", "customerId": THREE_DS}),
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "paymentMethodId": "4000-0027-6000-3184"}),
    ] {
        let r = stack.post("/api/payment-intents", body).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(
            r.body["error"]["code"], "card_data_not_allowed",
            "{}",
            r.text
        );
    }
    let r = stack
        .get(&format!("/api/payment-intents?customerId={VISA}"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = stack
        .post(
            "/api/webhooks/subscribe",
            json!({"url": format!("https://shop.example/{VISA}"), "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = stack
        .post(
            "/api/payment-methods",
            json!({"type": "card", "token": VISA, "customerId": "cus_1"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Where no key is presented: the browser's 3-D Secure callback and the acquirer's
    // notification endpoint.
    for (what, rb) in [
        (
            "GET 3-D Secure callback with a card number",
            stack.http.get(format!(
                "{}/api/payment-intents/{challenged}/3ds/callback?result=4000-0027-6000-3184",
                stack.api
            )),
        ),
        (
            "POST provider notification with a card number",
            stack
                .http
                .post(format!("{}/api/provider/webhooks", stack.api))
                .json(
                    &json!({"type": "charge.succeeded", "data": {"card": VISA, "cvc": VISA_CVC}}),
                ),
        ),
    ] {
        let r = stack.send(what, rb).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
    }
    // At the vault: a number that fails its check digit, a CVC of the wrong length, an
    // account number in a name field, a card number as a bearer key.
    for (body, key) in [
        (card("4242424242424241", VISA_CVC), pk.clone()),
        (card(VISA, "73"), pk.clone()),
        (
            json!({"bankAccount": {"country": "US", "routingNumber": "110000000",
                "accountNumber": "12", "accountHolderName": ACCOUNT,
                "accountHolderType": "individual"}}),
            pk.clone(),
        ),
        (card(VISA, VISA_CVC), format!("pk_test_{VISA}")),
    ] {
        let r = stack.tokenize(&key, body).await;
        assert!((400..500).contains(&r.status), "{}: {}", r.status, r.text);
    }

    // Roll the API key with no grace: the old one is refused from now on.
    let key_id = merchants::authenticate(&stack.db.pool, &first_key)
        .await
        .expect("authenticate")
        .expect("the first key")
        .key_id;
    let (out, roll_err) = stack.paystream(&["keys", "roll", &key_id, "--expire-old-in", "0"]);
    let second_key = out
        .split_whitespace()
        .last()
        .expect("the new key")
        .to_owned();
    assert!(
        second_key.starts_with("sk_") && second_key != first_key,
        "{out}"
    );
    *stack.key.lock().unwrap() = second_key.clone();
    // The API caches a key's lookup for up to a second, so the expired key is refused within
    // that window rather than at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = stack
            .send(
                "GET with the rolled key",
                stack
                    .http
                    .get(format!("{}/api/payment-intents", stack.api))
                    .bearer_auth(&first_key),
            )
            .await;
        if r.status == 401 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rolled key still works: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Rotate the webhook secret.
    let rotated = stack
        .ok(
            &format!("/api/webhooks/subscriptions/{sub_id}/rotate-secret"),
            json!({}),
            200,
        )
        .await;
    let second_whsec = rotated["secret"].as_str().expect("whsec").to_owned();
    assert_ne!(first_whsec, second_whsec);

    // Rotate the vault's KEK: the new one current, the old one readable, re-wrap, then the
    // old one dropped. The stored card still pays, so every data key moved.
    stack.start_vault(new_kek, Some(kek)).await;
    let vault_url = stack.vault.clone();
    let (rewrapped, rotate_err) =
        stack.paystream(&["vault", "rotate-kek", "--vault-url", &vault_url]);
    assert!(rewrapped.contains("re-wrapped"), "{rewrapped}");
    assert!(!rewrapped.contains("done: 0 "), "{rewrapped}");
    stack.start_vault(new_kek, None).await;
    let resealed = rotate_sealing_key(stack, sealing, new_sealing).await;
    let after = stack.pay(&visa, 700).await;
    stack.intent(&after, &["succeeded"]).await;

    // Webhooks arrived, signed; the last ones under the new secret.
    let event_id: String = eventually(WAIT, "the last payment's event", || async {
        sqlx::query_scalar(
            "SELECT id FROM events WHERE object_id = $1 AND type = 'payment_intent.succeeded'",
        )
        .bind(&after)
        .fetch_optional(&stack.db.pool)
        .await
        .expect("events")
    })
    .await;
    let received = eventually(WAIT, "the last payment's webhook", || async {
        let got = sink.received_on("/hooks");
        got.iter()
            .any(|r| r.header("webhook-id") == event_id)
            .then_some(got)
    })
    .await;
    for hook in &received {
        assert!(
            hook.verifies_with(&first_whsec) || hook.verifies_with(&second_whsec),
            "an unsigned webhook: {:?}",
            hook.headers
        );
    }
    let last = received
        .iter()
        .find(|r| r.header("webhook-id") == event_id)
        .expect("the last webhook");
    assert!(last.verifies_with(&second_whsec), "{:?}", last.headers);

    // What to look for.
    let mut needles = vec![
        Needle::number("the Visa card number", VISA),
        Needle::number("the 3-D Secure card number", THREE_DS),
        Needle::number("the bank account number", ACCOUNT),
        Needle::cvc("the Visa card's CVC", VISA_CVC),
        Needle::cvc("the 3-D Secure card's CVC", THREE_DS_CVC),
        Needle::secret("the first secret key", &first_key),
        Needle::secret("the rolled-to secret key", &second_key),
        Needle::secret("the first webhook secret", &first_whsec),
        Needle::secret("the rotated webhook secret", &second_whsec),
        Needle::key("the first KEK", kek),
        Needle::key("the new KEK", new_kek),
        Needle::key("the webhook sealing key", sealing),
        Needle::key("the new webhook sealing key", new_sealing),
        Needle::secret("the vault service credential", service),
        Needle::secret("the acquirer's notification secret", acquirer),
    ];
    // A webhook secret is its `whsec_` prefix and base64 of its key bytes: search the key
    // alone too, so a secret logged without its prefix is still found.
    for (what, whsec) in [("first", &first_whsec), ("rotated", &second_whsec)] {
        if let Some(bare) = whsec.strip_prefix("whsec_") {
            needles.push(Needle::secret(
                &format!("the {what} webhook secret without its prefix"),
                bare,
            ));
        }
    }

    // Where to look: every process's log, line by line.
    stack.stop();
    let mut logs = Vec::new();
    for name in PROCESSES {
        let text = std::fs::read_to_string(stack.log_path(name)).expect("log");
        let lines = text.lines().count();
        assert!(lines > 0, "{name} logged nothing");
        assert!(
            text.contains("\"level\":\"DEBUG\""),
            "{name} did not log at debug level"
        );
        logs.push(Source {
            place: format!("the log of {name} ({lines} lines)"),
            text,
        });
    }
    logs.push(Source {
        place: "the output of paystream keys roll, stderr".to_owned(),
        text: roll_err,
    });
    logs.push(Source {
        place: "the output of paystream vault rotate-kek".to_owned(),
        text: format!("{rewrapped}\n{rotate_err}"),
    });
    logs.push(Source {
        place: "the output of paystream keys rotate-sealing".to_owned(),
        text: resealed,
    });
    // Every error body (and every answer of the vault, none of which may quote a number).
    let replies = std::mem::take(&mut *stack.replies.lock().unwrap());
    let errors: Vec<Source> = replies
        .iter()
        .filter(|r| r.status >= 400)
        .map(|r| Source {
            place: format!("the {} answer to {}", r.status, r.what),
            text: r.text.clone(),
        })
        .collect();
    assert!(errors.len() >= 10, "{} error bodies", errors.len());
    // Successful answers may carry a secret key or webhook secret exactly where the contract
    // shows it once; a card number, CVC, account number or key material never.
    let answers: Vec<Source> = replies
        .iter()
        .filter(|r| r.status < 400)
        .map(|r| Source {
            place: format!("the {} answer to {}", r.status, r.what),
            text: r.text.clone(),
        })
        .collect();
    let tables = stack.tables().await;
    assert!(tables.len() > 15, "{} tables", tables.len());
    for table in ["public.payment_methods", "public.dispute_files"] {
        assert!(
            tables
                .iter()
                .any(|t| t.place.starts_with(&format!("table {table} ")) && !t.text.is_empty()),
            "{table} was read and has rows"
        );
    }
    // The vault's own tables are read too, by schema: only the vault crate names them.
    assert!(
        tables
            .iter()
            .any(|t| t.place.starts_with("table vault.") && !t.text.is_empty()),
        "the vault's schema was read and has rows"
    );
    let stored = stack.stored_messages(js).await;
    assert!(!stored.is_empty(), "the EVENTS stream keeps its messages");
    let live: Vec<Source> = std::mem::take(&mut *published.lock().unwrap());
    for subject in ["cmd.payment.", "cmd.refund.", "cmd.webhook.", "evt."] {
        let wire = stack.topology.subject(subject);
        assert!(
            live.iter().any(|m| m.place.contains(&wire)),
            "a message on {wire} was captured"
        );
    }
    let hooks: Vec<Source> = received
        .iter()
        .enumerate()
        .map(|(i, r)| Source {
            place: format!("webhook {i} received ({})", r.header("webhook-id")),
            text: format!("{:?}\n{}", r.headers, String::from_utf8_lossy(&r.body)),
        })
        .collect();
    assert!(hooks.len() >= 5, "{} webhooks", hooks.len());

    let rows: usize = tables.iter().map(|t| t.text.lines().count()).sum();
    let lines: usize = logs.iter().map(|l| l.text.lines().count()).sum();
    eprintln!(
        "searched {lines} log lines of {} processes, {} error bodies and {} other answers, \
         {rows} rows of {} tables, {} stored and {} published messages, {} webhooks",
        PROCESSES.len(),
        errors.len(),
        answers.len(),
        tables.len(),
        stored.len(),
        live.len(),
        hooks.len()
    );
    let everywhere = logs
        .iter()
        .chain(&errors)
        .chain(&tables)
        .chain(&stored)
        .chain(&live)
        .chain(&hooks);
    let mut hits = search(everywhere, &needles);
    let never_answered: Vec<Needle> = needles
        .iter()
        .filter(|n| !n.what.contains("secret key") && !n.what.contains("webhook secret"))
        .cloned()
        .collect();
    hits.extend(search(&answers, &never_answered));
    // The scrubber is the second line, not the first: no process even tried to log a card
    // number or a secret, so no line carries a mark the scrubber left (`unexplained_marks`).
    for log in &logs {
        for at in unexplained_marks(&log.text) {
            let line = log.text[..at].matches('\n').count() + 1;
            let excerpt: String = log.text[at.saturating_sub(200)..]
                .chars()
                .take(300)
                .collect();
            hits.push(format!(
                "a scrubbed value in {} (line {line}): …{excerpt}…",
                log.place
            ));
        }
    }
    assert!(
        hits.is_empty(),
        "secrets found where they must not be:\n{}",
        hits.join("\n")
    );

    // The same reading code finds a value planted in a real table and a real stream.
    sqlx::query("CREATE TABLE secrecy_canary (note text)")
        .execute(&stack.db.pool)
        .await
        .expect("canary table");
    sqlx::query("INSERT INTO secrecy_canary VALUES ($1)")
        .bind(format!("paid with {}", "4242-4242-4242-4242"))
        .execute(&stack.db.pool)
        .await
        .expect("canary row");
    js.publish(
        stack.topology.subject("evt.secrecy.canary"),
        format!("{{\"cvc\":\"{VISA_CVC}\"}}").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("canary stored");
    let planted: Vec<Source> = stack
        .tables()
        .await
        .into_iter()
        .chain(stack.stored_messages(js).await)
        .collect();
    let found = search(&planted, &needles);
    assert!(
        found
            .iter()
            .any(|h| h.starts_with("the Visa card number in table public.secrecy_canary")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|h| h.starts_with("the Visa card's CVC in stream ")
                && h.contains("evt.secrecy.canary")),
        "{found:?}"
    );
}

/// Where the scrubber cut something out of a log that is not one of its known false hits.
/// A secret's mark (`sk_[REDACTED]`) always counts. A card-number mark does not count when it
/// is glued to an identifier (a random hex id such as a request id can hold a 13-19 digit
/// Luhn run, and the scrubber cuts those too): a number inside an id would also be in the
/// id's rows, answers and messages, where nothing scrubs and the search finds it. Nor does
/// JetStream's `max_age` in nanoseconds, logged by async-nats at debug level, a 16-digit Luhn
/// number.
fn unexplained_marks(text: &str) -> Vec<usize> {
    const PAN: &str = "[REDACTED_PAN]";
    let word =
        |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    let bytes = text.as_bytes();
    text.match_indices("[REDACTED")
        .map(|(at, _)| at)
        .filter(|&at| {
            if !text[at..].starts_with(PAN) {
                return true;
            }
            let before = text.get(at.saturating_sub(16)..at).unwrap_or_default();
            let glued = word(at.checked_sub(1).map(|i| bytes[i]))
                || word(bytes.get(at + PAN.len()).copied());
            !(before.contains("max_age") || glued)
        })
        .collect()
}

#[test]
fn the_search_finds_a_planted_value_in_each_kind_of_source_and_names_it() {
    let needles = [
        Needle::number("the card", VISA),
        Needle::number("the account", ACCOUNT),
        Needle::cvc("the cvc", VISA_CVC),
        Needle::secret("the key", "sk_test_abcdefabcdef"),
        Needle::key("the kek", &[7; 32]),
    ];
    let source = |place: &str, text: String| Source {
        place: place.to_owned(),
        text,
    };
    let planted = [
        source(
            "a log",
            "{\"level\":\"DEBUG\"}\n{\"fields\":{\"message\":\"card 4242 4242 4242 4242\"}}".into(),
        ),
        source(
            "a table",
            format!("{{\"sealed\":\"\\\\x{}\"}}", hex(VISA.as_bytes())),
        ),
        source("a message", format!("{{\"account\":\"{ACCOUNT}\"}}")),
        source(
            "an error",
            "{\"param\":\"card.cvc\",\"value\":\"739\"}".into(),
        ),
        source("a header", "Cvc: 739".into()),
        source("a body", "Bearer sk_test_abcdefabcdef".into()),
        source("an env dump", format!("KEK={}", b64(&[7; 32]))),
        source("a hex dump", hex(&[7; 32])),
        source("a dash", "4242-4242-4242-4242".into()),
    ];
    let hits = search(&planted, &needles);
    for expected in [
        "the card in a log (line 2)",
        "the card in a table",
        "the account in a message",
        "the cvc in an error",
        "the cvc in a header",
        "the key in a body",
        "the kek in an env dump",
        "the kek in a hex dump",
        "the card in a dash",
    ] {
        assert!(
            hits.iter().any(|h| h.starts_with(expected)),
            "{expected}: {hits:#?}"
        );
    }
    assert_eq!(hits.len(), 9, "{hits:#?}");

    // A CVC's digits inside other numbers, or away from a CVC, are not a hit.
    let clean = [
        source("ports", "listening on 127.0.0.1:17390 after 739ms".into()),
        source(
            "cvc checked",
            "{\"cvc\":\"present\",\"amount\":17392}".into(),
        ),
        source("last4", "{\"last4\":\"4242\",\"brand\":\"visa\"}".into()),
    ];
    assert_eq!(search(&clean, &needles), Vec::<String>::new());

    // Marks the scrubber leaves: a secret's always counts, a free-standing number's counts,
    // a number glued into an id or JetStream's max_age does not.
    let log = "key sk_[REDACTED] used\n\
               {\"number\":\"[REDACTED_PAN]\"}\n\
               card [REDACTED_PAN] now\n\
               request_id\":\"req_5208a[REDACTED_PAN]bdb5c4e84fa2b\"\n\
               \\\"max_age\\\":[REDACTED_PAN],";
    let marks = unexplained_marks(log);
    let lines: Vec<usize> = marks
        .iter()
        .map(|&at| log[..at].matches('\n').count() + 1)
        .collect();
    assert_eq!(lines, vec![1, 2, 3], "{marks:?}");
}
