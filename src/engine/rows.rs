//! Reading synced rows for a client. Every statement that reads a row of a synced table on a
//! client's behalf is built here, and each one reads, in the same statement and so on the same
//! row version:
//!
//! * the row as clients receive it, [`SyncTable::row_json_sql`] (`row_to_json` without the
//!   excluded columns, which never leave the server), and
//! * whether the row is in the caller's scope, [`scope::row_predicate`].
//!
//! SQL identifiers come from the registry, quoted; the user id and keys are bound parameters.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use postgres::types::Type;
use postgres::GenericClient;
use serde_json::value::RawValue;

use super::scope::{self, Access};
use crate::checksum::record_checksum;
use crate::protocol::Record;
use crate::registry::{quote_ident, Registry, SyncTable};
use crate::store::pool::{StatementCache, StoreError};
use crate::time::format_timestamp;
use crate::types::UserId;

/// A row as read for a client.
pub(crate) struct Hydrated {
    /// The served JSON object ([`SyncTable::row_json_sql`]).
    pub data: String,
    /// The updated-at column, when the table has it.
    pub updated_at: Option<SystemTime>,
    /// The deleted-at column, when the table has it.
    pub deleted_at: Option<SystemTime>,
    /// Whether the row is in the caller's read scope.
    pub in_scope: bool,
}

/// A scope column of `row`: true only when it is `true` (a predicate is never NULL, but a
/// row a client may not see must not become visible if one were).
pub(crate) fn is_true(row: &postgres::Row, column: usize) -> bool {
    row.get::<_, Option<bool>>(column).unwrap_or(false)
}

/// The primary key's type, for comparing keys in their own type (so its index is used).
pub(crate) fn pk_type(table: &SyncTable) -> &str {
    table.column(&table.pk).map(|c| c.db_type.as_str()).unwrap_or("text")
}

/// A timestamp column of `t` as `timestamptz`, or a typed NULL when the table lacks it.
fn timestamp(column: Option<&str>) -> String {
    column.map(|c| format!("t.{}", quote_ident(c))).unwrap_or_else(|| "NULL".into())
}

/// Reads the current rows of `ids` in one query, each with whether it is in `user`'s scope
/// (RLS applies in the caller's transaction). Rows that no longer exist are absent.
pub(crate) fn hydrate(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    registry: &Registry,
    table: &SyncTable,
    user: &UserId,
    ids: &[String],
) -> Result<HashMap<String, Hydrated>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT t.{pk}::text, {json}::text, ({u})::timestamptz, ({d})::timestamptz, {scope} \
         FROM {q} t WHERE t.{pk} = ANY ($2::text[]::{ty}[])",
        pk = quote_ident(&table.pk),
        json = table.row_json_sql("t"),
        u = timestamp(table.updated_at.real()),
        d = timestamp(table.deleted_at.real()),
        scope = scope::row_predicate(registry, table, Access::Read),
        q = table.qualified(),
        ty = pk_type(table),
    );
    let rows = cache
        .query(db, &sql, &[(&user.as_str(), Type::TEXT), (&ids, Type::TEXT_ARRAY)])
        .map_err(StoreError::query(format!("reading changed rows of {}", table.name)))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = Hydrated { data: r.get(1), updated_at: r.get(2), deleted_at: r.get(3), in_scope: is_true(&r, 4) };
            (r.get(0), row)
        })
        .collect())
}

/// The keys among `ids` whose rows exist, are live (not soft-deleted) and are in `user`'s read
/// scope, in one query: the rows a device may keep when it leaves a bucket.
pub(crate) fn visible(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    registry: &Registry,
    table: &SyncTable,
    user: &UserId,
    ids: &[String],
) -> Result<HashSet<String>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT t.{pk}::text FROM {q} t WHERE t.{pk} = ANY ($2::text[]::{ty}[]) AND {scope}{live}",
        pk = quote_ident(&table.pk),
        q = table.qualified(),
        ty = pk_type(table),
        scope = scope::row_predicate(registry, table, Access::Read),
        live = table.deleted_at.real().map(|c| format!(" AND t.{} IS NULL", quote_ident(c))).unwrap_or_default(),
    );
    let rows = cache
        .query(db, &sql, &[(&user.as_str(), Type::TEXT), (&ids, Type::TEXT_ARRAY)])
        .map_err(StoreError::query(format!("checking the scope of rows of {}", table.name)))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Up to `limit` live rows of `table` in `user`'s scope with keys after `after` (`""`: from
