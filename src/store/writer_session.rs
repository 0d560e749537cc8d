//! The changelog writer's session on the sync store: its settings, the statements it prepares
//! once, and the batch every write of a batch goes through.
//!
//! One transaction per batch holds the batch's changelog rows, its edge changes and the WAL
//! position that covers them; nothing of a batch is visible before all of it is. A batch opens
//! its transaction with its first write, so reads before it cost no `BEGIN`, and a batch whose
//! only writes are its last chunk's needs no transaction block at all:
//! [`Batch::commit_with`] writes the chunk and the position in one statement, which commits
//! atomically by itself (two round trips for the whole batch: the edge probe and that
//! statement).

use postgres::types::ToSql;
use postgres::Statement;

use super::changelog::{self, ChangeRef, Failure};
use super::edges::{self, EdgeRef, HeldEdge};
use super::pool::{self, StoreError};
use super::position::{self, Stored};
use super::visibility::{self, Checked};
use crate::types::{Lsn, Op};

/// Chunks with at most this many changelog rows are written in one statement (edge changes as
/// data-modifying CTEs, then an `INSERT` of the changelog rows); larger ones with a statement
/// per edge change kind and a `COPY` of the changelog rows, which is faster per row but costs
/// two more round trips.
pub const SMALL_CHUNK: usize = 100;

/// A small chunk's writes in one statement: edge removals (`$1`-`$3`), additions (`$4`-`$7`)
/// and checksum changes (`$8`-`$11`), and the changelog rows (`$12`-`$15`) in their order.
/// The three edge sets are disjoint (removals and checksum changes touch edges held before
/// the chunk, different ones; additions edges not held), so the data-modifying parts never
/// meet the same row.
const WRITE_SQL: &str = "WITH removed AS ( \
       DELETE FROM sync_bucket_edges e USING unnest($1::text[], $2::text[], $3::text[]) AS d(t, r, b) \
       WHERE e.table_name = d.t AND e.record_id = d.r AND e.bucket_id = d.b), \
     added AS ( \
       INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum, updated_at) \
       SELECT t, r, b, c, now() FROM unnest($4::text[], $5::text[], $6::text[], $7::int4[]) AS u(t, r, b, c)), \
     rechecked AS ( \
       UPDATE sync_bucket_edges e SET checksum = u.c, updated_at = now() \
       FROM unnest($8::text[], $9::text[], $10::text[], $11::int4[]) AS u(t, r, b, c) \
       WHERE e.table_name = u.t AND e.record_id = u.r AND e.bucket_id = u.b) \
     INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) \
     SELECT b, t, r, o FROM unnest($12::text[], $13::text[], $14::text[], $15::int2[]) WITH ORDINALITY AS c(b, t, r, o, n) \
     ORDER BY n";

/// [`WRITE_SQL`] and the WAL position in one statement, for a batch that wrote nothing before:
/// the position of slot `$16` becomes `$17` if it still reads `$18` (a compare-and-set, as
/// [`position::STORE_SQL`]), and every write is conditional on that, so a fenced batch writes
/// nothing. Referencing the position's result makes it run first; the row lock it takes
/// serializes concurrent writers. Returns whether the position moved.
const WRITE_AT_SQL: &str = "WITH moved AS ( \
       INSERT INTO sync_wal_position AS p (slot_name, confirmed_lsn, updated_at) VALUES ($16, $17, now()) \
       ON CONFLICT (slot_name) DO UPDATE \
       SET confirmed_lsn = GREATEST(p.confirmed_lsn, EXCLUDED.confirmed_lsn), updated_at = now() \
       WHERE p.confirmed_lsn = $18 \
       RETURNING 1), \
     removed AS ( \
       DELETE FROM sync_bucket_edges e USING unnest($1::text[], $2::text[], $3::text[]) AS d(t, r, b) \
       WHERE e.table_name = d.t AND e.record_id = d.r AND e.bucket_id = d.b AND EXISTS (SELECT FROM moved)), \
     added AS ( \
       INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum, updated_at) \
       SELECT t, r, b, c, now() FROM unnest($4::text[], $5::text[], $6::text[], $7::int4[]) AS u(t, r, b, c) \
       WHERE EXISTS (SELECT FROM moved)), \
     rechecked AS ( \
       UPDATE sync_bucket_edges e SET checksum = u.c, updated_at = now() \
       FROM unnest($8::text[], $9::text[], $10::text[], $11::int4[]) AS u(t, r, b, c) \
       WHERE e.table_name = u.t AND e.record_id = u.r AND e.bucket_id = u.b AND EXISTS (SELECT FROM moved)), \
     logged AS ( \
       INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) \
       SELECT b, t, r, o FROM unnest($12::text[], $13::text[], $14::text[], $15::int2[]) WITH ORDINALITY AS c(b, t, r, o, n) \
       WHERE EXISTS (SELECT FROM moved) ORDER BY n) \
     SELECT EXISTS (SELECT FROM moved)";

