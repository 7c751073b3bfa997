//! Payment methods from vault tokens: the real vault (in process, over HTTP, on this test's
//! database), the real API and PostgreSQL. The API never sees a number; these tests check
//! that it keeps none either.

use reqwest::Method;
use serde_json::{json, Value};

use paystream_shared::store::merchants::Role;
use paystream_tests::{spawn_app, spawn_app_with, Reply, TestApp};

pub(crate) const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const ACCOUNT: &str = "000123456789";

pub(crate) fn card(number: &str) -> Value {
    json!({"card": {"number": number, "expMonth": 12, "expYear": 2034, "cvc": "123"}})
}

fn bank(account: &str) -> Value {
    json!({"bankAccount": {
        "country": "US",
        "routingNumber": "110000000",
        "accountNumber": account,
        "accountHolderName": "Jane Doe",
        "accountHolderType": "individual",
    }})
}

/// An app with its vault running, and a publishable key of its merchant.
pub(crate) async fn app_with_vault() -> (TestApp, String) {
    let app = spawn_app().await;
    app.start_vault().await;
    let pk = app.publishable_key().await;
    (app, pk)
}

async fn token(app: &TestApp, pk: &str, instrument: Value) -> String {
    let r = app.tokenize(pk, instrument).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["id"].as_str().expect("token id").to_owned()
}

async fn create_pm(app: &TestApp, kind: &str, token: &str, customer: &str) -> Reply {
    app.post(
        "/api/payment-methods",
        json!({"type": kind, "token": token, "customerId": customer}),
    )
    .await
}

/// Tokenizes `instrument` and stores it for `customer`; the payment method.
pub(crate) async fn stored(app: &TestApp, pk: &str, instrument: Value, customer: &str) -> Value {
    let kind = if instrument.get("card").is_some() {
        "card"
    } else {
        "bank_account"
    };
    let tok = token(app, pk, instrument).await;
    let r = create_pm(app, kind, &tok, customer).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body
}

