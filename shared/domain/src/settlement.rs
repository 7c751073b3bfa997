//! Settlement reports and their reconciliation as data: a report line parsed strictly, the
//! discrepancy kinds of docs/api.md, and [`compare`], which decides what one line says about
//! our books. No I/O here; the scheduler's settlement job streams the report and asks the
//! database, then asks this.

use chrono::{DateTime, Utc};

use super::money::Currency;
use super::DomainError;

/// The report's header row, in this order (docs/acquirer.md).
pub const REPORT_HEADER: [&str; 9] = [
    "payout_id",
    "type",
    "reference",
    "acquirer_id",
    "currency",
    "gross",
    "fee",
    "net",
    "created_at",
];

/// The longest reference or id a line may carry; ours are far shorter.
const MAX_ID_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineType {
    Charge,
    Refund,
    Chargeback,
    ChargebackReversal,
}

impl LineType {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "charge" => LineType::Charge,
            "refund" => LineType::Refund,
            "chargeback" => LineType::Chargeback,
            "chargeback_reversal" => LineType::ChargebackReversal,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LineType::Charge => "charge",
            LineType::Refund => "refund",
            LineType::Chargeback => "chargeback",
            LineType::ChargebackReversal => "chargeback_reversal",
        }
    }

    /// The balance transaction's reporting category this line settles.
    pub fn reporting_category(self) -> &'static str {
        match self {
            LineType::Charge => "charge",
            LineType::Refund => "refund",
            LineType::Chargeback => "dispute",
            LineType::ChargebackReversal => "dispute_reversal",
        }
    }
}

/// One line of a report, parsed: every field present and well formed, `net = gross - fee`, and
/// the line belongs to the report it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    pub line_type: LineType,
    pub reference: String,
    pub acquirer_id: String,
    /// As written: a currency we do not know is still a line to compare, not a parse error.
    pub currency: String,
    pub gross: i64,
    pub fee: i64,
    pub net: i64,
    pub created_at: DateTime<Utc>,
}

/// Why a report cannot be read. The report is then applied not at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the header row is {found:?}, not the report's columns")]
    Header { found: String },
    #[error("line {line}: {reason}")]
    Line { line: u64, reason: String },
}

impl ReportLine {
    /// Parses the fields of data line `line` (1-based, after the header) of payout
    /// `payout_id`'s report.
    pub fn parse(fields: &[&str], line: u64, payout_id: &str) -> Result<Self, ReportError> {
        let bad = |reason: String| ReportError::Line { line, reason };
        let [payout, kind, reference, acquirer_id, currency, gross, fee, net, created_at] = fields
        else {
            return Err(bad(format!(
                "{} fields, not {}",
                fields.len(),
                REPORT_HEADER.len()
            )));
        };
        if *payout != payout_id {
            return Err(bad("the line belongs to another payout".into()));
        }
        let line_type = LineType::parse(kind).ok_or_else(|| bad("unknown line type".into()))?;
        let id = |raw: &str, name: &str| {
            if raw.is_empty() || raw.len() > MAX_ID_LEN || raw.chars().any(char::is_control) {
                Err(bad(format!("`{name}` is empty or malformed")))
            } else {
                Ok(raw.to_owned())
            }
        };
        let number = |raw: &str, name: &str| {
            raw.parse::<i64>()
                .map_err(|_| bad(format!("`{name}` is not a whole number of minor units")))
        };
        let (gross, fee, net) = (
            number(gross, "gross")?,
            number(fee, "fee")?,
            number(net, "net")?,
        );
        if gross.checked_sub(fee) != Some(net) {
            return Err(bad("`net` is not `gross - fee`".into()));
        }
        if currency.is_empty()
            || currency.len() > 8
            || !currency.bytes().all(|b| b.is_ascii_lowercase())
        {
            return Err(bad("`currency` is not a currency code".into()));
        }
        let created_at = DateTime::parse_from_rfc3339(created_at)
            .map_err(|_| bad("`created_at` is not an RFC 3339 time".into()))?
            .with_timezone(&Utc);
        Ok(ReportLine {
            line_type,
            reference: id(reference, "reference")?,
            acquirer_id: id(acquirer_id, "acquirer_id")?,
            currency: (*currency).to_owned(),
            gross,
            fee,
            net,
            created_at,
        })
    }
}

