//! PostgreSQL's own TPS ceiling, measured with `pgbench -N` on a scratch database beside the
//! run.

#[allow(unused_imports)]
use super::*;

/// The thousandths in pgbench's `tps = 1234.567890 (without initial connection time)`.
pub fn parse_pgbench_tps(output: &str) -> Option<u128> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tps = "))?;
    let number = line.strip_prefix("tps = ")?.split_whitespace().next()?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = whole.parse().ok()?;
    let mut milli = 0u128;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(3)
        .enumerate()
    {
        let d = u128::from(c.to_digit(10)?);
        milli += d * 10u128.pow(2 - u32::try_from(i).ok()?);
    }
    Some(whole * 1000 + milli)
}

pub(crate) fn find_pgbench() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian keeps the client tools of each server version under /usr/lib/postgresql/<v>/bin.
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.reverse();
    std::env::split_paths(&path)
        .chain(debian)
        .map(|d| d.join("pgbench"))
        .find(|p| p.is_file())
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq environment for `database` on the server of `database_url`. Passed through the
/// environment rather than the command line, where a password would show in the process list.
pub fn pg_env(database_url: &str, database: &str) -> anyhow::Result<Vec<(String, String)>> {
    let url = reqwest::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    let mut env = vec![("PGDATABASE".to_owned(), database.to_owned())];
    if let Some(host) = url.host_str() {
        env.push((
            "PGHOST".to_owned(),
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        ));
    }
    env.push(("PGPORT".to_owned(), url.port().unwrap_or(5432).to_string()));
    if !url.username().is_empty() {
        env.push(("PGUSER".to_owned(), percent_decode(url.username())));
    }
    if let Some(p) = url.password() {
        env.push(("PGPASSWORD".to_owned(), percent_decode(p)));
    }
    for (k, v) in url.query_pairs() {
        if k == "sslmode" {
            env.push(("PGSSLMODE".to_owned(), v.into_owned()));
        }
    }
    Ok(env)
}

/// `database_url` pointing at another database of the same server.
/// The database a DATABASE_URL names (`paystream` when it names none), to find its backends.
pub(crate) fn database_name(database_url: &str) -> String {
    reqwest::Url::parse(database_url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "paystream".to_owned())
}

pub(crate) fn with_database(database_url: &str, database: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Runs `pgbench -i`, then `pgbench -n -N -c C -j 2 -T 10` on a scratch database, which is
/// dropped afterwards whatever happened.
pub(crate) async fn pgbench(config: &Config, concurrency: u64) -> Pgbench {
    let Some(bin) = find_pgbench() else {
        return Pgbench::Skipped(
            "no pgbench on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql-client)"
                .to_owned(),
        );
    };
    let server = config.database_url.expose();
    let outcome = match pgbench_on(&bin, server, concurrency).await {
        Ok(p) => p,
        Err(e) => Pgbench::Skipped(format!("{e:#}")),
    };
    let dropped = async {
        let admin = paystream_shared::db::connect(&with_database(server, "postgres")?, 1).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {PGBENCH_DB} WITH (FORCE)"
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("could not drop the scratch database {PGBENCH_DB}: {e:#}");
    }
    outcome
}

pub(crate) async fn pgbench_on(
    bin: &Path,
    server: &str,
    concurrency: u64,
) -> anyhow::Result<Pgbench> {
    let url = with_database(server, PGBENCH_DB)?;
    paystream_shared::db::ensure_database(&url).await?;
    // pgbench opens one connection per client; leave the server a few for everyone else.
    let pool = paystream_shared::db::connect(&url, 1).await?;
    let headroom: i64 = sqlx::query_scalar(
        "SELECT current_setting('max_connections')::int8
              - current_setting('superuser_reserved_connections')::int8
              - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let cap = u64::try_from(headroom.saturating_sub(4))
        .unwrap_or(1)
        .max(1);
    let clients = concurrency.min(cap);
    let env = pg_env(server, PGBENCH_DB)?;

    let init = tokio::process::Command::new(bin)
        .args(["-i", "-q"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let run = tokio::process::Command::new(bin)
        .args(["-n", "-N"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(PGBENCH_SECS.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    match parse_pgbench_tps(&stdout) {
        Some(tps_milli) if run.status.success() => Ok(Pgbench::Ran {
            tps_milli,
            clients,
            requested: concurrency,
        }),
        _ => bail!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&run.stderr).trim()
        ),
    }
}
