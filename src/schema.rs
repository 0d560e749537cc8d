//! The schema contract (§4, §5): logical type mapping, default classification, building the
//! served tables (`SchemaTable`, `TableMeta`; their wire form lives in `protocol`) and the
//! `schema_hash` over their bytes, and the validation that refuses tables the SDKs cannot sync.
//!
//! Deliberate deviation (our issue tracker, changing Appendix C1): a table without an
//! updated-at or deleted-at column still syncs. The schema always names both columns (the SDKs
//! require them) and lists a missing one as a *virtual* nullable `timestamp with time zone`
//! column, so SDK-created SQLite tables have it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use sha2::{Digest, Sha256};

pub use crate::protocol::{DefaultKind, SchemaColumn, SchemaTable, TableMeta};
use crate::registry::{Column, LogicalType, Registry, SyncTable, TimestampColumn};

/// Catalog facts needed by mapping rules 16 and 17: enum type names and domains.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    /// `typname` of every enum type (any schema).
    pub enums: HashSet<String>,
    /// `typname` of every domain -> `format_type(typbasetype, typtypmod)`.
    pub domains: HashMap<String, String>,
}

fn map_builtin(t: &str) -> Option<LogicalType> {
    use LogicalType::*;
    if t.ends_with("[]") {
        return Some(Json);
    }
    let direct = match t {
        "bool" | "boolean" => Some(Boolean),
        "smallint" | "integer" | "int" | "serial" | "smallserial" => Some(Int),
        "bigint" | "bigserial" => Some(Int64),
        "real" | "double precision" | "numeric" | "decimal" => Some(Float),
        "text" | "character varying" | "varchar" | "character" | "char" | "uuid" => Some(String),
        "json" | "jsonb" => Some(Json),
        "bytea" => Some(Bytes),
        "date" => Some(Date),
        "time without time zone" | "time with time zone" => Some(Time),
        "timestamp without time zone" | "timestamp with time zone" => Some(Datetime),
        "interval" => Some(String),
        _ => None,
    };
    if direct.is_some() {
        return direct;
    }
    if t.starts_with("character varying(") || t.starts_with("character(") {
        return Some(String);
    }
    if t.starts_with("numeric(") || t.starts_with("decimal(") {
        return Some(Float);
    }
    // Rule 15: `^([a-z ]+)(\(.+\))?$` with a timestamp name as the first group.
    let (name, rest) = match t.find('(') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let rest_ok = rest.is_empty() || (rest.len() > 2 && rest.ends_with(')'));
    if rest_ok
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c == ' ')
        && matches!(name, "timestamp without time zone" | "timestamp with time zone")
    {
        return Some(Datetime);
    }
    None
}

/// Maps a `db_type` to its logical type (§4.4); `None` = unsupported.
pub fn logical_type(db_type: &str, catalog: &TypeCatalog) -> Option<LogicalType> {
    let normalised = db_type.trim().to_lowercase();
    if let Some(t) = map_builtin(&normalised) {
        return Some(t);
    }
    if catalog.enums.contains(db_type) {
        return Some(LogicalType::String);
    }
    if let Some(base) = catalog.domains.get(db_type) {
        return map_builtin(&base.trim().to_lowercase());
    }
    None
}

fn is_cast_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '\t' | '\n' | '\x0c' | '\r' | ' ' | '[' | ']' | '.' | '"')
}

/// Removes a trailing `(::[\w\s\[\]\."]+)+$` cast chain (leftmost match, as RE2 finds it).
fn strip_cast_chain(s: &str) -> &str {
    let mut from = 0;
    while let Some(rel) = s[from..].find("::") {
        let p = from + rel;
        let tail = &s[p + 2..];
        if tail.split("::").all(|seg| !seg.is_empty() && seg.chars().all(is_cast_char)) {
            return &s[..p];
        }
        from = p + 1;
    }
    s
}

fn is_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn is_string_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) else {
        return false;
    };
    if s.len() < 2 {
        return false;
    }
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return false;
        }
    }
    true
}

fn json_literal_prefix(s: &str) -> Option<&str> {
    let t = s.trim();
    let body = match t.find("::") {
        Some(i) => {
            let cast = &t[i + 2..];
            if cast.is_empty()
                || !cast.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '\t' | '\n' | '\r' | '\x0c' | '[' | ']' | '.')
                })
            {
                return None;
            }
            t[..i].trim_end()
        }
        None => t,
    };
    let inner = body.strip_prefix('\'')?.strip_suffix('\'')?;
    let ok = (inner.starts_with('[') || inner.starts_with('{')) && (inner.ends_with(']') || inner.ends_with('}'));
    if ok && !inner.contains('\n') {
        Some(body)
    } else {
        None
    }
}

