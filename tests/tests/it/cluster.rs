//! paystream on a real three-node JetStream cluster on loopback (`paystream_tests::cluster`):
//! replicated streams, and payments, refunds and webhooks riding through the loss of nodes.

use std::time::Duration;

use async_nats::jetstream;
use paystream_nats::{NatsError, Stream, Topology};
use paystream_tests::cluster::Cluster;
use paystream_tests::webhooks::Sink;
use paystream_tests::{eventually, TestApp};
use serde_json::json;

fn prefix() -> String {
    format!("c{}_", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

async fn stream_replicas(js: &jetstream::Context, name: &str) -> (usize, usize) {
    let mut stream = js.get_stream(name).await.expect("stream");
    let info = stream.info().await.expect("stream info");
    let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    (info.config.num_replicas, peers)
}

#[tokio::test]
async fn replicas_follow_the_configuration_and_an_r1_stream_is_scaled_up_in_place() {
    let cluster = Cluster::start(3).await;
    let (_client, js) = paystream_nats::connect(&cluster.url()).await.unwrap();
    let prefix = prefix();
    let r1 = Topology::new(&prefix);
    r1.ensure(&js).await.unwrap();
    let name = r1.stream_name(Stream::PaymentCommands);
    assert_eq!(stream_replicas(&js, &name).await, (1, 0));
    // A durable consumer made while the stream had one replica.
    let spec = paystream_nats::ConsumerSpec::new(
        Stream::PaymentCommands,
        "confirm",
        "cmd.payment.confirm",
    );
    let stream = js.get_stream(&name).await.unwrap();
    stream
        .create_consumer(spec.consumer_config(&r1))
        .await
        .unwrap();

    // The same topology, restarted with PAYSTREAM_STREAM_REPLICAS=3: updated, not refused.
    let r3 = Topology::new(&prefix).with_replicas(3);
    r3.ensure(&js).await.unwrap();
    r3.ensure(&js).await.unwrap(); // and idempotent
    for s in Stream::ALL {
        let (replicas, _) = stream_replicas(&js, &r3.stream_name(s)).await;
        assert_eq!(replicas, 3, "{}", r3.stream_name(s));
    }
    let stream = js.get_stream(&name).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(spec.consumer_config(&r3))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    paystream_tests::eventually(Duration::from_secs(30), "two followers per stream", || {
        let js = js.clone();
        let name = name.clone();
        async move { (stream_replicas(&js, &name).await.1 == 2).then_some(()) }
    })
    .await;
    r3.delete_all(&js).await.unwrap();
}

#[tokio::test]
async fn three_replicas_on_a_single_server_are_refused_saying_what_to_do() {
    let (_client, js) = paystream_nats::connect(&paystream_tests::nats_url())
        .await
        .unwrap();
    let topology = Topology::new(&prefix()).with_replicas(3);
    let err = topology.ensure(&js).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NatsError::Replicas(_)), "{text}");
    assert!(text.contains("PAYSTREAM_STREAM_REPLICAS=3"), "{text}");
    assert!(text.contains("--nats-cluster 3"), "{text}");
    topology.delete_all(&js).await.unwrap();
}

/// The API with three stream replicas on `cluster`.
async fn spawn_on(cluster: &Cluster) -> TestApp {
    paystream_tests::spawn_app_configured(&cluster.url(), |c| {
        c.nats.stream_replicas = 3;
    })
    .await
}

