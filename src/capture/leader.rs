//! Leader election for change capture. Any number of synchrod instances may share one
//! database; exactly one runs change capture: the one whose dedicated session holds a
//! session-level advisory lock derived from the slot name. The others serve HTTP and stand by,
//! trying the lock every [`ElectionConfig::poll`], and take over when the leader's session ends
//! (process killed, connection lost, graceful shutdown).
//!
//! Three independent guards keep a single writer: the advisory lock (PostgreSQL releases it
//! the moment the holder's backend exits), the slot itself (one walsender at a time), and the
//! writer's compare-and-set on the stored WAL position, which rolls back the batch of a writer
//! that lost the race. A partitioned leader loses its lock when PostgreSQL's TCP keepalives
//! (set on the lock session to about 10 s) give up on it; until then nobody takes over, which
//! is safe. The leader pings its lock session every [`ElectionConfig::ping`] and stops capture
//! as soon as that session fails.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::error::CaptureError;
use super::supervisor::{CaptureHandle, CaptureState, CaptureStatus};
use crate::store::pool::{self, StoreError};

/// Election settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Where the lock is taken (the application database, shared by every instance).
    pub database_url: String,
    /// The advisory lock key (see [`lock_key`]).
    pub key: i64,
    /// How often a standby tries the lock.
    pub poll: Duration,
    /// How often the leader checks its lock session.
    pub ping: Duration,
    /// Pause after a failed attempt to start capture before trying again.
    pub retry_after_failure: Duration,
}

impl ElectionConfig {
    /// Defaults for a slot: poll every 200 ms, ping every 500 ms.
    pub fn new(database_url: &str, slot: &str) -> ElectionConfig {
        ElectionConfig {
            database_url: database_url.to_string(),
            key: lock_key(slot),
            poll: Duration::from_millis(200),
            ping: Duration::from_millis(500),
            retry_after_failure: Duration::from_secs(2),
        }
    }
}

/// The advisory lock key for a slot: stable across versions and instances, distinct per slot.
pub fn lock_key(slot: &str) -> i64 {
    let digest = Sha256::digest(format!("synchro capture leader\0{slot}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Starts one leadership term's capture (publication, slot, backfill, pipeline), reporting
/// into the shared status.
pub type StartTerm = Box<dyn FnMut(Arc<CaptureStatus>) -> Result<CaptureHandle, CaptureError> + Send>;

/// Why the election could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ElectionError {
    /// The lock session could not be opened or used.
    Store(StoreError),
    /// This instance won the lock at startup but capture failed to start.
    Capture(CaptureError),
    /// The election thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for ElectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElectionError::Store(e) => write!(f, "capture leader election: {e}"),
            ElectionError::Capture(e) => write!(f, "starting change capture: {e}"),
            ElectionError::Spawn(e) => write!(f, "starting the capture leader thread: {e}"),
        }
    }
}

impl std::error::Error for ElectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ElectionError::Store(e) => Some(e),
            ElectionError::Capture(e) => Some(e),
            ElectionError::Spawn(e) => Some(e),
        }
    }
}

impl From<StoreError> for ElectionError {
    fn from(e: StoreError) -> Self {
        ElectionError::Store(e)
    }
}

/// Change capture under leader election.
pub struct ElectedCapture {
    stop: Arc<AtomicBool>,
    /// The capture state of this instance (`Standby` while another instance leads).
    pub status: Arc<CaptureStatus>,
    terms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ElectedCapture {
    /// Whether this instance currently runs capture.
    pub fn is_leader(&self) -> bool {
        !matches!(self.status.state(), CaptureState::Standby | CaptureState::Stopped)
    }

    /// Leadership terms this instance has started.
    pub fn terms(&self) -> u64 {
        self.terms.load(Ordering::Relaxed)
    }

    /// Stops capture if leading (the writer commits what is complete, the position is
    /// confirmed) and releases the lock. Blocks until done.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::error!("the capture leader thread panicked");
            }
        }
    }
}

/// The lock session.
struct LockSession {
    client: postgres::Client,
    key: i64,
}

impl LockSession {
    fn open(config: &ElectionConfig) -> Result<LockSession, StoreError> {
        let (mut pg, tls) = pool::pg_config(&config.database_url)?;
        pg.application_name("synchrod-leader");
        // Notice a dead server quickly on our side...
        pg.keepalives(true).keepalives_idle(Duration::from_secs(5)).keepalives_interval(Duration::from_secs(1));
        pg.keepalives_retries(3);
        pg.tcp_user_timeout(Duration::from_secs(5));
        let mut client = pg.connect(tls).map_err(StoreError::query("opening the leader-election session"))?;
        // ...and let the server drop a vanished leader (and its lock) within about 10 s.
        client
            .batch_execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
            .map_err(StoreError::query("setting keepalives on the leader-election session"))?;
        Ok(LockSession { client, key: config.key })
    }

    fn try_lock(&mut self) -> Result<bool, StoreError> {
        Ok(self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key])
            .map_err(StoreError::query("trying the capture leader lock"))?
            .get(0))
    }

    fn unlock(&mut self) {
        let _ = self.client.execute("SELECT pg_advisory_unlock($1)", &[&self.key]);
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("").map_err(StoreError::query("checking the leader-election session"))
    }
}

