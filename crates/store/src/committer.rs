//! The committer thread: it owns every engine write. It blocks for one
//! submitted batch, drains whatever else is already queued (up to
//! `max_batch_ops` operations), applies them as ONE engine write — synced if
//! any of them asked to be durable — and then resolves each batch's
//! [`CommitReceipt`]. RocksDB work therefore never runs on async workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::batch::Batch;
use crate::engine::Engine;
use crate::error::StoreError;

/// One submitted batch travelling to the committer.
pub(crate) struct Request {
    /// The writes to apply.
    pub(crate) batch: Batch,
    /// Whether the submitter needs the WAL synced before being answered.
    pub(crate) durable: bool,
    /// Where the outcome goes; resolves the submitter's [`CommitReceipt`].
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
    /// A slot of the bounded queue (`submit`), released when the committer
    /// takes the request; `None` for `submit_now`, which is not bounded.
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

/// Resolves once a submitted batch is applied (and, if it was durable,
/// WAL-synced). Await it, or call [`CommitReceipt::wait_blocking`] from
/// non-async code. Dropping it does not cancel the write.
#[derive(Debug)]
pub struct CommitReceipt {
    /// Answered by the committer after the group holding the batch commits.
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl CommitReceipt {
    pub(crate) fn new(rx: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Self { rx }
    }

    /// Block the current thread until the batch is committed. Must not be
    /// called on an async worker.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        self.rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Future for CommitReceipt {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Closed)))
    }
}

/// Commit statistics, exported on /metrics.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Engine writes performed: one per group commit.
    pub commits: u64,
    /// Submitted batches the committer has processed; `batches / commits` is
    /// the average group size.
    pub batches: u64,
    /// Operations written, over all commits.
    pub ops: u64,
    /// Commits that fsynced the WAL.
    pub syncs: u64,
    /// Wall time spent inside engine writes, to derive mean commit latency.
    pub commit_seconds_total: f64,
    /// Duration of the latest engine write, for spotting a slow disk now.
    pub last_commit_micros: u64,
    /// Largest number of batches merged into one commit.
    pub max_group: u64,
    /// Why the store refuses writes, once a commit has failed (a full or
    /// failing disk): every later batch is refused so none is applied
    /// after one that was lost.
    pub failure: Option<String>,
}

/// What the committer thread needs; moved onto that thread.
pub(crate) struct Committer {
    /// Where batches are written.
    pub(crate) engine: Arc<dyn Engine>,
    /// Submitted batches, in submission order; closed when every sender is
    /// dropped, which is how the thread learns to stop.
    pub(crate) rx: mpsc::UnboundedReceiver<Request>,
    /// Shared with [`crate::Store::stats`].
    pub(crate) stats: Arc<Mutex<StoreStats>>,
    /// Cap on operations merged into one group.
    pub(crate) max_batch_ops: usize,
    /// False: one engine write per submitted batch (benchmark comparison).
    pub(crate) group_commit: bool,
}

impl Committer {
    /// The thread's body: commit groups until the channel closes and is
    /// drained.
    pub(crate) fn run(mut self) {
        // A batch received while filling a group that would overflow it; it
        // starts the next group so submission order is kept.
        let mut carry: Option<Request> = None;
        // The first failed commit's message: later batches are refused so no
        // batch is applied after an earlier one was lost.
        let mut poisoned: Option<String> = None;
        loop {
            let mut first = match carry.take() {
                Some(request) => request,
                None => match self.rx.blocking_recv() {
                    Some(request) => request,
                    None => break,
                },
            };
            // Taken off the queue: its slot is free for the next submitter.
            first.slot = None;
            let group = self.fill_group(first, &mut carry);
            match &poisoned {
                Some(message) => {
                    for request in group {
                        let _ = request
                            .reply
                            .send(Err(StoreError::Poisoned(message.clone())));
                    }
                }
                None => {
                    if let Err(e) = self.commit(group) {
                        tracing::error!(error = %e, "group commit failed; store refuses further writes");
                        poisoned = Some(e.to_string());
                        self.stats.lock().failure = Some(e.to_string());
                    }
                }
            }
        }
        tracing::debug!("committer drained and stopped");
    }

    /// Collect `first` and whatever else is already queued, without waiting,
    /// until the group would exceed `max_batch_ops` operations.
    fn fill_group(&mut self, first: Request, carry: &mut Option<Request>) -> Vec<Request> {
        let mut ops = first.batch.len();
        let mut group = vec![first];
        if !self.group_commit {
            return group;
        }
        while ops < self.max_batch_ops {
            match self.rx.try_recv() {
                Ok(mut request) => {
                    request.slot = None;
                    if ops + request.batch.len() > self.max_batch_ops {
                        *carry = Some(request);
                        break;
                    }
                    ops += request.batch.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        group
    }

    /// Apply a group as one engine write and answer every receipt in it.
    /// Returns the write's error (each receipt also got a copy).
    fn commit(&self, group: Vec<Request>) -> Result<(), StoreError> {
        let mut merged = Batch::new();
        let mut sync = false;
        let mut replies = Vec::with_capacity(group.len());
        for request in group {
            sync |= request.durable;
            merged.append(request.batch);
            replies.push(request.reply);
        }
        let started = Instant::now();
        let outcome = self.engine.write(&merged, sync);
        let elapsed = started.elapsed();
        {
            let mut stats = self.stats.lock();
            stats.commits += 1;
            stats.batches += replies.len() as u64;
            stats.ops += merged.len() as u64;
            stats.syncs += u64::from(sync);
            stats.commit_seconds_total += elapsed.as_secs_f64();
            stats.last_commit_micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            stats.max_group = stats.max_group.max(replies.len() as u64);
        }
        for reply in replies {
            // A dropped receipt just means nobody is waiting for the answer.
            let _ = reply.send(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            });
        }
        outcome
    }
}
