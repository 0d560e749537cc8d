//! The opening round trip of every pull (contract §6.1-§6.3): in one prepared statement, the
//! snapshot for the catalog check, the client row, the retention watermarks and the first
//! changelog page.
//!
//! An empty incremental pull, the most frequent request of all, used to cost four statements
//! (five round trips) and PostgreSQL spent most of its time parsing and planning them. Folded
//! into one statement prepared once per pooled session it costs one round trip and no planning.
//! The page is read speculatively: when the engine then answers `snapshot_required`,
//! `rebuild_buckets` or an error instead, the rows are simply dropped (a read, nothing to undo).

use postgres::types::Type;

use super::changelog::{self, entry_from_row_at, ChangelogEntry};
use super::clients::{client_columns, client_from_row_at, ClientRow};
use super::pool::{Session, StoreError};
use super::subscriptions::subscription_version_sql;
use crate::types::UserId;

/// What a pull asks the probe for.
#[derive(Debug)]
pub struct PullProbeRequest<'a> {
    /// The authenticated user.
    pub user: &'a UserId,
    /// The device.
    pub client_id: &'a str,
    /// Subscriptions to use when the client row stores none (§6.1 step 4).
    pub default_subscriptions: &'a [String],
    /// Legacy mode: the request checkpoint. Per-bucket mode: 0, with `bucket_checkpoints` set.
    pub checkpoint: i64,
    /// Per-bucket mode: the request map (empty in legacy mode).
    pub bucket_checkpoints: &'a [(&'a str, i64)],
    /// Only changelog rows of these tables (empty = all).
    pub tables: &'a [String],
    /// Rows to read (the request limit + 1, to tell `has_more`).
    pub limit: i64,
    /// Read the page (`false`: the caller knows every bucket is empty after its position, or
    /// reads the page itself).
    pub page: bool,
    /// Without the page: the position up to which the caller's knowledge of the buckets holds
    /// (`engine::heads`); the probe tells whether any of the client's buckets has rows after it.
    pub known_through: i64,
    /// Bucket rules are configured: read the user's subscription version and the buckets the
    /// client is leaving (without rules both are always 0 and empty).
    pub rules: bool,
}

/// The retention state: the lowest changelog `seq` and both watermarks (0 when unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `COALESCE(MIN(seq), 0)` of the changelog.
    pub min_seq: i64,
    /// The compaction watermark.
    pub compacted: i64,
    /// The history reset watermark.
    pub reset: i64,
}

/// What the probe found.
#[derive(Debug)]
pub struct PullProbe {
    /// `pg_current_snapshot()` of the statement, as text (for the catalog check).
    pub snapshot: String,
    /// The retention state.
    pub retention: Retention,
    /// The client row, if registered.
    pub client: Option<ClientRow>,
    /// Up to `limit` changelog rows in `seq` order after each subscribed bucket's position; empty
    /// when the client is unknown or, in legacy mode, when it still needs its initial snapshot.
    pub page: Vec<ChangelogEntry>,
    /// The version of the user's rule-bucket subscriptions (`store::subscriptions::version`).
    pub subscription_version: i64,
    /// The rule buckets the client is leaving (`store::subscriptions::departures`), sorted.
    pub departing: Vec<String>,
    /// Probed without the page: one of the client's buckets has rows after `known_through`
    /// (then the caller's knowledge is behind, and it reads the page itself).
    pub fresh: bool,
}

/// Parameters: $1 user, $2 client id, $3 default subscriptions, $4 legacy checkpoint (the
/// default position), $5/$6 per-bucket map keys/values, $7 tables, $8 limit, $9/$10 watermark
/// names. Columns: snapshot, min_seq, compacted, reset (0-3), the client (4-15, NULL when not
/// registered), the page entry (16-21, NULL when the page is empty), the subscription version
/// (22), the buckets the client is leaving (23) and, probed without the page, whether any of
/// the client's buckets has rows after $11 (24). The page reads each
/// subscribed bucket through the `(bucket_id, seq)` index with its own LIMIT and merges them,
/// exactly as [`changelog::read_page`] does (C7).
///
/// The catalog fingerprint is deliberately not folded in: its estimate depends on the number
/// of relation oids, so its custom plans always looked cheaper than the generic one and
/// PostgreSQL re-planned the whole statement on every execution. Without it the generic plan
/// wins after the first five executions and the statement is planned once per session.
/// The probe's text around `$page_filter`, the condition a bucket's page rows meet besides
/// their bucket.
macro_rules! probe_sql {
    ($page_filter:literal, $rules:ident) => {
        probe_sql!(@page concat!(
            "SELECT e.* FROM unnest(cl.subs) AS b(bucket) \
               LEFT JOIN unnest($5::text[], $6::int8[]) AS m(k, v) ON m.k = b.bucket CROSS JOIN LATERAL ( \
                 SELECT seq, bucket_id, table_name, record_id, operation, created_at FROM sync_changelog \
                 WHERE bucket_id = b.bucket AND ",
            $page_filter,
            " ORDER BY seq LIMIT $8) e \
               WHERE NOT (cardinality($5::text[]) = 0 AND $4 = 0 AND cl.last_pull_at IS NULL) \
               ORDER BY e.seq LIMIT $8"
        ), "false", $rules)
    };
    (@page $page:expr, $fresh:expr, $rules:ident) => {
        concat!(
            "WITH st AS (SELECT pg_current_snapshot()::text AS snapshot, \
               COALESCE((SELECT seq FROM sync_changelog ORDER BY seq LIMIT 1), 0) AS min_seq, \
               COALESCE((SELECT seq FROM synchro_watermarks WHERE name = $9), 0) AS compacted, \
               COALESCE((SELECT seq FROM synchro_watermarks WHERE name = $10), 0) AS reset, ",
            probe_sql!(@version $rules),
            " AS subs_version), \
             cl AS (SELECT ",
            client_columns!(),
            ", COALESCE(NULLIF(bucket_subs, '{}'), $3::text[]) AS subs, ",
            probe_sql!(@departing $rules),
            " AS departing \
               FROM sync_clients WHERE user_id = $1 AND client_id = $2) \
             SELECT st.snapshot, st.min_seq, st.compacted, st.reset, \
                    cl.id, cl.user_id, cl.client_id, cl.client_name, cl.platform, cl.app_version, cl.bucket_subs, \
                    cl.last_sync_at, cl.last_pull_at, cl.last_push_at, cl.last_pull_seq, cl.is_active, \
                    p.seq, p.bucket_id, p.table_name, p.record_id, p.operation, p.created_at, \
                    st.subs_version, cl.departing, ",
            $fresh,
            " FROM st LEFT JOIN cl ON true LEFT JOIN LATERAL (",
            $page,
            ") p ON true ORDER BY p.seq"
        )
    };
    (@version rules) => {
        subscription_version_sql!()
    };
    (@departing rules) => {
        "ARRAY(SELECT d.bucket_id FROM synchro_departures d WHERE d.user_id = $1 AND d.client_id = $2 \
               ORDER BY d.bucket_id)"
    };
    // Without bucket rules there are no memberships to version and no rule bucket to depart.
    (@version plain) => {
        "0::int8"
    };
    (@departing plain) => {
        "'{}'::text[]"
    };
}

