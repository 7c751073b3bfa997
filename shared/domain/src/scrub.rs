//! The scrubber: what must never be written anywhere outside the vault (a card number, a secret
//! key, a webhook secret) is replaced before a log line or an error body leaves the process.

const SECRET_PREFIXES: &[&str] = &["sk_", "whsec_", "acq_whsec_"];

/// Replaces anything that looks like a primary account number (13 to 19 digits, optionally
/// grouped with single spaces or dashes) and anything that looks like a secret key.
pub fn scrub(input: &str) -> String {
    let without_pans = scrub_pans(input);
    scrub_secrets(&without_pans)
}

/// A run of digits, possibly grouped by single spaces or dashes, found at `start` of a text.
struct DigitRun {
    /// The byte just past the run's last digit.
    end: usize,
    digits: Vec<u8>,
    /// Neither glued to a letter or digit before it nor after it.
    alone: bool,
}

/// Reads the run of digits and single separators that starts at `start` (a digit), whatever
/// stands before or after it: the one reading of "a number" that the scrubber and the API's
/// card check share.
fn digit_run(bytes: &[u8], start: usize) -> DigitRun {
    let mut digits = Vec::new();
    let mut j = start;
    let mut end = start;
    while j < bytes.len() {
        if bytes[j].is_ascii_digit() {
            digits.push(bytes[j] - b'0');
            j += 1;
            end = j;
        } else if (bytes[j] == b' ' || bytes[j] == b'-')
            && j + 1 < bytes.len()
            && bytes[j + 1].is_ascii_digit()
        {
            j += 1;
        } else {
            break;
        }
    }
    let starts_alone = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
    let ends_alone = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
    DigitRun {
        end,
        digits,
        alone: starts_alone && ends_alone,
    }
}

fn scrub_pans(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let run = digit_run(bytes, i);
            // A free-standing 13-19 digit run is treated as a card number even when its check
            // digit is wrong (a typo is still someone's card); one glued to letters
            // (`pm4242424242424242`) is scrubbed when it passes the Luhn check, which every
            // real card number does, and so is a longer run with a card number inside it.
            let pan_alone = run.alone && (13..=19).contains(&run.digits.len());
            if pan_alone || contains_luhn_number(&run.digits) {
                out.push_str("[REDACTED_PAN]");
            } else {
                out.push_str(&input[i..run.end]);
            }
            i = run.end;
            continue;
        }
        let ch_len = utf8_len(bytes[i]);
        out.push_str(&input[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// Whether `input` holds what the API treats as a card number: a free-standing run (not glued
/// to letters or digits) of 13 to 19 digits, optionally grouped by single spaces or dashes,
/// that passes the Luhn check. Stricter than [`scrub`], which also hides typos and glued runs
/// from logs: a request is refused only for what is very likely a real number, so ids and
/// other values with long digit runs in them pass.
pub fn find_pan(input: &str) -> bool {
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let run = digit_run(bytes, i);
        if run.alone && (13..=19).contains(&run.digits.len()) && passes_luhn(&run.digits) {
            return true;
        }
        i = run.end;
    }
    false
}

/// Whether the run is a card number by its check digit: a 13-19 digit run that passes the Luhn
/// check, or a longer run with such a stretch inside it (a number with digits glued on).
fn contains_luhn_number(digits: &[u8]) -> bool {
    match digits.len() {
        0..=12 => false,
        13..=19 => passes_luhn(digits),
        _ => (13..=19).any(|len| digits.windows(len).any(passes_luhn)),
    }
}

/// The Luhn (mod 10) check every card number's last digit satisfies.
pub fn passes_luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum % 10 == 0
}

fn scrub_secrets(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    'outer: while !rest.is_empty() {
        for prefix in SECRET_PREFIXES {
            if rest.starts_with(prefix) {
                let body_len = rest[prefix.len()..]
                    .bytes()
                    .take_while(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-')
                    })
                    .count();
                if body_len >= 8 {
                    out.push_str(prefix);
                    out.push_str("[REDACTED]");
                    rest = &rest[prefix.len() + body_len..];
                    continue 'outer;
                }
            }
        }
        let ch = rest.chars().next().unwrap_or_default();
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_pan_sees_free_standing_luhn_numbers_only() {
        for yes in [
            "4242424242424242",
            "card 4242 4242 4242 4242 here",
            "{\"d\":\"5555-5555-5555-4444\"}",
            "x=4000002760003184&y=1",
        ] {
            assert!(find_pan(yes), "{yes}");
        }
        for no in [
            "4242424242424241",
            "pi_4242424242424242abc",
            "ab4242424242424242",
            "{\"amount\": 1099, \"at\": \"2026-12-02T10:00:00Z\"}",
            "000123456789",
            "12345678901234567890123",
            "",
        ] {
            assert!(!find_pan(no), "{no}");
        }
    }

    #[test]
    fn card_numbers_are_scrubbed_in_any_grouping() {
        for pan in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4000-0027-6000-3184",
            "378282246310005",
        ] {
            let line = format!("charging card {pan} now");
            let scrubbed = scrub(&line);
            assert_eq!(scrubbed, "charging card [REDACTED_PAN] now", "{pan}");
        }
    }

    #[test]
    fn short_numbers_ids_and_text_survive() {
        let line = "amount=1099 intent=pi_0192ab attempt 3 at 2026-11-22T10:00:00Z é";
        assert_eq!(scrub(line), line);
        // A digit run inside an identifier that fails the Luhn check is not a card number.
        assert_eq!(scrub("ref=abc4242424242424241"), "ref=abc4242424242424241");
    }

    #[test]
    fn card_numbers_glued_to_letters_or_inside_longer_runs_are_scrubbed() {
        for (line, want) in [
            ("pm4242424242424242", "pm[REDACTED_PAN]"),
            ("x5555555555554444y", "x[REDACTED_PAN]y"),
            ("tok_4000002760003184abc", "tok_[REDACTED_PAN]abc"),
            ("n=42424242424242420000000", "n=[REDACTED_PAN]"),
        ] {
            assert_eq!(scrub(line), want, "{line}");
        }
    }

    #[test]
    fn luhn_is_the_standard_check() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(passes_luhn(&digits("4242424242424242")));
        assert!(passes_luhn(&digits("378282246310005")));
        assert!(!passes_luhn(&digits("4242424242424241")));
        assert!(!passes_luhn(&[]));
    }

    #[test]
    fn secret_keys_are_scrubbed() {
        let line = "key sk_AbCdEf0123456789xyz and whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw end";
        let s = scrub(line);
        assert!(!s.contains("AbCdEf0123456789"));
        assert!(!s.contains("MfKQ9r8GKYq"));
        assert!(s.contains("sk_[REDACTED]") && s.contains("whsec_[REDACTED]"));
        assert_eq!(scrub("sk_short"), "sk_short");
    }
}
