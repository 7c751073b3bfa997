use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use paystream_nats::dlq::{self, *};
use paystream_nats::max_deliveries::{
    self, StrandedSweeper, MAX_DELIVERIES_REASON, STRANDED_REASON,
};
use paystream_nats::{NatsError, Stream};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const CONFIRM: &str = "cmd.payment.confirm";

#[tokio::test]
async fn an_acked_command_is_handled_once_and_leaves_the_queue() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let running = start(
        &nats,
        fast_spec(Stream::PaymentCommands, "confirm", CONFIRM),
        handler.clone(),
    );
    nats.publish_cmd(CONFIRM, &TestCommand::new("pi_1", Action::Ack))
        .await;
    running.wait_until("acked", |s| s.acked == 1).await;
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);
    let seen = handler.recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (cmd, delivery) = &seen[0];
    assert_eq!(cmd.id, "pi_1");
    assert_eq!(
        delivery.subject, CONFIRM,
        "the handler sees the logical subject"
    );
    assert_eq!(delivery.delivered, 1);
    assert_eq!(delivery.stream_sequence, 1);
    assert_eq!(delivery.message_id, None);
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();
    let snap = metrics.snapshot();
    assert_eq!((snap.processed, snap.acked, snap.retried), (1, 1, 0));
    assert_eq!(snap.latency_count, 1);
}

#[tokio::test]
async fn a_retry_is_redelivered_and_then_succeeds() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let running = start(
        &nats,
        fast_spec(Stream::PaymentCommands, "confirm", CONFIRM),
        handler.clone(),
    );
    // With a message id, as the relay publishes.
    nats.js
        .send_publish(
            nats.topology.subject(CONFIRM),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(
                    serde_json::to_vec(&TestCommand::new("pi_2", Action::RetryOnce))
                        .unwrap()
                        .into(),
                )
                .message_id("outbox-row-1"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    running
        .wait_until("acked after one retry", |s| s.acked == 1)
        .await;
    assert_eq!(handler.recorder.deliveries_of("pi_2"), vec![1, 2]);
    let seen = handler.recorder.seen.lock().unwrap().clone();
    assert_eq!(seen[1].1.message_id.as_deref(), Some("outbox-row-1"));
    let snap = running.metrics.snapshot();
    assert_eq!((snap.retried, snap.acked, snap.dead_lettered), (1, 1, 0));
    running.stop().await.unwrap();
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);
}

#[tokio::test]
async fn a_dead_letter_carries_its_origin_and_reason() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let running = start(
        &nats,
        fast_spec(Stream::RefundCommands, "refund", "cmd.refund.>"),
        handler.clone(),
    );
    let cmd = TestCommand::new("re_9", Action::DeadLetter);
    nats.publish_cmd("cmd.refund.process", &cmd).await;
    eventually(Duration::from_secs(5), "dead-lettered", || {
        let nats = &nats;
        async move { nats.count(Stream::DeadLetters).await == 1 }
    })
    .await;
    eventually(Duration::from_secs(5), "original acked", || {
        let nats = &nats;
        async move { nats.count(Stream::RefundCommands).await == 0 }
    })
    .await;

    let dlq_stream = nats.stream(Stream::DeadLetters).await;
    let msg = dlq_stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.subject.as_str(),
        nats.topology.subject("dlq.cmd.refund.process")
    );
    let h = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(h(HEADER_ORIGIN_STREAM).as_deref(), Some("REFUND_COMMANDS"));
    assert_eq!(
        h(HEADER_ORIGIN_SUBJECT).as_deref(),
        Some("cmd.refund.process")
    );
    assert_eq!(h(HEADER_ORIGIN_SEQUENCE).as_deref(), Some("1"));
    assert_eq!(h(HEADER_DELIVERIES).as_deref(), Some("1"));
    // The newline in the handler's reason does not break the header.
    assert_eq!(
        h(HEADER_LAST_ERROR).as_deref(),
        Some("refused re_9 by the test")
    );
    assert_eq!(h(HEADER_OBJECT_ID).as_deref(), Some("re_9"));
    let at = h(HEADER_DEAD_LETTERED_AT).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(&at).expect("RFC 3339");
    assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds() < 30);
    let payload: TestCommand = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(payload, cmd, "the original payload, unchanged");

    let snap = running.metrics.snapshot();
    assert_eq!((snap.dead_lettered, snap.acked), (1, 0));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn retries_at_max_deliver_go_to_the_dead_letters() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let spec = paystream_nats::ConsumerSpec {
        max_deliver: 2,
        ..fast_spec(Stream::PaymentCommands, "confirm", CONFIRM)
    };
    let running = start(&nats, spec, handler.clone());
    nats.publish_cmd(CONFIRM, &TestCommand::new("pi_3", Action::RetryAlways))
        .await;
    running
        .wait_until("dead-lettered", |s| s.dead_lettered == 1)
        .await;
    assert_eq!(handler.recorder.deliveries_of("pi_3"), vec![1, 2]);
    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].deliveries, 2);
    assert!(
        letters[0].last_error.contains("2 deliveries"),
        "{}",
        letters[0].last_error
    );
    assert_eq!(letters[0].object_id.as_deref(), Some("pi_3"));
    let snap = running.metrics.snapshot();
    assert_eq!(snap.retried, 1);
    running.stop().await.unwrap();
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);
}

