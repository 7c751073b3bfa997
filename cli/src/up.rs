//! `paystream up`: the whole stack on one machine, as child processes with the production
//! topology. It uses PostgreSQL and NATS at the configured URLs; where none answers it starts
//! its own from the binaries on this machine (under `--data-dir`), or says what to install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::nats_cluster;
use paystream_shared::config::{Config, Environment, ENV_VAR};
use paystream_shared::store::merchants;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where a PostgreSQL or NATS started by `up` keeps its data.
    #[arg(long, default_value = ".paystream")]
    pub data_dir: PathBuf,
    /// How long every process gets to answer its health check.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,
    /// Where the demo checkout page listens (default: a free port on 127.0.0.1, printed).
    #[arg(long)]
    pub demo_addr: Option<SocketAddr>,
    /// Serve the API and the vault over HTTPS only, with a certificate of a local CA made
    /// (once) under `--data-dir`/tls; every process and the simulator trust that CA.
    #[arg(long)]
    pub tls: bool,
    /// How many confirm-workers and webhook-workers to run. Replicas share one durable
    /// JetStream consumer each, so they split the work; measure with `paystream bench`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub replicas: u64,
    /// Run on a JetStream cluster of this many nodes (3 or 5) with that many replicas of
    /// every stream. When nothing answers at NATS_URL, `up` starts the nodes itself under
    /// `--data-dir`/nats-cluster, on NATS_URL's port and the ones after it.
    #[arg(long, value_parser = crate::nats_cluster::parse_size)]
    pub nats_cluster: Option<usize>,
}

/// The processes `up` runs, in start order. Names are binary names next to `paystream`.
/// The processes without an HTTP API of their own: `up` hands each a health port.
pub(crate) const WORKERS: &[&str] = &[
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
];

/// The workers `--replicas` multiplies: the two on the payment's path that scale out.
const REPLICATED: &[&str] = &["confirm-worker", "webhook-worker"];

/// What every process of a local stack is told: where the database, the broker and the API
/// are, and that webhooks may go to loopback. `up` and `paystream chaos` start their
/// processes through this one place.
pub(crate) fn stack_env<'c>(
    command: &'c mut Command,
    db_url: &str,
    nats_url: &str,
    environment: &str,
    api: &str,
) -> &'c mut Command {
    command
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "true")
        .env(ENV_VAR, environment)
        .env(
            "ACQUIRER_SIM_NOTIFY_URL",
            format!("{api}/api/provider/webhooks"),
        )
        // A finished 3-D Secure challenge sends the browser back to the API's callback.
        .env("ACQUIRER_SIM_CALLBACK_URL", api)
        .stdin(Stdio::null())
        .kill_on_drop(true)
}

/// A port nothing listens on now; the child binds it a moment later.
pub(crate) fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

const SERVICES: &[&str] = &[
    "acquirer-sim",
    "paystream-api",
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
    "vault",
];

struct Supervised {
    name: String,
    child: Child,
    /// PostgreSQL or a nats-server `up` started: what the services drain into as they stop.
    infrastructure: bool,
}

#[derive(Default)]
struct Supervisor {
    children: Vec<Supervised>,
}

impl Supervisor {
    fn adopt(&mut self, name: &str, child: Child) {
        self.children.push(Supervised {
            name: name.to_owned(),
            child,
            infrastructure: false,
        });
    }

    fn adopt_infrastructure(&mut self, name: &str, child: Child) {
        self.children.push(Supervised {
            name: name.to_owned(),
            child,
            infrastructure: true,
        });
    }

    /// The first child that exited, if any.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|s| match s.child.try_wait() {
                Ok(Some(status)) => Some((s.name.clone(), status)),
                _ => None,
            })
    }

    /// SIGTERM the services, wait, then the database and broker, wait, killing what does not
    /// stop in time. A worker stopping acks and settles what it holds, so the broker and
    /// database it talks to must still be there; signalled together, every worker hung on a
    /// broker that was gone until it was killed.
    async fn stop(&mut self) {
        for infrastructure in [false, true] {
            for s in self
                .children
                .iter()
                .rev()
                .filter(|s| s.infrastructure == infrastructure)
            {
                if let Some(pid) = s.child.id() {
                    let _ = std::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status();
                }
            }
            for s in self
                .children
                .iter_mut()
                .rev()
                .filter(|s| s.infrastructure == infrastructure)
            {
                match tokio::time::timeout(Duration::from_secs(15), s.child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        eprintln!("{} did not stop in time; killing it", s.name);
                        let _ = s.child.kill().await;
                    }
                }
            }
        }
        self.children.clear();
    }
}

