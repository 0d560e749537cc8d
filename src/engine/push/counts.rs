//! How pushes were applied since the engine started, for the metrics and for tests that must
//! know which path ran.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Engine;

/// Runs of pushed records by how they were applied, in committed pushes only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushCounts {
    /// Runs applied with set-based statements.
    pub set_runs: u64,
    /// Set-based runs replayed record by record (a statement failed, a write had to be undone
    /// alone, or two ids of the run were one key).
    pub replayed_runs: u64,
    /// Records applied by the per-record path because `PUSH_SET_BASED=false`.
    pub per_record: u64,
    /// Pushes whose transaction ran a second time, with a savepoint per run, after a set
    /// statement failed in the first.
    pub retried: u64,
}

/// The live counters behind [`PushCounts`].
#[derive(Debug, Default)]
pub(crate) struct PushCounters {
    set_runs: AtomicU64,
    replayed_runs: AtomicU64,
    per_record: AtomicU64,
    retried: AtomicU64,
}

impl PushCounters {
    pub(super) fn record(&self, c: PushCounts) {
        self.set_runs.fetch_add(c.set_runs, Ordering::Relaxed);
        self.replayed_runs.fetch_add(c.replayed_runs, Ordering::Relaxed);
        self.per_record.fetch_add(c.per_record, Ordering::Relaxed);
        self.retried.fetch_add(c.retried, Ordering::Relaxed);
    }

    fn read(&self) -> PushCounts {
        PushCounts {
            set_runs: self.set_runs.load(Ordering::Relaxed),
            replayed_runs: self.replayed_runs.load(Ordering::Relaxed),
            per_record: self.per_record.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }
}

impl Engine {
    /// How pushes were applied since the engine started.
    pub fn push_counts(&self) -> PushCounts {
        self.pushes.read()
    }
}
