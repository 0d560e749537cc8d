//! Read replicas (`READ_REPLICA_URLS`): streaming standbys that pull hydration and snapshot
//! pages may read from instead of the primary.
//!
//! The consistency rule: a page is read on a replica only when the replica has replayed WAL at
//! least up to an LSN the caller took on the primary *after* everything the page must reflect
//! was committed there ([`ReplicaSet::reader_for`]). A replica that is behind is polled briefly,
//! then the caller falls back to the primary; a replica that fails (no connection, a query
//! error, not in recovery) is taken out for a back-off that doubles up to a cap and is retried by
//! the next request after it. Replica trouble never fails a request: the primary answers.
//! Health changes are logged once per change of state, not once per attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pool::{self, Pool, PooledClient, StoreError};
use crate::pg::url;
use crate::types::Lsn;

/// Settings of every replica session. The startup process holds the locks of the transactions
/// it is replaying: a lagging or paused replica can keep an `ACCESS EXCLUSIVE` lock (DDL, a
/// vacuum truncation) long after the primary released it, and a page must not wait for that.
/// After the timeout the query fails, the replica is taken out and the primary serves the page.
const REPLICA_SESSION_OPTIONS: &str = "-c lock_timeout=2s";

/// Timing of replica use. [`ReplicaSettings::default`] is what the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// How long a page waits for a lagging replica to catch up before the primary serves it.
    pub catch_up_wait: Duration,
    /// How often a lagging replica's replay position is polled within `catch_up_wait`.
    pub poll_interval: Duration,
    /// How long checking out a replica connection may take before the replica counts as failed.
    pub checkout_timeout: Duration,
    /// The first back-off after a failure.
    pub first_backoff: Duration,
    /// The longest back-off (each failed retry doubles it up to this).
    pub max_backoff: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> ReplicaSettings {
        ReplicaSettings {
            catch_up_wait: Duration::from_millis(20),
            poll_interval: Duration::from_millis(2),
            checkout_timeout: Duration::from_millis(500),
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Whether a replica is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Usable (lag aside).
    Up,
    /// Taken out after a failure; the first request after `retry_at` tries it again.
    Down { retry_at: Instant, backoff: Duration },
}

/// One replica: its pool, a printable name without credentials, and its health.
struct Replica {
    name: String,
    pool: Pool,
    health: Mutex<Health>,
}

impl Replica {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        match self.health.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// The configured read replicas and their health.
pub struct ReplicaSet {
    replicas: Vec<Replica>,
    settings: ReplicaSettings,
    /// Where the next search starts, so load spreads over healthy replicas.
    next: AtomicUsize,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("replicas", &self.replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish()
    }
}

/// A connection to a replica that has replayed past the LSN it was asked for. Report a failure
/// while using it with [`ReplicaReader::failed`], so the replica is taken out.
pub struct ReplicaReader<'a> {
    set: &'a ReplicaSet,
    index: usize,
    client: PooledClient,
}

impl std::fmt::Debug for ReplicaReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaReader").field("replica", &self.set.replicas[self.index].name).finish()
    }
}

impl ReplicaReader<'_> {
    /// The session on the replica.
    pub fn client(&mut self) -> &mut PooledClient {
        &mut self.client
    }

    /// The replica's printable name (host, port, database).
    pub fn name(&self) -> &str {
        &self.set.replicas[self.index].name
    }

    /// Takes the replica out after `error` (the caller then reads on the primary).
    pub fn failed(self, error: &StoreError) {
        self.set.mark_down(self.index, &error.to_string());
    }
}

/// What one look at a replica found.
enum Probe {
    /// Replayed at least up to the wanted LSN.
    CaughtUp(PooledClient),
    /// Reachable but behind: poll again.
    Behind(PooledClient),
    /// Failed (already marked down).
    Failed,
}

/// The primary's WAL insert position, as a bound for [`ReplicaSet::reader_for`]: taken after a
/// read, it is at or past the commit record of every transaction that read could see.
/// (`pg_current_wal_insert_lsn`, not `pg_current_wal_lsn`: with `synchronous_commit = off` a
/// commit is visible before its record is written out, but never before it is inserted.)
pub fn primary_lsn(session: &mut pool::Session) -> Result<Lsn, StoreError> {
    let rows = session
        .query_cached("SELECT pg_current_wal_insert_lsn()::text", &[], &[])
        .map_err(StoreError::query("reading the primary's WAL position"))?;
    let text: String = rows
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::Corrupt { detail: "pg_current_wal_insert_lsn() returned no row".into() })?;
    text.parse().map_err(|e| StoreError::Corrupt { detail: format!("unreadable WAL position {e}") })
}

