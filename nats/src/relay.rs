//! The transactional-outbox relay (ARCHITECTURE.md, "Data flow"): publishes the rows the API and the
//! workers wrote in their own transactions, with `Nats-Msg-Id` = the row id, then marks them.
//!
//! A crash between publishing and marking re-publishes the rows later under the same ids,
//! and JetStream drops them inside the duplicate window. Several relays may run at once:
//! `FOR UPDATE SKIP LOCKED` gives each its own rows. The rows are read and written only
//! through `paystream_shared::store::outbox`.
//!
//! Every process that writes outbox rows runs a relay and wakes it through a [`Waker`] after
//! its own commits, so a row goes out without polling delay. The outbox used to wake relays
//! with a NOTIFY trigger instead; PostgreSQL serializes every committing transaction that has
//! notified on one database-wide lock held through its WAL flush, so with three such commits
//! per payment the disk's fsync rate would cap throughput once CPU no longer does. A slow poll
//! stays as the safety net for rows
//! whose writer runs no relay (the scheduler, the CLI) or died before waking it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use paystream_shared::store::outbox;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::topology::Topology;

/// Rows per transaction. Large enough that one round of pipelined publishes keeps up with a
/// burst, small enough that row locks are held for milliseconds.
pub const BATCH: i64 = 500;
/// The safety-net poll: covers rows written by processes that run no relay, and wake-ups lost
/// to a crash between commit and wake.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Wakes a relay in this process; cheap, and many wakes before the relay looks collapse into
/// one round. Call it after a commit that may have written outbox rows.
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("published {published} of {attempted} outbox rows ({unroutable} have no stream for their subject or are too large); the rest stay queued: {source}")]
    Publish {
        published: usize,
        attempted: usize,
        /// Rows that failed for a reason of their own rather than NATS being unavailable.
        unroutable: usize,
        #[source]
        source: async_nats::Error,
    },
}

/// Publishes up to `batch` unpublished rows, oldest first, and marks the ones JetStream
/// acked. Returns how many were marked.
///
/// The publishes are pipelined: all are sent, then all acks awaited, so a batch costs about
/// one round trip rather than one per row. On a publish failure the acked rows are still
/// marked (they are in the stream) and the error is returned; the others stay unpublished and
/// the next call retries them under the same ids.
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    topology: &Topology,
    batch: i64,
) -> Result<usize, RelayError> {
    if !outbox::any_unpublished(pool).await? {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let rows = outbox::claim_unpublished(&mut tx, batch).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let attempted = rows.len();

    let mut pending = Vec::with_capacity(attempted);
    let mut failure: Option<async_nats::Error> = None;
    let mut unroutable = 0;
    for row in &rows {
        // Serializing a `Value` cannot fail; JSONB only holds what JSON can express.
        let body = serde_json::to_vec(&row.payload).unwrap_or_default();
        let publish = PublishMessage::build()
            .payload(body.into())
            .message_id(row.id.to_string());
        match js
            .send_publish(topology.subject(&row.subject), publish)
            .await
        {
            Ok(ack) => pending.push((row.id, ack)),
            Err(e) if is_row_specific(&e) => {
                // This row can never go out as it is; it must not hold up the ones behind it.
                unroutable += 1;
                failure.get_or_insert(Box::new(e));
            }
            Err(e) => {
                // NATS itself is in trouble: stop sending, so later rows do not overtake
                // this one in the stream.
                failure.get_or_insert(Box::new(e));
                break;
            }
        }
    }

    let results = futures::future::join_all(
        pending
            .into_iter()
            .map(|(id, ack)| async move { (id, ack.await) }),
    )
    .await;
    let mut acked = Vec::with_capacity(results.len());
    for (id, result) in results {
        match result {
            Ok(_) => acked.push(id),
            Err(e) => {
                if is_row_specific(&e) {
                    unroutable += 1;
                }
                failure.get_or_insert(Box::new(e));
            }
        }
    }

    outbox::mark_published(&mut tx, &acked).await?;
    tx.commit().await?;
    match failure {
        None => Ok(acked.len()),
        Some(source) => Err(RelayError::Publish {
            published: acked.len(),
            attempted,
            unroutable,
            source,
        }),
    }
}

/// A failure that is about the row, not about NATS: no stream captures its subject (JetStream
/// answers "no responders"), or it exceeds the server's message size.
fn is_row_specific(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    matches!(
        e.kind(),
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded
    )
}

/// How a relay runs; [`RelayOptions::default`] is what production uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Rows per transaction.
    pub batch: i64,
    /// The safety-net poll.
    pub poll_interval: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: BATCH,
            poll_interval: POLL_INTERVAL,
        }
    }
}

