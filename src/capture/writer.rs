//! The changelog writer: one thread that turns [`WalEvent`]s into changelog rows, bucket edges
//! and the stored WAL position, crash-safely.
//!
//! ```text
//! events ─► batch (one transaction) ─► chunk of ≤ chunk_rows changes:
//!             wait until its transactions are visible (store::visibility)
//!             read: held edges (store), owners, rows to read back (source)
//!             plan (pure: capture::plan)
//!             write: edge removals, additions, checksum changes; COPY of the changelog rows;
//!                    assignment failures
//!           ─► at a replicated commit, when the batch is due: the position, then COMMIT
//! ```
//!
//! Invariants:
//! * One PostgreSQL transaction per batch holds its changelog rows, its edge changes and the
//!   WAL position that covers them ([`crate::store::writer_session::Batch::commit`]). A batch
//!   ends only at a replicated commit, spans many small replicated transactions, and is cut by
//!   size and time (and at once when the channel is empty, so latency stays low when traffic
//!   is light).
//! * After a crash nothing at or below the stored position is written twice: replication
//!   resumes from it, and replayed transactions whose commit precedes it are skipped.
//! * A replicated transaction is never held in memory whole: rows are written in chunks inside
//!   the still-open database transaction (memory is bounded by the chunk size).
//! * The writer is the only writer of the changelog, so `seq` order is commit order; the
//!   position's compare-and-set rolls back the batch of a second writer.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::buckets::{BucketAssigner, RoutingTable};
use super::events::{RowChange, WalEvent};
use super::plan::{self, Checksums};
use super::source;
use crate::store::pool::StoreError;
use crate::store::visibility::Visibility;
use crate::store::writer_session::{self, Batch, Committed, WriterSession};
use crate::types::{Lsn, Op};

/// Why the writer stopped. The supervisor restarts replication from the stored position after
/// any of these.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriterError {
    /// A database error while reading for or writing a batch.
    Store(StoreError),
    /// Another writer moved the stored position since this one read it (two instances
    /// capturing at once, e.g. across a leadership change): the batch was rolled back.
    Fenced {
        /// The position this writer expected.
        expected: Lsn,
    },
    /// The writer thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriterError::Store(e) => write!(f, "changelog writer: {e}"),
            WriterError::Fenced { expected } => write!(
                f,
                "changelog writer: the stored WAL position moved past {expected} under us (another instance is \
                 capturing); batch rolled back"
            ),
            WriterError::Spawn(e) => write!(f, "starting the changelog writer thread: {e}"),
        }
    }
}

impl std::error::Error for WriterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriterError::Store(e) => Some(e),
            WriterError::Spawn(e) => Some(e),
            WriterError::Fenced { .. } => None,
        }
    }
}

impl From<StoreError> for WriterError {
    fn from(e: StoreError) -> Self {
        WriterError::Store(e)
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The application database: current rows and foreign keys are read here.
    pub database_url: String,
    /// The sync store (`SYNC_STORE_URL`) when the changelog, edges and WAL position live in a
    /// separate database; `None` when they live in the application database.
    pub store_url: Option<String>,
    /// The slot whose position is stored.
    pub slot_name: String,
    /// Close a batch after this many rows (at the next commit).
    pub max_batch_rows: usize,
    /// Close a batch after this long (at the next commit).
    pub max_batch_delay: Duration,
    /// How long a batch waits for the next event when none is queued: the most a lone change
    /// waits before its batch commits, and the gap that ends a burst.
    pub linger: Duration,
    /// Rows written per statement group inside a transaction.
    pub chunk_rows: usize,
    /// The per-record checksum of a row's `row_to_json` text.
    pub checksum: fn(&str) -> i32,
}

impl WriterConfig {
    /// Where the changelog, edges and WAL position live.
    pub fn store_url(&self) -> &str {
        self.store_url.as_deref().unwrap_or(&self.database_url)
    }

