//! Structured JSON logs with a scrubbing writer: whatever a log line says, a card number or a
//! secret key never reaches the sink. The scrub runs on the formatted line, so it also covers
//! fields nobody thought to mark as sensitive.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines on stderr, filtered by `RUST_LOG` (default `info`).
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,poem=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(Scrubbing::new(io::stderr))
        .try_init();
    tracing::debug!(service, "telemetry initialised");
}

/// A `MakeWriter` whose writers scrub each buffer before passing it on.
#[derive(Clone)]
pub struct Scrubbing<M> {
    inner: M,
}

impl<M> Scrubbing<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbing<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer(),
        }
    }
}

pub struct ScrubbingWriter<W> {
    inner: W,
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The fmt layer hands over one whole formatted event per call, so a card number is never
        // split across two writes.
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const SECRET_PREFIXES: &[&str] = &["sk_", "whsec_", "acq_whsec_"];

/// Replaces anything that looks like a primary account number (13 to 19 digits, optionally
/// grouped with single spaces or dashes) and anything that looks like a secret key.
pub fn scrub(input: &str) -> String {
    let without_pans = scrub_pans(input);
    scrub_secrets(&without_pans)
}

fn scrub_pans(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            // Extend over digits and single separators.
            let mut j = i;
            let mut digits = 0;
            let mut end = i;
            while j < bytes.len() {
                if bytes[j].is_ascii_digit() {
                    digits += 1;
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
            let bounded = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
            if (13..=19).contains(&digits) && bounded {
                out.push_str("[REDACTED_PAN]");
                i = end;
                continue;
            }
            out.push_str(&input[i..end]);
            i = end;
            continue;
        }
        let ch_len = utf8_len(bytes[i]);
        out.push_str(&input[i..i + ch_len]);
        i += ch_len;
    }
    out
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
    use std::sync::{Arc, Mutex};

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
        // A digit run inside an identifier is not a card number on its own.
        assert_eq!(scrub("ref=abc4242424242424242"), "ref=abc4242424242424242");
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

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_real_subscriber_never_writes_a_pan_or_key() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(Scrubbing::new(move || sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                card = "4242424242424242",
                key = "sk_live_0123456789abcdef",
                "confirming {}",
                "4000 0000 0000 0002"
            );
        });
        let written = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(written.contains("confirming"), "{written}");
        assert!(!written.contains("4242424242424242"), "{written}");
        assert!(!written.contains("4000 0000 0000 0002"), "{written}");
        assert!(!written.contains("0123456789abcdef"), "{written}");
    }
}
