//! Subscriptions to rule buckets (`BUCKET_RULES`): what a user is a member of, when that last
//! changed, and what each device holds.
//!
//! * **Memberships** are read from the membership tables in the application database
//!   ([`memberships`]), only when a user's cached subscriptions are missing or outdated.
//! * **Versions** (`synchro_subscription_versions`, in the sync store): change capture records,
//!   once per batch, the commit position of the latest membership change of every user it saw
//!   ([`record_changes`]). A request reads the user's version in the round trip it makes anyway
//!   and re-reads the memberships only when the version moved. The row of user `""` stands for
//!   every user (a membership delete whose user is not in the replica identity).
//! * **What a device holds** is `sync_clients.bucket_subs`: the buckets the device has been
//!   brought in line with (a snapshot, or a rebuild of the bucket). A bucket the user joined
//!   is not in it until the device received it; a bucket the user left stays in it until the
//!   device has been told to drop its rows.
//! * **Departures** (`synchro_departures`): a per-bucket device whose user left a bucket gets
//!   deletes for the rows it holds from it; a departure row remembers how far that got. The
//!   bucket leaves `bucket_subs` (and its checkpoint row goes) when the departure starts.

use postgres::types::Type;
use postgres::GenericClient;

use super::pool::StoreError;
use crate::registry::{quote_ident, Registry};
use crate::types::UserId;

/// The version row that stands for every user.
pub const EVERY_USER: &str = "";

/// The version of user `$1`'s subscriptions, as SQL: the greater of the user's row and the
/// every-user row (two key lookups; an `IN` list of both made PostgreSQL plan a bitmap scan,
/// which cost a third of the pull probe). 0 when no membership change was ever captured.
macro_rules! subscription_version_sql {
    () => {
        "GREATEST(COALESCE((SELECT version FROM synchro_subscription_versions WHERE user_id = $1), 0), \
                  COALESCE((SELECT version FROM synchro_subscription_versions WHERE user_id = ''), 0))::int8"
    };
}
pub(crate) use subscription_version_sql;

/// The version of `user`'s subscriptions (0 when no membership change was ever captured).
pub fn version(db: &mut impl GenericClient, user: &UserId) -> Result<i64, StoreError> {
    let row = db
        .query_typed(concat!("SELECT ", subscription_version_sql!()), &[(&user.as_str(), Type::TEXT)])
        .map_err(StoreError::query("reading the subscription version"))?;
    Ok(row.first().map(|r| r.get(0)).unwrap_or(0))
}

/// Records that the memberships of `users` changed at `version` (a commit position, so it only
/// grows): one statement for the whole batch. [`EVERY_USER`] among them refreshes everyone.
pub fn record_changes(db: &mut impl GenericClient, users: &[&str], version: i64) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    db.execute(
        "INSERT INTO synchro_subscription_versions (user_id, version) SELECT DISTINCT u, $2::int8 FROM unnest($1::text[]) AS u \
         ON CONFLICT (user_id) DO UPDATE SET version = GREATEST(synchro_subscription_versions.version, EXCLUDED.version), \
         updated_at = now()",
        &[&users, &version],
    )
    .map_err(StoreError::query("recording membership changes"))?;
    Ok(())
}

/// Whether values of `db_type` compare with a text parameter as they are (so the user column's
/// index serves the lookup without a cast that could fail).
fn is_text_type(db_type: &str) -> bool {
    db_type == "text"
        || db_type == "name"
        || db_type.starts_with("character varying")
        || db_type == "citext"
        || db_type.starts_with("character(")
}

/// The rule buckets `user` is a member of (`team:<key>`), sorted, read from the membership
/// tables in one read-only transaction with `app.user_id` set (so row-level security on a
/// membership table shows the user their own rows). Keys that cannot form a bucket id (empty,
/// or holding `,`) are skipped.
pub fn memberships(db: &mut postgres::Client, registry: &Registry, user: &UserId) -> Result<Vec<String>, StoreError> {
    if registry.memberships().is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = db.build_transaction().read_only(true).start().map_err(StoreError::query("reading memberships"))?;
    tx.query_typed("SELECT set_config('app.user_id', $1, true)", &[(&user.as_str(), Type::TEXT)])
        .map_err(StoreError::query("setting app.user_id"))?;
    let out = memberships_in(&mut tx, registry, user)?;
    tx.commit().map_err(StoreError::query("reading memberships"))?;
    Ok(out)
}

