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

/// A query over `$<param>::int8[]` (32-bit ids as pgoutput sends them, all in the past):
/// whether every transaction is visible to the statement's snapshot, and that snapshot's
/// `xmin`. The 64-bit id of each is rebuilt from the epoch of the snapshot's `xmax`: an id
/// above `xmax`'s low 32 bits belongs to the previous epoch.
pub(super) fn check_sql(param: u32) -> String {
    format!(
        "SELECT COALESCE(bool_and(pg_visible_in_snapshot( \
           (CASE WHEN u.x <= (m.xmax & 4294967295) THEN (m.xmax & (-4294967296)::int8) | u.x \
                 ELSE GREATEST((m.xmax & (-4294967296)::int8) - 4294967296, 0) | u.x END)::text::xid8, m.snap)), true) \
                 AS visible, \
           min(m.xmin) AS xmin \
         FROM unnest(${param}::int8[]) AS u(x), \
              (SELECT s AS snap, pg_snapshot_xmax(s)::text::int8 AS xmax, pg_snapshot_xmin(s)::text::int8 AS xmin \
               FROM pg_current_snapshot() AS s) m"
    )
}

/// What a visibility check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Every transaction checked is visible.
    pub visible: bool,
    /// The `xmin` of the snapshot checked against.
    pub xmin: Option<i64>,
}

/// Whether 32-bit transaction id `a` precedes `b` (PostgreSQL's `TransactionIdPrecedes` for
/// normal ids: modulo 2^32, within half the id space).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Waits until replicated transactions are visible, remembering the horizon it saw: a
/// transaction that precedes a snapshot's `xmin` had ended when the snapshot was taken, and
/// a replicated one committed, so it is visible to every later snapshot. A backlog of changes
/// is then checked without a query; a fresh change costs one round trip.
#[derive(Debug, Default)]
pub struct Visibility {
    /// The low 32 bits of the `xmin` of the last snapshot this session checked against.
    horizon: Option<u32>,
}

impl Visibility {
    /// Whether every transaction in `xids` is known to be visible without asking.
    pub fn known(&self, xids: &[u32]) -> bool {
        xids.is_empty() || self.horizon.is_some_and(|h| xids.iter().all(|&x| precedes(x, h)))
    }

    /// Takes in what a check found (on the session this tracks).
    pub fn record(&mut self, checked: Checked) {
        if let Some(xmin) = checked.xmin {
            self.horizon = Some(xmin as u32);
        }
    }

    /// Returns once every transaction in `xids` is visible to new snapshots on `db`.
    pub fn wait(&mut self, db: &mut impl GenericClient, xids: &[u32]) -> Result<(), StoreError> {
        if self.known(xids) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            let checked = check(db, xids)?;
            self.record(checked);
            if checked.visible {
                return Ok(());
            }
            if started.elapsed() >= GIVE_UP_AFTER {
                crate::warn!(
                    "replicated transactions still not visible; reading current rows anyway",
                    transactions = xids.len() as u64
                );
                return Ok(());
            }
            std::thread::sleep(pause);
            // Capped low: the wait is for a backend to finish its commit, microseconds unless it
            // was descheduled, and a long pause would add its overshoot to the latency.
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
    }
}

/// Checks `xids` against a new snapshot on `db`.
fn check(db: &mut impl GenericClient, xids: &[u32]) -> Result<Checked, StoreError> {
    if xids.is_empty() {
        return Ok(Checked { visible: true, xmin: None });
    }
    let ids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    let row = db.query_one(&check_sql(1), &[&ids]).map_err(StoreError::query("checking transaction visibility"))?;
    Ok(Checked { visible: row.get(0), xmin: row.get(1) })
}

/// True when all of `xids` are visible to a new snapshot on `db`.
pub fn all_visible(db: &mut impl GenericClient, xids: &[u32]) -> Result<bool, StoreError> {
    Ok(check(db, xids)?.visible)
}

/// Returns once every transaction in `xids` is visible to new snapshots on `db` (at once in
/// the usual case: one round trip).
pub fn wait_until_visible(db: &mut impl GenericClient, xids: &[u32]) -> Result<(), StoreError> {
    Visibility::default().wait(db, xids)
}

#[cfg(test)]
mod tests {
    use super::precedes;

    #[test]
    fn transaction_ids_compare_modulo_two_to_the_32() {
        assert!(precedes(3, 4));
        assert!(!precedes(4, 4) && !precedes(5, 4));
        // Across the wraparound: 4294967290 precedes 5.
        assert!(precedes(u32::MAX - 5, 5));
        assert!(!precedes(5, u32::MAX - 5));
    }
}
