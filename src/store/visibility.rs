//! Waiting until replicated transactions are visible to our own sessions.
//!
//! PostgreSQL makes a commit visible to other sessions (removes it from the proc array) just
//! after its commit record is flushed, and the walsender may decode and send that commit in
//! between. Code that reacts to a replicated change by reading the current rows (the writer's
//! owner resolution through foreign keys, unchanged-TOAST values and edge checksums) must
//! therefore first make sure its snapshot includes the transaction; otherwise it can read the
//! version before the change, or find a parent inserted in the same transaction missing. The
//! window is microseconds on an idle server and grows when the committing backend is
//! descheduled on a busy one.

use postgres::GenericClient;

use super::pool::StoreError;

/// How long to wait before reading anyway (with a warning): a decoded commit becomes visible
/// within microseconds, so this only bounds the damage of something unforeseen.
const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// True when every transaction in `xids` (32-bit ids as pgoutput sends them, all in the past)
/// is visible to a snapshot taken now. The 64-bit id of each is rebuilt from the epoch of the
/// snapshot's `xmax`: an id above `xmax`'s low 32 bits belongs to the previous epoch.
const VISIBLE_SQL: &str = "SELECT COALESCE(bool_and(pg_visible_in_snapshot( \
       (CASE WHEN u.x <= (m.xmax & 4294967295) THEN (m.xmax & (-4294967296)::int8) | u.x \
             ELSE GREATEST((m.xmax & (-4294967296)::int8) - 4294967296, 0) | u.x END)::text::xid8, m.snap)), true) \
     FROM unnest($1::int8[]) AS u(x), \
          (SELECT s AS snap, pg_snapshot_xmax(s)::text::int8 AS xmax FROM pg_current_snapshot() AS s) m";

/// True when all of `xids` are visible to a new snapshot on `db`.
pub fn all_visible(db: &mut impl GenericClient, xids: &[u32]) -> Result<bool, StoreError> {
    if xids.is_empty() {
        return Ok(true);
    }
    let ids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    let row = db.query_one(VISIBLE_SQL, &[&ids]).map_err(StoreError::query("checking transaction visibility"))?;
    Ok(row.get(0))
}

/// Returns once every transaction in `xids` is visible to new snapshots on `db` (at once in
/// the usual case: one round trip).
pub fn wait_until_visible(db: &mut impl GenericClient, xids: &[u32]) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    while !all_visible(db, xids)? {
        if started.elapsed() >= GIVE_UP_AFTER {
            crate::warn!(
                "replicated transactions still not visible; reading current rows anyway",
                transactions = xids.len() as u64
            );
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
    Ok(())
}
