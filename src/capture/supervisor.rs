//! The change-capture pipeline: a supervisor thread (`wal-capture`) that runs replication
//! sessions, each one a replication connection reading pgoutput, decoding it into events and
//! handing them to a fresh changelog writer over a bounded channel.
//!
//! A session ends on any error (network, server restart, writer failure); the supervisor logs
//! it and starts a new session with capped exponential backoff. Each session resumes from the
//! position the writer stored, so nothing is lost or written twice. A missing or invalidated
//! slot is recreated and marked as a history reset: clients positioned before it are told to
//! re-snapshot (`history_unavailable`) instead of silently missing changes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, SendTimeoutError, Sender};

use super::buckets::{BucketAssigner, RoutingTable};
use super::decode::Routes;
use super::error::{CaptureError, Recovery};
use super::events::WalEvent;
use super::stream::{ReplicationStream, Streamed};
use super::writer::{self, WriterConfig, WriterProgress};
use crate::pg::conn::ReplicationConn;
use crate::pg::url;
use crate::registry::Registry;
use crate::store::changelog;
use crate::store::pool::StoreError;
use crate::store::position;
use crate::store::Stores;
use crate::time::unix_ms_now as now_ms;
use crate::types::Lsn;

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
    /// A registered table's columns changed in the stream (DDL): the capture started with
    /// another definition of it, so the leader starts a new term on the current catalog
    /// ([`super::leader`]), which recomputes the table's edge checksums.
    pub schema_changed: AtomicBool,
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
    url::parse(&config.replication_url)?;
    let stop = Arc::new(AtomicBool::new(false));
    status.set(CaptureState::Connecting);
    // The state may have been Connecting already: start its clock explicitly.
    status.since_ms.store(now_ms(), Ordering::Release);
    let (s, st) = (stop.clone(), status.clone());
    let thread = thread::Builder::new()
        .name("wal-capture".into())
        .spawn(move || supervise(&config, &tables, assigner, &s, &st))
        .map_err(CaptureError::Spawn)?;
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
                let recovery = e.recovery();
                let pause = match recovery {
                    // A slot still held by a departing walsender (a leader that just died)
                    // frees up within moments: retry quickly so a takeover is not delayed.
                    Recovery::RetrySoon => Duration::from_millis(100),
                    Recovery::Backoff => backoff,
                    Recovery::NeedsOperator => config.max_backoff,
                };
                crate::error!(
                    "replication session ended; reconnecting",
                    error = crate::store::pool::with_causes(&e),
                    needs_operator = recovery == Recovery::NeedsOperator,
                    attempt = attempt,
                    retry_in_ms = pause.as_millis() as u64
                );
                let until = Instant::now() + pause;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
                }
                if recovery == Recovery::Backoff {
                    backoff = (backoff * 2).min(config.max_backoff);
                }
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
    let seq = changelog::mark_history_reset(db)?;
    crate::error!("change history is incomplete; clients will re-snapshot", reason = why, reset_seq = seq);
    Ok(seq)
}

