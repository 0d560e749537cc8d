//! POST /sync/push (§7) with the fixes of Appendix C: a SAVEPOINT per record so one bad record
//! never sinks the others (C3), lenient timestamps (C4), JSON-text and array values for json and
//! array columns and hex/base64 for bytea (C5), `updated_at = now()` on every write (C2), and
//! the owner verified on resurrection (C14).
//!
//! SQL identifiers come from the registry only; every value is a bound text parameter cast to
//! the column's type by PostgreSQL, so a wrong type is a per-record rejection, never a 500.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use postgres::error::{DbError, SqlState};
use postgres::Transaction;
use serde_json::{Map, Value};

use super::rows::{self, is_true, pk_type, to_record, Existing, Hydrated};
use super::scope::{self, Access};
use super::{CatalogState, Engine, EngineError};
use crate::protocol::{PushRecord, PushRequest, PushResponse, PushResult, Record};
use crate::registry::{quote_ident, Column, LogicalType, SyncTable};
use crate::store::clients;
use crate::store::pool::StoreError;
use crate::time::{format_timestamp, parse_client_timestamp};
use crate::types::UserId;

/// The outcome of one record.
struct Outcome {
    status: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
    server_version: Option<Record>,
    server_updated_at: Option<SystemTime>,
    server_deleted_at: Option<SystemTime>,
}

impl Outcome {
    fn applied() -> Outcome {
        Outcome {
            status: "applied",
            reason: None,
            message: None,
            server_version: None,
            server_updated_at: None,
            server_deleted_at: None,
        }
    }

    fn rejected(status: &'static str, reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome { status, reason: Some(reason), message: Some(message.into()), ..Outcome::applied() }
    }

    fn terminal(reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome::rejected("rejected_terminal", reason, message)
    }

    fn conflict(reason: &'static str, message: impl Into<String>, server_version: Option<Record>) -> Outcome {
        Outcome { server_version, ..Outcome::rejected("conflict", reason, message) }
    }
}

/// A database error inside a record, classified per C3: data and integrity errors (classes
/// 22 and 23) are terminal, a refusal by row-level security (42501) is an
/// `ownership_violation`, everything else retryable.
/// The client's message says what was wrong in terms of its own data ([`describe`]); the
/// database's full text, with its relation and constraint names, is logged at debug level
/// (with the request id).
fn sql_failure(
    e: &postgres::Error,
    t: &SyncTable,
    rec: &PushRecord,
    reason: &'static str,
    message: &'static str,
) -> Outcome {
    let Some(db) = e.as_db_error() else {
        crate::debug!("push record failed", table = t.name.clone(), error = e.to_string());
        return Outcome::rejected("rejected_retryable", reason, message);
    };
    crate::debug!(
        "push record failed in the database",
        table = t.name.clone(),
        id = rec.id.chars().take(128).collect::<String>(),
        sqlstate = db.code().code(),
        error = db.message(),
        detail = db.detail().unwrap_or(""),
        constraint = db.constraint().unwrap_or(""),
    );
    let code = db.code().code();
    if code == "42501" {
        // Row-level security refused the row (PUSH_ROLE): an ownership question, whatever the
        // operation.
        return Outcome::terminal("ownership_violation", format!("ownership violation: {}", describe(db, t)));
    }
    if code.starts_with("22") || code.starts_with("23") {
        Outcome::terminal(reason, format!("{message}: {}", describe(db, t)))
    } else {
        Outcome::rejected("rejected_retryable", reason, message)
    }
}

