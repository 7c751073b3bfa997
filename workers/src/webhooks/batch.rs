//! Coalescing: many deliveries in flight at once, each written as if alone, and one statement
//! for all that are waiting.
//!
//! A handler hands its request to a [`Coalescer`] and awaits the answer. The coalescer's
//! runners each take every request waiting (up to `max_batch`) and run them as one batch:
//! while one batch is in PostgreSQL, the next one fills up. Under no load a request runs at
//! once, alone, so nothing waits on a timer; under load the statements per delivery fall
//! with the batch size. A failed batch fails every request in it, and each handler then
//! takes its own retry path, exactly as if its single statement had failed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The batch's statement failed (the text of the store's error, shared by the batch).
    #[error("{0}")]
    Failed(String),
    /// The batch answered fewer entries than it was given: a bug, treated as a failure.
    #[error("the batch answered {got} of {asked} requests")]
    Short { asked: usize, got: usize },
    /// The coalescer's runners are gone (the process is stopping).
    #[error("the batch runner stopped")]
    Stopped,
}

type Answer<R> = oneshot::Sender<Result<R, BatchError>>;
/// The queue the runners share.
type Queue<Q, R> = Arc<Mutex<mpsc::UnboundedReceiver<(Q, Answer<R>)>>>;
type BatchFuture<R> = Pin<Box<dyn Future<Output = Result<Vec<R>, String>> + Send>>;
/// Runs one batch: one answer per request, in order.
pub type BatchFn<Q, R> = Arc<dyn Fn(Vec<Q>) -> BatchFuture<R> + Send + Sync>;

pub struct Coalescer<Q, R> {
    tx: mpsc::UnboundedSender<(Q, Answer<R>)>,
}

impl<Q: Send + 'static, R: Send + 'static> Coalescer<Q, R> {
    /// Starts `runners` tasks (batches in flight at once) on the current runtime. They stop
    /// when the coalescer is dropped.
    pub fn start(runners: usize, max_batch: usize, run: BatchFn<Q, R>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..runners.max(1) {
            tokio::spawn(runner(rx.clone(), max_batch.max(1), run.clone()));
        }
        Self { tx }
    }

    /// Queues `request` for the next batch and waits for its answer.
    pub async fn call(&self, request: Q) -> Result<R, BatchError> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send((request, answer))
            .map_err(|_| BatchError::Stopped)?;
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn runner<Q, R>(rx: Queue<Q, R>, max_batch: usize, run: BatchFn<Q, R>) {
    loop {
        let mut batch = Vec::new();
        {
            // One runner at a time takes what is waiting; the others are running batches.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
        }
        let (requests, answers): (Vec<Q>, Vec<Answer<R>>) = batch.into_iter().unzip();
        let asked = requests.len();
        match run(requests).await {
            Ok(results) if results.len() == asked => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(Ok(result));
                }
            }
            Ok(results) => {
                let err = BatchError::Short {
                    asked,
                    got: results.len(),
                };
                for answer in answers {
                    let _ = answer.send(Err(err.clone()));
                }
            }
            Err(e) => {
                let err = BatchError::Failed(e);
                for answer in answers {
                    let _ = answer.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let run: BatchFn<u32, u32> = Arc::new(move |qs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(qs.into_iter().map(|q| q * 2).collect())
            })
        });
        let c = Arc::new(Coalescer::start(1, 64, run));
        let mut tasks = Vec::new();
        for n in 0..200u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { (n, c.call(n).await) }));
        }
        for t in tasks {
            let (n, got) = t.await.unwrap();
            assert_eq!(got, Ok(n * 2));
        }
        // 200 requests in batches of at most 64: at least 4 batches, far fewer than 200.
        let n = batches.load(Ordering::SeqCst);
        assert!((4..50).contains(&n), "{n} batches");
    }

    #[tokio::test]
    async fn a_failed_or_short_batch_fails_each_request() {
        let run: BatchFn<u32, u32> = Arc::new(|qs: Vec<u32>| {
            Box::pin(async move {
                if qs.contains(&0) {
                    Err("boom".to_owned())
                } else {
                    Ok(Vec::new())
                }
            })
        });
        let c = Coalescer::start(2, 8, run);
        assert_eq!(c.call(0).await, Err(BatchError::Failed("boom".into())));
        assert_eq!(c.call(1).await, Err(BatchError::Short { asked: 1, got: 0 }));
        assert_eq!(
            BatchError::Short { asked: 1, got: 0 }.to_string(),
            "the batch answered 0 of 1 requests"
        );
    }
}