    /// Defaults for `database_url` and `slot_name`.
    pub fn new(database_url: &str, slot_name: &str) -> WriterConfig {
        WriterConfig {
            database_url: database_url.to_string(),
            store_url: None,
            slot_name: slot_name.to_string(),
            max_batch_rows: 5000,
            // Bounds commit -> changelog latency under a steady trickle of changes.
            max_batch_delay: Duration::from_millis(20),
            linger: Duration::from_micros(200),
            chunk_rows: 1000,
            checksum: crate::checksum::record_checksum,
        }
    }
}

/// Progress the writer publishes to the replication thread and to metrics.
#[derive(Debug, Default)]
pub struct WriterProgress {
    /// The highest LSN whose effects are committed (what may be confirmed to the server).
    pub committed_lsn: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Changelog rows written.
    pub rows: AtomicU64,
    /// The most row changes ever buffered at once (bounded by the chunk size).
    pub max_buffered: AtomicUsize,
    /// Commit time (Unix ms) of the newest replicated transaction whose rows are committed.
    pub last_commit_ms: AtomicU64,
}

/// A running writer.
pub struct WriterHandle {
    /// Published progress.
    pub progress: Arc<WriterProgress>,
    /// The thread; its result says why it stopped.
    pub join: JoinHandle<Result<(), WriterError>>,
}

/// Starts the writer thread on its own sessions: the sync store's, and with a separate store
/// one more on the application database for its reads.
pub fn spawn(
    config: WriterConfig,
    routing: Arc<RoutingTable>,
    assigner: Arc<dyn BucketAssigner>,
    rx: Receiver<WalEvent>,
) -> Result<WriterHandle, WriterError> {
    let mut store = WriterSession::connect(config.store_url())?;
    let app = match &config.store_url {
        Some(_) => Some(writer_session::connect_keyed(&config.database_url)?),
        None => None,
    };
    let stored = store.stored_position(&config.slot_name)?;
    let progress = Arc::new(WriterProgress::default());
    progress.committed_lsn.store(stored.0, Ordering::Release);
    let p = progress.clone();
    let join = thread::Builder::new()
        .name("changelog-writer".into())
        .spawn(move || {
            Writer { config, routing, assigner, progress: p, stored, app, visibility: Visibility::default() }
                .run(&mut store, &rx)
        })
        .map_err(WriterError::Spawn)?;
    Ok(WriterHandle { progress, join })
}

struct Writer {
    config: WriterConfig,
    routing: Arc<RoutingTable>,
    assigner: Arc<dyn BucketAssigner>,
    progress: Arc<WriterProgress>,
    /// Replicated transactions that committed at or before this LSN are already applied.
    stored: Lsn,
    /// The application database, when the sync store is separate (reads only, autocommit).
    app: Option<postgres::Client>,
    /// What the session that reads the application database has seen committed.
    visibility: Visibility,
}

/// The state of one open batch.
#[derive(Default)]
struct BatchState {
    chunk: Vec<RowChange>,
    /// The transactions with rows in `chunk` (their 32-bit ids, in stream order).
    chunk_xids: Vec<u32>,
    /// The transaction being received.
    xid: u32,
    rows_in_batch: usize,
    in_txn: bool,
    skip_txn: bool,
    last_end: Option<Lsn>,
    last_commit_time: Option<SystemTime>,
    idle_end: Option<Lsn>,
    changelog_rows: u64,
    /// Users whose memberships (bucket rules) changed in the batch's transactions, as
    /// subscriptions key them (`""`: every user).
    members: BTreeSet<String>,
}

/// What the writer does after [`BatchState::take`] took an event.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Keep collecting.
    Collect,
    /// The chunk is full: write it.
    Flush,
    /// Write the chunk (its changes precede the TRUNCATE), then the TRUNCATE of these tables.
    Truncate(Vec<String>),
}

impl BatchState {
    /// Takes one event into the batch. Replicated transactions that committed at or before
    /// `stored` were applied before a crash and are skipped; changes of tables not in
    /// `routing` are dropped; a chunk is full at `chunk_rows` changes.
    fn take(&mut self, event: WalEvent, stored: Lsn, routing: &RoutingTable, chunk_rows: usize) -> Step {
        match event {
            WalEvent::Begin { final_lsn, xid } => {
                self.in_txn = true;
                self.xid = xid;
                self.skip_txn = !stored.is_zero() && final_lsn < stored;
            }
            WalEvent::Membership { users, row } => {
                if self.skip_txn {
                    return Step::Collect;
                }
                // Subscriptions are keyed by the normalised user id (`UserId`).
                self.members.extend(users.iter().map(|u| u.chars().flat_map(char::to_lowercase).collect::<String>()));
                if let Some(change) = row {
                    return self.take(WalEvent::Row(change), stored, routing, chunk_rows);
                }
            }
            WalEvent::Row(change) => {
                if self.skip_txn || routing.get(&change.table).is_none() {
                    return Step::Collect;
                }
                self.chunk.push(change);
                if self.chunk_xids.last() != Some(&self.xid) {
                    self.chunk_xids.push(self.xid);
                }
                self.rows_in_batch += 1;
                if self.chunk.len() >= chunk_rows {
                    return Step::Flush;
                }
            }
            WalEvent::Truncate { tables } => {
                if !self.skip_txn {
                    return Step::Truncate(tables);
                }
            }
            WalEvent::Commit { end_lsn, commit_time } => {
                if !self.skip_txn {
                    self.last_end = Some(end_lsn);
                    self.last_commit_time = Some(commit_time);
                } else {
                    crate::debug!("skipped a replayed transaction", end_lsn = end_lsn.to_string());
                }
                self.in_txn = false;
                self.skip_txn = false;
            }
            WalEvent::Idle { wal_end } => {
                if !self.in_txn {
                    self.idle_end = Some(self.idle_end.map_or(wal_end, |l| l.max(wal_end)));
                }
            }
        }
        Step::Collect
    }

