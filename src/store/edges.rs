//! The changelog writer's statements on `sync_bucket_edges` (§10.4): which buckets records are
//! in now, and the removals, additions and checksum changes of one chunk.
//!
//! Every statement takes one array per column (`unnest`), so a chunk costs one round trip per
//! statement kind, not one per edge. The writer runs them through
//! [`super::writer_session::Batch`], which prepares each once per session.

use postgres::{GenericClient, ToStatement};

use super::pool::StoreError;

/// An edge a record holds: its bucket and the checksum stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEdge {
    /// The registered table name.
    pub table: String,
    /// The record's primary key as text.
    pub record: String,
    /// The bucket.
    pub bucket: String,
    /// The record checksum stored with the edge (NULL while the row had no current version).
    pub checksum: Option<i32>,
}

/// One edge to write, borrowed from the writer's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeRef<'a> {
    /// The registered table name.
    pub table: &'a str,
    /// The record's primary key as text.
    pub record: &'a str,
    /// The bucket.
    pub bucket: &'a str,
    /// The record checksum (ignored for removals).
    pub checksum: Option<i32>,
}

/// `(table, record)` pairs to probe, one array per column.
pub(super) const PROBE_SQL: &str =
    "SELECT k.t, k.r, e.bucket_id, e.checksum FROM unnest($1::text[], $2::text[]) AS k(t, r) \
     CROSS JOIN LATERAL (SELECT bucket_id, checksum FROM sync_bucket_edges \
                         WHERE table_name = k.t AND record_id = k.r OFFSET 0) e";

/// Removes edges `(table, record, bucket)`.
pub(super) const REMOVE_SQL: &str =
    "DELETE FROM sync_bucket_edges e USING unnest($1::text[], $2::text[], $3::text[]) AS d(t, r, b) \
     WHERE e.table_name = d.t AND e.record_id = d.r AND e.bucket_id = d.b";

/// Adds edges `(table, record, bucket, checksum)`.
pub(super) const INSERT_SQL: &str =
    "INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum, updated_at) \
     SELECT t, r, b, c, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS u(t, r, b, c)";

/// Sets the checksum of held edges `(table, record, bucket, checksum)`.
pub(super) const UPDATE_SQL: &str = "UPDATE sync_bucket_edges e SET checksum = u.c, updated_at = now() \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS u(t, r, b, c) \
     WHERE e.table_name = u.t AND e.record_id = u.r AND e.bucket_id = u.b";

/// Every edge held by the records `keys` (`(table, record)` pairs): one primary-key probe per
/// record whatever the statistics say. Planned as a join against `unnest()` or as
/// `record_id = ANY`, PostgreSQL scanned every edge of the table while its statistics were
/// stale, which made an ingest quadratic; `OFFSET 0` keeps the lateral subquery from being
/// flattened into such a join.
pub(super) fn probe(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    keys: &[(&str, &str)],
) -> Result<Vec<HeldEdge>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (tables, records): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let rows = db.query(statement, &[&tables, &records]).map_err(StoreError::query("reading bucket edges"))?;
    Ok(rows
        .iter()
        .map(|r| HeldEdge { table: r.get(0), record: r.get(1), bucket: r.get(2), checksum: r.get(3) })
        .collect())
}

/// Edges as the statements bind them: tables, records, buckets, checksums.
pub(super) type Columns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<Option<i32>>);

/// The columns of `edges`.
pub(super) fn columns<'a>(edges: &[EdgeRef<'a>]) -> Columns<'a> {
    let mut out = (
        Vec::with_capacity(edges.len()),
        Vec::with_capacity(edges.len()),
        Vec::with_capacity(edges.len()),
        Vec::with_capacity(edges.len()),
    );
    for e in edges {
        out.0.push(e.table);
        out.1.push(e.record);
        out.2.push(e.bucket);
        out.3.push(e.checksum);
    }
    out
}

/// Removes `edges`.
pub(super) fn remove(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    edges: &[EdgeRef<'_>],
) -> Result<(), StoreError> {
    if edges.is_empty() {
        return Ok(());
    }
    let (t, r, b, _) = columns(edges);
    db.execute(statement, &[&t, &r, &b]).map_err(StoreError::query("removing bucket edges"))?;
    Ok(())
}

/// Adds `edges`, which the table does not hold yet (plain inserts: the writer is the only edge
/// writer, and a second writer is fenced off by the stored position, so no conflict handling
/// is needed).
pub(super) fn insert(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    edges: &[EdgeRef<'_>],
) -> Result<(), StoreError> {
    with_checksums(db, statement, edges, "writing bucket edges")
}

/// Stores the new checksums of held `edges`.
pub(super) fn update_checksums(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    edges: &[EdgeRef<'_>],
) -> Result<(), StoreError> {
    with_checksums(db, statement, edges, "updating bucket edge checksums")
}

/// Runs `statement` with `edges` bound as four arrays: tables, records, buckets, checksums.
fn with_checksums(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    edges: &[EdgeRef<'_>],
    context: &'static str,
) -> Result<(), StoreError> {
    if edges.is_empty() {
        return Ok(());
    }
    let (t, r, b, c) = columns(edges);
    db.execute(statement, &[&t, &r, &b, &c]).map_err(StoreError::query(context))?;
    Ok(())
}