/// [`memberships`] inside the caller's transaction (which has `app.user_id` set), so they are
/// read at the snapshot of the rows read beside them.
pub fn memberships_in(
    tx: &mut postgres::Transaction<'_>,
    registry: &Registry,
    user: &UserId,
) -> Result<Vec<String>, StoreError> {
    let rules = registry.memberships();
    let mut out: Vec<String> = Vec::new();
    // One query per membership table and column pair (rules of several buckets may share one).
    let mut done: Vec<(u32, &str, &str)> = Vec::new();
    for (_, m) in &rules {
        if done.contains(&(m.oid.0, m.key.as_str(), m.user.as_str())) {
            continue;
        }
        done.push((m.oid.0, &m.key, &m.user));
        let user_value =
            if is_text_type(&m.user_type) { "$1".to_string() } else { format!("$1::text::{}", m.user_type) };
        let sql = format!(
            "SELECT DISTINCT m.{key}::text FROM {table} m WHERE m.{col} = {user_value} AND m.{key} IS NOT NULL{live}",
            key = quote_ident(&m.key),
            table = m.qualified(),
            col = quote_ident(&m.user),
            live = m.live_filter(),
        );
        // A user id that is not a value of the column's type (`alice` for a uuid column) is a
        // member of nothing there; the savepoint keeps the transaction usable.
        tx.batch_execute("SAVEPOINT synchro_memberships").map_err(StoreError::query("reading memberships"))?;
        let keys: Vec<String> = match tx.query_typed(&sql, &[(&user.as_str(), Type::TEXT)]) {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT synchro_memberships")
                    .map_err(StoreError::query("reading memberships"))?;
                Vec::new()
            }
            Err(e) => {
                return Err(StoreError::Query {
                    context: format!("reading memberships in {}", m.display_name()),
                    source: e,
                })
            }
        };
        for (bucket, _) in rules.iter().filter(|(_, r)| r.oid == m.oid && r.key == m.key && r.user == m.user) {
            out.extend(keys.iter().filter_map(|k| crate::rules::bucket_id(bucket, k)).map(|b| b.into_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A bucket a device is leaving: its rows are being deleted from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The bucket left.
    pub bucket: String,
    /// The device's checkpoint of the bucket when the departure started: its changes after
    /// this are read too (rows that left the bucket since, or were deleted).
    pub since: i64,
    /// The last bucket member (table, record) already answered with a delete; `None` before
    /// the first.
    pub after: Option<(String, String)>,
    /// Every member has been answered.
    pub members_done: bool,
}

/// The departures of a device, by bucket.
pub fn departures(db: &mut impl GenericClient, user: &UserId, client_id: &str) -> Result<Vec<Departure>, StoreError> {
    let rows = db
        .query(
            "SELECT bucket_id, since, after_table, after_record, members_done FROM synchro_departures \
             WHERE user_id = $1 AND client_id = $2 ORDER BY bucket_id",
            &[&user.as_str(), &client_id],
        )
        .map_err(StoreError::query("reading departures"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let after = match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
                (Some(t), Some(id)) => Some((t, id)),
                _ => None,
            };
            Departure { bucket: r.get(0), since: r.get(1), after, members_done: r.get(4) }
        })
        .collect())
}

/// Starts the departures of `leaving` (bucket, the device's checkpoint of it), in one
/// transaction: the buckets leave `bucket_subs`, their checkpoint rows go, a departure row
/// each takes their place. `defaults` are the subscriptions of a client row that stores none.
pub fn start_departures(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    leaving: &[(String, i64)],
    defaults: &[String],
) -> Result<(), StoreError> {
    if leaving.is_empty() {
        return Ok(());
    }
    let buckets: Vec<&str> = leaving.iter().map(|(b, _)| b.as_str()).collect();
    let since: Vec<i64> = leaving.iter().map(|(_, s)| *s).collect();
    let mut tx = db.transaction().map_err(StoreError::query("starting departures"))?;
    tx.execute(
        "UPDATE sync_clients SET bucket_subs = ARRAY(SELECT b FROM unnest(COALESCE(NULLIF(bucket_subs, '{}'), $3::text[])) \
           WITH ORDINALITY AS s(b, i) WHERE b <> ALL ($4::text[]) ORDER BY i), updated_at = now() \
         WHERE user_id = $1 AND client_id = $2",
        &[&user.as_str(), &client_id, &defaults, &buckets],
    )
    .map_err(StoreError::query("dropping left buckets from the client"))?;
    tx.execute(
        "DELETE FROM sync_client_checkpoints WHERE user_id = $1 AND client_id = $2 AND bucket_id = ANY ($3::text[])",
        &[&user.as_str(), &client_id, &buckets],
    )
    .map_err(StoreError::query("dropping checkpoints of left buckets"))?;
    tx.execute(
        "INSERT INTO synchro_departures (user_id, client_id, bucket_id, since) \
         SELECT $1, $2, b, s FROM unnest($3::text[], $4::int8[]) AS t(b, s) ON CONFLICT DO NOTHING",
        &[&user.as_str(), &client_id, &buckets, &since],
    )
    .map_err(StoreError::query("recording departures"))?;
    tx.commit().map_err(StoreError::query("committing departures"))?;
    Ok(())
}

/// Records how far the deletes of a departure got.
pub fn record_departure(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    departure: &Departure,
) -> Result<(), StoreError> {
    let (table, record) = match &departure.after {
        Some((t, r)) => (Some(t.as_str()), Some(r.as_str())),
        None => (None, None),
    };
    db.execute(
        "UPDATE synchro_departures SET after_table = $4, after_record = $5, members_done = $6 \
         WHERE user_id = $1 AND client_id = $2 AND bucket_id = $3",
        &[&user.as_str(), &client_id, &departure.bucket, &table, &record, &departure.members_done],
    )
    .map_err(StoreError::query("recording departure progress"))?;
    Ok(())
}

/// Ends departures: the device no longer holds rows of `buckets`.
pub fn finish_departures(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    buckets: &[String],
) -> Result<(), StoreError> {
    if buckets.is_empty() {
        return Ok(());
    }
    db.execute(
        "DELETE FROM synchro_departures WHERE user_id = $1 AND client_id = $2 AND bucket_id = ANY ($3::text[])",
        &[&user.as_str(), &client_id, &buckets],
    )
    .map_err(StoreError::query("finishing departures"))?;
    Ok(())
}

/// The device now holds `bucket` (a rebuild of it completed): it joins `bucket_subs` (at the
/// end, when missing) and any departure from it ends.
pub fn hold_bucket(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    bucket: &str,
    defaults: &[String],
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sync_clients SET bucket_subs = COALESCE(NULLIF(bucket_subs, '{}'), $3::text[]) || $4::text, updated_at = now() \
         WHERE user_id = $1 AND client_id = $2 AND $4 <> ALL (COALESCE(NULLIF(bucket_subs, '{}'), $3::text[]))",
        &[&user.as_str(), &client_id, &defaults, &bucket],
    )
    .map_err(StoreError::query("recording the rebuilt bucket"))?;
    finish_departures(db, user, client_id, &[bucket.to_string()])
}

