//! The simulator's notifications over real HTTP, received by a small capturing server: their
//! signature verifies with paystream's own verifier, and the notification faults do what they
//! say.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use acquirer_sim::{spawn, SimConfig, SpawnedSim, SIGNATURE_HEADER};
use paystream_domain::provider_event::{verify, Envelope};
use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{handler, post, Body, EndpointExt, Request, Route, Server};
use serde_json::{json, Value};

const SECRET: &str = "acq_whsec_for_tests";

#[derive(Default)]
struct Inbox {
    received: Mutex<Vec<(Option<String>, Vec<u8>)>>,
    /// Statuses to answer with, first to last; then 200.
    script: Mutex<Vec<u16>>,
}

#[handler]
async fn receive(Data(inbox): Data<&Arc<Inbox>>, req: &Request, body: Body) -> StatusCode {
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = body.into_vec().await.unwrap();
    inbox.received.lock().unwrap().push((signature, bytes));
    let mut script = inbox.script.lock().unwrap();
    let status = if script.is_empty() {
        200
    } else {
        script.remove(0)
    };
    StatusCode::from_u16(status).unwrap()
}

struct Rig {
    sim: SpawnedSim,
    inbox: Arc<Inbox>,
    http: reqwest::Client,
}

async fn rig() -> Rig {
    let inbox = Arc::new(Inbox::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let app = Route::new()
        .at("/hook", post(receive))
        .data(Arc::clone(&inbox));
    tokio::spawn(Server::new_with_acceptor(TcpAcceptor::from_std(listener).unwrap()).run(app));
    let sim = spawn(SimConfig {
        notify_url: Some(format!("http://{addr}/hook")),
        notify_secret: paystream_domain::secret::Secret::new(SECRET.to_owned()),
        seed: Some(5),
        ..SimConfig::default()
    })
    .unwrap();
    Rig {
        sim,
        inbox,
        http: reqwest::Client::new(),
    }
}

impl Rig {
    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Value {
        let mut req = self
            .http
            .post(format!("{}{path}", self.sim.url))
            .json(&body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
    }

    /// A captured charge of 1000 for `reference`; returns the charge id.
    async fn charge(&self, reference: &str) -> String {
        let body = json!({"reference": reference, "amount": 1000, "currency": "usd",
                          "paymentMethod": "pm_card_visa", "capture": true});
        let charge = self
            .post("/v1/payments", Some(&format!("{reference}:a")), body)
            .await;
        charge["id"].as_str().unwrap().to_owned()
    }

    async fn refund(&self, charge: &str, reference: &str, amount: i64) -> Value {
        let body = json!({"payment": charge, "amount": amount, "reference": reference});
        self.post("/v1/refunds", Some(&format!("{reference}:refund")), body)
            .await
    }

    /// Waits until `n` notifications arrived, lets stragglers in, and returns every one as
    /// (type, id, body), each checked against paystream's verifier.
    async fn received(&self, n: usize) -> Vec<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.inbox.received.lock().unwrap().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} notifications arrived",
                self.inbox.received.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let received = self.inbox.received.lock().unwrap().clone();
        received
            .into_iter()
            .map(|(signature, body)| {
                verify(
                    SECRET.as_bytes(),
                    signature.as_deref(),
                    &body,
                    chrono::Utc::now(),
                )
                .expect("the simulator's signature verifies with paystream's verifier");
                let envelope = Envelope::parse(&body).expect("a well-formed envelope");
                let value: Value = serde_json::from_slice(&body).unwrap();
                (envelope.event_type, envelope.id.as_str().to_owned(), value)
            })
            .collect()
    }
}

fn kinds(received: &[(String, String, Value)]) -> Vec<&str> {
    received.iter().map(|(t, _, _)| t.as_str()).collect()
}

