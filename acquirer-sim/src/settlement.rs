//! Settlement: the acquirer pays out what it captured, less its fees and what it refunded, and
//! publishes a report per payout. `POST /sim/settle` (and the timer, every
//! [`crate::SimConfig::settle_every`]) gathers every captured charge and succeeded refund not yet
//! in a payout into one payout per currency; `GET /v1/payouts` lists payouts oldest first and
//! `GET /v1/payouts/{id}/report.csv` is the report, one line per charge or refund:
//!
//! `payout_id,type,reference,acquirer_id,currency,gross,fee,net,created_at`
//!
//! Amounts are signed minor units from the merchant's side: a charge is `+gross`, `fee` by
//! the fee schedule, `net = gross - fee`; a refund is `-amount` with no fee (fees are not
//! returned). A chargeback is a `chargeback` line under the intent (`acquirer_id` the `chb_...`
//! id): `-amount`, the dispute fee ([`crate::SimConfig::dispute_fee`]), `net = gross - fee`;
//! a won chargeback adds a `chargeback_reversal` line of `+amount` with no fee (the fee
//! stays). Each goes into one payout once.
//!
//! The settlement faults (`settlement` in `POST /sim/faults`) corrupt the report, never the
//! books: an item that was dropped from a report is still settled and never reported again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use paystream_domain::fees::FeeSchedule;
use paystream_domain::money::{Amount, Currency};
pub use paystream_domain::settlement::{LineType, REPORT_HEADER};
use poem::http::StatusCode;
use poem::web::{Data, Path, Query};
use poem::{handler, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Reply;
use crate::books::new_id;
use crate::disputes::ChargebackStatus;
use crate::faults::{roll, SettlementFaults};
use crate::ledger::{ChargeStatus, Ledger, RefundStatus};
use crate::Sim;

/// How many payouts one `GET /v1/payouts` answers at most.
const MAX_PAGE: usize = 100;

/// A payout arrives at the bank two days after the acquirer settles (T+2).
const ARRIVAL_DAYS: i64 = 2;

/// One line of a report as published (possibly corrupted by a fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    pub line_type: LineType,
    /// The caller's object: a payment intent id for a charge, a refund id for a refund.
    pub reference: String,
    /// The acquirer's object: `ch_...` or `rf_...`.
    pub acquirer_id: String,
    pub currency: &'static str,
    pub gross: i64,
    pub fee: i64,
    pub net: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Payout {
    pub id: String,
    pub currency: &'static str,
    /// The sum of the report's `net` column: what the report says was paid.
    pub amount: i64,
    pub lines: Vec<ReportLine>,
    pub arrival_date: NaiveDate,
    pub created_at: DateTime<Utc>,
    /// The report ends in a line no reader can parse (the `malformedRate` fault).
    pub garbled: bool,
}

impl Payout {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "currency": self.currency,
            "amount": self.amount,
            "lines": self.lines.len(),
            "arrivalDate": self.arrival_date.to_string(),
            "createdAt": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    /// The report as CSV with its header row.
    pub fn report_csv(&self) -> Result<Vec<u8>, csv::Error> {
        // Flexible only so the malformed fault can write its short line.
        let mut out = csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(Vec::with_capacity(64 + self.lines.len() * 128));
        out.write_record(REPORT_HEADER)?;
        for line in &self.lines {
            out.write_record([
                self.id.as_str(),
                line.line_type.as_str(),
                line.reference.as_str(),
                line.acquirer_id.as_str(),
                line.currency,
                &line.gross.to_string(),
                &line.fee.to_string(),
                &line.net.to_string(),
                &line
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ])?;
        }
        if self.garbled {
            out.write_record([self.id.as_str(), "charge", "cut off"])?;
        }
        out.into_inner().map_err(|e| e.into_error().into())
    }
}

/// The fee the acquirer takes for capturing `amount` minor units of `currency`.
fn fee_for(fees: &FeeSchedule, amount: i64, currency: &str) -> i64 {
    // Both were parsed when the charge was made, so neither fallback is ever taken.
    let Ok(currency) = Currency::parse(currency) else {
        return 0;
    };
    fees.fee(Amount::from_stored(amount), currency)
        .minor_units()
}

/// Takes everything not yet settled off the books: the true lines, grouped by currency.
fn gather(
    ledger: &mut Ledger,
    fees: &FeeSchedule,
    dispute_fee: i64,
    now: DateTime<Utc>,
) -> BTreeMap<&'static str, Vec<ReportLine>> {
    let mut by_currency: BTreeMap<&'static str, Vec<ReportLine>> = BTreeMap::new();
    let mut taken = Vec::new();
    for charge in ledger.charges(None) {
        let captured = matches!(
            charge.status,
            ChargeStatus::Captured | ChargeStatus::Refunded
        );
        if !captured || charge.amount_captured == 0 || ledger.is_settled(&charge.id) {
            continue;
        }
        let gross = charge.amount_captured;
        let fee = fee_for(fees, gross, charge.currency);
        by_currency
            .entry(charge.currency)
            .or_default()
            .push(ReportLine {
                line_type: LineType::Charge,
                reference: charge.reference.clone(),
                acquirer_id: charge.id.clone(),
                currency: charge.currency,
                gross,
                fee,
                net: gross - fee,
                created_at: charge.created_at,
            });
        taken.push(charge.id.clone());
    }
    for refund in ledger.all_refunds() {
        if refund.status != RefundStatus::Succeeded || ledger.is_settled(&refund.id) {
            continue;
        }
        by_currency
            .entry(refund.currency)
            .or_default()
            .push(ReportLine {
                line_type: LineType::Refund,
                reference: refund.reference.clone(),
                acquirer_id: refund.id.clone(),
                currency: refund.currency,
                gross: -refund.amount,
                fee: 0,
                net: -refund.amount,
                created_at: refund.created_at,
            });
        taken.push(refund.id.clone());
    }
    // Sorted so a report lists chargebacks in a stable order.
    let mut chargebacks: Vec<_> = ledger.chargebacks.all().collect();
    chargebacks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    for chargeback in chargebacks {
        let lines = by_currency.entry(chargeback.currency).or_default();
        if !ledger.is_settled(&chargeback.id) {
            let gross = -chargeback.amount;
            lines.push(ReportLine {
                line_type: LineType::Chargeback,
                reference: chargeback.reference.clone(),
                acquirer_id: chargeback.id.clone(),
                currency: chargeback.currency,
                gross,
                fee: dispute_fee,
                net: gross - dispute_fee,
                created_at: chargeback.created_at,
            });
            taken.push(chargeback.id.clone());
        }
        // The reversal is its own settled item, keyed apart from the chargeback.
        let reversal = format!("{}:reversal", chargeback.id);
        if chargeback.status == ChargebackStatus::Won && !ledger.is_settled(&reversal) {
            lines.push(ReportLine {
                line_type: LineType::ChargebackReversal,
                reference: chargeback.reference.clone(),
                acquirer_id: chargeback.id.clone(),
                currency: chargeback.currency,
                gross: chargeback.amount,
                fee: 0,
                net: chargeback.amount,
                created_at: now,
            });
            taken.push(reversal);
        }
    }
    // A currency whose chargebacks were all settled before gets no empty payout.
    by_currency.retain(|_, lines| !lines.is_empty());
    for id in taken {
        ledger.mark_settled(id);
    }
    by_currency
}

