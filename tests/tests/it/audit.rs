use paystream_shared::audit;
use paystream_shared::store::merchants::Role;
use paystream_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn every_transition_is_audited_with_actor_before_and_after() {
    let app = spawn_app().await;
    let id = &app.create_and_confirm("pm_card_visa").await;

    let log = app.get(&format!("/api/audit-log?objectId={id}")).await;
    assert_eq!(log.status, 200);
    let entries = log.body["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    // Newest first.
    assert_eq!(entries[0]["action"], "payment_intent.processing");
    assert_eq!(entries[0]["before"]["status"], "requires_confirmation");
    assert_eq!(entries[0]["after"]["status"], "processing");
    assert_eq!(entries[1]["action"], "payment_intent.created");
    assert!(entries[1]["before"].is_null());
    for e in entries {
        assert!(e["actor"].as_str().unwrap().starts_with("api_key:key_"));
        assert!(e["createdAt"].is_string());
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    }
    let page = app
        .get(&format!("/api/audit-log?objectId={id}&limit=1"))
        .await;
    assert_eq!(page.body["hasMore"], true);
    let next = app
        .get(&format!(
            "/api/audit-log?objectId={id}&limit=1&startingAfter={}",
            page.body["data"][0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next.body["data"][0]["action"], "payment_intent.created");
    assert_eq!(next.body["hasMore"], false);
}

#[tokio::test]
async fn an_unknown_audit_cursor_is_a_400() {
    let app = spawn_app().await;
    app.create_intent(json!({})).await;
    let log = app.get("/api/audit-log").await;
    let entry = log.body["data"][0]["id"].as_str().unwrap().to_owned();
    let page = app
        .get(&format!("/api/audit-log?startingAfter={entry}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["data"], json!([]));
    let r = app.get("/api/audit-log?startingAfter=aud_missing").await;
    r.assert_error(400, "resource_missing");
    assert_eq!(r.error_param(), "startingAfter");
    // Another merchant's entry is unknown too, exactly like a missing one.
    let other = app.other_merchant("globex", Role::Admin).await;
    let r = app
        .get_as(&other, &format!("/api/audit-log?startingAfter={entry}"))
        .await;
    r.assert_error(400, "resource_missing");
    assert_eq!(r.error_param(), "startingAfter");
}

#[tokio::test]
async fn the_database_refuses_update_delete_and_truncate() {
    let app = spawn_app().await;
    app.create_intent(json!({})).await;
    for sql in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn verify_detects_an_entry_edited_behind_the_triggers_back() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_and_confirm("pm_card_visa").await;
    }
    let report = audit::verify(&app.pool).await.unwrap();
    assert_eq!(report.entries, 6);
    assert_eq!(report.first_bad, None);

    // An operator with superuser rights disables triggers and rewrites history.
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    let victim: (i64, String) =
        sqlx::query_as("SELECT seq, id FROM audit_log ORDER BY seq LIMIT 1 OFFSET 3")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    sqlx::query("UPDATE audit_log SET after = jsonb_set(after, '{amount}', '1') WHERE seq = $1")
        .bind(victim.0)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let report = audit::verify(&app.pool).await.unwrap();
    let bad = report.first_bad.expect("the edit is detected");
    assert_eq!(bad.id, victim.1);
    assert_eq!(bad.reason, "content does not match its hash");
}

#[tokio::test]
async fn verify_detects_a_deleted_link() {
    let app = spawn_app().await;
    let id = &app.create_and_confirm("pm_card_visa").await;
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "DELETE FROM audit_log WHERE seq = (SELECT min(seq) FROM audit_log WHERE object_id = $1)",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let bad = audit::verify(&app.pool)
        .await
        .unwrap()
        .first_bad
        .expect("detected");
    assert_eq!(bad.reason, "prev_hash does not match the entry before it");
}
