//! The safety net for messages the consume loop cannot settle: when JetStream gives up
//! redelivering a message because none of its `max_deliver` deliveries was acked (the worker
//! died, hung, or lost its connection each time), it is filed as a dead letter and removed
//! from its work queue, where it would otherwise sit forever. Two mechanisms, because the
//! first can miss: the server's max-deliveries advisory, and a periodic sweep.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::dlq::{self, NewDeadLetter};
use crate::topology::{NatsError, Stream, Topology};

/// The reason filed with a message that JetStream stopped redelivering because no delivery
/// was ever acked (the worker died, hung, or lost its connection each time).
pub const MAX_DELIVERIES_REASON: &str =
    "max deliveries reached without an ack (worker crashed or hung)";
/// How often the watch sweeps for stranded messages whose advisory it missed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The body of `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u64,
}

/// The safety net for workers that crash or hang: when JetStream gives up redelivering a
/// message (its `max_deliver` deliveries all went unacked), this files it as a dead letter
/// and then deletes it from the work queue, where it would otherwise sit forever.
///
/// Several processes may run it for the same consumer: a queue group hands each advisory to
/// one of them.
///
/// # Limit
/// Advisories are core NATS messages and are not stored: one published while no watch runs
/// (every worker down at that moment) is lost. A periodic sweep ([`StrandedSweeper`], run
/// here at start-up and every [`SWEEP_INTERVAL`]) covers that case for work-queue streams:
/// an unacked message at or below the consumer's ack floor will never be delivered again, so
/// it is filed and deleted the same way. On EVENTS (limits retention, nothing is deleted) a
/// missed advisory leaves the event where it is; events also live in PostgreSQL and can be
/// redelivered through `POST /api/events/{id}/redeliver`.
pub async fn run_watch(
    client: &async_nats::Client,
    js: &jetstream::Context,
    topology: &Topology,
    stream: Stream,
    durable: &str,
    shutdown: CancellationToken,
) -> Result<(), NatsError> {
    let stream_name = topology.stream_name(stream);
    let consumer = topology.consumer_name(durable);
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer}");
    let mut advisories = client
        .queue_subscribe(subject.clone(), format!("{consumer}-max-deliveries"))
        .await
        .map_err(|source| NatsError::Subscribe {
            subject: subject.clone(),
            source,
        })?;
    let mut sweeper = StrandedSweeper::new(stream, durable);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            advisory = advisories.next() => {
                let Some(advisory) = advisory else {
                    return Err(NatsError::js(
                        "advisory subscription",
                        std::io::Error::other("the NATS client was closed"),
                    ));
                };
                if let Err(e) = on_max_deliveries(js, topology, stream, &advisory.payload).await {
                    // The sweep retries it later.
                    tracing::error!(error = %e, "cannot dead-letter a message past max deliveries");
                }
            }
            _ = sweep.tick() => {
                match sweeper.sweep(js, topology).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(count = n, "stranded messages dead-lettered"),
                    Err(e) => tracing::warn!(error = %e, "stranded-message sweep failed"),
                }
            }
        }
    }
}

async fn on_max_deliveries(
    js: &jetstream::Context,
    topology: &Topology,
    stream: Stream,
    payload: &[u8],
) -> Result<(), NatsError> {
    let advisory: MaxDeliveriesAdvisory =
        serde_json::from_slice(payload).map_err(|e| NatsError::js("parse advisory", e))?;
    let handle = js
        .get_stream_no_info(topology.stream_name(stream))
        .await
        .map_err(|e| NatsError::js("open stream", e))?;
    move_to_dead_letters(
        js,
        topology,
        stream,
        &handle,
        advisory.stream_seq,
        advisory.deliveries,
        MAX_DELIVERIES_REASON,
    )
    .await
    .map(|_| ())
}

