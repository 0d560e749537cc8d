//! pgoutput messages -> [`WalEvent`]s for the changelog writer.
//!
//! The decoder keeps the relation cache: pgoutput sends a Relation message before the first
//! change of a relation in a session and again after its definition changed (`ALTER TABLE ...`),
//! so the cache follows schema changes mid-stream. Only relations whose schema-qualified name is
//! registered produce events; everything else (other tables in the publication, logical
//! decoding messages, origins, types) is consumed silently.
//!
//! Values stay in pgoutput's text form. An unchanged TOASTed value (tuple kind `u`) becomes
//! [`ColumnValue::UnchangedToast`], never NULL: when the writer needs such a value (an owner or
//! foreign-key column, or the whole row for its checksum) it reads the current row instead.
//! Each change carries its relation's columns with their type oids, shared between changes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::capture::events::{ChangeKind, ColumnValue, RelColumn, RowChange, WalEvent};
use crate::pg::wire::pgoutput::{OldKind, OldTuple, PgOutput, TupleValue};
use crate::types::{Lsn, Oid};

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// A change the decoder cannot turn into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeEventError {
    /// A change for a relation id that no Relation message described.
    UnknownRelation {
        /// The relation id.
        rel: Oid,
    },
    /// The tuple has a different number of columns than its Relation message.
    ColumnCountMismatch {
        /// The table.
        table: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Values in the tuple.
        got: usize,
    },
    /// The primary key value is NULL, unchanged-TOAST, binary or not UTF-8.
    BadKey {
        /// The table.
        table: String,
        /// The primary key column.
        column: String,
    },
    /// A registered table arrived without its primary key column.
    MissingKeyColumn {
        /// The table.
        table: String,
        /// The primary key column the registry expects.
        column: String,
    },
    /// A column value is not valid UTF-8 text.
    BadText {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
}

impl fmt::Display for DecodeEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeEventError::UnknownRelation { rel } => {
                write!(f, "change for relation {rel} before its Relation message")
            }
            DecodeEventError::ColumnCountMismatch { table, expected, got } => {
                write!(f, "{table}: tuple has {got} columns, relation has {expected}")
            }
            DecodeEventError::BadKey { table, column } => write!(f, "{table}: primary key {column} has no text value"),
            DecodeEventError::MissingKeyColumn { table, column } => {
                write!(f, "{table}: replicated relation lacks the primary key column {column}")
            }
            DecodeEventError::BadText { table, column } => write!(f, "{table}.{column}: value is not UTF-8 text"),
        }
    }
}

impl std::error::Error for DecodeEventError {}

/// The registered tables the decoder routes: `(schema, table) -> primary key column`, and the
/// membership tables of bucket rules: `(schema, table) -> user column`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    tables: HashMap<(String, String), String>,
    memberships: HashMap<(String, String), String>,
}

impl Routes {
    /// An empty route set.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Registers `schema.table` with its primary key column.
    pub fn insert(&mut self, schema: &str, table: &str, pk: &str) {
        self.tables.insert((schema.to_string(), table.to_string()), pk.to_string());
    }

    /// Registers `schema.table` as a membership table whose `user` column names members.
    pub fn insert_membership(&mut self, schema: &str, table: &str, user: &str) {
        self.memberships.insert((schema.to_string(), table.to_string()), user.to_string());
    }

    fn pk_of(&self, schema: &str, table: &str) -> Option<&str> {
        self.tables.get(&(schema.to_string(), table.to_string())).map(String::as_str)
    }

    fn member_column_of(&self, schema: &str, table: &str) -> Option<&str> {
        self.memberships.get(&(schema.to_string(), table.to_string())).map(String::as_str)
    }
}

/// Where a membership table's relation holds its user column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberColumn {
    /// The column's position; `None` when the relation lacks it (every change then concerns
    /// every user).
    index: Option<usize>,
    /// The column is part of the replica identity, so an update without an old tuple kept it.
    in_identity: bool,
}

#[derive(Debug, Clone)]
struct CachedRelation {
    table: Arc<str>,
    columns: Arc<[RelColumn]>,
    /// Position of the primary key column, when the relation is registered.
    pk_index: Option<usize>,
    /// The user column, when the relation is a membership table of the bucket rules.
    members: Option<MemberColumn>,
}

/// What the decoder made of one pgoutput message.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Forward this to the writer.
    Event(WalEvent),
    /// Nothing to forward.
    Nothing,
    /// A Relation message changed a registered table's shape: refresh the registry/manifest.
    SchemaChanged {
        /// The table.
        table: String,
    },
}

/// The stateful pgoutput -> event translator (one per replication session).
#[derive(Debug, Default)]
pub struct Decoder {
    routes: Routes,
    relations: HashMap<Oid, CachedRelation>,
}

fn pg_time(micros: i64) -> SystemTime {
    let base = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
    if micros >= 0 {
        base + Duration::from_micros(micros as u64)
    } else {
        base - Duration::from_micros(micros.unsigned_abs())
    }
}

