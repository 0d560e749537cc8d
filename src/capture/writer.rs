//! The changelog writer: one thread that turns [`WalEvent`]s into changelog rows, bucket edges
//! and the confirmed LSN, crash-safely.
//!
//! Invariants:
//! * One PostgreSQL transaction per batch; a batch ends only at a replicated commit, spans many
//!   small replicated transactions, and is cut by size and time (and at once when the channel
//!   is empty, so latency stays low when traffic is light).
//! * The confirmed LSN (`sync_wal_position`) is written in the same transaction as the rows it
//!   covers, so after a crash nothing at or below it is written twice: replayed transactions
//!   whose commit precedes the stored LSN are skipped.
//! * A replicated transaction is never held in memory: rows are written in chunks inside the
//!   still-open database transaction (memory is bounded by the chunk size).
//! * Within a chunk, removal rows precede addition rows (contract C8), and edge checksums are the
//!   checksum hydration would emit for the row (C6): rendered from the chunk's latest version
//!   of the row when its text determines `row_to_json` ([`crate::capture::row_json`]), read back otherwise.
//! * The writer is the only writer of the changelog, so `seq` order is commit order.
//!
//! With `CAPTURE_EDGE_SESSION=true` the batch is written on two sessions of their own, each on
//! its own thread: the changelog rows and the position on a [`ChangelogSession`], the edges
//! and the edge position on an [`EdgeSession`]; the writer thread's session then only reads
//! (visibility, owners, current rows), so the thread plans the next chunk while both backends
//! write. A batch commits the changelog side first, then the edge side ([`crate::edge_session`]
//! has the rules that keep that crash-safe).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use postgres::GenericClient;

use crate::capture::buckets::{dedup_buckets, resolve_owners, BucketAssigner, Owner, RoutingTable, TableRouting};
use crate::capture::events::{ChangeKind, ColumnValue, RelColumn, RowChange, WalEvent};
use crate::capture::row_json;
use crate::changelog_session::{self, store_position, ChangelogSession, Failure};
use crate::edge_session::{self, EdgeSession, EdgeWrites};
use crate::registry::quote_ident;
use crate::store::pool::{self, StoreError};
use crate::store::{subscriptions, visibility, Stores};
use crate::types::{Lsn, Op};

/// A writer failure. The pipeline restarts replication from the stored LSN after one.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriterError {
    /// A database error while writing a batch.
    Store(StoreError),
    /// The stored position is unreadable.
    Position(String),
    /// Another writer moved the stored position since this one read it (two instances capturing
    /// at once, e.g. across a leadership change): this batch was rolled back.
    Fenced {
        /// The position this writer expected.
        expected: Lsn,
    },
}

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriterError::Store(e) => write!(f, "changelog writer: {e}"),
            WriterError::Position(m) => write!(f, "changelog writer: {m}"),
            WriterError::Fenced { expected } => write!(
                f,
                "changelog writer: the stored WAL position moved past {expected} under us (another instance is \
                 capturing); batch rolled back"
            ),
        }
    }
}

impl std::error::Error for WriterError {}

impl From<StoreError> for WriterError {
    fn from(e: StoreError) -> Self {
        WriterError::Store(e)
    }
}

