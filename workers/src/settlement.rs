//! Settlement reconciliation, a scheduler job: fetch the acquirer's new payouts, read each
//! report through once to refuse a malformed one whole, then stream it again and apply it
//! batch by batch, in keyed (idempotent) transactions that a later run completes.
//!
//! For every line: find what our books hold for its reference (in batches, one query each, so
//! a long report never loads a merchant's history), compare (`domain::settlement::compare`),
//! settle the balance transaction it names (pending -> available, `ledger::settle`) and file
//! each difference once. Then every capture older than the settlement window that no report
//! has settled is filed `missing_in_report`; each merchant's part of the payout is recorded
//! (`payouts`), posted out of the available balance (`ledger::post_payout`) and announced
//! (`payout.paid`), and the report is marked reconciled.
//!
//! A report that cannot be read is applied not at all: the reading pass finds it before any
//! batch is applied, the report is marked `failed` with the reason, and the operator is alerted (an error log line with
//! `alert`, and [`reports_failed`]). It is tried again next round, in case the acquirer fixes
//! it. A report already reconciled is skipped, and every write is keyed (a balance transaction
//! settles once, a discrepancy has a unique key, a payout posts once), so fetching or
//! processing a report twice changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use futures::TryStreamExt;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::domain::money::Currency;
use paystream_shared::domain::settlement::{
    check_header, compare, DiscrepancyKind, Finding, ReportError, ReportLine, Verdict,
};
use paystream_shared::ledger;
use paystream_shared::outbox;
use paystream_shared::store::settlement_discrepancies::{self as discrepancies, NewDiscrepancy};
use paystream_shared::store::settlement_reports::{self as reports, SettlementReport};
use paystream_shared::store::{payouts, StoreError};

pub const ACTOR: Actor = Actor::System("settlement");
pub const EVENT_PAYOUT_PAID: &str = "payout.paid";
/// Lines matched per query.
pub const BATCH: usize = 500;
/// Reports applied per round; the next round takes the rest.
const REPORTS_PER_ROUND: i64 = 20;

static REPORTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// How many reports this process found unreadable (each attempt counts), for the operator.
pub fn reports_failed() -> u64 {
    REPORTS_FAILED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("cannot fetch from the acquirer: {0}")]
    Fetch(String),
    #[error("the acquirer's answer cannot be read: {0}")]
    Protocol(String),
    #[error("the report is malformed: {0}")]
    Malformed(#[from] ReportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The acquirer's settlement endpoints (`GET /v1/payouts`, `GET /v1/payouts/{id}/report.csv`).
#[derive(Debug, Clone)]
pub struct SettlementClient {
    base: Url,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcquirerPayout {
    pub id: String,
    pub currency: String,
    pub amount: i64,
    pub arrival_date: NaiveDate,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayoutPage {
    data: Vec<AcquirerPayout>,
    has_more: bool,
}

impl SettlementClient {
    /// `timeout` bounds connecting and each read, not a whole report: a long report streams.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, SettlementError> {
        let base = Url::parse(&format!("{}/", base_url.trim_end_matches('/')))
            .map_err(|e| SettlementError::Protocol(format!("acquirer URL: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| SettlementError::Fetch(e.to_string()))?;
        Ok(Self { base, http })
    }

    fn url(&self, path: &str) -> Result<Url, SettlementError> {
        self.base
            .join(path)
            .map_err(|e| SettlementError::Protocol(e.to_string()))
    }

    /// One page of payouts after `after`; `Ok(None)` when the acquirer does not know `after`.
    async fn page(&self, after: Option<&str>) -> Result<Option<PayoutPage>, SettlementError> {
        let mut url = self.url("v1/payouts")?;
        if let Some(after) = after {
            url.query_pairs_mut().append_pair("after", after);
        }
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| SettlementError::Fetch(e.to_string()))?;
        if resp.status() == StatusCode::NOT_FOUND && after.is_some() {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(SettlementError::Fetch(format!(
                "GET /v1/payouts answered {}",
                resp.status()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SettlementError::Fetch(e.to_string()))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SettlementError::Protocol(format!("payout list: {e}")))
    }

    async fn report(&self, payout_id: &str) -> Result<reqwest::Response, SettlementError> {
        let url = self.url(&format!("v1/payouts/{payout_id}/report.csv"))?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| SettlementError::Fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(SettlementError::Fetch(format!(
                "the report of {payout_id} answered {}",
                resp.status()
            )));
        }
        Ok(resp)
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    pub payouts_fetched: u64,
    pub reports_reconciled: u64,
    pub reports_failed: u64,
    pub discrepancies: u64,
}

/// Records every payout the acquirer published since the newest we know (from the start when
/// it does not know that one: recording is keyed, so nothing doubles).
pub async fn fetch_new(pool: &PgPool, client: &SettlementClient) -> Result<u64, SettlementError> {
    let mut cursor = reports::newest(pool).await?;
    let mut fetched = 0;
    loop {
        let Some(page) = client.page(cursor.as_deref()).await? else {
            tracing::warn!(after = ?cursor, "the acquirer does not know our newest payout; listing from the start");
            cursor = None;
            continue;
        };
        for p in &page.data {
            if reports::record(
                pool,
                &p.id,
                &p.currency,
                p.amount,
                p.arrival_date,
                p.created_at,
            )
            .await?
            {
                fetched += 1;
            }
        }
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => cursor = Some(last.id.clone()),
            _ => return Ok(fetched),
        }
    }
}

/// One round: fetch new payouts, then apply every report not yet reconciled.
pub async fn run_once(
    pool: &PgPool,
    client: &SettlementClient,
    window: TimeDelta,
) -> Result<RoundReport, SettlementError> {
    let mut round = RoundReport {
        payouts_fetched: fetch_new(pool, client).await?,
        ..RoundReport::default()
    };
    for report in reports::unfinished(pool, REPORTS_PER_ROUND).await? {
        match apply(pool, client, &report, window).await {
            Ok(Some(applied)) => {
                round.reports_reconciled += 1;
                round.discrepancies += applied.discrepancies;
            }
            Ok(None) => {}
            Err(SettlementError::Malformed(e)) => {
                round.reports_failed += 1;
                REPORTS_FAILED.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    alert = "settlement_report_malformed",
                    acquirer_payout = %report.acquirer_payout_id,
                    error = %e,
                    "a settlement report cannot be read; nothing of it was applied"
                );
                reports::mark_failed(pool, &report.acquirer_payout_id, &e.to_string()).await?;
            }
            Err(e) => {
                round.reports_failed += 1;
                tracing::warn!(acquirer_payout = %report.acquirer_payout_id, error = %e, "a settlement report could not be applied; trying again next round");
            }
        }
    }
    if round != RoundReport::default() {
        tracing::info!(?round, "settlement round finished");
    }
    Ok(round)
}

/// What applying one report did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub lines: u64,
    pub discrepancies: u64,
}

/// What the parser hands the applier.
enum Chunk {
    Lines(Vec<(u64, ReportLine)>),
    Malformed(ReportError),
    Broken(String),
}

/// Streams the report's body through the `csv` crate on a blocking thread (csv reads
/// synchronously), handing over batches of parsed lines through a small bounded channel, so at
/// most a few batches are ever in memory.
fn parse_stream(resp: reqwest::Response, payout_id: String) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(2);
    let body = resp.bytes_stream().map_err(std::io::Error::other);
    let bridge = SyncIoBridge::new(StreamReader::new(body));
    tokio::task::spawn_blocking(move || {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bridge);
        let mut record = csv::StringRecord::new();
        let fail = |e: csv::Error, line: u64| match e.kind() {
            csv::ErrorKind::Io(io) => Chunk::Broken(io.to_string()),
            _ => Chunk::Malformed(ReportError::Line {
                line,
                reason: e.to_string(),
            }),
        };
        match csv.read_record(&mut record) {
            Ok(true) => {
                let fields: Vec<&str> = record.iter().collect();
                if let Err(e) = check_header(&fields) {
                    let _ = tx.blocking_send(Chunk::Malformed(e));
                    return;
                }
            }
            Ok(false) => {
                let _ = tx.blocking_send(Chunk::Malformed(ReportError::Header {
                    found: String::new(),
                }));
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(fail(e, 0));
                return;
            }
        }
        let mut batch = Vec::with_capacity(BATCH);
        let mut n = 0;
        loop {
            match csv.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    n += 1;
                    let fields: Vec<&str> = record.iter().collect();
                    match ReportLine::parse(&fields, n, &payout_id) {
                        Ok(line) => batch.push((n, line)),
                        Err(e) => {
                            let _ = tx.blocking_send(Chunk::Malformed(e));
                            return;
                        }
                    }
                    if batch.len() == BATCH
                        && tx
                            .blocking_send(Chunk::Lines(std::mem::take(&mut batch)))
                            .is_err()
                    {
                        // The applier gave up; stop reading.
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(fail(e, n + 1));
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Chunk::Lines(batch));
        }
    });
    rx
}

/// A merchant's part of the payout while the report is applied.
struct Part {
    payout_id: String,
    /// Made by this run (not found from an earlier run that committed): only then is it
    /// announced.
    new: bool,
    amount: i64,
    lines: i64,
    matched: i64,
    discrepancies: i64,
}

struct Applier<'r> {
    report: &'r SettlementReport,
    parts: HashMap<String, Part>,
    discrepancies: u64,
    /// The balance transactions this run settled: a line naming one again is a repeat within
    /// the report, while one settled into this payout by an earlier, committed run is this same
    /// line processed again, which changes nothing. One id per settled line, so it grows with
    /// the report, never with the merchant's history.
    settled_here: HashSet<String>,
}