#[tokio::test]
async fn an_undecodable_payload_is_dead_lettered_without_calling_the_handler() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let running = start(
        &nats,
        fast_spec(Stream::PaymentCommands, "confirm", CONFIRM),
        handler.clone(),
    );
    nats.publish(CONFIRM, "not json at all").await;
    nats.publish(CONFIRM, r#"{"type":"test.v9","id":"pi_x"}"#)
        .await;
    running
        .wait_until("both dead-lettered", |s| s.dead_lettered == 2)
        .await;
    assert_eq!(handler.recorder.seen_count(), 0);
    let snap = running.metrics.snapshot();
    assert_eq!(snap.decode_failures, 2);
    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert!(letters
        .iter()
        .all(|l| l.last_error.starts_with("cannot decode")));
    assert_eq!(letters[0].payload, serde_json::json!("not json at all"));
    assert_eq!(letters[0].object_id, None);
    assert_eq!(letters[1].payload["type"], "test.v9");
    running.stop().await.unwrap();
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let spec = paystream_nats::ConsumerSpec {
        max_deliver: 1,
        ..fast_spec(Stream::PaymentCommands, "confirm", CONFIRM)
    };
    let running = start(&nats, spec, handler.clone());
    nats.publish_cmd(CONFIRM, &TestCommand::new("pi_p", Action::Panic))
        .await;
    running
        .wait_until("dead-lettered", |s| s.dead_lettered == 1)
        .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_messages_in_hand() {
    let nats = TestNats::new().await;
    let handler = Arc::new(TestHandler::new());
    let started = handler.recorder.clone();
    let running = start(
        &nats,
        fast_spec(Stream::PaymentCommands, "confirm", CONFIRM),
        handler.clone(),
    );
    for i in 0..3 {
        nats.publish_cmd(
            CONFIRM,
            &TestCommand::new(&format!("pi_s{i}"), Action::SlowAck),
        )
        .await;
    }
    eventually(Duration::from_secs(5), "all three started", || {
        let r = started.clone();
        async move { r.seen_count() == 3 }
    })
    .await;
    assert!(handler.recorder.finished.lock().unwrap().is_empty());
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();
    // The loop returned only after the handlers finished and their messages were acked.
    assert_eq!(handler.recorder.finished.lock().unwrap().len(), 3);
    assert_eq!(metrics.snapshot().acked, 3);
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);
}

#[tokio::test]
async fn run_fails_fast_when_the_stream_is_missing() {
    let nats = TestNats::new().await;
    nats.js
        .delete_stream(nats.topology.stream_name(Stream::ProviderEvents))
        .await
        .unwrap();
    let running = start(
        &nats,
        fast_spec(
            Stream::ProviderEvents,
            "provider",
            "cmd.provider_event.process",
        ),
        Arc::new(TestHandler::new()),
    );
    let result = tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .expect("returns at once")
        .unwrap();
    assert!(
        matches!(result, Err(NatsError::StreamMissing(_))),
        "{result:?}"
    );
}

/// Fetches one message and never acks it: a worker that crashed mid-message.
async fn fetch_and_abandon(consumer: &PullConsumer) {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    batch.next().await.expect("a message").expect("delivered");
}

