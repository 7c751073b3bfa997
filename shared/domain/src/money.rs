//! Money is an integer count of a currency's minor unit. No float ever touches an amount.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::DomainError;

/// The largest amount a single payment may carry, in minor units (docs/api.md: 1..=99999999).
pub const MAX_AMOUNT: i64 = 99_999_999;

/// ISO 4217 currencies we accept, with their exponents (how many minor-unit digits).
/// Zero-decimal currencies (JPY, KRW, ...) have exponent 0.
const CURRENCIES: &[(&str, u8)] = &[
    ("aed", 2),
    ("ars", 2),
    ("aud", 2),
    ("bgn", 2),
    ("bhd", 3),
    ("brl", 2),
    ("cad", 2),
    ("chf", 2),
    ("clp", 0),
    ("cny", 2),
    ("cop", 2),
    ("czk", 2),
    ("dkk", 2),
    ("egp", 2),
    ("eur", 2),
    ("gbp", 2),
    ("hkd", 2),
    ("huf", 2),
    ("idr", 2),
    ("ils", 2),
    ("inr", 2),
    ("isk", 0),
    ("jod", 3),
    ("jpy", 0),
    ("kes", 2),
    ("krw", 0),
    ("kwd", 3),
    ("mad", 2),
    ("mxn", 2),
    ("myr", 2),
    ("ngn", 2),
    ("nok", 2),
    ("nzd", 2),
    ("omr", 3),
    ("php", 2),
    ("pkr", 2),
    ("pln", 2),
    ("qar", 2),
    ("ron", 2),
    ("rsd", 2),
    ("sar", 2),
    ("sek", 2),
    ("sgd", 2),
    ("thb", 2),
    ("tnd", 3),
    ("try", 2),
    ("twd", 2),
    ("uah", 2),
    ("ugx", 0),
    ("usd", 2),
    ("vnd", 0),
    ("xaf", 0),
    ("xof", 0),
    ("zar", 2),
];

/// A known ISO 4217 currency, always lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let lower = raw.trim().to_ascii_lowercase();
        CURRENCIES
            .iter()
            .find(|(code, _)| *code == lower)
            .map(|(code, exponent)| Currency {
                code,
                exponent: *exponent,
            })
            .ok_or_else(|| {
                DomainError::new(
                    "currency_invalid",
                    Some("currency".to_owned()),
                    format!(
                        "`{}` is not a supported ISO 4217 currency code",
                        super::quote_input(raw, 16)
                    ),
                )
            })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point in the currency's major unit (JPY: 0, USD: 2, KWD: 3).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Currency::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A non-negative count of minor units. Arithmetic is checked: an overflow is an error, never
/// a wrap.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// An amount a payment may charge: 1..=MAX_AMOUNT minor units.
    pub fn parse_charge(raw: i64, param: &str) -> Result<Self, DomainError> {
        if raw < 1 {
            return Err(DomainError::new(
                "amount_too_small",
                Some(param.to_owned()),
                format!("`{param}` must be at least 1 (a positive integer in the currency's minor unit)"),
            ));
        }
        if raw > MAX_AMOUNT {
            return Err(DomainError::new(
                "amount_too_large",
                Some(param.to_owned()),
                format!("`{param}` must be at most {MAX_AMOUNT}"),
            ));
        }
        Ok(Amount(raw))
    }

    /// An amount read back from storage, where the database's CHECK constraints already hold.
    pub fn from_stored(raw: i64) -> Self {
        debug_assert!(raw >= 0, "stored amounts are never negative");
        Amount(raw.max(0))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `None` when the result would be negative.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).filter(|v| *v >= 0).map(Amount)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An amount together with its currency. Sums across currencies are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount: Amount,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Amount, currency: Currency) -> Self {
        Self { amount, currency }
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money::new(
            self.amount.checked_add(other.amount)?,
            self.currency,
        ))
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money::new(
            self.amount.checked_sub(other.amount)?,
            self.currency,
        ))
    }
}

