use std::time::Duration;

use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use paystream_nats::topology::DUPLICATE_WINDOW;
use paystream_nats::{NatsError, Stream};

use crate::helpers::TestNats;

#[tokio::test]
async fn ensure_is_idempotent_and_creates_every_stream() {
    let nats = TestNats::new().await;
    // TestNats::new ran it once; twice more, as two processes starting would.
    nats.topology.ensure(&nats.js).await.expect("second ensure");
    nats.topology.ensure(&nats.js).await.expect("third ensure");

    for stream in Stream::ALL {
        let mut handle = nats.stream(stream).await;
        let info = handle.info().await.expect("info").clone();
        let config = info.config;
        assert_eq!(config.name, nats.topology.stream_name(stream));
        assert_eq!(
            config.subjects,
            vec![nats.topology.subject(stream.logical_subjects())]
        );
        assert_eq!(config.storage, StorageType::File);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        let expected = if stream.is_work_queue() {
            RetentionPolicy::WorkQueue
        } else {
            RetentionPolicy::Limits
        };
        assert_eq!(config.retention, expected, "{stream:?}");
    }
    let dlq = nats.stream(Stream::DeadLetters).await;
    assert_eq!(
        dlq.cached_info().config.max_age,
        Duration::from_secs(30 * 24 * 3600)
    );

    assert_eq!(nats.topology.delete_all(&nats.js).await.expect("delete"), 6);
    // Deleting what is already gone is fine.
    assert_eq!(nats.topology.delete_all(&nats.js).await.expect("delete"), 0);
}

#[tokio::test]
async fn ensure_refuses_a_conflicting_existing_stream() {
    let nats = TestNats::new().await;
    // Someone created EVENTS as a work queue; JetStream cannot change retention in place.
    let name = nats.topology.stream_name(Stream::Events);
    nats.js.delete_stream(&name).await.expect("delete");
    let mut wrong = nats.topology.stream_config(Stream::Events);
    wrong.retention = RetentionPolicy::WorkQueue;
    nats.js.create_stream(wrong).await.expect("create");
    let err = nats.topology.ensure(&nats.js).await.unwrap_err();
    assert!(
        matches!(err, NatsError::Stream { ref stream, .. } if *stream == name),
        "{err}"
    );
}

#[tokio::test]
async fn connect_reports_an_unreachable_server() {
    // Port 1 is never a NATS server.
    let err = paystream_nats::connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::Connect { .. }));
    assert!(err.to_string().contains("127.0.0.1:1"));
}
