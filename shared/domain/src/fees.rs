//! The fee schedule: what a captured payment costs the merchant. One function, used by
//! paystream's ledger and by the acquirer simulator, so both books compute the same fee.
//!
//! fee = round_half_up(amount * percent_bps / 10_000) + fixed, in integer minor units, never
//! more than the amount itself.
//!
//! "Minor unit" is the currency's smallest unit as its exponent defines it
//! ([`Currency::exponent`]): a cent for USD (exponent 2), a fils for KWD (3), and the yen itself
//! for JPY (0, no minor unit). Amounts are always counted in that unit, so the percentage part
//! is rounded to it by the same integer arithmetic for every currency, and the fixed part is
//! that many of them: the default 30 is USD 0.30, JPY 30 and KWD 0.030. A merchant that wants a
//! per-currency fixed fee needs a schedule per currency; paystream has one schedule.

use super::money::{Amount, Currency};
use super::DomainError;

/// Basis points in a whole: 10,000 bps = 100 %.
pub const BPS_PER_WHOLE: i64 = 10_000;

/// The default percentage, 2.9 % (`PAYSTREAM_FEE_PERCENT_BPS`).
pub const DEFAULT_PERCENT_BPS: u32 = 290;
/// The default fixed part, in the currency's minor units (`PAYSTREAM_FEE_FIXED`).
pub const DEFAULT_FIXED: i64 = 30;
/// The default fee for a lost dispute, in minor units (`PAYSTREAM_DISPUTE_FEE`).
pub const DEFAULT_DISPUTE_FEE: i64 = 1500;

/// A fee schedule: a percentage in basis points plus a fixed part in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeSchedule {
    percent_bps: u32,
    fixed: Amount,
}

impl Default for FeeSchedule {
    fn default() -> Self {
        Self {
            percent_bps: DEFAULT_PERCENT_BPS,
            fixed: Amount::from_stored(DEFAULT_FIXED),
        }
    }
}

impl FeeSchedule {
    /// A schedule of `percent_bps` (0..=10,000, that is 0 % to 100 %) plus `fixed` minor units.
    pub fn new(percent_bps: u32, fixed: i64) -> Result<Self, DomainError> {
        if i64::from(percent_bps) > BPS_PER_WHOLE {
            return Err(DomainError::new(
                "fee_invalid",
                Some("percent_bps".to_owned()),
                format!("a fee percentage is at most {BPS_PER_WHOLE} basis points (100 %)"),
            ));
        }
        if fixed < 0 {
            return Err(DomainError::new(
                "fee_invalid",
                Some("fixed".to_owned()),
                "a fixed fee is a non-negative number of minor units",
            ));
        }
        Ok(Self {
            percent_bps,
            fixed: Amount::from_stored(fixed),
        })
    }

    pub fn percent_bps(&self) -> u32 {
        self.percent_bps
    }

    pub fn fixed(&self) -> Amount {
        self.fixed
    }

