//! `sync_clients` and `sync_client_checkpoints`: registration, lookup, checkpoint persistence
//! (contract §1.2, §6.9, §10.2, §10.3).
//!
//! A checkpoint row only ever exists for a bucket its client is subscribed to: every statement
//! that writes one joins the client row and keeps only its subscriptions (`subscribed!`), and
//! the statement that reads them does the same, whatever bucket ids a client sends. Otherwise a
//! client could store (and then inspect, through debug) checkpoints of other users' buckets,
//! or hold compaction back with a junk bucket at checkpoint 0.

use std::time::SystemTime;

use postgres::types::Type;
use postgres::GenericClient;

use super::pool::{ConstQuery, StoreError};
use crate::types::{BucketId, UserId};

/// A registered device of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRow {
    /// `sync_clients.id` as lower-case UUID text.
    pub id: String,
    /// The owning user (lower-cased).
    pub user_id: String,
    /// The device's own stable id.
    pub client_id: String,
    /// Free-form device name.
    pub client_name: Option<String>,
    /// `ios`, `android`, ...
    pub platform: String,
    /// The app version it registered with.
    pub app_version: String,
    /// Subscribed buckets (never empty in practice; empty means the default pair).
    pub bucket_subs: Vec<String>,
    /// Last pull or push.
    pub last_sync_at: Option<SystemTime>,
    /// Last pull that reached the data phase.
    pub last_pull_at: Option<SystemTime>,
    /// Last push.
    pub last_push_at: Option<SystemTime>,
    /// Legacy checkpoint.
    pub last_pull_seq: Option<i64>,
    /// False once compaction deactivated it.
    pub is_active: bool,
}

impl ClientRow {
    /// The subscriptions, with the default pair when none are stored (§6.1 step 4).
    pub fn subscriptions(&self, user: &UserId) -> Vec<String> {
        if self.bucket_subs.is_empty() {
            default_subscriptions(user)
        } else {
            self.bucket_subs.clone()
        }
    }
}

/// `['user:<id>', 'global']`, the subscriptions of every new client.
pub fn default_subscriptions(user: &UserId) -> Vec<String> {
    vec![BucketId::user(user.as_str()).into_string(), BucketId::global().into_string()]
}

/// What a device sends when it registers.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Stable device id.
    pub client_id: String,
    /// Optional device name.
    pub client_name: Option<String>,
    /// Platform string.
    pub platform: String,
    /// App version string.
    pub app_version: String,
}

/// The columns [`client_from_row`] reads, in order (a literal for statements built with `concat!`).
macro_rules! client_columns {
    () => {
        "id::text, user_id, client_id, client_name, platform, app_version, bucket_subs, \
         last_sync_at, last_pull_at, last_push_at, last_pull_seq, is_active"
    };
}
pub(crate) use client_columns;

const CLIENT_COLUMNS: &str = client_columns!();

/// The condition that bucket `$b` is one of the subscriptions of client row `c` (the default
/// pair, passed as `$d`, when it stores none), as text with `$b` and `$d` to replace.
macro_rules! subscribed {
    ($bucket:literal, $defaults:literal) => {
        concat!($bucket, " = ANY (COALESCE(NULLIF(c.bucket_subs, '{}'), ", $defaults, "::text[]))")
    };
}

fn client_from_row(row: &postgres::Row) -> ClientRow {
    client_from_row_at(row, 0)
}

/// The client in the [`client_columns!`] that start at column `at` of `row`.
pub(crate) fn client_from_row_at(row: &postgres::Row, at: usize) -> ClientRow {
    ClientRow {
        id: row.get(at),
        user_id: row.get(at + 1),
        client_id: row.get(at + 2),
        client_name: row.get(at + 3),
        platform: row.get(at + 4),
        app_version: row.get(at + 5),
        bucket_subs: row.get(at + 6),
        last_sync_at: row.get(at + 7),
        last_pull_at: row.get(at + 8),
        last_push_at: row.get(at + 9),
        last_pull_seq: row.get(at + 10),
        is_active: row.get(at + 11),
    }
}

/// Upserts the client on `(user, client_id)` (§1.2 step 3) and makes sure a checkpoint row exists
/// for every subscribed bucket (step 4). Subscriptions, checkpoints and sync times are kept.
pub fn register(db: &mut impl GenericClient, user: &UserId, reg: &Registration) -> Result<ClientRow, StoreError> {
    let subs = default_subscriptions(user);
    let row = db
        .query_one(
            &format!(
                "INSERT INTO sync_clients (user_id, client_id, client_name, platform, app_version, bucket_subs, is_active) \
                 VALUES ($1, $2, $3, $4, $5, $6, true) \
                 ON CONFLICT (user_id, client_id) DO UPDATE SET client_name = EXCLUDED.client_name, \
                   platform = EXCLUDED.platform, app_version = EXCLUDED.app_version, is_active = true, updated_at = now() \
                 RETURNING {CLIENT_COLUMNS}"
            ),
            &[&user.as_str(), &reg.client_id, &reg.client_name, &reg.platform, &reg.app_version, &subs],
        )
        .map_err(StoreError::query("registering the client"))?;
    let client = client_from_row(&row);
    db.execute(
        "INSERT INTO sync_client_checkpoints (user_id, client_id, bucket_id, checkpoint) \
         SELECT $1, $2, b, 0 FROM unnest($3::text[]) AS b ON CONFLICT DO NOTHING",
        &[&user.as_str(), &reg.client_id, &client.subscriptions(user)],
    )
    .map_err(StoreError::query("creating bucket checkpoints"))?;
    Ok(client)
}

