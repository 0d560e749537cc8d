//! The change-capture pipeline: a supervisor thread (`wal-capture`) that runs replication
//! sessions, each one a replication connection reading pgoutput, decoding it into events and
//! handing them to a fresh changelog writer over a bounded channel.
//!
//! A session ends on any error (network, server restart, writer failure); the supervisor logs
//! it and starts a new session with capped exponential backoff. Each session resumes from the
//! position the writer stored, so nothing is lost or written twice. A missing or invalidated
//! slot is recreated and marked as a history reset: clients positioned before it are told to
//! re-snapshot (`history_unavailable`) instead of silently missing changes.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, SendTimeoutError, Sender};

use crate::capture::buckets::{BucketAssigner, RoutingTable};
use crate::capture::decode::{Decoded, Decoder, Routes};
use crate::capture::events::WalEvent;
use crate::capture::writer::{self, WriterConfig, WriterError, WriterProgress};
use crate::pg::conn::{ReplError, ReplicationConn};
use crate::pg::url;
use crate::pg::wire::backend::{self, BackendMessage, ReplicationMessage};
use crate::pg::wire::pgoutput;
use crate::registry::Registry;
use crate::store::changelog::{self, watermark};
use crate::store::pool::StoreError;
use crate::store::Stores;
use crate::time::unix_ms_now as now_ms;
use crate::types::Lsn;

/// Why a replication session ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum CaptureError {
    /// The replication connection failed.
    Replication(ReplError),
    /// The writer failed.
    Writer(WriterError),
    /// A store query failed.
    Store(StoreError),
    /// The stream carried something we cannot decode.
    Decode(String),
    /// Configuration that cannot work.
    Config(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Replication(e) => write!(f, "replication: {e}"),
            CaptureError::Writer(e) => write!(f, "{e}"),
            CaptureError::Store(e) => write!(f, "{e}"),
            CaptureError::Decode(m) => write!(f, "decoding the stream: {m}"),
            CaptureError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CaptureError {}

impl From<ReplError> for CaptureError {
    fn from(e: ReplError) -> Self {
        CaptureError::Replication(e)
    }
}

impl From<StoreError> for CaptureError {
    fn from(e: StoreError) -> Self {
        CaptureError::Store(e)
    }
}

impl From<WriterError> for CaptureError {
    fn from(e: WriterError) -> Self {
        CaptureError::Writer(e)
    }
}

/// Change-capture settings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The replication connection string.
    pub replication_url: String,
    /// The slot.
    pub slot_name: String,
    /// The publication.
    pub publication: String,
    /// Standby status update interval.
    pub status_interval: Duration,
    /// Events buffered between the replication thread and the writer.
    pub channel_capacity: usize,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// The writer's settings.
    pub writer: WriterConfig,
}

impl CaptureConfig {
    /// Defaults for the given connection strings, slot and publication.
    pub fn new(replication_url: &str, database_url: &str, slot: &str, publication: &str) -> CaptureConfig {
        CaptureConfig {
            replication_url: replication_url.to_string(),
            slot_name: slot.to_string(),
            publication: publication.to_string(),
            status_interval: Duration::from_secs(10),
            channel_capacity: 8192,
            max_backoff: Duration::from_secs(30),
            writer: WriterConfig::new(database_url, slot),
        }
    }
}

/// Session states, for health checks and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureState {
    /// Connecting or waiting to reconnect.
    Connecting = 0,
    /// Streaming.
    Streaming = 1,
    /// Stopped for good.
    Stopped = 2,
    /// Another instance holds the capture leadership (see [`super::leader`]).
    Standby = 3,
}