impl fmt::Display for Money {
    /// Renders `1099 usd` as `10.99 USD` with integer arithmetic only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = self.amount.minor_units();
        let code = self.currency.code().to_ascii_uppercase();
        match self.currency.exponent() {
            0 => write!(f, "{units} {code}"),
            exp => {
                let scale = 10_i64.pow(u32::from(exp));
                let width = usize::from(exp);
                write!(f, "{}.{:0width$} {code}", units / scale, units % scale)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currencies_parse_case_insensitively_and_know_their_exponent() {
        assert_eq!(Currency::parse("usd").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().code(), "jpy");
        assert_eq!(Currency::parse("jpy").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("kwd").unwrap().exponent(), 3);
    }

    #[test]
    fn unknown_currency_is_an_error_naming_the_param() {
        let err = Currency::parse("xyz").unwrap_err();
        assert_eq!(err.code, "currency_invalid");
        assert_eq!(err.param.as_deref(), Some("currency"));
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn an_unknown_currency_never_echoes_a_card_number_or_part_of_one() {
        for raw in [
            "4242424242424242",
            "abcd 4242424242424242",
            "sk_test_0123456789abcdef",
        ] {
            let message = Currency::parse(raw).unwrap_err().message;
            assert!(!message.contains("42424242"), "{message}");
            assert!(!message.contains("0123456789"), "{message}");
        }
    }

    #[test]
    fn charge_amount_bounds() {
        assert_eq!(
            Amount::parse_charge(0, "amount").unwrap_err().code,
            "amount_too_small"
        );
        assert_eq!(
            Amount::parse_charge(-5, "amount").unwrap_err().code,
            "amount_too_small"
        );
        assert_eq!(
            Amount::parse_charge(MAX_AMOUNT + 1, "amount")
                .unwrap_err()
                .code,
            "amount_too_large"
        );
        assert_eq!(Amount::parse_charge(1, "amount").unwrap().minor_units(), 1);
        assert_eq!(
            Amount::parse_charge(MAX_AMOUNT, "x").unwrap().minor_units(),
            MAX_AMOUNT
        );
    }

    #[test]
    fn money_displays_in_major_units_without_floats() {
        let usd = Currency::parse("usd").unwrap();
        let jpy = Currency::parse("jpy").unwrap();
        let kwd = Currency::parse("kwd").unwrap();
        assert_eq!(
            Money::new(Amount::from_stored(1099), usd).to_string(),
            "10.99 USD"
        );
        assert_eq!(
            Money::new(Amount::from_stored(5), usd).to_string(),
            "0.05 USD"
        );
        assert_eq!(
            Money::new(Amount::from_stored(500), jpy).to_string(),
            "500 JPY"
        );
        assert_eq!(
            Money::new(Amount::from_stored(1234), kwd).to_string(),
            "1.234 KWD"
        );
    }

    #[test]
    fn money_refuses_mixed_currencies_and_negative_results() {
        let usd = Currency::parse("usd").unwrap();
        let eur = Currency::parse("eur").unwrap();
        let a = Money::new(Amount::from_stored(100), usd);
        assert!(a
            .checked_add(Money::new(Amount::from_stored(1), eur))
            .is_none());
        assert!(a
            .checked_sub(Money::new(Amount::from_stored(101), usd))
            .is_none());
        assert_eq!(a.checked_sub(a).unwrap().amount, Amount::ZERO);
        assert!(Amount::from_stored(i64::MAX)
            .checked_add(Amount::from_stored(1))
            .is_none());
    }

    #[test]
    fn serde_round_trip_keeps_integers() {
        let json = serde_json::to_string(&Amount::from_stored(1099)).unwrap();
        assert_eq!(json, "1099");
        assert!(serde_json::from_str::<Amount>("10.99").is_err());
        assert!(serde_json::from_str::<Amount>("\"1099\"").is_err());
        let c: Currency = serde_json::from_str("\"eur\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"eur\"");
        assert!(serde_json::from_str::<Currency>("\"zzz\"").is_err());
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in 0i64..=MAX_AMOUNT, b in 0i64..=MAX_AMOUNT) {
            let (a, b) = (Amount::from_stored(a), Amount::from_stored(b));
            prop_assert_eq!(a.checked_add(b).unwrap().checked_sub(b).unwrap(), a);
        }

        #[test]
        fn sub_never_goes_negative(a in 0i64..=MAX_AMOUNT, b in 0i64..=MAX_AMOUNT) {
            let r = Amount::from_stored(a).checked_sub(Amount::from_stored(b));
            prop_assert_eq!(r.is_some(), a >= b);
        }
    }
}
