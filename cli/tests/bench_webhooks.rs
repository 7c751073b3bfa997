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
        out: None,
        plot: None,
    }
}

#[tokio::test]
async fn bench_webhooks_measures_every_delivery_and_cleans_up() {
    let app = paystream_tests::spawn_app().await;
    let _worker = app.start_webhook_worker();
    let dir = std::env::temp_dir();
    let out = dir.join(format!("{}-bench-webhooks.json", app.prefix));
    let plot = dir.join(format!("{}-bench-webhooks.svg", app.prefix));
    let mut with_files = args(&app, Some(app.api_key.clone()));
    with_files.out = Some(out.clone());
    with_files.plot = Some(plot.clone());
    let code = run(&app.config, with_files).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    // The JSON counts the same 40 receipts over time and in the latency histogram.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["report"]["deliveriesReceived"], 40);
    let hist: u64 = doc["shape"]["latencyCounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(hist, 40);
    let step_ms = doc["shape"]["stepMs"].as_f64().unwrap();
    let over_time: f64 = doc["shape"]["deliveriesPerSec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() * step_ms / 1000.0)
        .sum();
    assert!((over_time - 40.0).abs() < 1e-6, "{over_time}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("webhook deliveries/s"));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&plot);
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