/// Files the stream's message `seq` as a dead letter and, on a work queue, deletes it.
/// Returns `false` when the message is already gone (handled by someone else).
async fn move_to_dead_letters(
    js: &jetstream::Context,
    topology: &Topology,
    stream: Stream,
    handle: &jetstream::stream::Stream<()>,
    seq: u64,
    deliveries: u64,
    reason: &str,
) -> Result<bool, NatsError> {
    use jetstream::stream::RawMessageErrorKind;
    let msg = match handle.get_raw_message(seq).await {
        Ok(msg) => msg,
        Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => return Ok(false),
        Err(e) => return Err(NatsError::js("read message", e)),
    };
    let subject = topology
        .logical_subject(msg.subject.as_str())
        .unwrap_or(msg.subject.as_str())
        .to_owned();
    let id = dlq::file(
        js,
        topology,
        NewDeadLetter {
            origin: stream,
            origin_subject: &subject,
            origin_sequence: seq,
            deliveries,
            last_error: reason,
            object_id: None,
            payload: msg.payload,
        },
    )
    .await
    .map_err(|e| NatsError::js("file dead letter", e))?;
    tracing::warn!(
        dead_letter = id,
        seq,
        subject,
        reason,
        "message dead-lettered"
    );
    if stream.is_work_queue() {
        // Filed first, deleted second: a crash in between leaves a duplicate, not a loss.
        handle
            .delete_message(seq)
            .await
            .map_err(|e| NatsError::js("delete message", e))?;
    }
    Ok(true)
}

/// Finds work-queue messages that their consumer will never deliver again although nobody
/// acked them: the ones whose max-deliveries advisory went unheard.
///
/// In a work queue an acked message is deleted, so a message still stored at or below the
/// consumer's ack floor (or at or below its last delivered sequence when nothing is pending)
/// was given up by JetStream. A message is filed only when two sweeps in a row see it, which
/// keeps a message acked between our two reads (the ack moves the floor, then the delete
/// follows) from being mistaken for a stranded one.
#[derive(Debug)]
pub struct StrandedSweeper {
    stream: Stream,
    durable: String,
    suspects: HashSet<u64>,
}

/// The reason filed with a message the sweep found.
pub const STRANDED_REASON: &str =
    "max deliveries reached without an ack (worker crashed or hung); found by the sweep";

impl StrandedSweeper {
    pub fn new(stream: Stream, durable: &str) -> Self {
        Self {
            stream,
            durable: durable.to_owned(),
            suspects: HashSet::new(),
        }
    }

    /// One pass; returns how many messages it dead-lettered.
    pub async fn sweep(
        &mut self,
        js: &jetstream::Context,
        topology: &Topology,
    ) -> Result<usize, NatsError> {
        use jetstream::stream::RawMessageErrorKind;
        if !self.stream.is_work_queue() {
            return Ok(0);
        }
        let handle = js
            .get_stream_no_info(topology.stream_name(self.stream))
            .await
            .map_err(|e| NatsError::js("open stream", e))?;
        let info = match handle
            .consumer_info(topology.consumer_name(&self.durable))
            .await
        {
            Ok(info) => info,
            Err(e) => {
                let missing = matches!(
                    e.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                        | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
                );
                if missing {
                    // Not created yet: nothing can be stranded.
                    return Ok(0);
                }
                return Err(NatsError::js("consumer info", e));
            }
        };
        let bound = if info.num_ack_pending == 0 {
            info.delivered.stream_sequence
        } else {
            info.ack_floor.stream_sequence
        };
        let filter = if info.config.filter_subject.is_empty() {
            topology.subject(self.stream.logical_subjects())
        } else {
            info.config.filter_subject.clone()
        };
        let deliveries = u64::try_from(info.config.max_deliver).unwrap_or(0);
        let mut seen = HashSet::new();
        let mut filed = 0;
        let mut next = 1;
        while next <= bound {
            let msg = match handle.get_first_raw_message_by_subject(&filter, next).await {
                Ok(msg) if msg.sequence <= bound => msg,
                Ok(_) => break,
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(e) => return Err(NatsError::js("scan stream", e)),
            };
            next = msg.sequence + 1;
            if self.suspects.contains(&msg.sequence) {
                if move_to_dead_letters(
                    js,
                    topology,
                    self.stream,
                    &handle,
                    msg.sequence,
                    deliveries,
                    STRANDED_REASON,
                )
                .await?
                {
                    filed += 1;
                }
            } else {
                seen.insert(msg.sequence);
            }
        }
        self.suspects = seen;
        Ok(filed)
    }
}
