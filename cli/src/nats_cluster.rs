//! A JetStream cluster of `nats-server` processes on loopback, as `paystream up --nats-cluster`
//! and `paystream chaos --nats-cluster` start it: one config file and store directory per
//! node, every node routing to all the others, and the questions both ask the cluster (is
//! JetStream answering, who leads a stream, how many peers hold it).
//!
//! One place, so the cluster the chaos run kills is the cluster `up` runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::up;

/// The cluster sizes offered: odd, so a majority survives losing one node (3) or two (5).
pub(crate) fn parse_size(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n @ (3 | 5)) => Ok(n),
        _ => Err("a JetStream cluster here has 3 or 5 nodes".to_owned()),
    }
}

/// One node: its name (the server name JetStream reports as a stream's leader), ports and
/// files. Restarting a node with the same config brings it back with its store and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub name: String,
    pub client: u16,
    pub route: u16,
    pub conf: PathBuf,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client)
    }

    /// Starts the node's server; its stderr goes to `stderr`.
    pub fn spawn(&self, server: &Path, stderr: Stdio) -> anyhow::Result<Child> {
        Command::new(server)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting nats-server {}", self.name))
    }
}

pub(crate) fn server_binary() -> anyhow::Result<PathBuf> {
    up::find_on_path("nats-server", &[PathBuf::from("/usr/sbin")])
        .context("no nats-server was found; install it with `apt-get install nats-server`")
}

/// (client, route) ports of each node from `first` up, routes 2000 above: what `up` uses, so a
/// cluster on 4222-4224 is where a reader expects it.
pub(crate) fn consecutive_ports(first: u16, size: usize) -> anyhow::Result<Vec<(u16, u16)>> {
    (0..size)
        .map(|i| {
            let client = u16::try_from(usize::from(first) + i).ok();
            let route = client.and_then(|c| c.checked_add(2000));
            client
                .zip(route)
                .context("the cluster's ports would pass 65535; point NATS_URL lower")
        })
        .collect()
}

/// (client, route) ports nothing listens on now, all distinct: for a cluster that must not
/// meet any other broker on the machine.
pub(crate) fn free_ports(size: usize) -> anyhow::Result<Vec<(u16, u16)>> {
    // Held until all are chosen, so the same port is not handed out twice.
    let listeners = (0..size * 2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<Vec<u16>>>()?;
    Ok(ports.chunks(2).map(|p| (p[0], p[1])).collect())
}

pub(crate) fn node_config(
    name: &str,
    client: u16,
    route: u16,
    store: &Path,
    routes: &[String],
) -> String {
    format!(
        "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\n\
         jetstream {{ store_dir: \"{}\" }}\n\
         cluster {{ name: paystream, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
        store.display(),
        routes.join(", ")
    )
}

/// Writes `n1.conf`, `n2.conf`, … under `dir`, each node storing under `dir/<name>`.
pub(crate) fn write_nodes(dir: &Path, ports: &[(u16, u16)]) -> anyhow::Result<Vec<Node>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, route))| {
            let name = format!("n{}", i + 1);
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                node_config(&name, *client, *route, &dir.join(&name), &routes),
            )
            .with_context(|| format!("writing {}", conf.display()))?;
            Ok(Node {
                name,
                client: *client,
                route: *route,
                conf,
            })
        })
        .collect()
}

/// Every node, comma-separated: what `NATS_URL` gets.
pub(crate) fn seeds(nodes: &[Node]) -> String {
    nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
}

/// Waits until JetStream answers through `url` (one node or a seed list): the nodes found each
/// other and elected a meta leader.
pub(crate) async fn wait_for_jetstream(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let settings = paystream_shared::nats_settings::NatsSettings::plain(url)?;
    up::wait_until(timeout, "the NATS cluster", || async {
        match tokio::time::timeout(
            Duration::from_secs(3),
            paystream_nats::connect_with(&settings),
        )
        .await
        {
            Ok(Ok((client, _))) => {
                paystream_nats::health::account_info(&client, Duration::from_secs(2)).await
            }
            _ => false,
        }
    })
    .await
}

