//! The registry: the synced tables as introspected from the catalog (plain data, no I/O).
//!
//! Built by `store::introspect`, read by the schema contract, the engine (hydration, push,
//! snapshot), bucket routing and RLS generation. SQL identifiers are taken from here only, and
//! always quoted with [`quote_ident`].

use std::collections::{BTreeMap, HashMap, HashSet};

pub use crate::protocol::LogicalType;
use crate::types::Oid;

/// Quotes an SQL identifier: `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One column of a synced table.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// `attname`.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub db_type: String,
    /// The type's oid.
    pub type_oid: Oid,
    /// The type whose `row_to_json` rendering this column's values get, for rendering edge
    /// checksums from WAL text (`crate::capture::row_json`): the type itself, a domain's built-in base
    /// type, `text` for an enum (`text[]` for an enum array), or 0 when that is not known (an
    /// enum with a cast to JSON, a domain over a user type).
    pub render_oid: Oid,
    /// For arrays, the element type's `format_type` (used to bind pushed arrays).
    pub element_type: Option<String>,
    /// `NOT attnotnull`.
    pub nullable: bool,
    /// `pg_get_expr` of the default, or empty.
    pub default_sql: String,
    /// The mapped type; `None` for an unsupported type on an excluded column.
    pub logical: Option<LogicalType>,
    /// `EXCLUDE_COLUMNS`: never leaves the server. Left out of the served schema, of every
    /// record's `data` ([`SyncTable::row_json_sql`]), of every checksum (they are computed over
    /// `data`), and never written by a push.
    pub excluded: bool,
}

/// A timestamp column by convention: real in PostgreSQL, or virtual (synthesised for the SDKs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampColumn {
    /// The table has this column.
    Real(String),
    /// The table lacks it; the schema still names it so SDK tables have it.
    Virtual(String),
}

impl TimestampColumn {
    /// The column name either way.
    pub fn name(&self) -> &str {
        match self {
            TimestampColumn::Real(n) | TimestampColumn::Virtual(n) => n,
        }
    }

    /// The real column, if the table has it.
    pub fn real(&self) -> Option<&str> {
        match self {
            TimestampColumn::Real(n) => Some(n),
            TimestampColumn::Virtual(_) => None,
        }
    }
}

/// A foreign key column pair pointing at another registered table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The local column.
    pub column: String,
    /// The referenced table (registered, unqualified).
    pub ref_table: String,
    /// The referenced column.
    pub ref_column: String,
}

/// The single FK pair to a registered table, when there is exactly one (§5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent table.
    pub table: String,
    /// The local FK column.
    pub fk_column: String,
    /// The referenced column in the parent.
    pub parent_column: String,
}

/// A synced table.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTable {
    /// Its schema.
    pub schema: String,
    /// Its name (unique among registered tables; the wire `table_name`).
    pub name: String,
    /// The relation oid.
    pub oid: Oid,
    /// Columns in attribute order.
    pub columns: Vec<Column>,
    /// The single primary key column.
    pub pk: String,
    /// The owner column, when the table has it.
    pub owner: Option<String>,
    /// The updated-at column.
    pub updated_at: TimestampColumn,
    /// The deleted-at column.
    pub deleted_at: TimestampColumn,
    /// `created_at`, when present (write-protected).
    pub created_at: Option<String>,
    /// Foreign keys to registered tables, in constraint order.
    pub foreign_keys: Vec<ForeignKey>,
    /// The parent for bucketing and RLS.
    pub parent: Option<ParentLink>,
    /// Clients may not push to it.
    pub read_only: bool,
}

impl SyncTable {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The SQL expression (over alias `alias`) for a row's JSON as clients receive it and as
    /// its checksum is computed: `row_to_json` of the row, or, when the table has excluded
    /// columns, of a row of its other columns (same names, same types, so the same rendering).
    pub fn row_json_sql(&self, alias: &str) -> String {
        if !self.columns.iter().any(|c| c.excluded) {
            return format!("row_to_json({alias}.*)");
        }
        let served: Vec<String> =
            self.columns.iter().filter(|c| !c.excluded).map(|c| format!("{alias}.{}", quote_ident(&c.name))).collect();
        format!("(SELECT row_to_json(r) FROM (SELECT {}) r)", served.join(", "))
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// §5.2: referenced registered tables, sorted, duplicates kept.
    pub fn dependencies(&self) -> Vec<String> {
        let mut deps: Vec<String> = self.foreign_keys.iter().map(|f| f.ref_table.clone()).collect();
        deps.sort();
        deps
    }

    /// §7.7: columns clients never write directly (pk, created_at, timestamps, FK columns).
    pub fn is_protected(&self, column: &str) -> bool {
        column == self.pk
            || self.created_at.as_deref() == Some(column)
            || self.updated_at.real() == Some(column)
            || self.deleted_at.real() == Some(column)
            || self.foreign_keys.iter().any(|f| f.column == column)
    }

    /// True when `column` is an FK column to a registered table.
    pub fn is_fk_column(&self, column: &str) -> bool {
        self.foreign_keys.iter().any(|f| f.column == column)
    }
}

/// Every synced table, in registration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    /// Registration order (`SYNC_TABLES` order, or publication order).
    pub tables: Vec<SyncTable>,
}

