//! Streams, subjects and consumer names, all behind one prefix so a test run (or a tenant)
//! never shares a stream with another one, and the idempotent start-up that creates them.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event};
use paystream_shared::nats_settings::{NatsAuth, NatsSettings};

/// How long JetStream remembers a `Nats-Msg-Id` and drops a second publish with the same id.
///
/// Why 2 minutes: the relay re-publishes a row only when it died (or lost PostgreSQL) between
/// the publish and the `UPDATE ... published_at`, and the next relay picks the row up within
/// about a second (its poll), so real duplicates arrive seconds apart. Two minutes leaves room
/// for a slow restart while bounding what the server keeps in memory (at 5,000 messages a
/// second that is 600,000 ids per stream). A duplicate that arrives later still gets through,
/// and idempotent consumers (ARCHITECTURE.md) make that harmless.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How often [`Topology::ensure`] asks for one stream while JetStream is busy (an election, a
/// stream moving to new peers) before giving up; with 5 s request timeouts, about a minute.
const ENSURE_ATTEMPTS: u32 = 10;

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
    #[error("NATS settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Replicas(String),
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
    /// Replicas of every stream and durable consumer (`PAYSTREAM_STREAM_REPLICAS`).
    replicas: usize,
}

impl Topology {
    /// `prefix` is used as is (the configuration validates it to letters, digits, `_` and `-`,
    /// so it can start a subject token and a stream name alike).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            replicas: 1,
        }
    }

    /// The same names, with `replicas` copies of every stream and durable consumer. On a
    /// cluster, 3 survives losing any one node; 1 is all a single server can hold.
    #[must_use]
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// What the process configuration asks for: its prefix and `PAYSTREAM_STREAM_REPLICAS`.
    pub fn from_config(config: &paystream_shared::config::Config) -> Self {
        Self::new(&config.stream_prefix).with_replicas(config.nats.stream_replicas)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn replicas(&self) -> usize {
        self.replicas
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
            num_replicas: self.replicas,
            description: Some(format!("paystream {}", stream.logical_subjects())),
            ..Default::default()
        }
    }

    /// Creates every stream, or brings an existing one to the configuration above. Safe to run
    /// from every process at every start-up, concurrently: an unchanged stream is left alone.
    /// A change JetStream refuses (for example the retention policy of an existing stream) is
    /// an error, not something to paper over.
    ///
    /// The replica count is part of the configuration: a stream made with another count is
    /// updated to it, which a 2.9 cluster does in place (it adds or removes peers and copies
    /// the messages). Where that cannot work (more replicas than JetStream nodes, or a server
    /// that is not clustered) the error says what to do.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), NatsError> {
        for stream in Stream::ALL {
            let config = self.stream_config(stream);
            let name = self.stream_name(stream);
            let info = self.ensure_stream(js, config, &name).await?;
            // A standalone server accepts replicas > 1 and quietly keeps one copy; a stream
            // that claims redundancy it does not have is worse than a refusal.
            let has = info.config.num_replicas.max(1);
            if has != self.replicas {
                return Err(NatsError::Replicas(self.replicas_advice(&name, has)));
            }
        }
        Ok(())
    }

    /// One stream's create-or-update, asked again while the cluster is busy: right after a
    /// node restarts, or while a stream moves to new peers, JetStream may time out or answer
    /// 503 for a few seconds, and the update is safe to repeat.
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        config: stream::Config,
        name: &str,
    ) -> Result<stream::Info, NatsError> {
        use async_nats::jetstream::context::CreateStreamErrorKind;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match js.create_or_update_stream(config.clone()).await {
                Ok(info) => return Ok(info),
                Err(e) if attempt < ENSURE_ATTEMPTS => {
                    let transient = match e.kind() {
                        CreateStreamErrorKind::TimedOut => true,
                        CreateStreamErrorKind::JetStream(js_err) => js_err.code() == 503,
                        _ => false,
                    };
                    if !transient {
                        return Err(self.stream_error(name, e));
                    }
                    tracing::warn!(stream = name, error = %e, "JetStream busy; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(self.stream_error(name, e)),
            }
        }
    }

    fn stream_error(
        &self,
        name: &str,
        source: async_nats::jetstream::context::CreateStreamError,
    ) -> NatsError {
        use async_nats::jetstream::context::CreateStreamErrorKind;
        if let CreateStreamErrorKind::JetStream(e) = source.kind() {
            // 10074: replicas > 1 on a server that is not clustered; 10023: not enough
            // JetStream nodes (or resources on them) to place that many replicas.
            let code = e.error_code().0;
            if self.replicas > 1 && (code == 10074 || code == 10023) {
                return NatsError::Replicas(format!(
                    "{} (NATS said: {e})",
                    self.replicas_advice(name, 0)
                ));
            }
        }
        NatsError::Stream {
            stream: name.to_owned(),
            source,
        }
    }

    fn replicas_advice(&self, name: &str, has: usize) -> String {
        let now = if has == 0 {
            String::new()
        } else {
            format!(" (it has {has})")
        };
        format!(
            "stream {name} cannot get the {wanted} replicas PAYSTREAM_STREAM_REPLICAS={wanted} \
             asks for{now}: the NATS at NATS_URL has fewer than {wanted} JetStream nodes or is \
             not a cluster. Point NATS_URL at a cluster of at least {wanted} nodes \
             (`paystream up --nats-cluster 3` starts one locally), or set \
             PAYSTREAM_STREAM_REPLICAS to the cluster's size (1 for a single server)",
            wanted = self.replicas
        )
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

/// Connects to one server (or a comma-separated list) with no credentials: tests and tools
/// that talk to a local NATS. Processes use [`connect_with`] and their configuration.
pub async fn connect(url: &str) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
    let settings = NatsSettings::plain(url).map_err(|e| NatsError::Settings(e.to_string()))?;
    connect_with(&settings).await
}

/// Connects with the reconnect behaviour every paystream process wants: keep reconnecting
/// forever (a worker that gives up on NATS is a silent outage), to any of the seeds or the
/// cluster members the server announced, with a capped backoff so a restarted node is found
/// again within a couple of seconds, and log connection changes.
///
/// The first connection is not retried: a process that cannot reach any seed at start-up
/// says so and exits, and `paystream up` (or the orchestrator) decides what to do.
pub async fn connect_with(
    settings: &NatsSettings,
) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
    let url = settings.url_list();
    let connect_error = |source| NatsError::Connect {
        url: url.clone(),
        source,
    };
    let mut servers = Vec::with_capacity(settings.servers.len());
    for entry in &settings.servers {
        let addr = entry.parse::<async_nats::ServerAddr>().map_err(|e| {
            NatsError::Settings(format!(
                "NATS_URL entry {entry:?} is not a server address: {e}"
            ))
        })?;
        servers.push(addr);
    }
    let mut options = ConnectOptions::new()
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
        });
    options = match &settings.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().clone())
        }
        NatsAuth::Token(token) => options.token(token.expose().clone()),
        NatsAuth::NkeySeed(seed) => options.nkey(seed.expose().clone()),
        NatsAuth::CredsFile(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Settings(format!("cannot read {}: {e}", path.display())))?,
    };
    if let Some(ca) = &settings.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls.required() {
        options = options.require_tls(true);
    }
    let client = options.connect(servers).await.map_err(connect_error)?;
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