    /// The position the batch covers once committed: its last replicated commit's end, or a
    /// later idle keepalive's WAL end.
    fn position(&self) -> Option<Lsn> {
        match (self.last_end, self.idle_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Writer {
    fn run(&mut self, store: &mut WriterSession, rx: &Receiver<WalEvent>) -> Result<(), WriterError> {
        loop {
            let first = match rx.recv() {
                Ok(e) => e,
                Err(_) => return Ok(()),
            };
            if let WalEvent::Idle { wal_end } = first {
                // Nothing in flight: confirm the server's WAL end (otherwise writes to
                // unpublished tables make the slot retain WAL forever).
                self.publish(wal_end);
                continue;
            }
            let mut batch = store.begin();
            // None: the stream ended mid-transaction; `batch` rolls back (it will be replayed).
            let Some((mut state, closed)) = self.collect(&mut batch, first, rx)? else { return Ok(()) };
            self.commit(batch, &mut state)?;
            if closed {
                return Ok(());
            }
        }
    }

    /// Applies events from `first` on until the batch is due (or the stream is idle). Returns
    /// the batch, its last chunk still unwritten, and whether the stream closed, or `None` when
    /// it ended inside a replicated transaction (which is then discarded: it will be replayed).
    fn collect(
        &mut self,
        batch: &mut Batch<'_>,
        first: WalEvent,
        rx: &Receiver<WalEvent>,
    ) -> Result<Option<(BatchState, bool)>, WriterError> {
        let started = Instant::now();
        let mut state = BatchState::default();
        self.apply(batch, &mut state, first)?;
        let mut closed = false;
        loop {
            let due =
                state.rows_in_batch >= self.config.max_batch_rows || started.elapsed() >= self.config.max_batch_delay;
            let next = if state.in_txn {
                // A replicated transaction must be finished before the batch can commit.
                rx.recv().ok()
            } else if due {
                break;
            } else {
                match rx.try_recv() {
                    Ok(e) => Some(e),
                    // Nothing queued: wait a moment for more. Small transactions decoded back
                    // to back arrive microseconds apart and share a batch (up to its size and
                    // age limits) instead of paying a commit each; a lone change, or a steady
                    // trickle with gaps longer than the linger, commits after at most the linger.
                    Err(TryRecvError::Empty) => match rx.recv_timeout(self.config.linger) {
                        Ok(e) => Some(e),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => None,
                    },
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(e) => self.apply(batch, &mut state, e)?,
                None => {
                    closed = true;
                    break;
                }
            }
        }
        if state.in_txn {
            return Ok(None);
        }
        // The last chunk is written with the position (`commit`).
        Ok(Some((state, closed)))
    }

    /// Writes a collected batch's last chunk and commits the batch with its position, then
    /// publishes the progress.
    fn commit(&mut self, mut batch: Batch<'_>, state: &mut BatchState) -> Result<(), WriterError> {
        let confirm = state.position();
        let chunk = std::mem::take(&mut state.chunk);
        let xids = std::mem::take(&mut state.chunk_xids);
        let planned = match chunk.is_empty() {
            true => None,
            false => Some(self.plan(&mut batch, &chunk, &xids)?),
        };
        // The last chunk goes with the position unless it leads to more writes (children to
        // follow, failures to record), which it then precedes.
        let last = match planned {
            Some(plan) if plan.moved.is_empty() && plan.failures.is_empty() => Some(plan),
            Some(plan) => {
                state.changelog_rows += self.write_plan(&mut batch, plan)?;
                None
            }
            None => None,
        };
        let writes = last.as_ref().map(plan::Plan::writes).unwrap_or_default();
        state.changelog_rows += writes.changelog.len() as u64;
        match confirm.filter(|l| *l > self.stored) {
            Some(lsn) => {
                // Membership changes move their users' subscription versions to this batch's
                // position, with the batch: a reader that sees the version sees the batch.
                let members: Vec<&str> = state.members.iter().map(String::as_str).collect();
                batch.record_membership_changes(&members, lsn)?;
                let committed = batch.commit_with(&writes, &self.config.slot_name, lsn, self.stored)?;
                if committed == Committed::Fenced {
                    return Err(WriterError::Fenced { expected: self.stored });
                }
            }
            // A replicated commit precedes every row, so a batch with rows always has a
            // position to store; this one only skipped replayed transactions.
            None => {
                batch.write(&writes)?;
                batch.commit()?;
            }
        }
        if let Some(lsn) = confirm {
            self.stored = self.stored.max(lsn);
        }
        self.publish(self.stored);
        if let Some(t) = state.last_commit_time {
            self.progress.last_commit_ms.fetch_max(crate::time::unix_ms(t), Ordering::Relaxed);
        }
        self.progress.batches.fetch_add(1, Ordering::Relaxed);
        self.progress.rows.fetch_add(state.changelog_rows, Ordering::Relaxed);
        crate::debug!(
            "changelog batch",
            rows = state.changelog_rows,
            lsn = confirm.map(|l| l.to_string()).unwrap_or_default()
        );
        Ok(())
    }

    fn publish(&self, lsn: Lsn) {
        self.progress.committed_lsn.fetch_max(lsn.0, Ordering::AcqRel);
    }

    fn apply(&mut self, batch: &mut Batch<'_>, state: &mut BatchState, event: WalEvent) -> Result<(), WriterError> {
        match state.take(event, self.stored, &self.routing, self.config.chunk_rows) {
            Step::Collect => {}
            Step::Flush => self.flush_chunk(batch, state)?,
            Step::Truncate(tables) => {
                self.flush_chunk(batch, state)?;
                state.changelog_rows += batch.record_truncate(&tables)?;
            }
        }
        self.progress.max_buffered.fetch_max(state.chunk.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Writes the buffered changes.
    fn flush_chunk(&mut self, batch: &mut Batch<'_>, state: &mut BatchState) -> Result<(), WriterError> {
        if state.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut state.chunk);
        let xids = std::mem::take(&mut state.chunk_xids);
        let plan = self.plan(batch, &chunk, &xids)?;
        state.changelog_rows += self.write_plan(batch, plan)?;
        Ok(())
    }

    /// Writes a plan, then, level by level in the same batch, the live children of the records
    /// it moved to other buckets (their edges are probed after the level above was written).
    /// Only their bucket moves are recorded, unless the level above was rerouted
    /// ([`plan::Plan::rerouted`]): then the children are recorded in the buckets they end in
    /// even where those did not change, since reads checked against the parent's row while it
    /// was elsewhere (a snapshot page) left them out. Returns how many changelog rows it wrote.
    fn write_plan(&mut self, batch: &mut Batch<'_>, plan: plan::Plan<'_>) -> Result<u64, WriterError> {
        batch.write(&plan.writes())?;
        batch.record_failures(&plan.failures)?;
        let mut rows = plan.changelog.len() as u64;
        let mut moved = plan.moved;
        let mut rerouted = plan.rerouted;
        // Cycles are refused at startup; the bound only protects against a registry changed
        // underneath us.
        for _ in 0..32 {
            if moved.is_empty() {
                break;
            }
            let level = match self.app.as_mut() {
                Some(app) => source::descendants(app, &self.routing, &moved)?,
                None => source::descendants(batch.client(), &self.routing, &moved)?,
            };
            if level.is_empty() {
                break;
            }
            let tables =
                Tables { routing: &self.routing, assigner: self.assigner.as_ref(), checksum: self.config.checksum };
            let mut plan = plan_chunk(batch, Reads { app: self.app.as_mut(), visibility: None }, &tables, &level)?;
            if !rerouted {
                plan.changelog.retain(|r| r.op != Op::Update);
            }
            batch.write(&plan.writes())?;
            batch.record_failures(&plan.failures)?;
            rows += plan.changelog.len() as u64;
            moved = std::mem::take(&mut plan.moved);
            rerouted = plan.rerouted;
        }
        Ok(rows)
    }

    fn plan<'c>(
        &mut self,
        batch: &mut Batch<'_>,
        chunk: &'c [RowChange],
        xids: &[u32],
    ) -> Result<plan::Plan<'c>, WriterError> {
        let tables =
            Tables { routing: &self.routing, assigner: self.assigner.as_ref(), checksum: self.config.checksum };
        let reads = Reads { app: self.app.as_mut(), visibility: Some((&mut self.visibility, xids)) };
        plan_chunk(batch, reads, &tables, chunk)
    }
}

/// How a chunk's records are routed and checksummed.
pub(crate) struct Tables<'t> {
    pub routing: &'t RoutingTable,
    pub assigner: &'t dyn BucketAssigner,
    pub checksum: fn(&str) -> i32,
}

/// Where a chunk's reads of the application database go.
pub(crate) struct Reads<'r> {
    /// The application database, or `None` when it is the sync store (the reads then run on
    /// the batch's session).
    pub app: Option<&'r mut postgres::Client>,
    /// For replicated changes: the transactions with rows in the chunk, which must be visible
    /// to other sessions before the chunk is read for or written. The walsender may send a
    /// commit a moment before the committing backend has made it visible; a read before that
    /// sees the previous version of a row or misses a parent inserted in the same transaction,
    /// and a pull that reads the changelog row before that would hydrate the row's previous
    /// version, or miss it. `None` for the backfill, which reads rows, not changes.
    pub visibility: Option<(&'r mut Visibility, &'r [u32])>,
}

/// Reads what planning `chunk` needs and plans it. The application database is read only when
/// the plan needs it (owners behind foreign keys, unchanged TOAST values, rows whose checksum
/// the WAL text does not determine).
pub(crate) fn plan_chunk<'c>(
    batch: &mut Batch<'_>,
    reads: Reads<'_>,
    tables: &Tables<'_>,
    chunk: &'c [RowChange],
) -> Result<plan::Plan<'c>, WriterError> {
    let Reads { mut app, visibility } = reads;
    let keys = plan::touched(chunk);
    // The transactions still to check for visibility (none when the session saw a snapshot
    // they all precede).
    let unchecked = visibility.filter(|(v, xids)| !v.known(xids));
    let held = match (unchecked, app.as_deref_mut()) {
        (None, _) => batch.held_edges(&keys)?,
        (Some((visibility, xids)), Some(a)) => {
            visibility.wait(a, xids)?;
            batch.held_edges(&keys)?
        }
        // One session for both: the check rides along with the probe.
        (Some((visibility, xids)), None) => {
            let (held, checked) = batch.held_edges_checking(&keys, xids)?;
            visibility.record(checked);
            if !checked.visible {
                visibility.wait(batch.client(), xids)?;
            }
            held
        }
    };
    let mut sums = Checksums::render(chunk, tables.routing, tables.checksum);
    let owners = match app.as_deref_mut() {
        Some(a) => source::resolve_owners(a, tables.routing, chunk)?,
        None => source::resolve_owners(batch.client(), tables.routing, chunk)?,
    };
    let mut rows: Vec<(&str, String, String)> = Vec::new();
    for run in sums.missing.chunk_by(|a, b| a.0 == b.0) {
        let table = run[0].0;
        let Some(t) = tables.routing.get(table) else { continue };
        let ids: Vec<&str> = run.iter().map(|k| k.1).collect();
        let read = match app.as_deref_mut() {
            Some(a) => source::current_rows(a, t, &ids)?,
            None => source::current_rows(batch.client(), t, &ids)?,
        };
        rows.extend(read.into_iter().map(|(id, json)| (table, id, json)));
    }
    sums.add_rows(rows.iter().map(|(t, id, json)| (*t, id.as_str(), json.as_str())));
    let plan = plan::plan(chunk, &held, &owners, &sums, tables.routing, tables.assigner);
    for f in &plan.failures {
        crate::warn!(
            "bucket assignment failed",
            table = f.table.clone(),
            record_id = f.record.clone(),
            error = f.error.clone()
        );
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::buckets::TableRouting;
    use crate::capture::events::{ChangeKind, ColumnValue, RelColumn};
    use crate::types::Oid;

    fn routing() -> RoutingTable {
        RoutingTable::new([TableRouting {
            name: "items".into(),
            qualified: "\"public\".\"items\"".into(),
            pk: "id".into(),
            pk_type: "integer".into(),
            owner: None,
            parent: None,
            shared: Vec::new(),
            deleted_at: None,
            columns: vec!["id".into()],
            type_oids: vec![23],
            render_oids: vec![23],
            row_json: "row_to_json(t.*)".into(),
        }])
    }

    fn row(table: &str, id: u32) -> WalEvent {
        WalEvent::Row(RowChange {
            table: Arc::from(table),
            kind: ChangeKind::Insert,
            key: id.to_string(),
            old_key: None,
            columns: vec![RelColumn { name: "id".into(), type_oid: Oid(23) }].into(),
            values: vec![ColumnValue::Text(id.to_string())],
        })
    }

    fn begin(final_lsn: u64, xid: u32) -> WalEvent {
        WalEvent::Begin { final_lsn: Lsn(final_lsn), xid }
    }

    fn commit(end_lsn: u64) -> WalEvent {
        WalEvent::Commit { end_lsn: Lsn(end_lsn), commit_time: SystemTime::UNIX_EPOCH }
    }

    /// Takes `events` into a fresh batch with a stored position `stored` and chunks of 2.
    fn take_all(stored: u64, events: Vec<WalEvent>) -> (BatchState, Vec<Step>) {
        let r = routing();
        let mut state = BatchState::default();
        let steps = events.into_iter().map(|e| state.take(e, Lsn(stored), &r, 2)).collect();
        (state, steps)
    }

    fn keys(state: &BatchState) -> Vec<&str> {
        state.chunk.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn a_full_chunk_is_flushed_and_rows_of_unsynced_tables_are_dropped() {
        let (state, steps) =
            take_all(0, vec![begin(100, 7), row("items", 1), row("other", 2), row("items", 3), commit(110)]);
        assert_eq!(steps, [Step::Collect, Step::Collect, Step::Collect, Step::Flush, Step::Collect]);
        assert_eq!(keys(&state), ["1", "3"], "the writer takes the chunk when it flushes");
        assert_eq!(state.chunk_xids, [7]);
        assert_eq!((state.rows_in_batch, state.in_txn), (2, false));
        assert_eq!(state.position(), Some(Lsn(110)));
    }

    #[test]
    fn transactions_committed_at_or_before_the_stored_position_are_skipped() {
        // The first was applied before a crash; the second is new.
        let (state, steps) = take_all(
            100,
            vec![
                begin(90, 1),
                row("items", 1),
                WalEvent::Truncate { tables: vec!["items".into()] },
                commit(95),
                begin(120, 2),
                row("items", 2),
                commit(125),
            ],
        );
        assert!(steps.iter().all(|s| *s == Step::Collect), "{steps:?}");
        assert_eq!(keys(&state), ["2"]);
        assert_eq!(state.chunk_xids, [2]);
        assert_eq!(state.position(), Some(Lsn(125)));
        // A replay of only skipped transactions moves nothing.
        let (state, _) = take_all(100, vec![begin(90, 1), row("items", 1), commit(95)]);
        assert_eq!(state.position(), None);
    }

    #[test]
    fn a_truncate_follows_the_changes_before_it() {
        let (state, steps) = take_all(
            0,
            vec![begin(100, 1), row("items", 1), WalEvent::Truncate { tables: vec!["items".into()] }, commit(110)],
        );
        // The writer writes the buffered chunk, then the TRUNCATE.
        assert_eq!(steps[2], Step::Truncate(vec!["items".into()]));
        assert_eq!(keys(&state), ["1"]);
    }

    #[test]
    fn an_idle_keepalive_outside_a_transaction_moves_the_position_past_the_last_commit() {
        let (state, _) = take_all(
            0,
            vec![
                begin(100, 1),
                WalEvent::Idle { wal_end: Lsn(500) },
                commit(110),
                WalEvent::Idle { wal_end: Lsn(300) },
            ],
        );
        // The keepalive inside the transaction does not count.
        assert_eq!(state.idle_end, Some(Lsn(300)));
        assert_eq!(state.position(), Some(Lsn(300)));
        let (state, _) = take_all(0, vec![WalEvent::Idle { wal_end: Lsn(50) }]);
        assert_eq!(state.position(), Some(Lsn(50)));
    }
}