impl Registry {
    /// A table by its wire name.
    pub fn table(&self, name: &str) -> Option<&SyncTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Parents before children (Kahn's algorithm over FK edges, seeds in registration order;
    /// self-references ignored). Startup validation refuses cycles, so every table appears.
    pub fn dependency_order(&self) -> Vec<&SyncTable> {
        let index: HashMap<&str, usize> = self.tables.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut indegree = vec![0usize; self.tables.len()];
        let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, t) in self.tables.iter().enumerate() {
            let parents: HashSet<usize> = t
                .foreign_keys
                .iter()
                .filter_map(|f| index.get(f.ref_table.as_str()).copied())
                .filter(|&p| p != i)
                .collect();
            indegree[i] = parents.len();
            for p in parents {
                children.entry(p).or_default().push(i);
            }
        }
        let mut order = Vec::with_capacity(self.tables.len());
        let mut done = vec![false; self.tables.len()];
        while order.len() < self.tables.len() {
            let Some(next) = (0..self.tables.len()).find(|&i| !done[i] && indegree[i] == 0) else {
                // A cycle (refused at startup): append the rest in registration order.
                order.extend((0..self.tables.len()).filter(|&i| !done[i]));
                break;
            };
            done[next] = true;
            order.push(next);
            for &c in children.get(&next).map(Vec::as_slice).unwrap_or(&[]) {
                indegree[c] = indegree[c].saturating_sub(1);
            }
        }
        order.into_iter().map(|i| &self.tables[i]).collect()
    }

    /// A registered table whose FKs form a cycle with other registered tables (self-references
    /// excluded), if any.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        let order = self.dependency_order();
        // Kahn's algorithm leaves cycle members with a positive in-degree; detect them by
        // checking that every table comes after all of its parents.
        let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let cyclic: Vec<String> = order
            .iter()
            .filter(|t| {
                t.foreign_keys.iter().any(|f| {
                    f.ref_table != t.name && position.get(f.ref_table.as_str()) > position.get(t.name.as_str())
                })
            })
            .map(|t| t.name.clone())
            .collect();
        if cyclic.is_empty() {
            None
        } else {
            Some(cyclic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, fks: &[&str]) -> SyncTable {
        SyncTable {
            schema: "public".into(),
            name: name.into(),
            oid: Oid(1),
            columns: vec![],
            pk: "id".into(),
            owner: None,
            updated_at: TimestampColumn::Real("updated_at".into()),
            deleted_at: TimestampColumn::Virtual("deleted_at".into()),
            created_at: None,
            foreign_keys: fks
                .iter()
                .map(|t| ForeignKey { column: format!("{t}_id"), ref_table: t.to_string(), ref_column: "id".into() })
                .collect(),
            parent: None,
            read_only: false,
        }
    }

    #[test]
    fn parents_come_before_children() {
        let r = Registry {
            tables: vec![
                table("comments", &["tasks"]),
                table("tasks", &["categories", "tasks"]),
                table("categories", &[]),
            ],
        };
        let order: Vec<&str> = r.dependency_order().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, vec!["categories", "tasks", "comments"]);
        assert!(r.find_cycle().is_none());
        assert_eq!(r.tables[1].dependencies(), vec!["categories", "tasks"]);
    }

    #[test]
    fn cycles_are_found() {
        let r = Registry { tables: vec![table("a", &["b"]), table("b", &["a"]), table("c", &[])] };
        let cycle = r.find_cycle().unwrap();
        assert!(cycle.contains(&"a".to_string()) || cycle.contains(&"b".to_string()));
    }

    #[test]
    fn excluded_columns_are_left_out_of_the_row_json() {
        let column = |name: &str, excluded| Column {
            name: name.into(),
            db_type: "text".into(),
            type_oid: Oid(25),
            render_oid: Oid(25),
            element_type: None,
            nullable: true,
            default_sql: String::new(),
            logical: Some(LogicalType::String),
            excluded,
        };
        let mut t = table("tasks", &[]);
        t.columns = vec![column("id", false), column("title", false)];
        assert_eq!(t.row_json_sql("t"), "row_to_json(t.*)");
        t.columns.push(column("sec\"ret", true));
        assert_eq!(t.row_json_sql("t"), r#"(SELECT row_to_json(r) FROM (SELECT t."id", t."title") r)"#);
    }

    #[test]
    fn protected_columns() {
        let mut t = table("tasks", &["categories"]);
        t.created_at = Some("created_at".into());
        for c in ["id", "created_at", "updated_at", "categories_id"] {
            assert!(t.is_protected(c), "{c}");
        }
        // A virtual deleted_at is not a real column and not protected.
        assert!(!t.is_protected("deleted_at"));
        assert!(!t.is_protected("title"));
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
