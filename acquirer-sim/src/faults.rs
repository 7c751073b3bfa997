//! How the simulator misbehaves on request (`POST /sim/faults`).
//!
//! Rates arrive as JSON numbers in 0..=1 and are turned into integer parts per million at the
//! edge, by reading the number's decimal text: the workspace keeps float arithmetic out of the
//! code, and a per-million integer compared with a uniform draw needs none.

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Number;

/// One million: a rate of 1.0.
pub const PER_MILLION: u32 = 1_000_000;

/// The longest added latency the simulator accepts, so a typo cannot wedge a test run.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// The current settings. The default is a well-behaved acquirer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Share of `/v1` calls answered 500 before anything is done.
    pub error_per_million: u32,
    /// Share of `/v1` calls that do their work and then hang before answering.
    pub timeout_per_million: u32,
    /// Added to every `/v1` call.
    pub latency_ms: u64,
    pub notifications: NotificationFaults,
    /// Above zero, refunds settle asynchronously: `POST /v1/refunds` answers `pending` and the
    /// refund settles this many milliseconds later, announced by notification.
    pub refund_settlement_ms: u64,
    /// Share of asynchronously settled refunds that fail at settlement (the amount becomes
    /// refundable again), announced as `refund.failed`.
    pub refund_failure_per_million: u32,
    pub settlement: SettlementFaults,
}

/// How the settlement reports come out wrong; applied line by line when a payout is built
/// (`settlement.rs`), except `extra`, which is rolled once per payout. The payout's books are
/// right either way: only what the report says is corrupted, as when an acquirer's reporting
/// job has a bug.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementFaults {
    /// Share of lines left out of the report.
    pub drop_per_million: u32,
    /// Share of lines whose gross (and so net) is one minor unit too high.
    pub amount_skew_per_million: u32,
    /// Share of lines whose fee is one minor unit too high (and net one too low).
    pub fee_skew_per_million: u32,
    /// Share of payouts whose report gains a line for a charge that never existed.
    pub extra_per_million: u32,
    /// Share of lines written twice.
    pub duplicate_per_million: u32,
    /// Share of reports that end in a line no reader can parse (a report cut off): a fault of
    /// the simulator's own (docs/acquirer.md), so a test can see a malformed report refused as
    /// a whole.
    pub malformed_per_million: u32,
}

/// Settings for the notifications the simulator sends back to paystream; the notification
/// sender (`notify.rs`) applies them when it sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFaults {
    /// Share of notifications sent twice, with the same id.
    pub duplicate_per_million: u32,
    /// Share of notifications never sent.
    pub drop_per_million: u32,
    /// Hold notifications briefly and send each held batch newest first.
    pub reorder: bool,
}

