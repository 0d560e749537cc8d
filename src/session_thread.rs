//! A sync-store session on its own thread: the changelog writer hands it jobs over a bounded
//! channel and goes on planning the next chunk while the session's backend works. The edge
//! session ([`crate::edge_session`]) and, with it, the changelog session
//! ([`crate::changelog_session`]) run on this.
//!
//! * **Order.** Jobs run in the order sent, in one transaction per batch, opened by a batch's
//!   first job (an idle writer never sits idle in a transaction, which
//!   `idle_in_transaction_session_timeout` would end) and closed by a job that commits or rolls
//!   back.
//! * **Failures.** A job that is not waited for (a write) cannot answer its failure: the session
//!   keeps the first one and answers it to the next job that waits (a probe or the commit), and
//!   refuses every later job. The writer then stops and the pipeline restarts from the stored
//!   positions, dropping the session, whose open transaction rolls back.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::store::pool::StoreError;
use crate::writer::WriterError;

/// Where a job that is waited for sends its answer.
pub type Reply<T> = Sender<Result<T, WriterError>>;

/// What the session does after a job.
pub enum Done {
    /// Stay in the batch's transaction.
    Continue,
    /// Commit the transaction and answer the outcome here.
    Commit(Reply<()>),
    /// Roll the transaction back (the job has answered already, if it is waited for).
    Rollback,
}

/// A job for a session thread.
pub trait Job: Send + 'static {
    /// Runs in the batch's open transaction. An error is the session's failure (for jobs nobody
    /// waits for); a job that is waited for answers its own errors and returns `Ok`.
    fn run(self, tx: &mut postgres::Transaction<'_>) -> Result<Done, WriterError>;
    /// Answers `err` to whoever waits for this job (nothing, for a job nobody waits for).
    fn refuse(self, err: WriterError);
}

/// A session thread running jobs of type `J`.
pub struct SessionThread<J: Job> {
    tx: Option<Sender<J>>,
    join: Option<JoinHandle<()>>,
}

impl<J: Job> SessionThread<J> {
    /// Starts thread `name` on an open session; at most `depth` jobs wait in its queue (the
    /// writer runs at most that far ahead of the session's backend).
    pub fn start(name: &str, client: postgres::Client, depth: usize) -> Result<SessionThread<J>, WriterError> {
        let (tx, rx) = bounded(depth);
        let join = thread::Builder::new()
            .name(name.into())
            .spawn(move || run(client, rx))
            .map_err(|e| WriterError::Position(format!("spawning the {name} thread: {e}")))?;
        Ok(SessionThread { tx: Some(tx), join: Some(join) })
    }

    /// Queues `job`.
    pub fn send(&self, job: J) -> Result<(), WriterError> {
        self.tx.as_ref().and_then(|tx| tx.send(job).ok()).ok_or_else(gone)
    }

    /// Queues the job `make` builds around a reply channel and waits for its answer.
    pub fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> J) -> Result<T, WriterError> {
        let (reply, answer) = bounded(1);
        self.send(make(reply))?;
        answer.recv().map_err(|_| gone())?
    }
}

impl<J: Job> Drop for SessionThread<J> {
    fn drop(&mut self) {
        // Closing the channel ends the thread; an uncommitted transaction rolls back.
        self.tx.take();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn gone() -> WriterError {
    WriterError::Position("a writer session stopped".into())
}

fn run<J: Job>(mut client: postgres::Client, rx: Receiver<J>) {
    // The first failure, answered to the next job that waits for an answer.
    let mut failed: Option<WriterError> = None;
    while let Ok(first) = rx.recv() {
        if failed.is_some() {
            refuse(first, &mut failed);
            continue;
        }
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                failed = Some(StoreError::query("starting a batch")(e).into());
                refuse(first, &mut failed);
                continue;
            }
        };
        let mut next = Some(first);
        while let Some(job) = next.take().or_else(|| rx.recv().ok()) {
            if failed.is_some() {
                refuse(job, &mut failed);
                continue;
            }
            match job.run(&mut tx) {
                Ok(Done::Continue) => {}
                Ok(Done::Commit(reply)) => {
                    let _ = reply.send(tx.commit().map_err(|e| StoreError::query("committing a batch")(e).into()));
                    break;
                }
                Ok(Done::Rollback) => break,
                Err(e) => failed = Some(e),
            }
        }
    }
}

/// Refuses `job` with the kept failure (or, once that was answered, a pointer to it).
fn refuse<J: Job>(job: J, failed: &mut Option<WriterError>) {
    job.refuse(failed.take().unwrap_or_else(|| WriterError::Position("the session failed earlier".into())))
}