impl Applier<'_> {
    async fn part<'a>(
        &'a mut self,
        conn: &mut PgConnection,
        merchant_id: &str,
    ) -> Result<&'a mut Part, SettlementError> {
        if !self.parts.contains_key(merchant_id) {
            let (payout, new) = payouts::open(
                conn,
                merchant_id,
                &self.report.acquirer_payout_id,
                &self.report.currency,
                self.report.arrival_date,
            )
            .await?;
            self.parts.insert(
                merchant_id.to_owned(),
                Part {
                    payout_id: payout.id,
                    new,
                    amount: 0,
                    lines: 0,
                    matched: 0,
                    discrepancies: 0,
                },
            );
        }
        self.parts
            .get_mut(merchant_id)
            .ok_or_else(|| SettlementError::Protocol("payout part vanished".into()))
    }

    async fn file(
        &mut self,
        conn: &mut PgConnection,
        merchant_id: Option<&str>,
        key: String,
        finding: Finding,
        line: Option<&ReportLine>,
    ) -> Result<(), SettlementError> {
        let payout_id = match merchant_id {
            Some(m) => Some(self.part(conn, m).await?.payout_id.clone()),
            None => None,
        };
        let new = NewDiscrepancy {
            key,
            kind: finding.kind,
            merchant_id,
            payout_id: payout_id.as_deref(),
            acquirer_payout_id: Some(&self.report.acquirer_payout_id),
            reference: line.map(|l| l.reference.as_str()),
            acquirer_id: line.map(|l| l.acquirer_id.as_str()),
            expected: finding.expected,
            actual: finding.actual,
        };
        let filed = discrepancies::file(conn, &new, &ACTOR).await?.is_some();
        // The payout counts what its report shows, filed now or by an earlier run.
        if let Some(m) = merchant_id {
            self.part(conn, m).await?.discrepancies += 1;
        }
        if filed {
            self.discrepancies += 1;
            if merchant_id.is_none() {
                tracing::warn!(
                    alert = "settlement_line_unattributed",
                    acquirer_payout = %self.report.acquirer_payout_id,
                    kind = finding.kind.as_str(),
                    "a report line names nothing of ours"
                );
            }
        }
        Ok(())
    }

    async fn apply_batch(
        &mut self,
        conn: &mut PgConnection,
        lines: Vec<(u64, ReportLine)>,
    ) -> Result<(), SettlementError> {
        let keys: Vec<(&str, &str, &str)> = lines
            .iter()
            .map(|(_, l)| {
                (
                    l.reference.as_str(),
                    l.line_type.reporting_category(),
                    l.acquirer_id.as_str(),
                )
            })
            .collect();
        let booked = reports::booked_for(conn, &keys).await?;
        for ((n, line), found) in lines.iter().zip(booked) {
            let key = |kind: DiscrepancyKind| {
                format!("{}:{}:{n}", kind.as_str(), self.report.acquirer_payout_id)
            };
            let merchant = found.merchant_id.as_deref();
            if let Some(m) = merchant {
                let part = self.part(conn, m).await?;
                part.lines += 1;
                let again = found.settled_in.as_deref() == Some(part.payout_id.as_str())
                    && found
                        .balance_transaction_id
                        .as_ref()
                        .is_some_and(|bt| !self.settled_here.contains(bt));
                if again {
                    // Settled by this line when the report was applied before; its
                    // discrepancies, if any, were filed then under the same keys.
                    if let Some(bt) = &found.balance_transaction_id {
                        self.settled_here.insert(bt.clone());
                    }
                    let part = self.part(conn, m).await?;
                    if let Some(booked) = &found.booked {
                        part.amount += booked.amount - booked.fee;
                    }
                    part.matched += 1;
                    continue;
                }
            }
            match compare(line, found.booked.as_ref()) {
                Verdict::Flag(finding) => {
                    self.file(conn, merchant, key(finding.kind), finding, Some(line))
                        .await?;
                }
                Verdict::Settle { findings } => {
                    // `compare` settles only what it found booked, so both are present.
                    let (Some(m), Some(bt), Some(booked)) = (
                        merchant,
                        found.balance_transaction_id.as_deref(),
                        found.booked.as_ref(),
                    ) else {
                        continue;
                    };
                    let payout_id = self.part(conn, m).await?.payout_id.clone();
                    if !ledger::settle(conn, m, bt, &payout_id).await? {
                        // Settled by an earlier line of this same batch: a repeated line.
                        let finding = Finding {
                            kind: DiscrepancyKind::DuplicateInReport,
                            expected: None,
                            actual: Some(line.acquirer_id.clone()),
                        };
                        self.file(conn, merchant, key(finding.kind), finding, Some(line))
                            .await?;
                        continue;
                    }
                    self.settled_here.insert(bt.to_owned());
                    let clean = findings.is_empty();
                    {
                        let part = self.part(conn, m).await?;
                        part.amount += booked.amount - booked.fee;
                        if clean {
                            part.matched += 1;
                        }
                    }
                    for finding in findings {
                        self.file(conn, merchant, key(finding.kind), finding, Some(line))
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Files every capture older than the window that no report has settled.
    async fn sweep_missing(
        &mut self,
        conn: &mut PgConnection,
        window: TimeDelta,
    ) -> Result<(), SettlementError> {
        let before = paystream_shared::domain::now() - window;
        let limit = i64::try_from(BATCH).unwrap_or(500);
        loop {
            let batch =
                discrepancies::missing_candidates(conn, &self.report.currency, before, limit)
                    .await?;
            if batch.is_empty() {
                return Ok(());
            }
            for unsettled in batch {
                let new_key = format!(
                    "{}:{}",
                    DiscrepancyKind::MissingInReport.as_str(),
                    unsettled.source
                );
                let finding = Finding {
                    kind: DiscrepancyKind::MissingInReport,
                    expected: Some(unsettled.amount.to_string()),
                    actual: None,
                };
                let payout_id = self
                    .part(conn, &unsettled.merchant_id)
                    .await?
                    .payout_id
                    .clone();
                let new = NewDiscrepancy {
                    key: new_key,
                    kind: finding.kind,
                    merchant_id: Some(&unsettled.merchant_id),
                    payout_id: Some(&payout_id),
                    acquirer_payout_id: Some(&self.report.acquirer_payout_id),
                    reference: Some(&unsettled.source),
                    acquirer_id: None,
                    expected: finding.expected,
                    actual: None,
                };
                if discrepancies::file(conn, &new, &ACTOR).await?.is_some() {
                    self.discrepancies += 1;
                    self.part(conn, &unsettled.merchant_id).await?.discrepancies += 1;
                }
            }
        }
    }

    /// Records each merchant's payout, posts it and announces it.
    async fn finish(self, conn: &mut PgConnection) -> Result<(), SettlementError> {
        let currency = Currency::parse(&self.report.currency).map_err(|e| {
            SettlementError::Malformed(ReportError::Line {
                line: 0,
                reason: format!("the payout's currency: {}", e.message),
            })
        })?;
        for (merchant_id, part) in self.parts {
            let payout = payouts::finish(
                conn,
                &part.payout_id,
                part.amount,
                part.lines,
                part.matched,
                part.discrepancies,
            )
            .await?;
            // Announced by the run that posts it (a payout of nothing posts nothing: by the run
            // that made it), so a report applied again announces nothing again.
            let posted_now = part.amount != 0
                && ledger::post_payout(conn, &merchant_id, currency, &payout.id, part.amount)
                    .await?
                    .is_some();
            if !(posted_now || (part.amount == 0 && part.new)) {
                continue;
            }
            let view = serde_json::to_value(payout.view())
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            audit::append(
                &mut *conn,
                NewEntry {
                    merchant_id: Some(&merchant_id),
                    object_type: "payout",
                    object_id: &payout.id,
                    action: "paid",
                    actor: &ACTOR,
                    before: None,
                    after: Some(view.clone()),
                },
            )
            .await?;
            outbox::record_event(conn, &merchant_id, EVENT_PAYOUT_PAID, &payout.id, view).await?;
        }
        Ok(())
    }
}

/// Reads the whole report once without applying anything: a malformed line anywhere refuses
/// the report before any of it is applied.
async fn validate(
    client: &SettlementClient,
    report: &SettlementReport,
) -> Result<u64, SettlementError> {
    let resp = client.report(&report.acquirer_payout_id).await?;
    let mut chunks = parse_stream(resp, report.acquirer_payout_id.clone());
    let mut lines = 0;
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Chunk::Lines(batch) => lines += batch.len() as u64,
            Chunk::Malformed(e) => return Err(SettlementError::Malformed(e)),
            Chunk::Broken(e) => return Err(SettlementError::Fetch(e)),
        }
    }
    Ok(lines)
}

/// Whether the report still needs applying (checked under its row lock).
async fn unfinished(pool: &PgPool, report: &SettlementReport) -> Result<bool, SettlementError> {
    let mut tx = pool.begin().await?;
    let open = reports::lock_unfinished(&mut tx, &report.acquirer_payout_id)
        .await?
        .is_some();
    tx.commit().await?;
    Ok(open)
}

/// Applies one report: read through once to refuse a malformed one whole, then streamed again
/// and applied batch by batch, each batch in its own transaction, and finished (missing
/// captures, payouts, `reconciled`) in a last one. Each batch's writes are keyed, so a run cut
/// off midway is completed by the next without doing anything twice; one transaction per batch
/// keeps each transaction's updates of the merchant's few ledger accounts short (in one
/// transaction for the whole report, every update of the same row adds a version the next one
/// must walk past, which grows with the square of the lines). `Ok(None)` when the report was
/// already reconciled.
pub async fn apply(
    pool: &PgPool,
    client: &SettlementClient,
    report: &SettlementReport,
    window: TimeDelta,
) -> Result<Option<Applied>, SettlementError> {
    if !unfinished(pool, report).await? {
        return Ok(None);
    }
    validate(client, report).await?;
    let resp = client.report(&report.acquirer_payout_id).await?;
    let mut chunks = parse_stream(resp, report.acquirer_payout_id.clone());
    let mut applier = Applier {
        report,
        parts: HashMap::new(),
        discrepancies: 0,
        settled_here: HashSet::new(),
    };
    let mut lines = 0;
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Chunk::Lines(batch) => {
                lines += batch.len() as u64;
                let mut tx = pool.begin().await?;
                applier.apply_batch(&mut tx, batch).await?;
                tx.commit().await?;
            }
            // The report changed under us after it validated: what was applied stays (keyed),
            // the report is marked failed and the next round completes it.
            Chunk::Malformed(e) => return Err(SettlementError::Malformed(e)),
            Chunk::Broken(e) => return Err(SettlementError::Fetch(e)),
        }
    }
    let mut tx = pool.begin().await?;
    if reports::lock_unfinished(&mut tx, &report.acquirer_payout_id)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    applier.sweep_missing(&mut tx, window).await?;
    let discrepancies = applier.discrepancies;
    applier.finish(&mut tx).await?;
    reports::mark_reconciled(
        &mut tx,
        &report.acquirer_payout_id,
        i64::try_from(lines).unwrap_or(i64::MAX),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(acquirer_payout = %report.acquirer_payout_id, lines, discrepancies, "settlement report reconciled");
    Ok(Some(Applied {
        lines,
        discrepancies,
    }))
}
