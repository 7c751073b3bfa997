//! `paystream dlq`: a command the acquirer keeps failing ends in the dead letters; after the
//! fault clears, a replay makes the payment succeed with one charge, and the replay is audited.

use std::process::Command;
use std::time::Duration;

use paystream_tests::{eventually, spawn_app, TestApp};
use serde_json::Value;

fn dlq(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .env("DATABASE_URL", &app.db.url)
        .env("NATS_URL", &app.config.nats_url)
        .env("PAYSTREAM_STREAM_PREFIX", &app.prefix)
        .env("PAYSTREAM_ENV", "development")
        .arg("dlq")
        .args(args)
        .output()
        .expect("run paystream dlq");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn list(app: &TestApp) -> Vec<Value> {
    let (ok, out) = dlq(app, &["list", "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn persistent_acquirer_failure_dead_letters_and_replay_recovers_with_one_charge() {
    let app = spawn_app().await;
    app.sim_faults(serde_json::json!({"errorRate": 1.0})).await;
    let _worker = app.start_confirm_worker();
    let id = app.create_and_confirm("pm_card_visa").await;

    let letters = eventually(
        Duration::from_secs(60),
        "the command to be dead-lettered",
        || async {
            let l = list(&app);
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(letters.len(), 1);
    let dl = &letters[0];
    assert_eq!(dl["originSubject"], "cmd.payment.confirm");
    assert_eq!(dl["objectId"], id.as_str());
    assert_eq!(dl["deliveries"], 5);
    assert!(
        dl["lastError"].as_str().unwrap().contains("acquirer"),
        "{dl}"
    );
    assert_eq!(
        app.get(&format!("/api/payment-intents/{id}")).await.body["status"],
        "processing"
    );
    assert!(app.sim_charges(&id).await.is_empty());

    let dl_id = dl["id"].as_u64().unwrap().to_string();
    let (ok, table) = dlq(&app, &["list"]);
    assert!(
        ok && table.contains(&id) && table.contains("cmd.payment.confirm"),
        "{table}"
    );
    let (ok, shown) = dlq(&app, &["show", &dl_id]);
    assert!(ok && shown.contains("payment.confirm.v1"), "{shown}");
    let (ok, _) = dlq(&app, &["show", "999999"]);
    assert!(!ok);

    app.sim_faults(serde_json::json!({})).await;
    let (ok, out) = dlq(&app, &["replay", &dl_id]);
    assert!(ok, "{out}");
    app.wait_for_status(&id, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(app.sim_charges(&id).await.len(), 1);
    assert!(
        list(&app).is_empty(),
        "a replayed letter leaves the dead letters"
    );
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'dead_letter.replayed' AND object_id = $1 AND actor = 'operator:paystream-cli'")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn replay_all_and_purge() {
    let app = spawn_app().await;
    app.sim_faults(serde_json::json!({"errorRate": 1.0})).await;
    let _worker = app.start_confirm_worker();
    let a = app.create_and_confirm("pm_card_visa").await;
    let b = app.create_and_confirm("pm_card_visa").await;
    eventually(Duration::from_secs(60), "two dead letters", || async {
        (list(&app).len() == 2).then_some(())
    })
    .await;
    app.sim_faults(serde_json::json!({})).await;
    let (ok, out) = dlq(&app, &["replay", "--all", "--json"]);
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replayed"].as_array().unwrap().len(), 2);
    for id in [&a, &b] {
        app.wait_for_status(id, &["succeeded"], Duration::from_secs(30))
            .await;
        assert_eq!(app.sim_charges(id).await.len(), 1);
    }

    // Purge removes whatever is there.
    app.sim_faults(serde_json::json!({"errorRate": 1.0})).await;
    app.create_and_confirm("pm_card_visa").await;
    eventually(Duration::from_secs(60), "a dead letter", || async {
        (list(&app).len() == 1).then_some(())
    })
    .await;
    let (ok, out) = dlq(&app, &["purge"]);
    assert!(ok && out.contains("purged 1"), "{out}");
    assert!(list(&app).is_empty());
    let (ok, out) = dlq(&app, &["replay"]);
    assert!(!ok, "replay needs an id or --all: {out}");
}
