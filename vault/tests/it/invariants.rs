//! The vault's invariants: no number in clear in any table or log line, the audit log is
//! append-only, and no other crate's code touches the vault's tables.

use std::io::Read;
use std::process::Command;

use serde_json::json;

use crate::{b64, bank, card, dump_schema, encodings, harness, KEK_A, SERVICE_TOKEN};

const NUMBERS: &[&str] = &[
    "4242424242424242",
    "5555555555554444",
    "4000000000000002",
    "4000002760003184",
];
const ACCOUNT: &str = "000123456789";

#[tokio::test]
async fn no_table_of_either_schema_holds_a_number_in_clear() {
    let h = harness().await;
    for (i, n) in NUMBERS.iter().enumerate() {
        let vault_ref = h.stored_card(n).await;
        h.forward_authorize(&vault_ref, &format!("pi_clear_{i}"))
            .await;
        // And once more under an Idempotency-Key, so the stored replay is in the dump too.
        let r = h
            .post_raw(
                "/vault/tokens",
                Some(&h.key),
                Some(&format!("k{i}")),
                card(n).to_string(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let tok = h.tokenize(bank(ACCOUNT)).await;
    let stored = h
        .consume(tok.body["id"].as_str().unwrap(), &h.merchant_id)
        .await;
    h.forward_authorize(stored.body["vaultRef"].as_str().unwrap(), "pi_clear_bank")
        .await;

    let mut dumps = dump_schema(&h.db.pool, "vault").await;
    let tables: Vec<&str> = dumps.iter().map(|(t, _)| t.as_str()).collect();
    for t in [
        "vault.records",
        "vault.data_keys",
        "vault.tokens",
        "vault.audit_log",
        "vault.idempotency_keys",
    ] {
        assert!(tables.contains(&t), "{tables:?}");
    }
    let records = &dumps.iter().find(|(t, _)| t == "vault.records").unwrap().1;
    assert!(
        records.lines().count() > NUMBERS.len() * 2,
        "the dump has the rows"
    );
    dumps.extend(dump_schema(&h.db.pool, "public").await);
    assert!(dumps.iter().any(|(t, _)| t == "public.api_keys"));
    for (table, text) in &dumps {
        for n in NUMBERS.iter().chain([&ACCOUNT]) {
            for e in encodings(n) {
                assert!(!text.contains(&e), "{table} holds {n} as {e}");
            }
        }
        assert!(!text.contains("cvc"), "{table} mentions a CVC");
    }
}

#[tokio::test]
async fn the_audit_log_is_append_only() {
    let h = harness().await;
    let tok = h.card_token("4242424242424242").await;
    let id = tok["id"].as_str().unwrap();
    h.consume(id, &h.merchant_id).await;
    let entries = paystream_vault::store::audit::for_object(&h.db.pool, id)
        .await
        .unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.created", "token.consumed"]);
    assert!(
        entries[0].actor.starts_with("api_key:key_"),
        "{:?}",
        entries[0]
    );
    assert_eq!(entries[1].actor, "service");
    for statement in [
        "UPDATE vault.audit_log SET actor = 'someone else'",
        "DELETE FROM vault.audit_log",
        "TRUNCATE vault.audit_log",
    ] {
        let err = sqlx::query(statement)
            .execute(&h.db.pool)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
}

/// `target/<profile>/vault`, which cargo builds for this package's integration tests.
fn vault_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_vault"))
}

#[tokio::test]
async fn the_vault_process_never_writes_a_number_to_its_log() {
    let h = harness().await;
    let port = crate::free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Everything the vault and its libraries would say, request tracing included.
    let mut child = crate::spawn_vault_binary(&h, port, "debug");
    crate::wait_healthy(&url).await;
    let http = reqwest::Client::new();
    let post = |path: String, bearer: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(path)
                .bearer_auth(bearer)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let mut charged = 0;
    for (i, n) in NUMBERS.iter().enumerate() {
        let (status, tok) = post(format!("{url}/vault/tokens"), h.key.clone(), card(n)).await;
        assert_eq!(status, 201, "{tok}");
        let (status, stored) = post(
            format!(
                "{url}/vault/internal/tokens/{}/consume",
                tok["id"].as_str().unwrap()
            ),
            SERVICE_TOKEN.into(),
            json!({"merchantId": h.merchant_id}),
        )
        .await;
        assert_eq!(status, 200, "{stored}");
        let (status, _) = post(
            format!("{url}/vault/internal/forward"),
            SERVICE_TOKEN.into(),
            json!({"merchantId": h.merchant_id, "vaultRef": stored["vaultRef"], "path": "/v1/payments",
                   "idempotencyKey": format!("pi_log_{i}:authorize"),
                   "body": {"reference": format!("pi_log_{i}"), "amount": 500, "currency": "usd", "capture": true}}),
        )
        .await;
        charged += usize::from(status < 500);
        // A mistaken number in the wrong place is refused without being echoed or logged.
        let (status, err) = post(
            format!("{url}/vault/tokens"),
            h.key.clone(),
            json!({"card": {"number": n, "expMonth": 1, "expYear": 2001, "cvc": "123"}, "note": n}),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert!(!err.to_string().contains(n), "{err}");
    }
    assert_eq!(charged, NUMBERS.len());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut stderr = String::new();
    let mut stdout = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let _ = child.wait();
    let log = format!("{stdout}{stderr}");
    assert!(
        log.contains("token created"),
        "the vault logged its work: {log}"
    );
    assert!(log.contains("forwarded to the acquirer"), "{log}");
    for n in NUMBERS {
        assert!(!log.contains(n), "the log holds {n}");
    }
    // Not even scrubbed: the vault never tried to log a number at all.
    assert!(
        !log.contains("REDACTED"),
        "something tried to log a number: {log}"
    );
}

#[test]
fn the_vault_refuses_to_start_without_a_kek_outside_development() {
    let out = Command::new(vault_binary())
        .env_clear()
        .env("PAYSTREAM_VAULT_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYSTREAM_VAULT_KEK"), "{stderr}");
    let out = Command::new(vault_binary())
        .env_clear()
        .env("PAYSTREAM_VAULT_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_VAULT_KEK", b64(&KEK_A))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYSTREAM_VAULT_SERVICE_TOKEN"), "{stderr}");
}

/// The vault's tables are its own: no other crate's source names them or their schema. (The
/// vault reads the main schema's `api_keys`, through `store::merchants::authenticate`; nothing
/// reads the vault's.)
#[test]
fn no_other_crate_touches_the_vault_schema() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut offenders = Vec::new();
    let mut stack = vec![root.clone()];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | "vault" | ".git" | "node_modules" | ".paystream"
                ) {
                    stack.push(path);
                }
                continue;
            }
            if !(name.ends_with(".rs") || name.ends_with(".sql")) {
                continue;
            }
            scanned += 1;
            let text = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .to_lowercase();
            for needle in [
                "vault.records",
                "vault.data_keys",
                "vault.tokens",
                "vault.audit_log",
                "vault.idempotency_keys",
                "schema vault",
                "search_path=vault",
                "search_path = vault",
            ] {
                if text.contains(needle) {
                    offenders.push(format!("{}: {needle}", path.display()));
                }
            }
        }
    }
    assert!(scanned > 50, "the workspace was scanned ({scanned} files)");
    assert!(
        offenders.is_empty(),
        "outside the vault crate: {offenders:?}"
    );
}
