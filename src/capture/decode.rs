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
use crate::pg::wire::pgoutput::{OldTuple, PgOutput, TupleValue};
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

/// The registered tables the decoder routes: `(schema, table) -> primary key column`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    tables: HashMap<(String, String), String>,
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

    fn pk_of(&self, schema: &str, table: &str) -> Option<&str> {
        self.tables.get(&(schema.to_string(), table.to_string())).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
struct CachedRelation {
    table: Arc<str>,
    columns: Arc<[RelColumn]>,
    /// Position of the primary key column, when the relation is registered.
    pk_index: Option<usize>,
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
            PgOutput::Relation { rel, namespace, name, columns, .. } => {
                let pk = self.routes.pk_of(namespace, name).map(str::to_string);
                let columns: Arc<[RelColumn]> =
                    columns.iter().map(|c| RelColumn { name: c.name.to_string(), type_oid: c.type_oid }).collect();
                let registered = pk.is_some();
                let pk_index = match &pk {
                    Some(pk) => Some(columns.iter().position(|c| &c.name == pk).ok_or_else(|| {
                        DecodeEventError::MissingKeyColumn { table: name.to_string(), column: pk.clone() }
                    })?),
                    None => None,
                };
                let previous =
                    self.relations.insert(*rel, CachedRelation { table: Arc::from(*name), columns, pk_index });
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
            PgOutput::Insert { rel, new } => self.row(*rel, ChangeKind::Insert, new, None),
            PgOutput::Update { rel, old, new } => self.row(*rel, ChangeKind::Update, new, old.as_ref()),
            PgOutput::Delete { rel, old } => {
                let Some(relation) = self.relations.get(rel) else {
                    return Err(DecodeEventError::UnknownRelation { rel: *rel });
                };
                if relation.pk_index.is_none() {
                    return Ok(Decoded::Nothing);
                }
                self.row(*rel, ChangeKind::Delete, &old.tuple, None)
            }
            PgOutput::Truncate { relations, .. } => {
                let tables: Vec<String> = relations
                    .iter()
                    .filter_map(|r| self.relations.get(r))
                    .filter(|r| r.pk_index.is_some())
                    .map(|r| r.table.to_string())
                    .collect();
                if tables.is_empty() {
                    Ok(Decoded::Nothing)
                } else {
                    Ok(Decoded::Event(WalEvent::Truncate { tables }))
                }
            }
            _ => Ok(Decoded::Nothing),
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

/// The LSN right after an XLogData payload: where a consumer that applied it can resume.
pub fn end_of(wal_start: Lsn, payload_len: usize) -> Lsn {
    Lsn(wal_start.0.saturating_add(payload_len as u64))
}
