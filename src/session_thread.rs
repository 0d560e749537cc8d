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
//!   keeps it and answers it to the next job that waits (a probe or the commit). After any
//!   failure the batch rolls back at once and every later job is refused, the commit included.
//!   The writer then stops and the pipeline restarts from the stored positions.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::capture::writer::WriterError;
use crate::store::pool::StoreError;

/// Where a job that is waited for sends its answer.
pub type Reply<T> = Sender<Result<T, WriterError>>;

/// What the session does after a job.
pub enum Done {
    /// Stay in the batch's transaction.
    Continue,
    /// Commit the transaction and answer the outcome here.
    Commit(Reply<()>),
    /// The job failed and has answered its waiter: the transaction rolls back and the session
    /// refuses every later job.
    Failed,
}

/// A job for a session thread.
pub trait Job: Send + 'static {
    /// Runs in the batch's open transaction. An error is the session's failure (for jobs nobody
    /// waits for); a job that is waited for answers its own errors and returns
    /// [`Done::Failed`].
    fn run(self, tx: &mut postgres::Transaction<'_>) -> Result<Done, WriterError>;
    /// Whether someone waits for this job's answer (a probe, a commit; not a write).
    fn is_waited_for(&self) -> bool;
    /// Answers `err` to whoever waits for this job (called only when [`Job::is_waited_for`]).
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
    // After a failure the session refuses everything: its batch is lost, and committing later
    // jobs would commit a batch with a hole (or, in an aborted transaction, silently roll back:
    // PostgreSQL answers COMMIT there with ROLLBACK, not an error).
    let mut poisoned = false;
    // The failure of a job nobody waited for, answered to the next job that waits.
    let mut failed: Option<WriterError> = None;
    while let Ok(first) = rx.recv() {
        if poisoned {
            refuse(first, &mut failed);
            continue;
        }
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                poisoned = true;
                failed = Some(StoreError::query("starting a batch")(e).into());
                refuse(first, &mut failed);
                continue;
            }
        };
        let mut next = Some(first);
        while let Some(job) = next.take().or_else(|| rx.recv().ok()) {
            match job.run(&mut tx) {
                Ok(Done::Continue) => {}
                Ok(Done::Commit(reply)) => {
                    let done = tx.commit().map_err(|e| StoreError::query("committing a batch")(e).into());
                    poisoned = done.is_err();
                    let _ = reply.send(done);
                    break;
                }
                Ok(Done::Failed) => {
                    poisoned = true;
                    break;
                }
                Err(e) => {
                    poisoned = true;
                    failed = Some(e);
                    break;
                }
            }
        }
        // Leaving the loop without a commit (a failure, or the channel closed) drops `tx`: the
        // batch rolls back.
    }
}

/// Sends `result` to `reply`: [`Done::Continue`] when it is a success, [`Done::Failed`] when
/// it is a failure (which the waiter now has).
pub fn answer<T>(reply: Reply<T>, result: Result<T, WriterError>) -> Done {
    let failed = result.is_err();
    let _ = reply.send(result);
    if failed {
        Done::Failed
    } else {
        Done::Continue
    }
}

/// Refuses `job` after a failure: the first job that waits is answered the failure itself,
/// later ones a pointer to it; a job nobody waits for is dropped (it must not use up the
/// failure, or the writer would only hear of its consequences).
fn refuse<J: Job>(job: J, failed: &mut Option<WriterError>) {
    if job.is_waited_for() {
        job.refuse(failed.take().unwrap_or_else(|| WriterError::Position("the session failed earlier".into())))
    }
}