/// The body of `POST /sim/faults` as sent. Every field is optional; what is absent is reset to
/// its default, because the body replaces the previous settings as a whole.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsBody {
    error_rate: Option<Number>,
    timeout_rate: Option<Number>,
    latency_ms: Option<u64>,
    notifications: Option<NotificationsBody>,
    refund_settlement_ms: Option<u64>,
    refund_failure_rate: Option<Number>,
    settlement: Option<SettlementBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettlementBody {
    drop_rate: Option<Number>,
    amount_skew_rate: Option<Number>,
    fee_skew_rate: Option<Number>,
    extra_rate: Option<Number>,
    duplicate_rate: Option<Number>,
    malformed_rate: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NotificationsBody {
    duplicate_rate: Option<Number>,
    drop_rate: Option<Number>,
    reorder: Option<bool>,
}

/// A field of the faults body that is out of range; `param` names it as the client spelled it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{param}` {reason}")]
pub struct FaultsError {
    pub param: &'static str,
    pub reason: &'static str,
}

impl FaultsBody {
    pub fn into_faults(self) -> Result<Faults, FaultsError> {
        let rate = |value: Option<Number>, param: &'static str| match value {
            None => Ok(0),
            Some(n) => rate_per_million(&n).ok_or(FaultsError {
                param,
                reason: "must be a number from 0 to 1",
            }),
        };
        let latency_ms = self.latency_ms.unwrap_or(0);
        if latency_ms > MAX_LATENCY_MS {
            return Err(FaultsError {
                param: "latencyMs",
                reason: "must be at most 600000",
            });
        }
        let refund_settlement_ms = self.refund_settlement_ms.unwrap_or(0);
        if refund_settlement_ms > MAX_LATENCY_MS {
            return Err(FaultsError {
                param: "refundSettlementMs",
                reason: "must be at most 600000",
            });
        }
        let notifications = self.notifications.unwrap_or_default();
        let settlement = self.settlement.unwrap_or_default();
        Ok(Faults {
            settlement: SettlementFaults {
                drop_per_million: rate(settlement.drop_rate, "settlement.dropRate")?,
                amount_skew_per_million: rate(
                    settlement.amount_skew_rate,
                    "settlement.amountSkewRate",
                )?,
                fee_skew_per_million: rate(settlement.fee_skew_rate, "settlement.feeSkewRate")?,
                extra_per_million: rate(settlement.extra_rate, "settlement.extraRate")?,
                duplicate_per_million: rate(settlement.duplicate_rate, "settlement.duplicateRate")?,
                malformed_per_million: rate(settlement.malformed_rate, "settlement.malformedRate")?,
            },
            refund_settlement_ms,
            refund_failure_per_million: rate(self.refund_failure_rate, "refundFailureRate")?,
            error_per_million: rate(self.error_rate, "errorRate")?,
            timeout_per_million: rate(self.timeout_rate, "timeoutRate")?,
            latency_ms,
            notifications: NotificationFaults {
                duplicate_per_million: rate(
                    notifications.duplicate_rate,
                    "notifications.duplicateRate",
                )?,
                drop_per_million: rate(notifications.drop_rate, "notifications.dropRate")?,
                reorder: notifications.reorder.unwrap_or(false),
            },
        })
    }
}

/// Whether an event with the given rate happens this time.
pub fn roll(rng: &mut impl Rng, per_million: u32) -> bool {
    per_million > 0 && rng.gen_range(0..PER_MILLION) < per_million
}

/// A JSON number in 0..=1 as whole parts per million, truncating anything finer; `None` when
/// it is negative or above 1.
pub fn rate_per_million(n: &Number) -> Option<u32> {
    if let Some(whole) = n.as_u64() {
        return match whole {
            0 => Some(0),
            1 => Some(PER_MILLION),
            _ => None,
        };
    }
    decimal_per_million(&n.to_string())
}

