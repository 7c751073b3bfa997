//! Cards and bank accounts as merchants send them, parsed and checked at the edge: an invalid
//! number, expiry, CVC or routing number never gets past [`parse_card`] / [`parse_bank_account`].
//! What leaves this module is split in two: the secret part (sealed, never shown) and the
//! display part (shown to merchants, stored in clear).

use chrono::{Datelike, Utc};
use serde::{Deserialize, Serialize};

use paystream_shared::domain::scrub::passes_luhn;

use crate::error::VaultError;

/// `POST /vault/tokens` as sent. No `Debug`: nothing may format a card number into a log line.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub card: Option<CardInput>,
    pub bank_account: Option<BankAccountInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CardInput {
    pub number: String,
    pub exp_month: u32,
    pub exp_year: i32,
    pub cvc: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BankAccountInput {
    pub country: String,
    pub routing_number: String,
    pub account_number: String,
    pub account_holder_name: String,
    pub account_holder_type: Option<String>,
}

/// What is sealed for a card. The CVC is not here: it is checked and dropped.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardSecret {
    pub number: String,
    pub exp_month: u32,
    pub exp_year: i32,
}

/// What is sealed for a bank account (the account number; the rest is for the acquirer's
/// request, kept together so one decryption gives all of it).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BankSecret {
    pub country: String,
    pub routing_number: String,
    pub account_number: String,
    pub account_holder_name: String,
    pub account_holder_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Card,
    BankAccount,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::BankAccount => "bank_account",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        match raw {
            "card" => Some(Kind::Card),
            "bank_account" => Some(Kind::BankAccount),
            _ => None,
        }
    }

    /// The JSON field that carries this kind's display fields (and, toward the acquirer, its
    /// numbers).
    pub fn field(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::BankAccount => "bankAccount",
        }
    }
}

/// A validated instrument: what to seal, and what may be shown. `display` lacks the
/// fingerprint, which needs the vault's secret and is added by the caller.
pub struct Parsed {
    pub kind: Kind,
    pub secret: Vec<u8>,
    pub display: serde_json::Map<String, serde_json::Value>,
    /// What the fingerprint is computed over (besides the merchant).
    pub fingerprint_input: Vec<Vec<u8>>,
}

fn card_error(code: &str, param: &str, message: &str) -> VaultError {
    VaultError::card(code, message).with_param(param)
}

pub fn parse_card(card: CardInput, today: chrono::NaiveDate) -> Result<Parsed, VaultError> {
    let number = card.number;
    let digits: Vec<u8> = number.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    if !(12..=19).contains(&number.len())
        || !number.bytes().all(|b| b.is_ascii_digit())
        || !passes_luhn(&digits)
    {
        return Err(card_error(
            "incorrect_number",
            "card.number",
            "The card number is incorrect.",
        ));
    }
    if !(1..=12).contains(&card.exp_month) {
        return Err(card_error(
            "invalid_expiry_month",
            "card.expMonth",
            "The card's expiration month is invalid.",
        ));
    }
    if !(2000..=2199).contains(&card.exp_year) {
        return Err(card_error(
            "invalid_expiry_year",
            "card.expYear",
            "The card's expiration year is invalid; send four digits.",
        ));
    }
    // A card is valid through the last day of its expiry month.
    if (card.exp_year, card.exp_month) < (today.year(), today.month()) {
        return Err(card_error(
            "expired_card",
            "card.expYear",
            "The card has expired.",
        ));
    }
    if !(3..=4).contains(&card.cvc.len()) || !card.cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(card_error(
            "invalid_cvc",
            "card.cvc",
            "The card's security code must be 3 or 4 digits.",
        ));
    }
    // The CVC was only checked; it goes no further than this function.
    drop(card.cvc);
    let last4 = number[number.len() - 4..].to_owned();
    let mut display = serde_json::Map::new();
    display.insert("brand".into(), brand(&number).into());
    display.insert("last4".into(), last4.into());
    display.insert("expMonth".into(), card.exp_month.into());
    display.insert("expYear".into(), card.exp_year.into());
    display.insert("funding".into(), funding(&number).into());
    let fingerprint_input = vec![b"card".to_vec(), number.as_bytes().to_vec()];
    let secret = serde_json::to_vec(&CardSecret {
        number,
        exp_month: card.exp_month,
        exp_year: card.exp_year,
    })
    .map_err(|e| VaultError::internal(&e))?;
    Ok(Parsed {
        kind: Kind::Card,
        secret,
        display,
        fingerprint_input,
    })
}