impl WriterError {
    /// True when reconnecting may cure it.
    pub fn is_transient(&self) -> bool {
        matches!(self, WriterError::Store(e) if e.is_transient())
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
    /// Rows written per statement group inside a transaction.
    pub chunk_rows: usize,
    /// The per-record checksum of a row's `row_to_json` text.
    pub checksum: fn(&str) -> i32,
    /// Write the bucket edges on a second session beside the changelog
    /// ([`crate::edge_session`]): the two backends work at once, and a batch commits as two
    /// transactions (changelog first). Off: changelog rows, edges and the position in one
    /// transaction per batch.
    pub edge_session: bool,
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
            chunk_rows: 1000,
            checksum: crate::checksum::record_checksum,
            edge_session: false,
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

/// Where replication of `slot` resumes: the changelog position, or the edge position when the
/// edges are behind it (a crash between the two commits of a batch).
pub fn resume_position(db: &mut impl GenericClient, slot: &str) -> Result<Lsn, StoreError> {
    let stored = stored_position(db, slot)?;
    Ok(edge_session::stored_position(db, slot)?.map_or(stored, |e| e.min(stored)))
}

/// Reads the stored (changelog) position of `slot`.
pub fn stored_position(db: &mut impl GenericClient, slot: &str) -> Result<Lsn, StoreError> {
    let row = db
        .query_opt("SELECT confirmed_lsn FROM sync_wal_position WHERE slot_name = $1", &[&slot])
        .map_err(StoreError::query("reading the stored WAL position"))?;
    Ok(Lsn(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0)))
}

/// A writer session: every writer statement is a keyed lookup or insert. Tables that grow fast
/// (a bulk load, the edge table itself) keep stale statistics for a while, and with them
/// PostgreSQL planned these lookups as sequential scans or as a bitmap over the whole table:
/// quadratic over an ingest. Index scans are always right here.
fn connect_writer_session(url: &str) -> Result<postgres::Client, StoreError> {
    let mut db = pool::connect(url)?;
    db.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .map_err(StoreError::query("configuring the writer session"))?;
    Ok(db)
}

/// Starts the writer thread.
pub fn spawn(
    config: WriterConfig,
    routing: Arc<RoutingTable>,
    assigner: Arc<dyn BucketAssigner>,
    rx: Receiver<WalEvent>,
) -> Result<WriterHandle, WriterError> {
    let mut db = connect_writer_session(config.store_url())?;
    // With a separate sync store, current rows and owners are read on a second session.
    let app = match &config.store_url {
        Some(_) => Some(connect_writer_session(&config.database_url)?),
        None => None,
    };
    let stored = stored_position(&mut db, &config.slot_name)?;
    edge_session::init_watermarks(&mut db, &config.slot_name, stored)?;
    let edges_stored = edge_session::stored_position(&mut db, &config.slot_name)?.unwrap_or(stored);
    let sessions = match config.edge_session {
        true => Some(WriteSessions {
            changelog: ChangelogSession::start(connect_writer_session(config.store_url())?)?,
            edges: EdgeSession::start(connect_writer_session(config.store_url())?)?,
        }),
        false => None,
    };
    let progress = Arc::new(WriterProgress::default());
    progress.committed_lsn.store(edges_stored.0, Ordering::Release);
    let p = progress.clone();
    let join = thread::Builder::new()
        .name("changelog-writer".into())
        .spawn(move || {
            let mut w = Writer { config, routing, assigner, progress: p, stored, app, sessions, edges_stored };
            w.run(&mut db, &rx)
        })
        .map_err(|e| WriterError::Position(format!("spawning the writer thread: {e}")))?;
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
    /// With `WriterConfig::edge_session`, the changelog and the edges are written on sessions
    /// of their own and the writer thread's session only reads; without, everything goes in
    /// the writer thread's one transaction per batch.
    sessions: Option<WriteSessions>,
    /// Replicated transactions that committed at or before this LSN have their edges applied
    /// (at most `stored`: edges commit after the changelog).
    edges_stored: Lsn,
}

/// The two sessions that write a batch beside the writer thread (`CAPTURE_EDGE_SESSION`): the
/// changelog side commits first, then the edge side.
struct WriteSessions {
    changelog: ChangelogSession,
    edges: EdgeSession,
}

/// The state of one open batch.
#[derive(Default)]
struct Batch {
    chunk: Vec<RowChange>,
    /// The buffered chunk belongs to transactions whose changelog rows are already stored
    /// (replayed after a crash between a batch's two commits): only their edges are written.
    chunk_edges_only: bool,
    /// The transaction being received is such a transaction.
    edges_only: bool,
    /// The transactions with rows in `chunk` (their 32-bit ids, in stream order).
    chunk_xids: Vec<u32>,
    /// The transaction being received.
    xid: u32,
    rows_in_batch: usize,
    in_txn: bool,
    skip_txn: bool,
    last_end: Option<Lsn>,
    last_commit_time: Option<std::time::SystemTime>,
    idle_end: Option<Lsn>,
    changelog_rows: u64,
    /// Users whose memberships changed in the batch's transactions (`""`: every user).
    members: std::collections::BTreeSet<String>,
}

impl Writer {
    fn run(&mut self, db: &mut postgres::Client, rx: &Receiver<WalEvent>) -> Result<(), WriterError> {
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
            let closed = if self.sessions.is_some() {
                // The changelog and the edges are written on their own sessions; this one
                // only reads (visibility, owners, current rows).
                let Some((batch, closed)) = self.collect(db, first, rx)? else { return Ok(()) };
                // Versions only grow and only make readers refresh: recorded on their own
                // (autocommit), before the batch.
                let members: Vec<&str> = batch.members.iter().map(String::as_str).collect();
                subscriptions::record_changes(db, &members, batch_position(&batch).map_or(0, |l| l.0 as i64))?;
                self.commit(None, &batch)?;
                closed
            } else {
                let mut tx = db.transaction().map_err(StoreError::query("starting a changelog batch"))?;
                // None: the stream ended mid-transaction; `tx` rolls back (it will be replayed).
                let Some((batch, closed)) = self.collect(&mut tx, first, rx)? else { return Ok(()) };
                self.commit(Some(tx), &batch)?;
                closed
            };
            if closed {
                return Ok(());
            }
        }
    }