/// A terminal database error in the client's terms: the column it concerns when PostgreSQL
/// names it (directly, in the key of the detail, or as the only column of a constraint named
/// the default way) and clients know it (not an excluded column), never a relation, constraint
/// or index name.
fn describe(db: &DbError, t: &SyncTable) -> String {
    let column = db
        .column()
        .filter(|c| is_served(t, c))
        .map(str::to_string)
        .or_else(|| key_columns(db.detail().unwrap_or(""), t))
        .or_else(|| constraint_column(db.constraint().unwrap_or(""), t));
    let subject = column.as_deref().unwrap_or("a value");
    match db.code() {
        c if *c == SqlState::NOT_NULL_VIOLATION => format!("{subject} must not be null"),
        c if *c == SqlState::UNIQUE_VIOLATION => format!("{subject} is already used by another record"),
        c if *c == SqlState::FOREIGN_KEY_VIOLATION => {
            if db.detail().is_some_and(|d| d.contains("is still referenced")) {
                "other records still refer to this record".to_string()
            } else {
                format!("{subject} refers to a record that does not exist")
            }
        }
        c if *c == SqlState::CHECK_VIOLATION => format!("{subject} is not allowed by the table's rules"),
        c if *c == SqlState::EXCLUSION_VIOLATION => format!("{subject} conflicts with another record"),
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => "the write is not allowed by row-level security".to_string(),
        // Data exceptions (class 22) name the type and the client's own value, nothing internal.
        c if c.code().starts_with("22") => db.message().to_string(),
        _ => "the record violates a rule of the table".to_string(),
    }
}

/// The columns of `Key (a, b)=(...)` in an error detail, when they are all columns of `t`
/// (not an expression of an index).
fn key_columns(detail: &str, t: &SyncTable) -> Option<String> {
    let rest = detail.strip_prefix("Key (")?;
    let columns = &rest[..rest.find(")=(")?];
    columns.split(", ").all(|c| is_served(t, c)).then(|| columns.to_string())
}

/// Whether `column` is a column of `t` that clients know (in the served schema).
fn is_served(t: &SyncTable, column: &str) -> bool {
    t.column(column).is_some_and(|c| !c.excluded)
}

/// The column of a constraint PostgreSQL named by default (`<table>_<column>_check`, `_key`,
/// `_fkey`, `_excl`), when that is a column of `t`.
fn constraint_column(constraint: &str, t: &SyncTable) -> Option<String> {
    let rest = constraint.strip_prefix(t.name.as_str())?.strip_prefix('_')?;
    let column = ["_check", "_key", "_fkey", "_excl"].iter().find_map(|s| rest.strip_suffix(s))?;
    is_served(t, column).then(|| column.to_string())
}

/// Converts one JSON value to the text PostgreSQL parses for `column` (C5); `Err` = invalid data.
fn to_sql_text(column: &Column, value: &Value) -> Result<Option<String>, String> {
    let logical = column.logical;
    let is_array = column.db_type.ends_with("[]");
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let text = n.to_string();
            match logical {
                // Integral values written as 12.0 are accepted for integer columns.
                Some(LogicalType::Int | LogicalType::Int64) if text.contains(['.', 'e', 'E']) => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(format!("{}", f as i64)),
                    _ => return Err(format!("{} expects an integer, got {text}", column.name)),
                },
                Some(LogicalType::Boolean) => match text.as_str() {
                    "0" | "1" => Some(text),
                    _ => return Err(format!("{} expects a boolean, got {text}", column.name)),
                },
                _ => Some(text),
            }
        }
        Value::String(s) if is_array && s.trim_start().starts_with('[') => {
            let parsed: Value = serde_json::from_str(s).map_err(|_| format!("{} expects a JSON array", column.name))?;
            Some(pg_array_literal(&parsed).ok_or_else(|| format!("{} expects a JSON array", column.name))?)
        }
        Value::String(s) if logical == Some(LogicalType::Bytes) => {
            if s.starts_with("\\x") {
                Some(s.clone())
            } else {
                let bytes =
                    STANDARD.decode(s).map_err(|_| format!("{} expects \\x-hex or base64 bytes", column.name))?;
                Some(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
            }
        }
        Value::String(s) => Some(s.clone()),
        Value::Array(_) if is_array => {
            Some(pg_array_literal(value).ok_or_else(|| format!("{} expects an array", column.name))?)
        }
        Value::Array(_) | Value::Object(_) if logical == Some(LogicalType::Json) => Some(value.to_string()),
        _ => return Err(format!("{} cannot take {value}", column.name)),
    })
}