/// The report as the faults make it: lines dropped, skewed or repeated, and maybe one line
/// for a charge that never existed (under the reference of a real line, when there is one,
/// so the receiver can tell whose report it spoiled).
fn corrupt(lines: Vec<ReportLine>, faults: &SettlementFaults, rng: &mut StdRng) -> Vec<ReportLine> {
    let mut out = Vec::with_capacity(lines.len());
    let first = lines.first().cloned();
    for mut line in lines {
        if roll(rng, faults.drop_per_million) {
            continue;
        }
        if roll(rng, faults.amount_skew_per_million) {
            line.gross += 1;
            line.net += 1;
        }
        if roll(rng, faults.fee_skew_per_million) {
            line.fee += 1;
            line.net -= 1;
        }
        let repeat = roll(rng, faults.duplicate_per_million);
        if repeat {
            out.push(line.clone());
        }
        out.push(line);
    }
    if let Some(model) = first {
        if roll(rng, faults.extra_per_million) {
            out.push(ReportLine {
                line_type: LineType::Charge,
                acquirer_id: new_id("ch"),
                gross: 1000,
                fee: 59,
                net: 941,
                ..model
            });
        }
    }
    out
}

impl Sim {
    /// Settles everything not yet in a payout: one new payout per currency, each with its
    /// report published. Returns the new payouts (none when there was nothing to settle).
    pub fn settle(&self) -> Vec<Payout> {
        // Draw a private generator first: the chaos and ledger locks are never held together.
        let (faults, mut rng) = {
            let mut chaos = self.chaos();
            (
                chaos.faults.settlement,
                StdRng::seed_from_u64(chaos.rng.gen()),
            )
        };
        let now = Utc::now();
        let mut ledger = self.ledger();
        let gathered = gather(&mut ledger, &self.config.fees, self.config.dispute_fee, now);
        let mut made = Vec::new();
        for (currency, lines) in gathered {
            let lines = corrupt(lines, &faults, &mut rng);
            let payout = Payout {
                id: new_id("apo"),
                currency,
                amount: lines.iter().map(|l| l.net).sum(),
                lines,
                arrival_date: (now + TimeDelta::days(ARRIVAL_DAYS)).date_naive(),
                created_at: now,
                garbled: roll(&mut rng, faults.malformed_per_million),
            };
            tracing::info!(payout = %payout.id, currency, lines = payout.lines.len(), amount = payout.amount, "settled");
            ledger.insert_payout(payout.clone());
            made.push(payout);
        }
        made
    }