impl Decoder {
    /// A decoder routing `routes`.
    pub fn new(routes: Routes) -> Decoder {
        Decoder { routes, relations: HashMap::new() }
    }

    /// Replaces the routes (after `SYNC_TABLES` or the registry changed). Cached relations are
    /// re-resolved against the new routes.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
        self.relations.clear();
    }

    /// Translates one decoded pgoutput message.
    pub fn decode(&mut self, msg: &PgOutput<'_>) -> Result<Decoded, DecodeEventError> {
        match msg {
            PgOutput::Begin { final_lsn, xid, .. } => {
                Ok(Decoded::Event(WalEvent::Begin { final_lsn: *final_lsn, xid: *xid }))
            }
            PgOutput::Commit { end_lsn, commit_time, .. } => {
                Ok(Decoded::Event(WalEvent::Commit { end_lsn: *end_lsn, commit_time: pg_time(*commit_time) }))
            }
            PgOutput::Relation { rel, namespace, name, columns: raw_columns, replica_identity } => {
                let pk = self.routes.pk_of(namespace, name).map(str::to_string);
                let columns: Arc<[RelColumn]> =
                    raw_columns.iter().map(|c| RelColumn { name: c.name.to_string(), type_oid: c.type_oid }).collect();
                let registered = pk.is_some();
                let pk_index = match &pk {
                    Some(pk) => Some(columns.iter().position(|c| &c.name == pk).ok_or_else(|| {
                        DecodeEventError::MissingKeyColumn { table: name.to_string(), column: pk.clone() }
                    })?),
                    None => None,
                };
                let members = self.routes.member_column_of(namespace, name).map(|user| {
                    let index = columns.iter().position(|c| c.name == user);
                    let in_identity = replica_identity_holds(*replica_identity, index.map(|i| raw_columns[i].is_key));
                    MemberColumn { index, in_identity }
                });
                let previous =
                    self.relations.insert(*rel, CachedRelation { table: Arc::from(*name), columns, pk_index, members });
                let changed = match &previous {
                    Some(p) => p.columns != self.relations[rel].columns,
                    None => false,
                };
                if registered && changed {
                    Ok(Decoded::SchemaChanged { table: name.to_string() })
                } else {
                    Ok(Decoded::Nothing)
                }
            }
            PgOutput::Insert { rel, new } => {
                let users = self.members_of(*rel, None, Some(new))?;
                self.with_members(users, self.row(*rel, ChangeKind::Insert, new, None)?)
            }
            PgOutput::Update { rel, old, new } => {
                let users = self.members_of(*rel, Some(old.as_ref()), Some(new))?;
                self.with_members(users, self.row(*rel, ChangeKind::Update, new, old.as_ref())?)
            }
            PgOutput::Delete { rel, old } => {
                let Some(relation) = self.relations.get(rel) else {
                    return Err(DecodeEventError::UnknownRelation { rel: *rel });
                };
                let users = self.members_of(*rel, Some(Some(old)), None)?;
                let row = if relation.pk_index.is_none() {
                    Decoded::Nothing
                } else {
                    self.row(*rel, ChangeKind::Delete, &old.tuple, None)?
                };
                self.with_members(users, row)
            }
            PgOutput::Truncate { relations, .. } => {
                let cached: Vec<&CachedRelation> = relations.iter().filter_map(|r| self.relations.get(r)).collect();
                let tables: Vec<String> =
                    cached.iter().filter(|r| r.pk_index.is_some()).map(|r| r.table.to_string()).collect();
                if tables.is_empty() {
                    // Emptying a membership table changes everyone's subscriptions.
                    if cached.iter().any(|r| r.members.is_some()) {
                        return Ok(Decoded::Event(WalEvent::Membership { users: vec![String::new()], row: None }));
                    }
                    Ok(Decoded::Nothing)
                } else {
                    // A synced membership table emptied with others: its rows leave through the
                    // truncate; the subscriptions are refreshed when the table is written again.
                    Ok(Decoded::Event(WalEvent::Truncate { tables }))
                }
            }
            _ => Ok(Decoded::Nothing),
        }
    }

    /// The users a change of a membership table concerns (`None` for other tables): the old
    /// row's member, when the stream says who it was, and the new row's. `old` is `None` for an
    /// insert, `Some(None)` for an update that sent no old tuple.
    fn members_of(
        &self,
        rel: Oid,
        old: Option<Option<&OldTuple<'_>>>,
        new: Option<&[TupleValue<'_>]>,
    ) -> Result<Option<Vec<String>>, DecodeEventError> {
        let relation = self.relations.get(&rel).ok_or(DecodeEventError::UnknownRelation { rel })?;
        let Some(member) = relation.members else { return Ok(None) };
        let Some(index) = member.index else { return Ok(Some(vec![String::new()])) };
        let text = |tuple: &[TupleValue<'_>]| -> Result<Option<String>, DecodeEventError> {
            match tuple.get(index) {
                Some(TupleValue::Text(bytes)) | Some(TupleValue::Binary(bytes)) => {
                    std::str::from_utf8(bytes).map(|s| Some(s.to_string())).map_err(|_| DecodeEventError::BadText {
                        table: relation.table.to_string(),
                        column: relation.columns[index].name.clone(),
                    })
                }
                // NULL names nobody; an unchanged TOAST value or a missing one is not known.
                _ => Ok(None),
            }
        };
        let mut users = Vec::new();
        let unknown = String::new();
        if let Some(new) = new {
            match (text(new)?, new.get(index)) {
                (Some(u), _) => users.push(u),
                (None, Some(TupleValue::Null)) => {}
                (None, _) => users.push(unknown.clone()),
            }
        }
        match old {
            // An insert has no old row.
            None => {}
            // No old tuple: the replica identity did not change, so neither did a user column
            // inside it; a user column outside it may have.
            Some(None) if member.in_identity => {}
            Some(None) => users.push(unknown),
            Some(Some(o)) => match (text(&o.tuple)?, o.tuple.get(index)) {
                (Some(u), _) => users.push(u),
                (None, Some(TupleValue::Null)) if member.in_identity || o.kind == OldKind::Full => {}
                (None, _) => users.push(unknown),
            },
        }
        users.sort();
        users.dedup();
        Ok(Some(users))
    }

    /// The event of a change: the row itself, or with a membership table's users the
    /// membership event carrying the row.
    fn with_members(&self, users: Option<Vec<String>>, row: Decoded) -> Result<Decoded, DecodeEventError> {
        match users {
            None => Ok(row),
            Some(users) => {
                let row = match row {
                    Decoded::Event(WalEvent::Row(change)) => Some(change),
                    _ => None,
                };
                Ok(Decoded::Event(WalEvent::Membership { users, row }))
            }
        }
    }

    fn row(
        &self,
        rel: Oid,
        kind: ChangeKind,
        tuple: &[TupleValue<'_>],
        old: Option<&OldTuple<'_>>,
    ) -> Result<Decoded, DecodeEventError> {
        let relation = self.relations.get(&rel).ok_or(DecodeEventError::UnknownRelation { rel })?;
        let Some(pk_index) = relation.pk_index else {
            return Ok(Decoded::Nothing);
        };
        if tuple.len() != relation.columns.len() {
            return Err(DecodeEventError::ColumnCountMismatch {
                table: relation.table.to_string(),
                expected: relation.columns.len(),
                got: tuple.len(),
            });
        }
        let key_of = |t: &[TupleValue<'_>]| -> Result<String, DecodeEventError> {
            match t.get(pk_index) {
                Some(TupleValue::Text(bytes)) => {
                    std::str::from_utf8(bytes).map(str::to_string).map_err(|_| DecodeEventError::BadKey {
                        table: relation.table.to_string(),
                        column: relation.columns[pk_index].name.clone(),
                    })
                }
                _ => Err(DecodeEventError::BadKey {
                    table: relation.table.to_string(),
                    column: relation.columns[pk_index].name.clone(),
                }),
            }
        };
        let key = key_of(tuple)?;
        // With REPLICA IDENTITY DEFAULT the old tuple of an update is sent only when the key
        // changed; with FULL it always is. Either way a different key means the row moved.
        let old_key = match old {
            Some(o) if o.tuple.len() == relation.columns.len() => match key_of(&o.tuple) {
                Ok(k) if k != key => Some(k),
                _ => None,
            },
            _ => None,
        };
        let mut values = Vec::with_capacity(tuple.len());
        for (column, value) in relation.columns.iter().zip(tuple) {
            let v = match value {
                TupleValue::Null => ColumnValue::Null,
                TupleValue::UnchangedToast => ColumnValue::UnchangedToast,
                TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                    ColumnValue::Text(String::from_utf8(bytes.to_vec()).map_err(|_| DecodeEventError::BadText {
                        table: relation.table.to_string(),
                        column: column.name.clone(),
                    })?)
                }
            };
            values.push(v);
        }
        Ok(Decoded::Event(WalEvent::Row(RowChange {
            table: relation.table.clone(),
            kind,
            key,
            old_key,
            columns: relation.columns.clone(),
            values,
        })))
    }
}

/// Whether a column is part of the replica identity: with `FULL` every column is, with
/// `DEFAULT` or `INDEX` the key columns flagged in the Relation message are, with `NOTHING`
/// none.
fn replica_identity_holds(replica_identity: u8, is_key: Option<bool>) -> bool {
    match replica_identity {
        b'f' => true,
        b'n' => false,
        _ => is_key.unwrap_or(false),
    }
}

/// The LSN right after an XLogData payload: where a consumer that applied it can resume.
pub fn end_of(wal_start: Lsn, payload_len: usize) -> Lsn {
    Lsn(wal_start.0.saturating_add(payload_len as u64))
}