    /// Applies events from `first` on until the batch is due (or the stream is idle), and
    /// flushes the last chunk. Returns the batch and whether the stream closed, or `None` when
    /// it ended inside a replicated transaction (which is then discarded: it will be replayed).
    fn collect(
        &mut self,
        db: &mut impl GenericClient,
        first: WalEvent,
        rx: &Receiver<WalEvent>,
    ) -> Result<Option<(Batch, bool)>, WriterError> {
        let started = Instant::now();
        let mut batch = Batch::default();
        self.apply(db, &mut batch, first)?;
        let mut closed = false;
        loop {
            let due =
                batch.rows_in_batch >= self.config.max_batch_rows || started.elapsed() >= self.config.max_batch_delay;
            let next = if batch.in_txn {
                // A replicated transaction must be finished before the batch can commit.
                rx.recv().ok()
            } else if due {
                break;
            } else {
                match rx.try_recv() {
                    Ok(e) => Some(e),
                    Err(TryRecvError::Empty) => {
                        // Nothing queued: commit now for latency, unless more is about to come.
                        match rx.recv_timeout(Duration::from_millis(1)) {
                            Ok(e) => Some(e),
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    }
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(e) => self.apply(db, &mut batch, e)?,
                None => {
                    closed = true;
                    break;
                }
            }
        }
        if batch.in_txn {
            return Ok(None);
        }
        self.flush_chunk(db, &mut batch)?;
        Ok(Some((batch, closed)))
    }

    /// Commits a collected batch: the changelog side with its position (in `tx`, or on the
    /// changelog session when `tx` is `None`), then the edge side (in `tx` too, or on the edge
    /// session), and publishes the progress.
    fn commit(&mut self, tx: Option<postgres::Transaction<'_>>, batch: &Batch) -> Result<(), WriterError> {
        let confirm = batch_position(batch);
        let position = confirm.filter(|l| *l > self.stored);
        let edge_lsn = confirm.unwrap_or(self.edges_stored).max(self.edges_stored);
        // Not a replay of edges a crash left behind: the edges reach the changelog.
        let caught_up = edge_lsn >= self.stored;
        let mark = edge_session::position_mark(&self.config.slot_name);
        let slot = &self.config.slot_name;
        // Membership changes move their users' subscription versions to this batch's
        // position, with the batch (cached subscriptions are re-read on the next request).
        let members: Vec<&str> = batch.members.iter().map(String::as_str).collect();
        let version = confirm.map_or(0, |l| l.0 as i64);
        match (tx, &self.sessions) {
            (Some(mut tx), _) => {
                subscriptions::record_changes(&mut tx, &members, version)?;
                if let Some(lsn) = position {
                    // On a fence, `tx` is dropped unfinished: the batch rolls back.
                    store_position(&mut tx, slot, lsn, self.stored)?;
                }
                // One transaction: the edge position moves with the changelog's.
                edge_session::store(&mut tx, &mark, edge_lsn, self.edges_stored, caught_up)?;
                tx.commit().map_err(StoreError::query("committing a changelog batch"))?;
                if let Some(lsn) = confirm {
                    self.stored = self.stored.max(lsn);
                }
            }
            (None, Some(sessions)) => {
                sessions.changelog.commit(slot, position, self.stored)?;
                if let Some(lsn) = confirm {
                    self.stored = self.stored.max(lsn);
                }
                // Then the edges: never ahead of the changelog.
                if edge_session::fail_between_commits() {
                    crate::error!("failpoint: stopping between the changelog and edge commits");
                    std::process::abort();
                }
                sessions.edges.commit(&mark, edge_lsn, self.edges_stored, caught_up)?;
            }
            (None, None) => return Err(WriterError::Position("a batch without a transaction".into())),
        }
        self.edges_stored = edge_lsn;
        self.publish(self.stored.min(self.edges_stored));
        if let Some(t) = batch.last_commit_time {
            self.progress.last_commit_ms.fetch_max(crate::time::unix_ms(t), Ordering::Relaxed);
        }
        self.progress.batches.fetch_add(1, Ordering::Relaxed);
        self.progress.rows.fetch_add(batch.changelog_rows, Ordering::Relaxed);
        crate::debug!(
            "changelog batch",
            rows = batch.changelog_rows,
            lsn = confirm.map(|l| l.to_string()).unwrap_or_default()
        );
        Ok(())
    }

    fn publish(&self, lsn: Lsn) {
        self.progress.committed_lsn.fetch_max(lsn.0, Ordering::AcqRel);
    }

    fn apply(&mut self, db: &mut impl GenericClient, batch: &mut Batch, event: WalEvent) -> Result<(), WriterError> {
        match event {
            WalEvent::Begin { final_lsn, xid } => {
                batch.in_txn = true;
                batch.xid = xid;
                // Its commit record precedes the stored positions: applied before a crash
                // (entirely, or its changelog rows only).
                batch.skip_txn = !self.edges_stored.is_zero() && final_lsn < self.edges_stored;
                batch.edges_only = !batch.skip_txn && !self.stored.is_zero() && final_lsn < self.stored;
            }
            WalEvent::Row(change) => {
                if batch.skip_txn || self.routing.get(&change.table).is_none() {
                    return Ok(());
                }
                if batch.chunk_edges_only != batch.edges_only {
                    // A chunk is either replayed for its edges or written whole.
                    self.flush_chunk(db, batch)?;
                    batch.chunk_edges_only = batch.edges_only;
                }
                batch.chunk.push(change);
                if batch.chunk_xids.last() != Some(&batch.xid) {
                    batch.chunk_xids.push(batch.xid);
                }
                batch.rows_in_batch += 1;
                self.progress.max_buffered.fetch_max(batch.chunk.len(), Ordering::Relaxed);
                if batch.chunk.len() >= self.config.chunk_rows {
                    self.flush_chunk(db, batch)?;
                }
            }
            WalEvent::Membership { users, row } => {
                if batch.skip_txn {
                    return Ok(());
                }
                if !batch.edges_only {
                    // Subscriptions are keyed by the normalised user id (`UserId`).
                    batch
                        .members
                        .extend(users.iter().map(|u| u.chars().flat_map(char::to_lowercase).collect::<String>()));
                }
                if let Some(change) = row {
                    self.apply(db, batch, WalEvent::Row(change))?;
                }
            }
            WalEvent::Truncate { tables } => {
                if batch.skip_txn {
                    return Ok(());
                }
                self.flush_chunk(db, batch)?;
                // The edges go on the edge session (after every earlier chunk's), their delete
                // rows on the changelog.
                let gone = match &self.sessions {
                    Some(sessions) => sessions.edges.truncate(&tables)?,
                    None => edge_session::truncate(db, &tables)?,
                };
                if !batch.edges_only && !gone.is_empty() {
                    batch.changelog_rows += gone.len() as u64;
                    let (mut tables, mut ids, mut buckets) = (Vec::new(), Vec::new(), Vec::new());
                    for (t, r, b) in gone {
                        tables.push(t);
                        ids.push(r);
                        buckets.push(b);
                    }
                    match &self.sessions {
                        Some(sessions) => sessions.changelog.truncate(tables, ids, buckets)?,
                        None => changelog_session::record_truncate(db, &tables, &ids, &buckets)?,
                    }
                }
            }
            WalEvent::Commit { end_lsn, commit_time } => {
                if !batch.skip_txn {
                    batch.last_end = Some(end_lsn);
                    batch.last_commit_time = Some(commit_time);
                } else {
                    crate::debug!("skipped a replayed transaction", end_lsn = end_lsn.to_string());
                }
                batch.in_txn = false;
                batch.skip_txn = false;
            }
            WalEvent::Idle { wal_end } => {
                if !batch.in_txn {
                    batch.idle_end = Some(batch.idle_end.map_or(wal_end, |l| l.max(wal_end)));
                }
            }
        }
        Ok(())
    }

    /// Writes the buffered changes: edges looked up and owners resolved for the whole chunk,
    /// then one statement each for changelog rows, edge removals, edge upserts and failures.
    fn flush_chunk(&mut self, db: &mut impl GenericClient, batch: &mut Batch) -> Result<(), WriterError> {
        if batch.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut batch.chunk);
        let xids = std::mem::take(&mut batch.chunk_xids);
        // The walsender may send a commit a moment before the committing backend has made it
        // visible to other sessions; every read of current rows below must see these
        // transactions (or a child's parent inserted with it would look missing).
        match self.app.as_mut() {
            Some(app) => visibility::wait_until_visible(app, &xids)?,
            None => visibility::wait_until_visible(db, &xids)?,
        }
        // The chunk, then the descendants of every record that changed buckets (or left them
        // and came back within the chunk), level by level, in the same batch (their edges are
        // probed after the level above was written). When a parent went from some buckets to
        // others (or left and came back within the chunk), its descendants are recorded in the
        // buckets they end in even when those did not change: while the parent was elsewhere,
        // reads checked against its current row (a snapshot page) left them out, and these
        // entries bring them back. A restored or soft-deleted parent records only its
        // descendants' moves.
        let mut level = chunk;
        let mut keep_updates = true;
        for _ in 0..32 {
            let mut plan = plan_chunk(
                db,
                self.app.as_mut(),
                self.sessions.as_ref().map_or(EdgeReads::Here, |s| EdgeReads::Session(&s.edges)),
                &self.routing,
                self.assigner.as_ref(),
                &level,
                self.config.checksum,
            )?;
            if !keep_updates {
                plan.changelog.retain(|(_, _, _, op)| *op != Op::Update.code());
            }
            let (moved, rerouted) = self.write_plan(db, batch, plan)?;
            if moved.is_empty() {
                break;
            }
            keep_updates = rerouted;
            level = match self.app.as_mut() {
                Some(app) => descendants(app, &self.routing, &moved)?,
                None => descendants(db, &self.routing, &moved)?,
            };
            if level.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Writes a planned chunk (its edges only when the chunk is a replay) and returns the
    /// records whose descendants must follow them.
    fn write_plan(
        &mut self,
        db: &mut impl GenericClient,
        batch: &mut Batch,
        mut plan: Plan<'_>,
    ) -> Result<(Vec<(String, String)>, bool), WriterError> {
        let moved = (std::mem::take(&mut plan.moved), plan.rerouted);
        if batch.chunk_edges_only {
            // A replay of edges only: their changelog rows are stored already.
            match &self.sessions {
                Some(sessions) => sessions.edges.write(plan.edge_writes().owned())?,
                None => edge_session::write_edges(db, &plan.edge_writes())?,
            }
            return Ok(moved);
        }
        batch.changelog_rows += plan.changelog.len() as u64;
        // A chunk whose changes all failed assignment (or whose rows are gone) has no rows.
        let encoded = (!plan.changelog.is_empty()).then(|| plan.encoded_changelog());
        match &self.sessions {
            Some(sessions) => {
                // The edges first, so their backend works while the changelog's writes.
                sessions.edges.write(plan.edge_writes().owned())?;
                if let Some(encoded) = encoded {
                    sessions.changelog.rows(encoded)?;
                }
                sessions.changelog.failures(plan.failures)?;
            }
            None => {
                edge_session::write_edges(db, &plan.edge_writes())?;
                if let Some(encoded) = encoded {
                    changelog_session::copy_rows(db, &encoded)?;
                }
                changelog_session::record_failures(db, &plan.failures)?;
            }
        }
        Ok(moved)
    }
}

/// The live child rows (one level down) of the `moved` records, as changes the planner routes
/// again: each carries its key and the foreign key to its parent, so its owner is resolved
/// through the parent's current row. Soft-deleted children hold no edges and are left alone.
fn descendants(
    db: &mut impl GenericClient,
    routing: &RoutingTable,
    moved: &[(String, String)],
) -> Result<Vec<RowChange>, WriterError> {
    let mut out = Vec::new();
    for child in routing.tables() {
        let Some((parent, fk)) = &child.parent else { continue };
        let keys: Vec<&str> = moved.iter().filter(|(t, _)| t == parent).map(|(_, k)| k.as_str()).collect();
        let Some(parent_routing) = routing.get(parent) else { continue };
        if keys.is_empty() {
            continue;
        }
        let live =
            child.deleted_at.as_deref().map(|c| format!(" AND c.{} IS NULL", quote_ident(c))).unwrap_or_default();
        // Every column that routes the child (its own rule keys and owner decide before its
        // parent does), so the planner resolves it exactly as a change of the row would.
        let mut names: Vec<&str> = vec![&child.pk];
        for c in child.routing_columns().into_iter().chain([fk.as_str()]) {
            if !names.contains(&c) {
                names.push(c);
            }
        }
        let sql = format!(
            "SELECT {cols} FROM {q} c WHERE c.{fk} = ANY ($1::text[]::{ty}[]){live}",
            cols = names.iter().map(|n| format!("c.{}::text", quote_ident(n))).collect::<Vec<_>>().join(", "),
            fk = quote_ident(fk),
            q = child.qualified,
            ty = parent_routing.pk_type,
        );
        let rows = db
            .query(&sql, &[&keys])
            .map_err(StoreError::query(format!("reading the children of moved {parent} rows in {}", child.name)))?;
        let columns: Arc<[RelColumn]> =
            names.iter().map(|n| RelColumn { name: n.to_string(), type_oid: crate::types::Oid(0) }).collect();
        let table: Arc<str> = Arc::from(child.name.as_str());
        out.extend(rows.iter().map(|r| {
            RowChange {
                table: table.clone(),
                kind: ChangeKind::Update,
                key: r.get(0),
                old_key: None,
                columns: columns.clone(),
                values: (0..names.len())
                    .map(|i| r.get::<_, Option<String>>(i).map_or(ColumnValue::Null, ColumnValue::Text))
                    .collect(),
            }
        }));
    }
    Ok(out)
}

/// A bucket id inside one plan: shared by the changelog rows, the edge rows and the working
/// state without copying the text each time.
type Bucket = Rc<str>;

/// A record inside one plan: `(table, primary key)`, borrowed from the chunk.
type Key<'a> = (&'a str, &'a str);

/// The buckets a record belongs to, sorted and without duplicates (usually one).
type Buckets = Vec<Bucket>;

/// What a chunk writes. Tables and keys borrow the chunk's text: a plan allocates per bucket
/// and per failure, not per row and field (the writer thread's time used to go to copying).
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    changelog: Vec<(Bucket, &'a str, &'a str, i16)>,
    edge_deletes: Vec<(&'a str, &'a str, Bucket)>,
    /// Edges the database does not hold yet (plain inserts: the writer is the only edge
    /// writer, and a second writer is fenced, so no conflict handling is needed).
    edge_inserts: Vec<Edge<'a>>,
    /// Held edges whose checksum changed.
    edge_updates: Vec<Edge<'a>>,
    failures: Vec<Failure>,
    /// Updated records of tables with child tables whose buckets changed (an owner transfer, a
    /// re-parenting, a restore): their descendants follow them ([`descendants`]).
    moved: Vec<(String, String)>,
    /// Some of `moved` went from some buckets to others, or left and came back within the
    /// chunk (not a restore, not a soft delete): their descendants are recorded even where
    /// their buckets stay.
    rerouted: bool,
}

/// `(table, record, bucket, checksum)`.
type Edge<'a> = (&'a str, &'a str, Bucket, Option<i32>);

/// Where a plan reads the edges records hold.
#[derive(Clone, Copy)]
pub(crate) enum EdgeReads<'e> {
    /// On the session the plan is written on (the backfill: one transaction).
    Here,
    /// On the writer's edge session, after the edge changes sent to it before.
    Session(&'e EdgeSession),
}

impl Plan<'_> {
    /// The plan's changelog rows in binary `COPY` format, in order (`seq` follows it).
    fn encoded_changelog(&self) -> Vec<u8> {
        changelog_session::encode_rows(self.changelog.iter().map(|(b, t, r, op)| (&**b, *t, *r, *op)))
    }

    /// The plan's edge changes, borrowed from it.
    fn edge_writes(&self) -> EdgeWrites<&str> {
        EdgeWrites {
            deletes: self.edge_deletes.iter().map(|(t, r, b)| (*t, *r, &**b)).collect(),
            inserts: self.edge_inserts.iter().map(|(t, r, b, c)| ((*t, *r, &**b), *c)).collect(),
            updates: self.edge_updates.iter().map(|(t, r, b, c)| ((*t, *r, &**b), *c)).collect(),
        }
    }
}

/// The position a batch confirms: its last commit, or a later idle keepalive.
fn batch_position(batch: &Batch) -> Option<Lsn> {
    match (batch.last_end, batch.idle_end) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn is_soft_delete(t: &TableRouting, c: &RowChange) -> bool {
    c.kind == ChangeKind::Update
        && t.deleted_at.as_deref().is_some_and(|col| matches!(c.value(col), Some(ColumnValue::Text(_))))
}

fn payload_json(c: &RowChange) -> String {
    let map: serde_json::Map<String, serde_json::Value> = c
        .iter()
        .filter_map(|(k, v)| match v {
            ColumnValue::Null => Some((k.to_string(), serde_json::Value::Null)),
            ColumnValue::Text(t) => Some((k.to_string(), serde_json::Value::String(t.clone()))),
            ColumnValue::UnchangedToast => None,
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// One shared copy of each bucket id seen by a plan.
#[derive(Default)]
struct Interner(HashSet<Bucket>);

impl Interner {
    fn get(&mut self, name: &str) -> Bucket {
        if let Some(b) = self.0.get(name) {
            return b.clone();
        }
        let b: Bucket = Rc::from(name);
        self.0.insert(b.clone());
        b
    }
}

/// The record's buckets as the plan has them so far: its latest state in the chunk, else what
/// the database held before the chunk.
fn held<'s, 'a>(
    state: &'s HashMap<Key<'a>, Buckets>,
    initial: &'s HashMap<Key<'a>, Buckets>,
    key: Key<'a>,
) -> Option<&'s Buckets> {
    state.get(&key).or_else(|| initial.get(&key))
}

/// Computes the changelog rows and net edge changes of a chunk (§9.4 with C6 and C8). Edges
/// are read on `db` (the sync store); owners and current rows on `app`, or on `db` when the
/// store is the application database.
pub(crate) fn plan_chunk<'a>(
    db: &mut impl GenericClient,
    mut app: Option<&mut postgres::Client>,
    edges: EdgeReads<'_>,
    routing: &RoutingTable,
    assigner: &dyn BucketAssigner,
    chunk: &'a [RowChange],
    checksum: fn(&str) -> i32,
) -> Result<Plan<'a>, WriterError> {
    // Every record the chunk touches, including old keys of key changes, sorted by table.
    let mut keys: Vec<Key<'a>> = Vec::with_capacity(chunk.len());
    for c in chunk {
        keys.push((&c.table, &c.key));
        if let Some(old) = &c.old_key {
            keys.push((&c.table, old));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    // The chunk's own copy of a key the database sent back.
    let key_of = |table: &str, id: &str| keys.binary_search(&(table, id)).ok().map(|i| keys[i]);
    let mut buckets = Interner::default();
    let mut initial: HashMap<Key<'a>, Buckets> = HashMap::new();
    let mut stored_sums: HashMap<(Key<'a>, Bucket), Option<i32>> = HashMap::new();
    for run in keys.chunk_by(|a, b| a.0 == b.0) {
        let table = run[0].0;
        let ids: Vec<&str> = run.iter().map(|k| k.1).collect();
        let held_edges = match edges {
            EdgeReads::Here => edge_session::probe_edges(db, table, &ids)?,
            EdgeReads::Session(session) => session.probe(table, &ids)?,
        };
        for (record, bucket, sum) in held_edges {
            let Some(key) = key_of(table, &record) else { continue };
            let bucket = buckets.get(&bucket);
            let held = initial.entry(key).or_default();
            if let Err(at) = held.binary_search(&bucket) {
                held.insert(at, bucket.clone());
            }
            stored_sums.insert((key, bucket), sum);
        }
    }
    // Owners for every change that may need an assignment, in one pass.
    let needs: Vec<&RowChange> = chunk.iter().collect();
    let owners = match app.as_deref_mut() {
        Some(a) => resolve_owners(a, routing, &needs)?,
        None => resolve_owners(db, routing, &needs)?,
    };

    // Each touched record's buckets after the changes so far (falling back to `initial`).
    let mut state: HashMap<Key<'a>, Buckets> = HashMap::new();
    let mut plan = Plan::default();
    // Records whose buckets changed at some point of the chunk, even when they end where they
    // began.
    let mut changed_midway: HashSet<Key<'a>> = HashSet::new();
    for (c, owner) in chunk.iter().zip(owners.iter()) {
        let Some(t) = routing.get(&c.table) else { continue };
        if *owner == Owner::RowGone {
            // Nothing to route with and nothing left to serve: the later delete handles it.
            continue;
        }
        if let Some(old) = &c.old_key {
            // The primary key changed: the old record leaves all its buckets.
            let k: Key<'a> = (&c.table, old);
            for b in held(&state, &initial, k).cloned().unwrap_or_default() {
                plan.changelog.push((b, &c.table, old, Op::Delete.code()));
            }
            state.insert(k, Vec::new());
        }
        let key: Key<'a> = (&c.table, &c.key);
        let existing = held(&state, &initial, key).cloned().unwrap_or_default();
        let removal = c.kind == ChangeKind::Delete || is_soft_delete(t, c);
        if removal && !existing.is_empty() {
            for b in &existing {
                plan.changelog.push((b.clone(), &c.table, &c.key, Op::Delete.code()));
            }
            state.insert(key, Vec::new());
            continue;
        }
        let desired: Vec<Bucket> = match assigner.assign(t, c, owner) {
            Ok(b) => dedup_buckets(b).iter().map(|b| buckets.get(b)).collect(),
            Err(why) => {
                let op = match c.kind {
                    ChangeKind::Insert => Op::Create,
                    ChangeKind::Update => Op::Update,
                    ChangeKind::Delete => Op::Delete,
                };
                plan.failures.push((c.table.to_string(), c.key.clone(), op.code(), why, payload_json(c)));
                continue;
            }
        };
        if removal {
            // No edges yet (e.g. a row older than the consumer): tell its assigned buckets.
            for b in &desired {
                plan.changelog.push((b.clone(), &c.table, &c.key, Op::Delete.code()));
            }
            state.insert(key, Vec::new());
            continue;
        }
        // C8: removals first, so a client subscribed to both buckets ends with the row.
        for b in existing.iter().filter(|b| !desired.contains(b)) {
            plan.changelog.push((b.clone(), &c.table, &c.key, Op::Delete.code()));
        }
        for b in &desired {
            let op = if existing.contains(b) { Op::Update } else { Op::Create };
            plan.changelog.push((b.clone(), &c.table, &c.key, op.code()));
        }
        let mut after = desired;
        after.sort_unstable();
        after.dedup();
        if c.kind == ChangeKind::Update && after != existing {
            changed_midway.insert(key);
        }
        state.insert(key, after);
    }
    // Net edge changes against what the database held before the chunk.
    let none = Vec::new();
    let mut upsert_keys: Vec<Key<'a>> = Vec::new();
    // Updated rows of tables with children, and whether the latest update left the row
    // soft-deleted: its live children still follow its owner, though it holds no edges itself.
    let mut updated: HashMap<Key<'a>, bool> = HashMap::new();
    for c in chunk.iter().filter(|c| c.kind == ChangeKind::Update && routing.has_children(&c.table)) {
        let soft_deleted = routing.get(&c.table).is_some_and(|t| is_soft_delete(t, c));
        updated.insert((&c.table, &c.key), soft_deleted);
    }
    for &k in &keys {
        let Some(after) = held(&state, &initial, k) else { continue };
        for b in initial.get(&k).unwrap_or(&none).iter().filter(|b| !after.contains(b)) {
            plan.edge_deletes.push((k.0, k.1, b.clone()));
        }
        if !after.is_empty() {
            upsert_keys.push(k);
        }
        // Descendants follow an updated row whose buckets changed (an owner transfer, a
        // re-parenting, a restore), or a soft-deleted one (whose owner may have changed, with
        // no edges to tell). An inserted row has no children yet: those inserted with it are
        // in the stream.
        let net = !after.is_empty() && initial.get(&k) != Some(after);
        let moved = match updated.get(&k) {
            Some(true) => true,
            Some(false) => net || (!after.is_empty() && changed_midway.contains(&k)),
            None => false,
        };
        if moved {
            let held_before = initial.get(&k).is_some_and(|b| !b.is_empty());
            plan.rerouted |= held_before && !after.is_empty() && (net || changed_midway.contains(&k));
            plan.moved.push((k.0.to_string(), k.1.to_string()));
        }
    }
    // C6: edge checksum = the checksum hydration would emit for the current row. Rendered from
    // the chunk's latest version of the row when its text determines `row_to_json` (the common
    // case: no read of the application database); read back otherwise.
    let mut checksums: HashMap<Key<'a>, i32> = HashMap::new();
    if std::ptr::fn_addr_eq(checksum, crate::checksum::record_checksum as fn(&str) -> i32) {
        let mut latest: HashMap<Key<'a>, &'a RowChange> = HashMap::with_capacity(chunk.len());
        for c in chunk {
            latest.insert((&c.table, &c.key), c);
        }
        let mut whole: Vec<(&Arc<[RelColumn]>, bool)> = Vec::new();
        for &k in &upsert_keys {
            let Some(c) = latest.get(&k).filter(|c| c.kind != ChangeKind::Delete) else { continue };
            let Some(t) = routing.get(k.0) else { continue };
            let is_whole = match whole.iter().find(|(cols, _)| Arc::ptr_eq(cols, &c.columns)) {
                Some((_, w)) => *w,
                None => {
                    let w = t.is_whole_row(&c.columns);
                    whole.push((&c.columns, w));
                    w
                }
            };
            if let Some(sum) = is_whole.then(|| row_json::row_checksum(&c.columns, &t.render_oids, &c.values)).flatten()
            {
                checksums.insert(k, sum);
            }
        }
    }
    let unrendered: Vec<Key<'a>> = upsert_keys.iter().copied().filter(|k| !checksums.contains_key(k)).collect();
    for run in unrendered.chunk_by(|a, b| a.0 == b.0) {
        let table = run[0].0;
        let Some(t) = routing.get(table) else { continue };
        let ids: Vec<&str> = run.iter().map(|k| k.1).collect();
        let rows = match app.as_deref_mut() {
            Some(a) => current_rows(a, t, &ids)?,
            None => current_rows(db, t, &ids)?,
        };
        for (id, json) in rows {
            if let Some(key) = key_of(table, &id) {
                checksums.insert(key, checksum(&json));
            }
        }
    }
    for &k in &upsert_keys {
        let Some(after) = held(&state, &initial, k) else { continue };
        let before = initial.get(&k);
        // A row deleted later in the stream has no current version: its edge keeps a NULL
        // checksum until the delete removes it.
        let sum = checksums.get(&k).copied();
        for b in after {
            let edge = (k.0, k.1, b.clone(), sum);
            if !before.is_some_and(|h| h.contains(b)) {
                plan.edge_inserts.push(edge);
            } else if stored_sums.get(&(k, b.clone())) != Some(&sum) {
                plan.edge_updates.push(edge);
            }
        }
    }
    plan.edge_inserts.sort();
    plan.edge_updates.sort();
    plan.edge_deletes.sort();
    Ok(plan)
}

/// `(primary key, row JSON as clients receive it)` of the rows of `t` with keys `ids` that
/// still exist.
fn current_rows(
    db: &mut impl GenericClient,
    t: &TableRouting,
    ids: &[&str],
) -> Result<Vec<(String, String)>, StoreError> {
    let sql = format!(
        "SELECT t.{pk}::text, {json}::text FROM {q} t WHERE t.{pk} = ANY ($1::text[]::{ty}[])",
        pk = quote_ident(&t.pk),
        json = t.row_json,
        q = t.qualified,
        ty = t.pk_type
    );
    let rows = db.query(&sql, &[&ids]).map_err(StoreError::query(format!("reading current rows of {}", t.name)))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// C17: gives every existing row of every routed table its bucket edges (with checksums), so
/// rebuilds and bucket checksums cover rows that predate the consumer. Runs once per table
/// (remembered in `synchro_watermarks`), in pages, writing no changelog rows. Rows are read
/// from the application database, edges written to the sync store.
pub fn backfill_edges(
    dbs: &mut Stores<postgres::Client>,
    routing: &RoutingTable,
    assigner: &dyn BucketAssigner,
    checksum: fn(&str) -> i32,
) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut tables: Vec<&TableRouting> = routing.tables().collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    for t in tables {
        let mark = format!("backfill:{}", t.name);
        if crate::store::changelog::read_watermark(dbs.store(), &mark)? > 0 {
            continue;
        }
        let mut columns = vec![format!("t.{}::text", quote_ident(&t.pk))];
        let mut names = vec![t.pk.clone()];
        for c in t.shared.iter().map(|(_, c)| c).chain(t.owner.iter()).chain(t.parent.as_ref().map(|(_, fk)| fk)) {
            if names.contains(c) {
                continue;
            }
            columns.push(format!("t.{}::text", quote_ident(c)));
            names.push(c.clone());
        }
        // Soft-deleted rows belong to no bucket (the writer removes their edges too).
        let live = t.deleted_at.as_deref().map(|c| format!("AND t.{} IS NULL", quote_ident(c))).unwrap_or_default();
        // In one database, rows that already have edges (an earlier, interrupted backfill) are
        // skipped in the same query; with a separate store the edge probe of the plan finds
        // them and writes nothing for them.
        let pk = quote_ident(&t.pk);
        let unseen = if dbs.is_split() {
            "AND $2::text IS NOT NULL".to_string()
        } else {
            format!("AND NOT EXISTS (SELECT 1 FROM sync_bucket_edges e WHERE e.table_name = $2 AND e.record_id = t.{pk}::text)")
        };
        // Only the routing columns are read (the edge checksums come from the current rows):
        // their types do not matter here.
        let rel_columns: Arc<[RelColumn]> =
            names.iter().map(|n| RelColumn { name: n.clone(), type_oid: crate::types::Oid(0) }).collect();
        let table: Arc<str> = Arc::from(t.name.as_str());
        let mut after: Option<String> = None;
        loop {
            let sql = format!(
                "SELECT {cols} FROM {q} t WHERE ($1::text IS NULL OR t.{pk} > $1::text::{ty}) {live} {unseen} \
                 ORDER BY t.{pk} LIMIT 1000",
                cols = columns.join(", "),
                q = t.qualified,
                ty = t.pk_type
            );
            let rows = dbs
                .app()
                .query(&sql, &[&after, &t.name])
                .map_err(StoreError::query(format!("backfilling edges of {}", t.name)))?;
            if rows.is_empty() {
                break;
            }
            let chunk: Vec<RowChange> = rows
                .iter()
                .map(|r| RowChange {
                    table: table.clone(),
                    kind: ChangeKind::Insert,
                    key: r.get(0),
                    old_key: None,
                    columns: rel_columns.clone(),
                    values: (0..rel_columns.len())
                        .map(|i| r.get::<_, Option<String>>(i).map_or(ColumnValue::Null, ColumnValue::Text))
                        .collect(),
                })
                .collect();
            after = chunk.last().map(|c| c.key.clone());
            let (app, store) = dbs.split_mut();
            let (target, reads) = match store {
                Some(s) => (s, Some(app)),
                None => (app, None),
            };
            let mut tx = target.transaction().map_err(StoreError::query("starting a backfill page"))?;
            let plan = plan_chunk(&mut tx, reads, EdgeReads::Here, routing, assigner, &chunk, checksum).map_err(
                |e| match e {
                    WriterError::Store(e) => e,
                    other => StoreError::Corrupt { detail: other.to_string() },
                },
            )?;
            // Backfill writes membership only (clients get these rows from snapshots), in one
            // transaction of its own.
            total += (plan.edge_inserts.len() + plan.edge_updates.len()) as u64;
            edge_session::write_edges(&mut tx, &plan.edge_writes())?;
            tx.commit().map_err(StoreError::query("committing a backfill page"))?;
        }
        crate::store::changelog::raise_watermark(dbs.store(), &mark, 1)?;
    }
    Ok(total)
}
