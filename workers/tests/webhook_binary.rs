//! The webhook-worker binary: bad configuration stops it with a message naming the variable,
//! and an unreachable broker stops it instead of leaving a silent process.

use std::process::Command;

#[test]
fn webhook_worker_refuses_a_bad_secret_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_webhook-worker"))
        .env("PAYSTREAM_WEBHOOK_SECRET_KEY", "too-short")
        .env("PAYSTREAM_ENV", "development")
        .output()
        .expect("run webhook-worker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYSTREAM_WEBHOOK_SECRET_KEY"), "{stderr}");
    assert!(!stderr.contains("too-short"), "{stderr}");
}

#[test]
fn webhook_worker_exits_when_nats_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_webhook-worker"))
        .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
        .env("PAYSTREAM_ENV", "development")
        .output()
        .expect("run webhook-worker");
    assert!(!out.status.success());
}
