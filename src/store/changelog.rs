//! `sync_changelog` (§10.1): the writer's appends (rows in binary `COPY` format, the removals
//! a TRUNCATE implies, assignment failures, history-reset markers), and the reads of pulls,
//! rebuilds and debug (§6, §8.2, §10.4), plus the watermarks synchro keeps beside them.

use postgres::types::{ToSql, Type};
use postgres::{GenericClient, ToStatement};

use super::pool::{ConstQuery, StoreError};
use crate::types::{Op, Seq};

/// One changelog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    /// Position in the global order.
    pub seq: Seq,
    /// The bucket the row was written for.
    pub bucket: String,
    /// The unqualified table name.
    pub table: String,
    /// The record's primary key as text.
    pub record_id: String,
    /// What happened to the record in that bucket.
    pub op: Op,
    /// When the writer recorded it (advances with every change; the `updated_at` of records
    /// whose table has no updated-at column, or whose column a direct write did not bump).
    pub created_at: std::time::SystemTime,
}

/// Reads up to `limit` entries in `seq` order, for each bucket only those after that bucket's
/// position, optionally limited to `tables`.
///
/// The per-bucket filter is inside SQL (contract C7): each bucket is read through the
/// `(bucket_id, seq)` index with its own `LIMIT`, then merged, so one lagging bucket can neither
/// starve another nor make the query scan the whole backlog.
pub fn read_page<B: ToSql + Sync>(
    db: &mut impl GenericClient,
    positions: &[(B, i64)],
    tables: Option<&[String]>,
    limit: i64,
) -> Result<Vec<ChangelogEntry>, StoreError> {
    if positions.is_empty() || limit <= 0 {
        return Ok(Vec::new());
    }
    let table_list: Vec<&str> = tables.unwrap_or(&[]).iter().map(String::as_str).collect();
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&limit, Type::INT8)];
    let table_filter = match tables {
        Some(t) if !t.is_empty() => {
            params.push((&table_list, Type::TEXT_ARRAY));
            " AND table_name = ANY($2)"
        }
        _ => "",
    };
    let mut parts = Vec::with_capacity(positions.len());
    for (bucket, after) in positions {
        let b = params.len() + 1;
        params.push((bucket, Type::TEXT));
        params.push((after, Type::INT8));
        parts.push(format!(
            "(SELECT seq, bucket_id, table_name, record_id, operation, created_at FROM sync_changelog \
             WHERE bucket_id = ${b} AND seq > ${}{table_filter} ORDER BY seq LIMIT $1)",
            b + 1
        ));
    }
    let sql = format!("SELECT * FROM ({}) AS page ORDER BY seq LIMIT $1", parts.join(" UNION ALL "));
    // Typed parameters: one round trip (this is the hot path of every pull).
    let rows = db.query_typed(&sql, &params).map_err(StoreError::query("reading the changelog"))?;
    rows.iter().map(|r| entry_from_row_at(r, 0)).collect()
}

/// The entry in the columns `seq, bucket_id, table_name, record_id, operation, created_at` that
/// start at column `at` of `row`.
pub(crate) fn entry_from_row_at(row: &postgres::Row, at: usize) -> Result<ChangelogEntry, StoreError> {
    let code: i16 = row.get(at + 4);
    let op = Op::from_code(code).ok_or_else(|| StoreError::Corrupt {
        detail: format!("sync_changelog row {} has operation {code}", row.get::<_, i64>(at)),
    })?;
    Ok(ChangelogEntry {
        seq: Seq(row.get(at)),
        bucket: row.get(at + 1),
        table: row.get(at + 2),
        record_id: row.get(at + 3),
        op,
        created_at: row.get(at + 5),
    })
}

/// The highest `seq` of every bucket with rows after `after`, and the highest `seq` read
/// (`after` when there is none): the changelog's tail, for `engine::heads`. Rows become
/// visible in `seq` order (one writer, commit order), so everything up to the returned
/// position has been seen.
pub fn heads_after(db: &mut impl GenericClient, after: i64) -> Result<(Vec<(String, i64)>, i64), StoreError> {
    let rows = db
        .query_typed(
            "SELECT bucket_id, max(seq) FROM sync_changelog WHERE seq > $1 GROUP BY bucket_id",
            &[(&after, Type::INT8)],
        )
        .map_err(StoreError::query("reading the changelog's tail"))?;
    let heads: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let through = heads.iter().map(|(_, s)| *s).max().unwrap_or(after).max(after);
    Ok((heads, through))
}

