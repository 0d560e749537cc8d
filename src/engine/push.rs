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
use postgres::Transaction;
use serde_json::{Map, Value};

use super::pull::{to_record, Hydrated};
use super::snapshot::scope_predicate;
use super::{CatalogState, Engine, EngineError};
use crate::protocol::{PushRecord, PushRequest, PushResponse, PushResult, Record};
use crate::registry::{quote_ident, Column, LogicalType, Registry, SyncTable};
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
/// 22, 23, and insufficient privilege 42501 from RLS) are terminal, everything else retryable.
fn sql_failure(e: &postgres::Error, reason: &'static str, message: &'static str) -> Outcome {
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    let detail = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    if code.starts_with("22") || code.starts_with("23") || code == "42501" {
        Outcome::terminal(reason, format!("{message}: {detail}"))
    } else {
        Outcome::rejected("rejected_retryable", reason, message)
    }
}

/// The current row as seen by this transaction.
struct Existing {
    json: String,
    updated_at: Option<SystemTime>,
    deleted_at: Option<SystemTime>,
    in_scope: bool,
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
    /// Decodes, pushes and serialises (the HTTP path).
    pub fn push_json(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, EngineError> {
        let req = PushRequest::decode(body)?;
        let resp = self.push(user, &req)?;
        super::to_json(&resp, "the push response")
    }

    /// Applies a batch of client changes in one transaction.
    pub fn push(&self, user: &UserId, req: &PushRequest) -> Result<PushResponse, EngineError> {
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
        for rec in &req.changes {
            tx.batch_execute("SAVEPOINT synchro_record").map_err(StoreError::query("creating a savepoint"))?;
            let outcome = match apply_record(
                &mut tx,
                &cat,
                user,
                rec,
                self.settings.resolver.as_ref(),
                self.settings.hooks.as_ref(),
            ) {
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
                    sql_failure(&e, reason.0, reason.1)
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

fn lookup(
    tx: &mut Transaction<'_>,
    registry: &Registry,
    t: &SyncTable,
    user: &UserId,
    id: &str,
) -> Result<Option<Existing>, postgres::Error> {
    let pk_type = t.column(&t.pk).map(|c| c.db_type.as_str()).unwrap_or("text");
    let ts = |c: Option<&str>| c.map(|c| format!("t.{}", quote_ident(c))).unwrap_or("NULL::timestamptz".into());
    let sql = format!(
        "SELECT row_to_json(t.*)::text, ({})::timestamptz, ({})::timestamptz, {} FROM {} t WHERE t.{} = $2::text::{pk_type}",
        ts(t.updated_at.real()),
        ts(t.deleted_at.real()),
        scope_predicate(registry, t),
        t.qualified(),
        quote_ident(&t.pk),
    );
    let row = tx.query_opt(&sql, &[&user.as_str(), &id])?;
    Ok(row.map(|r| Existing { json: r.get(0), updated_at: r.get(1), deleted_at: r.get(2), in_scope: r.get(3) }))
}

fn server_version(t: &SyncTable, id: &str, e: &Existing, with_deleted: bool) -> Option<Record> {
    let row = Hydrated {
        data: e.json.clone(),
        updated_at: e.updated_at,
        deleted_at: if with_deleted { e.deleted_at } else { None },
    };
    to_record(&t.name, id.to_string(), row, None, None, false).ok()
}

fn in_scope_after(
    tx: &mut Transaction<'_>,
    registry: &Registry,
    t: &SyncTable,
    user: &UserId,
    id: &str,
) -> Result<bool, postgres::Error> {
    let pk_type = t.column(&t.pk).map(|c| c.db_type.as_str()).unwrap_or("text");
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} t WHERE t.{} = $2::text::{pk_type} AND {})",
        t.qualified(),
        quote_ident(&t.pk),
        scope_predicate(registry, t)
    );
    Ok(tx.query_one(&sql, &[&user.as_str(), &id])?.get(0))
}

/// The columns a write may set from `data` (§7.7), as `(column, text value)`.
fn writable(
    t: &SyncTable,
    data: &Map<String, Value>,
    insert: bool,
    owner_value: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    for c in &t.columns {
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
        if Some(c.name.as_str()) == t.owner.as_deref() {
            // stamp-owner on create, owner immutable on update.
            if let (true, Some(v)) = (insert, owner_value) {
                out.push((c.name.clone(), Some(v.to_string())));
            }
            continue;
        }
        if let Some(v) = data.get(&c.name) {
            out.push((c.name.clone(), to_sql_text(c, v)?));
        }
    }
    Ok(out)
}

fn apply_record(
    tx: &mut Transaction<'_>,
    cat: &CatalogState,
    user: &UserId,
    rec: &PushRecord,
    resolver: &dyn ConflictResolver,
    hooks: &dyn super::Hooks,
) -> Result<Outcome, postgres::Error> {
    let Some(t) = cat.registry.table(&rec.table_name) else {
        return Ok(Outcome::terminal("table_not_registered", "table not registered for sync"));
    };
    if !matches!(rec.operation.as_str(), "create" | "update" | "delete") {
        return Ok(Outcome::terminal("invalid_operation", format!("unknown operation: {}", rec.operation)));
    }
    if t.read_only {
        return Ok(Outcome::terminal("table_read_only", "table is read-only"));
    }
    if let Err(why) = hooks.authorize(user, rec) {
        return Ok(Outcome::terminal("ownership_violation", why));
    }
    let existing = match lookup(tx, &cat.registry, t, user, &rec.id) {
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
            Some(e) if e.deleted_at.is_none() || t.deleted_at.real().is_none() => {
                let sv = if e.in_scope { server_version(t, &rec.id, &e, false) } else { None };
                Ok(Outcome::conflict("record_exists", "record already exists", sv))
            }
            // Resurrection of a soft-deleted row: only its owner may (C14).
            Some(e) => {
                if !e.in_scope {
                    return Ok(Outcome::terminal("ownership_violation", "ownership violation"));
                }
                update_row(tx, cat, t, user, rec, data, &e, resolver, true)
            }
            None => {
                let Some(data) = data else { return Ok(Outcome::terminal("invalid_data", "invalid data format")) };
                let mut data = data.clone();
                data.insert(t.pk.clone(), Value::String(rec.id.clone()));
                let mut cols = match writable(t, &data, true, Some(user.as_str())) {
                    Ok(c) => c,
                    Err(why) => return Ok(Outcome::terminal("invalid_data", why)),
                };
                let mut extra = Vec::new();
                if let Some(u) = t.updated_at.real() {
                    extra.push((u.to_string(), "now()".to_string()));
                }
                cols.retain(|(c, _)| !extra.iter().any(|(e, _)| e == c));
                let mut names: Vec<String> = Vec::new();
                let mut values: Vec<String> = Vec::new();
                let mut params: Vec<Option<String>> = Vec::new();
                for (c, v) in &cols {
                    let ty = t.column(c).map(|c| c.db_type.clone()).unwrap_or_else(|| "text".into());
                    names.push(quote_ident(c));
                    params.push(v.clone());
                    values.push(format!("${}::text::{ty}", params.len()));
                }
                for (c, expr) in &extra {
                    names.push(quote_ident(c));
                    values.push(expr.clone());
                }
                let returning = t
                    .updated_at
                    .real()
                    .map(|u| format!(" RETURNING {}::timestamptz", quote_ident(u)))
                    .unwrap_or_default();
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({}){returning}",
                    t.qualified(),
                    names.join(", "),
                    values.join(", ")
                );
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
                let rows = tx.query(&sql, &refs)?;
                if !in_scope_after(tx, &cat.registry, t, user, &rec.id)? {
                    // A child row under someone else's parent.
                    return Ok(Outcome::terminal("ownership_violation", "ownership violation"));
                }
                let mut o = Outcome::applied();
                o.server_updated_at = rows.first().and_then(|r| r.get(0));
                Ok(o)
            }
        },
        "update" => {
            let Some(e) = existing else { return Ok(Outcome::terminal("record_not_found", "record not found")) };
            if !e.in_scope {
                return Ok(Outcome::terminal("ownership_violation", "ownership violation"));
            }
            if e.deleted_at.is_some() {
                return Ok(Outcome::conflict(
                    "record_deleted",
                    "record is deleted",
                    server_version(t, &rec.id, &e, true),
                ));
            }
            update_row(tx, cat, t, user, rec, data, &e, resolver, false)
        }
        _ => {
            let Some(e) = existing else {
                return Ok(if t.deleted_at.real().is_some() {
                    Outcome::terminal("record_not_found", "record not found or not accessible")
                } else {
                    Outcome {
                        reason: Some("already_deleted"),
                        message: Some("record already deleted".into()),
                        ..Outcome::applied()
                    }
                });
            };
            if !e.in_scope {
                return Ok(Outcome::terminal("ownership_violation", "ownership violation"));
            }
            let pk_type = t.column(&t.pk).map(|c| c.db_type.as_str()).unwrap_or("text");
            match t.deleted_at.real() {
                Some(col) => {
                    if e.deleted_at.is_some() {
                        return Ok(Outcome {
                            reason: Some("already_deleted"),
                            message: Some("record already deleted".into()),
                            ..Outcome::applied()
                        });
                    }
                    let set_updated =
                        t.updated_at.real().map(|u| format!(", {} = now()", quote_ident(u))).unwrap_or_default();
                    let sql = format!(
                        "UPDATE {} SET {c} = now(){set_updated} WHERE {} = $1::text::{pk_type} RETURNING {c}::timestamptz",
                        t.qualified(),
                        quote_ident(&t.pk),
                        c = quote_ident(col)
                    );
                    let row = tx.query_opt(&sql, &[&rec.id])?;
                    let mut o = Outcome::applied();
                    o.server_deleted_at = row.and_then(|r| r.get(0));
                    Ok(o)
                }
                None => {
                    let sql =
                        format!("DELETE FROM {} WHERE {} = $1::text::{pk_type}", t.qualified(), quote_ident(&t.pk));
                    let n = tx.execute(&sql, &[&rec.id])?;
                    Ok(if n == 0 {
                        Outcome {
                            reason: Some("already_deleted"),
                            message: Some("record already deleted".into()),
                            ..Outcome::applied()
                        }
                    } else {
                        Outcome::applied()
                    })
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn update_row(
    tx: &mut Transaction<'_>,
    cat: &CatalogState,
    t: &SyncTable,
    user: &UserId,
    rec: &PushRecord,
    data: Option<&Map<String, Value>>,
    e: &Existing,
    resolver: &dyn ConflictResolver,
    resurrect: bool,
) -> Result<Outcome, postgres::Error> {
    if t.updated_at.real().is_some() {
        let client = rec.client_updated_at.as_deref().and_then(parse_client_timestamp);
        let base = rec.base_updated_at.as_deref().and_then(parse_client_timestamp);
        if let Err(why) = resolver.resolve(e.updated_at, client, base) {
            return Ok(Outcome::conflict("server_won_conflict", why, server_version(t, &rec.id, e, false)));
        }
    }
    let Some(data) = data else { return Ok(Outcome::terminal("invalid_data", "invalid data format")) };
    let cols = match writable(t, data, false, None) {
        Ok(c) => c,
        Err(why) => return Ok(Outcome::terminal("invalid_data", why)),
    };
    let pk_type = t.column(&t.pk).map(|c| c.db_type.as_str()).unwrap_or("text");
    let mut sets: Vec<String> = Vec::new();
    let mut params: Vec<Option<String>> = vec![Some(rec.id.clone())];
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
    let returning =
        t.updated_at.real().map(|u| format!(" RETURNING {}::timestamptz", quote_ident(u))).unwrap_or_default();
    let sql = format!(
        "UPDATE {} SET {} WHERE {} = $1::text::{pk_type}{returning}",
        t.qualified(),
        sets.join(", "),
        quote_ident(&t.pk)
    );
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
    let rows = tx.query(&sql, &refs)?;
    if !in_scope_after(tx, &cat.registry, t, user, &rec.id)? {
        return Ok(Outcome::terminal("ownership_violation", "ownership violation"));
    }
    o.server_updated_at = rows.first().and_then(|r| r.get(0));
    Ok(o)
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