    /// Settles every `every` until shutdown (the first time one period after start).
    pub(crate) fn start_settlement_timer(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let sim = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = sim.shutdown.cancelled() => break,
                    _ = ticks.tick() => { sim.settle(); }
                }
            }
        });
    }
}

#[handler]
pub(crate) fn settle_now(Data(sim): Data<&Arc<Sim>>) -> Reply {
    let data: Vec<Value> = sim.settle().iter().map(Payout::to_json).collect();
    Reply::ok(json!({ "data": data }))
}

#[derive(Deserialize)]
pub(crate) struct PayoutsQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/payouts?after=<id>&limit=`: payouts oldest first, those after `after` only
/// (a cursor the acquirer does not know is a 404, so a caller can start over), at most `limit`
/// (1..=100, default 100).
#[handler]
pub(crate) fn list_payouts(Data(sim): Data<&Arc<Sim>>, Query(q): Query<PayoutsQuery>) -> Reply {
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => MAX_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Reply::invalid(
                "parameter_invalid",
                Some("limit"),
                "`limit` must be a whole number from 1 to 100",
            )
        }
    };
    let ledger = sim.ledger();
    let payouts = ledger.payouts();
    let start = match q.after.as_deref() {
        None | Some("") => 0,
        Some(after) => match payouts.iter().position(|p| p.id == after) {
            Some(i) => i + 1,
            None => {
                return Reply::error(StatusCode::NOT_FOUND, "resource_missing", "No such payout.")
            }
        },
    };
    let page = &payouts[start..];
    let data: Vec<Value> = page.iter().take(limit).map(Payout::to_json).collect();
    Reply::ok(json!({ "data": data, "hasMore": page.len() > limit }))
}

/// `GET /v1/payouts/{id}/report.csv`.
#[handler]
pub(crate) fn report(Data(sim): Data<&Arc<Sim>>, Path(id): Path<String>) -> Response {
    // Copied out so the books are not locked while the body is written.
    let payout = sim.ledger().payouts().iter().find(|p| p.id == id).cloned();
    let Some(payout) = payout else {
        return poem::IntoResponse::into_response(Reply::error(
            StatusCode::NOT_FOUND,
            "resource_missing",
            "No such payout.",
        ));
    };
    match payout.report_csv() {
        Ok(body) => Response::builder()
            .content_type("text/csv; charset=utf-8")
            .body(body),
        Err(e) => {
            tracing::error!(error = %e, "cannot write a report");
            poem::IntoResponse::into_response(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "report_failed",
                "The report could not be written.",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(reference: &str) -> ReportLine {
        ReportLine {
            line_type: LineType::Charge,
            reference: reference.into(),
            acquirer_id: format!("ch_{reference}"),
            currency: "usd",
            gross: 1000,
            fee: 59,
            net: 941,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn faults_at_full_rate_always_apply() {
        let mut rng = StdRng::seed_from_u64(3);
        let lines = vec![line("a"), line("b")];
        let none = corrupt(lines.clone(), &SettlementFaults::default(), &mut rng);
        assert_eq!(none, lines);

        let all = |f: fn(&mut SettlementFaults)| {
            let mut faults = SettlementFaults::default();
            f(&mut faults);
            corrupt(lines.clone(), &faults, &mut StdRng::seed_from_u64(3))
        };
        assert!(all(|f| f.drop_per_million = 1_000_000).is_empty());
        let skewed = all(|f| f.amount_skew_per_million = 1_000_000);
        assert!(skewed.iter().all(|l| l.gross == 1001 && l.net == 942));
        let fee = all(|f| f.fee_skew_per_million = 1_000_000);
        assert!(fee.iter().all(|l| l.fee == 60 && l.net == 940));
        let dup = all(|f| f.duplicate_per_million = 1_000_000);
        assert_eq!(dup.len(), 4);
        assert_eq!(dup[0], dup[1]);
        let extra = all(|f| f.extra_per_million = 1_000_000);
        assert_eq!(extra.len(), 3);
        assert_eq!(extra[2].reference, "a");
        assert_ne!(extra[2].acquirer_id, "ch_a");
        assert_eq!(extra[2].gross - extra[2].fee, extra[2].net);
        // Nothing to spoil, nothing made up.
        let faults = SettlementFaults {
            extra_per_million: 1_000_000,
            ..SettlementFaults::default()
        };
        assert!(corrupt(Vec::new(), &faults, &mut rng).is_empty());
    }

    #[test]
    fn reports_quote_what_needs_quoting() {
        let payout = Payout {
            id: "apo_1".into(),
            currency: "usd",
            amount: 941,
            lines: vec![line("pi_a,\"b\"")],
            arrival_date: NaiveDate::from_ymd_opt(2026, 1, 3).unwrap(),
            created_at: Utc::now(),
            garbled: false,
        };
        let text = String::from_utf8(payout.report_csv().unwrap()).unwrap();
        let mut rows = text.lines();
        assert_eq!(rows.next().unwrap(), REPORT_HEADER.join(","));
        let row = rows.next().unwrap();
        assert!(
            row.starts_with("apo_1,charge,\"pi_a,\"\"b\"\"\",\"ch_pi_a,\"\"b\"\"\","),
            "{row}"
        );
        assert!(row.contains(",usd,1000,59,941,"), "{row}");
        assert_eq!(rows.next(), None);
        let garbled = Payout {
            garbled: true,
            ..payout
        };
        let text = String::from_utf8(garbled.report_csv().unwrap()).unwrap();
        assert_eq!(text.lines().last(), Some("apo_1,charge,cut off"));
        assert_eq!(LineType::Chargeback.as_str(), "chargeback");
        assert_eq!(LineType::ChargebackReversal.as_str(), "chargeback_reversal");
        assert_eq!(LineType::Refund.as_str(), "refund");
    }
}
