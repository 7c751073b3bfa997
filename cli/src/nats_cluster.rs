//! A JetStream cluster of `nats-server` processes on loopback, as `paystream up --nats-cluster`
//! and `paystream chaos --nats-cluster` start it: one config file and store directory per
//! node, every node routing to all the others, and the wait for JetStream to answer.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ports_and_sizes() {
        assert_eq!(
            consecutive_ports(4222, 3).unwrap(),
            [(4222, 6222), (4223, 6223), (4224, 6224)]
        );
        assert!(consecutive_ports(65_000, 3).is_err());
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
}
