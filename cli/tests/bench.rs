//! `paystream bench` as a real process against a real stack: the API with its outbox relay, the
//! acquirer simulator and a confirm worker (in this process, on the test's own database and
//! stream prefix), real PostgreSQL and NATS.

use std::process::Output;
use std::time::Duration;

use paystream_tests::{spawn_app, TestApp};

async fn bench(configure: impl FnOnce(&mut tokio::process::Command)) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.arg("bench")
        .env("PAYSTREAM_ENV", "development")
        .env_remove("PAYSTREAM_BOOTSTRAP_API_KEY")
        .env_remove("PAYSTREAM_API_ADDR")
        .kill_on_drop(true);
    configure(&mut cmd);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("bench finished within a minute")
        .expect("run paystream bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `host:port`, the form PAYSTREAM_API_ADDR takes.
fn addr(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

fn assert_ordered(latency: &serde_json::Value, what: &str) {
    let get = |k: &str| {
        latency[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}.{k} is an integer: {latency}"))
    };
    let (p50, p90, p99, max) = (get("p50"), get("p90"), get("p99"), get("max"));
    assert!(p50 > 0, "{what}: {latency}");
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{what}: {latency}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_payments_to_succeeded_and_reports_them() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let out_file = std::env::temp_dir().join(format!(
        "paystream-bench-{}.json",
        uuid::Uuid::new_v4().simple()
    ));

    // The API and the key come from the environment, as after `paystream up`.
    let out = bench(|c| {
        c.args([
            "--payments",
            "20",
            "--concurrency",
            "4",
            "--observe",
            "list",
        ])
        .args(["--json", "--out"])
        .arg(&out_file)
        .args(["--timeout-secs", "20"])
        .env("DATABASE_URL", &app.db.url)
        .env("PAYSTREAM_API_ADDR", addr(&app))
        .env("PAYSTREAM_BOOTSTRAP_API_KEY", &app.api_key);
    })
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["payments"], 20, "{report}");
    assert_eq!(report["concurrency"], 4);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["succeeded"], 20);
    assert!(report["pgbenchTps"].is_null());
    assert!(report["seconds"].is_number() && report["paymentsPerSecond"].is_number());
    // The millisecond figures are fixed-point decimals; the same percentiles in integer
    // microseconds must be ordered and positive.
    for k in ["p50", "p90", "p99", "max"] {
        assert!(report["latencyMs"][k].is_number(), "{report}");
    }
    assert_ordered(&report["latencyUs"], "latencyUs");
    assert_eq!(report["observation"]["method"], "list");
    assert!(report["observation"]["requests"].as_u64().unwrap() > 0);
    let written = std::fs::read_to_string(&out_file).expect("--out wrote the report");
    assert_eq!(written.trim(), stdout.trim(), "--out holds the same JSON");
    let _ = std::fs::remove_file(&out_file);

    // Every one of them really is succeeded, with exactly one charge at the simulator.
    let succeeded: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM payment_intents WHERE customer_id LIKE 'bench\\_%' AND status = 'succeeded'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(succeeded.len(), 20);
    assert_eq!(app.sim_charges(&succeeded[0]).await.len(), 1);

    // The per-payment GET observer, flags instead of the environment, a table by default.
    let out = bench(|c| {
        c.args(["--payments", "6", "--concurrency", "3", "--observe", "get"])
            .args(["--api", &app.address, "--key", &app.api_key])
            .args(["--timeout-secs", "20"])
            .env("DATABASE_URL", &app.db.url);
    })
    .await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", text(&out.stderr));
    assert!(
        table.contains("6 payments, 3 in flight") && table.contains("succeeded 6, failed 0"),
        "{table}"
    );
    assert!(
        table.contains("payments/s") && table.contains("p99"),
        "{table}"
    );
    assert!(
        !table.contains(&app.api_key) && !text(&out.stderr).contains(&app.api_key),
        "the key is never printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_bench_sees_payments_through_its_own_verified_webhooks() {
    let app = spawn_app().await;
    let _worker = app.start_confirm_worker();
    let _webhooks = app.start_webhook_worker();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let out_file = std::env::temp_dir().join(format!("paystream-bench-{tag}.json"));
    let plot_file = std::env::temp_dir().join(format!("paystream-bench-{tag}.svg"));

    // 10 payments/s for 2 s, observed by the default: the bench's webhook sink.
    let out = bench(|c| {
        c.args(["--rate", "10", "--duration", "2", "--json", "--out"])
            .arg(&out_file)
            .arg("--plot")
            .arg(&plot_file)
            .args(["--timeout-secs", "30"])
            .env("DATABASE_URL", &app.db.url)
            .env("PAYSTREAM_API_ADDR", addr(&app))
            .env("PAYSTREAM_BOOTSTRAP_API_KEY", &app.api_key);
    })
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["payments"], 20, "{report}");
    assert_eq!(report["succeeded"], 20, "{report}");
    assert_eq!(report["load"]["loop"], "open");
    assert_eq!(report["load"]["rate"], 10);
    assert!(report["load"]["maxSendLagMs"].is_number(), "{report}");
    assert_eq!(report["observation"]["method"], "webhook");
    // Seen through webhooks only: the observer itself sent no request.
    assert_eq!(report["observation"]["requests"], 0, "{report}");
    let hooks = &report["webhooks"];
    assert!(hooks["received"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(hooks["invalidSignatures"], 0);
    for k in [
        "confirmToSucceededMs",
        "succeededToWebhookMs",
        "intendedStartToSeenMs",
    ] {
        assert!(report[k]["p99"].is_number(), "{k}: {report}");
    }
    let per_second = report["throughputPerSecond"].as_array().expect("an array");
    let total: u64 = per_second.iter().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 20, "{report}");
    assert!(report["processes"].is_object(), "{report}");
    let svg = std::fs::read_to_string(&plot_file).expect("--plot wrote the SVG");
    assert!(svg.starts_with("<svg") && svg.contains("latency distribution"));
    let _ = std::fs::remove_file(&out_file);
    let _ = std::fs::remove_file(&plot_file);

    // The sink's subscription is gone with it.
    let subs = app.get("/api/webhooks/subscriptions").await;
    assert_eq!(
        subs.body["data"].as_array().map(Vec::len),
        Some(0),
        "{}",
        subs.text
    );
}

#[tokio::test]
async fn bench_explains_what_is_missing() {
    let out = bench(|c| {
        c.args(["--payments", "1", "--concurrency", "1"]);
    })
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no API key: pass --key or set PAYSTREAM_BOOTSTRAP_API_KEY"),
        "{}",
        text(&out.stderr)
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = bench(|c| {
        c.args(["--payments", "1", "--key", "sk_nothing_listens"])
            .env("PAYSTREAM_API_ADDR", closed.to_string());
    })
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the API at http://127.0.0.1:")
            && err.contains("is `paystream up` running?"),
        "{err}"
    );
    assert!(!err.contains("sk_nothing_listens"), "{err}");
}

#[tokio::test]
async fn bench_refuses_a_bad_key_before_starting() {
    let app = spawn_app().await;
    let out = bench(|c| {
        c.args(["--payments", "1", "--api", &app.address])
            .args(["--key", "sk_not_a_real_key_000000000000"])
            .env("DATABASE_URL", &app.db.url);
    })
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refused the key (HTTP 401)"), "{err}");
}