/// Shared, observable state of the pipeline.
#[derive(Debug, Default)]
pub struct CaptureStatus {
    state: AtomicU8,
    /// Unix millis of the moment streaming last (re)started or stopped streaming.
    since_ms: AtomicU64,
    /// The last WAL end the server reported.
    pub server_wal_end: AtomicU64,
    /// Sessions started.
    pub sessions: AtomicU64,
    /// The writer's progress of the current session.
    pub committed_lsn: AtomicU64,
    /// Changelog rows written since the process started.
    pub rows_written: AtomicU64,
    /// Writer batches committed since the process started.
    pub batches: AtomicU64,
    /// WAL messages received since the process started.
    pub wal_messages: AtomicU64,
    /// Commit time (Unix ms) of the newest replicated transaction in the changelog.
    pub last_commit_ms: AtomicU64,
}

impl CaptureStatus {
    pub(crate) fn set(&self, s: CaptureState) {
        if self.state.swap(s as u8, Ordering::AcqRel) != s as u8 {
            self.since_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// The current state.
    pub fn state(&self) -> CaptureState {
        match self.state.load(Ordering::Acquire) {
            1 => CaptureState::Streaming,
            2 => CaptureState::Stopped,
            3 => CaptureState::Standby,
            _ => CaptureState::Connecting,
        }
    }

    /// How long the pipeline has been in its current state.
    pub fn in_state_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.since_ms.load(Ordering::Acquire)))
    }
}

/// A running pipeline.
pub struct CaptureHandle {
    stop: Arc<AtomicBool>,
    /// Observable state.
    pub status: Arc<CaptureStatus>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureHandle {
    /// Stops streaming: the writer commits what is complete, the final position is confirmed,
    /// the connection is closed. Blocks until done.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::error!("the change-capture thread panicked");
            }
        }
    }
}

/// Everything a session needs from the registry.
#[derive(Clone)]
pub struct CaptureTables {
    /// Decoder routes.
    pub routes: Routes,
    /// Writer routing.
    pub routing: Arc<RoutingTable>,
}

impl CaptureTables {
    /// Routes and routing for the registered tables.
    pub fn from_registry(registry: &Registry) -> CaptureTables {
        let mut routes = Routes::new();
        for t in &registry.tables {
            routes.insert(&t.schema, &t.name, &t.pk);
        }
        for m in registry.membership_tables() {
            routes.insert_membership(&m.schema, &m.name, &m.user);
        }
        CaptureTables { routes, routing: Arc::new(RoutingTable::from_registry(registry)) }
    }
}

/// Starts the supervisor thread.
pub fn start(
    config: CaptureConfig,
    tables: CaptureTables,
    assigner: Arc<dyn BucketAssigner>,
) -> Result<CaptureHandle, CaptureError> {
    start_with_status(config, tables, assigner, Arc::new(CaptureStatus::default()))
}

