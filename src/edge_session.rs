//! The changelog writer's second sync-store session (`CAPTURE_EDGE_SESSION=true`): bucket
//! edges, written beside the changelog instead of after it. Without it the writer applies the
//! same edge statements in its own batch transaction (one transaction per batch, as issue #3
//! specifies); the positions and watermarks below are kept either way.
//!
//! Per source row the writer inserts a changelog row and a bucket edge, each with its indexes:
//! in one PostgreSQL backend these run one after the other, and that backend is the ingest's
//! bottleneck. This session gives the edges their own backend and thread. The writer thread
//! sends a chunk's edge changes here and writes the chunk's changelog rows on its own session
//! meanwhile; both apply chunks in stream order.
//!
//! Consistency rules (also in `docs/architecture.md`):
//! * **Order.** Commands run in the order sent, in one transaction per batch, so an edge probe
//!   sees every earlier chunk's edges (committed or not).
//! * **Edges never lead the changelog.** A batch commits on the changelog session first (with
//!   the changelog position), then here (with the edge position). A crash between the two leaves
//!   the edges one batch behind; on restart the stream resumes from the edge position and
//!   transactions between the two positions are replayed for their edges only.
//! * **Readers.** Rebuilds start from the `edges_seq` watermark (the changelog `seq` through
//!   which edges are committed) instead of `MAX(seq)`, so a rebuild never skips a member whose
//!   edge was not yet committed.
//! * **Fencing.** The edge position is stored with a compare-and-set like the changelog's.

use postgres::GenericClient;

use crate::capture::writer::WriterError;
use crate::session_thread::{answer, Done, Job, Reply, SessionThread};
use crate::store::pool::StoreError;
use crate::types::Lsn;

/// The `synchro_watermarks` entry holding the changelog `seq` through which every row's edge
/// changes are committed: where rebuilds start.
pub const EDGES_SEQ: &str = "edges_seq";

/// The `synchro_watermarks` entry holding the edge position of `slot` (an LSN, like
/// `sync_wal_position`): replicated transactions at or before it have their edges committed.
pub fn position_mark(slot: &str) -> String {
    format!("edges_lsn:{slot}")
}

/// `(table, record, bucket)` of an edge.
pub type EdgeKey<S = String> = (S, S, S);

/// The edge changes of one chunk: borrowed from the plan when written on the writer's own
/// session, owned (`S = String`) to cross to the edge thread.
#[derive(Debug, Default)]
pub struct EdgeWrites<S = String> {
    /// Edges to remove.
    pub deletes: Vec<EdgeKey<S>>,
    /// New edges with their checksums.
    pub inserts: Vec<(EdgeKey<S>, Option<i32>)>,
    /// Held edges whose checksum changed.
    pub updates: Vec<(EdgeKey<S>, Option<i32>)>,
}

impl<S> EdgeWrites<S> {
    fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.inserts.is_empty() && self.updates.is_empty()
    }
}

impl EdgeWrites<&str> {
    /// An owned copy, to send to the edge thread.
    pub fn owned(&self) -> EdgeWrites {
        let key = |(t, r, b): &EdgeKey<&str>| (t.to_string(), r.to_string(), b.to_string());
        EdgeWrites {
            deletes: self.deletes.iter().map(key).collect(),
            inserts: self.inserts.iter().map(|(k, c)| (key(k), *c)).collect(),
            updates: self.updates.iter().map(|(k, c)| (key(k), *c)).collect(),
        }
    }
}

