//! A three-node JetStream cluster of real `nats-server` processes on loopback, for the tests
//! that kill nodes under running payments. Each node has free client and route ports and its
//! own store directory; nothing touches the shared server on 4222.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn nats_server_binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".to_owned()
        } else {
            "nats-server".to_owned()
        }
    })
}

pub struct Node {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `size` clustered nodes and waits until JetStream has elected a meta leader.
    pub async fn start(size: usize) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "paystream-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, (client, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            let conf = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: paystream, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            );
            std::fs::write(dir.join(format!("{name}.conf")), conf).expect("node config");
            nodes.push(Node {
                name,
                port: *client,
                child: None,
            });
        }
        let mut cluster = Cluster { nodes, dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.wait_for_quorum().await;
        cluster
    }

    /// Every node, comma-separated: what `NATS_URL` gets.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (Re)starts node `i` on its ports and store.
    pub fn start_node(&mut self, i: usize) {
        let conf = self.dir.join(format!("{}.conf", self.nodes[i].name));
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.nodes[i].name)))
            .expect("node log");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server on PATH or at /usr/sbin");
        let port = self.nodes[i].port;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.nodes[i].child = Some(child);
    }

    /// SIGKILLs node `i`: no goodbye to the cluster, as when a machine dies.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Waits until some running node answers a JetStream request (a meta leader exists).
    pub async fn wait_for_quorum(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let url = format!("nats://127.0.0.1:{}", node.port);
                if let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
                {
                    if paystream_nats::health::account_info(&client, Duration::from_secs(2)).await {
                        return;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster elected no JetStream leader"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node that leads `stream` now (its stream info's `cluster.leader`), once one is
    /// elected.
    pub async fn stream_leader(&self, js: &async_nats::jetstream::Context, stream: &str) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream)).await
            {
                if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), s.info()).await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        return self.index_of(&leader);
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stream} elected no leader"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
