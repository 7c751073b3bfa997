//! Streams, subjects and consumer names, all behind one prefix so a test run (or a tenant)
//! never shares a stream with another one, and the idempotent start-up that creates them.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event};

/// How long JetStream remembers a `Nats-Msg-Id` and drops a second publish with the same id.
///
/// Why 2 minutes: the relay re-publishes a row only when it died (or lost PostgreSQL) between
/// the publish and the `UPDATE ... published_at`, and the next relay picks the row up within
/// about a second (its poll), so real duplicates arrive seconds apart. Two minutes leaves room
/// for a slow restart while bounding what the server keeps in memory (at 5,000 messages a
/// second that is 600,000 ids per stream). A duplicate that arrives later still gets through,
/// and idempotent consumers (ARCHITECTURE.md) make that harmless.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long a dead letter is kept before JetStream discards it.
pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How long an event stays replayable from the EVENTS stream. Events are also rows in
/// PostgreSQL (listable and redeliverable through the API), so the stream need not keep them
/// forever; 30 days matches how long Stripe lists events.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("stream {0} does not exist (was Topology::ensure run?)")]
    StreamMissing(String),
    #[error("cannot create consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("JetStream request failed ({operation}): {source}")]
    JetStream {
        operation: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

impl NatsError {
    pub(crate) fn js(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        NatsError::JetStream {
            operation,
            source: Box::new(source),
        }
    }
}

/// The streams paystream uses. Names and subjects below are before the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    PaymentCommands,
    RefundCommands,
    Events,
    WebhookDeliveries,
    ProviderEvents,
    DeadLetters,
}

impl Stream {
    pub const ALL: [Stream; 6] = [
        Stream::PaymentCommands,
        Stream::RefundCommands,
        Stream::Events,
        Stream::WebhookDeliveries,
        Stream::ProviderEvents,
        Stream::DeadLetters,
    ];

    /// The stream's name without the prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Stream::PaymentCommands => "PAYMENT_COMMANDS",
            Stream::RefundCommands => "REFUND_COMMANDS",
            Stream::Events => "EVENTS",
            Stream::WebhookDeliveries => "WEBHOOK_DELIVERIES",
            Stream::ProviderEvents => "PROVIDER_EVENTS",
            Stream::DeadLetters => "DEAD_LETTERS",
        }
    }

    /// The logical subjects the stream captures.
    pub fn logical_subjects(self) -> &'static str {
        match self {
            Stream::PaymentCommands => "cmd.payment.>",
            Stream::RefundCommands => "cmd.refund.>",
            Stream::Events => "evt.>",
            Stream::WebhookDeliveries => "cmd.webhook.>",
            Stream::ProviderEvents => "cmd.provider_event.>",
            Stream::DeadLetters => "dlq.>",
        }
    }

    /// Command streams are work queues: a message is gone once acked, so a command runs once
    /// per success and a stream's size is its backlog. EVENTS and DEAD_LETTERS keep messages
    /// by limits so they can be read again (replay, fan-out by several consumers, the DLQ CLI).
    pub fn is_work_queue(self) -> bool {
        !matches!(self, Stream::Events | Stream::DeadLetters)
    }

    /// Which stream captures a logical subject, if any.
    pub fn for_subject(logical: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| {
            let pattern = s.logical_subjects();
            let head = pattern.strip_suffix('>').unwrap_or(pattern);
            logical.starts_with(head) && logical.len() > head.len()
        })
    }

    fn max_age(self) -> Duration {
        match self {
            Stream::DeadLetters => DEAD_LETTER_MAX_AGE,
            Stream::Events => EVENTS_MAX_AGE,
            // A work queue keeps a command until it is acked or dead-lettered, however long.
            _ => Duration::ZERO,
        }
    }
}