/// A JSON array as a PostgreSQL array literal (`{"a","b c",NULL}`, nested for dimensions).
fn pg_array_literal(v: &Value) -> Option<String> {
    let Value::Array(items) = v else { return None };
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(_) => out.push_str(&pg_array_literal(item)?),
            Value::String(s) => out.push_str(&quote_element(s)),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Object(_) => out.push_str(&quote_element(&item.to_string())),
        }
    }
    out.push('}');
    Some(out)
}

fn quote_element(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Decides whether a client update wins over the server row (§7.9). `Err` carries the
/// `message` of the `server_won_conflict` result. Embedders plug in their own.
pub trait ConflictResolver: Send + Sync {
    /// `server`: the row's updated-at value; `client`: `client_updated_at`; `base`:
    /// `base_updated_at` (unparseable values arrive as `None`).
    fn resolve(
        &self,
        server: Option<SystemTime>,
        client: Option<SystemTime>,
        base: Option<SystemTime>,
    ) -> Result<(), String>;
}

/// The default: last writer wins, with a clock-skew tolerance added to the client's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriterWins {
    /// Added to `client_updated_at` before comparing.
    pub skew: Duration,
}

impl ConflictResolver for LastWriterWins {
    fn resolve(
        &self,
        server: Option<SystemTime>,
        client: Option<SystemTime>,
        base: Option<SystemTime>,
    ) -> Result<(), String> {
        last_writer_wins(server, client, base, self.skew).map_err(str::to_string)
    }
}

/// The server's row always wins an update (creates and deletes still apply).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerWins;

impl ConflictResolver for ServerWins {
    fn resolve(&self, _: Option<SystemTime>, _: Option<SystemTime>, _: Option<SystemTime>) -> Result<(), String> {
        Err("server always wins".into())
    }
}

/// Last-writer-wins (§7.9): `Ok` when the client wins, else the resolver's reason.
pub fn last_writer_wins(
    server: Option<SystemTime>,
    client: Option<SystemTime>,
    base: Option<SystemTime>,
    skew: Duration,
) -> Result<(), &'static str> {
    let server = server.unwrap_or(SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_800));
    let client = client.map(|c| c + skew);
    match base {
        Some(b) if b > server => Err("client base version is ahead of server version"),
        Some(b) if b == server => Ok(()),
        _ => match client {
            Some(c) if c > server => Ok(()),
            _ => Err("server version is newer"),
        },
    }
}

impl Engine {
    /// Applies a batch of client changes in one transaction.
    pub fn push(&self, user: &UserId, req: &PushRequest) -> Result<PushResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        clients::load(&mut ***dbs.store(), user, &req.client_id)?.ok_or(EngineError::ClientNotRegistered)?;
        // Pushes write the application database only; the client bookkeeping around them is in
        // the sync store (which may be the same database), outside this transaction.
        let mut tx = dbs.app().transaction().map_err(StoreError::query("starting the push"))?;
        tx.execute("SELECT set_config('app.user_id', $1, true)", &[&user.as_str()])
            .map_err(StoreError::query("setting app.user_id"))?;
        if let Some(role) = &self.settings.push_role {
            tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(role)))
                .map_err(StoreError::query("switching to PUSH_ROLE"))?;
        }
        let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
        let mut applied: Vec<&PushRecord> = Vec::new();
        let write = Access::Write { shared_rows_writable: self.shared_rows_writable };
        for rec in &req.changes {
            tx.batch_execute("SAVEPOINT synchro_record").map_err(StoreError::query("creating a savepoint"))?;
            let ctx = RecordContext {
                cat: &cat,
                user,
                write,
                resolver: self.settings.resolver.as_ref(),
                hooks: self.settings.hooks.as_ref(),
            };
            let outcome = match apply_record(&mut tx, &ctx, rec) {
                Ok(o) => o,
                Err(e) if e.is_closed() => {
                    return Err(EngineError::Store(StoreError::Query { context: "pushing".into(), source: e }))
                }
                Err(e) => {
                    let reason = match rec.operation.as_str() {
                        "create" => ("create_failed", "failed to create record"),
                        "update" => ("update_failed", "failed to update record"),
                        _ => ("delete_failed", "failed to delete record"),
                    };
                    match cat.registry.table(&rec.table_name) {
                        Some(t) => sql_failure(&e, t, rec, reason.0, reason.1),
                        None => Outcome::rejected("rejected_retryable", reason.0, reason.1),
                    }
                }
            };
            let keep = outcome.status == "applied";
            if outcome.status == "conflict" {
                self.settings.hooks.on_conflict(user, rec, outcome.reason.unwrap_or(""));
            }
            tx.batch_execute(if keep {
                "RELEASE SAVEPOINT synchro_record"
            } else {
                "ROLLBACK TO SAVEPOINT synchro_record"
            })
            .map_err(StoreError::query("closing a savepoint"))?;
            let result = PushResult {
                id: rec.id.clone(),
                table_name: rec.table_name.clone(),
                operation: rec.operation.clone(),
                status: outcome.status,
                reason_code: outcome.reason,
                message: outcome.message,
                server_version: outcome.server_version,
                server_updated_at: outcome.server_updated_at.map(format_timestamp),
                server_deleted_at: outcome.server_deleted_at.map(format_timestamp),
            };
            if keep {
                accepted.push(result);
                applied.push(rec);
            } else {
                rejected.push(result);
            }
        }
        if let Err(why) = self.settings.hooks.on_push_accepted(&mut tx, user, &applied) {
            // Dropping the transaction rolls every record back.
            return Err(EngineError::Hook(why));
        }
        tx.commit().map_err(StoreError::query("committing the push"))?;
        if let Err(e) = clients::touch_push(&mut ***dbs.store(), user, &req.client_id) {
            crate::warn!("recording the push time failed", error = e.to_string());
        }
        Ok(PushResponse {
            accepted,
            rejected,
            checkpoint: 0,
            server_time: format_timestamp(SystemTime::now()),
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }
}

