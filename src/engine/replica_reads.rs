//! Where pull hydration and snapshot pages are read: a caught-up read replica when one is
//! configured and qualifies, the primary otherwise, with counts of both for the metrics.
//!
//! The rule that keeps replicas invisible to clients: the bound a replica must have replayed is
//! the primary's WAL position taken *after* everything the page must reflect is known to be
//! committed on the primary (the changelog page for a pull, the snapshot checkpoint for a
//! snapshot page), so a replica read never returns a row older than the change that announced
//! it. See `docs/architecture.md`, "Read replicas".

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Engine, EngineError};
use crate::store::pool::{PooledClient, Session};
use crate::store::replicas;

/// Which kind of page was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// The hydration of one non-empty pull page.
    Pull,
    /// One snapshot page.
    Snapshot,
}

/// Pages read on each source since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Pull pages hydrated on a read replica.
    pub pull_replica: u64,
    /// Pull pages hydrated on the primary.
    pub pull_primary: u64,
    /// Snapshot pages read on a read replica.
    pub snapshot_replica: u64,
    /// Snapshot pages read on the primary.
    pub snapshot_primary: u64,
}

/// The live counters behind [`ReadCounts`].
#[derive(Debug, Default)]
pub(crate) struct ReadCounters {
    pull_replica: AtomicU64,
    pull_primary: AtomicU64,
    snapshot_replica: AtomicU64,
    snapshot_primary: AtomicU64,
}

impl ReadCounters {
    pub(crate) fn count(&self, kind: PageKind, on_replica: bool) {
        let counter = match (kind, on_replica) {
            (PageKind::Pull, true) => &self.pull_replica,
            (PageKind::Pull, false) => &self.pull_primary,
            (PageKind::Snapshot, true) => &self.snapshot_replica,
            (PageKind::Snapshot, false) => &self.snapshot_primary,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> ReadCounts {
        ReadCounts {
            pull_replica: self.pull_replica.load(Ordering::Relaxed),
            pull_primary: self.pull_primary.load(Ordering::Relaxed),
            snapshot_replica: self.snapshot_replica.load(Ordering::Relaxed),
            snapshot_primary: self.snapshot_primary.load(Ordering::Relaxed),
        }
    }
}

impl Engine {
    /// Pages read on each source so far.
    pub fn read_counts(&self) -> ReadCounts {
        self.reads.read()
    }

    /// Runs `read` on a replica that has replayed past the primary's WAL position as of now,
    /// and counts the page. `None` (read on the primary instead) when no replica is configured
    /// or none catches up in time, or when the replica failed: a store error there takes the
    /// replica out and is never the request's error. Any other error (a bad cursor, a table no
    /// longer synced) is the request's and is returned.
    ///
    /// The caller must have finished every primary read the page has to reflect before calling.
    pub(crate) fn read_on_replica<T>(
        &self,
        primary: &mut PooledClient,
        kind: PageKind,
        read: impl FnOnce(&mut Session) -> Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        let Some(set) = self.replicas.as_ref().filter(|s| s.has_candidate()) else { return Ok(None) };
        let lsn = replicas::primary_lsn(primary)?;
        let Some(mut reader) = set.reader_for(lsn) else { return Ok(None) };
        let client: &mut Session = reader.client();
        match read(client) {
            Ok(value) => {
                self.reads.count(kind, true);
                Ok(Some(value))
            }
            Err(EngineError::Store(e)) => {
                reader.failed(&e);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }
}