#[tokio::test]
async fn the_watch_dead_letters_what_a_crashed_worker_left_behind() {
    let nats = TestNats::new().await;
    let spec = paystream_nats::ConsumerSpec {
        max_deliver: 1,
        ack_wait: Duration::from_millis(300),
        ..fast_spec(Stream::PaymentCommands, "confirm", CONFIRM)
    };
    let stream = nats.stream(Stream::PaymentCommands).await;
    let raw: PullConsumer = stream
        .create_consumer(spec.consumer_config(&nats.topology))
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let watch = tokio::spawn({
        let (client, js, topology, shutdown) = (
            nats.client.clone(),
            nats.js.clone(),
            nats.topology.clone(),
            shutdown.clone(),
        );
        async move {
            max_deliveries::run_watch(
                &client,
                &js,
                &topology,
                Stream::PaymentCommands,
                "confirm",
                shutdown,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    nats.publish_cmd(CONFIRM, &TestCommand::new("pi_c", Action::Ack))
        .await;
    fetch_and_abandon(&raw).await;
    // A healthy worker keeps pulling; that is when JetStream notices the expired delivery,
    // sees max_deliver used up and publishes the advisory.
    let handler = Arc::new(TestHandler::new());
    let running = start(&nats, spec, handler.clone());

    eventually(Duration::from_secs(5), "moved to the dead letters", || {
        let nats = &nats;
        async move { nats.count(Stream::DeadLetters).await == 1 }
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "deleted from the work queue",
        || {
            let nats = &nats;
            async move { nats.count(Stream::PaymentCommands).await == 0 }
        },
    )
    .await;
    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(letters[0].last_error, MAX_DELIVERIES_REASON);
    assert_eq!(letters[0].deliveries, 1);
    assert_eq!(letters[0].origin_subject, CONFIRM);
    assert_eq!(handler.recorder.seen_count(), 0, "never redelivered");

    running.stop().await.unwrap();
    shutdown.cancel();
    watch.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_sweep_finds_a_message_whose_advisory_nobody_heard() {
    let nats = TestNats::new().await;
    let spec = paystream_nats::ConsumerSpec {
        max_deliver: 1,
        ack_wait: Duration::from_millis(200),
        ..fast_spec(Stream::PaymentCommands, "confirm", CONFIRM)
    };
    let mut sweeper = StrandedSweeper::new(Stream::PaymentCommands, "confirm");
    // No consumer yet: nothing to do.
    assert_eq!(sweeper.sweep(&nats.js, &nats.topology).await.unwrap(), 0);

    let stream = nats.stream(Stream::PaymentCommands).await;
    let raw: PullConsumer = stream
        .create_consumer(spec.consumer_config(&nats.topology))
        .await
        .unwrap();
    nats.publish_cmd(CONFIRM, &TestCommand::new("pi_lost", Action::Ack))
        .await;
    // Another subject in the same stream, pending for a different consumer: not ours.
    nats.publish_cmd(
        "cmd.payment.capture",
        &TestCommand::new("pi_other", Action::Ack),
    )
    .await;
    fetch_and_abandon(&raw).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next pull makes JetStream give the message up; no watch is running.
    let mut batch = raw
        .batch()
        .max_messages(1)
        .expires(Duration::from_millis(200))
        .messages()
        .await
        .unwrap();
    assert!(batch.next().await.is_none(), "not redelivered");

    assert_eq!(
        sweeper.sweep(&nats.js, &nats.topology).await.unwrap(),
        0,
        "one sighting is not enough"
    );
    assert_eq!(sweeper.sweep(&nats.js, &nats.topology).await.unwrap(), 1);
    assert_eq!(sweeper.sweep(&nats.js, &nats.topology).await.unwrap(), 0);
    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].last_error, STRANDED_REASON);
    assert_eq!(letters[0].origin_subject, CONFIRM);
    assert_eq!(
        nats.count(Stream::PaymentCommands).await,
        1,
        "the capture stays"
    );

    // A limits stream is never swept: nothing there is stranded by being unacked.
    let mut events = StrandedSweeper::new(Stream::Events, "fanout");
    assert_eq!(events.sweep(&nats.js, &nats.topology).await.unwrap(), 0);
}