/// What every record of one push shares.
struct RecordContext<'a> {
    cat: &'a CatalogState,
    user: &'a UserId,
    /// The write scope (`SHARED_ROWS_WRITABLE`).
    write: Access,
    resolver: &'a dyn ConflictResolver,
    hooks: &'a dyn super::Hooks,
}

fn server_version(t: &SyncTable, id: &str, e: &Existing, with_deleted: bool) -> Option<Record> {
    let row = Hydrated {
        data: e.row.data.clone(),
        updated_at: e.row.updated_at,
        deleted_at: if with_deleted { e.row.deleted_at } else { None },
        in_scope: e.row.in_scope,
    };
    to_record(&t.name, id.to_string(), row, None, None, false).ok()
}

/// The columns a write may set from `data` (§7.7), as `(column, text value)`. Excluded columns
/// are never written; the owner column is stamped on insert and immutable on update.
fn writable(
    t: &SyncTable,
    data: &Map<String, Value>,
    insert: bool,
    owner_value: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, String> {
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
        if let Some(v) = data.get(&c.name) {
            out.push((c.name.clone(), to_sql_text(c, v)?));
        }
    }
    Ok(out)
}

fn ownership_violation() -> Outcome {
    Outcome::terminal("ownership_violation", "ownership violation")
}

fn already_deleted() -> Outcome {
    Outcome { reason: Some("already_deleted"), message: Some("record already deleted".into()), ..Outcome::applied() }
}

