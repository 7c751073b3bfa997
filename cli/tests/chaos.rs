//! `paystream chaos` as a real process: it starts its own stack (its own nats-server, or a
//! cluster of them, database and simulator), kills every kind of process under load, turns
//! the acquirer's faults on, and must find no violation. The report must show the kills and
//! faults happened, or a clean result would prove nothing. (That the checker does flag broken
//! states is tested in `chaos::check`'s unit tests.)

use std::time::Duration;

/// Runs `paystream chaos` with `args` and returns its JSON report, after asserting it exited 0
/// with every check clean and none of them vacuous.
async fn chaos_report(args: &[&str], limit: Duration) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.arg("chaos")
        .args(args)
        .arg("--json")
        .env(
            "DATABASE_URL",
            format!("{}/postgres", paystream_tests::database_server_url()),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .expect("the chaos run finished")
        .expect("run paystream chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON object ({e}): {stdout}\n{stderr}"));
    assert!(out.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["ok"], true, "{report:#}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 9, "{report:#}");
    for c in checks {
        assert_eq!(c["violations"], 0, "{c}");
        assert!(
            c["checked"].as_u64().unwrap() > 0,
            "a check that looked at nothing: {c}"
        );
    }
    // Not vacuous: every kind of process was killed, faults fired, requests were retried.
    for victim in [
        "confirm-worker",
        "refund-worker",
        "webhook-worker",
        "scheduler",
        "paystream-api",
        "nats-server",
    ] {
        assert!(
            report["kills"][victim].as_u64().unwrap_or(0) >= 1,
            "{victim} was never killed: {report:#}"
        );
    }
    let faults = &report["faultsFired"];
    assert!(faults["error"].as_u64().unwrap_or(0) > 0, "{report:#}");
    assert!(faults["timeout"].as_u64().unwrap_or(0) > 0, "{report:#}");
    assert!(report["driverRetries"].as_u64().unwrap() > 0, "{report:#}");
    // Nearly every payment was confirmed: a run whose API was never reachable would pass
    // the final-state check with nothing to check.
    assert!(report["unconfirmed"].as_u64().unwrap() < 30, "{report:#}");
    assert!(report["unchallenged"].as_u64().unwrap() < 10, "{report:#}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_kills_everything_and_finds_no_violation() {
    let report = chaos_report(
        &[
            "--payments",
            "300",
            "--rate",
            "20",
            "--seed",
            "11",
            "--kill-every-secs",
            "2",
            "--settle-secs",
            "150",
        ],
        Duration::from_secs(420),
    )
    .await;
    assert_eq!(report["seed"], 11);
    assert!(report["natsCluster"].is_null(), "one server: {report:#}");
}

/// On a three-node cluster with R3 streams: NATS kills take one node at a time, the leader of
/// the payment-commands stream among them, and every check still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_on_a_three_node_cluster_kills_leaders_and_finds_no_violation() {
    let report = chaos_report(
        &[
            "--nats-cluster",
            "3",
            "--payments",
            "300",
            "--rate",
            "20",
            "--kill-every-secs",
            "2",
            "--settle-secs",
            "60",
            "--seed",
            "13",
        ],
        Duration::from_secs(300),
    )
    .await;
    let cluster = &report["natsCluster"];
    assert_eq!(cluster["nodes"], 3, "{report:#}");
    let nats_kills = report["kills"]["nats-server"].as_u64().unwrap();
    assert!(nats_kills >= 2, "{report:#}");
    let per_node: u64 = cluster["nodeKills"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        per_node, nats_kills,
        "every NATS kill took one node: {report:#}"
    );
    assert!(cluster["leaderKills"].as_u64().unwrap() >= 1, "{report:#}");
    // Every stream really was held by all three nodes.
    let peers = cluster["streamPeers"].as_object().unwrap();
    assert_eq!(peers.len(), 6, "{report:#}");
    for (stream, n) in peers {
        assert_eq!(n, 3, "{stream} on {n} nodes: {report:#}");
    }
}

/// A stack that cannot start (here the API refuses three stream replicas on one server) is
/// reported at once, and leaves no database behind, only its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_stack_that_cannot_start_says_which_process_and_leaves_no_database() {
    let server = paystream_tests::database_server_url();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args(["chaos", "--payments", "1", "--json"])
            .env("DATABASE_URL", format!("{server}/postgres"))
            .env("PAYSTREAM_STREAM_REPLICAS", "3")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chaos gave up promptly")
    .expect("run paystream chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("paystream-api exited during start-up"),
        "{stderr}"
    );
    let dir = stderr
        .split("logs in ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .map(|d| std::path::PathBuf::from(d.trim()))
        .unwrap_or_else(|| panic!("where the logs are: {stderr}"));
    assert!(dir.join("paystream-api.log").is_file(), "{stderr}");
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("paystream-chaos-"))
        .map(|tag| format!("paystream_chaos_{tag}"))
        .unwrap();
    let pool = paystream_shared::db::connect(&format!("{server}/postgres"), 1)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} was dropped");
    std::fs::remove_dir_all(&dir).unwrap();
}