/// `COALESCE(MIN(seq), 0)` and `COALESCE(MAX(seq), 0)` of the changelog.
pub fn bounds(db: &mut impl GenericClient) -> Result<(i64, i64), StoreError> {
    // Two index probes instead of one aggregate: MIN and MAX each read one end of the pkey.
    let row = db
        .query_one(
            "SELECT COALESCE((SELECT seq FROM sync_changelog ORDER BY seq ASC LIMIT 1), 0), \
                    COALESCE((SELECT seq FROM sync_changelog ORDER BY seq DESC LIMIT 1), 0)",
            &[],
        )
        .map_err(StoreError::query("reading changelog bounds"))?;
    Ok((row.get(0), row.get(1)))
}

/// The checkpoint a snapshot or rebuild starts from: `MAX(seq)`, or the compaction and
/// history-reset watermarks when they are higher (a changelog compacted to nothing). A
/// position below a watermark is one pulls send back to a snapshot or rebuild, so a snapshot
/// that started there would be asked for again and again.
pub fn max_seq(db: &mut impl GenericClient) -> Result<i64, StoreError> {
    let row = db
        .query_one(
            "SELECT GREATEST(COALESCE((SELECT seq FROM sync_changelog ORDER BY seq DESC LIMIT 1), 0), \
                    COALESCE((SELECT max(seq) FROM synchro_watermarks WHERE name = ANY ($1::text[])), 0))",
            &[&[watermark::COMPACTED_THROUGH, watermark::HISTORY_RESET].as_slice()],
        )
        .map_err(StoreError::query("reading the changelog head"))?;
    Ok(row.get(0))
}

