//! Structured JSON logs with a scrubbing writer: whatever a log line says, a card number or a
//! secret key never reaches the sink. The scrub runs on the formatted line, so it also covers
//! fields nobody thought to mark as sensitive.
#![forbid(unsafe_code)]

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

/// Re-exported: the one scrubbing rule lives in the domain, beside what it protects.
pub use paystream_domain::scrub::scrub;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
