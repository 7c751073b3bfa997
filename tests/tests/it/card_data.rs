//! Only the vault ever holds card data (ARCHITECTURE.md). One run tokenizes and charges test
//! cards and a bank account through the real vault process, sends card numbers to the API
//! where they do not belong, and then searches every log line of every process (the API and
//! the workers in this process at debug level, the vault child process at debug level) and
//! every row of every table of every schema for the numbers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::json;

use paystream_tests::{spawn_app, TestApp};

use crate::vault_charges::{bank, card, confirm, stored_method};

const WAIT: Duration = Duration::from_secs(30);
const CARDS: [&str; 4] = [
    "4242424242424242",
    "5555555555554444",
    "4000000000000002",
    "4000002760003184",
];
const ACCOUNT: &str = "000123456789";

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every row of every table of every schema, as text, with its table's name.
pub(crate) async fn dump_every_table(app: &TestApp) -> Vec<(String, String)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut dumps = Vec::new();
    for (schema, table) in tables {
        let name = format!("\"{schema}\".\"{table}\"");
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {name} t"))
            .fetch_all(&app.pool)
            .await
            .unwrap();
        dumps.push((name, rows.join("\n")));
    }
    dumps
}

/// The number as digits, and as the hex a `bytea` column prints it in.
fn spellings(number: &str) -> [String; 2] {
    let hex: String = number.bytes().map(|b| format!("{b:02x}")).collect();
    [number.to_owned(), hex]
}

#[tokio::test]
async fn card_numbers_appear_in_no_log_line_and_no_table_outside_the_vaults_ciphertext() {
    let logs = LogBuffer::default();
    let sink = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || sink.clone())
            .finish(),
    )
    .expect("this test process's only subscriber");

    let app = spawn_app().await;
    let vault_log = std::env::temp_dir().join(format!("{}vault.log", app.prefix));
    let mut vault = app.start_vault_process(&vault_log).await;
    let _c = app.start_confirm_worker();
    let _r = app.start_refund_worker();
    let pk = app.publishable_key().await;

    for number in CARDS {
        let pm = stored_method(&app, &pk, card(number)).await;
        let id = confirm(&app, &pm, json!({})).await;
        let pi = app
            .wait_for_status(&id, &["succeeded", "failed", "requires_action"], WAIT)
            .await;
        if pi["status"] == "requires_action" {
            let url = pi["nextAction"]["redirectToUrl"]["url"].as_str().unwrap();
            let b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let posted = b
                .post(url)
                .form(&[("result", "succeeded")])
                .send()
                .await
                .unwrap();
            let callback = posted.headers()[LOCATION].to_str().unwrap().to_owned();
            assert_eq!(
                b.get(&callback).send().await.unwrap().status(),
                StatusCode::SEE_OTHER
            );
            app.wait_for_status(&id, &["succeeded"], WAIT).await;
        }
        assert_eq!(app.sim_charges(&id).await.len(), 1, "{number}");
    }
    let pm = stored_method(&app, &pk, bank(ACCOUNT)).await;
    let id = confirm(&app, &pm, json!({})).await;
    app.wait_for_status(&id, &["succeeded"], WAIT).await;

    // Card numbers sent to the API are refused before anything sees them.
    let visa = CARDS[0];
    let spaced = "4242 4242 4242 4242";
    for body in [
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "metadata": {"card": visa}}),
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "description": format!("paid with {spaced}")}),
        json!({"amount": 100, "currency": "usd", "customerId": visa}),
        json!({"amount": 100, "currency": "usd", "customerId": "cus_1", "paymentMethodId": "5555-5555-5555-4444"}),
    ] {
        let r = app
            .post_idem(
                "/api/payment-intents",
                &format!("k-{}", uuid_like(&body)),
                body,
            )
            .await;
        r.assert_error(400, "card_data_not_allowed");
        for n in [visa, spaced, "5555-5555-5555-4444", "4242424242424242"] {
            assert!(!r.text.contains(n), "{}", r.text);
        }
    }
    for path in [
        format!("/api/payment-intents?customerId={visa}"),
        "/api/payment-intents?customerId=4242%204242%204242%204242".to_owned(),
        format!("/api/payment-intents/{visa}"),
        format!("/api/refunds?paymentIntentId=pi_1&note={visa}"),
    ] {
        let r = app.get(&path).await;
        r.assert_error(400, "card_data_not_allowed");
        assert!(!r.text.contains(visa), "{}", r.text);
    }
    // A refused request did nothing: nothing was created for those bodies.
    let listed = app.get("/api/payment-intents?limit=100").await;
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        CARDS.len() + 1
    );

    vault.kill().unwrap();
    vault.wait().unwrap();
    let vault_text = std::fs::read_to_string(&vault_log).unwrap();
    let _ = std::fs::remove_file(&vault_log);
    assert!(
        vault_text.contains("forwarded to the acquirer"),
        "{vault_text}"
    );
    let ours = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        ours.contains("card_data_not_allowed") || ours.contains("card number"),
        "the refusals are logged, without the number"
    );
    assert!(ours.contains("DEBUG"), "debug lines were captured");
    let dumps = dump_every_table(&app).await;
    assert!(dumps.len() > 15, "{}", dumps.len());
    assert!(
        dumps.iter().any(|(_, rows)| rows.contains("\\x")),
        "the vault's sealed records are among the dumped rows"
    );
    for number in CARDS
        .iter()
        .copied()
        .chain([ACCOUNT, "4242 4242 4242 4242"])
    {
        for spelled in spellings(number) {
            assert!(
                !ours.contains(&spelled),
                "{number} in the API's or a worker's log"
            );
            assert!(
                !vault_text.contains(&spelled),
                "{number} in the vault's log"
            );
            for (table, rows) in &dumps {
                assert!(!rows.contains(&spelled), "{number} in {table}");
            }
        }
    }
}

/// A short key for a body, so each refused request has an Idempotency-Key of its own.
fn uuid_like(body: &serde_json::Value) -> usize {
    body.to_string().len()
}
