//! A nats-server of our own, killed and restarted under a running worker and relay.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use paystream_nats::{relay, Stream, Topology};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

struct OwnServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnServer {
    async fn start() -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("paystream-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut server = OwnServer {
            port,
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".to_owned()
            } else {
                "nats-server".to_owned()
            }
        });
        let child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH or at /usr/sbin");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(10),
            "nats-server accepts connections",
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            },
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn worker_and_relay_survive_a_nats_restart() {
    let mut server = OwnServer::start().await;
    let (client, js) = paystream_nats::connect(&server.url()).await.unwrap();
    let topology = Topology::new("r_");
    topology.ensure(&js).await.unwrap();
    let nats = OwnNats {
        js: js.clone(),
        topology: topology.clone(),
    };
    let db = TestDb::new().await;

    let shutdown = CancellationToken::new();
    let handler = Arc::new(TestHandler::new());
    let metrics = Arc::new(paystream_nats::WorkerMetrics::new());
    let worker = tokio::spawn({
        let (js, topology, handler, metrics, shutdown) = (
            js.clone(),
            topology.clone(),
            handler.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let spec = fast_spec(Stream::PaymentCommands, "confirm", "cmd.payment.confirm");
        async move {
            paystream_nats::consumer::run(&js, &topology, spec, handler, metrics, shutdown).await
        }
    });
    let relay = tokio::spawn(relay::run(
        db.pool.clone(),
        js.clone(),
        topology.clone(),
        relay::Waker::new(),
        shutdown.clone(),
    ));

    let confirm = |id: &str| serde_json::to_value(TestCommand::new(id, Action::Ack)).unwrap();
    db.enqueue("cmd.payment.confirm", confirm("pi_before"))
        .await;
    eventually(Duration::from_secs(5), "handled before the restart", || {
        let m = metrics.clone();
        async move { m.snapshot().acked == 1 }
    })
    .await;

    server.kill();
    // Queued while NATS is down: the relay must keep it and publish it later.
    db.enqueue("cmd.payment.confirm", confirm("pi_during"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.unpublished().await, 1);
    assert!(!worker.is_finished() && !relay.is_finished());

    server.spawn().await;
    eventually(Duration::from_secs(15), "handled after the restart", || {
        let m = metrics.clone();
        async move { m.snapshot().acked == 2 }
    })
    .await;
    // The relay marks the row after JetStream's ack, so the worker may finish first.
    eventually(Duration::from_secs(15), "the row is marked", || {
        let db = &db;
        async move { db.unpublished().await == 0 }
    })
    .await;
    assert_eq!(handler.recorder.deliveries_of("pi_during"), vec![1]);
    assert_eq!(nats.count(Stream::PaymentCommands).await, 0);

    shutdown.cancel();
    worker.await.unwrap().unwrap();
    relay.await.unwrap().unwrap();
    drop(client);
}

struct OwnNats {
    js: async_nats::jetstream::Context,
    topology: Topology,
}

impl OwnNats {
    async fn count(&self, stream: Stream) -> u64 {
        let mut s = self
            .js
            .get_stream(self.topology.stream_name(stream))
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    }
}
