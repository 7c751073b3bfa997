//! The dead-letter stream: how a message is filed there (by the consume loop and the
//! max-deliveries watch) and the library behind `paystream dlq list|show|replay|purge`.
//!
//! A dead letter is the original payload, unchanged, on `{prefix}dlq.<origin logical subject>`
//! with headers that say where it came from, how often it was tried and why it was given up.
//! Its id is its sequence in the DEAD_LETTERS stream.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use async_nats::jetstream::{self, message::PublishMessage, stream::RawMessageErrorKind};
use async_nats::HeaderMap;

use crate::topology::{NatsError, Stream, Topology};

pub const HEADER_ORIGIN_STREAM: &str = "Paystream-Origin-Stream";
/// The logical subject (without prefix) the message was consumed from; replay publishes there.
pub const HEADER_ORIGIN_SUBJECT: &str = "Paystream-Origin-Subject";
/// The message's sequence in its origin stream.
pub const HEADER_ORIGIN_SEQUENCE: &str = "Paystream-Origin-Sequence";
pub const HEADER_DELIVERIES: &str = "Paystream-Deliveries";
pub const HEADER_LAST_ERROR: &str = "Paystream-Last-Error";
/// RFC 3339, UTC.
pub const HEADER_DEAD_LETTERED_AT: &str = "Paystream-Dead-Lettered-At";
pub const HEADER_OBJECT_ID: &str = "Paystream-Object-Id";
/// Set on a replayed message: the dead letter's id it came from.
pub const HEADER_REPLAYED_FROM: &str = "Paystream-Replayed-From";

/// Header values are kept to one line of bounded length: a multi-line handler error would
/// otherwise break the NATS protocol line, and a huge one the message size limit.
const MAX_ERROR_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter {0} not found")]
    NotFound(u64),
    #[error("message {id} in the dead-letter stream is not a dead letter: {reason}")]
    Malformed { id: u64, reason: String },
    #[error("dead letter {id} came from {subject}, which no stream replays to")]
    NotReplayable { id: u64, subject: String },
    #[error("cannot publish to {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("dead letter {id} was replayed but could not be deleted (a second replay would duplicate it): {source}")]
    DeleteAfterReplay {
        id: u64,
        #[source]
        source: async_nats::Error,
    },
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// One dead letter as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The sequence in the DEAD_LETTERS stream.
    pub id: u64,
    /// The origin stream's name without prefix, e.g. `PAYMENT_COMMANDS`.
    pub origin_stream: String,
    /// The logical subject, e.g. `cmd.payment.confirm`.
    pub origin_subject: String,
    pub origin_sequence: Option<u64>,
    pub object_id: Option<String>,
    pub deliveries: u64,
    pub last_error: String,
    pub dead_lettered_at: DateTime<Utc>,
    /// The payload as JSON; a payload that is not JSON (which is one reason to end up here)
    /// is shown as a JSON string of its text. Replay always republishes the original bytes.
    pub payload: serde_json::Value,
}

/// What a replay of everything did: the CLI audits each replayed one and reports the rest.
#[derive(Debug, Default)]
pub struct ReplayAll {
    pub replayed: Vec<DeadLetter>,
    pub failed: Vec<(u64, DlqError)>,
}

/// What the consume loop and the watch know about a message they give up on.
#[derive(Debug, Clone)]
pub(crate) struct NewDeadLetter<'a> {
    pub origin: Stream,
    pub origin_subject: &'a str,
    pub origin_sequence: u64,
    pub deliveries: u64,
    pub last_error: &'a str,
    pub object_id: Option<&'a str>,
    pub payload: Bytes,
}

/// Files a dead letter and waits for JetStream's ack; returns its id. The caller acks (or
/// deletes) the original only after this returns `Ok`, so a crash in between leaves the
/// original to be redelivered: a duplicate dead letter at worst, never a lost message.
pub(crate) async fn file(
    js: &jetstream::Context,
    topology: &Topology,
    dl: NewDeadLetter<'_>,
) -> Result<u64, DlqError> {
    let subject = topology.dead_letter_subject(dl.origin_subject);
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_ORIGIN_STREAM, dl.origin.base_name());
    headers.insert(HEADER_ORIGIN_SUBJECT, one_line(dl.origin_subject));
    headers.insert(HEADER_ORIGIN_SEQUENCE, dl.origin_sequence.to_string());
    headers.insert(HEADER_DELIVERIES, dl.deliveries.to_string());
    headers.insert(HEADER_LAST_ERROR, one_line(dl.last_error));
    headers.insert(
        HEADER_DEAD_LETTERED_AT,
        Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    if let Some(object_id) = dl.object_id {
        headers.insert(HEADER_OBJECT_ID, one_line(object_id));
    }
    // The same origin message filed twice (the consume loop and the max-deliveries watch
    // racing, or a crash between filing and acking) is dropped by the duplicate window.
    let msg_id = format!(
        "dlq:{}:{}",
        topology.stream_name(dl.origin),
        dl.origin_sequence
    );
    let publish = PublishMessage::build()
        .payload(dl.payload)
        .headers(headers)
        .message_id(msg_id);
    let ack = js
        .send_publish(subject.clone(), publish)
        .await
        .map_err(|e| DlqError::Publish {
            subject: subject.clone(),
            source: Box::new(e),
        })?
        .await
        .map_err(|e| DlqError::Publish {
            subject,
            source: Box::new(e),
        })?;
    Ok(ack.sequence)
}

fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

async fn dlq_stream(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<jetstream::stream::Stream<()>, DlqError> {
    js.get_stream_no_info(topology.stream_name(Stream::DeadLetters))
        .await
        .map_err(|e| NatsError::js("open the dead-letter stream", e).into())
}

fn parse(
    topology: &Topology,
    msg: &jetstream::message::StreamMessage,
) -> Result<DeadLetter, DlqError> {
    let id = msg.sequence;
    let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
    let malformed = |reason: &str| DlqError::Malformed {
        id,
        reason: reason.to_owned(),
    };
    let origin_subject = match header(HEADER_ORIGIN_SUBJECT) {
        Some(s) => s,
        None => topology
            .logical_subject(msg.subject.as_str())
            .and_then(|s| s.strip_prefix("dlq."))
            .map(str::to_owned)
            .ok_or_else(|| malformed("no origin subject"))?,
    };
    let origin_stream = header(HEADER_ORIGIN_STREAM)
        .or_else(|| Stream::for_subject(&origin_subject).map(|s| s.base_name().to_owned()))
        .unwrap_or_default();
    let deliveries = header(HEADER_DELIVERIES)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let dead_lettered_at = header(HEADER_DEAD_LETTERED_AT)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::UNIX_EPOCH);
    let payload = serde_json::from_slice(&msg.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&msg.payload).into_owned())
    });
    Ok(DeadLetter {
        id,
        origin_stream,
        origin_subject,
        origin_sequence: header(HEADER_ORIGIN_SEQUENCE).and_then(|s| s.parse().ok()),
        object_id: header(HEADER_OBJECT_ID),
        deliveries,
        last_error: header(HEADER_LAST_ERROR).unwrap_or_default(),
        dead_lettered_at,
        payload,
    })
}

async fn raw(
    stream: &jetstream::stream::Stream<()>,
    id: u64,
) -> Result<Option<jetstream::message::StreamMessage>, DlqError> {
    match stream.get_raw_message(id).await {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(NatsError::js("read a dead letter", e).into()),
    }
}

/// Every dead letter, oldest first.
pub async fn list(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<Vec<DeadLetter>, DlqError> {
    let stream = dlq_stream(js, topology).await?;
    let filter = topology.subject("dlq.>");
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        // "The first message at or after `next` on the filter" skips the gaps left by replayed
        // and deleted dead letters in one request each.
        match stream.get_first_raw_message_by_subject(&filter, next).await {
            Ok(msg) => {
                next = msg.sequence + 1;
                out.push(parse(topology, &msg)?);
            }
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => return Ok(out),
            Err(e) => return Err(NatsError::js("list dead letters", e).into()),
        }
    }
}

pub async fn get(
    js: &jetstream::Context,
    topology: &Topology,
    id: u64,
) -> Result<Option<DeadLetter>, DlqError> {
    let stream = dlq_stream(js, topology).await?;
    raw(&stream, id)
        .await?
        .map(|msg| parse(topology, &msg))
        .transpose()
}

/// Publishes the dead letter's original payload to its origin subject again, under a new
/// `Nats-Msg-Id` (the old one may still be inside the duplicate window and would be dropped),
/// waits for the ack, and only then deletes the dead letter.
pub async fn replay(
    js: &jetstream::Context,
    topology: &Topology,
    id: u64,
) -> Result<DeadLetter, DlqError> {
    let stream = dlq_stream(js, topology).await?;
    let msg = raw(&stream, id).await?.ok_or(DlqError::NotFound(id))?;
    let dead_letter = parse(topology, &msg)?;
    match Stream::for_subject(&dead_letter.origin_subject) {
        Some(origin) if origin != Stream::DeadLetters => {}
        _ => {
            return Err(DlqError::NotReplayable {
                id,
                subject: dead_letter.origin_subject,
            })
        }
    }
    let subject = topology.subject(&dead_letter.origin_subject);
    let publish = PublishMessage::build()
        .payload(msg.payload.clone())
        .message_id(uuid::Uuid::new_v4().to_string())
        .header(HEADER_REPLAYED_FROM, id.to_string());
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(|e| DlqError::Publish {
            subject: subject.clone(),
            source: Box::new(e),
        })?
        .await
        .map_err(|e| DlqError::Publish {
            subject,
            source: Box::new(e),
        })?;
    stream
        .delete_message(id)
        .await
        .map_err(|e| DlqError::DeleteAfterReplay {
            id,
            source: Box::new(e),
        })?;
    Ok(dead_letter)
}

/// Replays every dead letter, one at a time; a failure is reported and the rest still run.
pub async fn replay_all(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<ReplayAll, DlqError> {
    let mut report = ReplayAll::default();
    for dead_letter in list(js, topology).await? {
        match replay(js, topology, dead_letter.id).await {
            Ok(done) => report.replayed.push(done),
            Err(e) => report.failed.push((dead_letter.id, e)),
        }
    }
    Ok(report)
}

/// Deletes every dead letter; returns how many there were.
pub async fn purge(js: &jetstream::Context, topology: &Topology) -> Result<u64, DlqError> {
    let stream = dlq_stream(js, topology).await?;
    let response = stream
        .purge()
        .await
        .map_err(|e| NatsError::js("purge dead letters", e))?;
    Ok(response.purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(1000);
        let line = one_line(&long);
        assert!(line.len() <= MAX_ERROR_LEN);
        assert!(line.chars().all(|c| c == 'é'));
    }
}
