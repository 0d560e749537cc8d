//! The WAL position the changelog covers (`sync_wal_position`, one row per slot): where change
//! capture resumes, and the fence that keeps one writer per slot.
//!
//! The writer stores the position in the same transaction as the changelog rows and edges it
//! covers, so after a crash nothing at or below it is written twice and nothing above it is
//! lost: replication resumes from it.

use postgres::GenericClient;

use super::pool::StoreError;
use crate::types::Lsn;

/// Reads the stored position of `slot` (zero when none is stored).
const READ_SQL: &str = "SELECT confirmed_lsn FROM sync_wal_position WHERE slot_name = $1";

/// Stores `$2` as the position of slot `$1` if the stored value is still `$3`.
pub(super) const STORE_SQL: &str =
    "INSERT INTO sync_wal_position (slot_name, confirmed_lsn, updated_at) VALUES ($1, $2, now()) \
     ON CONFLICT (slot_name) DO UPDATE \
     SET confirmed_lsn = GREATEST(sync_wal_position.confirmed_lsn, EXCLUDED.confirmed_lsn), updated_at = now() \
     WHERE sync_wal_position.confirmed_lsn = $3";

/// What [`store`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) enum Stored {
    /// The position moved.
    Moved,
    /// The stored value was no longer the expected one: another writer moved it. The caller
    /// must roll its batch back.
    Fenced,
}

/// The stored position of `slot`; [`Lsn::ZERO`] when none is stored.
pub fn read(db: &mut impl GenericClient, slot: &str) -> Result<Lsn, StoreError> {
    let row = db.query_opt(READ_SQL, &[&slot]).map_err(StoreError::query("reading the stored WAL position"))?;
    Ok(Lsn(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0)))
}

/// Stores `lsn` as the position of `slot`, provided the stored value is still `expected` (what
/// this writer read or last wrote). The compare-and-set fences off a second writer: its batch
/// is rolled back instead of duplicating changelog rows. The row lock the update takes
/// serializes concurrent writers, so the loser sees the winner's value.
pub(super) fn store(
    db: &mut impl GenericClient,
    statement: &(impl postgres::ToStatement + ?Sized),
    slot: &str,
    lsn: Lsn,
    expected: Lsn,
) -> Result<Stored, StoreError> {
    let n = db
        .execute(statement, &[&slot, &(lsn.0 as i64), &(expected.0 as i64)])
        .map_err(StoreError::query("storing the WAL position"))?;
    Ok(if n == 0 { Stored::Fenced } else { Stored::Moved })
}
