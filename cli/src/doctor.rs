//! `paystream doctor`: checks a deployment's configuration the way its processes will read it
//! (the real environment: unset `PAYSTREAM_ENV` is production), and names everything that is
//! wrong at once, where a process would stop at the first. Exit 1 on any failure.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use paystream_shared::config::{self, Config};
use paystream_shared::tls::{self, Certificates, TlsSettings};

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// The secrets with a public development value, and that value.
fn development_secrets() -> [(&'static str, &'static str); 4] {
    [
        (
            "PAYSTREAM_WEBHOOK_SECRET_KEY",
            config::DEVELOPMENT_WEBHOOK_SECRET_KEY,
        ),
        (
            "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
            config::DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET,
        ),
        (
            "PAYSTREAM_VAULT_KEK",
            paystream_vault::config::DEVELOPMENT_KEK,
        ),
        (
            "PAYSTREAM_VAULT_SERVICE_TOKEN",
            config::DEVELOPMENT_VAULT_SERVICE_TOKEN,
        ),
    ]
}

/// Every check, in the order printed.
pub async fn checks(lookup: impl Fn(&str) -> Option<String> + Clone) -> Vec<Check> {
    let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
    let mut out = Vec::new();

    match get(config::ENV_VAR).as_deref() {
        Some("development") => out.push(Check::fail(
            "environment",
            "PAYSTREAM_ENV=development accepts the public development secrets; unset it (or set \
             production) outside a laptop",
        )),
        _ => out.push(Check::ok("environment", "production")),
    }

    for (var, public) in development_secrets() {
        out.push(match get(var) {
            None => Check::fail(var, format!("{var} is not set; set a secret of your own")),
            Some(v) if v.trim() == public => Check::fail(
                var,
                format!("{var} is the public development value; set a secret of your own"),
            ),
            Some(_) => Check::ok(var, "set, not the development value"),
        });
    }

    // What the processes would make of the rest (malformed values, half-set TLS files).
    let production = {
        let lookup = lookup.clone();
        move |k: &str| {
            if k == config::ENV_VAR {
                Some("production".to_owned())
            } else {
                lookup(k)
            }
        }
    };
    let parsed = Config::from_lookup(production.clone());
    let vault = paystream_vault::config::VaultConfig::from_lookup(production);
    match (&parsed, &vault) {
        (Ok(_), Ok(_)) => out.push(Check::ok("configuration", "every variable parses")),
        (Err(e), _) | (_, Err(e)) => out.push(Check::fail("configuration", e.to_string())),
    }

    match TlsSettings::from_lookup(&lookup) {
        Err(e) => out.push(Check::fail("tls", e.to_string())),
        Ok(settings) => {
            out.extend(listener_check(
                "tls (api)",
                "paystream-api",
                "PAYSTREAM_API_ADDR",
                get("PAYSTREAM_API_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
                &settings,
            ));
            out.extend(listener_check(
                "tls (vault)",
                "vault",
                "PAYSTREAM_VAULT_ADDR",
                get("PAYSTREAM_VAULT_ADDR").unwrap_or_else(|| "127.0.0.1:8081".into()),
                &settings,
            ));
            if let Some(ca) = &settings.ca_cert {
                out.push(match tls::root_certificates(ca) {
                    Ok(certs) => Check::ok(
                        "tls (clients)",
                        format!("{} trusted from {}", certs.len(), ca.display()),
                    ),
                    Err(e) => Check::fail("tls (clients)", e.to_string()),
                });
            }
        }
    }

    let database_url = get("DATABASE_URL").unwrap_or_else(|| config::DEFAULT_DATABASE_URL.into());
    out.push(database_check(&database_url).await);
    if let Ok(config) = &parsed {
        out.push(sealing_check(&database_url, config).await);
    }
    match paystream_shared::nats_settings::NatsSettings::from_lookup(
        &lookup,
        config::DEFAULT_NATS_URL,
    ) {
        Ok(settings) => out.push(nats_check(&settings).await),
        Err(e) => out.push(Check::fail("nats", e.to_string())),
    }
    out
}

fn listener_check(
    name: &str,
    process: &'static str,
    addr_var: &'static str,
    raw: String,
    settings: &TlsSettings,
) -> Option<Check> {
    let addr: SocketAddr = match raw.parse() {
        Ok(a) => a,
        Err(_) => {
            return Some(Check::fail(
                name,
                format!("{addr_var}={raw:?} is not a socket address"),
            ))
        }
    };
    if let Err(e) = tls::check_listener(process, addr_var, addr, settings) {
        return Some(Check::fail(name, e.to_string()));
    }
    Some(match &settings.files {
        Some(files) => match Certificates::load(files.clone()) {
            Ok(_) => Check::ok(
                name,
                format!("HTTPS on {addr} with {}", files.cert.display()),
            ),
            Err(e) => Check::fail(name, e.to_string()),
        },
        None if !settings.trusted_proxies.is_empty() => Check::ok(
            name,
            format!("plain HTTP on {addr} behind trusted proxies, which must terminate TLS"),
        ),
        None => Check::ok(name, format!("plain HTTP on loopback {addr} only")),
    })
}

async fn database_check(url: &str) -> Check {
    const NAME: &str = "database";
    let pool = match tokio::time::timeout(
        Duration::from_secs(10),
        paystream_shared::db::connect(url, 1),
    )
    .await
    {
        Ok(Ok(pool)) => pool,
        Ok(Err(e)) => return Check::fail(NAME, format!("unreachable (DATABASE_URL): {e}")),
        Err(_) => return Check::fail(NAME, "no answer within 10 s (DATABASE_URL)"),
    };
    let role: Result<(String, bool, bool, bool), sqlx::Error> = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&pool)
    .await;
    pool.close().await;
    match role {
        Err(e) => Check::fail(NAME, format!("cannot read its own role: {e}")),
        Ok((name, true, _, _)) => Check::fail(
            NAME,
            format!(
                "role {name} is a superuser: run paystream as a role of its own that is not \
                 (least privilege), e.g. CREATE ROLE paystream LOGIN PASSWORD '…' and make it \
                 the owner of the paystream database"
            ),
        ),
        Ok((name, _, true, _)) | Ok((name, _, _, true)) => Check::fail(
            NAME,
            format!("role {name} may create roles or bypass row security: drop CREATEROLE and BYPASSRLS (least privilege)"),
        ),
        Ok((name, ..)) => Check::ok(NAME, format!("reachable as {name}, not a superuser")),
    }
}