pub(crate) fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the paystream binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The binaries `up` runs that are not built yet.
fn missing_binaries(dir: &Path) -> Vec<&'static str> {
    SERVICES
        .iter()
        .copied()
        .filter(|name| !dir.join(name).is_file())
        .collect()
}

/// When `paystream` runs from a workspace build (`cargo run --bin paystream -- up` builds only
/// itself), build the sibling binaries first, with the same profile, so the README's one
/// command starts the whole system.
async fn build_missing_binaries(dir: &Path) -> anyhow::Result<()> {
    let missing = missing_binaries(dir);
    if missing.is_empty() {
        return Ok(());
    }
    let profile_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let workspace = dir
        .ancestors()
        .skip(2)
        .find(|d| d.join("Cargo.toml").is_file() && d.join("cli").is_dir());
    let Some(workspace) = workspace else {
        return Ok(()); // an installed binary: start what is there
    };
    println!(
        "building {} (cargo build --workspace --bins)",
        missing.join(", ")
    );
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(workspace)
        .args(["build", "--workspace", "--bins"]);
    if profile_dir == "release" {
        cargo.arg("--release");
    }
    let status = cargo.status().await.context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --workspace --bins failed ({status})");
    }
    Ok(())
}

pub(crate) fn find_on_path(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

async fn postgres_answers(url: &str) -> bool {
    paystream_shared::db::ensure_database(url).await.is_ok()
}

async fn nats_answers(settings: &paystream_shared::nats_settings::NatsSettings) -> bool {
    tokio::time::timeout(
        Duration::from_secs(3),
        paystream_nats::connect_with(settings),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

fn host_port(url: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, hp)| hp)
        .unwrap_or(authority);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse().with_context(|| format!("bad port in {url}"))?,
        ),
        None => (host_port.to_owned(), default_port),
    };
    Ok((host, port))
}

/// The port of a NATS URL (4222 when it names none or cannot be read).
pub(crate) fn nats_port(url: &str) -> u16 {
    host_port(url, 4222).map_or(4222, |(_, port)| port)
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `program` as the `postgres` user when we are root, since the server refuses root.
fn pg_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

async fn start_postgres(sup: &mut Supervisor, data_dir: &Path, url: &str) -> anyhow::Result<()> {
    let (host, port) = host_port(url, 5432)?;
    if !is_local(&host) {
        bail!("PostgreSQL does not answer at {host}:{port}; start it or point DATABASE_URL at one that runs");
    }
    let dirs = postgres_bin_dirs();
    let (Some(initdb), Some(server)) = (
        find_on_path("initdb", &dirs),
        find_on_path("postgres", &dirs),
    ) else {
        bail!(
            "PostgreSQL does not answer at {host}:{port} and no server binaries were found.\n\
             Install them with `apt-get install postgresql` (or start your own and set DATABASE_URL)."
        );
    };
    let as_postgres = running_as_root();
    let pg_dir = std::fs::canonicalize(data_dir)?.join("postgres");
    if !pg_dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&pg_dir)?;
        if as_postgres {
            std::process::Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(data_dir)
                .status()?;
        }
        println!(
            "starting a local PostgreSQL in {} (nothing answered at {host}:{port})",
            pg_dir.display()
        );
        let status = pg_command(&initdb, as_postgres)
            .arg("-D")
            .arg(&pg_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .await
            .context("running initdb")?;
        if !status.success() {
            bail!("initdb failed ({status})");
        }
    }
    let child = pg_command(&server, as_postgres)
        .arg("-D")
        .arg(&pg_dir)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
        ])
        .arg(&pg_dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting postgres")?;
    sup.adopt_infrastructure("postgres", child);
    wait_until(Duration::from_secs(30), "PostgreSQL", || {
        postgres_answers(url)
    })
    .await
}

