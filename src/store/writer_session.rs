//! The changelog writer's session on the sync store: its settings, the statements it prepares
//! once, and the batch transaction every write of a batch goes through.
//!
//! One transaction per batch holds the batch's changelog rows, its edge changes and the WAL
//! position that covers them ([`Batch::commit`]); nothing of a batch is visible before all of
//! it is.

use postgres::Statement;

use super::changelog::{self, Failure};
use super::edges::{self, EdgeRef, HeldEdge};
use super::pool::{self, StoreError};
use super::position::{self, Stored};
use crate::types::Lsn;

/// Connects a session for the writer's keyed lookups and inserts. Tables that grow fast (a
/// bulk load, the edge table itself) keep stale statistics for a while, and with them
/// PostgreSQL planned these lookups as sequential scans or as a bitmap over the whole table:
/// quadratic over an ingest. Index scans are always right here.
pub fn connect_keyed(url: &str) -> Result<postgres::Client, StoreError> {
    let mut db = pool::connect(url)?;
    db.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .map_err(StoreError::query("configuring the writer session"))?;
    Ok(db)
}

struct Statements {
    probe: Statement,
    remove: Statement,
    insert: Statement,
    update: Statement,
    copy: Statement,
    failure: Statement,
    truncate: Statement,
    position: Statement,
}

/// The writer's sync-store session.
pub struct WriterSession {
    client: postgres::Client,
    statements: Statements,
}

impl WriterSession {
    /// Connects to the sync store and prepares the writer's statements.
    pub fn connect(url: &str) -> Result<WriterSession, StoreError> {
        let mut client = connect_keyed(url)?;
        let mut prepare =
            |sql: &str| client.prepare(sql).map_err(StoreError::query("preparing the writer's statements"));
        let statements = Statements {
            probe: prepare(edges::PROBE_SQL)?,
            remove: prepare(edges::REMOVE_SQL)?,
            insert: prepare(edges::INSERT_SQL)?,
            update: prepare(edges::UPDATE_SQL)?,
            copy: prepare(changelog::COPY_SQL)?,
            failure: prepare(changelog::FAILURE_SQL)?,
            truncate: prepare(changelog::TRUNCATE_SQL)?,
            position: prepare(position::STORE_SQL)?,
        };
        Ok(WriterSession { client, statements })
    }

    /// The stored position of `slot`.
    pub fn stored_position(&mut self, slot: &str) -> Result<Lsn, StoreError> {
        position::read(&mut self.client, slot)
    }

    /// Opens a batch.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        let tx = self.client.transaction().map_err(StoreError::query("starting a changelog batch"))?;
        Ok(Batch { tx, statements: &self.statements })
    }
}

/// One open batch: every write goes through here, and [`Batch::commit`] stores the position
/// with them. Dropped without a commit, it rolls back.
pub struct Batch<'s> {
    tx: postgres::Transaction<'s>,
    statements: &'s Statements,
}

impl<'s> Batch<'s> {
    /// The batch's transaction, for reads: of the application's tables when the sync store is
    /// the application database (one session for both), and of watermarks.
    pub fn client(&mut self) -> &mut postgres::Transaction<'s> {
        &mut self.tx
    }

    /// Every edge held by the records `keys` (`(table, record)` pairs), the batch's own changes
    /// so far included.
    pub fn held_edges(&mut self, keys: &[(&str, &str)]) -> Result<Vec<HeldEdge>, StoreError> {
        edges::probe(&mut self.tx, &self.statements.probe, keys)
    }

    /// Applies edge changes: `removed` first, then `added`, then the new checksums of held
    /// edges in `rechecked`.
    pub fn write_edges(
        &mut self,
        removed: &[EdgeRef<'_>],
        added: &[EdgeRef<'_>],
        rechecked: &[EdgeRef<'_>],
    ) -> Result<(), StoreError> {
        edges::remove(&mut self.tx, &self.statements.remove, removed)?;
        edges::insert(&mut self.tx, &self.statements.insert, added)?;
        edges::update_checksums(&mut self.tx, &self.statements.update, rechecked)
    }

    /// Appends changelog rows encoded by [`changelog::encode_rows`].
    pub fn append(&mut self, encoded: &[u8]) -> Result<(), StoreError> {
        changelog::copy_rows(&mut self.tx, &self.statements.copy, encoded)
    }

    /// Records failed bucket assignments.
    pub fn record_failures(&mut self, failures: &[Failure]) -> Result<(), StoreError> {
        changelog::record_failures(&mut self.tx, &self.statements.failure, failures)
    }

    /// Removes every edge of the truncated `tables` and appends a removal for each; returns how
    /// many rows it appended.
    pub fn record_truncate(&mut self, tables: &[String]) -> Result<u64, StoreError> {
        changelog::record_truncate(&mut self.tx, &self.statements.truncate, tables)
    }

    /// Stores `lsn` as the position of `slot`, a compare-and-set against `expected` (what this
    /// writer read or last wrote), then commits. [`Committed::Fenced`] when another writer
    /// moved the stored position: the batch is rolled back.
    pub fn commit_at(mut self, slot: &str, lsn: Lsn, expected: Lsn) -> Result<Committed, StoreError> {
        if position::store(&mut self.tx, &self.statements.position, slot, lsn, expected)? == Stored::Fenced {
            // Dropping the transaction rolls it back.
            return Ok(Committed::Fenced);
        }
        self.commit()?;
        Ok(Committed::Done)
    }

    /// Commits without moving the position (a batch that covers no new replicated commit, or
    /// a backfill page).
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(StoreError::query("committing a changelog batch"))
    }
}

/// How [`Batch::commit`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Committed {
    /// The batch and its position are committed.
    Done,
    /// Another writer moved the stored position (two instances capturing at once, e.g. across
    /// a leadership change): the batch was rolled back.
    Fenced,
}