/// the start), in key order: one snapshot page.
pub(crate) fn page(
    db: &mut impl GenericClient,
    registry: &Registry,
    table: &SyncTable,
    user: &UserId,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Hydrated)>, postgres::Error> {
    let pk = quote_ident(&table.pk);
    let live = table.deleted_at.real().map(|c| format!(" AND t.{} IS NULL", quote_ident(c))).unwrap_or_default();
    // Keyset pagination in the key's own type, so the primary key index serves it.
    let sql = format!(
        "SELECT t.{pk}::text, {json}::text, ({u})::timestamptz FROM {q} t \
         WHERE ($2::text = '' OR t.{pk} > $2::text::{ty}) AND {scope}{live} ORDER BY t.{pk} LIMIT $3",
        json = table.row_json_sql("t"),
        u = timestamp(table.updated_at.real()),
        q = table.qualified(),
        ty = pk_type(table),
        scope = scope::row_predicate(registry, table, Access::Read),
    );
    let rows = db.query(&sql, &[&user.as_str(), &after, &limit])?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), Hydrated { data: r.get(1), updated_at: r.get(2), deleted_at: None, in_scope: true }))
        .collect())
}

/// A row as a push transaction sees it before writing.
pub(crate) struct Existing {
    /// The row as clients receive it.
    pub row: Hydrated,
    /// Whether the user may change it ([`Access::Write`]).
    pub writable: bool,
}

/// What a push lookup reads of a row, in one place for [`lookup`] and [`lookup_many`]: the
/// served JSON, both timestamps, and whether the row is in the user's read and write scopes.
fn existing_columns(registry: &Registry, table: &SyncTable, write: Access) -> String {
    format!(
        "{json}::text, ({u})::timestamptz, ({d})::timestamptz, {read}, {write}",
        json = table.row_json_sql("t"),
        u = timestamp(table.updated_at.real()),
        d = timestamp(table.deleted_at.real()),
        read = scope::row_predicate(registry, table, Access::Read),
        write = scope::row_predicate(registry, table, write),
    )
}

/// The [`existing_columns`] of `r` starting at column `at`.
fn existing(r: &postgres::Row, at: usize) -> Existing {
    Existing {
        row: Hydrated {
            data: r.get(at),
            updated_at: r.get(at + 1),
            deleted_at: r.get(at + 2),
            in_scope: is_true(r, at + 3),
        },
        writable: is_true(r, at + 4),
    }
}

/// The row `id` of `table` as this transaction sees it, with both scopes.
pub(crate) fn lookup(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    registry: &Registry,
    table: &SyncTable,
    user: &UserId,
    id: &str,
    write: Access,
) -> Result<Option<Existing>, postgres::Error> {
    let sql = format!(
        "SELECT {columns} FROM {q} t WHERE t.{pk} = $2::text::{ty}",
        columns = existing_columns(registry, table, write),
        q = table.qualified(),
        pk = quote_ident(&table.pk),
        ty = pk_type(table),
    );
    let rows = cache.query(db, &sql, &[(&user.as_str(), Type::TEXT), (&id, Type::TEXT)])?;
    Ok(rows.first().map(|r| existing(r, 0)))
}

/// [`lookup`] for many ids in one statement: for each id, in order, its key as the table
/// renders it (`pk::text` of the id read as the key's type: two spellings of one uuid give the
/// same key) and the row, if it exists. An id that is not valid for the key's type fails the
/// statement.
pub(crate) fn lookup_many(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    registry: &Registry,
    table: &SyncTable,
    user: &UserId,
    ids: &[&str],
    write: Access,
) -> Result<Vec<(String, Option<Existing>)>, postgres::Error> {
    let sql = format!(
        "SELECT (v.id::{ty})::text, t.{pk} IS NOT NULL, {columns} \
         FROM unnest($2::text[]) WITH ORDINALITY AS v(id, ord) LEFT JOIN {q} t ON t.{pk} = v.id::{ty} \
         ORDER BY v.ord",
        columns = existing_columns(registry, table, write),
        q = table.qualified(),
        pk = quote_ident(&table.pk),
        ty = pk_type(table),
    );
    let rows = cache.query(db, &sql, &[(&user.as_str(), Type::TEXT), (&ids, Type::TEXT_ARRAY)])?;
    Ok(rows.iter().map(|r| (r.get(0), r.get::<_, bool>(1).then(|| existing(r, 2)))).collect())
}

/// A Record from a read row. `changed_at` is when the change was recorded: the record's
/// `updated_at` never goes below it, so SDKs that already hold the row apply changes made by
/// writers that did not bump the updated-at column (or tables without one).
pub(crate) fn to_record(
    table: &str,
    id: String,
    row: Hydrated,
    changed_at: Option<SystemTime>,
    bucket: Option<String>,
    with_checksum: bool,
) -> Result<Record, StoreError> {
    let updated = match (row.updated_at, changed_at) {
        (Some(u), Some(c)) => u.max(c),
        (Some(u), None) => u,
        (None, Some(c)) => c,
        (None, None) => SystemTime::now(),
    };
    let checksum = with_checksum.then(|| record_checksum(&row.data));
    let data = RawValue::from_string(row.data)
        .map_err(|e| StoreError::Corrupt { detail: format!("row_to_json of {table} is not JSON: {e}") })?;
    Ok(Record {
        id,
        table_name: table.to_string(),
        bucket_id: bucket,
        data,
        updated_at: format_timestamp(updated),
        deleted_at: row.deleted_at.map(format_timestamp),
        checksum,
    })
}