async fn start_nats(sup: &mut Supervisor, data_dir: &Path, url: &str) -> anyhow::Result<()> {
    let (host, port) = host_port(url, 4222)?;
    if !is_local(&host) {
        bail!("NATS does not answer at {host}:{port}; start it or point NATS_URL at one that runs");
    }
    let Some(server) = find_on_path("nats-server", &[PathBuf::from("/usr/sbin")]) else {
        bail!("NATS does not answer at {host}:{port} and no nats-server was found. Install it with `apt-get install nats-server`.");
    };
    let store = data_dir.join("nats");
    std::fs::create_dir_all(&store)?;
    println!(
        "starting a local nats-server with JetStream on {host}:{port} (nothing answered there)"
    );
    let child = Command::new(server)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server")?;
    sup.adopt_infrastructure("nats-server", child);
    let settings = paystream_shared::nats_settings::NatsSettings::plain(url)?;
    wait_until(Duration::from_secs(15), "NATS", || nats_answers(&settings)).await
}

/// Starts `size` clustered nats-server nodes on loopback: client ports from NATS_URL's first
/// port up, route ports 2000 above each, every node routing to all the others. Returns the
/// seeds as a `NATS_URL` list.
async fn start_nats_cluster(
    sup: &mut Supervisor,
    data_dir: &Path,
    url: &str,
    size: usize,
) -> anyhow::Result<String> {
    let first = url.split(',').next().unwrap_or(url);
    let (host, port) = host_port(first, 4222)?;
    if !is_local(&host) {
        bail!(
            "NATS does not answer at {url}; start your cluster or point NATS_URL at one that runs"
        );
    }
    let server = nats_cluster::server_binary()
        .with_context(|| format!("NATS does not answer at {host}:{port}"))?;
    let dir = std::fs::canonicalize(data_dir)?.join("nats-cluster");
    let nodes = nats_cluster::write_nodes(&dir, &nats_cluster::consecutive_ports(port, size)?)?;
    println!(
        "starting a local {size}-node nats-server cluster with JetStream on ports {}-{} (nothing answered at {url})",
        nodes[0].client,
        nodes[size - 1].client
    );
    for node in &nodes {
        let child = node.spawn(&server, Stdio::null())?;
        sup.adopt_infrastructure(&format!("nats-server {}", node.name), child);
    }
    let seeds = nats_cluster::seeds(&nodes);
    nats_cluster::wait_for_jetstream(&seeds, Duration::from_secs(60)).await?;
    Ok(seeds)
}

pub(crate) async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not become ready within {}s", timeout.as_secs())
}

pub(crate) async fn healthy(http: &reqwest::Client, url: &str) -> bool {
    http.get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn http_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// What `--tls` adds: the local CA, and the variables every child is given.
struct LocalTls {
    ca: paystream_shared::tls::local_ca::LocalCa,
}

impl LocalTls {
    fn ensure(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = std::fs::canonicalize(data_dir)?.join("tls");
        let (ca, made) = paystream_shared::tls::local_ca::LocalCa::ensure(&dir)
            .context("making the local certificate authority")?;
        let verb = if made { "made" } else { "using" };
        println!(
            "TLS: {verb} a local CA at {}; trust it to reach https://localhost: \
             curl --cacert {0} …, or add it to the system store \
             (cp {0} /usr/local/share/ca-certificates/paystream.crt && update-ca-certificates)",
            ca.ca_cert.display()
        );
        Ok(LocalTls { ca })
    }

    fn env(&self) -> [(&'static str, &Path); 3] {
        use paystream_shared::tls::{CA_CERT_VAR, TLS_CERT_VAR, TLS_KEY_VAR};
        [
            (TLS_CERT_VAR, &self.ca.cert),
            (TLS_KEY_VAR, &self.ca.key),
            (CA_CERT_VAR, &self.ca.ca_cert),
        ]
    }
}

/// The URL of a listener `up` started: https with `--tls`.
fn service_url(addr: SocketAddr, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        http_url(addr)
    }
}

pub async fn run(config: Config, args: UpArgs) -> anyhow::Result<ExitCode> {
    let shutdown = paystream_shared::shutdown::on_signal();
    let mut sup = Supervisor::default();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let result = start(&config, &args, &mut sup, &shutdown).await;
    let code = match result {
        Ok(()) => {
            let code = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break ExitCode::SUCCESS,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if let Some((name, status)) = sup.exited() {
                            eprintln!("{name} exited unexpectedly ({status}); stopping everything");
                            break ExitCode::FAILURE;
                        }
                    }
                }
            };
            println!("stopping");
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    sup.stop().await;
    Ok(code)
}