/// Makes sure the slot exists and is usable: created when missing, recreated when invalidated
/// (with a history reset when we had streamed before, so clients re-snapshot). Call it before
/// relying on the slot to retain changes (synchronously at startup, before the edge backfill).
pub fn ensure_slot(config: &CaptureConfig) -> Result<(), CaptureError> {
    let params = url::parse(&config.replication_url)?;
    let mut dbs = Stores::connect(&config.writer.database_url, config.writer.store_url.as_deref())?;
    let mut conn = ReplicationConn::connect(&params, Duration::from_secs(10))?;
    conn.identify_system()?;
    let stored = position::read(dbs.store(), &config.slot_name)?;
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
            return Err(CaptureError::SlotPlugin { slot: config.slot_name.clone(), plugin: info.plugin });
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

/// Hands `event` to the writer, waiting while its channel is full. The writer stopping is not
/// an error here: the session then ends with the writer's own error.
fn send_event(
    tx: &Sender<WalEvent>,
    mut event: WalEvent,
    stream: &mut ReplicationStream,
    progress: &WriterProgress,
    stop: &AtomicBool,
) -> Result<Sent, CaptureError> {
    loop {
        match tx.send_timeout(event, Duration::from_secs(1)) {
            Ok(()) => return Ok(Sent::Sent),
            Err(SendTimeoutError::Timeout(e)) => {
                // The writer is busy with a long batch: keep the server informed (and the
                // connection alive past wal_sender_timeout) while we wait.
                stream.confirm(Lsn(progress.committed_lsn.load(Ordering::Acquire)))?;
                if stop.load(Ordering::Acquire) {
                    return Ok(Sent::Sent);
                }
                event = e;
            }
            Err(SendTimeoutError::Disconnected(_)) => return Ok(Sent::WriterGone),
        }
    }
}

/// Whether [`send_event`] could hand the event on.
#[derive(PartialEq, Eq)]
enum Sent {
    Sent,
    WriterGone,
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
    let params = url::parse(&config.replication_url)?;
    let mut dbs = Stores::connect(&config.writer.database_url, config.writer.store_url.as_deref())?;
    let mut conn = ReplicationConn::connect(&params, Duration::from_secs(10))?;
    let system = conn.identify_system()?;
    let stored = position::read(dbs.store(), &config.slot_name)?;
    ensure_slot_with(&mut conn, &mut dbs, config, stored)?;
    // Not needed while streaming: the writer has its own sessions.
    drop(dbs);
    // Bounded: a slow writer slows WAL reading instead of growing memory.
    let (tx, rx) = bounded::<WalEvent>(config.channel_capacity.max(16));
    let writer = writer::spawn(config.writer.clone(), tables.routing.clone(), assigner, rx)?;
    let progress = writer.progress.clone();
    let mut stream = ReplicationStream::start(
        conn,
        tables.routes.clone(),
        &config.slot_name,
        stored,
        &config.publication,
        Duration::from_millis(100),
    )?;
    status.set(CaptureState::Streaming);
    crate::info!(
        "streaming changes",
        slot = config.slot_name.clone(),
        from = stored.to_string(),
        server = system.xlogpos.to_string()
    );

    let (mut seen_rows, mut seen_batches, mut seen_messages) = (0u64, 0u64, 0u64);
    let mut last_status = Instant::now();
    let mut last_confirmed = stored;
    let result = (|| -> Result<(), CaptureError> {
        while !stop.load(Ordering::Acquire) {
            let mut reply_now = false;
            let sent = match stream.read()? {
                Streamed::Event(event) => send_event(&tx, event, &mut stream, &progress, stop)?,
                Streamed::Keepalive { idle, reply_requested } => {
                    reply_now = reply_requested;
                    match idle {
                        Some(wal_end) => send_event(&tx, WalEvent::Idle { wal_end }, &mut stream, &progress, stop)?,
                        None => Sent::Sent,
                    }
                }
                Streamed::SchemaChanged => {
                    status.schema_changed.store(true, Ordering::Release);
                    Sent::Sent
                }
                Streamed::Nothing => Sent::Sent,
            };
            if sent == Sent::WriterGone || writer.join.is_finished() {
                // The session ends with the writer's own error when it has one (joined below).
                return Err(CaptureError::WriterStopped);
            }
            status.server_wal_end.fetch_max(stream.server_wal_end.0, Ordering::Relaxed);
            status.wal_messages.fetch_add(stream.messages - seen_messages, Ordering::Relaxed);
            seen_messages = stream.messages;
            // Besides the timer and the server's requests, confirm progress within a second: the
            // server can only move the slot's restart_lsn (and free WAL) past what we confirmed,
            // and a restart decodes everything after restart_lsn again before sending anything.
            let committed = Lsn(progress.committed_lsn.load(Ordering::Acquire));
            let progressed = committed > last_confirmed && last_status.elapsed() >= CONFIRM_PROGRESS_EVERY;
            if reply_now || progressed || last_status.elapsed() >= config.status_interval {
                status.committed_lsn.store(committed.0, Ordering::Relaxed);
                stream.confirm(committed)?;
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
    let writer_result = match writer_result {
        Ok(r) => r.map_err(CaptureError::Writer),
        Err(panic) => Err(CaptureError::WriterPanicked(panic_message(panic.as_ref()))),
    };
    match (result, writer_result) {
        // The writer's failure is why the stream loop stopped (or happened while it stopped).
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Ok(())) => {
            // Final confirmation on a clean stop, then a polite goodbye.
            let _ = stream.confirm(lsn);
            stream.close();
            Ok(())
        }
    }
}

/// The text a thread panicked with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