/// Loads the client of `(user, client_id)`.
pub fn load(db: &mut impl ConstQuery, user: &UserId, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
    let rows = db
        .query_const(
            concat!("SELECT ", client_columns!(), " FROM sync_clients WHERE user_id = $1 AND client_id = $2"),
            &[(&user.as_str(), Type::TEXT), (&client_id, Type::TEXT)],
        )
        .map_err(StoreError::query("loading the client"))?;
    Ok(rows.first().map(client_from_row))
}

/// Every checkpoint row of the client for a bucket it is subscribed to, ordered by bucket id.
pub fn bucket_checkpoints(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = db
        .query(
            concat!(
                "SELECT k.bucket_id, k.checkpoint FROM sync_client_checkpoints k \
                 JOIN sync_clients c ON c.user_id = k.user_id AND c.client_id = k.client_id \
                 WHERE k.user_id = $1 AND k.client_id = $2 AND ",
                subscribed!("k.bucket_id", "$3"),
                " ORDER BY k.bucket_id"
            ),
            &[&user.as_str(), &client_id, &default_subscriptions(user)],
        )
        .map_err(StoreError::query("loading bucket checkpoints"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Legacy advance (§6.9): raises `last_pull_seq` and stamps the pull, then raises every bucket
/// row of the client that is below `seq`.
pub fn advance_legacy(db: &mut impl ConstQuery, user: &UserId, client_id: &str, seq: i64) -> Result<(), StoreError> {
    let params: [(&(dyn postgres::types::ToSql + Sync), Type); 3] =
        [(&user.as_str(), Type::TEXT), (&client_id, Type::TEXT), (&seq, Type::INT8)];
    db.query_const(
        "UPDATE sync_clients SET last_pull_seq = $3, last_pull_at = now(), last_sync_at = now() \
         WHERE user_id = $1 AND client_id = $2 AND (last_pull_seq IS NULL OR last_pull_seq < $3)",
        &params,
    )
    .map_err(StoreError::query("advancing the client checkpoint"))?;
    db.query_const(
        "UPDATE sync_client_checkpoints SET checkpoint = $3, updated_at = now() \
         WHERE user_id = $1 AND client_id = $2 AND checkpoint < $3",
        &params,
    )
    .map_err(StoreError::query("advancing bucket checkpoints"))?;
    Ok(())
}

/// Per-bucket advance (§6.9): upserts each `(bucket, seq)` of a subscribed bucket, only ever
/// raising the stored value. Pairs of other buckets are dropped.
pub fn raise_bucket_checkpoints(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    checkpoints: &[(String, i64)],
) -> Result<(), StoreError> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let buckets: Vec<&str> = checkpoints.iter().map(|(b, _)| b.as_str()).collect();
    let seqs: Vec<i64> = checkpoints.iter().map(|(_, s)| *s).collect();
    db.execute(
        concat!(
            "INSERT INTO sync_client_checkpoints (user_id, client_id, bucket_id, checkpoint) \
             SELECT $1, $2, t.b, t.s FROM unnest($3::text[], $4::bigint[]) AS t(b, s) \
             JOIN sync_clients c ON c.user_id = $1 AND c.client_id = $2 WHERE ",
            subscribed!("t.b", "$5"),
            " ON CONFLICT (user_id, client_id, bucket_id) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, updated_at = now() \
             WHERE sync_client_checkpoints.checkpoint < EXCLUDED.checkpoint"
        ),
        &[&user.as_str(), &client_id, &buckets, &seqs, &default_subscriptions(user)],
    )
    .map_err(StoreError::query("raising bucket checkpoints"))?;
    Ok(())
}

/// Rebuild set (§6.9): the bucket's checkpoint becomes exactly `seq`, even if lower (nothing
/// is stored for a bucket the client is not subscribed to).
pub fn set_bucket_checkpoint(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    bucket: &str,
    seq: i64,
) -> Result<(), StoreError> {
    db.execute(
        concat!(
            "INSERT INTO sync_client_checkpoints (user_id, client_id, bucket_id, checkpoint) \
             SELECT $1::text, $2::text, $3::text, $4::int8 FROM sync_clients c WHERE c.user_id = $1 AND c.client_id = $2 AND ",
            subscribed!("$3", "$5"),
            " ON CONFLICT (user_id, client_id, bucket_id) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, updated_at = now()"
        ),
        &[&user.as_str(), &client_id, &bucket, &seq, &default_subscriptions(user)],
    )
    .map_err(StoreError::query("setting the bucket checkpoint"))?;
    Ok(())
}

/// Stamps a pull that reached the data phase.
pub fn touch_pull(db: &mut impl GenericClient, user: &UserId, client_id: &str) -> Result<(), StoreError> {
    db.query_typed(
        "UPDATE sync_clients SET last_pull_at = now(), last_sync_at = now() WHERE user_id = $1 AND client_id = $2",
        &[(&user.as_str(), Type::TEXT), (&client_id, Type::TEXT)],
    )
    .map_err(StoreError::query("recording the pull"))?;
    Ok(())
}

/// Stamps a push.
pub fn touch_push(db: &mut impl ConstQuery, user: &UserId, client_id: &str) -> Result<(), StoreError> {
    db.query_const(
        "UPDATE sync_clients SET last_push_at = now(), last_sync_at = now() WHERE user_id = $1 AND client_id = $2",
        &[(&user.as_str(), Type::TEXT), (&client_id, Type::TEXT)],
    )
    .map_err(StoreError::query("recording the push"))?;
    Ok(())
}

/// Marks the client active again (final snapshot or rebuild page).
pub fn reactivate(db: &mut impl GenericClient, user: &UserId, client_id: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sync_clients SET is_active = true, updated_at = now() WHERE user_id = $1 AND client_id = $2",
        &[&user.as_str(), &client_id],
    )
    .map_err(StoreError::query("reactivating the client"))?;
    Ok(())
}