    /// The fee for capturing `amount` in `currency`. The currency does not change the
    /// arithmetic (amounts are already in its minor unit, see the module comment); it is taken
    /// so every caller states which currency it means and a schedule per currency can come
    /// later without changing them.
    ///
    /// A fee never exceeds the amount: a tiny charge costs at most what it brought in, so a
    /// charge never takes money out of the merchant's balance.
    pub fn fee(&self, amount: Amount, _currency: Currency) -> Amount {
        // i128: amount * bps cannot overflow for any i64 amount.
        let scaled = i128::from(amount.minor_units()) * i128::from(self.percent_bps);
        let whole = i128::from(BPS_PER_WHOLE);
        // Half up: add half the divisor before the (truncating, non-negative) division.
        let percent = (scaled + whole / 2) / whole;
        let fee = percent + i128::from(self.fixed.minor_units());
        let capped = fee.min(i128::from(amount.minor_units()));
        Amount::from_stored(i64::try_from(capped).unwrap_or(amount.minor_units()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }
    fn jpy() -> Currency {
        Currency::parse("jpy").unwrap()
    }
    fn fee(s: &FeeSchedule, amount: i64, c: Currency) -> i64 {
        s.fee(Amount::from_stored(amount), c).minor_units()
    }

    #[test]
    fn the_default_schedule_is_2_9_percent_plus_30() {
        let s = FeeSchedule::default();
        assert_eq!((s.percent_bps(), s.fixed().minor_units()), (290, 30));
        // USD 10.00: 29.0 cents + 30.
        assert_eq!(fee(&s, 1000, usd()), 59);
        // USD 100.00: 290 + 30.
        assert_eq!(fee(&s, 10_000, usd()), 320);
        // JPY 5000: 145 yen + 30 yen; JPY has no minor unit, the yen is the unit.
        assert_eq!(fee(&s, 5000, jpy()), 175);
    }

    #[test]
    fn the_percentage_rounds_half_up_to_the_minor_unit() {
        let s = FeeSchedule::new(290, 0).unwrap();
        // 50 * 2.9 % = 1.45 -> 1; 100 * 2.9 % = 2.9 -> 3.
        assert_eq!(fee(&s, 50, usd()), 1);
        assert_eq!(fee(&s, 100, usd()), 3);
        let half = FeeSchedule::new(250, 0).unwrap();
        // 2.5 % of 20 = 0.5 exactly: half rounds up.
        assert_eq!(fee(&half, 20, usd()), 1);
        // 2.5 % of 60 = 1.5 -> 2; of 59 = 1.475 -> 1.
        assert_eq!(fee(&half, 60, jpy()), 2);
        assert_eq!(fee(&half, 59, jpy()), 1);
        // 2.5 % of 19 = 0.475 -> 0.
        assert_eq!(fee(&half, 19, usd()), 0);
    }

    #[test]
    fn a_fee_never_exceeds_the_amount() {
        let s = FeeSchedule::default();
        assert_eq!(fee(&s, 1, usd()), 1);
        assert_eq!(fee(&s, 30, jpy()), 30);
        assert_eq!(fee(&s, 31, jpy()), 31);
        // 2.9 % of 32 = 0.928 -> 1, + 30 = 31.
        assert_eq!(fee(&s, 32, usd()), 31);
    }

    #[test]
    fn extreme_schedules_and_amounts() {
        let all = FeeSchedule::new(10_000, 0).unwrap();
        assert_eq!(fee(&all, 99_999_999, usd()), 99_999_999);
        let none = FeeSchedule::new(0, 0).unwrap();
        assert_eq!(fee(&none, 99_999_999, usd()), 0);
        assert!(fee(&FeeSchedule::default(), i64::MAX, usd()) > 0);
        assert_eq!(
            FeeSchedule::new(10_001, 0).unwrap_err().param.as_deref(),
            Some("percent_bps")
        );
        assert_eq!(
            FeeSchedule::new(290, -1).unwrap_err().param.as_deref(),
            Some("fixed")
        );
    }

    proptest! {
        #[test]
        fn the_fee_is_the_exact_half_up_rounding(amount in 1i64..=99_999_999, bps in 0u32..=10_000, fixed in 0i64..=10_000) {
            let s = FeeSchedule::new(bps, fixed).unwrap();
            let got = fee(&s, amount, usd());
            // Half up, restated: the percentage part p is the integer with
            // |p - amount*bps/10000| <= 1/2, ties going up.
            let exact_times_2 = 2 * i128::from(amount) * i128::from(bps);
            let p = (exact_times_2 + i128::from(BPS_PER_WHOLE)) / (2 * i128::from(BPS_PER_WHOLE));
            let want = (p + i128::from(fixed)).min(i128::from(amount));
            prop_assert_eq!(i128::from(got), want);
            prop_assert!(got <= amount);
        }
    }
}
