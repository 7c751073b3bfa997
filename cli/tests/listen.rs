//! `paystream listen`, run as a real process: it subscribes a local endpoint through the API,
//! verifies and prints the signed deliveries of a real payment, and unsubscribes on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use paystream_tests::spawn_app;

#[tokio::test]
async fn listen_prints_a_payments_events_and_unsubscribes_when_stopped() {
    let app = spawn_app().await;
    let _webhooks = app.start_webhook_worker();
    let _confirm = app.start_confirm_worker();

    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["listen", "--api", &app.address, "--key", &app.api_key])
        .env("DATABASE_URL", &app.db.url)
        .env("PAYSTREAM_ENV", "development")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paystream listen");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = next(&mut lines, "the listening line").await;
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    let subscription = first
        .split_whitespace()
        .find(|w| w.starts_with("we_"))
        .expect("the subscription id")
        .trim_end_matches(';')
        .to_owned();

    let intent = app.create_and_confirm("pm_card_visa").await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("payment_intent.succeeded"))
    {
        let line = next(&mut lines, "payment_intent.succeeded").await;
        assert!(!line.contains("rejected"), "{line}");
        seen.push(line);
    }
    let succeeded = seen
        .iter()
        .find(|l| l.contains("payment_intent.succeeded"))
        .unwrap();
    assert!(
        succeeded.contains(&intent) && succeeded.contains("succeeded 1099 usd"),
        "{succeeded}"
    );

    // A delivery it cannot verify is refused, and said so.
    let url = first.split_whitespace().nth(2).expect("the url");
    let forged = app
        .http
        .post(url)
        .header("webhook-id", "evt_forged")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("webhook-signature", "v1,AAAA")
        .body(r#"{"id":"evt_forged","type":"payment_intent.succeeded","data":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    // Events of the payment that were still on their way may be printed first.
    let mut line = next(&mut lines, "the rejection").await;
    while !line.starts_with("rejected") {
        line = next(&mut lines, "the rejection").await;
    }
    assert!(line.contains("evt_forged"), "{line}");

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let mut last = next(&mut lines, "the unsubscribe line").await;
    while !last.starts_with("subscription") {
        last = next(&mut lines, "the unsubscribe line").await;
    }
    assert_eq!(last, format!("subscription {subscription} deleted"));
    assert!(child.wait().unwrap().success());
    let subs = app.get("/api/webhooks/subscriptions").await;
    assert!(
        subs.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != subscription.as_str()),
        "{}",
        subs.text
    );
}

/// The next line `listen` printed; the test runtime keeps serving the API while it waits.
async fn next(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no line from listen while waiting for {what}"))
}

#[tokio::test]
async fn listen_trusts_paystream_ca_cert_for_an_https_api() {
    let dir = std::env::temp_dir().join(format!("paystream-listen-tls-{}", uuid::Uuid::new_v4()));
    let ca = paystream_shared::tls::local_ca::LocalCa::generate(&dir).expect("local CA");
    let files = paystream_shared::tls::TlsFiles {
        cert: ca.cert.clone(),
        key: ca.key.clone(),
    };
    let app = paystream_tests::spawn_app_with(|c| c.tls.files = Some(files)).await;
    let https = app.address.replacen("http://", "https://", 1);
    let listen = |ca_cert: Option<&std::path::Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paystream"));
        c.args(["listen", "--api", &https, "--key", &app.api_key])
            .env("PAYSTREAM_ENV", "development")
            .env_remove("PAYSTREAM_CA_CERT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = ca_cert {
            c.env("PAYSTREAM_CA_CERT", ca);
        }
        c
    };
    // Without the CA the API's certificate is not trusted, and it says it cannot reach it.
    // Run off the test's runtime thread: the API under test answers on that thread.
    let mut refused = listen(None);
    let out = tokio::task::spawn_blocking(move || refused.output().expect("run paystream listen"))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the API"), "{err}");

    // With PAYSTREAM_CA_CERT it subscribes over HTTPS.
    let mut child = listen(Some(&ca.ca_cert))
        .spawn()
        .expect("start paystream listen");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = next(&mut lines, "the listening line").await;
    assert!(first.starts_with("listening on"), "{first}");
    let subscriptions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_subscriptions WHERE deleted_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(subscriptions, 1);
    child.kill().expect("stop paystream listen");
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