/// `BIT_XOR(checksum)` over each bucket's edges with a checksum; buckets without any are absent.
/// Read from `sync_bucket_checksums`, which a trigger keeps in the transaction of every write
/// to the edges (migration 7): one row per bucket, whatever the bucket's size.
pub fn bucket_checksums(db: &mut impl ConstQuery, buckets: &[String]) -> Result<Vec<(String, i32)>, StoreError> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query_const(
            "SELECT bucket_id, checksum FROM sync_bucket_checksums \
             WHERE bucket_id = ANY($1) AND members > 0 ORDER BY bucket_id",
            &[(&buckets, Type::TEXT_ARRAY)],
        )
        .map_err(StoreError::query("computing bucket checksums"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `(member count, BIT_XOR of the non-null checksums)` of a bucket's edges (debug).
pub fn bucket_summary(db: &mut impl GenericClient, bucket: &str) -> Result<(i64, Option<i32>), StoreError> {
    let row = db
        .query_one("SELECT count(*), BIT_XOR(checksum) FROM sync_bucket_edges WHERE bucket_id = $1", &[&bucket])
        .map_err(StoreError::query("counting bucket members"))?;
    Ok((row.get(0), row.get(1)))
}

/// `(MIN(seq), MAX(seq), count)` of the changelog, zeros when it is empty (debug).
pub fn stats(db: &mut impl GenericClient) -> Result<(i64, i64, i64), StoreError> {
    let row = db
        .query_one("SELECT COALESCE(min(seq), 0), COALESCE(max(seq), 0), count(*) FROM sync_changelog", &[])
        .map_err(StoreError::query("reading changelog statistics"))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The keys among `ids` of `table` with an edge in one of `buckets`.
pub fn members_in(
    db: &mut impl GenericClient,
    table: &str,
    ids: &[String],
    buckets: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows = db
        .query(
            "SELECT DISTINCT record_id FROM sync_bucket_edges WHERE table_name = $1 AND record_id = ANY ($2) \
             AND bucket_id = ANY ($3)",
            &[&table, &ids, &buckets],
        )
        .map_err(StoreError::query("reading bucket memberships of rows"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Gauges of the sync tables for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauges {
    /// Registered client devices.
    pub clients: f64,
    /// Active client devices.
    pub active_clients: f64,
    /// Changelog rows (the planner's estimate: counting would scan the table).
    pub changelog_rows: f64,
    /// The changelog's size on disk, indexes included.
    pub changelog_bytes: f64,
}

/// Reads the [`Gauges`].
pub fn gauges(db: &mut impl GenericClient) -> Result<Gauges, StoreError> {
    let r = db
        .query_one(
            "SELECT (SELECT count(*) FROM sync_clients)::float8, (SELECT count(*) FROM sync_clients WHERE is_active)::float8, \
                    GREATEST((SELECT reltuples FROM pg_class WHERE oid = 'sync_changelog'::regclass), 0)::float8, \
                    pg_total_relation_size('sync_changelog')::float8",
            &[],
        )
        .map_err(StoreError::query("reading the sync tables' gauges"))?;
    let get = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(0.0);
    Ok(Gauges { clients: get(0), active_clients: get(1), changelog_rows: get(2), changelog_bytes: get(3) })
}

/// One page of a bucket's members in `(table_name, record_id)` order, after `after` (exclusive).
pub fn bucket_members(
    db: &mut impl GenericClient,
    bucket: &str,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = match after {
        Some((t, r)) => db.query(
            "SELECT table_name, record_id FROM sync_bucket_edges WHERE bucket_id = $1 AND (table_name, record_id) > ($2, $3) \
             ORDER BY table_name, record_id LIMIT $4",
            &[&bucket, &t, &r, &limit],
        ),
        None => db.query(
            "SELECT table_name, record_id FROM sync_bucket_edges WHERE bucket_id = $1 \
             ORDER BY table_name, record_id LIMIT $2",
            &[&bucket, &limit],
        ),
    }
    .map_err(StoreError::query("reading bucket members"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Names of the rows in `synchro_watermarks`.
pub mod watermark {
    /// The highest `seq` compaction has deleted (contract C12).
    pub const COMPACTED_THROUGH: &str = "compacted_through";
    /// Changes up to this `seq` may be missing because the replication slot was lost and
    /// recreated: clients positioned at or below it must re-snapshot (`history_unavailable`).
    pub const HISTORY_RESET: &str = "history_reset";
}

/// Reads a watermark (0 when never set).
pub fn read_watermark(db: &mut impl GenericClient, name: &str) -> Result<i64, StoreError> {
    let row = db
        .query_opt("SELECT seq FROM synchro_watermarks WHERE name = $1", &[&name])
        .map_err(StoreError::query("reading a watermark"))?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

/// Raises a watermark to `seq` (never lowers it).
pub fn raise_watermark(db: &mut impl GenericClient, name: &str, seq: i64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO synchro_watermarks (name, seq) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now() WHERE synchro_watermarks.seq < EXCLUDED.seq",
        &[&name, &seq],
    )
    .map_err(StoreError::query("raising a watermark"))?;
    Ok(())
}

/// Sets a mark to `value`, whatever it was (a fingerprint rather than a position).
pub fn set_watermark(db: &mut impl GenericClient, name: &str, value: i64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO synchro_watermarks (name, seq) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()",
        &[&name, &value],
    )
    .map_err(StoreError::query("setting a mark"))?;
    Ok(())
}

/// A change the bucket assigner refused: recorded in `sync_rule_failures` (§10.5) instead of
/// the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The registered table name.
    pub table: String,
    /// The record's primary key as text.
    pub record: String,
    /// What happened to the record.
    pub op: Op,
    /// Why no bucket could be assigned.
    pub error: String,
    /// The replicated values as a JSON object (text; unchanged TOAST values left out).
    pub payload: String,
}

/// One changelog row to append, borrowed from the writer's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRef<'a> {
    /// The bucket it is written for.
    pub bucket: &'a str,
    /// The registered table name.
    pub table: &'a str,
    /// The record's primary key as text.
    pub record: &'a str,
    /// What happened to the record in that bucket.
    pub op: Op,
}

/// Appends rows encoded by [`encode_rows`].
pub(super) const COPY_SQL: &str =
    "COPY sync_changelog (bucket_id, table_name, record_id, operation) FROM STDIN (FORMAT binary)";

/// Records one [`Failure`].
pub(super) const FAILURE_SQL: &str =
    "INSERT INTO sync_rule_failures (table_name, record_id, operation, error_text, payload) \
     VALUES ($1, $2, $3, $4, $5::text::jsonb)";

/// Removes every edge of the tables `$1` and records a removal for each (§9.4: a TRUNCATE
/// removes every row of the table from every bucket).
pub(super) const TRUNCATE_SQL: &str = "WITH gone AS (DELETE FROM sync_bucket_edges WHERE table_name = ANY ($1) \
                          RETURNING table_name, record_id, bucket_id) \
     INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) \
     SELECT bucket_id, table_name, record_id, 3 FROM gone ORDER BY table_name, record_id, bucket_id";

/// Changelog rows in PostgreSQL's binary `COPY` format, header and trailer included, for the
/// writer's `COPY`. A value longer than `i32::MAX` bytes cannot reach here: keys and bucket
/// ids come from single WAL messages, whose lengths are `i32` themselves.
pub fn encode_rows(rows: &[ChangeRef<'_>]) -> Vec<u8> {
    let size: usize = rows.iter().map(|r| 2 + 12 + r.bucket.len() + r.table.len() + r.record.len() + 6).sum();
    let mut out = Vec::with_capacity(21 + size);
    // Signature, flags, header extension length.
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for r in rows {
        out.extend_from_slice(&4i16.to_be_bytes());
        text(&mut out, r.bucket);
        text(&mut out, r.table);
        text(&mut out, r.record);
        out.extend_from_slice(&2i32.to_be_bytes());
        out.extend_from_slice(&r.op.code().to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Appends rows encoded by [`encode_rows`]; `seq` follows their order.
pub(super) fn copy_rows(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    encoded: &[u8],
) -> Result<(), StoreError> {
    let mut sink = db.copy_in(statement).map_err(StoreError::query("starting the changelog COPY"))?;
    if let Err(e) = std::io::Write::write_all(&mut sink, encoded) {
        // The sink reports the connection's error wrapped in an I/O error.
        let detail = e.to_string();
        return Err(match e.into_inner().and_then(|inner| inner.downcast::<postgres::Error>().ok()) {
            Some(source) => StoreError::Query { context: "writing changelog rows".into(), source: *source },
            None => StoreError::Corrupt { detail: format!("writing changelog rows: {detail}") },
        });
    }
    sink.finish().map_err(StoreError::query("finishing the changelog COPY"))?;
    Ok(())
}

/// Records failed bucket assignments.
pub(super) fn record_failures(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    failures: &[Failure],
) -> Result<(), StoreError> {
    for f in failures {
        db.execute(statement, &[&f.table, &f.record, &f.op.code(), &f.error, &f.payload])
            .map_err(StoreError::query("recording a bucket assignment failure"))?;
    }
    Ok(())
}

/// Removes the edges of truncated `tables` and appends a removal row for each; returns how
/// many rows it appended.
pub(super) fn record_truncate(
    db: &mut impl GenericClient,
    statement: &(impl ToStatement + ?Sized),
    tables: &[String],
) -> Result<u64, StoreError> {
    db.execute(statement, &[&tables]).map_err(StoreError::query("recording a TRUNCATE"))
}

/// Records that history up to now may be incomplete (the replication slot was lost and
/// recreated): a marker row in a bucket nobody subscribes to advances `seq` past every earlier
/// change, so snapshots taken after the reset start at or above it, and the
/// [`watermark::HISTORY_RESET`] watermark sends every client positioned before it back to a
/// snapshot. Returns the marker's `seq`.
pub fn mark_history_reset(db: &mut postgres::Client) -> Result<i64, StoreError> {
    let mut tx = db.transaction().map_err(StoreError::query("starting the history reset"))?;
    let seq: i64 = tx
        .query_one(
            "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) \
             VALUES ('__synchro_history_reset__', '', '', 2) RETURNING seq",
            &[],
        )
        .map_err(StoreError::query("writing the history-reset marker"))?
        .get(0);
    raise_watermark(&mut tx, watermark::HISTORY_RESET, seq)?;
    tx.commit().map_err(StoreError::query("committing the history reset"))?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::{encode_rows, ChangeRef};
    use crate::types::Op;

    #[test]
    fn rows_are_encoded_in_the_binary_copy_format() {
        let rows = [("user:a", "items", "1", Op::Create), ("global", "t", "", Op::Delete)];
        let refs: Vec<ChangeRef<'_>> =
            rows.iter().map(|&(bucket, table, record, op)| ChangeRef { bucket, table, record, op }).collect();
        let out = encode_rows(&refs);
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        for (b, t, r, op) in rows {
            want.extend_from_slice(&[0, 4]);
            for s in [b, t, r] {
                want.extend_from_slice(&(s.len() as u32).to_be_bytes());
                want.extend_from_slice(s.as_bytes());
            }
            want.extend_from_slice(&[0, 0, 0, 2, 0, op.code() as u8]);
        }
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(out, want);
        // No rows: header and trailer only.
        assert_eq!(encode_rows(&[]).len(), 19 + 2);
    }
}
