//! `paystream bench-webhooks` against a real stack: its sink receives and verifies every
//! delivery, and it cleans its subscriptions up.

use std::process::ExitCode;

use paystream_cli::bench_webhooks::{run, BenchWebhooksArgs};

fn args(app: &paystream_tests::TestApp, key: Option<String>) -> BenchWebhooksArgs {
    BenchWebhooksArgs {
        events: 20,
        concurrency: 4,
        subscriptions: 2,
        api: app.address.clone(),
        key,
        timeout_secs: 60,
        json: true,
    }
}

#[tokio::test]
async fn bench_webhooks_measures_every_delivery_and_cleans_up() {
    let app = paystream_tests::spawn_app().await;
    let _worker = app.start_webhook_worker();
    let code = run(&app.config, args(&app, Some(app.api_key.clone())))
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(delivered, 40);
    let list = app.get("/api/webhooks/subscriptions").await;
    assert_eq!(list.body["data"], serde_json::json!([]));
}

#[tokio::test]
async fn bench_webhooks_needs_a_key_and_a_willing_stack() {
    let app = paystream_tests::spawn_app().await;
    assert!(run(&app.config, args(&app, None)).await.is_err());
    let err = run(&app.config, args(&app, Some("sk_wrong".into())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}
