//! The chaos run's own stack: processes it can kill by pid and start again on the same ports.
//! Its broker is one nats-server, or with `--nats-cluster N` a cluster of N nodes whose
//! streams all have N replicas; then a NATS kill takes one node at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::nats_cluster::{self, Node};
use crate::up;
use paystream_nats::topology::{Stream, Topology};
use paystream_shared::store::merchants;

/// What the killer picks from. The simulator is not among them: it is the acquirer, another
/// company's system, and its books are its memory.
pub const VICTIMS: [&str; 6] = [
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
    "paystream-api",
    "nats-server",
];

/// In start order.
const PROCESSES: [&str; 7] = [
    "nats-server",
    "acquirer-sim",
    "paystream-api",
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
];

/// The cluster's nodes, their processes (`None` while one is down) and a client of the chaos
/// run's own that asks JetStream who leads.
struct Cluster {
    server: PathBuf,
    nodes: Vec<Node>,
    children: Vec<Option<Child>>,
    client: Option<async_nats::Client>,
}

/// What one NATS kill on a cluster did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKill {
    pub node: String,
    /// The node led the payment-commands stream when it was killed.
    pub was_leader: bool,
}

pub struct Stack {
    pub dir: PathBuf,
    pub db_name: String,
    pub db_url: String,
    server_url: String,
    /// The single server's port; a cluster's nodes are in `cluster`.
    nats_port: u16,
    cluster: Option<Cluster>,
    /// The stream prefix every process of the stack uses (they inherit it from this one).
    pub topology: Topology,
    pub api: String,
    pub sim: String,
    pub key: String,
    api_addr: SocketAddr,
    sim_addr: SocketAddr,
    health: BTreeMap<&'static str, SocketAddr>,
    children: BTreeMap<&'static str, Child>,
    bin: PathBuf,
    /// The simulator's own randomness (which calls fail, which notifications go astray).
    sim_seed: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(up::free_local_addr()?.port())
}