/// §4.5 translate(): the SQLite default for a PostgreSQL default expression, or `""`.
pub fn sqlite_default(default_sql: &str) -> String {
    let mut s = default_sql.trim();
    if s.is_empty() {
        return String::new();
    }
    loop {
        s = strip_cast_chain(s).trim();
        if s.len() >= 2 && s.starts_with('(') && s.ends_with(')') {
            s = s[1..s.len() - 1].trim();
        } else {
            break;
        }
    }
    let lower = s.to_ascii_lowercase();
    if lower == "null" {
        "NULL".into()
    } else if lower == "true" {
        "1".into()
    } else if lower == "false" {
        "0".into()
    } else if is_number(s) || is_string_literal(s) {
        s.to_string()
    } else if let Some(p) = json_literal_prefix(s) {
        p.to_string()
    } else if matches!(
        lower.as_str(),
        "now()" | "current_timestamp" | "transaction_timestamp()" | "statement_timestamp()"
    ) {
        "CURRENT_TIMESTAMP".into()
    } else if lower == "current_date" {
        "CURRENT_DATE".into()
    } else if lower == "current_time" {
        "CURRENT_TIME".into()
    } else {
        String::new()
    }
}

/// `(default_kind, sqlite_default_sql)` for a column default.
pub fn classify_default(default_sql: &str) -> (DefaultKind, String) {
    if default_sql.trim().is_empty() {
        return (DefaultKind::None, String::new());
    }
    let translated = sqlite_default(default_sql);
    if translated.is_empty() {
        (DefaultKind::ServerOnly, translated)
    } else {
        (DefaultKind::Portable, translated)
    }
}

/// Why a registered table cannot be synced (§4.7 and startup validation, C15).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaError {
    /// A column's type has no logical mapping.
    UnsupportedType {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// Its `db_type`.
        db_type: String,
    },
    /// A NOT NULL column that clients must fill has a default only the server can evaluate.
    ServerOnlyDefault {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// The default expression.
        default_sql: String,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::UnsupportedType { table, column, db_type } => write!(
                f,
                "{table}.{column} has type {db_type}, which clients cannot store; exclude it with EXCLUDE_COLUMNS={table}.{column} or change its type"
            ),
            SchemaError::ServerOnlyDefault { table, column, default_sql } => write!(
                f,
                "{table}.{column} is NOT NULL with default {default_sql}, which clients cannot evaluate when they create rows offline; \
                 make it nullable, give it a constant default, or exclude it with EXCLUDE_COLUMNS={table}.{column}"
            ),
        }
    }
}

impl std::error::Error for SchemaError {}

impl SchemaColumn {
    fn from_column(c: &Column, logical: LogicalType, pk: &str) -> SchemaColumn {
        let (default_kind, sqlite_default_sql) = classify_default(&c.default_sql);
        SchemaColumn {
            name: c.name.clone(),
            db_type: c.db_type.clone(),
            logical_type: logical,
            nullable: c.nullable,
            default_sql: c.default_sql.clone(),
            default_kind,
            sqlite_default_sql,
            is_primary_key: c.name == pk,
        }
    }

    fn virtual_timestamp(name: &str) -> SchemaColumn {
        SchemaColumn {
            name: name.to_string(),
            db_type: "timestamp with time zone".into(),
            logical_type: LogicalType::Datetime,
            nullable: true,
            default_sql: String::new(),
            default_kind: DefaultKind::None,
            sqlite_default_sql: String::new(),
            is_primary_key: false,
        }
    }
}

impl SchemaTable {
    /// The served table for a registered one, or why it cannot be served.
    pub fn build(t: &SyncTable, catalog: &TypeCatalog) -> Result<SchemaTable, SchemaError> {
        let mut columns = Vec::with_capacity(t.columns.len() + 2);
        for c in t.columns.iter().filter(|c| !c.excluded) {
            let logical = c.logical.or_else(|| logical_type(&c.db_type, catalog)).ok_or_else(|| {
                SchemaError::UnsupportedType {
                    table: t.name.clone(),
                    column: c.name.clone(),
                    db_type: c.db_type.clone(),
                }
            })?;
            let col = SchemaColumn::from_column(c, logical, &t.pk);
            if !col.nullable
                && !col.is_primary_key
                && !t.is_protected(&col.name)
                && col.default_kind == DefaultKind::ServerOnly
            {
                return Err(SchemaError::ServerOnlyDefault {
                    table: t.name.clone(),
                    column: c.name.clone(),
                    default_sql: c.default_sql.clone(),
                });
            }
            columns.push(col);
        }
        for ts in [&t.updated_at, &t.deleted_at] {
            if let TimestampColumn::Virtual(name) = ts {
                if !columns.iter().any(|c| &c.name == name) {
                    columns.push(SchemaColumn::virtual_timestamp(name));
                }
            }
        }
        Ok(SchemaTable {
            table_name: t.name.clone(),
            parent_table: t.parent.as_ref().map(|p| p.table.clone()).unwrap_or_default(),
            parent_fk_col: t.parent.as_ref().map(|p| p.fk_column.clone()).unwrap_or_default(),
            dependencies: t.dependencies(),
            updated_at_column: t.updated_at.name().to_string(),
            deleted_at_column: t.deleted_at.name().to_string(),
            primary_key: vec![t.pk.clone()],
            columns,
        })
    }
}

