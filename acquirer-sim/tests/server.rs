//! The simulator as a real server on a loopback port: what the workers and the end-to-end
//! tests see.

use std::time::Duration;

use acquirer_sim::{spawn, SimConfig};
use serde_json::{json, Value};

fn body(reference: &str) -> Value {
    json!({"reference": reference, "amount": 2500, "currency": "jpy",
           "paymentMethod": "pm_card_visa", "capture": true})
}

#[tokio::test]
async fn serves_on_a_loopback_port_and_stops_on_request() {
    let sim = spawn(SimConfig::default()).unwrap();
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let resp = http
        .post(format!("{}/v1/payments", sim.url))
        .header("Idempotency-Key", "pi_srv:authorize")
        .json(
            &json!({"reference": "pi_srv", "amount": 100, "currency": "usd",
                      "paymentMethod": "pm_card_threeDSecureRequired", "capture": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let charge: Value = resp.json().await.unwrap();
    // Redirects point back at the address the simulator really listens on.
    let expected = format!("{}/sim/3ds/{}", sim.url, charge["id"].as_str().unwrap());
    assert_eq!(charge["redirectUrl"], expected);

    let big = "x".repeat(70 * 1024);
    let resp = http
        .post(format!("{}/v1/payments", sim.url))
        .header("Idempotency-Key", "big")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let url = sim.url.clone();
    sim.stop().await.unwrap();
    assert!(http.get(format!("{url}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn concurrent_requests_with_one_key_charge_once() {
    let sim = spawn(SimConfig::default()).unwrap();
    let http = reqwest::Client::new();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let http = http.clone();
            let url = format!("{}/v1/payments", sim.url);
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .header("Idempotency-Key", "pi_race:authorize")
                    .json(&body("pi_race"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        let (status, charge) = call.await.unwrap();
        assert_eq!(status, 200);
        ids.push(charge["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let listed: Value = http
        .get(format!("{}/sim/charges?reference=pi_race", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_hung_calls() {
    let sim = spawn(SimConfig::default()).unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{}/sim/faults", sim.url))
        .json(&json!({"timeoutRate": 1}))
        .send()
        .await
        .unwrap();
    let url = format!("{}/v1/payments", sim.url);
    let hung = tokio::spawn(async move {
        http.post(url)
            .header("Idempotency-Key", "pi_hung:authorize")
            .json(&body("pi_hung"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), sim.stop())
        .await
        .expect("the simulator stops promptly")
        .unwrap();
    let _ = hung.await.unwrap();
}

/// The binary itself: listens where the environment says and stops cleanly on SIGTERM.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_acquirer-sim"))
        .env("ACQUIRER_SIM_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..100 {
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the simulator never answered on {url}");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the simulator exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
