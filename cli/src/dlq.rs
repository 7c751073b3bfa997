//! `paystream dlq ...`: read and replay the dead-letter stream. Every replay is an operator
//! action, so it is written to the audit log against the object the message was about.

use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;

use paystream_nats::dlq::{self, DeadLetter};
use paystream_nats::topology::{self, Topology};
use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::config::Config;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// What is there and why: id, origin, object, attempts, last error, age.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its payload.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Republish to the origin subject with a new message id, then remove it from the dead letters.
    Replay {
        /// The dead letter's id; or --all.
        id: Option<u64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete every dead letter.
    Purge {
        #[arg(long)]
        json: bool,
    },
}

fn age(dl: &DeadLetter) -> String {
    let secs = (Utc::now() - dl.dead_lettered_at).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn table(letters: &[DeadLetter]) {
    println!(
        "{:<6} {:<22} {:<36} {:>8} {:>5}  LAST ERROR",
        "ID", "ORIGIN", "OBJECT", "ATTEMPTS", "AGE"
    );
    for dl in letters {
        println!(
            "{:<6} {:<22} {:<36} {:>8} {:>5}  {}",
            dl.id,
            dl.origin_subject,
            dl.object_id.as_deref().unwrap_or("-"),
            dl.deliveries,
            age(dl),
            dl.last_error
        );
    }
    if letters.is_empty() {
        println!("(no dead letters)");
    }
}

async fn audit_replay(pool: &sqlx::PgPool, dl: &DeadLetter) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let object_id = dl
        .object_id
        .clone()
        .unwrap_or_else(|| format!("dlq:{}", dl.id));
    let merchant_id = dl
        .payload
        .get("merchantId")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    audit::append(
        &mut conn,
        NewEntry {
            merchant_id: merchant_id.as_deref(),
            object_type: "dead_letter",
            object_id: &object_id,
            action: "dead_letter.replayed",
            actor: &Actor::Operator("paystream-cli".into()),
            before: Some(serde_json::json!({"deadLetterId": dl.id, "originSubject": dl.origin_subject, "deliveries": dl.deliveries, "lastError": dl.last_error})),
            after: Some(serde_json::json!({"republishedTo": dl.origin_subject})),
        },
    )
    .await?;
    Ok(())
}

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let (_client, js) = topology::connect_with(&config.nats).await?;
    let topology = Topology::from_config(config);
    topology.ensure(&js).await?;
    match command {
        DlqCommand::List { json } => {
            let letters = dlq::list(&js, &topology).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                table(&letters);
            }
        }
        DlqCommand::Show { id, json } => {
            let Some(dl) = dlq::get(&js, &topology, id).await? else {
                eprintln!("no dead letter {id}");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&dl)?);
            } else {
                println!("id:          {}", dl.id);
                println!("origin:      {} ({})", dl.origin_subject, dl.origin_stream);
                println!("object:      {}", dl.object_id.as_deref().unwrap_or("-"));
                println!("attempts:    {}", dl.deliveries);
                println!("last error:  {}", dl.last_error);
                println!(
                    "dead since:  {} ({} ago)",
                    dl.dead_lettered_at.to_rfc3339(),
                    age(&dl)
                );
                println!(
                    "payload:     {}",
                    serde_json::to_string_pretty(&dl.payload)?
                );
            }
        }
        DlqCommand::Replay { id, all, json } => {
            let pool = paystream_shared::db::connect(config.database_url.expose(), 2).await?;
            let (replayed, failed) = match (id, all) {
                (Some(id), false) => match dlq::replay(&js, &topology, id).await {
                    Ok(dl) => (vec![dl], Vec::new()),
                    Err(e) => (Vec::new(), vec![(id, e.to_string())]),
                },
                (None, true) => {
                    let report = dlq::replay_all(&js, &topology).await?;
                    (
                        report.replayed,
                        report
                            .failed
                            .into_iter()
                            .map(|(id, e)| (id, e.to_string()))
                            .collect(),
                    )
                }
                _ => anyhow::bail!("name a dead letter id, or --all"),
            };
            for dl in &replayed {
                audit_replay(&pool, dl).await?;
            }
            if json {
                let failed: Vec<_> = failed
                    .iter()
                    .map(|(id, e)| serde_json::json!({"id": id, "error": e}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"replayed": replayed, "failed": failed})
                );
            } else {
                for dl in &replayed {
                    println!(
                        "replayed {} to {} ({})",
                        dl.id,
                        dl.origin_subject,
                        dl.object_id.as_deref().unwrap_or("-")
                    );
                }
                for (id, e) in &failed {
                    eprintln!("could not replay {id}: {e}");
                }
                if replayed.is_empty() && failed.is_empty() {
                    println!("(no dead letters)");
                }
            }
            if !failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge { json } => {
            let purged = dlq::purge(&js, &topology).await?;
            if json {
                println!("{}", serde_json::json!({"purged": purged}));
            } else {
                println!("purged {purged} dead letters");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seconds_ago: i64) -> DeadLetter {
        DeadLetter {
            id: 1,
            origin_stream: "PAYMENT_COMMANDS".into(),
            origin_subject: "cmd.payment.confirm".into(),
            origin_sequence: Some(3),
            object_id: Some("pi_1".into()),
            deliveries: 5,
            last_error: "boom".into(),
            dead_lettered_at: Utc::now() - chrono::TimeDelta::seconds(seconds_ago),
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(&letter(5)), "5s");
        assert_eq!(age(&letter(600)), "10m");
        assert_eq!(age(&letter(10_800)), "3h");
        assert_eq!(age(&letter(864_000)), "10d");
    }
}