impl Stack {
    /// `cluster`: how many NATS nodes, or `None` for one plain server.
    pub async fn start(
        server_url: &str,
        seed: u64,
        prefix: &str,
        cluster: Option<usize>,
    ) -> anyhow::Result<Stack> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = std::env::temp_dir().join(format!("paystream-chaos-{tag}"));
        std::fs::create_dir_all(dir.join("nats")).context("making the temp dir")?;
        let cluster = match cluster {
            Some(size) => Some(Cluster {
                server: nats_cluster::server_binary()?,
                nodes: nats_cluster::write_nodes(
                    &dir.join("nats-cluster"),
                    &nats_cluster::free_ports(size)?,
                )?,
                children: (0..size).map(|_| None).collect(),
                client: None,
            }),
            None => None,
        };
        let replicas = cluster.as_ref().map_or(1, |c| c.nodes.len());
        let db_name = format!("paystream_chaos_{tag}");
        let db_url = crate::bench::with_database(server_url, &db_name)?;
        paystream_shared::db::ensure_database(&db_url).await?;
        let pool = paystream_shared::db::connect(&db_url, 2).await?;
        paystream_shared::db::migrate(&pool).await?;
        let mut conn = pool.acquire().await?;
        let key = merchants::create_key(&mut conn, "chaos", merchants::Role::Admin, None).await?;
        drop(conn);
        pool.close().await;
        let api_addr = up::free_local_addr()?;
        let sim_addr = up::free_local_addr()?;
        let mut health = BTreeMap::new();
        for w in up::WORKERS {
            health.insert(*w, up::free_local_addr()?);
        }
        let mut stack = Stack {
            dir,
            db_name,
            db_url,
            server_url: server_url.to_owned(),
            nats_port: free_port()?,
            cluster,
            topology: Topology::new(prefix).with_replicas(replicas),
            api: format!("http://{api_addr}"),
            sim: format!("http://{sim_addr}"),
            key: key.secret.expose().clone(),
            api_addr,
            sim_addr,
            health,
            children: BTreeMap::new(),
            bin: up::binary_dir()?,
            sim_seed: seed.to_string(),
        };
        for name in PROCESSES {
            let started = match stack.spawn(name) {
                Ok(()) => stack.wait_ready(name).await,
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                // A stack that never ran has nothing to check: its processes and database go,
                // and only the logs stay, to say why.
                stack.stop().await;
                stack.drop_database().await;
                return Err(e.context(format!("logs in {}", stack.dir.display())));
            }
        }
        Ok(stack)
    }

    /// Every node of a cluster, comma-separated, or the single server.
    pub fn nats_url(&self) -> String {
        match &self.cluster {
            Some(c) => nats_cluster::seeds(&c.nodes),
            None => format!("nats://127.0.0.1:{}", self.nats_port),
        }
    }

    /// How many NATS nodes run (1 without a cluster).
    pub fn nats_nodes(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.nodes.len())
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    fn log(&self, name: &str) -> anyhow::Result<Stdio> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        Ok(Stdio::from(file))
    }

    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.log(&format!("nats-server-{}", i + 1))?;
        if let Some(c) = &mut self.cluster {
            c.children[i] = Some(c.nodes[i].spawn(&c.server, log)?);
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
        if name == "nats-server" && self.is_cluster() {
            for i in 0..self.nats_nodes() {
                self.spawn_node(i)?;
            }
            return Ok(());
        }
        let child = if name == "nats-server" {
            let server = up::find_on_path("nats-server", &[PathBuf::from("/usr/sbin")])
                .context("no nats-server on PATH (apt-get install nats-server)")?;
            Command::new(server)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.nats_port.to_string(),
                    "-sd",
                ])
                .arg(self.dir.join("nats"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(self.log(name)?)
                .kill_on_drop(true)
                .spawn()
                .context("starting nats-server")?
        } else {
            let mut command = Command::new(self.bin.join(name));
            if let Some(addr) = self.health.get(name) {
                command.env("PAYSTREAM_HEALTH_ADDR", addr.to_string());
            }
            let (db, nats, api) = (self.db_url.clone(), self.nats_url(), self.api.clone());
            if self.is_cluster() {
                command.env(
                    paystream_shared::nats_settings::REPLICAS_VAR,
                    self.topology.replicas().to_string(),
                );
            }
            up::stack_env(&mut command, &db, &nats, "development", &api)
                .env("PAYSTREAM_API_ADDR", self.api_addr.to_string())
                .env("ACQUIRER_SIM_ADDR", self.sim_addr.to_string())
                .env("ACQUIRER_SIM_PUBLIC_URL", &self.sim)
                .env("PAYSTREAM_ACQUIRER_URL", &self.sim)
                // A hung acquirer call is given up quickly and retried with the same key.
                .env("ACQUIRER_SIM_HANG_MS", "2000")
                .env("ACQUIRER_SIM_SEED", &self.sim_seed)
                .env("PAYSTREAM_ACQUIRER_TIMEOUT_MS", "1000")
                .env("PAYSTREAM_RETRY_BASE_MS", "100")
                .env("PAYSTREAM_RATE_LIMIT_PER_SEC", "0")
                // A claim left by a killed API holds its key this long before a retry runs.
                .env("PAYSTREAM_IDEMPOTENCY_LOCK_TTL_MS", "3000")
                .env("PAYSTREAM_RECONCILE_INTERVAL_SECS", "5")
                .env("PAYSTREAM_RECONCILE_STUCK_AFTER_SECS", "20")
                .env("PAYSTREAM_DB_POOL_SIZE", "8")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(self.log(name)?)
                .spawn()
                .with_context(|| format!("starting {name} from {}", self.bin.display()))?
        };
        self.children.insert(name, child);
        Ok(())
    }

    async fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        if name == "nats-server" {
            if let Some(c) = &mut self.cluster {
                let seeds = nats_cluster::seeds(&c.nodes);
                nats_cluster::wait_for_jetstream(&seeds, Duration::from_secs(60)).await?;
                // Reconnects by itself to whichever node is up.
                let (client, _) = paystream_nats::topology::connect(&seeds).await?;
                c.client = Some(client);
                return Ok(());
            }
        }
        let url = match name {
            "nats-server" => {
                let port = self.nats_port;
                return up::wait_until(Duration::from_secs(30), name, || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                })
                .await;
            }
            "acquirer-sim" => self.sim.clone(),
            "paystream-api" => self.api.clone(),
            worker => match self.health.get(worker) {
                Some(addr) => format!("http://{addr}"),
                None => bail!("no health address for {worker}"),
            },
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if up::healthy(&http, &url).await {
                return Ok(());
            }
            // One that exited will not answer: say so now rather than after the minute.
            if let Some(Ok(Some(status))) = self.children.get_mut(name).map(Child::try_wait) {
                bail!("{name} exited during start-up ({status}); its log is {name}.log");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{name} did not become ready within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL the process by its own pid, leave it down for `down`, start it again.
    pub async fn kill_and_restart(
        &mut self,
        name: &'static str,
        down: Duration,
    ) -> anyhow::Result<()> {
        if name == "nats-server" && self.is_cluster() {
            bail!("a cluster loses one node at a time (kill_and_restart_node)");
        }
        if let Some(child) = self.children.remove(name) {
            sigkill(child).await;
        }
        tokio::time::sleep(down).await;
        self.spawn(name)?;
        self.wait_ready(name).await
    }

    /// The cluster's state of one stream, as JetStream reports it now.
    async fn stream_cluster(&self, stream: Stream) -> Option<nats_cluster::StreamCluster> {
        let client = self.cluster.as_ref()?.client.as_ref()?;
        let name = self.topology.stream_name(stream);
        nats_cluster::stream_cluster(client, &name, Duration::from_secs(2)).await
    }

    /// Waits (at most `timeout`) until every stream has a leader and all its other peers are
    /// caught up, so that killing one node now leaves a majority with every message. A node
    /// that has just come back may still be catching up; killing another then would take two.
    async fn wait_streams_healthy(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut healthy = true;
            for stream in Stream::ALL {
                if !self
                    .stream_cluster(stream)
                    .await
                    .is_some_and(|s| s.healthy())
                {
                    healthy = false;
                    break;
                }
            }
            if healthy {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A NATS kill on a cluster: one node SIGKILLed, on a leader turn the one that leads the
    /// payment-commands stream now, otherwise one that does not (`random` picks which);
    /// restarted after `down` on the same ports and store, and waited for until it answers
    /// again.
    pub async fn kill_and_restart_node(
        &mut self,
        leader_turn: bool,
        random: u64,
        down: Duration,
    ) -> anyhow::Result<NodeKill> {
        if !self.wait_streams_healthy(Duration::from_secs(60)).await {
            eprintln!(
                "chaos: the NATS streams are not all caught up after 60 s; killing a node anyway"
            );
        }
        let leader = self
            .stream_cluster(Stream::PaymentCommands)
            .await
            .and_then(|s| s.leader);
        let Some(c) = &mut self.cluster else {
            bail!("no NATS cluster to kill a node of");
        };
        let i = nats_cluster::choose_node(&c.nodes, leader.as_deref(), leader_turn, random);
        let node = c.nodes[i].clone();
        if let Some(child) = c.children[i].take() {
            sigkill(child).await;
        }
        tokio::time::sleep(down).await;
        self.spawn_node(i)?;
        // Back when it answers JetStream itself: it has rejoined the cluster's meta group.
        nats_cluster::wait_for_jetstream(&node.url(), Duration::from_secs(60)).await?;
        Ok(NodeKill {
            was_leader: leader.as_deref() == Some(node.name.as_str()),
            node: node.name,
        })
    }

    /// The nodes that hold each stream now (leader and other peers), by the stream's base
    /// name; empty without a cluster.
    pub async fn stream_peers(&self) -> BTreeMap<String, u64> {
        let mut peers = BTreeMap::new();
        if self.is_cluster() {
            self.wait_streams_healthy(Duration::from_secs(30)).await;
            for stream in Stream::ALL {
                let n = self.stream_cluster(stream).await.map_or(0, |s| s.peers());
                peers.insert(stream.base_name().to_owned(), n);
            }
        }
        peers
    }

    /// SIGTERM every process, newest first; SIGKILL what does not stop.
    pub async fn stop(&mut self) {
        for name in PROCESSES.iter().rev() {
            let mut children: Vec<Child> = self.children.remove(name).into_iter().collect();
            if *name == "nats-server" {
                if let Some(c) = &mut self.cluster {
                    c.client = None;
                    children.extend(c.children.iter_mut().filter_map(Option::take));
                }
            }
            for child in &children {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status();
                }
            }
            for mut child in children {
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Drops the database this run created and removes its temp dir.
    pub async fn remove(&self) {
        self.drop_database().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn drop_database(&self) {
        if let Ok(admin_url) = crate::bench::with_database(&self.server_url, "postgres") {
            if let Ok(pool) = paystream_shared::db::connect(&admin_url, 1).await {
                let _ = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.db_name
                ))
                .execute(&pool)
                .await;
                pool.close().await;
            }
        }
    }
}

/// SIGKILLs the child by its own pid (never a name or a group) and reaps it.
async fn sigkill(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    let _ = child.wait().await;
}