/// The card network by its leading digits (the ranges the networks publish).
fn brand(number: &str) -> &'static str {
    let prefix = |n: usize| number[..n].parse::<u32>().unwrap_or(0);
    match () {
        _ if number.starts_with('4') => "visa",
        _ if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) => "mastercard",
        _ if matches!(prefix(2), 34 | 37) => "amex",
        _ if number.starts_with("6011") || number.starts_with("65") => "discover",
        _ if (3528..=3589).contains(&prefix(4)) => "jcb",
        _ if matches!(prefix(2), 36 | 38 | 39) || (300..=305).contains(&prefix(3)) => "diners",
        _ => "unknown",
    }
}

/// Funding type. Without a BIN table every card is reported `credit`, as Stripe's test cards
/// used here are; a real deployment reads it from the acquirer's BIN data.
fn funding(_number: &str) -> &'static str {
    "credit"
}

/// The ABA routing number checksum: 3·(d1+d4+d7) + 7·(d2+d5+d8) + (d3+d6+d9) ≡ 0 (mod 10).
pub fn aba_checksum_ok(routing: &str) -> bool {
    if routing.len() != 9 || !routing.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let d: Vec<u32> = routing.bytes().map(|b| u32::from(b - b'0')).collect();
    let sum = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8]);
    sum % 10 == 0
}

fn invalid(code: &str, param: &str, message: impl Into<String>) -> VaultError {
    VaultError::invalid(code, message).with_param(param)
}

pub fn parse_bank_account(bank: BankAccountInput) -> Result<Parsed, VaultError> {
    let country = bank.country.to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            "parameter_invalid",
            "bankAccount.country",
            "`bankAccount.country` must be a two-letter ISO 3166 country code",
        ));
    }
    let routing = bank.routing_number;
    if country == "US" {
        if !aba_checksum_ok(&routing) {
            return Err(invalid(
                "routing_number_invalid",
                "bankAccount.routingNumber",
                "The routing number is not a valid ABA routing number.",
            ));
        }
    } else if !(1..=34).contains(&routing.len())
        || !routing.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(invalid(
            "routing_number_invalid",
            "bankAccount.routingNumber",
            "The routing number must be 1 to 34 letters or digits.",
        ));
    }
    let account = bank.account_number;
    let account_ok = if country == "US" {
        (4..=17).contains(&account.len()) && account.bytes().all(|b| b.is_ascii_digit())
    } else {
        (4..=34).contains(&account.len()) && account.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    if !account_ok {
        return Err(invalid(
            "account_number_invalid",
            "bankAccount.accountNumber",
            "The account number is invalid.",
        ));
    }
    let name = bank.account_holder_name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            "parameter_invalid",
            "bankAccount.accountHolderName",
            "`bankAccount.accountHolderName` must be 1 to 200 characters without control characters",
        ));
    }
    let holder_type = bank
        .account_holder_type
        .unwrap_or_else(|| "individual".to_owned());
    if !matches!(holder_type.as_str(), "individual" | "company") {
        return Err(invalid(
            "parameter_invalid",
            "bankAccount.accountHolderType",
            "`bankAccount.accountHolderType` must be `individual` or `company`",
        ));
    }
    let mut display = serde_json::Map::new();
    if let Some(bank_name) = bank_name(&country, &routing) {
        display.insert("bankName".into(), bank_name.into());
    }
    display.insert("last4".into(), account[account.len() - 4..].into());
    display.insert("routingNumber".into(), routing.clone().into());
    display.insert("country".into(), country.clone().into());
    display.insert("accountHolderType".into(), holder_type.clone().into());
    let fingerprint_input = vec![
        b"bank_account".to_vec(),
        country.as_bytes().to_vec(),
        routing.as_bytes().to_vec(),
        account.as_bytes().to_vec(),
    ];
    let secret = serde_json::to_vec(&BankSecret {
        country,
        routing_number: routing,
        account_number: account,
        account_holder_name: name,
        account_holder_type: holder_type,
    })
    .map_err(|e| VaultError::internal(&e))?;
    Ok(Parsed {
        kind: Kind::BankAccount,
        secret,
        display,
        fingerprint_input,
    })
}