/// One peer of a replicated stream other than its leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub name: String,
    /// Caught up with the leader.
    pub current: bool,
    pub offline: bool,
}

/// A stream's place in the cluster, from its stream info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamCluster {
    pub leader: Option<String>,
    /// The replicas the stream's config asks for.
    pub configured: u64,
    /// The peers besides the leader.
    pub replicas: Vec<Peer>,
}

impl StreamCluster {
    /// The nodes that hold the stream: the leader and every other peer.
    pub fn peers(&self) -> u64 {
        u64::try_from(self.replicas.len()).unwrap_or(0) + u64::from(self.leader.is_some())
    }

    /// A leader, and every other peer online and caught up: losing any one node now leaves a
    /// majority that has every message.
    pub fn healthy(&self) -> bool {
        self.leader.is_some() && self.replicas.iter().all(|p| p.current && !p.offline)
    }
}

/// Reads a `$JS.API.STREAM.INFO` answer; `None` for an error answer.
pub(crate) fn parse_stream_info(info: &serde_json::Value) -> Option<StreamCluster> {
    if info.get("error").is_some() {
        return None;
    }
    let configured = info.pointer("/config/num_replicas")?.as_u64()?;
    let cluster = info.get("cluster");
    let leader = cluster
        .and_then(|c| c.get("leader"))
        .and_then(serde_json::Value::as_str)
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let replicas = cluster
        .and_then(|c| c.get("replicas"))
        .and_then(serde_json::Value::as_array)
        .map(|peers| {
            peers
                .iter()
                .filter_map(|p| {
                    let flag = |k: &str| p.get(k).and_then(serde_json::Value::as_bool);
                    Some(Peer {
                        name: p.get("name")?.as_str()?.to_owned(),
                        current: flag("current").unwrap_or(false),
                        offline: flag("offline").unwrap_or(false),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StreamCluster {
        leader,
        configured,
        replicas,
    })
}

/// Asks JetStream about `stream` (its full name, prefix included). Asked as raw JSON, as the
/// health probe does: all this needs is the leader and the peers.
pub(crate) async fn stream_cluster(
    client: &async_nats::Client,
    stream: &str,
    timeout: Duration,
) -> Option<StreamCluster> {
    let request = client.request(format!("$JS.API.STREAM.INFO.{stream}"), bytes::Bytes::new());
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(msg)) => serde_json::from_slice::<serde_json::Value>(&msg.payload)
            .ok()
            .as_ref()
            .and_then(parse_stream_info),
        _ => None,
    }
}

/// Which node a NATS kill takes: on a leader turn the node that leads the stream now, when it
/// is known; otherwise one of the nodes that do not lead it (`random` picks which), so both a
/// leader's and a follower's loss are exercised. With no leader known (an election under way)
/// any node.
pub(crate) fn choose_node(
    nodes: &[Node],
    leader: Option<&str>,
    leader_turn: bool,
    random: u64,
) -> usize {
    let leading = leader.and_then(|l| nodes.iter().position(|n| n.name == l));
    if let (true, Some(i)) = (leader_turn, leading) {
        return i;
    }
    let others: Vec<usize> = (0..nodes.len()).filter(|i| Some(*i) != leading).collect();
    let n = u64::try_from(others.len()).unwrap_or(1).max(1);
    others
        .get(usize::try_from(random % n).unwrap_or(0))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn consecutive_and_free_ports() {
        assert_eq!(
            consecutive_ports(4222, 3).unwrap(),
            [(4222, 6222), (4223, 6223), (4224, 6224)]
        );
        assert!(consecutive_ports(65_000, 3).is_err());
        let free = free_ports(5).unwrap();
        assert_eq!(free.len(), 5);
        let mut all: Vec<u16> = free.iter().flat_map(|(c, r)| [*c, *r]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 10, "every port distinct: {free:?}");
        assert_eq!(parse_size("3"), Ok(3));
        assert_eq!(parse_size("5"), Ok(5));
        assert!(parse_size("2").is_err() && parse_size("x").is_err());
    }

    #[test]
    fn every_node_routes_to_all_and_stores_under_its_name() {
        let dir = std::env::temp_dir().join(format!(
            "paystream-nats-cluster-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let nodes = write_nodes(&dir, &[(4301, 6301), (4302, 6302), (4303, 6303)]).unwrap();
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["n1", "n2", "n3"]
        );
        assert_eq!(
            seeds(&nodes),
            "nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303"
        );
        let conf = std::fs::read_to_string(&nodes[1].conf).unwrap();
        assert!(conf.contains("server_name: n2"), "{conf}");
        assert!(conf.contains("listen: \"127.0.0.1:4302\""), "{conf}");
        assert!(conf.contains("listen: \"127.0.0.1:6302\""), "{conf}");
        let store = format!("store_dir: \"{}\"", dir.join("n2").display());
        assert!(conf.contains(&store), "{conf}");
        for route in [6301, 6302, 6303] {
            assert!(
                conf.contains(&format!("\"nats-route://127.0.0.1:{route}\"")),
                "{conf}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_info_gives_the_leader_and_the_peers() {
        let info = json!({
            "config": {"name": "PAYMENT_COMMANDS", "num_replicas": 3},
            "cluster": {"name": "paystream", "leader": "n2", "replicas": [
                {"name": "n1", "current": true, "active": 1000, "lag": 0},
                {"name": "n3", "current": false, "offline": true, "active": 0},
            ]},
        });
        let s = parse_stream_info(&info).unwrap();
        assert_eq!(s.leader.as_deref(), Some("n2"));
        assert_eq!((s.configured, s.peers()), (3, 3));
        assert!(!s.healthy(), "a peer is offline");
        let mut caught_up = s.clone();
        caught_up.replicas[1] = Peer {
            name: "n3".into(),
            current: true,
            offline: false,
        };
        assert!(caught_up.healthy());
        let leaderless = parse_stream_info(&json!({
            "config": {"num_replicas": 3},
            "cluster": {"name": "paystream", "leader": "", "replicas": [{"name": "n1", "current": true}]},
        }))
        .unwrap();
        assert_eq!(
            (leaderless.leader.as_deref(), leaderless.peers()),
            (None, 1)
        );
        let single = parse_stream_info(&json!({"config": {"num_replicas": 1}})).unwrap();
        assert!(single.replicas.is_empty() && single.leader.is_none());
        assert!(parse_stream_info(&json!({"error": {"code": 404}})).is_none());
    }

    #[test]
    fn a_leader_turn_takes_the_leader_and_otherwise_any_node() {
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node {
                name: format!("n{i}"),
                client: 4300 + i,
                route: 6300 + i,
                conf: PathBuf::from(format!("n{i}.conf")),
            })
            .collect();
        assert_eq!(choose_node(&nodes, Some("n3"), true, 0), 2);
        // Otherwise never the leader, and each of the others.
        let followers: std::collections::BTreeSet<usize> = (0..30)
            .map(|r| choose_node(&nodes, Some("n3"), false, r))
            .collect();
        assert_eq!(followers, [0, 1].into());
        // No leader known (an election under way), or a name not ours: any node.
        assert_eq!(choose_node(&nodes, None, true, 5), 2);
        assert_eq!(choose_node(&nodes, Some("x"), true, 3), 0);
        let hits: std::collections::BTreeSet<usize> = (0..30)
            .map(|r| choose_node(&nodes, None, false, r))
            .collect();
        assert_eq!(hits.len(), 3, "every node can be picked");
    }
}