/// The printable name of a replica URL: `host:port/dbname`, never the password.
fn display_name(url: &str) -> Result<String, StoreError> {
    let params = url::parse(url).map_err(|e| StoreError::BadUrl { detail: e.to_string() })?;
    let host = match &params.host {
        url::Host::Tcp(h) | url::Host::UnixDir(h) => h.clone(),
    };
    Ok(format!("{host}:{}/{}", params.port, params.dbname))
}

impl ReplicaSet {
    /// One lazily connected pool of up to `pool_size` sessions per URL. Fails only on an
    /// unusable URL: a replica that is down at startup is simply not used until it answers.
    pub fn connect(urls: &[String], pool_size: u32, settings: ReplicaSettings) -> Result<ReplicaSet, StoreError> {
        let mut replicas = Vec::with_capacity(urls.len());
        for url in urls {
            replicas.push(Replica {
                name: display_name(url)?,
                pool: pool::connect_quiet_pool(url, pool_size, REPLICA_SESSION_OPTIONS)?,
                health: Mutex::new(Health::Up),
            });
        }
        Ok(ReplicaSet { replicas, settings, next: AtomicUsize::new(0) })
    }

    /// How many replicas are configured.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// True when no replica is configured.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// How many replicas are currently taken out after a failure.
    pub fn down_count(&self) -> usize {
        self.replicas.iter().filter(|r| matches!(*r.health(), Health::Down { .. })).count()
    }

    /// Whether any replica may be tried now (one is up, or due for a retry). Lets a caller skip
    /// the primary round trip for the WAL position while every replica is backing off.
    pub fn has_candidate(&self) -> bool {
        let now = Instant::now();
        self.replicas.iter().any(|r| match *r.health() {
            Health::Up => true,
            Health::Down { retry_at, .. } => now >= retry_at,
        })
    }

