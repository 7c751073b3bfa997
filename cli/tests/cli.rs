//! The `paystream` command, run as a real process against real PostgreSQL and NATS.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paystream_tests::TestDb;

fn paystream(db: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paystream"));
    c.env("DATABASE_URL", &db.url)
        .env("PAYSTREAM_ENV", "development");
    c
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run paystream");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn keys_create_list_revoke() {
    let db = TestDb::new().await;
    let (ok, out, _) = run(paystream(&db).args([
        "keys",
        "create",
        "--merchant",
        "acme",
        "--role",
        "read_only",
    ]));
    assert!(ok, "{out}");
    let secret = out
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("sk_") && secret.len() > 20, "{out}");
    let owner = paystream_shared::store::merchants::authenticate(&db.pool, &secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        owner.role,
        paystream_shared::store::merchants::Role::ReadOnly
    );

    let (ok, out, _) = run(paystream(&db).args(["keys", "list", "--json"]));
    assert!(ok);
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys[0]["merchantName"], "acme");
    assert!(!out.contains(&secret), "list never shows the secret");
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    let (ok, table, _) = run(paystream(&db).args(["keys", "list"]));
    assert!(ok && table.contains(&id) && table.contains("active"));

    let (ok, out, _) = run(paystream(&db).args(["keys", "revoke", &id]));
    assert!(ok, "{out}");
    assert!(
        paystream_shared::store::merchants::authenticate(&db.pool, &secret)
            .await
            .unwrap()
            .is_none()
    );
    let (ok, _, err) = run(paystream(&db).args(["keys", "revoke", &id]));
    assert!(!ok && err.contains("no active key"));
    let (ok, _, _) =
        run(paystream(&db).args(["keys", "create", "--merchant", "x", "--role", "root"]));
    assert!(!ok, "unknown roles are refused");
    for (name, role) in [
        (
            "developer",
            paystream_shared::store::merchants::Role::Developer,
        ),
        ("support", paystream_shared::store::merchants::Role::Support),
    ] {
        let (ok, out, _) =
            run(paystream(&db).args(["keys", "create", "--merchant", "acme", "--role", name]));
        assert!(ok, "{out}");
        let sk = out.split_whitespace().last().unwrap();
        let owner = paystream_shared::store::merchants::authenticate(&db.pool, sk)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner.role, role);
    }
    let (ok, out, _) = run(paystream(&db).args([
        "keys",
        "create",
        "--merchant",
        "acme",
        "--role",
        "publishable",
    ]));
    assert!(ok, "{out}");
    let pk = out.split_whitespace().last().unwrap();
    assert!(
        pk.starts_with("pk_") && out.contains("publishable key: pk_"),
        "{out}"
    );
    let owner = paystream_shared::store::merchants::authenticate(&db.pool, pk)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        owner.role,
        paystream_shared::store::merchants::Role::Publishable
    );
}

#[tokio::test]
async fn migrate_and_audit_verify_detect_tampering() {
    let db = TestDb::new().await;
    let (ok, out, _) = run(paystream(&db).arg("migrate"));
    assert!(ok && out.contains("migrations applied"));

    let mut conn = db.pool.acquire().await.unwrap();
    let actor = paystream_shared::audit::Actor::Operator("test".into());
    for i in 0..3 {
        paystream_shared::audit::append(
            &mut conn,
            paystream_shared::audit::NewEntry {
                merchant_id: None,
                object_type: "thing",
                object_id: "obj_1",
                action: "thing.changed",
                actor: &actor,
                before: Some(serde_json::json!({"n": i})),
                after: Some(serde_json::json!({"n": i + 1})),
            },
        )
        .await
        .unwrap();
    }
    let (ok, out, _) = run(paystream(&db).args(["audit", "verify"]));
    assert!(ok, "{out}");
    assert!(out.contains("3 entries verified"), "{out}");

    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    let victim: String =
        sqlx::query_scalar("SELECT id FROM audit_log ORDER BY seq OFFSET 1 LIMIT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE id = $1")
        .bind(&victim)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();

    let (ok, out, _) = run(paystream(&db).args(["audit", "verify"]));
    assert!(!ok, "a tampered chain exits non-zero");
    assert!(out.contains(&victim), "names the first bad entry: {out}");
    let (ok, out, _) = run(paystream(&db).args(["audit", "verify", "--json"]));
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["firstBad"]["id"], victim.as_str());
}

