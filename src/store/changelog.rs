//! Reading `sync_changelog` and `sync_bucket_edges` for pulls, rebuilds and debug (§6, §8.2,
//! §10.1, §10.4), plus the watermarks synchro keeps beside them.

use postgres::types::{ToSql, Type};
use postgres::GenericClient;

use super::pool::StoreError;
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
pub fn read_page(
    db: &mut impl GenericClient,
    positions: &[(String, i64)],
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

/// `MAX(seq)` only: the checkpoint a snapshot or rebuild starts from.
pub fn max_seq(db: &mut impl GenericClient) -> Result<i64, StoreError> {
    Ok(bounds(db)?.1)
}

/// `(MAX(seq), where a rebuild starts)`. A rebuild's members come from the bucket edges, which
/// the writer commits a moment after the changelog rows (`crate::edge_session`): it starts at
/// the `edges_seq` watermark when that is lower, so no member whose edge is still uncommitted
/// is skipped (its change then comes with the next pull).
pub fn rebuild_start(db: &mut impl GenericClient) -> Result<(i64, i64), StoreError> {
    let row = db
        .query_one(
            "SELECT COALESCE((SELECT seq FROM sync_changelog ORDER BY seq DESC LIMIT 1), 0), \
                    (SELECT seq FROM synchro_watermarks WHERE name = $1)",
            &[&crate::edge_session::EDGES_SEQ],
        )
        .map_err(StoreError::query("reading the rebuild checkpoint"))?;
    let max: i64 = row.get(0);
    let edges: Option<i64> = row.get(1);
    Ok((max, edges.map_or(max, |e| e.min(max))))
}

/// `BIT_XOR(checksum)` over each bucket's edges with a checksum; buckets without any are absent.
///
/// With `covering`, a pull page's last `seq`: nothing when the edges are not yet committed that
/// far (the `edges_seq` watermark is below it, for the moment between the writer's changelog
/// and edge commits). Checksums that miss the page's own changes would only make the SDK
/// rebuild those buckets for nothing; it verifies at its next complete pull instead.
pub fn bucket_checksums(
    db: &mut impl GenericClient,
    buckets: &[String],
    covering: Option<i64>,
) -> Result<Vec<(String, i32)>, StoreError> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query_typed(
            "SELECT bucket_id, BIT_XOR(checksum) FROM sync_bucket_edges \
             WHERE bucket_id = ANY($1) AND checksum IS NOT NULL \
               AND ($2::int8 IS NULL OR COALESCE((SELECT seq FROM synchro_watermarks WHERE name = $3), $2) >= $2) \
             GROUP BY bucket_id ORDER BY bucket_id",
            &[(&buckets, Type::TEXT_ARRAY), (&covering, Type::INT8), (&crate::edge_session::EDGES_SEQ, Type::TEXT)],
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