#[tokio::test]
async fn asynchronous_refunds_are_announced_signed_and_in_order() {
    let rig = rig().await;
    let charge = rig.charge("pi_1").await;
    rig.post("/sim/faults", None, json!({"refundSettlementMs": 50}))
        .await;
    let answer = rig.refund(&charge, "re_1", 400).await;
    assert_eq!(answer["status"], "pending");
    let got = rig.received(2).await;
    assert_eq!(kinds(&got), ["refund.pending", "refund.succeeded"]);
    assert_eq!(got[1].2["data"]["reference"], "re_1");
    assert_eq!(got[1].2["data"]["payment"], charge.as_str());
    assert_eq!(got[1].2["data"]["amount"], 400);
    assert_eq!(got.len(), 2);

    let metrics = rig
        .http
        .get(format!("{}/metrics", rig.sim.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("acquirer_sim_notifications_total{result=\"delivered\"} 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reorder_sends_a_held_batch_newest_first() {
    let rig = rig().await;
    let charge = rig.charge("pi_r").await;
    rig.post(
        "/sim/faults",
        None,
        json!({"refundSettlementMs": 20, "notifications": {"reorder": true}}),
    )
    .await;
    rig.refund(&charge, "re_r", 100).await;
    let got = rig.received(2).await;
    assert_eq!(kinds(&got), ["refund.succeeded", "refund.pending"]);
}

#[tokio::test]
async fn duplicates_keep_their_id_and_drops_never_arrive() {
    let rig = rig().await;
    let charge = rig.charge("pi_d").await;
    rig.post(
        "/sim/faults",
        None,
        json!({"refundSettlementMs": 10, "notifications": {"duplicateRate": 1}}),
    )
    .await;
    rig.refund(&charge, "re_d", 100).await;
    let got = rig.received(4).await;
    assert_eq!(
        kinds(&got),
        [
            "refund.pending",
            "refund.pending",
            "refund.succeeded",
            "refund.succeeded"
        ]
    );
    assert_eq!(got[0].1, got[1].1);
    assert_eq!(got[2].1, got[3].1);
    assert_ne!(got[0].1, got[2].1);

    rig.post(
        "/sim/faults",
        None,
        json!({"refundSettlementMs": 10, "notifications": {"dropRate": 1}}),
    )
    .await;
    rig.refund(&charge, "re_gone", 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.received(4).await.len(),
        4,
        "dropped notifications arrived"
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_refusals_are_not() {
    let rig = rig().await;
    let charge = rig.charge("pi_x").await;
    rig.post("/sim/faults", None, json!({"refundSettlementMs": 10}))
        .await;
    *rig.inbox.script.lock().unwrap() = vec![503, 500];
    rig.refund(&charge, "re_x", 100).await;
    // pending: 503, 500, 200; succeeded: 200.
    let got = rig.received(4).await;
    assert_eq!(
        kinds(&got),
        [
            "refund.pending",
            "refund.pending",
            "refund.pending",
            "refund.succeeded"
        ]
    );
    assert_eq!(got[0].1, got[2].1);

    *rig.inbox.script.lock().unwrap() = vec![400];
    rig.refund(&charge, "re_y", 100).await;
    let got = rig.received(6).await;
    assert_eq!(got.len(), 6, "a refused notification is not sent again");
    assert_eq!(kinds(&got[4..]), ["refund.pending", "refund.succeeded"]);
}

#[tokio::test]
async fn an_unreachable_receiver_is_given_up_on() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sim = spawn(SimConfig {
        notify_url: Some(format!("http://127.0.0.1:{port}/hook")),
        ..SimConfig::default()
    })
    .unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{}/sim/faults", sim.url))
        .json(&json!({"timeoutRate": 1}))
        .send()
        .await
        .unwrap();
    // The answer hangs (and is announced); its notification fails five times.
    let _ = http
        .post(format!("{}/v1/payments", sim.url))
        .timeout(Duration::from_millis(200))
        .header("Idempotency-Key", "k")
        .json(&json!({"reference": "pi_u", "amount": 5, "currency": "usd",
                      "paymentMethod": "pm_card_visa", "capture": true}))
        .send()
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = http
            .get(format!("{}/metrics", sim.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("acquirer_sim_notifications_total{result=\"failed\"} 1\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.stop().await.unwrap();
}