/// The device is brought in line with `subscriptions` as a whole (the first page of a
/// snapshot): `bucket_subs` becomes them, departures end, checkpoint rows of other buckets go
/// and missing ones start at 0 (the snapshot's last page raises them).
pub fn hold_exactly(
    db: &mut impl GenericClient,
    user: &UserId,
    client_id: &str,
    subscriptions: &[String],
) -> Result<(), StoreError> {
    let mut tx = db.transaction().map_err(StoreError::query("resetting subscriptions"))?;
    tx.execute(
        "UPDATE sync_clients SET bucket_subs = $3, updated_at = now() WHERE user_id = $1 AND client_id = $2",
        &[&user.as_str(), &client_id, &subscriptions],
    )
    .map_err(StoreError::query("resetting subscriptions"))?;
    tx.execute("DELETE FROM synchro_departures WHERE user_id = $1 AND client_id = $2", &[&user.as_str(), &client_id])
        .map_err(StoreError::query("resetting departures"))?;
    tx.execute(
        "DELETE FROM sync_client_checkpoints WHERE user_id = $1 AND client_id = $2 AND bucket_id <> ALL ($3::text[])",
        &[&user.as_str(), &client_id, &subscriptions],
    )
    .map_err(StoreError::query("resetting bucket checkpoints"))?;
    tx.execute(
        "INSERT INTO sync_client_checkpoints (user_id, client_id, bucket_id, checkpoint) \
         SELECT $1, $2, b, 0 FROM unnest($3::text[]) AS b ON CONFLICT DO NOTHING",
        &[&user.as_str(), &client_id, &subscriptions],
    )
    .map_err(StoreError::query("creating bucket checkpoints"))?;
    tx.commit().map_err(StoreError::query("resetting subscriptions"))?;
    Ok(())
}
