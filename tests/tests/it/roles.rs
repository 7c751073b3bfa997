//! The role table: every documented operation has a line, and each role gets exactly the
//! calls its line allows; a refused call is 403 `role_not_allowed` and audit-logged.

use std::collections::BTreeSet;

use paystream_shared::roles::{self, OPERATIONS};
use paystream_shared::store::merchants::{self, Role};
use paystream_tests::spawn_app;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn every_documented_operation_is_in_the_role_table() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json").await.body;
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    assert!(
        documented.len() >= 20,
        "the document lists the API: {documented:?}"
    );
    let tabled: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|o| (o.method.to_owned(), o.path.to_owned()))
        .collect();
    let missing: Vec<_> = documented.difference(&tabled).collect();
    assert!(
        missing.is_empty(),
        "these operations of /openapi.json have no line in OPERATIONS (shared/src/roles.rs), \
         so no role can be checked for them: {missing:?}"
    );
    let stale: Vec<_> = tabled.difference(&documented).collect();
    assert!(
        stale.is_empty(),
        "OPERATIONS lists routes the API does not have: {stale:?}"
    );
    // And the guard finds each documented operation from a concrete path.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "x_1");
        assert_eq!(
            roles::operation(method, &concrete).map(|o| o.path),
            Some(path.as_str()),
            "{method} {concrete}"
        );
    }
}

/// A sample of calls, each answering something other than 403 when the role allows it.
fn sample() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/payment-intents", None),
        (Method::POST, "/api/payment-intents", Some(json!({}))),
        (Method::POST, "/api/refunds", Some(json!({}))),
        (Method::POST, "/api/webhooks/subscribe", Some(json!({}))),
        (Method::DELETE, "/api/webhooks/subscriptions/we_none", None),
        (Method::GET, "/api/balance", None),
        (Method::GET, "/api/audit-log", None),
    ]
}

#[tokio::test]
async fn each_role_gets_what_its_line_allows() {
    let app = spawn_app().await;
    let expected: [(Role, [bool; 7]); 5] = [
        (Role::Admin, [true; 7]),
        (Role::Developer, [true; 7]),
        (Role::Support, [true, false, true, false, false, true, true]),
        (
            Role::ReadOnly,
            [true, false, false, false, false, true, true],
        ),
        (Role::Publishable, [false; 7]),
    ];
    let mut conn = app.pool.acquire().await.unwrap();
    for (role, allowed) in expected {
        let key = merchants::create_key(&mut conn, "acme", role, None)
            .await
            .unwrap();
        let secret = key.secret.expose().clone();
        for ((method, path, body), allowed) in sample().into_iter().zip(allowed) {
            let r = app
                .request(method.clone(), path, Some(&secret), None, body)
                .await;
            if allowed {
                assert_ne!(
                    r.status, 403,
                    "{role:?} may call {method} {path}: {}",
                    r.text
                );
                assert!(r.status.as_u16() < 500, "{method} {path}: {}", r.text);
            } else {
                r.assert_error(403, "role_not_allowed");
                assert!(
                    r.text.contains(role.as_str()),
                    "the error names the role: {}",
                    r.text
                );
            }
        }
        let refusals = app
            .get(&format!("/api/audit-log?objectId={}", key.key_id))
            .await;
        assert_eq!(refusals.status, 200, "{}", refusals.text);
        let entries = refusals.body["data"].as_array().unwrap().clone();
        let denied = allowed.iter().filter(|a| !**a).count();
        assert_eq!(
            entries.len(),
            denied,
            "{role:?}: one entry per refusal: {entries:?}"
        );
        for e in &entries {
            assert_eq!(e["action"], "access.refused");
            assert_eq!(e["actor"], format!("api_key:{}", key.key_id));
            assert_eq!(e["after"]["role"], role.as_str());
            assert!(e["createdAt"].is_string());
        }
        if let Some(first) = entries.last() {
            let (m, p, _) = &sample()[allowed.iter().position(|a| !a).unwrap()];
            assert_eq!(first["after"]["method"], m.as_str());
            assert_eq!(first["after"]["path"], p.trim_start_matches("/api"));
        }
    }
}

#[tokio::test]
async fn a_path_the_table_does_not_list_is_refused_to_all_but_admin() {
    let app = spawn_app().await;
    let ro = app.other_merchant("acme", Role::Developer).await;
    app.get_as(&ro, "/api/no-such-route")
        .await
        .assert_error(403, "role_not_allowed");
    let r = app.get("/api/no-such-route").await;
    assert_eq!(r.status, 404, "admin gets the router's answer: {}", r.text);
}
