//! The access audit: every read of payment data is an `access.read` entry of the audit log,
//! with the reading key as actor, so it is append-only, hash-chained and verified with the rest.

use paystream_shared::audit;
use paystream_shared::store::merchants::{self, Role};
use serde_json::Value;

use crate::payment_methods::{app_with_vault, card, stored, VISA};

/// The `access.read` entries this actor made, newest first, as an admin of `acme` lists them.
async fn reads_by(app: &paystream_tests::TestApp, key_id: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/api/audit-log?actor=api_key:{key_id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn each_read_of_payment_data_is_one_entry_naming_its_reader() {
    let (app, pk) = app_with_vault().await;
    let pm = stored(&app, &pk, card(VISA), "cus_a").await;
    let pm_id = pm["id"].as_str().unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let support = merchants::create_key(&mut conn, "acme", Role::Support, None)
        .await
        .unwrap();
    let other = merchants::create_key(&mut conn, "acme", Role::ReadOnly, None)
        .await
        .unwrap();
    drop(conn);
    let secret = support.secret.expose().clone();
    assert!(reads_by(&app, &support.key_id).await.is_empty());

    let reads = [
        (format!("/api/payment-methods/{pm_id}"), "payment_method"),
        ("/api/payment-methods".to_owned(), "payment_method_list"),
        ("/api/balance".to_owned(), "balance"),
        (
            "/api/balance-transactions".to_owned(),
            "balance_transaction_list",
        ),
    ];
    for (n, (path, object_type)) in reads.iter().enumerate() {
        let r = app.get_as(&secret, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let entries = reads_by(&app, &support.key_id).await;
        assert_eq!(entries.len(), n + 1, "one entry per read: {entries:?}");
        let e = &entries[0];
        assert_eq!(e["action"], audit::ACCESS_READ);
        assert_eq!(e["actor"], format!("api_key:{}", support.key_id));
        assert_eq!(e["objectType"], *object_type, "{path}");
        assert!(e["createdAt"].is_string());
    }
    let entries = reads_by(&app, &support.key_id).await;
    assert_eq!(entries[3]["objectId"], pm_id);
    assert_eq!(
        entries[2]["after"]["seen"][0], pm_id,
        "a page names what it showed"
    );

    // `?actor=` shows only that actor: another key's read is its own entry.
    let r = app.get_as(other.secret.expose(), "/api/balance").await;
    assert_eq!(r.status, 200);
    assert_eq!(reads_by(&app, &support.key_id).await.len(), 4);
    assert_eq!(reads_by(&app, &other.key_id).await.len(), 1);

    // Another merchant sees none of it, even naming the actor.
    let globex = app.other_merchant("globex", Role::Admin).await;
    let r = app
        .get_as(
            &globex,
            &format!("/api/audit-log?actor=api_key:{}", support.key_id),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 0, "{}", r.text);

    // The operator's listing has them all, and `--since` in the future has none.
    let all = audit::list_access(&app.pool, None).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|e| e.action == audit::ACCESS_READ)
            .count(),
        5
    );
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(audit::list_access(&app.pool, Some(later))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn access_entries_are_append_only_and_an_edit_is_detected() {
    let (app, _pk) = app_with_vault().await;
    assert_eq!(app.get("/api/balance").await.status, 200);
    let id: String = sqlx::query_scalar("SELECT id FROM audit_log WHERE action = 'access.read'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let refused = sqlx::query("UPDATE audit_log SET actor = 'api_key:someone_else' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await;
    assert!(refused.is_err(), "the trigger refuses UPDATE");
    let refused = sqlx::query("DELETE FROM audit_log WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await;
    assert!(refused.is_err(), "the trigger refuses DELETE");
    assert_eq!(audit::verify(&app.pool).await.unwrap().first_bad, None);

    // Behind the trigger's back, someone rewrites who read the balance.
    let mut conn = app.pool.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "UPDATE audit_log SET actor = 'api_key:someone_else' WHERE action = 'access.read'",
        "SET session_replication_role = origin",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    let bad = audit::verify(&app.pool)
        .await
        .unwrap()
        .first_bad
        .expect("the edit is detected");
    assert_eq!(bad.id, id);
    assert_eq!(bad.reason, audit::EDITED);
}