async fn start(
    config: &Config,
    args: &UpArgs,
    sup: &mut Supervisor,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let db_url = config.database_url.expose().clone();
    if !postgres_answers(&db_url).await {
        start_postgres(sup, &args.data_dir, &db_url).await?;
    }
    let mut nats_url = config.nats_url.clone();
    let stream_replicas = args.nats_cluster.unwrap_or(config.nats.stream_replicas);
    if !nats_answers(&config.nats).await {
        match args.nats_cluster {
            Some(size) => {
                nats_url = start_nats_cluster(sup, &args.data_dir, &config.nats_url, size).await?;
            }
            None => start_nats(sup, &args.data_dir, &config.nats_url).await?,
        }
    }
    let pool = paystream_shared::db::connect(&db_url, 2).await?;
    paystream_shared::db::migrate(&pool).await?;
    let mut conn = pool.acquire().await?;
    // Printed with the READY line, where it does not scroll away under the start-up output.
    let (key_line, merchant_id, secret_key) = match &config.bootstrap_api_key {
        Some(secret) => {
            let merchant =
                merchants::ensure_bootstrap_key(&mut conn, "bootstrap", secret.expose()).await?;
            (
                format!("bootstrap key from PAYSTREAM_BOOTSTRAP_API_KEY is an admin key of merchant {merchant}"),
                merchant,
                secret.expose().clone(),
            )
        }
        None => {
            let key =
                merchants::create_key(&mut conn, "demo", merchants::Role::Admin, None).await?;
            (
                format!(
                    "demo merchant {} admin key: {}",
                    key.merchant_id,
                    key.secret.expose()
                ),
                key.merchant_id,
                key.secret.expose().clone(),
            )
        }
    };
    // Bound now, so the demo's publishable key can name the page's origin for CORS.
    let demo_listener = bind_demo(args)?;
    let demo_url = http_url(demo_listener.local_addr()?);
    let publishable_key =
        publishable_key(&mut conn, &merchant_id, &demo_origins(&demo_url)).await?;
    drop(conn);
    pool.close().await;

    let environment = config.environment.as_str();
    if config.environment == Environment::Development {
        println!("PAYSTREAM_ENV=development: secrets not set use their public development values");
    }
    println!("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE=true for local development: webhooks may target loopback and private addresses");
    println!("PAYSTREAM_ENV=development: the vault uses its public development KEK and service credential unless PAYSTREAM_VAULT_KEK and PAYSTREAM_VAULT_SERVICE_TOKEN are set");
    let tls = args
        .tls
        .then(|| LocalTls::ensure(&args.data_dir))
        .transpose()?;
    let api = service_url(config.api_addr, tls.is_some());
    let vault = service_url(config.vault_addr, tls.is_some());
    let dir = binary_dir()?;
    build_missing_binaries(&dir).await?;
    let mut started = Vec::new();
    // Workers serve no API; each gets a health endpoint on a free port for the READY check.
    let mut worker_health = Vec::new();
    let plan = SERVICES.iter().flat_map(|name| {
        let copies = if REPLICATED.contains(name) {
            args.replicas
        } else {
            1
        };
        (0..copies).map(move |_| name)
    });
    for name in plan {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let mut command = Command::new(&path);
        if WORKERS.contains(name) {
            let addr = free_local_addr()?;
            command.env("PAYSTREAM_HEALTH_ADDR", addr.to_string());
            worker_health.push((*name, http_url(addr)));
        }
        if let Some(tls) = &tls {
            // The acquirer simulator ignores the certificate (it stays plain on loopback) but
            // trusts the CA for its notifications to the https API.
            for (var, path) in tls.env() {
                command.env(var, path);
            }
            command.env("PAYSTREAM_VAULT_URL", &vault);
        }
        let child = stack_env(&mut command, &db_url, &nats_url, environment, &api)
            .env("PAYSTREAM_STREAM_REPLICAS", stream_replicas.to_string())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        sup.adopt(name, child);
        if !started.contains(name) {
            started.push(*name);
        }
    }
    if !started.contains(&"paystream-api") {
        bail!("paystream-api was not found next to {}; build the workspace first (cargo build --workspace)", dir.display());
    }

    let http = paystream_shared::tls::client_builder(tls.as_ref().map(|t| t.ca.ca_cert.as_path()))?
        .timeout(Duration::from_secs(2))
        .build()?;
    let acquirer = config.acquirer_url.trim_end_matches('/').to_owned();
    let mut checks = vec![("paystream-api", api.clone())];
    if started.contains(&"acquirer-sim") {
        checks.push(("acquirer-sim", acquirer.clone()));
    }
    if started.contains(&"vault") {
        checks.push(("vault", vault.clone()));
    }
    if !worker_health.is_empty() {
        let list: Vec<String> = worker_health
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect();
        println!("worker health and metrics: {}", list.join(" "));
    }
    checks.extend(worker_health);
    for (name, url) in checks {
        wait_until(Duration::from_secs(args.ready_timeout_secs), name, || {
            healthy(&http, &url)
        })
        .await?;
        if let Some((name, status)) = sup.exited() {
            bail!("{name} exited during start-up ({status})");
        }
    }
    let demo_line = if started.contains(&"vault") {
        let demo = serve_demo(
            demo_listener,
            paystream_demo::DemoConfig {
                api_url: api.clone(),
                vault_url: vault.clone(),
                secret_key,
                publishable_key,
            },
            shutdown,
        )?;
        format!("demo checkout: {demo} (test card 4000002760003184 for 3-D Secure)")
    } else {
        "demo checkout: off (no vault binary)".to_owned()
    };
    println!();
    println!("{demo_line}");
    println!("{key_line}");
    println!("READY api={api} vault={vault} acquirer={acquirer}");
    Ok(())
}