/// Every write statement decides, in its own `RETURNING`, whether the row it wrote is in the
/// user's write scope ([`scope::row_predicate`]), so the decision is made on the version the
/// statement wrote: an owner transfer or re-parenting that committed after the lookup (the
/// statement waited for its row lock, then saw the new version) makes it false, and the record
/// is rolled back to its savepoint as an ownership violation. `$1` is the user in every
/// statement, `$2` the record id.
fn apply_record(
    tx: &mut Transaction<'_>,
    ctx: &RecordContext<'_>,
    rec: &PushRecord,
) -> Result<Outcome, postgres::Error> {
    let Some(t) = ctx.cat.registry.table(&rec.table_name) else {
        return Ok(Outcome::terminal("table_not_registered", "table not registered for sync"));
    };
    if !matches!(rec.operation.as_str(), "create" | "update" | "delete") {
        return Ok(Outcome::terminal("invalid_operation", format!("unknown operation: {}", rec.operation)));
    }
    if t.read_only {
        return Ok(Outcome::terminal("table_read_only", "table is read-only"));
    }
    if let Some(why) = rec.problem() {
        return Ok(Outcome::terminal("invalid_data", why));
    }
    if let Err(why) = ctx.hooks.authorize(ctx.user, rec) {
        return Ok(Outcome::terminal("ownership_violation", why));
    }
    let existing = match rows::lookup(tx, &ctx.cat.registry, t, ctx.user, &rec.id, ctx.write) {
        Ok(e) => e,
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
            return Ok(Outcome::terminal("invalid_data", format!("invalid record id for {}", t.name)))
        }
        Err(e) => return Err(e),
    };
    let data = match &rec.data {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    match rec.operation.as_str() {
        "create" => match existing {
            Some(e) if e.row.deleted_at.is_none() || t.deleted_at.real().is_none() => {
                let sv = if e.row.in_scope { server_version(t, &rec.id, &e, false) } else { None };
                Ok(Outcome::conflict("record_exists", "record already exists", sv))
            }
            // Resurrection of a soft-deleted row: only its owner may (C14).
            Some(e) => {
                if !e.writable {
                    return Ok(ownership_violation());
                }
                update_row(tx, ctx, t, rec, data, &e, true)
            }
            None => insert_row(tx, ctx, t, rec, data),
        },
        "update" => {
            let Some(e) = existing else { return Ok(Outcome::terminal("record_not_found", "record not found")) };
            if !e.writable {
                return Ok(ownership_violation());
            }
            if e.row.deleted_at.is_some() {
                return Ok(Outcome::conflict(
                    "record_deleted",
                    "record is deleted",
                    server_version(t, &rec.id, &e, true),
                ));
            }
            update_row(tx, ctx, t, rec, data, &e, false)
        }
        _ => {
            let Some(e) = existing else {
                return Ok(if t.deleted_at.real().is_some() {
                    Outcome::terminal("record_not_found", "record not found or not accessible")
                } else {
                    already_deleted()
                });
            };
            if !e.writable {
                return Ok(ownership_violation());
            }
            if t.deleted_at.real().is_some() && e.row.deleted_at.is_some() {
                return Ok(already_deleted());
            }
            delete_row(tx, ctx, t, rec)
        }
    }
}

fn insert_row(
    tx: &mut Transaction<'_>,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
    data: Option<&Map<String, Value>>,
) -> Result<Outcome, postgres::Error> {
    let Some(data) = data else { return Ok(Outcome::terminal("invalid_data", "invalid data format")) };
    let mut data = data.clone();
    data.insert(t.pk.clone(), Value::String(rec.id.clone()));
    let mut cols = match writable(t, &data, true, Some(ctx.user.as_str())) {
        Ok(c) => c,
        Err(why) => return Ok(Outcome::terminal("invalid_data", why)),
    };
    if let Some(u) = t.updated_at.real() {
        cols.retain(|(c, _)| c != u);
    }
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut params: Vec<Option<String>> = vec![Some(ctx.user.as_str().to_string())];
    for (c, v) in &cols {
        let ty = t.column(c).map(|c| c.db_type.clone()).unwrap_or_else(|| "text".into());
        names.push(quote_ident(c));
        params.push(v.clone());
        values.push(format!("${}::text::{ty}", params.len()));
    }
    if let Some(u) = t.updated_at.real() {
        names.push(quote_ident(u));
        values.push("now()".to_string());
    }
    let sql = format!(
        "INSERT INTO {} AS t ({}) VALUES ({}) RETURNING ({})::timestamptz, {}",
        t.qualified(),
        names.join(", "),
        values.join(", "),
        t.updated_at.real().map(|u| format!("t.{}", quote_ident(u))).unwrap_or_else(|| "NULL".into()),
        scope::row_predicate(&ctx.cat.registry, t, ctx.write),
    );
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
    let row = tx.query_one(&sql, &refs)?;
    if !is_true(&row, 1) {
        // A child row under someone else's parent (or under a shared one that is read-only).
        return Ok(ownership_violation());
    }
    let mut o = Outcome::applied();
    o.server_updated_at = row.get(0);
    Ok(o)
}

