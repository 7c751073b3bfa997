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

/// Appends to one object's chain from `tasks` connections at once, `each` entries apiece; half
/// the tasks append inside a transaction that stays open a moment after the insert, the
/// others in autocommit, as the API's one-statement changes do.
async fn append_concurrently(pool: &sqlx::PgPool, object_id: &str, tasks: usize, each: usize) {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let pool = pool.clone();
        let object_id = object_id.to_owned();
        let start = start.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            start.wait().await;
            let actor = audit::Actor::Worker("stress");
            for n in 0..each {
                let entry = audit::NewEntry {
                    merchant_id: Some("m_stress"),
                    object_type: "payment_intent",
                    object_id: &object_id,
                    action: "stress.append",
                    actor: &actor,
                    before: None,
                    after: Some(json!({"task": t, "n": n})),
                };
                if t % 2 == 0 {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                    audit::append(&mut tx, entry).await.unwrap();
                    tokio::task::yield_now().await;
                    tx.commit().await.unwrap();
                } else {
                    audit::append(&mut conn, entry).await.unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_appends_to_one_object_keep_its_chain_linear() {
    let db = paystream_tests::TestDb::new().await;
    let (tasks, each): (u32, u32) = (16, 20);
    // One connection per appender, so every append really races the others.
    let pool = paystream_shared::db::connect(&db.url, tasks + 2)
        .await
        .unwrap();
    append_concurrently(&pool, "pi_contended", tasks as usize, each as usize).await;

    let report = audit::verify(&pool).await.unwrap();
    assert_eq!(report.entries, u64::from(tasks * each));
    assert_eq!(report.first_bad, None, "nobody edited anything");

    // No two entries claim the same predecessor: the chain did not fork.
    let forks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT prev_hash FROM audit_log WHERE object_id = 'pi_contended'
         GROUP BY prev_hash HAVING count(*) > 1) f",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(forks, 0);

    // The operator's command agrees.
    let out = std::process::Command::new(paystream_tests::binary("paystream"))
        .args(["audit", "verify", "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["entries"], u64::from(tasks * each));
}

/// Inserts an entry with the given `seq`, as the column default would have given it, through
/// the trigger of the migrations applied so far.
async fn append_with_seq(pool: &sqlx::PgPool, object_id: &str, seq: i64) {
    sqlx::query(
        "INSERT INTO audit_log (seq, id, merchant_id, object_type, object_id, action, actor, before, after, prev_hash, hash)
         VALUES ($1, 'aud_' || $1::text, 'm_old', 'payment_intent', $2, 'old.append', 'worker:old', NULL, '{}', '', '')",
    )
    .bind(seq)
    .bind(object_id)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn chains_written_before_the_position_migration_still_verify() {
    let db = paystream_tests::TestDb::migrated_before(11).await;
    let actor = audit::Actor::Worker("old");
    for n in 0..5 {
        let mut conn = db.pool.acquire().await.unwrap();
        audit::append(
            &mut conn,
            audit::NewEntry {
                merchant_id: Some("m_old"),
                object_type: "payment_intent",
                object_id: "pi_linear",
                action: "old.append",
                actor: &actor,
                before: None,
                after: Some(json!({"n": n})),
            },
        )
        .await
        .unwrap();
    }
    // The race as the old trigger recorded it: 2001 took its seq before 2002 but the lock
    // after it, so it chains onto 2002. Linear, though `seq` says otherwise.
    for seq in [2000, 2002, 2001] {
        append_with_seq(&db.pool, "pi_raced", seq).await;
    }
    // And a third append after such a race chained onto the highest seq: a fork (3001 and
    // 3003 both follow 3002).
    for seq in [3000, 3002, 3001, 3003, 3004] {
        append_with_seq(&db.pool, "pi_forked", seq).await;
    }

    sqlx::migrate::Migrator::run(&paystream_shared::db::MIGRATOR, &db.pool)
        .await
        .expect("0011 applies over existing chains");

    let report = audit::verify(&db.pool).await.unwrap();
    assert_eq!(report.entries, 13);
    let bad = report.first_bad.expect("the old fork is reported");
    assert_eq!(bad.object_id, "pi_forked");
    assert_eq!(bad.id, "aud_3001", "the entry forked off the line");
    assert_eq!(bad.reason, audit::FORKED);

    // New appends chain onto each chain's real tip.
    for object_id in ["pi_linear", "pi_raced", "pi_new"] {
        append_concurrently(&db.pool, object_id, 4, 3).await;
    }
    let places: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, object_seq FROM audit_log WHERE object_id = 'pi_raced' ORDER BY object_seq LIMIT 3",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        places,
        [
            ("aud_2000".to_owned(), 1),
            ("aud_2002".to_owned(), 2),
            ("aud_2001".to_owned(), 3)
        ]
    );
    let report = audit::verify(&db.pool).await.unwrap();
    assert_eq!(report.entries, 13 + 3 * 12);
    assert_eq!(
        report.first_bad.map(|b| b.object_id).as_deref(),
        Some("pi_forked")
    );
}