async fn create_confirmed(app: &TestApp, n: usize, amount: i64) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let batch = futures::future::join_all(chunk.iter().map(|_| {
            app.create_intent(
                json!({"paymentMethodId": "pm_card_visa", "confirm": true, "amount": amount}),
            )
        }))
        .await;
        ids.extend(
            batch
                .into_iter()
                .map(|pi| pi["id"].as_str().unwrap().to_owned()),
        );
    }
    ids
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Every intent succeeded, each with exactly one charge at the acquirer.
async fn assert_all_succeeded_once(app: &TestApp, ids: &[String]) {
    let n = i64::try_from(ids.len()).unwrap();
    eventually(WAIT, "every intent to succeed", || async {
        let done = count(
            app,
            "SELECT count(*) FROM payment_intents WHERE status = 'succeeded'",
        )
        .await;
        (done == n).then_some(())
    })
    .await;
    for id in ids {
        let charges = app.sim_charges(id).await;
        assert_eq!(charges.len(), 1, "{id}: {charges:?}");
    }
    // Rows whose publish landed but whose ack was lost to an election are published again
    // under the same Nats-Msg-Id and marked; the charges above show the repeat was dropped.
    eventually(WAIT, "the outbox to drain", || async {
        let left = count(
            app,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;
}

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn payments_ride_through_killing_the_payment_commands_leader() {
    let mut cluster = Cluster::start(3).await;
    let app = spawn_on(&cluster).await;
    let _worker = app.start_confirm_worker();
    let stream = app.topology.stream_name(Stream::PaymentCommands);
    assert_eq!(stream_replicas(&app.js, &stream).await.0, 3);
    let mut ids = create_confirmed(&app, 20, 1000).await;

    let leader = cluster.stream_leader(&app.js, &stream).await;
    cluster.kill_node(leader);
    // Accepted while the stream elects a new leader among the two left.
    ids.extend(create_confirmed(&app, 20, 1000).await);
    let new_leader = cluster.stream_leader(&app.js, &stream).await;
    assert_ne!(new_leader, leader, "a surviving node leads");
    ids.extend(create_confirmed(&app, 10, 1000).await);
    cluster.start_node(leader);
    ids.extend(create_confirmed(&app, 10, 1000).await);
    assert_all_succeeded_once(&app, &ids).await;
}

#[tokio::test]
async fn refunds_ride_through_killing_the_refund_commands_leader() {
    let mut cluster = Cluster::start(3).await;
    let app = spawn_on(&cluster).await;
    let _confirm = app.start_confirm_worker();
    let _refunds = app.start_refund_worker();
    let ids = create_confirmed(&app, 15, 700).await;
    assert_all_succeeded_once(&app, &ids).await;

    let stream = app.topology.stream_name(Stream::RefundCommands);
    let leader = cluster.stream_leader(&app.js, &stream).await;
    let mut refunds = Vec::new();
    for (i, pi) in ids.iter().enumerate() {
        if i == 5 {
            cluster.kill_node(leader);
        }
        if i == 12 {
            cluster.start_node(leader);
        }
        let r = app
            .post(
                "/api/refunds",
                json!({"paymentIntentId": pi, "amount": 300}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        refunds.push(r.body["id"].as_str().unwrap().to_owned());
    }
    eventually(WAIT, "every refund to succeed", || async {
        let done = count(
            &app,
            "SELECT count(*) FROM refunds WHERE status = 'succeeded'",
        )
        .await;
        (done == 15).then_some(())
    })
    .await;
    for pi in &ids {
        // Refunded once at the acquirer, for exactly the amount asked.
        assert_eq!(app.acquirer_totals(pi).await, (700, 300), "{pi}");
    }
}

#[tokio::test]
async fn webhooks_ride_through_killing_the_webhook_deliveries_leader() {
    let mut cluster = Cluster::start(3).await;
    let app = spawn_on(&cluster).await;
    let sink = Sink::start().await;
    app.subscribe(&sink.url("/hooks"), &["payment_intent.succeeded"])
        .await;
    let _confirm = app.start_confirm_worker();
    let _webhooks = app.start_webhook_worker();
    let mut ids = create_confirmed(&app, 10, 500).await;
    let stream = app.topology.stream_name(Stream::WebhookDeliveries);
    let leader = cluster.stream_leader(&app.js, &stream).await;
    cluster.kill_node(leader);
    ids.extend(create_confirmed(&app, 10, 500).await);
    cluster.start_node(leader);
    ids.extend(create_confirmed(&app, 5, 500).await);

    // At least once each: a delivery may be repeated across the election, never missing.
    let delivered = eventually(WAIT, "a webhook for every payment", || async {
        let got: std::collections::HashSet<String> = sink
            .received_on("/hooks")
            .iter()
            .map(|r| {
                r.json()["data"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        ids.iter().all(|id| got.contains(id)).then_some(got)
    })
    .await;
    assert_eq!(delivered.len(), ids.len());
    assert_all_succeeded_once(&app, &ids).await;
}

#[tokio::test]
async fn without_quorum_intents_are_kept_in_the_outbox_and_flow_once_it_returns() {
    let mut cluster = Cluster::start(3).await;
    let app = spawn_on(&cluster).await;
    let _worker = app.start_confirm_worker();
    let mut ids = create_confirmed(&app, 10, 1000).await;
    assert_all_succeeded_once(&app, &ids).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);

    // Two of three nodes gone: no stream can elect a leader, nothing can be stored in NATS.
    cluster.kill_node(0);
    cluster.kill_node(1);
    let parked = create_confirmed(&app, 15, 1000).await;
    let ready = eventually(WAIT, "readyz to report NATS without quorum", || async {
        let r = app.get("/readyz").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(ready.body["nats"], "unavailable", "{}", ready.text);
    assert_eq!(ready.body["database"], "ok");
    // Accepted and stored, waiting in the outbox for NATS.
    let waiting = count(
        &app,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND subject = 'cmd.payment.confirm'",
    )
    .await;
    assert_eq!(waiting, 15);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM payment_intents WHERE status = 'succeeded'"
        )
        .await,
        10
    );

    cluster.start_node(0);
    cluster.start_node(1);
    ids.extend(parked);
    assert_all_succeeded_once(&app, &ids).await;
    eventually(WAIT, "readyz to recover", || async {
        (app.get("/readyz").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_consumer_made_before_replicas_were_configured_is_updated_on_a_single_server() {
    let (_client, js) = paystream_nats::connect(&paystream_tests::nats_url())
        .await
        .unwrap();
    let topology = Topology::new(&prefix());
    topology.ensure(&js).await.unwrap();
    let spec = paystream_nats::ConsumerSpec::new(
        Stream::PaymentCommands,
        "confirm",
        "cmd.payment.confirm",
    );
    // What earlier releases made: no replica count, so the server's default.
    let mut old = spec.consumer_config(&topology);
    old.num_replicas = 0;
    let stream = js
        .get_stream(topology.stream_name(Stream::PaymentCommands))
        .await
        .unwrap();
    stream.create_consumer(old).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(spec.consumer_config(&topology))
        .await
        .unwrap();
    assert!(consumer.info().await.unwrap().config.num_replicas <= 1);
    topology.delete_all(&js).await.unwrap();
}