/// Applies edge changes: removals, then new edges, then changed checksums.
pub fn write_edges<S: AsRef<str>>(db: &mut impl GenericClient, w: &EdgeWrites<S>) -> Result<(), StoreError> {
    type Columns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    fn columns<'a, S: AsRef<str> + 'a>(keys: impl Iterator<Item = &'a EdgeKey<S>>) -> Columns<'a> {
        let mut out: Columns<'a> = (Vec::new(), Vec::new(), Vec::new());
        for (t, r, b) in keys {
            out.0.push(t.as_ref());
            out.1.push(r.as_ref());
            out.2.push(b.as_ref());
        }
        out
    }
    if !w.deletes.is_empty() {
        let (tables, ids, buckets) = columns(w.deletes.iter());
        db.execute(
            "DELETE FROM sync_bucket_edges e USING unnest($1::text[], $2::text[], $3::text[]) AS d(t, r, b) \
             WHERE e.table_name = d.t AND e.record_id = d.r AND e.bucket_id = d.b",
            &[&tables, &ids, &buckets],
        )
        .map_err(StoreError::query("removing bucket edges"))?;
    }
    if !w.inserts.is_empty() {
        let (tables, ids, buckets) = columns(w.inserts.iter().map(|e| &e.0));
        let sums: Vec<Option<i32>> = w.inserts.iter().map(|e| e.1).collect();
        db.execute(
            "INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum, updated_at) \
             SELECT t, r, b, c, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS u(t, r, b, c)",
            &[&tables, &ids, &buckets, &sums],
        )
        .map_err(StoreError::query("writing bucket edges"))?;
    }
    if !w.updates.is_empty() {
        let (tables, ids, buckets) = columns(w.updates.iter().map(|e| &e.0));
        let sums: Vec<Option<i32>> = w.updates.iter().map(|e| e.1).collect();
        db.execute(
            "UPDATE sync_bucket_edges e SET checksum = u.c, updated_at = now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS u(t, r, b, c) \
             WHERE e.table_name = u.t AND e.record_id = u.r AND e.bucket_id = u.b",
            &[&tables, &ids, &buckets, &sums],
        )
        .map_err(StoreError::query("updating bucket edge checksums"))?;
    }
    Ok(())
}

/// `(record, bucket, checksum)` of every edge held by the records `ids` of `table`: one
/// primary-key probe per record, whatever the statistics say (planned as a join against
/// unnest() or as `record_id = ANY`, PostgreSQL scanned every edge of the table while its
/// statistics were stale, which made an ingest quadratic; `OFFSET 0` keeps the lateral
/// subquery from being flattened into such a join).
pub fn probe_edges(
    db: &mut impl GenericClient,
    table: &str,
    ids: &[&str],
) -> Result<Vec<(String, String, Option<i32>)>, StoreError> {
    let rows = db
        .query(
            "SELECT k.r, e.bucket_id, e.checksum FROM unnest($2::text[]) AS k(r) CROSS JOIN LATERAL \
             (SELECT bucket_id, checksum FROM sync_bucket_edges WHERE table_name = $1 AND record_id = k.r OFFSET 0) e",
            &[&table, &ids],
        )
        .map_err(StoreError::query("reading bucket edges"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

enum EdgeJob {
    Probe {
        table: String,
        ids: Vec<String>,
        reply: Reply<Vec<(String, String, Option<i32>)>>,
    },
    Write(EdgeWrites),
    /// Removes every edge of `tables`; answers what was removed, sorted.
    Truncate {
        tables: Vec<String>,
        reply: Reply<Vec<EdgeKey>>,
    },
    /// Stores the position (compare-and-set against `expected`), raises `edges_seq` when the
    /// edges caught up with the changelog, and commits.
    Commit {
        mark: String,
        lsn: Lsn,
        expected: Lsn,
        caught_up: bool,
        reply: Reply<()>,
    },
}

impl Job for EdgeJob {
    fn run(self, tx: &mut postgres::Transaction<'_>) -> Result<Done, WriterError> {
        match self {
            EdgeJob::Probe { table, ids, reply } => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                return Ok(answer(reply, probe_edges(tx, &table, &ids).map_err(WriterError::from)));
            }
            EdgeJob::Write(w) => write_edges(tx, &w)?,
            EdgeJob::Truncate { tables, reply } => {
                return Ok(answer(reply, truncate(tx, &tables).map_err(WriterError::from)));
            }
            EdgeJob::Commit { mark, lsn, expected, caught_up, reply } => {
                return Ok(match store(tx, &mark, lsn, expected, caught_up) {
                    Ok(()) => Done::Commit(reply),
                    Err(e) => answer(reply, Err(e)),
                });
            }
        }
        Ok(Done::Continue)
    }

    fn is_waited_for(&self) -> bool {
        !matches!(self, EdgeJob::Write(_))
    }

    fn refuse(self, err: WriterError) {
        match self {
            EdgeJob::Probe { reply, .. } => drop(reply.send(Err(err))),
            EdgeJob::Truncate { reply, .. } => drop(reply.send(Err(err))),
            EdgeJob::Commit { reply, .. } => drop(reply.send(Err(err))),
            EdgeJob::Write(_) => {}
        }
    }
}

/// The edge thread and its session (one per writer).
pub struct EdgeSession(SessionThread<EdgeJob>);

impl EdgeSession {
    /// Starts the thread on an open session.
    pub fn start(client: postgres::Client) -> Result<EdgeSession, WriterError> {
        // Two chunks in flight at most: the writer stays at most one chunk ahead.
        SessionThread::start("edge-writer", client, 2).map(EdgeSession)
    }

    /// Edges held by `ids` of `table`, after every change sent before.
    pub fn probe(&self, table: &str, ids: &[&str]) -> Result<Vec<(String, String, Option<i32>)>, WriterError> {
        let ids = ids.iter().map(|s| s.to_string()).collect();
        self.0.ask(|reply| EdgeJob::Probe { table: table.to_string(), ids, reply })
    }

    /// Queues a chunk's edge changes (a failure surfaces at the next probe or commit).
    pub fn write(&self, writes: EdgeWrites) -> Result<(), WriterError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.0.send(EdgeJob::Write(writes))
    }

    /// Removes the edges of truncated tables; returns them, sorted.
    pub fn truncate(&self, tables: &[String]) -> Result<Vec<EdgeKey>, WriterError> {
        self.0.ask(|reply| EdgeJob::Truncate { tables: tables.to_vec(), reply })
    }

    /// Commits the batch's edges with the position `lsn` under `mark` ([`position_mark`]),
    /// expected to replace `expected` (see [`store`] for `caught_up`). Call only after the
    /// changelog side committed.
    pub fn commit(&self, mark: &str, lsn: Lsn, expected: Lsn, caught_up: bool) -> Result<(), WriterError> {
        self.0.ask(|reply| EdgeJob::Commit { mark: mark.to_string(), lsn, expected, caught_up, reply })
    }
}

/// Removes every edge of `tables`; returns them, sorted.
pub fn truncate(db: &mut impl GenericClient, tables: &[String]) -> Result<Vec<EdgeKey>, StoreError> {
    let mut gone: Vec<EdgeKey> = db
        .query(
            "DELETE FROM sync_bucket_edges WHERE table_name = ANY ($1) RETURNING table_name, record_id, bucket_id",
            &[&tables],
        )
        .map_err(StoreError::query("removing the edges of truncated tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    gone.sort();
    Ok(gone)
}

/// Stores the edge position `lsn` under `mark` if it still reads `expected` (else
/// [`WriterError::Fenced`]). With `caught_up` (the edges reach the changelog position: not a
/// replay of edges a crash left behind), `edges_seq` rises to the changelog's last `seq`: every
/// changelog row this session can see then has its edges committed with this transaction (the
/// batch's changelog side committed first, or commits in this very transaction).
pub fn store(
    db: &mut impl GenericClient,
    mark: &str,
    lsn: Lsn,
    expected: Lsn,
    caught_up: bool,
) -> Result<(), WriterError> {
    let n = db
        .execute(
            "UPDATE synchro_watermarks SET seq = GREATEST(seq, $2), updated_at = now() WHERE name = $1 AND seq = $3",
            &[&mark, &(lsn.0 as i64), &(expected.0 as i64)],
        )
        .map_err(StoreError::query("storing the edge position"))?;
    if n == 0 {
        return Err(WriterError::Fenced { expected });
    }
    if caught_up {
        db.execute(
            "UPDATE synchro_watermarks SET seq = GREATEST(seq, (SELECT seq FROM sync_changelog ORDER BY seq DESC LIMIT 1)), \
             updated_at = now() WHERE name = $1",
            &[&EDGES_SEQ],
        )
        .map_err(StoreError::query("raising the edge watermark"))?;
    }
    Ok(())
}

/// The edge position of `slot`, when one is stored.
pub fn stored_position(db: &mut impl GenericClient, slot: &str) -> Result<Option<Lsn>, StoreError> {
    let row = db
        .query_opt("SELECT seq FROM synchro_watermarks WHERE name = $1", &[&position_mark(slot)])
        .map_err(StoreError::query("reading the edge position"))?;
    Ok(row.map(|r| Lsn(r.get::<_, i64>(0) as u64)))
}

/// Creates the edge watermarks when missing (and keeps the edge position at most `stored`): the
/// edge position at the changelog position `stored`, and `edges_seq` at the changelog's end (a database written by a writer that kept
/// both in one transaction has its edges complete). Call while no batch is in flight.
pub fn init_watermarks(db: &mut impl GenericClient, slot: &str, stored: Lsn) -> Result<(), StoreError> {
    // Edges are never ahead of the changelog; a changelog position moved back by hand (or
    // reset with its table) pulls the edge position back with it.
    db.execute(
        "INSERT INTO synchro_watermarks (name, seq) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now() WHERE synchro_watermarks.seq > EXCLUDED.seq",
        &[&position_mark(slot), &(stored.0 as i64)],
    )
    .map_err(StoreError::query("initialising the edge position"))?;
    db.execute(
        "INSERT INTO synchro_watermarks (name, seq) SELECT $1, COALESCE(MAX(seq), 0) FROM sync_changelog \
         ON CONFLICT (name) DO NOTHING",
        &[&EDGES_SEQ],
    )
    .map_err(StoreError::query("initialising the edge watermark"))?;
    Ok(())
}

/// A test hook: with `SYNCHRO_TEST_FAILPOINT=between-commits` in the environment, the writer
/// aborts the process after a batch's changelog commit and before its edge commit, the one
/// window where the two sessions disagree (the crash tests use it).
pub fn fail_between_commits() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var("SYNCHRO_TEST_FAILPOINT").is_ok_and(|v| v == "between-commits"))
}
