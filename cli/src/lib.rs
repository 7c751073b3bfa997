//! The operator's command: `up`, `migrate`, `keys`, `audit verify`, `ledger verify` (and, as the pipeline lands,
//! `dlq` and `bench`). Output is for people by default and JSON with `--json`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_webhooks;
pub mod chaos;
pub mod dlq;
pub mod doctor;
pub mod listen;
mod nats_cluster;
pub mod seed_history;
pub mod settlement;
pub mod up;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use paystream_shared::config::Config;
use paystream_shared::store::merchants::{self, Role};

#[derive(Debug, Parser)]
#[command(name = "paystream", version, about = "Run and operate paystream")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the whole local stack (database and broker if none answer, then every process).
    Up(up::UpArgs),
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Manage merchants' API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and replay the dead-letter stream.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Measure payments per second and confirm-to-succeeded latency against a running stack.
    Bench(bench::BenchArgs),
    /// Start a stack of its own, drive payments, refunds, 3-D Secure and webhooks through it
    /// while killing its processes and making the acquirer misbehave, then check every
    /// invariant and print them as a table; exit 1 on any violation.
    Chaos(chaos::ChaosArgs),
    /// Measure webhook deliveries per second and event-to-receipt latency against a running stack.
    BenchWebhooks(bench_webhooks::BenchWebhooksArgs),
    /// Give a merchant a long history of earlier payments, written straight into the database
    /// (intents, events, audit chains, published outbox rows, webhook deliveries, refunds and
    /// the ledger, as the running system leaves them), to benchmark against a full database.
    SeedHistory(seed_history::SeedHistoryArgs),
    /// Receive this merchant's webhooks on this machine: subscribe a local endpoint, verify
    /// and print every event, unsubscribe on Ctrl-C.
    Listen(listen::ListenArgs),
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check the double-entry ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Check this deployment's configuration as its processes will read it: TLS, secrets set
    /// and not the development ones, the database reachable by a role that is not a superuser,
    /// NATS reachable with JetStream. Prints every check; exit 1 if any fails.
    Doctor,
    /// Look at what settlement reconciliation found.
    Settlement {
        #[command(subcommand)]
        command: settlement::SettlementCommand,
    },
    /// Operate the vault.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Re-wrap every data key under the vault's current KEK (`PAYSTREAM_VAULT_KEK`), in
    /// committed batches, while the system runs. Start the vault with the new KEK and the old one
    /// as `PAYSTREAM_VAULT_KEK_PREVIOUS` first; once this reports 0 remaining, the old KEK is
    /// no longer needed. Safe to interrupt and run again.
    RotateKek {
        /// The vault's URL (default: `http://` + PAYSTREAM_VAULT_ADDR).
        #[arg(long)]
        vault_url: Option<String>,
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (and the merchant, if new): `sk_…`, or `pk_…` with `--role publishable`.
    /// The key is the last word of the last line.
    Create {
        #[arg(long)]
        merchant: String,
        #[arg(long, default_value = "admin", value_parser = ["admin", "developer", "support", "read_only", "publishable"])]
        role: String,
        /// A browser origin the publishable key may be used from (`https://shop.example`),
        /// repeatable: the vault's tokens and the client-side intent calls answer CORS for
        /// these origins only. Without one the key works from servers and the vault's card
        /// fields only.
        #[arg(long = "origin")]
        origins: Vec<String>,
    },
    /// List keys (never the secrets: only their first characters).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id (`key_...`).
    Revoke { id: String },
    /// Roll a key: print a new secret for the same merchant and role, and keep the old one
    /// working for `--expire-old-in` seconds (default 24 h), then refuse it with 401. Audited.
    Roll {
        id: String,
        #[arg(long, default_value_t = 86_400)]
        expire_old_in: u64,
    },
    /// Re-seal every value sealed outside the vault (webhook signing secrets, idempotent
    /// replay copies, dispute evidence files) under the current sealing key
    /// (`PAYSTREAM_WEBHOOK_SECRET_KEY`), in committed batches, while the system runs. Order:
    /// give every process the new key as PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS; then make it
    /// PAYSTREAM_WEBHOOK_SECRET_KEY with the old one as _PREVIOUS; run this; once it reports 0
    /// remaining, drop _PREVIOUS. Audited; safe to interrupt and run again (a second run
    /// changes nothing).
    RotateSealing {
        #[arg(long, default_value_t = 100)]
        batch_size: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk every hash chain; exit 1 naming the first bad entry if anything was edited.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// List every read of payment data and every refused call, of every merchant, oldest
    /// first: time, actor, what was read, merchant. (The vault's token use and forwards are in
    /// the vault's own audit table.)
    Access {
        /// Only entries at or after this time (RFC 3339, e.g. `2026-01-31T00:00:00Z`).
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("--since must be an RFC 3339 time: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check that every ledger transaction balances, every account's balance equals the sum of
    /// its entries, and the ledger matches the intents and refunds; exit 1 naming the first
    /// violation.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

async fn database(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let url = config.database_url.expose();
    paystream_shared::db::ensure_database(url).await?;
    let pool = paystream_shared::db::connect(url, 4).await?;
    paystream_shared::db::migrate(&pool).await?;
    Ok(pool)
}

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Doctor = cli.command {
        // The real environment, without the development default below: the doctor judges
        // what a deployment's processes will read.
        return Ok(doctor::run().await);
    }
    // Development mode unless told otherwise. `up` runs the whole stack on one machine with the
    // public development secrets and says so to what it starts; the other commands never use
    // those secrets (they sign, seal and verify nothing), so requiring them would only make an
    // operator type them for nothing.
    let config = Config::from_lookup(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| (k == paystream_shared::config::ENV_VAR).then(|| "development".to_owned()))
    })?;
    match cli.command {
        Command::Up(args) => up::run(config, args).await,
        Command::Migrate => {
            database(&config).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::RotateSealing { batch_size, json },
        } => rotate_sealing(&config, batch_size, json).await,
        Command::Keys { command } => keys(&config, command).await,
        Command::Dlq { command } => dlq::run(&config, command).await,
        Command::Bench(args) => bench::run(&config, args).await,
        Command::Chaos(args) => chaos::run(&config, args).await,
        Command::BenchWebhooks(args) => bench_webhooks::run(&config, args).await,
        Command::SeedHistory(args) => seed_history::run(&config, args).await,
        Command::Listen(args) => listen::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Audit {
            command: AuditCommand::Verify { json },
        } => audit_verify(&config, json).await,
        Command::Audit {
            command: AuditCommand::Access { since, json },
        } => audit_access(&config, since, json).await,
        Command::Ledger {
            command: LedgerCommand::Verify { json },
        } => ledger_verify(&config, json).await,
        Command::Doctor => Ok(doctor::run().await),
        Command::Settlement { command } => settlement::run(&config, command).await,
        Command::Vault {
            command:
                VaultCommand::RotateKek {
                    vault_url,
                    batch_size,
                },
        } => rotate_kek(&config, vault_url, batch_size).await,
    }
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let pool = database(config).await?;
    match command {
        KeysCommand::Create {
            merchant,
            role,
            origins,
        } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!(e.message))?;
            if !origins.is_empty() && role != Role::Publishable {
                anyhow::bail!("--origin is for publishable keys only (--role publishable)");
            }
            let origins = origins
                .iter()
                .map(|o| {
                    merchants::parse_origin(o)
                        .map_err(|e| anyhow::anyhow!("--origin {o}: {}", e.message))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut conn = pool.acquire().await?;
            let key = merchants::create_key(&mut conn, &merchant, role, None).await?;
            merchants::set_allowed_origins(&mut *conn, &key.key_id, &origins).await?;
            if !origins.is_empty() {
                println!("origins {}", origins.join(" "));
            }
            println!("merchant {} ({})", key.merchant_name, key.merchant_id);
            println!("key {} role {}", key.key_id, key.role.as_str());
            // The key is printed once, here, and stored nowhere but as a hash.
            let label = if key.role == Role::Publishable {
                "publishable key"
            } else {
                "secret key"
            };
            println!("{label}: {}", key.secret.expose());
        }
        KeysCommand::List { json } => {
            let keys = merchants::list_keys(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<38} {:<24} {:<10} {:<11} {:<9} CREATED",
                    "ID", "MERCHANT", "PREFIX", "ROLE", "STATE"
                );
                let now = chrono::Utc::now();
                for k in keys {
                    let state = k.state(now);
                    println!(
                        "{:<38} {:<24} {:<10} {:<11} {:<9} {}",
                        k.id,
                        k.merchant_name,
                        format!("{}…", k.key_prefix),
                        k.role,
                        state,
                        k.created_at.to_rfc3339()
                    );
                }
            }
        }
        KeysCommand::Roll { id, expire_old_in } => {
            let mut tx = pool.begin().await?;
            let actor = paystream_shared::audit::Actor::Operator("paystream-cli".into());
            let rolled = merchants::roll_key(
                &mut tx,
                &id,
                std::time::Duration::from_secs(expire_old_in),
                &actor,
            )
            .await?;
            let Some(rolled) = rolled else {
                eprintln!("no active key {id}");
                return Ok(ExitCode::FAILURE);
            };
            tx.commit().await?;
            println!(
                "key {} keeps working until {}, then answers 401",
                rolled.old_key_id,
                rolled.old_expires_at.to_rfc3339()
            );
            println!(
                "key {} role {}",
                rolled.new.key_id,
                rolled.new.role.as_str()
            );
            // As at creation: printed once, here, and stored nowhere but as a hash.
            println!("new key: {}", rolled.new.secret.expose());
        }
        KeysCommand::RotateSealing { .. } => unreachable!("dispatched in execute"),
        KeysCommand::Revoke { id } => {
            if merchants::revoke_key(&pool, &id).await? {
                println!("revoked {id}");
            } else {
                eprintln!("no active key {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-seals under the current sealing key what the previous one (or a value from before key
/// ids) sealed. Unlike the other commands this one seals, so it never falls back to the public
/// development key: outside development the key must be given.
async fn rotate_sealing(config: &Config, batch_size: u32, json: bool) -> anyhow::Result<ExitCode> {
    let given = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if given("PAYSTREAM_WEBHOOK_SECRET_KEY").is_none()
        && given(paystream_shared::config::ENV_VAR).as_deref() != Some("development")
    {
        anyhow::bail!(
            "set PAYSTREAM_WEBHOOK_SECRET_KEY to the new sealing key and \
             PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS to the old one, as every process has them"
        );
    }
    let pool = database(config).await?;
    let sealer = paystream_shared::webhooks::secret_box::SecretBox::from_config(config);
    let actor = paystream_shared::audit::Actor::Operator("paystream-cli".into());
    let report = paystream_shared::webhooks::rotation::rotate(
        &pool,
        &sealer,
        batch_size,
        &actor,
        |table, n| {
            if !json && n > 0 {
                println!("re-sealed {n} rows of {table}");
            }
        },
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for u in &report.unreadable {
            println!("cannot re-seal {} {}: {}", u.table, u.id, u.error);
        }
        println!(
            "done: {} rows re-sealed under sealing key {}; {} values not under it remain",
            report.total_resealed(),
            report.key_id,
            report.remaining
        );
        if report.remaining == 0 {
            println!("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS is no longer needed");
        } else if report.unreadable.is_empty() {
            println!(
                "a process still seals with the old key: give every process the new one, then run this again"
            );
        }
    }
    Ok(if report.remaining == 0 && report.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Drives the vault's re-wrap endpoint: the CLI holds neither KEK nor any card data, only the
/// service credential; the vault does the re-wrapping.
async fn rotate_kek(
    config: &Config,
    vault_url: Option<String>,
    batch_size: u32,
) -> anyhow::Result<ExitCode> {
    let token = paystream_vault::config::service_token(|k| std::env::var(k).ok())?;
    let url = vault_url.unwrap_or_else(|| format!("http://{}", config.vault_addr));
    let client =
        paystream_vault::client::VaultClient::trusting(&url, token, config.tls.ca_cert.as_deref())?;
    let total = client
        .rotate_kek(batch_size, |p| {
            println!(
                "re-wrapped {} data keys, {} remaining",
                p.rewrapped, p.remaining
            );
        })
        .await
        .with_context(|| format!("rotating the KEK through the vault at {url}"))?;
    println!("done: {total} data keys re-wrapped; every data key is wrapped by the current KEK");
    Ok(ExitCode::SUCCESS)
}

async fn ledger_verify(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let pool = database(config)
        .await
        .context("connecting to the database")?;
    // One snapshot for every check, so postings committed while it runs cannot make a
    // balance and its entries look apart.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_transactions")
        .fetch_one(&mut *tx)
        .await?;
    let verdict = paystream_shared::ledger::verify(&mut tx).await?;
    tx.rollback().await?;
    match (&verdict, json) {
        (_, true) => println!(
            "{}",
            serde_json::json!({
                "transactions": transactions,
                "ok": verdict.is_ok(),
                "firstViolation": verdict.as_ref().err().map(ToString::to_string),
            })
        ),
        (Ok(()), false) => println!(
            "ledger balanced: {transactions} transactions verified; every account equals its entries and matches the intents and refunds"
        ),
        (Err(v), false) => println!("ledger BROKEN: {v}"),
    }
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn audit_access(
    config: &Config,
    since: Option<chrono::DateTime<chrono::Utc>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pool = database(config).await?;
    let entries = paystream_shared::audit::list_access(&pool, since).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for e in &entries {
            println!(
                "{} {} {} {} {} merchant {}",
                e.created_at.to_rfc3339(),
                e.actor,
                e.action,
                e.object_type,
                e.object_id,
                e.merchant_id.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_verify(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let pool = database(config)
        .await
        .context("connecting to the database")?;
    let report = paystream_shared::audit::verify(&pool).await?;
    if json {
        let bad = report.first_bad.as_ref().map(|b| {
            serde_json::json!({"seq": b.seq, "id": b.id, "objectId": b.object_id, "reason": b.reason})
        });
        println!(
            "{}",
            serde_json::json!({"entries": report.entries, "ok": bad.is_none(), "firstBad": bad})
        );
    } else if let Some(b) = &report.first_bad {
        println!(
            "audit chain BROKEN at entry {} (seq {}, object {}): {}",
            b.id, b.seq, b.object_id, b.reason
        );
    } else {
        println!("audit chain intact: {} entries verified", report.entries);
    }
    Ok(if report.first_bad.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
