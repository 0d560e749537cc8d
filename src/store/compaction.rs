//! Changelog compaction (§11, with C12): deactivate stale clients, find the lowest position
//! any active client still needs, delete everything at or below it in small batches, and
//! record the highest deleted `seq` as the `compacted_through` watermark that pulls compare
//! against (so a client exactly at the boundary is not sent back to a snapshot).

use std::time::Duration;

use postgres::GenericClient;

use super::changelog::{raise_watermark, watermark};
use super::pool::StoreError;

/// Compaction settings.
#[derive(Debug, Clone, Copy)]
pub struct CompactionSettings {
    /// Clients that have not synced for this long are deactivated (default 7 days).
    pub stale_after: Duration,
    /// Rows deleted per statement (default 10,000): short statements, short locks.
    pub batch: i64,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings { stale_after: Duration::from_secs(7 * 24 * 3600), batch: 10_000 }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionReport {
    /// Clients deactivated by this pass.
    pub deactivated: u64,
    /// The position below which nothing is needed (0 = nothing to compact).
    pub safe_seq: i64,
    /// Changelog rows deleted.
    pub deleted: u64,
    /// The `compacted_through` watermark after the pass.
    pub compacted_through: i64,
}

/// Runs one compaction pass.
pub fn compact(db: &mut impl GenericClient, settings: &CompactionSettings) -> Result<CompactionReport, StoreError> {
    let mut report = CompactionReport::default();
    let secs = settings.stale_after.as_secs() as f64;
    report.deactivated = db
        .execute(
            "UPDATE sync_clients SET is_active = false, updated_at = now() \
             WHERE is_active AND last_sync_at IS NOT NULL AND last_sync_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .map_err(StoreError::query("deactivating stale clients"))?;
    // Real positions only (C12): a bucket or legacy checkpoint of 0 is no position, and such a
    // client is sent to a snapshot or rebuild once anything has been compacted. A device
    // leaving a rule bucket still reads that bucket's changes after its position there.
    let row = db
        .query_one(
            "SELECT LEAST( \
               (SELECT min(k.checkpoint) FROM sync_client_checkpoints k JOIN sync_clients c \
                  ON c.user_id = k.user_id AND c.client_id = k.client_id WHERE c.is_active AND k.checkpoint > 0), \
               (SELECT min(c.last_pull_seq) FROM sync_clients c WHERE c.is_active AND c.last_pull_seq > 0 \
                  AND NOT EXISTS (SELECT 1 FROM sync_client_checkpoints k WHERE k.user_id = c.user_id AND k.client_id = c.client_id)), \
               (SELECT min(d.since) FROM synchro_departures d JOIN sync_clients c \
                  ON c.user_id = d.user_id AND c.client_id = d.client_id WHERE c.is_active AND d.since > 0))",
            &[],
        )
        .map_err(StoreError::query("computing the safe sequence"))?;
    report.safe_seq = row.get::<_, Option<i64>>(0).unwrap_or(0);
    let mut highest: i64 = 0;
    if report.safe_seq > 0 {
        loop {
            let rows = db
                .query(
                    "DELETE FROM sync_changelog WHERE seq IN \
                       (SELECT seq FROM sync_changelog WHERE seq <= $1 ORDER BY seq LIMIT $2) RETURNING seq",
                    &[&report.safe_seq, &settings.batch],
                )
                .map_err(StoreError::query("deleting compacted changelog rows"))?;
            report.deleted += rows.len() as u64;
            highest = rows.iter().map(|r| r.get::<_, i64>(0)).fold(highest, i64::max);
            if (rows.len() as i64) < settings.batch {
                break;
            }
        }
    }
    if highest > 0 {
        raise_watermark(db, watermark::COMPACTED_THROUGH, highest)?;
    }
    report.compacted_through = super::changelog::read_watermark(db, watermark::COMPACTED_THROUGH)?;
    Ok(report)
}
