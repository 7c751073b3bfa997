//! The `paystream-api` binary itself: it refuses bad configuration with a clear message
//! instead of starting half-configured.

use std::process::Command;

#[test]
fn refuses_invalid_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream-api"))
        .env("PAYSTREAM_API_ADDR", "not-an-address")
        .output()
        .expect("run paystream-api");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYSTREAM_API_ADDR"), "{stderr}");
}

#[test]
fn exits_when_the_database_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_paystream-api"))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/nothing"),
        )
        .env("PAYSTREAM_API_ADDR", "127.0.0.1:0")
        .output()
        .expect("run paystream-api");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL"));
}