/// The edge probe ([`edges::PROBE_SQL`], `$1`, `$2`) with a visibility check of the
/// transactions `$3` ([`visibility::check_sql`]) in the same statement: one round trip for
/// both when the application database is the sync store.
fn probe_checking_sql() -> String {
    format!(
        "SELECT v.visible, v.xmin, p.t, p.r, p.bucket_id, p.checksum FROM ({}) v LEFT JOIN LATERAL ({}) p ON true",
        visibility::check_sql(3),
        edges::PROBE_SQL
    )
}

/// One chunk's writes, borrowed from the writer's plan.
#[derive(Debug, Default)]
pub struct ChunkWrites<'a> {
    /// Edges to remove.
    pub removed: Vec<EdgeRef<'a>>,
    /// Edges to add, with their checksums.
    pub added: Vec<EdgeRef<'a>>,
    /// Held edges whose checksum changed.
    pub rechecked: Vec<EdgeRef<'a>>,
    /// Changelog rows, in order (`seq` follows it).
    pub changelog: Vec<ChangeRef<'a>>,
}

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
    probe_checking: Statement,
    write: Statement,
    write_at: Statement,
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
            probe_checking: prepare(&probe_checking_sql())?,
            write: prepare(WRITE_SQL)?,
            write_at: prepare(WRITE_AT_SQL)?,
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

    /// Starts a batch (its transaction opens with its first write).
    pub fn begin(&mut self) -> Batch<'_> {
        Batch { client: &mut self.client, statements: &self.statements, open: false }
    }
}

/// One batch: every write goes through here, and [`Batch::commit_at`] or
/// [`Batch::commit_with`] stores the position with them. Dropped without a commit, it rolls
/// back.
pub struct Batch<'s> {
    client: &'s mut postgres::Client,
    statements: &'s Statements,
    /// Whether its transaction block is open.
    open: bool,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed session is closed by its owner anyway; nothing to report.
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// The four arrays of a chunk's changelog rows.
type ChangeColumns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i16>);

/// A chunk's writes as the fifteen arrays [`WRITE_SQL`] binds (and [`WRITE_AT_SQL`] first).
struct ChunkColumns<'a> {
    removed: edges::Columns<'a>,
    added: edges::Columns<'a>,
    rechecked: edges::Columns<'a>,
    log: ChangeColumns<'a>,
}

impl<'a> ChunkColumns<'a> {
    fn of(w: &ChunkWrites<'a>) -> ChunkColumns<'a> {
        ChunkColumns {
            removed: edges::columns(&w.removed),
            added: edges::columns(&w.added),
            rechecked: edges::columns(&w.rechecked),
            log: change_columns(&w.changelog),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        let (r, a, k, l) = (&self.removed, &self.added, &self.rechecked, &self.log);
        [&r.0, &r.1, &r.2, &a.0, &a.1, &a.2, &a.3, &k.0, &k.1, &k.2, &k.3, &l.0, &l.1, &l.2, &l.3]
    }
}

fn change_columns<'a>(rows: &[ChangeRef<'a>]) -> ChangeColumns<'a> {
    let mut out: ChangeColumns<'a> = Default::default();
    for r in rows {
        out.0.push(r.bucket);
        out.1.push(r.table);
        out.2.push(r.record);
        out.3.push(Op::code(r.op));
    }
    out
}

impl<'s> Batch<'s> {
    /// The session, for reads: of the application's tables when the sync store is the
    /// application database (one session for both), and of watermarks. Inside the batch's
    /// transaction once it has written.
    pub fn client(&mut self) -> &mut postgres::Client {
        self.client
    }

    fn open(&mut self) -> Result<(), StoreError> {
        if !self.open {
            self.client.batch_execute("BEGIN").map_err(StoreError::query("starting a changelog batch"))?;
            self.open = true;
        }
        Ok(())
    }

    /// Every edge held by the records `keys` (`(table, record)` pairs), the batch's own changes
    /// so far included.
    pub fn held_edges(&mut self, keys: &[(&str, &str)]) -> Result<Vec<HeldEdge>, StoreError> {
        edges::probe(self.client, &self.statements.probe, keys)
    }

    /// [`Batch::held_edges`], and in the same statement whether the transactions `xids` are
    /// visible to it (for when the application database is the sync store).
    pub fn held_edges_checking(
        &mut self,
        keys: &[(&str, &str)],
        xids: &[u32],
    ) -> Result<(Vec<HeldEdge>, Checked), StoreError> {
        let (tables, records): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let ids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
        let rows = self
            .client
            .query(&self.statements.probe_checking, &[&tables, &records, &ids])
            .map_err(StoreError::query("reading bucket edges"))?;
        // One row at least: the visibility check's.
        let checked = rows
            .first()
            .map(|r| Checked { visible: r.get(0), xmin: r.get(1) })
            .ok_or_else(|| StoreError::Corrupt { detail: "the edge probe returned no row".into() })?;
        let held = rows
            .iter()
            .filter(|r| r.get::<_, Option<&str>>(2).is_some())
            .map(|r| HeldEdge { table: r.get(2), record: r.get(3), bucket: r.get(4), checksum: r.get(5) })
            .collect();
        Ok((held, checked))
    }