/// Names behind one prefix. Cheap to clone; every process builds one from
/// `Config::stream_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// `prefix` is used as is (the configuration validates it to letters, digits, `_` and `-`,
    /// so it can start a subject token and a stream name alike).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn stream_name(&self, stream: Stream) -> String {
        format!("{}{}", self.prefix, stream.base_name())
    }

    /// The wire subject for a logical one: `cmd.payment.confirm` -> `{prefix}cmd.payment.confirm`.
    pub fn subject(&self, logical: &str) -> String {
        format!("{}{}", self.prefix, logical)
    }

    /// The logical subject of a wire subject, or `None` when it is not under this prefix.
    pub fn logical_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())
    }

    pub fn consumer_name(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }

    /// The subject a dead letter from `origin_logical` is filed under: `{prefix}dlq.<origin>`,
    /// so the DLQ can be listed or purged per origin with a subject filter.
    pub fn dead_letter_subject(&self, origin_logical: &str) -> String {
        self.subject(&format!("dlq.{origin_logical}"))
    }

    /// The configuration [`Topology::ensure`] applies for `stream`.
    pub fn stream_config(&self, stream: Stream) -> stream::Config {
        stream::Config {
            name: self.stream_name(stream),
            subjects: vec![self.subject(stream.logical_subjects())],
            retention: if stream.is_work_queue() {
                stream::RetentionPolicy::WorkQueue
            } else {
                stream::RetentionPolicy::Limits
            },
            // Durable across a nats-server restart: a queued command is money in flight.
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: stream.max_age(),
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            description: Some(format!("paystream {}", stream.logical_subjects())),
            ..Default::default()
        }
    }

    /// Creates every stream, or brings an existing one to the configuration above. Safe to run
    /// from every process at every start-up, concurrently: an unchanged stream is left alone.
    /// A change JetStream refuses (for example the retention policy of an existing stream) is
    /// an error, not something to paper over.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), NatsError> {
        for stream in Stream::ALL {
            let config = self.stream_config(stream);
            js.create_or_update_stream(config)
                .await
                .map_err(|source| NatsError::Stream {
                    stream: self.stream_name(stream),
                    source,
                })?;
        }
        Ok(())
    }

    /// Deletes every stream of this topology (tests and `paystream` tear-down); missing ones
    /// are fine. Returns how many were deleted.
    pub async fn delete_all(&self, js: &jetstream::Context) -> Result<usize, NatsError> {
        let mut deleted = 0;
        for stream in Stream::ALL {
            match js.delete_stream(self.stream_name(stream)).await {
                Ok(_) => deleted += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::DeleteStreamErrorKind::JetStream(ref js_err)
                            if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) => {}
                Err(e) => return Err(NatsError::js("delete stream", e)),
            }
        }
        Ok(deleted)
    }
}

/// Connects with the reconnect behaviour every paystream process wants: keep reconnecting
/// forever (a worker that gives up on NATS is a silent outage), with a capped backoff so a
/// restarted server is found again within a couple of seconds, and log connection changes.
///
/// The first connection is not retried: a process that cannot reach NATS at start-up says so
/// and exits, and `paystream up` (or the orchestrator) decides what to do.
pub async fn connect(url: &str) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
    let client = ConnectOptions::new()
        .name("paystream")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("NATS connection (re)established"),
                Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        })
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// 0 ms, then 100 ms doubling up to 2 s between reconnect attempts.
fn reconnect_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempt - 2).unwrap_or(u32::MAX).min(5);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subjects_carry_the_prefix() {
        let t = Topology::new("t1_");
        assert_eq!(t.prefix(), "t1_");
        assert_eq!(
            t.stream_name(Stream::PaymentCommands),
            "t1_PAYMENT_COMMANDS"
        );
        assert_eq!(t.stream_name(Stream::DeadLetters), "t1_DEAD_LETTERS");
        assert_eq!(t.subject("cmd.payment.confirm"), "t1_cmd.payment.confirm");
        assert_eq!(
            t.logical_subject("t1_cmd.payment.confirm"),
            Some("cmd.payment.confirm")
        );
        assert_eq!(t.logical_subject("t2_cmd.payment.confirm"), None);
        assert_eq!(t.consumer_name("confirm"), "t1_confirm");
        assert_eq!(
            t.dead_letter_subject("cmd.refund.process"),
            "t1_dlq.cmd.refund.process"
        );
        let plain = Topology::new("");
        assert_eq!(plain.subject("evt.x"), "evt.x");
        assert_eq!(plain.stream_name(Stream::Events), "EVENTS");
    }

    #[test]
    fn subjects_map_to_their_stream() {
        assert_eq!(
            Stream::for_subject("cmd.payment.confirm"),
            Some(Stream::PaymentCommands)
        );
        assert_eq!(
            Stream::for_subject("cmd.refund.process"),
            Some(Stream::RefundCommands)
        );
        assert_eq!(
            Stream::for_subject("evt.payment_intent.succeeded"),
            Some(Stream::Events)
        );
        assert_eq!(
            Stream::for_subject("cmd.webhook.deliver"),
            Some(Stream::WebhookDeliveries)
        );
        assert_eq!(
            Stream::for_subject("cmd.provider_event.process"),
            Some(Stream::ProviderEvents)
        );
        assert_eq!(Stream::for_subject("dlq.cmd.x"), Some(Stream::DeadLetters));
        assert_eq!(Stream::for_subject("cmd.payment."), None);
        assert_eq!(Stream::for_subject("cmd.other.x"), None);
    }

    #[test]
    fn stream_configs_follow_the_design() {
        let t = Topology::new("p_");
        for s in Stream::ALL {
            let c = t.stream_config(s);
            assert_eq!(c.storage, stream::StorageType::File);
            assert_eq!(c.duplicate_window, DUPLICATE_WINDOW);
            assert_eq!(c.subjects, vec![format!("p_{}", s.logical_subjects())]);
        }
        let dlq = t.stream_config(Stream::DeadLetters);
        assert_eq!(dlq.retention, stream::RetentionPolicy::Limits);
        assert_eq!(dlq.max_age, Duration::from_secs(2_592_000));
        assert_eq!(
            t.stream_config(Stream::Events).retention,
            stream::RetentionPolicy::Limits
        );
        assert_eq!(
            t.stream_config(Stream::PaymentCommands).retention,
            stream::RetentionPolicy::WorkQueue
        );
    }

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }
}