#[tokio::test]
async fn a_token_becomes_a_payment_method_that_can_be_read_listed_and_detached() {
    let (app, pk) = app_with_vault().await;
    let tok = token(&app, &pk, card(VISA)).await;
    let r = create_pm(&app, "card", &tok, "cus_pm").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pm = r.body.clone();
    let id = pm["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pm_"), "{id}");
    assert_eq!(pm["type"], "card");
    assert_eq!(pm["customerId"], "cus_pm");
    assert_eq!(pm["card"]["brand"], "visa");
    assert_eq!(pm["card"]["last4"], "4242");
    assert_eq!(pm["card"]["expMonth"], 12);
    assert_eq!(pm["card"]["expYear"], 2034);
    assert!(pm["card"]["fingerprint"]
        .as_str()
        .is_some_and(|f| !f.is_empty()));
    assert!(pm["card"]["funding"].is_string());
    assert!(pm["bankAccount"].is_null());
    assert!(pm["createdAt"].is_string());
    assert!(
        !r.text.contains(VISA) && !r.text.contains("vaultRef"),
        "{}",
        r.text
    );

    let got = app.get(&format!("/api/payment-methods/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body, pm);

    let second = stored(&app, &pk, card(MASTERCARD), "cus_pm").await;
    let bank_pm = stored(&app, &pk, bank(ACCOUNT), "cus_other").await;
    assert_eq!(bank_pm["type"], "bank_account");
    assert_eq!(bank_pm["bankAccount"]["last4"], "6789");
    assert_eq!(bank_pm["bankAccount"]["routingNumber"], "110000000");
    assert_eq!(bank_pm["bankAccount"]["country"], "US");
    assert_eq!(bank_pm["bankAccount"]["accountHolderType"], "individual");
    assert!(bank_pm["bankAccount"]["fingerprint"].is_string());
    assert!(bank_pm["card"].is_null());

    // One customer's methods, newest first, paged.
    let list = app.get("/api/payment-methods?customerId=cus_pm").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let ids: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second["id"].as_str().unwrap(), id.as_str()]);
    assert_eq!(list.body["hasMore"], false);
    let page = app
        .get("/api/payment-methods?customerId=cus_pm&limit=1")
        .await;
    assert_eq!(page.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["hasMore"], true);
    let next = app
        .get(&format!(
            "/api/payment-methods?customerId=cus_pm&limit=1&startingAfter={}",
            second["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next.body["data"][0]["id"], id.as_str());
    assert_eq!(next.body["hasMore"], false);
    app.get("/api/payment-methods?startingAfter=pm_nope")
        .await
        .assert_error(400, "resource_missing");

    // Detach: no customer any more, out of the customer's list, and once only.
    let r = app
        .post(&format!("/api/payment-methods/{id}/detach"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["customerId"].is_null(), "{}", r.text);
    assert!(r.body["detachedAt"].is_string(), "{}", r.text);
    assert_eq!(r.body["card"], pm["card"]);
    app.post(&format!("/api/payment-methods/{id}/detach"), json!({}))
        .await
        .assert_error(400, "payment_method_detached");
    let list = app.get("/api/payment-methods?customerId=cus_pm").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    let got = app.get(&format!("/api/payment-methods/{id}")).await;
    assert!(got.body["customerId"].is_null());

    // Create and detach are in the audit log, with the key that did them, and so is each
    // read of the method, in its place on the method's chain.
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM audit_log WHERE object_id = $1 ORDER BY created_at, id",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "payment_method.created",
            "access.read",
            "payment_method.detached",
            "access.read"
        ]
    );
    assert!(actions
        .iter()
        .all(|(_, actor)| actor.starts_with("api_key:")));
}

#[tokio::test]
async fn used_expired_unknown_and_other_merchants_tokens_are_token_invalid() {
    let (app, pk) = app_with_vault().await;
    let tok = token(&app, &pk, card(VISA)).await;
    assert_eq!(create_pm(&app, "card", &tok, "cus_1").await.status, 201);
    // Used.
    create_pm(&app, "card", &tok, "cus_1")
        .await
        .assert_error(400, "token_invalid");

    // Another merchant's token.
    let other_pk = app.other_merchant("globex", Role::Publishable).await;
    let theirs = token(&app, &other_pk, card(VISA)).await;
    let r = create_pm(&app, "card", &theirs, "cus_1").await;
    r.assert_error(400, "token_invalid");
    assert_eq!(r.error_param(), "token");

    // Expired (the vault's clock says so).
    let expiring = token(&app, &pk, card(VISA)).await;
    let expired = paystream_vault::store::tokens::expire_now(&app.pool, &expiring)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    create_pm(&app, "card", &expiring, "cus_1")
        .await
        .assert_error(400, "token_invalid");

    // Unknown, and not a token at all (nor a path at the vault).
    for bad in ["tok_doesnotexist", "tok_../../internal/forward"] {
        let r = create_pm(&app, "card", bad, "cus_1").await;
        r.assert_error(400, "token_invalid");
    }
    // A card number instead of a token never gets past the API's front door.
    let r = create_pm(&app, "card", VISA, "cus_1").await;
    r.assert_error(400, "card_data_not_allowed");
    assert_eq!(r.error_param(), "token");
    assert!(!r.text.contains(VISA), "{}", r.text);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_methods")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_type_that_does_not_match_the_token_is_refused_and_leaves_it_unused() {
    let (app, pk) = app_with_vault().await;
    let tok = token(&app, &pk, bank(ACCOUNT)).await;
    let r = create_pm(&app, "card", &tok, "cus_1").await;
    r.assert_error(400, "parameter_invalid");
    assert_eq!(r.error_param(), "type");
    // The token was not spent: the right type still works.
    let r = create_pm(&app, "bank_account", &tok, "cus_1").await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A type outside the enum is the caller's mistake too.
    let tok = token(&app, &pk, card(VISA)).await;
    let r = create_pm(&app, "paypal", &tok, "cus_1").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(create_pm(&app, "card", &tok, "cus_1").await.status, 201);
}

#[tokio::test]
async fn the_idempotency_key_replays_the_created_method() {
    let (app, pk) = app_with_vault().await;
    let tok = token(&app, &pk, card(VISA)).await;
    let body = json!({"type": "card", "token": tok, "customerId": "cus_1"});
    let first = app
        .post_idem("/api/payment-methods", "pm-once", body.clone())
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = app.post_idem("/api/payment-methods", "pm-once", body).await;
    // A replayed success answers 200 with the first body; the token is not consumed again.
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body, first.body);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_methods")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn an_unreachable_vault_is_a_503_not_a_panic() {
    // Port 1 on loopback refuses connections.
    let app = spawn_app_with(|c| c.vault_url = "http://127.0.0.1:1".to_owned()).await;
    let r = create_pm(&app, "card", "tok_abc123", "cus_1").await;
    r.assert_error(503, "service_unavailable");
}

#[tokio::test]
async fn publishable_keys_cannot_use_payment_methods() {
    let (app, pk) = app_with_vault().await;
    let tok = token(&app, &pk, card(VISA)).await;
    let r = app
        .request(
            Method::POST,
            "/api/payment-methods",
            Some(&pk),
            None,
            Some(json!({"type": "card", "token": tok, "customerId": "cus_1"})),
        )
        .await;
    r.assert_error(403, "role_not_allowed");
    app.get_as(&pk, "/api/payment-methods")
        .await
        .assert_error(403, "role_not_allowed");
    // The refused request did not spend the token.
    assert_eq!(create_pm(&app, "card", &tok, "cus_1").await.status, 201);
}