/// Checks the header row.
pub fn check_header(fields: &[&str]) -> Result<(), ReportError> {
    if fields == REPORT_HEADER {
        Ok(())
    } else {
        Err(ReportError::Header {
            found: fields.join(","),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscrepancyKind {
    MissingInReport,
    UnknownInReport,
    AmountMismatch,
    FeeMismatch,
    CurrencyMismatch,
    DuplicateInReport,
}

impl DiscrepancyKind {
    pub const ALL: [DiscrepancyKind; 6] = [
        DiscrepancyKind::MissingInReport,
        DiscrepancyKind::UnknownInReport,
        DiscrepancyKind::AmountMismatch,
        DiscrepancyKind::FeeMismatch,
        DiscrepancyKind::CurrencyMismatch,
        DiscrepancyKind::DuplicateInReport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiscrepancyKind::MissingInReport => "missing_in_report",
            DiscrepancyKind::UnknownInReport => "unknown_in_report",
            DiscrepancyKind::AmountMismatch => "amount_mismatch",
            DiscrepancyKind::FeeMismatch => "fee_mismatch",
            DiscrepancyKind::CurrencyMismatch => "currency_mismatch",
            DiscrepancyKind::DuplicateInReport => "duplicate_in_report",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscrepancyStatus {
    Open,
    Resolved,
}

impl DiscrepancyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscrepancyStatus::Open => "open",
            DiscrepancyStatus::Resolved => "resolved",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "open" => Some(DiscrepancyStatus::Open),
            "resolved" => Some(DiscrepancyStatus::Resolved),
            _ => None,
        }
    }

    /// The one move there is: an open discrepancy is resolved, once.
    pub fn resolve(self) -> Result<Self, DomainError> {
        match self {
            DiscrepancyStatus::Open => Ok(DiscrepancyStatus::Resolved),
            DiscrepancyStatus::Resolved => Err(DomainError::new(
                "invalid_state_transition",
                None,
                "this discrepancy is already resolved",
            )),
        }
    }
}

/// What our books hold for the object a line names: its balance transaction, and the
/// acquirer's id we recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booked {
    pub amount: i64,
    pub fee: i64,
    pub currency: Currency,
    pub acquirer_id: Option<String>,
    /// Already settled, by an earlier report or an earlier line of this one.
    pub settled: bool,
}

/// One difference between a line and our books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: DiscrepancyKind,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// What one line comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The line settles our balance transaction; `findings` are its differences (none when it
    /// matched exactly). Our books decide what moves; the differences are filed, never used to
    /// adjust the ledger.
    Settle { findings: Vec<Finding> },
    /// The line cannot settle anything: unknown to us, or already settled (a duplicate).
    Flag(Finding),
}

/// Compares a line with what we booked for its reference (`None`: nothing).
pub fn compare(line: &ReportLine, booked: Option<&Booked>) -> Verdict {
    let Some(booked) = booked else {
        return Verdict::Flag(Finding {
            kind: DiscrepancyKind::UnknownInReport,
            expected: None,
            actual: Some(format!("{} {}", line.gross, line.currency)),
        });
    };
    if booked.acquirer_id.as_deref() != Some(line.acquirer_id.as_str()) {
        // Our object exists, but the acquirer names a charge or refund we never made for it.
        return Verdict::Flag(Finding {
            kind: DiscrepancyKind::UnknownInReport,
            expected: booked.acquirer_id.clone(),
            actual: Some(line.acquirer_id.clone()),
        });
    }
    if booked.settled {
        return Verdict::Flag(Finding {
            kind: DiscrepancyKind::DuplicateInReport,
            expected: None,
            actual: Some(line.acquirer_id.clone()),
        });
    }
    let mut findings = Vec::new();
    if booked.currency.code() != line.currency {
        findings.push(Finding {
            kind: DiscrepancyKind::CurrencyMismatch,
            expected: Some(booked.currency.code().to_owned()),
            actual: Some(line.currency.clone()),
        });
    }
    if booked.amount != line.gross {
        findings.push(Finding {
            kind: DiscrepancyKind::AmountMismatch,
            expected: Some(booked.amount.to_string()),
            actual: Some(line.gross.to_string()),
        });
    }
    if booked.fee != line.fee {
        findings.push(Finding {
            kind: DiscrepancyKind::FeeMismatch,
            expected: Some(booked.fee.to_string()),
            actual: Some(line.fee.to_string()),
        });
    }
    Verdict::Settle { findings }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-01-02T03:04:05.678Z";

    fn fields(gross: &str, fee: &str, net: &str) -> Vec<String> {
        ["apo_1", "charge", "pi_1", "ch_1", "usd", gross, fee, net, T]
            .map(str::to_owned)
            .to_vec()
    }

    fn parse(f: &[String]) -> Result<ReportLine, ReportError> {
        let refs: Vec<&str> = f.iter().map(String::as_str).collect();
        ReportLine::parse(&refs, 1, "apo_1")
    }

    #[test]
    fn a_good_line_parses() {
        let line = parse(&fields("1099", "62", "1037")).unwrap();
        assert_eq!(line.line_type, LineType::Charge);
        assert_eq!((line.gross, line.fee, line.net), (1099, 62, 1037));
        assert_eq!(line.reference, "pi_1");
        let refund = ReportLine::parse(
            &[
                "apo_1", "refund", "re_1", "rf_1", "jpy", "-300", "0", "-300", T,
            ],
            2,
            "apo_1",
        )
        .unwrap();
        assert_eq!(refund.line_type.reporting_category(), "refund");
        check_header(&REPORT_HEADER).unwrap();
        assert!(check_header(&["payout_id", "type"]).is_err());
    }

    #[test]
    fn anything_malformed_is_refused_with_its_line() {
        let cases: Vec<Vec<String>> = vec![
            fields("10.99", "62", "1037"),
            fields("1099", "", "1037"),
            fields("1099", "62", "1036"),
            fields("9223372036854775807", "-1", "0"),
            {
                let mut f = fields("1099", "62", "1037");
                f[1] = "bonus".into();
                f
            },
            {
                let mut f = fields("1099", "62", "1037");
                f[0] = "apo_2".into();
                f
            },
            {
                let mut f = fields("1099", "62", "1037");
                f[4] = "US D".into();
                f
            },
            {
                let mut f = fields("1099", "62", "1037");
                f[8] = "yesterday".into();
                f
            },
            {
                let mut f = fields("1099", "62", "1037");
                f[2] = String::new();
                f
            },
            {
                let mut f = fields("1099", "62", "1037");
                f.pop();
                f
            },
        ];
        for case in cases {
            let err = parse(&case).unwrap_err();
            assert!(
                matches!(err, ReportError::Line { line: 1, .. }),
                "{case:?}: {err}"
            );
        }
    }

    fn booked() -> Booked {
        Booked {
            amount: 1099,
            fee: 62,
            currency: Currency::parse("usd").unwrap(),
            acquirer_id: Some("ch_1".into()),
            settled: false,
        }
    }

    fn kinds(v: &Verdict) -> Vec<DiscrepancyKind> {
        match v {
            Verdict::Settle { findings } => findings.iter().map(|f| f.kind).collect(),
            Verdict::Flag(f) => vec![f.kind],
        }
    }

    #[test]
    fn each_difference_is_its_own_kind() {
        let line = parse(&fields("1099", "62", "1037")).unwrap();
        assert_eq!(
            compare(&line, Some(&booked())),
            Verdict::Settle { findings: vec![] }
        );
        assert_eq!(
            kinds(&compare(&line, None)),
            [DiscrepancyKind::UnknownInReport]
        );
        let other = Booked {
            acquirer_id: Some("ch_2".into()),
            ..booked()
        };
        assert_eq!(
            kinds(&compare(&line, Some(&other))),
            [DiscrepancyKind::UnknownInReport]
        );
        let settled = Booked {
            settled: true,
            ..booked()
        };
        assert_eq!(
            kinds(&compare(&line, Some(&settled))),
            [DiscrepancyKind::DuplicateInReport]
        );
        let skewed = parse(&fields("1100", "62", "1038")).unwrap();
        let v = compare(&skewed, Some(&booked()));
        assert_eq!(kinds(&v), [DiscrepancyKind::AmountMismatch]);
        let Verdict::Settle { findings } = v else {
            unreachable!()
        };
        assert_eq!(findings[0].expected.as_deref(), Some("1099"));
        assert_eq!(findings[0].actual.as_deref(), Some("1100"));
        let fee = parse(&fields("1099", "63", "1036")).unwrap();
        assert_eq!(
            kinds(&compare(&fee, Some(&booked()))),
            [DiscrepancyKind::FeeMismatch]
        );
        let mut eur = fields("1099", "62", "1037");
        eur[4] = "eur".into();
        let eur = parse(&eur).unwrap();
        assert_eq!(
            kinds(&compare(&eur, Some(&booked()))),
            [DiscrepancyKind::CurrencyMismatch]
        );
    }

    #[test]
    fn kinds_and_statuses_round_trip() {
        for kind in DiscrepancyKind::ALL {
            assert_eq!(DiscrepancyKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DiscrepancyKind::parse("nope"), None);
        for s in [DiscrepancyStatus::Open, DiscrepancyStatus::Resolved] {
            assert_eq!(DiscrepancyStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DiscrepancyStatus::parse("x"), None);
        assert_eq!(
            DiscrepancyStatus::Open.resolve().unwrap(),
            DiscrepancyStatus::Resolved
        );
        assert!(DiscrepancyStatus::Resolved.resolve().is_err());
        for t in ["charge", "refund", "chargeback", "chargeback_reversal"] {
            assert_eq!(LineType::parse(t).unwrap().as_str(), t);
        }
        assert_eq!(LineType::Chargeback.reporting_category(), "dispute");
        assert_eq!(
            LineType::ChargebackReversal.reporting_category(),
            "dispute_reversal"
        );
    }
}
