//! The one way a worker process is wired: its stop policy.

use std::time::Duration;

use paystream_nats::consumer::{ConsumerSpec, DeliveryInfo, Handler, Outcome};
use paystream_nats::topology::Stream;
use paystream_tests::spawn_app;
use paystream_workers::runtime::{WorkerError, WorkerProcess};

/// A step that acks whatever it gets.
struct Idle;

#[paystream_nats::async_trait]
impl Handler for Idle {
    type Command = serde_json::Value;

    async fn handle(&self, _cmd: serde_json::Value, _delivery: &DeliveryInfo) -> Outcome {
        Outcome::Ack
    }
}

const STOPS_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_consumer_that_cannot_run_stops_the_whole_process() {
    let app = spawn_app().await;
    let config = (*app.config).clone();
    // A filter outside the stream's subjects: the server refuses the consumer for good.
    let misfit = ConsumerSpec::new(Stream::PaymentCommands, "misfit", "evt.>");
    let healthy = ConsumerSpec::new(Stream::ProviderEvents, "idle", "cmd.provider_event.>");
    let process = WorkerProcess::connect(&config, 2)
        .await
        .unwrap()
        .consumer(healthy, Idle)
        .consumer(misfit, Idle);
    let result = tokio::time::timeout(STOPS_WITHIN, process.run(app.shutdown.child_token()))
        .await
        .expect("the healthy consumer kept the process alive");
    assert!(matches!(result, Err(WorkerError::Nats(_))), "{result:?}");
}

#[tokio::test]
async fn a_task_that_ends_stops_the_consumers_beside_it() {
    let app = spawn_app().await;
    let config = (*app.config).clone();
    let spec = ConsumerSpec::new(Stream::ProviderEvents, "idle", "cmd.provider_event.>");
    let process = WorkerProcess::connect(&config, 2)
        .await
        .unwrap()
        .consumer(spec, Idle)
        .task(|_stop| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        });
    let result = tokio::time::timeout(STOPS_WITHIN, process.run(app.shutdown.child_token()))
        .await
        .expect("the consumer outlived the task");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn shutdown_stops_every_part() {
    let app = spawn_app().await;
    let config = (*app.config).clone();
    let spec = ConsumerSpec::new(Stream::ProviderEvents, "idle", "cmd.provider_event.>");
    let stop = app.shutdown.child_token();
    let process = WorkerProcess::connect(&config, 2)
        .await
        .unwrap()
        .consumer(spec, Idle)
        .task(|stop| async move {
            stop.cancelled().await;
            Ok(())
        });
    let running = tokio::spawn(process.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.is_finished());
    stop.cancel();
    let result = tokio::time::timeout(STOPS_WITHIN, running)
        .await
        .expect("a part ignored shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
