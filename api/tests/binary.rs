//! The `paystream-api` binary itself: it refuses bad configuration with a clear message
//! instead of starting half-configured.

use std::process::Command;

#[test]
fn refuses_invalid_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream-api"))
        .env("PAYSTREAM_API_ADDR", "not-an-address")
        .env("PAYSTREAM_ENV", "development")
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
        .env("PAYSTREAM_ENV", "development")
        .output()
        .expect("run paystream-api");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL"));
}

/// Outside development mode the public development secrets are not accepted: with a clean
/// environment the process stops before it connects to anything, naming what to set.
#[test]
fn refuses_to_start_without_its_secrets_outside_development() {
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paystream-api"));
        cmd.env_clear().env("PAYSTREAM_API_ADDR", "127.0.0.1:0");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run paystream-api");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(&[]);
    assert!(!ok);
    assert!(stderr.contains("PAYSTREAM_WEBHOOK_SECRET_KEY"), "{stderr}");
    assert!(stderr.contains("PAYSTREAM_ENV=development"), "{stderr}");
    let (ok, stderr) = run(&[(
        "PAYSTREAM_WEBHOOK_SECRET_KEY",
        "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
    )]);
    assert!(!ok);
    assert!(
        stderr.contains("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET"),
        "{stderr}"
    );
    let (ok, stderr) = run(&[("PAYSTREAM_ENV", "production")]);
    assert!(!ok);
    assert!(stderr.contains("PAYSTREAM_WEBHOOK_SECRET_KEY"), "{stderr}");
}