fn update_row(
    tx: &mut Transaction<'_>,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
    data: Option<&Map<String, Value>>,
    e: &Existing,
    resurrect: bool,
) -> Result<Outcome, postgres::Error> {
    if t.updated_at.real().is_some() {
        let client = rec.client_updated_at.as_deref().and_then(parse_client_timestamp);
        let base = rec.base_updated_at.as_deref().and_then(parse_client_timestamp);
        if let Err(why) = ctx.resolver.resolve(e.row.updated_at, client, base) {
            return Ok(Outcome::conflict("server_won_conflict", why, server_version(t, &rec.id, e, false)));
        }
    }
    let Some(data) = data else { return Ok(Outcome::terminal("invalid_data", "invalid data format")) };
    let cols = match writable(t, data, false, None) {
        Ok(c) => c,
        Err(why) => return Ok(Outcome::terminal("invalid_data", why)),
    };
    let mut sets: Vec<String> = Vec::new();
    let mut params: Vec<Option<String>> = vec![Some(ctx.user.as_str().to_string()), Some(rec.id.clone())];
    for (c, v) in &cols {
        let ty = t.column(c).map(|c| c.db_type.clone()).unwrap_or_else(|| "text".into());
        params.push(v.clone());
        sets.push(format!("{} = ${}::text::{ty}", quote_ident(c), params.len()));
    }
    if let Some(u) = t.updated_at.real() {
        sets.push(format!("{} = now()", quote_ident(u)));
    }
    if resurrect {
        if let Some(d) = t.deleted_at.real() {
            sets.push(format!("{} = NULL", quote_ident(d)));
        }
    }
    let mut o = Outcome::applied();
    if sets.is_empty() {
        return Ok(o);
    }
    let sql = format!(
        "UPDATE {} t SET {} WHERE t.{} = $2::text::{} RETURNING ({})::timestamptz, {}",
        t.qualified(),
        sets.join(", "),
        quote_ident(&t.pk),
        pk_type(t),
        t.updated_at.real().map(|u| format!("t.{}", quote_ident(u))).unwrap_or_else(|| "NULL".into()),
        scope::row_predicate(&ctx.cat.registry, t, ctx.write),
    );
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
    // No row: it was deleted since the lookup, or row-level security refused the write.
    let Some(row) = tx.query_opt(&sql, &refs)? else { return Ok(ownership_violation()) };
    if !is_true(&row, 1) {
        return Ok(ownership_violation());
    }
    o.server_updated_at = row.get(0);
    Ok(o)
}

