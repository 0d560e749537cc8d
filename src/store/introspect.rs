//! Reading the registry from `pg_catalog`, validating it, the schema manifest (§4.6) and a
//! catalog fingerprint that tells when DDL touched a registered table.

use std::collections::HashSet;
use std::fmt;

use postgres::types::Type;
use postgres::GenericClient;

use super::pool::{Session, StatementCache, StoreError};
use crate::config::TableName;
use crate::registry::{Column, ForeignKey, Membership, ParentLink, Registry, SharedRoot, SyncTable, TimestampColumn};
use crate::rules::{BucketRules, RulesError};
use crate::schema::{logical_type, Schema, SchemaError, TypeCatalog};
use crate::types::Oid;

/// What to introspect: the declared tables and naming conventions.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Synced tables in registration order.
    pub tables: Vec<TableName>,
    /// Tables clients may not push to.
    pub read_only: Vec<TableName>,
    /// The owner column name.
    pub owner_column: String,
    /// Columns left out of the schema.
    pub excluded: Vec<(TableName, String)>,
    /// The updated-at column name.
    pub updated_at_column: String,
    /// The deleted-at column name.
    pub deleted_at_column: String,
    /// The bucket rules (`BUCKET_RULES`), resolved against the catalog with the tables.
    pub rules: BucketRules,
}

/// Why the declared tables cannot be synced. Every message names the table and says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// The catalog could not be read.
    Store(StoreError),
    /// A declared table does not exist.
    TableMissing {
        /// As declared.
        table: String,
    },
    /// Two declared tables share a name in different schemas (the wire name is unqualified).
    DuplicateName {
        /// The name.
        table: String,
    },
    /// No primary key.
    NoPrimaryKey {
        /// Table.
        table: String,
    },
    /// A composite primary key.
    CompositePrimaryKey {
        /// Table.
        table: String,
        /// Its key columns.
        columns: Vec<String>,
    },
    /// `EXCLUDE_COLUMNS` names a column that does not exist.
    ExcludedColumnMissing {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// Foreign keys among registered tables form a cycle.
    ForeignKeyCycle {
        /// Tables on the cycle.
        tables: Vec<String>,
    },
    /// A NOT NULL foreign key points at a table that is not synced.
    ForeignKeyToUnregistered {
        /// Table.
        table: String,
        /// FK column.
        column: String,
        /// The unsynced target.
        target: String,
    },
    /// A read-only table that is not synced.
    ReadOnlyNotSynced {
        /// Table.
        table: String,
    },
    /// A column the SDKs cannot handle.
    Schema(SchemaError),
    /// A bucket rule does not fit the database (the message names the file, rule and field).
    Rules(RulesError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Store(e) => write!(f, "reading the catalog: {e}"),
            RegistryError::TableMissing { table } => {
                write!(f, "table {table} does not exist (check SYNC_TABLES and the search_path, or qualify it as schema.table)")
            }
            RegistryError::DuplicateName { table } => {
                write!(f, "two synced tables are named {table} in different schemas; clients address tables by bare name, sync only one")
            }
            RegistryError::NoPrimaryKey { table } => write!(f, "table {table} has no primary key; add one (clients address rows by it)"),
            RegistryError::CompositePrimaryKey { table, columns } => write!(
                f,
                "table {table} has a composite primary key ({}); composite keys are not supported (the protocol's record id is one \
                 column): add a single-column key, e.g. a uuid, and keep the old key as a UNIQUE constraint",
                columns.join(", ")
            ),
            RegistryError::ExcludedColumnMissing { table, column } => {
                write!(f, "EXCLUDE_COLUMNS names {table}.{column}, but {table} has no column {column}")
            }
            RegistryError::ForeignKeyCycle { tables } => write!(
                f,
                "foreign keys among synced tables form a cycle ({}); clients apply parents before children, break the cycle or sync fewer tables",
                tables.join(" -> ")
            ),
            RegistryError::ForeignKeyToUnregistered { table, column, target } => write!(
                f,
                "{table}.{column} is a NOT NULL foreign key to {target}, which is not synced: clients could not create valid {table} rows; add {target} to SYNC_TABLES"
            ),
            RegistryError::ReadOnlyNotSynced { table } => write!(f, "READ_ONLY_TABLES names {table}, which is not synced"),
            RegistryError::Schema(e) => write!(f, "{e}"),
            RegistryError::Rules(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegistryError::Store(e) => Some(e),
            RegistryError::Rules(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Store(e)
    }
}

/// The tables of an existing publication, in name order (used when `SYNC_TABLES` is unset).
pub fn publication_tables(db: &mut impl GenericClient, publication: &str) -> Result<Vec<TableName>, StoreError> {
    let rows = db
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY schemaname, tablename",
            &[&publication],
        )
        .map_err(StoreError::query("reading the publication's tables"))?;
    Ok(rows.iter().map(|r| TableName { schema: Some(r.get(0)), name: r.get(1) }).collect())
}

/// Enum and domain names for logical-type rules 16 and 17.
pub fn type_catalog(db: &mut impl GenericClient) -> Result<TypeCatalog, StoreError> {
    let mut cat = TypeCatalog::default();
    for r in db
        .query("SELECT typname::text, typtype::text, format_type(typbasetype, typtypmod) FROM pg_type WHERE typtype IN ('e', 'd')", &[])
        .map_err(StoreError::query("reading enum and domain types"))?
    {
        let name: String = r.get(0);
        if r.get::<_, String>(1) == "e" {
            cat.enums.insert(name);
        } else {
            cat.domains.insert(name, r.get::<_, Option<String>>(2).unwrap_or_default());
        }
    }
    Ok(cat)
}

fn resolve(db: &mut impl GenericClient, t: &TableName) -> Result<Option<(Oid, String, String)>, StoreError> {
    let row = match &t.schema {
        Some(schema) => db.query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[schema, &t.name],
        ),
        None => db.query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false)) \
             ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1",
            &[&t.name],
        ),
    }
    .map_err(StoreError::query(format!("looking up table {t}")))?;
    Ok(row.map(|r| (Oid(r.get(0)), r.get(1), r.get(2))))
}