/// A publishable key of the merchant whose admin key `up` prints, for the demo's page. The
/// merchant is found by id, since a bootstrap key may belong to any merchant.
async fn publishable_key(
    conn: &mut sqlx::PgConnection,
    merchant_id: &str,
    origins: &[String],
) -> anyhow::Result<String> {
    let name: String = sqlx::query_scalar("SELECT name FROM merchants WHERE id = $1")
        .bind(merchant_id)
        .fetch_one(&mut *conn)
        .await
        .context("reading the merchant of the admin key")?;
    let key = merchants::create_key(conn, &name, merchants::Role::Publishable, None).await?;
    merchants::set_allowed_origins(&mut *conn, &key.key_id, origins).await?;
    Ok(key.secret.expose().clone())
}

/// The origins a browser may show the demo under: its URL, and on loopback the same port
/// under `localhost` too, since people type either.
fn demo_origins(url: &str) -> Vec<String> {
    let mut origins = vec![url.to_owned()];
    if let Some(port) = url.strip_prefix("http://127.0.0.1:") {
        origins.push(format!("http://localhost:{port}"));
    }
    origins
}

fn bind_demo(args: &UpArgs) -> anyhow::Result<std::net::TcpListener> {
    let addr = match args.demo_addr {
        Some(addr) => addr,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the demo checkout to {addr}"))
}

/// The demo checkout runs inside `up` itself rather than as a child: it is a client of the
/// stack, not a part of it, and it needs the keys `up` just made. Returns its URL.
fn serve_demo(
    listener: std::net::TcpListener,
    config: paystream_demo::DemoConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<String> {
    let url = http_url(listener.local_addr()?);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = paystream_demo::run(listener, config, shutdown).await {
            eprintln!("the demo checkout stopped: {e}");
        }
    });
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_allowed_under_both_loopback_names() {
        assert_eq!(
            demo_origins("http://127.0.0.1:8085"),
            ["http://127.0.0.1:8085", "http://localhost:8085"]
        );
        assert_eq!(demo_origins("http://10.0.0.2:80"), ["http://10.0.0.2:80"]);
    }

    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5433/db", 5432).unwrap(),
            ("127.0.0.1".into(), 5433)
        );
        assert_eq!(
            host_port("nats://localhost", 4222).unwrap(),
            ("localhost".into(), 4222)
        );
        assert_eq!(
            host_port("postgres://u:p@db.internal/x?sslmode=disable", 5432).unwrap(),
            ("db.internal".into(), 5432)
        );
        assert!(host_port("nats://h:notaport", 4222).is_err());
        assert!(is_local("127.0.0.1") && !is_local("db.internal"));
        assert_eq!(nats_port("nats://127.0.0.1:14222"), 14222);
        assert_eq!(nats_port("nats://localhost"), 4222);
        assert_eq!(nats_port("nats://h:bad"), 4222);
    }
}