/// Reads decimal text such as `0.25`, `1.0` or `2.5e-3` exactly, with integers only: the value
/// is `digits * 10^(exponent - fraction digits)`, so per million it is that shifted by six.
fn decimal_per_million(text: &str) -> Option<u32> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty()
        || !(int_part.bytes().chain(frac_part.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac_digits = i32::try_from(frac_part.len()).ok()?;
    let shift = exponent.checked_sub(frac_digits)?.checked_add(6)?;
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let scaled: u64 = if shift >= 0 {
        let value: u64 = digits.parse().ok()?;
        value.checked_mul(10u64.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let dropped = usize::try_from(shift.unsigned_abs()).ok()?;
        if dropped >= digits.len() {
            0
        } else {
            digits[..digits.len() - dropped].parse().ok()?
        }
    };
    u32::try_from(scaled).ok().filter(|v| *v <= PER_MILLION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    fn ppm(v: serde_json::Value) -> Option<u32> {
        match v {
            serde_json::Value::Number(n) => rate_per_million(&n),
            _ => unreachable!("tests pass numbers"),
        }
    }

    #[test]
    fn rates_become_exact_parts_per_million() {
        assert_eq!(ppm(json!(0)), Some(0));
        assert_eq!(ppm(json!(1)), Some(PER_MILLION));
        assert_eq!(ppm(json!(1.0)), Some(PER_MILLION));
        assert_eq!(ppm(json!(0.0)), Some(0));
        assert_eq!(ppm(json!(0.5)), Some(500_000));
        assert_eq!(ppm(json!(0.1)), Some(100_000));
        assert_eq!(ppm(json!(0.333_333_333)), Some(333_333));
        assert_eq!(ppm(json!(0.0025)), Some(2_500));
        assert_eq!(ppm(json!(1e-7)), Some(0));
        assert_eq!(ppm(json!(2.5e-3)), Some(2_500));
    }

    #[test]
    fn rates_out_of_range_are_refused() {
        assert_eq!(ppm(json!(2)), None);
        assert_eq!(ppm(json!(-1)), None);
        assert_eq!(ppm(json!(-0.5)), None);
        assert_eq!(ppm(json!(1.000_001)), None);
        assert_eq!(ppm(json!(1e300)), None);
        assert_eq!(decimal_per_million("1e99999999999"), None);
        assert_eq!(decimal_per_million(".5"), None);
        assert_eq!(decimal_per_million("0.5e-2"), Some(5_000));
        assert_eq!(decimal_per_million("123456789012345678901234567890"), None);
    }

    #[test]
    fn a_body_replaces_every_setting() {
        let body: FaultsBody = serde_json::from_value(json!({
            "errorRate": 0.25, "timeoutRate": 1, "latencyMs": 5,
            "notifications": {"duplicateRate": 0.5, "dropRate": 0.125, "reorder": true},
            "refundSettlementMs": 200, "refundFailureRate": 0.5,
            "settlement": {"dropRate": 0.5, "amountSkewRate": 1, "feeSkewRate": 0.25,
                "extraRate": 0.125, "duplicateRate": 1.0}
        }))
        .unwrap();
        let faults = body.into_faults().unwrap();
        assert_eq!(
            faults,
            Faults {
                error_per_million: 250_000,
                timeout_per_million: PER_MILLION,
                latency_ms: 5,
                notifications: NotificationFaults {
                    duplicate_per_million: 500_000,
                    drop_per_million: 125_000,
                    reorder: true,
                },
                refund_settlement_ms: 200,
                refund_failure_per_million: 500_000,
                settlement: SettlementFaults {
                    drop_per_million: 500_000,
                    amount_skew_per_million: PER_MILLION,
                    fee_skew_per_million: 250_000,
                    extra_per_million: 125_000,
                    duplicate_per_million: PER_MILLION,
                    malformed_per_million: 0,
                },
            }
        );
        let empty: FaultsBody = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.into_faults().unwrap(), Faults::default());
    }

    #[test]
    fn bad_fields_are_named() {
        let body: FaultsBody =
            serde_json::from_value(json!({"notifications": {"dropRate": 3}})).unwrap();
        assert_eq!(
            body.into_faults().unwrap_err().param,
            "notifications.dropRate"
        );
        let body: FaultsBody = serde_json::from_value(json!({"latencyMs": 600_001})).unwrap();
        assert_eq!(body.into_faults().unwrap_err().param, "latencyMs");
        let body: FaultsBody =
            serde_json::from_value(json!({"refundSettlementMs": 600_001})).unwrap();
        assert_eq!(body.into_faults().unwrap_err().param, "refundSettlementMs");
        let body: FaultsBody =
            serde_json::from_value(json!({"settlement": {"feeSkewRate": 7}})).unwrap();
        assert_eq!(
            body.into_faults().unwrap_err().param,
            "settlement.feeSkewRate"
        );
        let body: FaultsBody = serde_json::from_value(json!({"refundFailureRate": 2})).unwrap();
        assert_eq!(body.into_faults().unwrap_err().param, "refundFailureRate");
        let body: FaultsBody = serde_json::from_value(json!({"timeoutRate": 1.5})).unwrap();
        let err = body.into_faults().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`timeoutRate` must be a number from 0 to 1"
        );
    }

    #[test]
    fn rolls_honor_the_extremes() {
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..1000).all(|_| roll(&mut rng, PER_MILLION)));
        assert!((0..1000).all(|_| !roll(&mut rng, 0)));
        let hits = (0..10_000).filter(|_| roll(&mut rng, 500_000)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }
}
