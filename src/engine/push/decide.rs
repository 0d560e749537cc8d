//! What one record asks for (§7.4), decided in Rust: first from the record alone
//! ([`screen`]), then from the row as the push transaction sees it ([`decide`]). Both are pure,
//! so the set-based path and the per-record path reach the same decision for the same row.

use serde_json::{Map, Value};

use super::outcome::{already_deleted, ownership_violation, server_version, Outcome};
use super::values::to_sql_text;
use super::RecordContext;
use crate::engine::rows::Existing;
use crate::protocol::PushRecord;
use crate::registry::SyncTable;
use crate::time::parse_client_timestamp;

/// A column a write sets, and its value as text for PostgreSQL to parse (`None` = NULL).
pub(super) type ColumnValue = (String, Option<String>);

/// A write one record asks for. Every write also sets the updated-at column to `now()` (C2).
#[derive(Debug)]
pub(super) enum Write {
    /// An INSERT of these columns (the primary key and the stamped owner among them).
    Insert(Vec<ColumnValue>),
    /// An UPDATE of these columns; `resurrect` also clears the deleted-at column (a create on
    /// a soft-deleted row).
    Update { columns: Vec<ColumnValue>, resurrect: bool },
    /// A soft delete (`deleted_at = now()`) or, without a deleted-at column, a hard delete.
    Delete,
}

/// What [`decide`] concluded.
#[derive(Debug)]
pub(super) enum Decision {
    /// The outcome, with nothing to write.
    Done(Outcome),
    /// The write to run; its outcome depends on what the statement returns.
    Write(Write),
}

/// The checks that need no database, in the contract's order (§7.4 prelude, then the record's
/// own strings, then the embedder's hook): the table the record goes on to the database with,
/// or its outcome.
pub(super) fn screen<'c>(ctx: &RecordContext<'c>, rec: &PushRecord) -> Result<&'c SyncTable, Outcome> {
    let Some(t) = ctx.cat.registry.table(&rec.table_name) else {
        return Err(Outcome::terminal("table_not_registered", "table not registered for sync"));
    };
    if !matches!(rec.operation.as_str(), "create" | "update" | "delete") {
        return Err(Outcome::terminal("invalid_operation", format!("unknown operation: {}", rec.operation)));
    }
    if t.read_only {
        return Err(Outcome::terminal("table_read_only", "table is read-only"));
    }
    if let Some(why) = rec.problem() {
        return Err(Outcome::terminal("invalid_data", why));
    }
    if let Err(why) = ctx.hooks.authorize(ctx.user, rec) {
        return Err(Outcome::terminal("ownership_violation", why));
    }
    Ok(t)
}

/// The decision for a screened record given `existing`, its row as the transaction sees it
/// (`None`: no such row, or row-level security hides it).
pub(super) fn decide(
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
    existing: Option<&Existing>,
) -> Decision {
    let data = match &rec.data {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let soft_deletes = t.deleted_at.real().is_some();
    match rec.operation.as_str() {
        "create" => match existing {
            Some(e) if e.row.deleted_at.is_none() || !soft_deletes => {
                let sv = if e.row.in_scope { server_version(t, &rec.id, e, false) } else { None };
                Decision::Done(Outcome::conflict("record_exists", "record already exists", sv))
            }
            // Resurrection of a soft-deleted row: only its owner may (C14).
            Some(e) if !e.writable => Decision::Done(ownership_violation()),
            Some(e) => update(ctx, t, rec, data, e, true),
            None => insert(ctx, t, rec, data),
        },
        "update" => match existing {
            None => Decision::Done(Outcome::terminal("record_not_found", "record not found")),
            Some(e) if !e.writable => Decision::Done(ownership_violation()),
            Some(e) if e.row.deleted_at.is_some() => Decision::Done(Outcome::conflict(
                "record_deleted",
                "record is deleted",
                server_version(t, &rec.id, e, true),
            )),
            Some(e) => update(ctx, t, rec, data, e, false),
        },
        _ => match existing {
            None if soft_deletes => {
                Decision::Done(Outcome::terminal("record_not_found", "record not found or not accessible"))
            }
            None => Decision::Done(already_deleted()),
            Some(e) if !e.writable => Decision::Done(ownership_violation()),
            Some(e) if soft_deletes && e.row.deleted_at.is_some() => Decision::Done(already_deleted()),
            Some(_) => Decision::Write(Write::Delete),
        },
    }
}

fn insert(ctx: &RecordContext<'_>, t: &SyncTable, rec: &PushRecord, data: Option<&Map<String, Value>>) -> Decision {
    let Some(data) = data else { return Decision::Done(Outcome::terminal("invalid_data", "invalid data format")) };
    // The key is the record's id, whatever `data` says (§7.4 create step 4).
    let id = Value::String(rec.id.clone());
    let mut columns = match writable(t, data, Some((&t.pk, &id)), Some(ctx.user.as_str())) {
        Ok(c) => c,
        Err(why) => return Decision::Done(Outcome::terminal("invalid_data", why)),
    };
    if let Some(u) = t.updated_at.real() {
        columns.retain(|(c, _)| c != u);
    }
    Decision::Write(Write::Insert(columns))
}

fn update(
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
    data: Option<&Map<String, Value>>,
    e: &Existing,
    resurrect: bool,
) -> Decision {
    if t.updated_at.real().is_some() {
        let client = rec.client_updated_at.as_deref().and_then(parse_client_timestamp);
        let base = rec.base_updated_at.as_deref().and_then(parse_client_timestamp);
        if let Err(why) = ctx.resolver.resolve(e.row.updated_at, client, base) {
            return Decision::Done(Outcome::conflict("server_won_conflict", why, server_version(t, &rec.id, e, false)));
        }
    }
    let Some(data) = data else { return Decision::Done(Outcome::terminal("invalid_data", "invalid data format")) };
    let columns = match writable(t, data, None, None) {
        Ok(c) => c,
        Err(why) => return Decision::Done(Outcome::terminal("invalid_data", why)),
    };
    let clears_deleted = resurrect && t.deleted_at.real().is_some();
    if columns.is_empty() && t.updated_at.real().is_none() && !clears_deleted {
        // Nothing to set: no statement runs (§7.4 update step 6).
        return Decision::Done(Outcome::applied());
    }
    Decision::Write(Write::Update { columns, resurrect })
}

/// The columns a write may set from `data` (§7.7), as `(column, text value)` in the table's
/// column order. Excluded columns are never written; the owner column is stamped on insert and
/// immutable on update. An insert passes its key (`key`: the column and the value that
/// replaces whatever `data` holds for it).
fn writable(
    t: &SyncTable,
    data: &Map<String, Value>,
    key: Option<(&str, &Value)>,
    owner_value: Option<&str>,
) -> Result<Vec<ColumnValue>, String> {
    let insert = key.is_some();
    let mut out = Vec::new();
    for c in &t.columns {
        if Some(c.name.as_str()) == t.owner.as_deref() {
            if let (true, Some(v)) = (insert, owner_value) {
                out.push((c.name.clone(), Some(v.to_string())));
            }
            continue;
        }
        if c.excluded {
            continue;
        }
        let allowed = if insert {
            !t.is_protected(&c.name) || c.name == t.pk || t.is_fk_column(&c.name)
        } else {
            !t.is_protected(&c.name)
        };
        if !allowed {
            continue;
        }
        let value = match key {
            Some((k, v)) if k == c.name => Some(v),
            _ => data.get(&c.name),
        };
        if let Some(v) = value {
            out.push((c.name.clone(), to_sql_text(c, v)?));
        }
    }
    Ok(out)
}