/// Runs the relay until `shutdown` fires: publishes whatever is queued, then sleeps until
/// `waker` fires (at once) or the poll (at the latest after [`POLL_INTERVAL`]). NATS or
/// PostgreSQL being down is logged and retried with backoff; only shutdown ends it.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    topology: Topology,
    waker: Waker,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    run_with_options(pool, js, topology, RelayOptions::default(), waker, shutdown).await
}

/// [`run`] with other options (tests lengthen the poll to prove the waker works on its own).
pub async fn run_with_options(
    pool: PgPool,
    js: jetstream::Context,
    topology: Topology,
    options: RelayOptions,
    waker: Waker,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let full_batch = usize::try_from(options.batch).unwrap_or(usize::MAX);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    'running: while !shutdown.is_cancelled() {
        loop {
            let round = relay_once(&pool, &js, &topology, options.batch).await;
            let next = after_round(&round, full_batch);
            match (&round, next) {
                (Err(e), Next::BackOff) => {
                    tracing::warn!(error = %e, "outbox relay failed; backing off");
                }
                (Err(e), _) => tracing::error!(error = %e, "some outbox rows cannot be published"),
                (Ok(_), _) => {}
            }
            match next {
                Next::Drain if !shutdown.is_cancelled() => {
                    backoff.reset();
                    continue;
                }
                Next::Drain | Next::Wait => {
                    backoff.reset();
                    break;
                }
                Next::BackOff => {
                    if !backoff.wait(&shutdown).await {
                        break 'running;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = waker.0.notified() => {}
            _ = tokio::time::sleep(options.poll_interval) => {}
        }
    }
    Ok(())
}

/// What the relay does after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Another round at once: the batch was full, so there is probably more.
    Drain,
    /// Sleep until a wake-up or the poll.
    Wait,
    /// NATS or PostgreSQL is unavailable: wait with growing delays before trying again.
    BackOff,
}

fn after_round(round: &Result<usize, RelayError>, full_batch: usize) -> Next {
    match round {
        Ok(n) if *n == full_batch => Next::Drain,
        Ok(_) => Next::Wait,
        // NATS answered: the failure is about particular rows (say, a subject no stream
        // captures), or some acks were slow. Backing off would only hold the healthy rows up;
        // the failed ones are retried on every round until fixed.
        Err(RelayError::Publish {
            published,
            attempted,
            unroutable,
            ..
        }) if *published > 0 || unroutable == attempted => {
            if *attempted == full_batch {
                Next::Drain
            } else {
                Next::Wait
            }
        }
        Err(_) => Next::BackOff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_error(published: usize, attempted: usize, unroutable: usize) -> RelayError {
        RelayError::Publish {
            published,
            attempted,
            unroutable,
            source: "boom".into(),
        }
    }

    #[test]
    fn full_batches_drain_and_partial_ones_wait() {
        assert_eq!(after_round(&Ok(500), 500), Next::Drain);
        assert_eq!(after_round(&Ok(3), 500), Next::Wait);
        assert_eq!(after_round(&Ok(0), 500), Next::Wait);
    }

    #[test]
    fn a_row_that_cannot_be_published_never_backs_the_relay_off() {
        // Only the stuck row was there: NATS answered, so wait for the next wake-up as usual.
        assert_eq!(after_round(&Err(publish_error(0, 1, 1)), 500), Next::Wait);
        // Healthy rows went out beside it.
        assert_eq!(after_round(&Err(publish_error(2, 3, 1)), 500), Next::Wait);
        // A full batch with a stuck row in it: the rest of the queue is drained at once.
        assert_eq!(
            after_round(&Err(publish_error(499, 500, 1)), 500),
            Next::Drain
        );
    }

    #[test]
    fn an_unavailable_broker_or_database_backs_off() {
        // Nothing acked and the failure was not about the rows: NATS is in trouble.
        assert_eq!(
            after_round(&Err(publish_error(0, 4, 0)), 500),
            Next::BackOff
        );
        assert_eq!(
            after_round(&Err(RelayError::Database(sqlx::Error::PoolTimedOut)), 500),
            Next::BackOff
        );
    }
}
