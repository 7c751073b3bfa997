use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use paystream_nats::dlq::{self, DlqError, HEADER_ORIGIN_SUBJECT, HEADER_REPLAYED_FROM};
use paystream_nats::Stream;

use crate::helpers::*;

const REFUND: &str = "cmd.refund.process";

/// Files `n` dead letters the way workers do: through the consume loop.
async fn dead_letters(nats: &TestNats, n: usize) {
    let handler = Arc::new(TestHandler::new());
    let running = start(
        nats,
        fast_spec(Stream::RefundCommands, "refund", REFUND),
        handler,
    );
    for i in 0..n {
        nats.publish_cmd(
            REFUND,
            &TestCommand::new(&format!("re_{i}"), Action::DeadLetter),
        )
        .await;
    }
    running
        .wait_until("dead-lettered", |s| s.dead_lettered == n as u64)
        .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn list_get_replay_and_purge() {
    let nats = TestNats::new().await;
    assert!(dlq::list(&nats.js, &nats.topology)
        .await
        .unwrap()
        .is_empty());
    dead_letters(&nats, 3).await;

    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(
        letters.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let first = &letters[0];
    assert_eq!(first.origin_stream, "REFUND_COMMANDS");
    assert_eq!(first.origin_subject, REFUND);
    assert_eq!(first.object_id.as_deref(), Some("re_0"));
    assert_eq!(first.deliveries, 1);
    assert_eq!(first.last_error, "refused re_0 by the test");
    assert_eq!(first.payload["id"], "re_0");
    // What the CLI prints with --json.
    let json = serde_json::to_value(first).unwrap();
    assert_eq!(json["originSubject"], REFUND);
    assert_eq!(json["id"], 1);
    assert!(json["deadLetteredAt"].as_str().unwrap().ends_with('Z'));

    assert_eq!(
        dlq::get(&nats.js, &nats.topology, 2)
            .await
            .unwrap()
            .as_ref(),
        Some(&letters[1])
    );
    assert_eq!(dlq::get(&nats.js, &nats.topology, 99).await.unwrap(), None);

    // Replay one: back on its origin subject under a new message id, gone from the DLQ.
    let replayed = dlq::replay(&nats.js, &nats.topology, 2).await.unwrap();
    assert_eq!(replayed.object_id.as_deref(), Some("re_1"));
    let origin = nats.stream(Stream::RefundCommands).await;
    let mut info = origin.clone();
    let last = info.info().await.unwrap().state.last_sequence;
    let msg = origin.get_raw_message(last).await.unwrap();
    assert_eq!(msg.subject.as_str(), nats.topology.subject(REFUND));
    assert_eq!(msg.headers.get(HEADER_REPLAYED_FROM).unwrap().as_str(), "2");
    assert!(msg.headers.get("Nats-Msg-Id").is_some());
    let cmd: TestCommand = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(cmd.id, "re_1");
    assert_eq!(dlq::get(&nats.js, &nats.topology, 2).await.unwrap(), None);
    assert!(matches!(
        dlq::replay(&nats.js, &nats.topology, 2).await,
        Err(DlqError::NotFound(2))
    ));

    // The list skips the gap.
    let ids: Vec<u64> = dlq::list(&nats.js, &nats.topology)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, vec![1, 3]);

    let all = dlq::replay_all(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(all.replayed.len(), 2);
    assert!(all.failed.is_empty());
    assert_eq!(nats.count(Stream::RefundCommands).await, 3);
    assert!(dlq::list(&nats.js, &nats.topology)
        .await
        .unwrap()
        .is_empty());

    // A replayed command is handled again by the worker.
    let handler = Arc::new(TestHandler::new());
    let running = start(
        &nats,
        fast_spec(Stream::RefundCommands, "refund", REFUND),
        handler.clone(),
    );
    running
        .wait_until("replays consumed", |s| s.dead_lettered == 3)
        .await;
    running.stop().await.unwrap();

    assert_eq!(dlq::purge(&nats.js, &nats.topology).await.unwrap(), 3);
    assert!(dlq::list(&nats.js, &nats.topology)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(dlq::purge(&nats.js, &nats.topology).await.unwrap(), 0);
}

#[tokio::test]
async fn foreign_messages_in_the_dead_letter_stream() {
    let nats = TestNats::new().await;
    // Published by hand without our headers: the origin comes from the subject.
    nats.publish("dlq.cmd.payment.capture", r#"{"id":"pi_1"}"#)
        .await;
    // An origin no stream captures cannot be replayed.
    nats.js
        .send_publish(
            nats.topology.subject("dlq.elsewhere"),
            PublishMessage::build()
                .payload("x".into())
                .header(HEADER_ORIGIN_SUBJECT, "elsewhere.thing"),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let letters = dlq::list(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].origin_subject, "cmd.payment.capture");
    assert_eq!(letters[0].origin_stream, "PAYMENT_COMMANDS");
    assert_eq!(letters[0].deliveries, 0);
    assert_eq!(letters[0].dead_lettered_at, chrono::DateTime::UNIX_EPOCH);
    assert_eq!(letters[1].origin_stream, "");

    let report = dlq::replay_all(&nats.js, &nats.topology).await.unwrap();
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.failed.len(), 1);
    let (id, err) = &report.failed[0];
    assert_eq!(*id, 2);
    assert!(matches!(err, DlqError::NotReplayable { .. }), "{err}");
    assert_eq!(nats.count(Stream::PaymentCommands).await, 1);
}

#[tokio::test]
async fn dead_letter_functions_report_a_missing_stream() {
    let nats = TestNats::new().await;
    nats.topology.delete_all(&nats.js).await.unwrap();
    assert!(dlq::list(&nats.js, &nats.topology).await.is_err());
    assert!(dlq::get(&nats.js, &nats.topology, 1).await.is_err());
    assert!(dlq::purge(&nats.js, &nats.topology).await.is_err());
    assert!(dlq::replay_all(&nats.js, &nats.topology).await.is_err());
}