/// A soft delete (`deleted_at = now()`) or, without a deleted-at column, a hard delete.
fn delete_row(
    tx: &mut Transaction<'_>,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
) -> Result<Outcome, postgres::Error> {
    let write = scope::row_predicate(&ctx.cat.registry, t, ctx.write);
    let (pk, ty) = (quote_ident(&t.pk), pk_type(t));
    let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&ctx.user.as_str(), &rec.id];
    match t.deleted_at.real() {
        Some(col) => {
            let set_updated = t.updated_at.real().map(|u| format!(", {} = now()", quote_ident(u))).unwrap_or_default();
            let sql = format!(
                "UPDATE {} t SET {c} = now(){set_updated} WHERE t.{pk} = $2::text::{ty} RETURNING t.{c}::timestamptz, {write}",
                t.qualified(),
                c = quote_ident(col)
            );
            let Some(row) = tx.query_opt(&sql, &params)? else { return Ok(ownership_violation()) };
            if !is_true(&row, 1) {
                return Ok(ownership_violation());
            }
            let mut o = Outcome::applied();
            o.server_deleted_at = row.get(0);
            Ok(o)
        }
        None => {
            let sql = format!("DELETE FROM {} t WHERE t.{pk} = $2::text::{ty} RETURNING {write}", t.qualified());
            match tx.query_opt(&sql, &params)? {
                None => Ok(already_deleted()),
                Some(row) if !is_true(&row, 0) => Ok(ownership_violation()),
                Some(_) => Ok(Outcome::applied()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    #[test]
    fn conflict_matrix() {
        let z = Duration::ZERO;
        assert_eq!(last_writer_wins(at(100), at(200), None, z), Ok(()), "client newer");
        assert_eq!(last_writer_wins(at(200), at(100), None, z), Err("server version is newer"));
        assert_eq!(
            last_writer_wins(at(100), at(100), None, z),
            Err("server version is newer"),
            "ties go to the server"
        );
        assert_eq!(last_writer_wins(at(100), at(95), None, Duration::from_secs(10)), Ok(()), "within skew");
        assert_eq!(last_writer_wins(at(100), at(50), at(100), z), Ok(()), "base equals server");
        assert_eq!(
            last_writer_wins(at(100), at(200), at(150), z),
            Err("client base version is ahead of server version")
        );
        assert_eq!(
            last_writer_wins(at(100), at(50), at(90), z),
            Err("server version is newer"),
            "stale base, older client"
        );
        assert_eq!(last_writer_wins(at(100), at(150), at(90), z), Ok(()), "stale base, newer client");
        assert_eq!(last_writer_wins(None, at(1), None, z), Ok(()), "NULL server: client wins without base");
        assert_eq!(last_writer_wins(None, at(1), at(1), z), Err("client base version is ahead of server version"));
        assert_eq!(last_writer_wins(at(100), None, None, z), Err("server version is newer"), "no client time");
        assert_eq!(ServerWins.resolve(at(1), at(100), None), Err("server always wins".to_string()));
        assert_eq!(LastWriterWins { skew: Duration::from_secs(10) }.resolve(at(100), at(95), None), Ok(()));
    }

    #[test]
    fn json_values_become_postgresql_text() {
        let col = |name: &str, db_type: &str, logical| Column {
            name: name.into(),
            db_type: db_type.into(),
            type_oid: crate::types::Oid(0),
            render_oid: crate::types::Oid(0),
            element_type: None,
            nullable: true,
            default_sql: String::new(),
            logical: Some(logical),
            excluded: false,
        };
        let int = col("n", "integer", LogicalType::Int);
        assert_eq!(to_sql_text(&int, &serde_json::json!(12.0)).unwrap(), Some("12".into()));
        assert_eq!(to_sql_text(&int, &serde_json::json!(12)).unwrap(), Some("12".into()));
        assert!(to_sql_text(&int, &serde_json::json!(12.5)).is_err());
        let arr = col("tags", "text[]", LogicalType::Json);
        assert_eq!(
            to_sql_text(&arr, &serde_json::json!(r#"["a","b \"c\"",null]"#)).unwrap(),
            Some(r#"{"a","b \"c\"",NULL}"#.into())
        );
        assert_eq!(to_sql_text(&arr, &serde_json::json!([[1, 2], [3, 4]])).unwrap(), Some("{{1,2},{3,4}}".into()));
        let bytes = col("b", "bytea", LogicalType::Bytes);
        assert_eq!(to_sql_text(&bytes, &serde_json::json!("\\x0102")).unwrap(), Some("\\x0102".into()));
        assert_eq!(to_sql_text(&bytes, &serde_json::json!("AQI=")).unwrap(), Some("\\x0102".into()));
        assert!(to_sql_text(&bytes, &serde_json::json!("!!")).is_err());
        let json = col("j", "jsonb", LogicalType::Json);
        assert_eq!(to_sql_text(&json, &serde_json::json!({"a": 1})).unwrap(), Some(r#"{"a":1}"#.into()));
        assert_eq!(to_sql_text(&json, &serde_json::json!("{\"a\":1}")).unwrap(), Some(r#"{"a":1}"#.into()));
        let b = col("done", "boolean", LogicalType::Boolean);
        assert_eq!(to_sql_text(&b, &serde_json::json!(1)).unwrap(), Some("1".into()));
        assert!(to_sql_text(&b, &serde_json::json!(2)).is_err());
        let text = col("t", "text", LogicalType::String);
        assert!(to_sql_text(&text, &serde_json::json!({"x": 1})).is_err());
        assert_eq!(to_sql_text(&text, &Value::Null).unwrap(), None);
    }
}