struct Up {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Up {
    fn start(cmd: &mut Command) -> Up {
        Self::start_with(cmd.arg("up"))
    }

    /// `cmd` already names `up` and its flags.
    fn start_with(cmd: &mut Command) -> Up {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn up");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        Up {
            child,
            lines: rx,
            stderr,
        }
    }

    /// Lines up to and including READY.
    fn wait_ready(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                let ready = line.starts_with("READY ");
                seen.push(line);
                if ready {
                    return seen;
                }
            }
        }
        panic!(
            "no READY line; saw {seen:?}; stderr: {}",
            self.stderr.lock().unwrap()
        );
    }

    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "up did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn field<'a>(ready: &'a str, name: &str) -> &'a str {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap()
}

#[tokio::test]
async fn up_with_a_bootstrap_key_runs_the_api_and_never_logs_a_card_number() {
    let db = TestDb::new().await;
    let api_port = free_port();
    let mut cmd = paystream(&db);
    cmd.env("PAYSTREAM_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("PAYSTREAM_VAULT_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "PAYSTREAM_ACQUIRER_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("PAYSTREAM_STREAM_PREFIX", format!("up{}_", free_port()))
        .env(
            "PAYSTREAM_BOOTSTRAP_API_KEY",
            "sk_bootstrap_test_0123456789",
        )
        .env("RUST_LOG", "debug");
    let up = Up::start(&mut cmd);
    let lines = up.wait_ready(Duration::from_secs(60));
    let ready = lines.last().unwrap();
    // The key is printed with READY, not scrolled away above the start-up output.
    assert!(
        lines[lines.len() - 2].contains("PAYSTREAM_BOOTSTRAP_API_KEY"),
        "{lines:?}"
    );
    let api = field(ready, "api");
    assert_eq!(api, format!("http://127.0.0.1:{api_port}"));
    assert!(
        field(ready, "vault").starts_with("http://")
            && field(ready, "acquirer").starts_with("http://")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE=true")),
        "{lines:?}"
    );

    let http = reqwest::Client::new();
    // The demo checkout is served next to the stack, with a publishable key of the bootstrap
    // key's merchant in its page (the browser test, tests/tests/it/browser.rs, pays there).
    let demo = lines
        .iter()
        .find_map(|l| l.strip_prefix("demo checkout: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no demo checkout line: {lines:?}"));
    let page = http.get(demo).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("\"pk_"), "{page}");
    assert!(page.contains(field(ready, "vault")), "{page}");
    assert!(!page.contains("sk_bootstrap_test_0123456789"), "{page}");
    let r = http
        .post(format!("{api}/api/payment-intents"))
        .bearer_auth("sk_bootstrap_test_0123456789")
        .json(&serde_json::json!({"amount": 100, "currency": "usd", "customerId": "c", "paymentMethodId": "4242424242424242"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!(
            "{api}/api/payment-intents?customerId=4000000000000002"
        ))
        .bearer_auth("sk_bootstrap_test_0123456789")
        .send()
        .await
        .unwrap();
    // A card number in the query is refused at the API's front door, and never logged.
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "card_data_not_allowed");

    // The vault answers at READY's `vault=`: a card becomes a token there, never at the API.
    let vault = field(ready, "vault");
    let r = http
        .post(format!("{vault}/vault/tokens"))
        .bearer_auth("sk_bootstrap_test_0123456789")
        .json(&serde_json::json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token: serde_json::Value = r.json().await.unwrap();
    assert_eq!(token["card"]["last4"], "4242");
    // `up` runs in development mode, so the operator's command reaches the vault with the
    // development service credential; the KEK did not change, so nothing needs re-wrapping.
    let (ok, out, err) = run(paystream(&db).env("PAYSTREAM_ENV", "development").args([
        "vault",
        "rotate-kek",
        "--vault-url",
        vault,
    ]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("done: 0 data keys re-wrapped"), "{out}");
    let (ok, _, err) = run(paystream(&db)
        .env_remove("PAYSTREAM_ENV")
        .env_remove("PAYSTREAM_VAULT_SERVICE_TOKEN")
        .args(["vault", "rotate-kek", "--vault-url", vault]));
    assert!(
        !ok && err.contains("PAYSTREAM_VAULT_SERVICE_TOKEN"),
        "{err}"
    );

    let status = up.stderr.clone();
    let exit = up.stop();
    assert!(exit.success(), "{exit:?}");
    let logs = status.lock().unwrap().clone();
    assert!(!logs.is_empty(), "the API logged something");
    for secret in [
        "4242424242424242",
        "4000000000000002",
        "sk_bootstrap_test_0123456789",
    ] {
        assert!(!logs.contains(secret), "{secret} reached a log line");
    }
}

#[tokio::test]
async fn up_starts_its_own_postgres_and_nats_when_none_answer() {
    let data = std::env::temp_dir().join(format!("paystream-up-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).unwrap();
    let pg_port = free_port();
    let nats_port = free_port();
    let api_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{pg_port}/paystream"),
        )
        .env("NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("PAYSTREAM_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env(
            "PAYSTREAM_ACQUIRER_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env_remove("PAYSTREAM_BOOTSTRAP_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let done = line.starts_with("READY ");
            seen.push(line);
            if done {
                break;
            }
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("READY ")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("starting a local PostgreSQL")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("starting a local nats-server")),
        "{seen:?}"
    );
    let demo = &seen[seen.len() - 2];
    assert!(
        demo.contains("admin key:"),
        "demo key printed with READY: {seen:?}"
    );
    let key = demo.split_whitespace().last().unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/api/payment-intents"))
        .bearer_auth(key)
        .json(&serde_json::json!({"amount": 100, "currency": "usd", "customerId": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reqwest::get(format!("http://127.0.0.1:{api_port}/readyz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the API reaches the NATS that up started");

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Everything it started is gone: the ports are free again.
    for port in [pg_port, nats_port, api_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// A first client port whose node ports (it and the two after) and route ports (2000 above
/// each) are all free: where `up --nats-cluster 3` puts the cluster.
fn free_cluster_base() -> u16 {
    (0..50)
        .map(|_| free_port().clamp(20_000, 60_000))
        .find(|base| {
            (0..3).all(|i| {
                [base + i, base + i + 2000]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            })
        })
        .expect("six free ports")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_nats_cluster_starts_three_nodes_and_three_replicas() {
    let db = TestDb::new().await;
    let data = std::env::temp_dir().join(format!(
        "paystream-up-cluster-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&data).unwrap();
    let base = free_cluster_base();
    let api_port = free_port();
    let prefix = format!("upc{}_", free_port());
    let mut cmd = paystream(&db);
    cmd.arg("up")
        .arg("--nats-cluster")
        .arg("3")
        .arg("--data-dir")
        .arg(&data)
        .env("NATS_URL", format!("nats://127.0.0.1:{base}"))
        .env("PAYSTREAM_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("PAYSTREAM_VAULT_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "PAYSTREAM_ACQUIRER_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("PAYSTREAM_STREAM_PREFIX", &prefix)
        .env("RUST_LOG", "warn");
    let up = Up::start_with(&mut cmd);
    let lines = up.wait_ready(Duration::from_secs(120));
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "starting a local 3-node nats-server cluster with JetStream on ports {base}-{}",
            base + 2
        ))),
        "{lines:?}"
    );
    for node in ["n1", "n2", "n3"] {
        assert!(
            data.join("nats-cluster")
                .join(format!("{node}.conf"))
                .is_file(),
            "{node}'s config"
        );
    }
    let r = reqwest::get(format!("http://127.0.0.1:{api_port}/readyz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the API reaches the cluster");
    // The streams the processes made are held by all three nodes.
    let seeds: Vec<String> = (0..3)
        .map(|i| format!("nats://127.0.0.1:{}", base + i))
        .collect();
    let (_client, js) = paystream_nats::topology::connect(&seeds.join(","))
        .await
        .unwrap();
    let mut stream = js
        .get_stream(format!("{prefix}PAYMENT_COMMANDS"))
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "{info:?}");
    let cluster = info.cluster.clone().unwrap();
    assert!(cluster.leader.is_some(), "{info:?}");
    assert_eq!(cluster.replicas.len(), 2, "{info:?}");
    drop(js);

    let status = up.stop();
    assert!(status.success(), "{status:?}");
    for port in [base, base + 1, base + 2, api_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// `paystream doctor` with exactly `vars` in its environment (and PATH).
fn doctor(vars: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("doctor");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let (ok, out, err) = run(&mut cmd);
    (ok, format!("{out}{err}"))
}

#[tokio::test]
async fn doctor_passes_a_production_config_and_names_each_problem_of_the_development_one() {
    let db = TestDb::new().await;
    // Least privilege: a role that may log in and nothing more.
    let role = format!(
        "doctor_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    // What paystream's own role reads anyway; the doctor counts sealed values there.
    sqlx::query(&format!(
        "GRANT SELECT ON webhook_subscriptions, idempotency_keys, dispute_files TO {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("paystream-doctor-{role}"));
    let ca = paystream_shared::tls::local_ca::LocalCa::generate(&dir).unwrap();
    let nats = paystream_tests::nats_url();
    let least = format!("postgres://{role}@127.0.0.1:5432/{}", db.name);
    let (cert, key, ca_cert) = (
        ca.cert.display().to_string(),
        ca.key.display().to_string(),
        ca.ca_cert.display().to_string(),
    );
    let (ok, out) = doctor(&[
        ("DATABASE_URL", &least),
        ("NATS_URL", &nats),
        (
            "PAYSTREAM_WEBHOOK_SECRET_KEY",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ),
        (
            "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
            "acq_whsec_our_own_0123456789",
        ),
        (
            "PAYSTREAM_VAULT_KEK",
            "IB8eHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=",
        ),
        (
            "PAYSTREAM_VAULT_SERVICE_TOKEN",
            "vault_svc_our_own_0123456789",
        ),
        ("PAYSTREAM_API_ADDR", "0.0.0.0:8443"),
        ("PAYSTREAM_VAULT_ADDR", "0.0.0.0:8444"),
        ("PAYSTREAM_TLS_CERT", &cert),
        ("PAYSTREAM_TLS_KEY", &key),
        ("PAYSTREAM_CA_CERT", &ca_cert),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("checks passed") && !out.contains("FAIL"),
        "{out}"
    );
    assert!(out.contains(&format!("reachable as {role}")), "{out}");
    assert!(out.contains("ok   sealed values"), "{out}");

    // `paystream up`'s development values, used outside development, on every interface,
    // as the superuser, with NATS away.
    let (ok, out) = doctor(&[
        ("PAYSTREAM_ENV", "production"),
        ("DATABASE_URL", &db.url),
        ("NATS_URL", "nats://127.0.0.1:1"),
        (
            "PAYSTREAM_WEBHOOK_SECRET_KEY",
            paystream_shared::config::DEVELOPMENT_WEBHOOK_SECRET_KEY,
        ),
        (
            "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
            paystream_shared::config::DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET,
        ),
        (
            "PAYSTREAM_VAULT_KEK",
            paystream_vault::config::DEVELOPMENT_KEK,
        ),
        (
            "PAYSTREAM_VAULT_SERVICE_TOKEN",
            paystream_shared::config::DEVELOPMENT_VAULT_SERVICE_TOKEN,
        ),
        ("PAYSTREAM_API_ADDR", "0.0.0.0:8080"),
    ]);
    assert!(!ok, "{out}");
    for var in [
        "PAYSTREAM_WEBHOOK_SECRET_KEY",
        "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
        "PAYSTREAM_VAULT_KEK",
        "PAYSTREAM_VAULT_SERVICE_TOKEN",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("FAIL")
                && l.contains(&format!("{var} is the public development value"))),
            "{var} not named: {out}"
        );
    }
    let failed = |name: &str| out.lines().any(|l| l.starts_with(&format!("FAIL {name}")));
    assert!(
        failed("tls (api)") && out.contains("PAYSTREAM_TLS_CERT"),
        "{out}"
    );
    assert!(failed("database") && out.contains("superuser"), "{out}");
    assert!(failed("nats"), "{out}");
    assert!(
        !failed("tls (vault)"),
        "the vault stayed on loopback: {out}"
    );

    // Nothing set at all: development mode is refused, and each secret is named as missing.
    let (ok, out) = doctor(&[("PAYSTREAM_ENV", "development"), ("DATABASE_URL", &least)]);
    assert!(!ok);
    assert!(
        out.lines().any(|l| l.starts_with("FAIL environment")),
        "{out}"
    );
    assert!(out.contains("PAYSTREAM_VAULT_KEK is not set"), "{out}");

    let _ = std::fs::remove_dir_all(&dir);
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_roll_keeps_the_old_key_until_its_expiry() {
    use paystream_shared::store::merchants::authenticate;
    let db = TestDb::new().await;
    let (ok, out, _) = run(paystream(&db).args(["keys", "create", "--merchant", "acme"]));
    assert!(ok, "{out}");
    let old = out.split_whitespace().last().unwrap().to_owned();
    let old_id = authenticate(&db.pool, &old).await.unwrap().unwrap().key_id;

    // Default expiry: a day, so both work now.
    let (ok, out, _) = run(paystream(&db).args(["keys", "roll", &old_id]));
    assert!(ok, "{out}");
    let new = out.split_whitespace().last().unwrap().to_owned();
    assert!(new.starts_with("sk_") && new != old, "{out}");
    assert!(out.contains("keeps working until"), "{out}");
    let new_owner = authenticate(&db.pool, &new).await.unwrap().unwrap();
    assert!(authenticate(&db.pool, &old).await.unwrap().is_some());
    let (ok, table, _) = run(paystream(&db).args(["keys", "list"]));
    assert!(ok && table.contains("expiring"), "{table}");

    // Rolling the new key with no grace at all: it stops at once, its successor works.
    let (ok, out, _) =
        run(paystream(&db).args(["keys", "roll", &new_owner.key_id, "--expire-old-in", "0"]));
    assert!(ok, "{out}");
    let newest = out.split_whitespace().last().unwrap().to_owned();
    assert!(authenticate(&db.pool, &new).await.unwrap().is_none());
    assert!(authenticate(&db.pool, &newest).await.unwrap().is_some());
    let (ok, json, _) = run(paystream(&db).args(["keys", "list", "--json"]));
    assert!(ok && json.contains("\"rolledTo\""), "{json}");
    assert!(
        !json.contains(&newest) && !json.contains(&new),
        "never a secret"
    );
    let (ok, _, err) = run(paystream(&db).args(["keys", "roll", &new_owner.key_id]));
    assert!(!ok && err.contains("no active key"), "{err}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'api_key.rolled' AND actor = 'operator:paystream-cli'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
}

#[tokio::test]
async fn up_with_tls_serves_the_api_and_the_vault_over_https_with_a_local_ca() {
    let db = TestDb::new().await;
    let data_dir = std::env::temp_dir().join(format!("paystream-up-tls-{}", free_port()));
    let api_port = free_port();
    let mut cmd = paystream(&db);
    cmd.args(["up", "--tls", "--data-dir"])
        .arg(&data_dir)
        .env("PAYSTREAM_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("PAYSTREAM_VAULT_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "PAYSTREAM_ACQUIRER_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("PAYSTREAM_STREAM_PREFIX", format!("uptls{}_", free_port()))
        .env("PAYSTREAM_BOOTSTRAP_API_KEY", "sk_bootstrap_tls_0123456789");
    let up = Up::start_with(&mut cmd);
    let lines = up.wait_ready(Duration::from_secs(90));
    let ready = lines.last().unwrap();
    let api = field(ready, "api").to_owned();
    let vault = field(ready, "vault").to_owned();
    assert_eq!(api, format!("https://127.0.0.1:{api_port}"));
    assert!(vault.starts_with("https://"), "{ready}");
    let ca = data_dir.join("tls").join("ca.pem");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("--cacert {}", ca.display()))),
        "{lines:?}"
    );

    let https = paystream_shared::tls::client_builder(Some(&ca))
        .unwrap()
        .build()
        .unwrap();
    let r = https
        .get(format!("{api}/api/payment-intents"))
        .bearer_auth("sk_bootstrap_tls_0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("strict-transport-security"));
    let r = https
        .post(format!("{vault}/vault/tokens"))
        .bearer_auth("sk_bootstrap_tls_0123456789")
        .json(&serde_json::json!({"card": {"number": "4242424242424242", "expMonth": 12, "expYear": 2099, "cvc": "123"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Without the CA, nothing verifies; over plain HTTP, nothing answers.
    assert!(reqwest::Client::new()
        .get(format!("{api}/healthz"))
        .send()
        .await
        .is_err());
    let plain = api.replacen("https://", "http://", 1);
    assert!(reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_err());
    // The operator's command reaches the https vault trusting the same CA.
    let (ok, out, err) = run(paystream(&db).env("PAYSTREAM_CA_CERT", &ca).args([
        "vault",
        "rotate-kek",
        "--vault-url",
        &vault,
    ]));
    assert!(ok, "{out}{err}");

    let exit = up.stop();
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn audit_access_lists_reads_since_a_time() {
    let db = TestDb::new().await;
    let (ok, out, err) = run(paystream(&db).args(["audit", "access"]));
    assert!(ok, "{err}");
    assert!(out.trim().is_empty(), "nothing read yet: {out}");
    let actor = paystream_shared::audit::Actor::ApiKey("key_reader".into());
    paystream_shared::audit::record_read(
        &db.pool,
        "mer_1",
        &actor,
        "balance",
        "balance:mer_1",
        serde_json::json!([]),
    )
    .await
    .unwrap();
    let (ok, out, _) = run(paystream(&db).args(["audit", "access"]));
    assert!(ok);
    assert!(
        out.contains("api_key:key_reader access.read balance balance:mer_1 merchant mer_1"),
        "{out}"
    );
    let (ok, out, _) = run(paystream(&db).args(["audit", "access", "--json"]));
    assert!(ok);
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entries[0]["actor"], "api_key:key_reader");
    let (ok, out, _) =
        run(paystream(&db).args(["audit", "access", "--since", "2999-01-01T00:00:00Z"]));
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, _, err) = run(paystream(&db).args(["audit", "access", "--since", "yesterday"]));
    assert!(!ok && err.contains("RFC 3339"), "{err}");
    // The read is on the chain `audit verify` walks.
    let (ok, out, _) = run(paystream(&db).args(["audit", "verify"]));
    assert!(ok && out.contains("1 entries verified"), "{out}");
}

/// Base64 of 32 bytes of `b` (1 or 2), as the sealing-key variables take them.
fn sealing_key(b: u8) -> String {
    match b {
        1 => "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        _ => "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    }
    .to_owned()
}

#[tokio::test]
async fn rotate_sealing_reseals_names_an_unknown_key_is_a_no_op_twice_and_doctor_waits_for_it() {
    use paystream_shared::store::idempotency_keys::sealing_context;
    use paystream_shared::webhooks::secret_box::{key_id_of, SecretBox};
    let db = TestDb::new().await;
    let (ok, out, _) = run(paystream(&db).args(["keys", "create", "--merchant", "acme"]));
    assert!(ok, "{out}");
    let merchant: String = sqlx::query_scalar("SELECT id FROM merchants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (old, new) = (sealing_key(1), sealing_key(2));
    let old_box = SecretBox::new(&[1; 32]);
    let new_box = SecretBox::with_previous(&[2; 32], Some(&[1; 32]));
    let stranger_box = SecretBox::new(&[3; 32]);
    // Replay copies sealed by the old deployment, and one under a key nobody was given.
    for (key, sealer) in [
        ("k1", &old_box),
        ("k2", &old_box),
        ("k3", &old_box),
        ("lost", &stranger_box),
    ] {
        let sealed = sealer.seal(
            format!("answer {key}").as_bytes(),
            &sealing_context(&merchant, key),
        );
        sqlx::query(
            "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, fingerprint,
                                           response_status, response_body, response_sealed)
             VALUES ($1, $2, 'POST', '/api/webhooks/subscribe', decode('00', 'hex'), 201,
                     convert_to('{}', 'UTF8'), $3)",
        )
        .bind(&merchant)
        .bind(key)
        .bind(sealed)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let rotate = || {
        let mut c = paystream(&db);
        c.env("PAYSTREAM_WEBHOOK_SECRET_KEY", &new)
            .env("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS", &old)
            .args(["keys", "rotate-sealing", "--batch-size", "2"]);
        run(&mut c)
    };
    let stored = || async {
        sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT key, response_sealed FROM idempotency_keys ORDER BY key",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let rotations = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM audit_log WHERE action = 'sealing_key.rotated'
               AND object_id = $1 AND actor = 'operator:paystream-cli'",
        )
        .bind(new_box.current_id())
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };

    // The doctor sees what is left to do, as the processes would (new key, old as previous).
    let doctor_line = |out: &str| {
        out.lines()
            .find(|l| l.contains("sealed values"))
            .unwrap_or_default()
            .to_owned()
    };
    let doctor_env = [
        ("DATABASE_URL", db.url.as_str()),
        ("PAYSTREAM_WEBHOOK_SECRET_KEY", new.as_str()),
        ("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS", old.as_str()),
        (
            "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
            "acq_whsec_our_own_0123456789",
        ),
        (
            "PAYSTREAM_VAULT_KEK",
            "IB8eHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=",
        ),
        (
            "PAYSTREAM_VAULT_SERVICE_TOKEN",
            "vault_svc_our_own_0123456789",
        ),
    ];
    let (_, out) = doctor(&doctor_env);
    let line = doctor_line(&out);
    assert!(
        line.starts_with("FAIL") && line.contains("4 not under the current sealing key"),
        "{out}"
    );
    assert!(
        line.contains("4 in idempotency_keys") && line.contains("rotate-sealing"),
        "{out}"
    );

    // First run: the old key's values re-sealed; the stranger's named, left alone, exit 1.
    let (ok, out, err) = rotate();
    assert!(!ok, "{out}{err}");
    assert!(out.contains("done: 3 rows re-sealed"), "{out}");
    assert!(out.contains(&format!("{merchant}/lost")), "{out}");
    assert!(out.contains(&stranger_box.current_id()), "{out}");
    assert!(out.contains("1 values not under it remain"), "{out}");
    for (key, sealed) in stored().await {
        let expected = if key == "lost" {
            stranger_box.current_id()
        } else {
            new_box.current_id()
        };
        assert_eq!(key_id_of(&sealed), Some(expected), "{key}");
        if key != "lost" {
            // The new key alone opens it now, to the same answer.
            assert_eq!(
                SecretBox::new(&[2; 32])
                    .open(&sealed, &sealing_context(&merchant, &key))
                    .unwrap(),
                format!("answer {key}").as_bytes()
            );
        }
    }
    assert_eq!(rotations().await, 1);

    // Once the stray value is dealt with, a second run finds nothing: no byte, no audit entry.
    sqlx::query("DELETE FROM idempotency_keys WHERE key = 'lost'")
        .execute(&db.pool)
        .await
        .unwrap();
    let before = stored().await;
    let (ok, out, err) = rotate();
    assert!(ok, "{out}{err}");
    assert!(out.contains("done: 0 rows re-sealed"), "{out}");
    assert!(out.contains("no longer needed"), "{out}");
    assert_eq!(stored().await, before);
    assert_eq!(rotations().await, 1);
    let (_, out) = doctor(&doctor_env);
    assert!(doctor_line(&out).starts_with("ok"), "{out}");

    // Outside development it never falls back to the public key.
    let mut c = Command::new(env!("CARGO_BIN_EXE_paystream"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .args(["keys", "rotate-sealing"]);
    let (ok, out, err) = run(&mut c);
    assert!(!ok, "{out}");
    assert!(
        format!("{out}{err}").contains("set PAYSTREAM_WEBHOOK_SECRET_KEY"),
        "{out}{err}"
    );
}

#[test]
fn doctor_names_replicas_a_single_nats_server_cannot_hold_and_bad_nats_settings() {
    let nats = paystream_tests::nats_url();
    let (ok, out) = doctor(&[("NATS_URL", &nats), ("PAYSTREAM_STREAM_REPLICAS", "3")]);
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(" nats "))
        .unwrap_or_else(|| panic!("no nats line in {out}"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("not part of a cluster"), "{line}");
    assert!(line.contains("PAYSTREAM_STREAM_REPLICAS=1"), "{line}");

    // Two kinds of credentials at once: named before any connection is tried.
    let (ok, out) = doctor(&[
        ("NATS_URL", &nats),
        ("PAYSTREAM_NATS_TOKEN", "t0k3n"),
        ("PAYSTREAM_NATS_NKEY_SEED", "SUAEXAMPLE"),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("set only one of"), "{out}");
    assert!(!out.contains("t0k3n"), "the token is never printed: {out}");
}
