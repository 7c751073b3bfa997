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
