//! `paystream settlement discrepancies`: the operator's view of what reconciliation found,
//! across every merchant, including lines that name nothing of ours (which no merchant sees).

use std::process::ExitCode;

use clap::Subcommand;

use paystream_shared::config::Config;
use paystream_shared::domain::settlement::DiscrepancyStatus;
use paystream_shared::store::settlement_discrepancies::{self as store, Filter};

#[derive(Debug, Subcommand)]
pub enum SettlementCommand {
    /// List settlement discrepancies, newest first (open ones unless `--all`).
    Discrepancies {
        /// Resolved ones too.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, command: SettlementCommand) -> anyhow::Result<ExitCode> {
    let SettlementCommand::Discrepancies { all, limit, json } = command;
    let pool = crate::database(config).await?;
    let filter = Filter {
        status: (!all).then_some(DiscrepancyStatus::Open),
        ..Filter::default()
    };
    let rows = store::list(&pool, &filter, limit.clamp(1, 10_000)).await?;
    if json {
        let data: Vec<serde_json::Value> = rows
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id, "merchantId": d.merchant_id, "payoutId": d.payout_id,
                    "acquirerPayoutId": d.acquirer_payout_id, "kind": d.kind,
                    "reference": d.reference, "acquirerId": d.acquirer_id,
                    "expected": d.expected, "actual": d.actual, "status": d.status,
                    "createdAt": d.created_at,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "data": data }));
    } else if rows.is_empty() {
        println!("no settlement discrepancies");
    } else {
        for d in &rows {
            println!(
                "{} {} {} merchant={} payout={} reference={} expected={} actual={} ({})",
                d.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                d.id,
                d.kind,
                d.merchant_id.as_deref().unwrap_or("-"),
                d.payout_id.as_deref().unwrap_or("-"),
                d.reference.as_deref().unwrap_or("-"),
                d.expected.as_deref().unwrap_or("-"),
                d.actual.as_deref().unwrap_or("-"),
                d.status,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