/// The served schema: tables sorted by name, their JSON array and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Sorted by `table_name` (byte order).
    pub tables: Vec<SchemaTable>,
    /// The compact JSON array of `tables`, exactly as hashed and served.
    pub tables_json: String,
    /// Lower-case hex SHA-256 of `{"tables":<tables_json>}`.
    pub hash: String,
}

impl Schema {
    /// Builds and hashes the schema of a registry.
    pub fn build(registry: &Registry, catalog: &TypeCatalog) -> Result<Schema, SchemaError> {
        let mut tables =
            registry.tables.iter().map(|t| SchemaTable::build(t, catalog)).collect::<Result<Vec<_>, _>>()?;
        tables.sort_by(|a, b| a.table_name.as_bytes().cmp(b.table_name.as_bytes()));
        Ok(Schema::from_tables(tables))
    }

    /// Serialises and hashes already built tables (in the given order).
    pub fn from_tables(tables: Vec<SchemaTable>) -> Schema {
        let mut json = String::from("[");
        for (i, t) in tables.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            t.write_json(&mut json);
        }
        json.push(']');
        let hash = hash_tables_json(&json);
        Schema { tables, tables_json: json, hash }
    }
}

/// `schema_hash` of a `tables` JSON array.
pub fn hash_tables_json(tables_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"{\"tables\":");
    h.update(tables_json.as_bytes());
    h.update(b"}");
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `/sync/tables` list, sorted by name.
pub fn table_meta(registry: &Registry) -> Vec<TableMeta> {
    let mut out: Vec<TableMeta> = registry
        .tables
        .iter()
        .map(|t| TableMeta {
            table_name: t.name.clone(),
            push_policy: if t.read_only { "disabled" } else { "enabled" },
            dependencies: t.dependencies(),
            parent_table: t.parent.as_ref().map(|p| p.table.clone()).unwrap_or_default(),
            parent_fk_col: t.parent.as_ref().map(|p| p.fk_column.clone()).unwrap_or_default(),
            updated_at_column: t.updated_at.name().to_string(),
            deleted_at_column: t.deleted_at.name().to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.table_name.as_bytes().cmp(b.table_name.as_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_type_mapping_follows_the_contract() {
        let mut cat = TypeCatalog::default();
        cat.enums.insert("order_status".into());
        cat.enums.insert("MyEnum".into());
        cat.domains.insert("positive_int".into(), "integer".into());
        cat.domains.insert("status_domain".into(), "order_status".into());
        use LogicalType::*;
        let cases: &[(&str, Option<LogicalType>)] = &[
            ("text[]", Some(Json)),
            ("integer[][]", Some(Json)),
            ("boolean", Some(Boolean)),
            ("smallint", Some(Int)),
            ("integer", Some(Int)),
            ("bigint", Some(Int64)),
            ("real", Some(Float)),
            ("double precision", Some(Float)),
            ("numeric", Some(Float)),
            ("numeric(10,2)", Some(Float)),
            ("text", Some(String)),
            ("character varying", Some(String)),
            ("character varying(20)", Some(String)),
            ("character(3)", Some(String)),
            ("uuid", Some(String)),
            ("json", Some(Json)),
            ("jsonb", Some(Json)),
            ("bytea", Some(Bytes)),
            ("date", Some(Date)),
            ("time without time zone", Some(Time)),
            ("time with time zone", Some(Time)),
            ("timestamp without time zone", Some(Datetime)),
            ("timestamp with time zone", Some(Datetime)),
            ("interval", Some(String)),
            ("order_status", Some(String)),
            ("positive_int", Some(Int)),
            ("Timestamp With Time Zone", Some(Datetime)),
            (" text ", Some(String)),
            ("timestamp(3) with time zone", None),
            ("time(3) without time zone", None),
            ("interval day", None),
            ("bpchar", None),
            ("\"char\"", None),
            ("tsvector", None),
            ("money", None),
            ("inet", None),
            ("bit(3)", None),
            ("xml", None),
            ("point", None),
            ("oid", None),
            ("int4range", None),
            ("public.order_status", None),
            ("\"MyEnum\"", None),
            ("status_domain", None),
        ];
        for (db_type, want) in cases {
            assert_eq!(logical_type(db_type, &cat), *want, "{db_type}");
        }
    }

    #[test]
    fn default_classification_matches_the_worked_examples() {
        let cases: &[(&str, &str, &str)] = &[
            ("gen_random_uuid()", "server_only", ""),
            ("nextval('t_ser_seq'::regclass)", "server_only", ""),
            ("(now() + '30 days'::interval)", "server_only", ""),
            ("clock_timestamp()", "server_only", ""),
            ("LOCALTIMESTAMP", "server_only", ""),
            ("CURRENT_TIMESTAMP(3)", "server_only", ""),
            ("ARRAY[]::text[]", "server_only", ""),
            ("false", "portable", "0"),
            ("true", "portable", "1"),
            ("0", "portable", "0"),
            ("1.50", "portable", "1.50"),
            ("-1.5", "portable", "-1.5"),
            ("(-1)", "portable", "-1"),
            ("'-1'::integer", "portable", "'-1'"),
            ("'9007199254740993'::bigint", "portable", "'9007199254740993'"),
            ("''::text", "portable", "''"),
            ("'x''y'::character varying", "portable", "'x''y'"),
            ("'pending'::order_status", "portable", "'pending'"),
            ("'{}'::jsonb", "portable", "'{}'"),
            ("'{}'::text[]", "portable", "'{}'"),
            ("'[1,2]'::json", "portable", "'[1,2]'"),
            ("NULL::text", "portable", "NULL"),
            ("now()", "portable", "CURRENT_TIMESTAMP"),
            ("CURRENT_TIMESTAMP", "portable", "CURRENT_TIMESTAMP"),
            ("statement_timestamp()", "portable", "CURRENT_TIMESTAMP"),
            ("CURRENT_DATE", "portable", "CURRENT_DATE"),
            ("CURRENT_TIME", "portable", "CURRENT_TIME"),
            ("('now'::text)::date", "portable", "'now'"),
            ("", "none", ""),
            ("   ", "none", ""),
        ];
        for (sql, kind, sqlite) in cases {
            let (k, s) = classify_default(sql);
            assert_eq!((k.as_str(), s.as_str()), (*kind, *sqlite), "{sql}");
        }
    }

    #[test]
    fn hash_reproduces_the_contract_vector() {
        let col = |name: &str, db: &str, lt, nullable, def: &str, kind, sq: &str, pk| SchemaColumn {
            name: name.into(),
            db_type: db.into(),
            logical_type: lt,
            nullable,
            default_sql: def.into(),
            default_kind: kind,
            sqlite_default_sql: sq.into(),
            is_primary_key: pk,
        };
        let table = SchemaTable {
            table_name: "items".into(),
            parent_table: String::new(),
            parent_fk_col: String::new(),
            dependencies: vec![],
            updated_at_column: "updated_at".into(),
            deleted_at_column: "deleted_at".into(),
            primary_key: vec!["id".into()],
            columns: vec![
                col("id", "uuid", LogicalType::String, false, "gen_random_uuid()", DefaultKind::ServerOnly, "", true),
                col("title", "text", LogicalType::String, false, "''::text", DefaultKind::Portable, "''", false),
                col(
                    "updated_at",
                    "timestamp with time zone",
                    LogicalType::Datetime,
                    false,
                    "now()",
                    DefaultKind::Portable,
                    "CURRENT_TIMESTAMP",
                    false,
                ),
                col(
                    "deleted_at",
                    "timestamp with time zone",
                    LogicalType::Datetime,
                    true,
                    "",
                    DefaultKind::None,
                    "",
                    false,
                ),
            ],
        };
        let schema = Schema::from_tables(vec![table]);
        let expected = r#"[{"table_name":"items","push_policy":"enabled","updated_at_column":"updated_at","deleted_at_column":"deleted_at","primary_key":["id"],"columns":[{"name":"id","db_type":"uuid","logical_type":"string","nullable":false,"default_sql":"gen_random_uuid()","default_kind":"server_only","is_primary_key":true},{"name":"title","db_type":"text","logical_type":"string","nullable":false,"default_sql":"''::text","default_kind":"portable","sqlite_default_sql":"''","is_primary_key":false},{"name":"updated_at","db_type":"timestamp with time zone","logical_type":"datetime","nullable":false,"default_sql":"now()","default_kind":"portable","sqlite_default_sql":"CURRENT_TIMESTAMP","is_primary_key":false},{"name":"deleted_at","db_type":"timestamp with time zone","logical_type":"datetime","nullable":true,"default_kind":"none","is_primary_key":false}]}]"#;
        assert_eq!(schema.tables_json, expected);
        assert_eq!(schema.hash, "a07bf97b560880e16fd377e76ec524cbee4770dc54e6a09cf688a05dca540075");
    }
}