struct RawTable {
    oid: Oid,
    schema: String,
    name: String,
    columns: Vec<Column>,
    pk: Vec<String>,
    /// (local column, target schema, target table, target column, local NOT NULL)
    fks: Vec<(String, String, String, String, bool)>,
}

/// The first oid of user-defined objects (`FirstNormalObjectId`).
const FIRST_USER_OID: u32 = 16384;

/// What `row_to_json` renders a column of type `oid` as (see `registry::Column::render_oid`):
/// it looks through domains, renders enums as their label, and uses a type's cast to `json`
/// when a user type has one (then 0: not rendered from text).
fn render_oid(
    oid: u32,
    typtype: &str,
    base: u32,
    base_typtype: Option<&str>,
    elem_typtype: Option<&str>,
    json_cast: bool,
) -> u32 {
    const TEXT: u32 = 25;
    const TEXT_ARRAY: u32 = 1009;
    match (typtype, base_typtype, elem_typtype) {
        _ if json_cast => 0,
        ("d", _, _) if base < FIRST_USER_OID => base,
        ("d", Some("e"), _) | ("e", _, _) => TEXT,
        ("d", _, _) => 0,
        (_, _, Some("e")) => TEXT_ARRAY,
        _ => oid,
    }
}

fn read_table(db: &mut impl GenericClient, oid: Oid, schema: String, name: String) -> Result<RawTable, StoreError> {
    let columns = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, NOT a.attnotnull, \
                    COALESCE(pg_get_expr(d.adbin, d.adrelid), ''), \
                    CASE WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END, \
                    t.typtype::text, t.typbasetype, bt.typtype::text, et.typtype::text, \
                    EXISTS (SELECT 1 FROM pg_cast c WHERE c.castsource IN (t.oid, t.typbasetype, t.typelem) \
                            AND c.castsource >= 16384 AND c.casttarget IN ('json'::regtype, 'jsonb'::regtype)) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
             LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid.0],
        )
        .map_err(StoreError::query(format!("reading the columns of {name}")))?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            db_type: r.get(1),
            type_oid: Oid(r.get(2)),
            render_oid: Oid(render_oid(
                r.get(2),
                &r.get::<_, String>(6),
                r.get(7),
                r.get::<_, Option<String>>(8).as_deref(),
                r.get::<_, Option<String>>(9).as_deref(),
                r.get(10),
            )),
            nullable: r.get(3),
            default_sql: r.get(4),
            element_type: r.get(5),
            logical: None,
            excluded: false,
        })
        .collect();
    let pk = db
        .query(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid.0],
        )
        .map_err(StoreError::query(format!("reading the primary key of {name}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let fks = db
        .query(
            "SELECT a.attname::text, rn.nspname::text, rc.relname::text, ra.attname::text, a.attnotnull \
             FROM pg_constraint con CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(lnum, rnum, ord) \
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.lnum \
             JOIN pg_class rc ON rc.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
             JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.rnum \
             WHERE con.conrelid = $1 AND con.contype = 'f' ORDER BY con.conname, k.ord",
            &[&oid.0],
        )
        .map_err(StoreError::query(format!("reading the foreign keys of {name}")))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    Ok(RawTable { oid, schema, name, columns, pk, fks })
}

fn matches(declared: &TableName, schema: &str, name: &str) -> bool {
    declared.name == name && declared.schema.as_deref().is_none_or(|s| s == schema)
}

/// Reads and validates the registry of the declared tables.
pub fn load_registry(db: &mut impl GenericClient, settings: &RegistrySettings) -> Result<Registry, RegistryError> {
    let catalog = type_catalog(db)?;
    let mut raw = Vec::with_capacity(settings.tables.len());
    let mut names = HashSet::new();
    for declared in &settings.tables {
        let (oid, schema, name) =
            resolve(db, declared)?.ok_or_else(|| RegistryError::TableMissing { table: declared.to_string() })?;
        if !names.insert(name.clone()) {
            return Err(RegistryError::DuplicateName { table: name });
        }
        raw.push(read_table(db, oid, schema, name)?);
    }
    if let Some(ro) = settings.read_only.iter().find(|ro| !raw.iter().any(|t| matches(ro, &t.schema, &t.name))) {
        return Err(RegistryError::ReadOnlyNotSynced { table: ro.to_string() });
    }
    let registered: HashSet<(String, String)> = raw.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
    let mut tables = Vec::with_capacity(raw.len());
    for t in raw {
        let pk = match t.pk.as_slice() {
            [] => return Err(RegistryError::NoPrimaryKey { table: t.name }),
            [one] => one.clone(),
            many => return Err(RegistryError::CompositePrimaryKey { table: t.name.clone(), columns: many.to_vec() }),
        };
        let mut columns = t.columns;
        for (decl, col) in settings.excluded.iter().filter(|(d, _)| matches(d, &t.schema, &t.name)) {
            match columns.iter_mut().find(|c| &c.name == col) {
                Some(c) => c.excluded = true,
                None => {
                    return Err(RegistryError::ExcludedColumnMissing { table: decl.to_string(), column: col.clone() })
                }
            }
        }
        for c in &mut columns {
            c.logical = logical_type(&c.db_type, &catalog);
        }
        let mut foreign_keys = Vec::new();
        for (column, tschema, ttable, tcolumn, not_null) in t.fks {
            if registered.contains(&(tschema.clone(), ttable.clone())) {
                foreign_keys.push(ForeignKey { column, ref_table: ttable, ref_column: tcolumn });
            } else if not_null {
                return Err(RegistryError::ForeignKeyToUnregistered {
                    table: t.name,
                    column,
                    target: format!("{tschema}.{ttable}"),
                });
            }
        }
        let parent = match foreign_keys.as_slice() {
            [only] => Some(ParentLink {
                table: only.ref_table.clone(),
                fk_column: only.column.clone(),
                parent_column: only.ref_column.clone(),
            }),
            _ => None,
        };
        let has = |n: &str| columns.iter().any(|c| c.name == n);
        let ts = |n: &str| {
            if has(n) {
                TimestampColumn::Real(n.to_string())
            } else {
                TimestampColumn::Virtual(n.to_string())
            }
        };
        tables.push(SyncTable {
            oid: t.oid,
            pk,
            owner: has(&settings.owner_column).then(|| settings.owner_column.clone()),
            updated_at: ts(&settings.updated_at_column),
            deleted_at: ts(&settings.deleted_at_column),
            created_at: has("created_at").then(|| "created_at".to_string()),
            read_only: settings.read_only.iter().any(|ro| matches(ro, &t.schema, &t.name)),
            foreign_keys,
            parent,
            columns,
            schema: t.schema,
            name: t.name,
            shared: Vec::new(),
        });
    }
    let mut registry = Registry { tables };
    if let Some(cycle) = registry.find_cycle() {
        return Err(RegistryError::ForeignKeyCycle { tables: cycle });
    }
    Schema::build(&registry, &catalog).map_err(RegistryError::Schema)?;
    resolve_rules(db, &mut registry, settings)?;
    Ok(registry)
}

/// Types a bucket key cannot be: its text would not name one team (arrays, documents) or
/// would not be stable (floating point).
fn unusable_key_type(db_type: &str) -> bool {
    db_type.ends_with("[]")
        || matches!(db_type, "json" | "jsonb" | "real" | "double precision" | "bytea" | "boolean")
        || db_type.starts_with("timestamp")
}

/// Resolves every bucket rule against the registry and the catalog, recording each on its
/// table as a [`SharedRoot`]. Every error names the file, the rule and the field, and says
/// what to change.
fn resolve_rules(
    db: &mut impl GenericClient,
    registry: &mut Registry,
    settings: &RegistrySettings,
) -> Result<(), RegistryError> {
    let rules = &settings.rules;
    let mut roots: Vec<(usize, SharedRoot)> = Vec::new();
    for (i, rule) in rules.shared.iter().enumerate() {
        let fail = |field: &str, message: String| RegistryError::Rules(rules.error(i, field, message));
        let Some((index, table)) =
            registry.tables.iter().enumerate().find(|(_, t)| matches(&rule.table, &t.schema, &t.name))
        else {
            let synced: Vec<&str> = registry.tables.iter().map(|t| t.name.as_str()).collect();
            return Err(fail(
                "table",
                format!(
                    "{} is not a synced table (synced: {}); add it to SYNC_TABLES, or place the rule on a synced table",
                    rule.table,
                    synced.join(", ")
                ),
            ));
        };
        let Some(column) = table.column(&rule.column) else {
            let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(fail(
                "column",
                format!("{} has no column {:?} (its columns: {})", table.name, rule.column, names.join(", ")),
            ));
        };
        let role = if table.owner.as_deref() == Some(column.name.as_str()) {
            Some("the owner column (OWNER_COLUMN): a row has one owner, a shared key names a group")
        } else if table.updated_at.real() == Some(column.name.as_str())
            || table.deleted_at.real() == Some(column.name.as_str())
        {
            Some("a timestamp column (UPDATED_AT_COLUMN / DELETED_AT_COLUMN)")
        } else if column.excluded {
            Some("in EXCLUDE_COLUMNS: its values would reach clients inside bucket ids")
        } else {
            None
        };
        if let Some(role) = role {
            return Err(fail(
                "column",
                format!("{}.{} is {role}; choose the column holding the group's key", table.name, column.name),
            ));
        }
        if unusable_key_type(&column.db_type) {
            return Err(fail(
                "column",
                format!(
                    "{}.{} is of type {}, which cannot key a bucket (use a scalar key: uuid, text, an integer)",
                    table.name, column.name, column.db_type
                ),
            ));
        }
        let key_type = column.db_type.clone();
        let Some((oid, schema, name)) = resolve(db, &rule.members.table)? else {
            return Err(fail(
                "members.table",
                format!(
                    "table {} does not exist (check the name and the search_path, or qualify it as schema.table)",
                    rule.members.table
                ),
            ));
        };
        let members = read_table(db, oid, schema.clone(), name.clone())?;
        let member_column = |field: &str, wanted: &str| -> Result<Column, RegistryError> {
            members.columns.iter().find(|c| c.name == wanted).cloned().ok_or_else(|| {
                let names: Vec<&str> = members.columns.iter().map(|c| c.name.as_str()).collect();
                fail(field, format!("{schema}.{name} has no column {wanted:?} (its columns: {})", names.join(", ")))
            })
        };
        let key = member_column("members.key", &rule.members.key)?;
        let user = member_column("members.user", &rule.members.user)?;
        if key.db_type != key_type {
            return Err(fail(
                "members.key",
                format!(
                    "{schema}.{name}.{} is of type {} but {}.{} is of type {}; the key columns must have the same type",
                    key.name, key.db_type, table.name, column.name, key_type
                ),
            ));
        }
        if unusable_key_type(&user.db_type) {
            return Err(fail(
                "members.user",
                format!("{schema}.{name}.{} is of type {}, which cannot hold a user id", user.name, user.db_type),
            ));
        }
        let deleted_at = members
            .columns
            .iter()
            .any(|c| c.name == settings.deleted_at_column)
            .then(|| settings.deleted_at_column.clone());
        let members =
            Membership { schema, name, oid, key: key.name, user: user.name, user_type: user.db_type, deleted_at };
        roots.push((index, SharedRoot { bucket: rule.bucket.clone(), column: column.name.clone(), members }));
    }
    for (index, root) in roots {
        registry.tables[index].shared.push(root);
    }
    Ok(())
}

/// The catalog fingerprint query over the relation oids in `$1` (see [`catalog_fingerprint`]),
/// a literal for `concat!`. One index probe per relation and catalog: `oid = ANY (...)` made
/// the planner scan all of `pg_class`.
macro_rules! fingerprint_sql {
    () => {
        "SELECT md5(COALESCE(string_agg(x, '|' ORDER BY x), '')) FROM unnest($1::oid[]) AS r(o) CROSS JOIN LATERAL ( \
           SELECT 'r' || oid || ':' || xmin AS x FROM pg_class WHERE oid = r.o \
           UNION ALL SELECT 'a' || attrelid || ':' || attnum || ':' || xmin FROM pg_attribute \
             WHERE attrelid = r.o AND attnum > 0 \
           UNION ALL SELECT 'd' || adrelid || ':' || adnum || ':' || xmin FROM pg_attrdef WHERE adrelid = r.o \
           UNION ALL SELECT 'c' || conrelid || ':' || oid || ':' || xmin FROM pg_constraint WHERE conrelid = r.o) s"
    };
}

/// A fingerprint of everything in the catalog that shapes the registry of these relations:
/// the row versions (`xmin`) of their `pg_class`, `pg_attribute`, `pg_attrdef` and
/// `pg_constraint` rows. Any DDL on them writes new row versions, so the fingerprint changes
/// with every column, type, nullability, default or constraint change, and when a relation is
/// dropped. It reads only catalog indexes and renders nothing.
pub fn catalog_fingerprint(db: &mut impl GenericClient, oids: &[Oid]) -> Result<String, StoreError> {
    let oids: Vec<u32> = oids.iter().map(|o| o.0).collect();
    // Typed parameters: one round trip instead of prepare + execute.
    let rows = db
        .query_typed(fingerprint_sql!(), &[(&oids, Type::OID_ARRAY)])
        .map_err(StoreError::query("fingerprinting the catalog"))?;
    rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Corrupt { detail: "empty catalog fingerprint".into() })
}

/// The current MVCC snapshot as text (`pg_current_snapshot()`), one prepared round trip.
///
/// It lets callers skip [`catalog_fingerprint`] while the database is quiet: DDL writes catalog
/// rows under a transaction id, and two snapshots with the same `xmin:xmax:xip` see the same set
/// of committed transactions (no id was assigned since, every transaction that was running is
/// still running), hence the same catalog rows and the same fingerprint. A busy database just
/// pays for the fingerprint as before; nothing is ever served stale.
pub fn current_snapshot(session: &mut Session) -> Result<String, StoreError> {
    let rows = session
        .query_cached("SELECT pg_current_snapshot()::text", &[], &[])
        .map_err(StoreError::query("reading the current snapshot"))?;
    rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Corrupt { detail: "no current snapshot".into() })
}