/// Values sealed outside the vault that are not under the current sealing key: while any
/// remain, retiring PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS would make them unreadable.
async fn sealing_check(url: &str, config: &Config) -> Check {
    const NAME: &str = "sealed values";
    let sealer = paystream_shared::webhooks::secret_box::SecretBox::from_config(config);
    let counted = async {
        let pool = paystream_shared::db::connect(url, 1)
            .await
            .map_err(|e| e.to_string())?;
        let counts = paystream_shared::webhooks::rotation::not_under_current(&pool, &sealer)
            .await
            .map_err(|e| e.to_string());
        pool.close().await;
        counts
    };
    match tokio::time::timeout(Duration::from_secs(10), counted).await {
        Err(_) => Check::fail(NAME, "no answer within 10 s (DATABASE_URL)"),
        Ok(Err(e)) => Check::fail(NAME, format!("cannot count them: {e}")),
        Ok(Ok(counts)) => {
            let remaining: u64 = counts.values().sum();
            if remaining == 0 {
                Check::ok(
                    NAME,
                    format!("all under the current sealing key {}", sealer.current_id()),
                )
            } else {
                let tables: Vec<String> = counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(t, n)| format!("{n} in {t}"))
                    .collect();
                Check::fail(
                    NAME,
                    format!(
                        "{remaining} not under the current sealing key {} ({}): run `paystream \
                         keys rotate-sealing` before retiring PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS",
                        sealer.current_id(),
                        tables.join(", ")
                    ),
                )
            }
        }
    }
}

async fn nats_check(settings: &paystream_shared::nats_settings::NatsSettings) -> Check {
    const NAME: &str = "nats";
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        paystream_nats::topology::connect_with(settings),
    )
    .await;
    let client = match connected {
        Ok(Ok((client, _))) => client,
        Ok(Err(e)) => return Check::fail(NAME, format!("unreachable (NATS_URL): {e}")),
        Err(_) => return Check::fail(NAME, "no answer within 10 s (NATS_URL)"),
    };
    let info = client.server_info();
    if !info.jetstream {
        return Check::fail(
            NAME,
            "reachable, but JetStream is off: start nats-server with -js",
        );
    }
    // Replicas a standalone server cannot hold: the processes would refuse to start.
    let replicas = settings.stream_replicas;
    if replicas > 1 && info.cluster.is_none() {
        return Check::fail(
            NAME,
            format!(
                "PAYSTREAM_STREAM_REPLICAS={replicas}, but {} is not part of a cluster: point \
                 NATS_URL at a cluster of at least {replicas} nodes, or set \
                 PAYSTREAM_STREAM_REPLICAS=1",
                info.server_name
            ),
        );
    }
    // Asked as raw JSON: the account's answer differs across server versions, and all this
    // needs is that JetStream answers for this account.
    let info = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    match info {
        Ok(Ok(msg)) => {
            let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            match v.get("error") {
                Some(e) => Check::fail(NAME, format!("reachable, but JetStream refused: {e}")),
                None => Check::ok(
                    NAME,
                    format!("reachable, JetStream on ({} streams)", v["streams"]),
                ),
            }
        }
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("reachable, but JetStream did not answer: {e}"),
        ),
        Err(_) => Check::fail(NAME, "reachable, but JetStream did not answer within 10 s"),
    }
}

/// Prints the report; exit 1 when anything failed.
pub async fn run() -> ExitCode {
    let report = checks(|k| std::env::var(k).ok()).await;
    for check in &report {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        println!("{mark} {:<34} {}", check.name, check.detail);
    }
    let failed = report.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all {} checks passed", report.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed", report.len());
        ExitCode::FAILURE
    }
}