/// Starts the supervisor thread reporting into an existing status (one per process across
/// leadership terms).
pub fn start_with_status(
    config: CaptureConfig,
    tables: CaptureTables,
    assigner: Arc<dyn BucketAssigner>,
    status: Arc<CaptureStatus>,
) -> Result<CaptureHandle, CaptureError> {
    url::parse(&config.replication_url).map_err(|e| CaptureError::Config(format!("REPLICATION_URL: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    status.set(CaptureState::Connecting);
    // The state may have been Connecting already: start its clock explicitly.
    status.since_ms.store(now_ms(), Ordering::Release);
    let (s, st) = (stop.clone(), status.clone());
    let thread = thread::Builder::new()
        .name("wal-capture".into())
        .spawn(move || supervise(&config, &tables, assigner, &s, &st))
        .map_err(|e| CaptureError::Config(format!("spawning the capture thread: {e}")))?;
    Ok(CaptureHandle { stop, status, thread: Some(thread) })
}

fn supervise(
    config: &CaptureConfig,
    tables: &CaptureTables,
    assigner: Arc<dyn BucketAssigner>,
    stop: &AtomicBool,
    status: &CaptureStatus,
) {
    let mut backoff = Duration::from_millis(250);
    let mut attempt: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        attempt += 1;
        status.sessions.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match run_session(config, tables, assigner.clone(), stop, status) {
            Ok(()) => break,
            Err(e) => {
                status.set(CaptureState::Connecting);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                crate::error!(
                    "replication session ended; reconnecting",
                    error = e.to_string(),
                    attempt = attempt,
                    retry_in_ms = backoff.as_millis() as u64
                );
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    thread::sleep(Duration::from_millis(50));
                }
                // A slot still held by a departing walsender (a leader that just died) frees
                // up within moments: keep retrying quickly so a takeover is not delayed.
                let slot_busy = matches!(&e, CaptureError::Replication(r) if r.sqlstate() == Some("55006"));
                backoff = if slot_busy { Duration::from_millis(100) } else { (backoff * 2).min(config.max_backoff) };
            }
        }
    }
    status.set(CaptureState::Stopped);
}

/// Slot facts from `pg_replication_slots`.
struct SlotInfo {
    lost: bool,
    plugin: Option<String>,
}

fn slot_info(db: &mut postgres::Client, slot: &str) -> Result<Option<SlotInfo>, StoreError> {
    let row = db
        .query_opt(
            "SELECT COALESCE(wal_status, '') = 'lost' OR (restart_lsn IS NULL AND slot_type = 'logical'), plugin::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(StoreError::query("looking up the replication slot"))?;
    Ok(row.map(|r| SlotInfo { lost: r.get(0), plugin: r.get(1) }))
}

/// Records that history up to now may be incomplete: clients positioned before the returned
/// sequence must re-snapshot.
fn mark_history_reset(db: &mut postgres::Client, why: &str) -> Result<i64, StoreError> {
    let mut tx = db.transaction().map_err(StoreError::query("starting the history reset"))?;
    // A marker row in a bucket nobody subscribes to advances `seq` past every earlier change,
    // so snapshots taken after the reset start at or above it.
    let seq: i64 = tx
        .query_one(
            "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) VALUES ('__synchro_history_reset__', '', '', 2) RETURNING seq",
            &[],
        )
        .map_err(StoreError::query("writing the history-reset marker"))?
        .get(0);
    changelog::raise_watermark(&mut tx, watermark::HISTORY_RESET, seq)?;
    // No batch is in flight: every edge up to the marker is committed, so rebuilds may start
    // past it.
    changelog::raise_watermark(&mut tx, crate::edge_session::EDGES_SEQ, seq)?;
    tx.commit().map_err(StoreError::query("committing the history reset"))?;
    crate::error!("change history is incomplete; clients will re-snapshot", reason = why, reset_seq = seq);
    Ok(seq)
}

/// Makes sure the slot exists and is usable: created when missing, recreated when invalidated
/// (with a history reset when we had streamed before, so clients re-snapshot). Call it before
/// relying on the slot to retain changes (synchronously at startup, before the edge backfill).
pub fn ensure_slot(config: &CaptureConfig) -> Result<(), CaptureError> {
    let params = url::parse(&config.replication_url).map_err(|e| CaptureError::Config(e.to_string()))?;
    let mut dbs = Stores::connect(&config.writer.database_url, config.writer.store_url.as_deref())?;
    let mut conn = ReplicationConn::connect(&params, Duration::from_secs(10))?;
    conn.identify_system()?;
    let stored = writer::stored_position(dbs.store(), &config.slot_name)?;
    ensure_slot_with(&mut conn, &mut dbs, config, stored)?;
    conn.close();
    Ok(())
}

fn ensure_slot_with(
    conn: &mut ReplicationConn,
    dbs: &mut Stores<postgres::Client>,
    config: &CaptureConfig,
    stored: Lsn,
) -> Result<(), CaptureError> {
    match slot_info(dbs.app(), &config.slot_name)? {
        Some(info) if info.lost => {
            crate::error!(
                "replication slot was invalidated (max_slot_wal_keep_size exceeded?); recreating it",
                slot = config.slot_name.clone()
            );
            dbs.app()
                .execute("SELECT pg_drop_replication_slot($1)", &[&config.slot_name])
                .map_err(StoreError::query("dropping the invalidated slot"))?;
            conn.create_slot(&config.slot_name)?;
            mark_history_reset(dbs.store(), "replication slot invalidated")?;
        }
        Some(info) if info.plugin.as_deref() != Some("pgoutput") => {
            return Err(CaptureError::Config(format!(
                "replication slot {} uses plugin {:?}, not pgoutput; drop it or set SLOT_NAME",
                config.slot_name, info.plugin
            )));
        }
        Some(_) => {}
        None => {
            match conn.create_slot(&config.slot_name) {
                Ok(_) => {}
                // Another instance created it a moment ago: the same slot, nothing lost.
                Err(e) if e.sqlstate() == Some("42710") => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            crate::info!("replication slot created", slot = config.slot_name.clone());
            if !stored.is_zero() {
                // We streamed before, and the slot is gone (dropped, or a restored backup).
                mark_history_reset(dbs.store(), "replication slot missing")?;
            }
        }
    }
    Ok(())
}

fn send_event(
    tx: &Sender<WalEvent>,
    mut event: WalEvent,
    conn: &mut ReplicationConn,
    progress: &WriterProgress,
    stop: &AtomicBool,
) -> Result<(), CaptureError> {
    loop {
        match tx.send_timeout(event, Duration::from_secs(1)) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(e)) => {
                // The writer is busy with a long batch: keep the server informed (and the
                // connection alive past wal_sender_timeout) while we wait.
                let lsn = Lsn(progress.committed_lsn.load(Ordering::Acquire));
                conn.send_status(lsn, lsn, lsn, false)?;
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                event = e;
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(CaptureError::Decode("the changelog writer stopped".into()));
            }
        }
    }
}

/// How soon newly committed progress is confirmed to the server, at the latest.
const CONFIRM_PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn run_session(
    config: &CaptureConfig,
    tables: &CaptureTables,
    assigner: Arc<dyn BucketAssigner>,
    stop: &AtomicBool,
    status: &CaptureStatus,
) -> Result<(), CaptureError> {
    let params = url::parse(&config.replication_url).map_err(|e| CaptureError::Config(e.to_string()))?;
    let mut dbs = Stores::connect(&config.writer.database_url, config.writer.store_url.as_deref())?;
    let mut conn = ReplicationConn::connect(&params, Duration::from_secs(10))?;
    let system = conn.identify_system()?;
    // The changelog position, or the edge position when a crash left the edges behind.
    let stored = writer::resume_position(dbs.store(), &config.slot_name)?;
    ensure_slot_with(&mut conn, &mut dbs, config, stored)?;
    // Not needed while streaming: the writer has its own sessions.
    drop(dbs);
    // Bounded: a slow writer slows WAL reading instead of growing memory.
    let (tx, rx) = bounded::<WalEvent>(config.channel_capacity.max(16));
    let writer = writer::spawn(config.writer.clone(), tables.routing.clone(), assigner, rx)?;
    let progress = writer.progress.clone();
    conn.start_replication(&config.slot_name, stored, &config.publication)?;
    conn.set_read_timeout(Duration::from_millis(100))?;
    status.set(CaptureState::Streaming);
    crate::info!(
        "streaming changes",
        slot = config.slot_name.clone(),
        from = stored.to_string(),
        server = system.xlogpos.to_string()
    );

    let mut decoder = Decoder::new(tables.routes.clone());
    let (mut seen_rows, mut seen_batches) = (0u64, 0u64);
    let mut in_txn = false;
    let mut last_status = Instant::now();
    let mut last_confirmed = stored;
    let mut last_idle = Lsn::ZERO;
    let result = (|| -> Result<(), CaptureError> {
        while !stop.load(Ordering::Acquire) {
            if writer.join.is_finished() {
                return Err(CaptureError::Decode("the changelog writer stopped unexpectedly".into()));
            }
            let mut reply_now = false;
            if let Some(frame) = conn.read_frame("streaming")? {
                let msg = backend::decode(backend::Frame { tag: frame.tag, body: &frame.body })
                    .map_err(|e| CaptureError::Decode(e.to_string()))?;
                match msg {
                    BackendMessage::CopyData(payload) => match backend::decode_replication(payload)
                        .map_err(|e| CaptureError::Decode(e.to_string()))?
                    {
                        ReplicationMessage::XLogData { data, wal_end, .. } => {
                            status.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                            status.wal_messages.fetch_add(1, Ordering::Relaxed);
                            let message = pgoutput::decode(data).map_err(|e| CaptureError::Decode(e.to_string()))?;
                            match decoder.decode(&message).map_err(|e| CaptureError::Decode(e.to_string()))? {
                                Decoded::Event(event) => {
                                    match &event {
                                        WalEvent::Begin { .. } => in_txn = true,
                                        WalEvent::Commit { .. } => in_txn = false,
                                        _ => {}
                                    }
                                    send_event(&tx, event, &mut conn, &progress, stop)?;
                                }
                                Decoded::SchemaChanged { table } => {
                                    crate::info!("table definition changed in the stream", table = table);
                                }
                                Decoded::Nothing => {}
                            }
                        }
                        ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                            status.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                            if !in_txn && wal_end > last_idle {
                                last_idle = wal_end;
                                send_event(&tx, WalEvent::Idle { wal_end }, &mut conn, &progress, stop)?;
                            }
                            reply_now = reply_requested;
                        }
                    },
                    BackendMessage::Error(fields) => {
                        return Err(CaptureError::Replication(ReplError::Server {
                            context: "streaming".into(),
                            fields: Box::new(fields),
                        }))
                    }
                    BackendMessage::CopyDone => return Err(CaptureError::Decode("the server ended the stream".into())),
                    _ => {}
                }
            }
            // Besides the timer and the server's requests, confirm progress within a second: the
            // server can only move the slot's restart_lsn (and free WAL) past what we confirmed,
            // and a restart decodes everything after restart_lsn again before sending anything.
            let committed = Lsn(progress.committed_lsn.load(Ordering::Acquire));
            let progressed = committed > last_confirmed && last_status.elapsed() >= CONFIRM_PROGRESS_EVERY;
            if reply_now || progressed || last_status.elapsed() >= config.status_interval {
                status.committed_lsn.store(committed.0, Ordering::Relaxed);
                conn.send_status(committed, committed, committed, false)?;
                last_status = Instant::now();
                last_confirmed = committed;
            }
            status.committed_lsn.store(progress.committed_lsn.load(Ordering::Acquire), Ordering::Relaxed);
            let (rows, batches) = (progress.rows.load(Ordering::Relaxed), progress.batches.load(Ordering::Relaxed));
            status.rows_written.fetch_add(rows - seen_rows, Ordering::Relaxed);
            status.batches.fetch_add(batches - seen_batches, Ordering::Relaxed);
            (seen_rows, seen_batches) = (rows, batches);
            status.last_commit_ms.fetch_max(progress.last_commit_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Ok(())
    })();
    // Closing the channel lets the writer commit what is complete and exit.
    drop(tx);
    let writer_result = writer.join.join();
    let lsn = Lsn(progress.committed_lsn.load(Ordering::Acquire));
    status.committed_lsn.store(lsn.0, Ordering::Relaxed);
    if result.is_ok() {
        // Final confirmation on a clean stop, then a polite goodbye.
        let _ = conn.send_status(lsn, lsn, lsn, false);
        conn.close();
    }
    match writer_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CaptureError::Writer(e)),
        Err(_) => return Err(CaptureError::Decode("the changelog writer panicked".into())),
    }
    result
}