/// The general probe, and its variants below, each as two statements: with bucket rules, and
/// without them (no subscription version, no departures: together about a quarter of the bare
/// probe's cost under pgbench).
const PROBE_SQL: [&str; 2] = [
    probe_sql!("seq > COALESCE(m.v, $4) AND (cardinality($7::text[]) = 0 OR table_name = ANY ($7::text[]))", plain),
    probe_sql!("seq > COALESCE(m.v, $4) AND (cardinality($7::text[]) = 0 OR table_name = ANY ($7::text[]))", rules),
];

/// The same for the most frequent request of all, a legacy pull of every table: one position
/// for every bucket and no table filter. The per-bucket lookup and the filter are expressions
/// PostgreSQL sets up on every execution even when they decide nothing; without them the probe
/// runs about 10% faster under pgbench.
const PROBE_SQL_PLAIN: [&str; 2] = [probe_sql!("seq > $4", plain), probe_sql!("seq > $4", rules)];

/// Without the page, for a pull whose buckets are known to hold nothing after their positions
/// as of the changelog's tail read through $11 (`engine::heads`): the client, the retention
/// state, the subscription state, and whether rows came to one of the client's buckets since
/// that read (one range of the changelog's key, the rows of the last few milliseconds).
macro_rules! bare_probe_sql {
    ($rules:ident) => {
        probe_sql!(@page
            "SELECT NULL::int8 AS seq, NULL::text AS bucket_id, NULL::text AS table_name, NULL::text AS record_id, \
             NULL::int2 AS operation, NULL::timestamptz AS created_at WHERE false",
            "EXISTS (SELECT 1 FROM sync_changelog f WHERE f.seq > $11 AND f.bucket_id = ANY (cl.subs))",
            $rules
        )
    };
}
const PROBE_SQL_BARE: [&str; 2] = [bare_probe_sql!(plain), bare_probe_sql!(rules)];

const PROBE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::INT8,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
];

/// Runs the probe (one round trip on a prepared statement).
pub fn probe(session: &mut Session, req: &PullProbeRequest<'_>) -> Result<PullProbe, StoreError> {
    let keys: Vec<&str> = req.bucket_checkpoints.iter().map(|(b, _)| *b).collect();
    let values: Vec<i64> = req.bucket_checkpoints.iter().map(|(_, s)| *s).collect();
    let variants = if !req.page {
        PROBE_SQL_BARE
    } else if req.bucket_checkpoints.is_empty() && req.tables.is_empty() {
        PROBE_SQL_PLAIN
    } else {
        PROBE_SQL
    };
    let sql = variants[usize::from(req.rules)];
    let rows = session
        .query_cached(
            sql,
            PROBE_TYPES,
            &[
                &req.user.as_str(),
                &req.client_id,
                &req.default_subscriptions,
                &req.checkpoint,
                &keys,
                &values,
                &req.tables,
                &req.limit,
                &changelog::watermark::COMPACTED_THROUGH,
                &changelog::watermark::HISTORY_RESET,
                &req.known_through,
            ],
        )
        .map_err(StoreError::query("starting the pull"))?;
    let first = rows.first().ok_or_else(|| StoreError::Corrupt { detail: "the pull probe returned no row".into() })?;
    let snapshot = first.get(0);
    let retention = Retention { min_seq: first.get(1), compacted: first.get(2), reset: first.get(3) };
    let client = first.get::<_, Option<String>>(4).is_some().then(|| client_from_row_at(first, 4));
    let mut page = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.get::<_, Option<i64>>(16).is_some() {
            page.push(entry_from_row_at(row, 16)?);
        }
    }
    let subscription_version = first.get(22);
    let departing = first.get::<_, Option<Vec<String>>>(23).unwrap_or_default();
    let fresh = first.get::<_, Option<bool>>(24).unwrap_or(false);
    Ok(PullProbe { snapshot, retention, client, page, subscription_version, departing, fresh })
}
