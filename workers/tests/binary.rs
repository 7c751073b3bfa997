//! The worker binaries themselves: bad configuration stops them with a message naming the
//! variable, and an unreachable broker stops them instead of leaving a silent process.

use std::process::Command;

#[test]
fn confirm_worker_refuses_invalid_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_confirm-worker"))
        .env("PAYSTREAM_RETRY_BASE_MS", "soon")
        .output()
        .expect("run confirm-worker");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYSTREAM_RETRY_BASE_MS"));
}

#[test]
fn confirm_worker_exits_when_nats_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_confirm-worker"))
        .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
        .env("PAYSTREAM_ENV", "development")
        .output()
        .expect("run confirm-worker");
    assert!(!out.status.success());
}

#[test]
fn refund_worker_refuses_invalid_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_refund-worker"))
        .env("PAYSTREAM_ACQUIRER_URL", "ftp://nowhere")
        .output()
        .expect("run refund-worker");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYSTREAM_ACQUIRER_URL"));
}

#[test]
fn confirm_worker_refuses_to_start_without_its_secrets_outside_development() {
    let out = Command::new(env!("CARGO_BIN_EXE_confirm-worker"))
        .env_clear()
        .output()
        .expect("run confirm-worker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYSTREAM_WEBHOOK_SECRET_KEY"), "{stderr}");
}
