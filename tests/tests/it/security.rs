//! Transport security and key rolling (README "TLS", docs/pci-scope.md): HTTPS only with a
//! certificate, TLS 1.2 as the floor, certificates reloaded on SIGHUP without dropping a
//! request in flight, `tls_required` behind trusted proxies, and rolled keys that expire.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};

use paystream_shared::audit::Actor;
use paystream_shared::store::merchants;
use paystream_shared::tls::local_ca::LocalCa;
use paystream_shared::tls::{TlsFiles, HSTS};
use paystream_tests::{eventually, spawn_app_with, TestApp};

/// An app serving HTTPS with a fresh local CA; the CA's folder lives as long as the guard.
async fn tls_app() -> (TestApp, LocalCa, TempDir) {
    let dir = TempDir::new();
    let ca = LocalCa::generate(&dir.0.join("served")).expect("local CA");
    let files = TlsFiles {
        cert: ca.cert.clone(),
        key: ca.key.clone(),
    };
    let app = spawn_app_with(|c| c.tls.files = Some(files)).await;
    (app, ca, dir)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("paystream-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().unwrap().parse().unwrap()
}

fn https_client(ca: &Path) -> reqwest::Client {
    paystream_shared::tls::client_builder(Some(ca))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A TLS client of our own, trusting each CA given, so a test can hold a connection open and
/// look at the certificate the server offered.
fn connector(cas: &[&Path]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn handshake(connector: &tokio_rustls::TlsConnector, port: u16) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

fn served_cert(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_cert(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[tokio::test]
async fn https_only_with_hsts() {
    let (app, ca, _dir) = tls_app().await;
    let https = format!("https://127.0.0.1:{}", port(&app));
    let client = https_client(&ca.ca_cert);
    let resp = client
        .get(format!("{https}/api/payment-intents"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("an HTTPS answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["strict-transport-security"], HSTS);
    // Errors carry it too: every answer over TLS does.
    let resp = client
        .get(format!("{https}/api/payment-intents"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["strict-transport-security"], HSTS);

    // A plaintext request to the TLS port gets no HTTP answer at all.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port(&app)))
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Nor does an HTTP client.
    assert!(app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .is_err());
}

/// `openssl s_client` pinned to one protocol version; `true` when the handshake completed.
fn openssl_handshake(port: u16, ca: &Path, version: &str) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            // OpenSSL 3 will not even offer TLS 1.1 at its default security level; level 0 makes
            // it try, so the refusal is the server's.
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-CAfile",
            &ca.display().to_string(),
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.contains("CONNECTION ESTABLISHED"), text)
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let (app, ca, _dir) = tls_app().await;
    let port = port(&app);
    let (ok, text) = tokio::task::spawn_blocking({
        let ca = ca.ca_cert.clone();
        move || openssl_handshake(port, &ca, "-tls1_1")
    })
    .await
    .unwrap();
    assert!(!ok, "a TLS 1.1 handshake completed: {text}");
    // The server's refusal (an alert), not the client giving up before it sent anything.
    assert!(
        text.contains("alert"),
        "the server should refuse it: {text}"
    );
    let (ok, text) = tokio::task::spawn_blocking({
        let ca = ca.ca_cert.clone();
        move || openssl_handshake(port, &ca, "-tls1_2")
    })
    .await
    .unwrap();
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 must work: {text}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_a_request_in_flight() {
    let (app, first, dir) = tls_app().await;
    let port = port(&app);
    let second = LocalCa::generate(&dir.0.join("next")).unwrap();
    let connector = connector(&[&first.ca_cert, &second.ca_cert]);

    // A request in flight: headers and half of its body sent over the first certificate.
    let mut in_flight = handshake(&connector, port).await.unwrap();
    assert_eq!(served_cert(&in_flight), pem_cert(&first.cert));
    let body = br#"{"amount": 1000, "currency": "usd", "customerId": "cus_1"}"#;
    let head = format!(
        "POST /api/payment-intents HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.api_key,
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..10]).await.unwrap();
    in_flight.flush().await.unwrap();

    // Renew the files in place, then tell the process.
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually(
        Duration::from_secs(20),
        "a handshake with the new certificate",
        || {
            let connector = connector.clone();
            let expected = pem_cert(&second.cert);
            async move {
                let fresh = handshake(&connector, port).await.ok()?;
                (served_cert(&fresh) == expected).then_some(())
            }
        },
    )
    .await;

    // The old connection still works: the rest of the body gets the intent created.
    in_flight.write_all(&body[10..]).await.unwrap();
    in_flight.flush().await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), in_flight.read(&mut answer))
        .await
        .expect("an answer on the old connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("strict-transport-security"));
}

#[tokio::test]
async fn behind_trusted_proxies_only_forwarded_https_is_served() {
    let app =
        spawn_app_with(|c| c.tls.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let url = format!("{}/api/payment-intents", app.address);
    let plain = app
        .http
        .get(&url)
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tls_required");
    let proxied = app
        .http
        .get(&url)
        .bearer_auth(&app.api_key)
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), StatusCode::OK);
    assert_eq!(proxied.headers()["strict-transport-security"], HSTS);
    // The proxy's word counts only from a proxy.
    let elsewhere =
        spawn_app_with(|c| c.tls.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let spoofed = elsewhere
        .http
        .get(format!("{}/api/payment-intents", elsewhere.address))
        .bearer_auth(&elsewhere.api_key)
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_plain_listener_off_loopback_refuses_to_start() {
    let app = paystream_tests::spawn_app().await;
    let mut config = (*app.config).clone();
    config.tls = Default::default();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let err = paystream_api::serve(config, listener, app.shutdown.child_token())
        .await
        .expect_err("plain HTTP on every interface");
    let message = err.to_string();
    for var in [
        "PAYSTREAM_TLS_CERT",
        "PAYSTREAM_TLS_KEY",
        "PAYSTREAM_TRUSTED_PROXIES",
    ] {
        assert!(message.contains(var), "{message}");
    }
}

#[tokio::test]
async fn a_rolled_key_works_until_its_expiry_then_401() {
    let app = paystream_tests::spawn_app().await;
    let old = merchants::authenticate(&app.pool, &app.api_key)
        .await
        .unwrap()
        .unwrap();
    let operator = Actor::Operator("test".into());
    let mut tx = app.pool.begin().await.unwrap();
    let rolled = merchants::roll_key(&mut tx, &old.key_id, Duration::from_secs(3600), &operator)
        .await
        .unwrap()
        .expect("an active key rolls");
    tx.commit().await.unwrap();
    let new_secret = rolled.new.secret.expose().clone();
    assert_ne!(new_secret, app.api_key);
    assert_eq!(
        (rolled.new.role, &rolled.new.merchant_id),
        (old.role, &old.merchant_id)
    );
    assert!(rolled.old_expires_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    // Both work for now.
    assert_eq!(
        app.get_as(&app.api_key, "/api/payment-intents")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get_as(&new_secret, "/api/payment-intents").await.status,
        StatusCode::OK
    );
    // The roll is audited, by ids only.
    let (action, after): (String, serde_json::Value) = sqlx::query_as(
        "SELECT action, after FROM audit_log WHERE object_id = $1 AND object_type = 'api_key'",
    )
    .bind(&old.key_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(action, "api_key.rolled");
    assert_eq!(after["rolledTo"], rolled.new.key_id.as_str());
    assert!(!after.to_string().contains(&new_secret));

    // Rolling again with a short expiry shortens it: the old key then stops, with 401.
    let mut tx = app.pool.begin().await.unwrap();
    merchants::roll_key(&mut tx, &old.key_id, Duration::from_secs(1), &operator)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the rolled key to expire",
        || async {
            let r = app.get_as(&app.api_key, "/api/payment-intents").await;
            (r.status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
    assert_eq!(
        app.get_as(&new_secret, "/api/payment-intents").await.status,
        StatusCode::OK
    );
    // An expired key cannot be rolled again.
    let mut tx = app.pool.begin().await.unwrap();
    assert!(
        merchants::roll_key(&mut tx, &old.key_id, Duration::from_secs(60), &operator)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_vault_refuses_a_plain_listener_off_loopback_before_touching_the_database() {
    let config = paystream_vault::config::VaultConfig::from_lookup(|k| match k {
        "PAYSTREAM_ENV" => Some("development".to_owned()),
        // Nothing answers here: the refusal must come first.
        "DATABASE_URL" => Some("postgres://nobody@127.0.0.1:1/none".to_owned()),
        _ => None,
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let err = paystream_vault::run(listener, config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("plain HTTP on every interface");
    let message = err.to_string();
    assert!(
        message.contains("PAYSTREAM_VAULT_ADDR") && message.contains("PAYSTREAM_TLS_CERT"),
        "{message}"
    );
}

#[tokio::test]
async fn the_vaults_https_listener_refuses_tls_1_1_and_accepts_1_2() {
    let app = paystream_tests::spawn_app().await;
    let dir = TempDir::new();
    let ca = LocalCa::generate(&dir.0.join("vault")).expect("local CA");
    let (db_url, cert, key) = (
        app.db.url.clone(),
        ca.cert.display().to_string(),
        ca.key.display().to_string(),
    );
    let config = paystream_vault::config::VaultConfig::from_lookup(move |k| match k {
        "DATABASE_URL" => Some(db_url.clone()),
        "PAYSTREAM_ENV" => Some("development".to_owned()),
        "PAYSTREAM_DB_POOL_SIZE" => Some("2".to_owned()),
        "PAYSTREAM_TLS_CERT" => Some(cert.clone()),
        "PAYSTREAM_TLS_KEY" => Some(key.clone()),
        _ => None,
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(paystream_vault::run(
        listener,
        config,
        app.shutdown.child_token(),
    ));
    let client = https_client(&ca.ca_cert);
    let ready = format!("https://127.0.0.1:{port}/readyz");
    eventually(Duration::from_secs(30), "the vault over HTTPS", || async {
        client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    })
    .await;
    let (ok, text) = tokio::task::spawn_blocking({
        let ca = ca.ca_cert.clone();
        move || openssl_handshake(port, &ca, "-tls1_1")
    })
    .await
    .unwrap();
    assert!(!ok, "the vault completed a TLS 1.1 handshake: {text}");
    assert!(text.contains("alert"), "the vault should refuse it: {text}");
    let (ok, text) = tokio::task::spawn_blocking({
        let ca = ca.ca_cert.clone();
        move || openssl_handshake(port, &ca, "-tls1_2")
    })
    .await
    .unwrap();
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 must work: {text}");
}

#[tokio::test]
async fn a_client_that_connects_and_never_says_hello_is_dropped() {
    let (app, ca, _dir) = tls_app().await;
    let port = port(&app);
    // Connects and sends nothing: no ClientHello, ever.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server closes it (end of stream or a reset) once the handshake timeout passes; the
    // bound here only keeps a broken server from hanging the test, it times nothing.
    let closed = tokio::time::timeout(
        paystream_shared::tls::HANDSHAKE_TIMEOUT * 6,
        silent.read_to_end(&mut buf),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a silent client still holds its connection after {:?}",
        paystream_shared::tls::HANDSHAKE_TIMEOUT * 6
    );
    assert!(
        buf.is_empty(),
        "nothing is sent to a client that said nothing"
    );
    // And the listener still serves everyone else.
    let resp = https_client(&ca.ca_cert)
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}
