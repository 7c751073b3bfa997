use paystream_tests::spawn_app;

#[tokio::test]
async fn health_readiness_metrics_and_docs() {
    let app = spawn_app().await;
    let r = app
        .request(reqwest::Method::GET, "/healthz", None, None, None)
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .request(reqwest::Method::GET, "/readyz", None, None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, serde_json::json!({"database": "ok", "nats": "ok"}));

    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["paths"]["/payment-intents"]["post"].is_object(),
        "{}",
        spec.text
    );
    assert!(spec.body["paths"]["/payment-intents/{id}/confirm"].is_object());
    let docs = app
        .request(reqwest::Method::GET, "/docs", None, None, None)
        .await;
    assert_eq!(docs.status, 200);
    assert!(docs.text.to_lowercase().contains("swagger"));

    app.get("/api/payment-intents").await;
    let metrics = app
        .request(reqwest::Method::GET, "/metrics", None, None, None)
        .await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("paystream_http_requests_total{class=\"2xx\"}"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn readyz_is_503_without_nats() {
    let app = spawn_app().await;
    let state = paystream_api::AppState {
        pool: app.pool.clone(),
        nats: None,
        config: app.config.clone(),
        metrics: Default::default(),
        relay_waker: Default::default(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(paystream_api::run(listener, state, app.shutdown.clone()));
    let r = app.raw(app.http.get(format!("http://{addr}/readyz"))).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["nats"], "unavailable");
    assert_eq!(r.body["database"], "ok");
}

/// A free local address for a worker's health endpoint.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_worker_serves_health_and_its_counters() {
    let app = spawn_app().await;
    let addr = free_addr();
    let mut config = (*app.config).clone();
    config.health_addr = Some(addr);
    let stop = app.shutdown.child_token();
    tokio::spawn(paystream_workers::runtime::run_confirm_worker(
        config,
        stop.clone(),
    ));
    let health = paystream_tests::eventually(
        std::time::Duration::from_secs(20),
        "the worker's /healthz",
        || async {
            let r = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
            (r.status() == 200).then_some(r.json::<serde_json::Value>().await.unwrap())
        },
    )
    .await;
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "database": "ok", "nats": "ok"})
    );

    let id = app.create_and_confirm("pm_card_visa").await;
    app.wait_for_status(&id, &["succeeded"], std::time::Duration::from_secs(30))
        .await;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let acked = paystream_tests::metric(
        &text,
        "paystream_worker_acked_total{worker=\"confirm-worker\"}",
    )
    .unwrap_or_else(|| panic!("no acked count in {text}"));
    assert!(acked >= 1, "{text}");
    // Each family once, as Prometheus text requires.
    assert_eq!(
        text.matches("# TYPE paystream_worker_acked_total counter")
            .count(),
        1
    );
    stop.cancel();
}

#[tokio::test]
async fn a_worker_that_cannot_reach_its_database_is_unhealthy() {
    let app = spawn_app().await;
    let pool = paystream_shared::db::connect(&app.config.database_url.expose().clone(), 1)
        .await
        .unwrap();
    let metrics = std::sync::Arc::new(paystream_nats::metrics::WorkerMetrics::new());
    let health = paystream_workers::health::Health::new(pool.clone(), None)
        .with_consumer("refund-worker", metrics.clone())
        .with_consumer("provider-events", metrics);
    let (ok, body) = health.check().await;
    assert!(ok, "{body}");
    assert_eq!(body, serde_json::json!({"status": "ok", "database": "ok"}));
    let text = health.render_metrics();
    assert_eq!(
        text.matches("# HELP paystream_worker_processed_total")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("paystream_worker_processed_total{worker=\"refund-worker\"} 0"));
    assert!(text.contains("paystream_worker_processed_total{worker=\"provider-events\"} 0"));

    pool.close().await;
    let (ok, body) = health.check().await;
    assert!(!ok);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "unavailable");

    // Served over HTTP, that is a 503.
    let addr = free_addr();
    let listener = std::net::TcpListener::bind(addr).unwrap();
    tokio::spawn(paystream_workers::health::serve(
        listener,
        health,
        app.shutdown.child_token(),
    ));
    let status = paystream_tests::eventually(
        std::time::Duration::from_secs(10),
        "the health endpoint to answer",
        || async {
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .ok()
                .map(|r| r.status())
        },
    )
    .await;
    assert_eq!(status, 503);
}