#[tokio::test]
async fn methods_are_per_merchant_and_fingerprints_follow_the_card() {
    let (app, pk) = app_with_vault().await;
    let a = stored(&app, &pk, card(VISA), "cus_1").await;
    let b = stored(&app, &pk, card(VISA), "cus_2").await;
    let c = stored(&app, &pk, card(MASTERCARD), "cus_1").await;
    assert_ne!(a["id"], b["id"]);
    assert_eq!(a["card"]["fingerprint"], b["card"]["fingerprint"]);
    assert_ne!(a["card"]["fingerprint"], c["card"]["fingerprint"]);

    let other_key = app.other_merchant("globex", Role::Admin).await;
    let other_pk = app.other_merchant("globex", Role::Publishable).await;
    let id = a["id"].as_str().unwrap();
    app.get_as(&other_key, &format!("/api/payment-methods/{id}"))
        .await
        .assert_error(404, "resource_missing");
    let r = app
        .request(
            Method::POST,
            &format!("/api/payment-methods/{id}/detach"),
            Some(&other_key),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let theirs = app
        .request(
            Method::GET,
            "/api/payment-methods",
            Some(&other_key),
            None,
            None,
        )
        .await;
    assert_eq!(theirs.body["data"].as_array().unwrap().len(), 0);
    // The same card at another merchant has another fingerprint.
    let tok = token(&app, &other_pk, card(VISA)).await;
    let r = app
        .request(
            Method::POST,
            "/api/payment-methods",
            Some(&other_key),
            None,
            Some(json!({"type": "card", "token": tok, "customerId": "cus_1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_ne!(r.body["card"]["fingerprint"], a["card"]["fingerprint"]);
}

#[tokio::test]
async fn intents_accept_stored_methods_of_their_merchant_only() {
    let (app, pk) = app_with_vault().await;
    let pm = stored(&app, &pk, card(VISA), "cus_1").await;
    let pm_id = pm["id"].as_str().unwrap();
    let pi = app.create_intent(json!({"paymentMethodId": pm_id})).await;
    assert_eq!(pi["paymentMethodId"], pm_id);
    assert_eq!(pi["status"], "requires_confirmation");
    let pi = app
        .create_intent(json!({"paymentMethodId": pm_id, "confirm": true,
                              "returnUrl": "https://shop.example/back"}))
        .await;
    assert_eq!(pi["status"], "processing");
    let later = app.create_intent(json!({})).await;
    let r = app
        .post(
            &format!(
                "/api/payment-intents/{}/confirm",
                later["id"].as_str().unwrap()
            ),
            json!({"paymentMethodId": pm_id, "returnUrl": "https://shop.example/back"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    // Unknown, and another merchant's: resource_missing on paymentMethodId.
    let other_key = app.other_merchant("globex", Role::Admin).await;
    let other_pk = app.other_merchant("globex", Role::Publishable).await;
    let tok = token(&app, &other_pk, card(VISA)).await;
    let theirs = app
        .request(
            Method::POST,
            "/api/payment-methods",
            Some(&other_key),
            None,
            Some(json!({"type": "card", "token": tok, "customerId": "cus_1"})),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    for bad in [theirs.body["id"].as_str().unwrap(), "pm_unknown123"] {
        let body = json!({"amount": 500, "currency": "usd", "customerId": "cus_1", "paymentMethodId": bad});
        let r = app.post("/api/payment-intents", body).await;
        r.assert_error(400, "resource_missing");
        assert_eq!(r.error_param(), "paymentMethodId");
        let fresh = app.create_intent(json!({})).await;
        let r = app
            .post(
                &format!(
                    "/api/payment-intents/{}/confirm",
                    fresh["id"].as_str().unwrap()
                ),
                json!({"paymentMethodId": bad}),
            )
            .await;
        r.assert_error(400, "resource_missing");
        assert_eq!(r.error_param(), "paymentMethodId");
    }

    // Detached: refused at create and at confirm, also when the intent already names it.
    let waiting = app.create_intent(json!({"paymentMethodId": pm_id})).await;
    let r = app
        .post(&format!("/api/payment-methods/{pm_id}/detach"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body =
        json!({"amount": 500, "currency": "usd", "customerId": "cus_1", "paymentMethodId": pm_id});
    app.post("/api/payment-intents", body)
        .await
        .assert_error(400, "payment_method_detached");
    let r = app
        .post(
            &format!(
                "/api/payment-intents/{}/confirm",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    r.assert_error(400, "payment_method_detached");
    assert_eq!(r.error_param(), "paymentMethodId");
}

#[tokio::test]
async fn bank_accounts_cannot_use_manual_capture() {
    let (app, pk) = app_with_vault().await;
    let pm = stored(&app, &pk, bank(ACCOUNT), "cus_1").await;
    let pm_id = pm["id"].as_str().unwrap();
    for method in [pm_id, "pm_bank_account"] {
        let body = json!({"amount": 500, "currency": "usd", "customerId": "cus_1",
            "paymentMethodId": method, "captureMethod": "manual"});
        let r = app.post("/api/payment-intents", body).await;
        r.assert_error(400, "parameter_invalid");
        assert_eq!(r.error_param(), "captureMethod");
        let manual = app.create_intent(json!({"captureMethod": "manual"})).await;
        let r = app
            .post(
                &format!(
                    "/api/payment-intents/{}/confirm",
                    manual["id"].as_str().unwrap()
                ),
                json!({"paymentMethodId": method}),
            )
            .await;
        r.assert_error(400, "parameter_invalid");
        assert_eq!(r.error_param(), "captureMethod");
    }
    // Automatic capture is fine.
    let pi = app.create_intent(json!({"paymentMethodId": pm_id})).await;
    assert_eq!(pi["status"], "requires_confirmation");
}

/// Every table of the main schema, each row as text.
async fn dump_public(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut dumps = Vec::new();
    for t in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM public.\"{t}\" t"))
                .fetch_all(pool)
                .await
                .unwrap();
        dumps.push((t, rows.join("\n")));
    }
    dumps
}

#[tokio::test]
async fn no_table_of_the_main_schema_holds_a_card_or_account_number() {
    let (app, pk) = app_with_vault().await;
    let visa = stored(&app, &pk, card(VISA), "cus_1").await;
    let mc = stored(&app, &pk, card(MASTERCARD), "cus_1").await;
    let bank_pm = stored(&app, &pk, bank(ACCOUNT), "cus_1").await;
    // Under Idempotency-Keys too, so the stored replays are in the dump.
    let tok = token(&app, &pk, card(VISA)).await;
    let r = app
        .post_idem(
            "/api/payment-methods",
            "dump-1",
            json!({"type": "card", "token": tok, "customerId": "cus_1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for pm in [&visa, &mc, &bank_pm] {
        app.create_intent(json!({"paymentMethodId": pm["id"], "confirm": true,
                                 "returnUrl": "https://shop.example/back"}))
            .await;
    }
    app.post(
        &format!("/api/payment-methods/{}/detach", mc["id"].as_str().unwrap()),
        json!({}),
    )
    .await;

    let dumps = dump_public(&app.pool).await;
    let names: Vec<&str> = dumps.iter().map(|(t, _)| t.as_str()).collect();
    for t in [
        "payment_methods",
        "audit_log",
        "idempotency_keys",
        "outbox",
        "payment_intents",
    ] {
        assert!(names.contains(&t), "{names:?}");
    }
    let pms = &dumps
        .iter()
        .find(|(t, _)| t == "payment_methods")
        .unwrap()
        .1;
    assert!(pms.contains("4242") && pms.lines().count() == 4, "{pms}");
    for (table, text) in &dumps {
        for number in [VISA, MASTERCARD, ACCOUNT] {
            assert!(!text.contains(number), "{number} found in {table}");
        }
    }
}

#[tokio::test]
async fn the_api_description_lists_the_payment_method_operations() {
    let app = spawn_app().await;
    let spec = app
        .request(Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(spec.status, 200);
    let paths = &spec.body["paths"];
    for (path, method) in [
        ("/payment-methods", "post"),
        ("/payment-methods", "get"),
        ("/payment-methods/{id}", "get"),
        ("/payment-methods/{id}/detach", "post"),
    ] {
        let op = &paths[path][method];
        assert_eq!(
            op["tags"],
            json!(["PaymentMethods"]),
            "{path} {method}: {op}"
        );
        assert!(op["summary"].is_string(), "{path} {method}: {op}");
        assert_eq!(
            op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }
    // Creating reaches the vault, which may be down.
    assert!(paths["/payment-methods"]["post"]["responses"]["503"].is_object());
    let pm = &spec.body["components"]["schemas"]["PaymentMethodView"];
    for nullable in ["customerId", "card", "bankAccount", "detachedAt"] {
        assert!(
            pm["properties"][nullable].to_string().contains("nullable")
                || pm["properties"][nullable].to_string().contains("null"),
            "{nullable}: {pm}"
        );
    }
    let schemas = &spec.body["components"]["schemas"];
    assert_eq!(
        schemas["PaymentMethodType"]["enum"],
        json!(["card", "bank_account"]),
        "{schemas}"
    );
}