enum Role {
    Standby,
    Leader(CaptureHandle),
}

/// Starts the election. When the lock is free right away, capture starts before this returns
/// (so a configuration error fails startup as it would without election); otherwise this
/// instance stands by.
pub fn start(config: ElectionConfig, mut start_term: StartTerm) -> Result<ElectedCapture, ElectionError> {
    let status = Arc::new(CaptureStatus::default());
    status.set(CaptureState::Standby);
    let terms = Arc::new(AtomicU64::new(0));
    let mut session = LockSession::open(&config)?;
    let role = if session.try_lock()? {
        terms.fetch_add(1, Ordering::Relaxed);
        crate::info!("elected change-capture leader", lock_key = config.key);
        match start_term(status.clone()) {
            Ok(h) => Role::Leader(h),
            Err(e) => {
                session.unlock();
                return Err(ElectionError::Capture(e));
            }
        }
    } else {
        crate::info!("another instance runs change capture; standing by", lock_key = config.key);
        Role::Standby
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st, t) = (stop.clone(), status.clone(), terms.clone());
    let thread = thread::Builder::new()
        .name("capture-leader".into())
        .spawn(move || run(&config, start_term, Some(session), role, &s, &st, &t))
        .map_err(ElectionError::Spawn)?;
    Ok(ElectedCapture { stop, status, terms, thread: Some(thread) })
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn run(
    config: &ElectionConfig,
    mut start_term: StartTerm,
    mut session: Option<LockSession>,
    mut role: Role,
    stop: &AtomicBool,
    status: &Arc<CaptureStatus>,
    terms: &AtomicU64,
) {
    let mut last_connect_error: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        role = match role {
            Role::Leader(handle) => {
                sleep_unless_stopped(config.ping, stop);
                if stop.load(Ordering::Acquire) {
                    role = Role::Leader(handle);
                    break;
                }
                match session.as_mut().map(LockSession::ping) {
                    Some(Ok(())) if status.schema_changed.swap(false, Ordering::AcqRel) => {
                        // A synced table's definition changed under the running capture: a new
                        // term reads the catalog as it is now (routing, served shape), and its
                        // backfill recomputes the edge checksums of the changed table. The lock
                        // stays held; the new term resumes from the stored WAL position.
                        crate::info!("a synced table's definition changed; restarting capture on the current catalog");
                        handle.stop();
                        terms.fetch_add(1, Ordering::Relaxed);
                        match start_term(status.clone()) {
                            Ok(h) => Role::Leader(h),
                            Err(e) => {
                                crate::error!(
                                    "restarting change capture failed; releasing leadership",
                                    error = crate::store::pool::with_causes(&e),
                                    retry_in_ms = config.retry_after_failure.as_millis() as u64
                                );
                                if let Some(s) = session.as_mut() {
                                    s.unlock();
                                }
                                status.set(CaptureState::Standby);
                                sleep_unless_stopped(config.retry_after_failure, stop);
                                Role::Standby
                            }
                        }
                    }
                    Some(Ok(())) => Role::Leader(handle),
                    failed => {
                        let error = match failed {
                            Some(Err(e)) => e.to_string(),
                            _ => "no session".into(),
                        };
                        crate::error!("lost the capture leader lock session; stopping capture", error = error);
                        session = None;
                        handle.stop();
                        status.set(CaptureState::Standby);
                        Role::Standby
                    }
                }
            }
            Role::Standby => {
                sleep_unless_stopped(config.poll, stop);
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if session.is_none() {
                    match LockSession::open(config) {
                        Ok(s) => session = Some(s),
                        Err(e) => {
                            // Log once per 30 s while the database stays unreachable.
                            if last_connect_error.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                                crate::warn!("leader election cannot reach the database", error = e.to_string());
                                last_connect_error = Some(Instant::now());
                            }
                            continue;
                        }
                    }
                }
                let Some(s) = session.as_mut() else { continue };
                match s.try_lock() {
                    Ok(true) => {
                        terms.fetch_add(1, Ordering::Relaxed);
                        crate::info!("elected change-capture leader; taking over", lock_key = config.key);
                        match start_term(status.clone()) {
                            Ok(h) => Role::Leader(h),
                            Err(e) => {
                                crate::error!(
                                    "starting change capture failed; releasing leadership",
                                    error = crate::store::pool::with_causes(&e),
                                    retry_in_ms = config.retry_after_failure.as_millis() as u64
                                );
                                s.unlock();
                                status.set(CaptureState::Standby);
                                sleep_unless_stopped(config.retry_after_failure, stop);
                                Role::Standby
                            }
                        }
                    }
                    Ok(false) => Role::Standby,
                    Err(e) => {
                        crate::warn!("leader election session failed; reconnecting", error = e.to_string());
                        session = None;
                        Role::Standby
                    }
                }
            }
        };
    }
    if let Role::Leader(handle) = role {
        handle.stop();
    }
    if let Some(mut s) = session {
        s.unlock();
    }
    status.set(CaptureState::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("synchro_slot"), lock_key("synchro_slot"));
        assert_ne!(lock_key("synchro_slot"), lock_key("other_slot"));
    }
}