    /// Writes a chunk: its edge changes, then its changelog rows. A small chunk
    /// ([`SMALL_CHUNK`]) takes one statement, a large one a statement per edge change kind and
    /// a binary `COPY`.
    pub fn write(&mut self, w: &ChunkWrites<'_>) -> Result<(), StoreError> {
        if w.changelog.is_empty() && w.removed.is_empty() && w.added.is_empty() && w.rechecked.is_empty() {
            return Ok(());
        }
        self.open()?;
        if w.changelog.len() > SMALL_CHUNK {
            self.write_edges(&w.removed, &w.added, &w.rechecked)?;
            let encoded = changelog::encode_rows(&w.changelog);
            return changelog::copy_rows(self.client, &self.statements.copy, &encoded);
        }
        let columns = ChunkColumns::of(w);
        self.client
            .execute(&self.statements.write, &columns.params())
            .map_err(StoreError::query("writing a changelog chunk"))?;
        Ok(())
    }

    /// Applies edge changes: `removed` first, then `added`, then the new checksums of held
    /// edges in `rechecked`.
    pub fn write_edges(
        &mut self,
        removed: &[EdgeRef<'_>],
        added: &[EdgeRef<'_>],
        rechecked: &[EdgeRef<'_>],
    ) -> Result<(), StoreError> {
        self.open()?;
        edges::remove(self.client, &self.statements.remove, removed)?;
        edges::insert(self.client, &self.statements.insert, added)?;
        edges::update_checksums(self.client, &self.statements.update, rechecked)
    }

    /// Records failed bucket assignments.
    pub fn record_failures(&mut self, failures: &[Failure]) -> Result<(), StoreError> {
        if failures.is_empty() {
            return Ok(());
        }
        self.open()?;
        changelog::record_failures(self.client, &self.statements.failure, failures)
    }

    /// Records that the memberships of `users` changed at `version` (the batch's position), with
    /// the batch ([`super::subscriptions::record_changes`]).
    pub fn record_membership_changes(&mut self, users: &[&str], version: Lsn) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        self.open()?;
        super::subscriptions::record_changes(self.client, users, version.0 as i64)
    }

    /// Removes every edge of the truncated `tables` and appends a removal for each; returns how
    /// many rows it appended.
    pub fn record_truncate(&mut self, tables: &[String]) -> Result<u64, StoreError> {
        self.open()?;
        changelog::record_truncate(self.client, &self.statements.truncate, tables)
    }

    /// Writes `last`, the batch's last chunk, and stores `lsn` as the position of `slot`, a
    /// compare-and-set against `expected` (what this writer read or last wrote), then commits.
    /// A batch that wrote nothing before does it all in one statement. [`Committed::Fenced`]
    /// when another writer moved the stored position: nothing of the batch is written.
    pub fn commit_with(
        mut self,
        last: &ChunkWrites<'_>,
        slot: &str,
        lsn: Lsn,
        expected: Lsn,
    ) -> Result<Committed, StoreError> {
        if self.open || last.changelog.len() > SMALL_CHUNK {
            self.write(last)?;
            return self.commit_at(slot, lsn, expected);
        }
        let columns = ChunkColumns::of(last);
        let (lsn, expected) = (lsn.0 as i64, expected.0 as i64);
        let mut params = columns.params().to_vec();
        params.extend([&slot as &(dyn ToSql + Sync), &lsn, &expected]);
        let moved: bool = self
            .client
            .query_one(&self.statements.write_at, &params)
            .map_err(StoreError::query("writing a changelog batch"))?
            .get(0);
        Ok(if moved { Committed::Done } else { Committed::Fenced })
    }

    /// Stores `lsn` as the position of `slot`, a compare-and-set against `expected` (what this
    /// writer read or last wrote), then commits. [`Committed::Fenced`] when another writer
    /// moved the stored position: the batch is rolled back.
    pub fn commit_at(self, slot: &str, lsn: Lsn, expected: Lsn) -> Result<Committed, StoreError> {
        if position::store(self.client, &self.statements.position, slot, lsn, expected)? == Stored::Fenced {
            // Dropping the batch rolls it back.
            return Ok(Committed::Fenced);
        }
        self.commit()?;
        Ok(Committed::Done)
    }

    /// Commits without moving the position (a batch that covers no new replicated commit, or
    /// a backfill page).
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.open {
            self.open = false;
            self.client.batch_execute("COMMIT").map_err(StoreError::query("committing a changelog batch"))?;
        }
        Ok(())
    }
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Committed {
    /// The batch and its position are committed.
    Done,
    /// Another writer moved the stored position (two instances capturing at once, e.g. across
    /// a leadership change): the batch was rolled back.
    Fenced,
}