/// Names of the banks behind the routing numbers the test mode knows; others have none.
fn bank_name(country: &str, routing: &str) -> Option<&'static str> {
    match (country, routing) {
        ("US", "110000000") => Some("STRIPE TEST BANK"),
        _ => None,
    }
}

pub fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(number: &str, m: u32, y: i32, cvc: &str) -> CardInput {
        CardInput {
            number: number.into(),
            exp_month: m,
            exp_year: y,
            cvc: cvc.into(),
        }
    }

    fn code(r: Result<Parsed, VaultError>) -> (String, String) {
        let e = r.err().expect("an error");
        (e.code.clone(), e.param.clone().unwrap_or_default())
    }

    #[test]
    fn cards_are_checked_in_the_contract_order() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let ok = parse_card(card("4242424242424242", 12, 2026, "123"), today).unwrap();
        assert_eq!(ok.display["brand"], "visa");
        assert_eq!(ok.display["last4"], "4242");
        assert!(!String::from_utf8_lossy(&ok.secret).contains("123\""));
        assert_eq!(
            parse_card(card("5555555555554444", 1, 2030, "1234"), today)
                .unwrap()
                .display["brand"],
            "mastercard"
        );
        assert_eq!(
            code(parse_card(card("4242424242424241", 12, 2030, "123"), today)),
            ("incorrect_number".into(), "card.number".into())
        );
        assert_eq!(
            code(parse_card(
                card("4242 4242 4242 4242", 12, 2030, "123"),
                today
            ))
            .0,
            "incorrect_number"
        );
        assert_eq!(
            code(parse_card(card("4242424242424242", 11, 2026, "123"), today)),
            ("expired_card".into(), "card.expYear".into())
        );
        assert_eq!(
            code(parse_card(card("4242424242424242", 13, 2030, "123"), today)).0,
            "invalid_expiry_month"
        );
        for cvc in ["12", "12345", "12a"] {
            assert_eq!(
                code(parse_card(card("4242424242424242", 1, 2030, cvc), today)),
                ("invalid_cvc".into(), "card.cvc".into())
            );
        }
    }

    #[test]
    fn aba_checksums() {
        assert!(aba_checksum_ok("110000000"));
        assert!(aba_checksum_ok("021000021"));
        assert!(!aba_checksum_ok("110000001"));
        assert!(!aba_checksum_ok("11000000"));
        assert!(!aba_checksum_ok("11000000a"));
    }

    #[test]
    fn bank_accounts() {
        let input = |routing: &str, account: &str| BankAccountInput {
            country: "us".into(),
            routing_number: routing.into(),
            account_number: account.into(),
            account_holder_name: "Jenny Rosen".into(),
            account_holder_type: None,
        };
        let ok = parse_bank_account(input("110000000", "000123456789")).unwrap();
        assert_eq!(ok.display["last4"], "6789");
        assert_eq!(ok.display["bankName"], "STRIPE TEST BANK");
        assert_eq!(ok.display["country"], "US");
        assert_eq!(ok.display["accountHolderType"], "individual");
        assert_eq!(
            code(parse_bank_account(input("110000001", "000123456789"))),
            (
                "routing_number_invalid".into(),
                "bankAccount.routingNumber".into()
            )
        );
        assert_eq!(
            code(parse_bank_account(input("110000000", "12"))).0,
            "account_number_invalid"
        );
    }
}