    /// A session on a replica whose replay position (`pg_last_wal_replay_lsn()`) is at or past
    /// `lsn`, waiting up to [`ReplicaSettings::catch_up_wait`] for one to catch up; `None` when
    /// none qualifies in time (the caller reads on the primary).
    ///
    /// Everything committed on the primary before `lsn` was taken is visible to a new snapshot
    /// on such a replica: the replay position only passes a commit record after the standby has
    /// marked that transaction committed.
    pub fn reader_for(&self, lsn: Lsn) -> Option<ReplicaReader<'_>> {
        if self.replicas.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.replicas.len();
        let mut lagging: Vec<(usize, PooledClient)> = Vec::new();
        for i in (0..count).map(|k| (start + k) % count) {
            if !self.claim(i) {
                continue;
            }
            let client = match self.replicas[i].pool.get_timeout(self.settings.checkout_timeout) {
                Ok(c) => c,
                Err(e) => {
                    self.mark_down(i, &StoreError::from(e).to_string());
                    continue;
                }
            };
            match self.probe(i, client, lsn) {
                Probe::CaughtUp(client) => return Some(ReplicaReader { set: self, index: i, client }),
                Probe::Behind(client) => lagging.push((i, client)),
                Probe::Failed => {}
            }
        }
        let deadline = Instant::now() + self.settings.catch_up_wait;
        while !lagging.is_empty() && Instant::now() < deadline {
            std::thread::sleep(self.settings.poll_interval);
            let mut still = Vec::with_capacity(lagging.len());
            for (i, client) in lagging {
                match self.probe(i, client, lsn) {
                    Probe::CaughtUp(client) => return Some(ReplicaReader { set: self, index: i, client }),
                    Probe::Behind(client) => still.push((i, client)),
                    Probe::Failed => {}
                }
            }
            lagging = still;
        }
        None
    }

    /// Whether replica `i` may be tried now. A replica that is down is tried again once its
    /// back-off has passed, by one request only: the claim pushes `retry_at` forward so
    /// concurrent requests do not all wait on the same dead host.
    fn claim(&self, i: usize) -> bool {
        let mut health = self.replicas[i].health();
        match *health {
            Health::Up => true,
            Health::Down { retry_at, backoff } => {
                let now = Instant::now();
                if now < retry_at {
                    return false;
                }
                *health = Health::Down { retry_at: now + backoff, backoff };
                true
            }
        }
    }

    fn probe(&self, i: usize, mut client: PooledClient, lsn: Lsn) -> Probe {
        let replayed = client
            .query_cached("SELECT pg_last_wal_replay_lsn()::text", &[], &[])
            .map_err(StoreError::query("reading the replica's replay position"))
            .and_then(|rows| {
                let text: Option<String> = rows.first().and_then(|r| r.get(0));
                // NULL: the server is not in recovery. A promoted or misconfigured "replica"
                // may have diverged from the primary, so it is never read.
                let text = text.ok_or_else(|| StoreError::Corrupt {
                    detail: "the server is not a streaming replica (pg_last_wal_replay_lsn() is NULL)".into(),
                })?;
                text.parse::<Lsn>()
                    .map_err(|e| StoreError::Corrupt { detail: format!("unreadable replay position {e}") })
            });
        match replayed {
            Ok(replayed) => {
                self.mark_up(i);
                if replayed >= lsn {
                    Probe::CaughtUp(client)
                } else {
                    Probe::Behind(client)
                }
            }
            Err(e) => {
                self.mark_down(i, &e.to_string());
                Probe::Failed
            }
        }
    }

    fn mark_up(&self, i: usize) {
        let replica = &self.replicas[i];
        let mut health = replica.health();
        if matches!(*health, Health::Down { .. }) {
            *health = Health::Up;
            drop(health);
            crate::info!("read replica back in use", replica = replica.name.clone());
        }
    }

    fn mark_down(&self, i: usize, error: &str) {
        let replica = &self.replicas[i];
        let mut health = replica.health();
        let now = Instant::now();
        match *health {
            Health::Up => {
                let backoff = self.settings.first_backoff;
                *health = Health::Down { retry_at: now + backoff, backoff };
                drop(health);
                crate::warn!(
                    "read replica failed; its reads go to the primary",
                    replica = replica.name.clone(),
                    error = error.to_string(),
                    retry_in_secs = backoff.as_secs()
                );
            }
            Health::Down { backoff, .. } => {
                // A failed retry: still down, no new log line.
                let backoff = (backoff * 2).min(self.settings.max_backoff);
                *health = Health::Down { retry_at: now + backoff, backoff };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(settings: ReplicaSettings) -> ReplicaSet {
        // Nothing listens on port 1: every connection attempt fails at once.
        ReplicaSet::connect(&["postgres://u@127.0.0.1:1/app".to_string()], 1, settings).unwrap()
    }

    #[test]
    fn names_never_show_passwords() {
        assert_eq!(display_name("postgres://u:secret@db.example:6432/app").unwrap(), "db.example:6432/app");
        assert!(matches!(display_name("postgres://h:0/x"), Err(StoreError::BadUrl { .. })));
    }

    #[test]
    fn a_failed_replica_backs_off_doubling_up_to_the_cap() {
        let settings = ReplicaSettings {
            checkout_timeout: Duration::from_millis(50),
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(12),
            ..ReplicaSettings::default()
        };
        let s = set(settings);
        assert!(s.reader_for(Lsn(1)).is_none());
        assert_eq!(s.down_count(), 1);
        let backoff = |s: &ReplicaSet| match *s.replicas[0].health() {
            Health::Down { backoff, .. } => backoff,
            Health::Up => Duration::ZERO,
        };
        assert_eq!(backoff(&s), Duration::from_secs(5));
        // Within the back-off the replica is not even tried.
        assert!(!s.has_candidate());
        assert!(!s.claim(0));
        // Each failed retry doubles the back-off, capped.
        for expected in [10, 12, 12] {
            *s.replicas[0].health() = Health::Down { retry_at: Instant::now(), backoff: backoff(&s) };
            assert!(s.has_candidate(), "due for a retry");
            assert!(s.reader_for(Lsn(1)).is_none());
            assert_eq!(backoff(&s), Duration::from_secs(expected));
        }
        s.mark_up(0);
        assert_eq!(s.down_count(), 0);
    }

    #[test]
    fn an_empty_set_never_offers_a_reader() {
        let s = ReplicaSet::connect(&[], 1, ReplicaSettings::default()).unwrap();
        assert!(s.is_empty() && s.reader_for(Lsn(0)).is_none());
    }
}
