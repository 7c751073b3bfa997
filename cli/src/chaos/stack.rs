//! The chaos run's own stack: processes it can kill by pid and start again on the same ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::up;
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

pub struct Stack {
    pub dir: PathBuf,
    pub db_name: String,
    pub db_url: String,
    server_url: String,
    pub nats_port: u16,
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
    pub async fn start(server_url: &str, seed: u64) -> anyhow::Result<Stack> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = std::env::temp_dir().join(format!("paystream-chaos-{tag}"));
        std::fs::create_dir_all(dir.join("nats")).context("making the temp dir")?;
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
            stack.spawn(name)?;
            stack.wait_ready(name).await?;
        }
        Ok(stack)
    }

    fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    fn log(&self, name: &str) -> anyhow::Result<Stdio> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        Ok(Stdio::from(file))
    }

    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
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

    async fn wait_ready(&self, name: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
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
        up::wait_until(Duration::from_secs(60), name, || up::healthy(&http, &url)).await
    }

    /// SIGKILL the process by its own pid, leave it down for `down`, start it again.
    pub async fn kill_and_restart(
        &mut self,
        name: &'static str,
        down: Duration,
    ) -> anyhow::Result<()> {
        if let Some(mut child) = self.children.remove(name) {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            let _ = child.wait().await;
        }
        tokio::time::sleep(down).await;
        self.spawn(name)?;
        self.wait_ready(name).await
    }

    /// SIGTERM every process, newest first; SIGKILL what does not stop.
    pub async fn stop(&mut self) {
        for name in PROCESSES.iter().rev() {
            if let Some(mut child) = self.children.remove(name) {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status();
                }
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