/// The fingerprint of `oids` (see [`catalog_fingerprint`]) and the snapshot it was taken in, in
/// one round trip, so the pair can be reused for as long as the snapshot does not move.
///
/// In a database taking writes the snapshot moves with every commit, so this runs for most
/// requests. The oids (catalog numbers from the registry, never request text) are written into
/// the statement, which is then prepared once per session: with them as a parameter, every
/// execution was planned afresh (the row estimate follows the array's length, so the custom
/// plan always looked cheaper than the generic one), and planning cost more than reading the
/// catalog rows.
pub fn snapshot_fingerprint(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    oids: &[Oid],
) -> Result<(String, String), StoreError> {
    let sql = format!("SELECT pg_current_snapshot()::text, {}", fingerprint_expression(oids));
    let rows = cache.query(db, &sql, &[]).map_err(StoreError::query("fingerprinting the catalog"))?;
    let row = rows.first().ok_or_else(|| StoreError::Corrupt { detail: "empty catalog fingerprint".into() })?;
    Ok((row.get(0), row.get(1)))
}

/// [`catalog_fingerprint`] of `oids` as a parenthesised SQL expression with the oids written
/// into it (catalog numbers from the registry, never request text), for a statement that is
/// prepared once per session and reads the fingerprint beside other things.
pub fn fingerprint_expression(oids: &[Oid]) -> String {
    let list: Vec<String> = oids.iter().map(|o| o.0.to_string()).collect();
    concat!("(", fingerprint_sql!(), ")").replace("$1::oid[]", &format!("ARRAY[{}]::oid[]", list.join(",")))
}

/// Advisory lock serialising manifest updates across instances (§4.6).
const MANIFEST_LOCK: i64 = 91_110_042;

/// The `schema_version` of `hash` (§4.6): its stored version, or the next one, inserted.
pub fn manifest_version(db: &mut impl GenericClient, hash: &str) -> Result<i64, StoreError> {
    let mut tx = db.transaction().map_err(StoreError::query("starting the manifest transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MANIFEST_LOCK])
        .map_err(StoreError::query("locking the manifest"))?;
    let existing = tx
        .query_opt("SELECT schema_version FROM sync_schema_manifest WHERE schema_hash = $1", &[&hash])
        .map_err(StoreError::query("reading the manifest"))?;
    let version = match existing {
        Some(r) => r.get(0),
        None => tx
            .query_one(
                "INSERT INTO sync_schema_manifest (schema_version, schema_hash) \
                 SELECT COALESCE(MAX(schema_version), 0) + 1, $1 FROM sync_schema_manifest RETURNING schema_version",
                &[&hash],
            )
            .map_err(StoreError::query("recording the schema version"))?
            .get(0),
    };
    tx.commit().map_err(StoreError::query("committing the manifest"))?;
    Ok(version)
}
