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

/// The membership table of a bucket rule (`BUCKET_RULES`), as found in the catalog. It need
/// not be synced: synchro reads it and captures its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// The relation oid.
    pub oid: Oid,
    /// The column holding the shared key (a team id).
    pub key: String,
    /// The column holding the member's user id.
    pub user: String,
    /// The user column's type (`format_type`), so lookups by user compare in that type.
    pub user_type: String,
    /// Its deleted-at column (`DELETED_AT_COLUMN`), when it has one: a soft-deleted membership
    /// is no membership.
    pub deleted_at: Option<String>,
}

impl Membership {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.name`, for messages.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// ` AND m."deleted_at" IS NULL` when the table soft-deletes (alias `m`), else nothing.
    pub fn live_filter(&self) -> String {
        self.deleted_at.as_deref().map(|c| format!(" AND m.{} IS NULL", quote_ident(c))).unwrap_or_default()
    }
}

/// A bucket rule rooted at a synced table: a row whose `column` holds a key `K` (not NULL,
/// not empty) belongs to bucket `<bucket>:K`, and the members of `K` see it. Rows of tables
/// that reach this one through foreign keys follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoot {
    /// The bucket name (`team` for `team:K`).
    pub bucket: String,
    /// The column of the table holding the key.
    pub column: String,
    /// Who is a member of each key.
    pub members: Membership,
}

impl SharedRoot {
    /// The SQL condition that the key in `alias`.`column` is shared with the user `user` (an
    /// SQL expression: `$1`, or `current_setting('app.user_id', true)` in RLS policies): a row
    /// of the membership table names both. Never NULL.
    pub fn member_check(&self, alias: &str, user: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {m} m WHERE m.{key} = {alias}.{col} AND m.{usr}::text = {user}{live})",
            m = self.members.qualified(),
            key = quote_ident(&self.members.key),
            col = quote_ident(&self.column),
            usr = quote_ident(&self.members.user),
            live = self.members.live_filter(),
        )
    }

    /// The SQL condition that `alias`.`column` holds a key (not NULL, not empty), so the rule,
    /// and not the owner column or the parent, decides the row's buckets. Never NULL.
    pub fn has_key(&self, alias: &str) -> String {
        let c = format!("{alias}.{}", quote_ident(&self.column));
        format!("({c} IS NOT NULL AND {c}::text <> '')")
    }
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
    /// The bucket rules rooted at this table (`BUCKET_RULES`), in file order.
    pub shared: Vec<SharedRoot>,
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

    /// §7.7: columns clients never write directly (pk, created_at, timestamps, FK columns). A
    /// bucket rule's column stays writable even when it is a foreign key: moving a row between
    /// teams is an ordinary update, checked against the caller's memberships.
    pub fn is_protected(&self, column: &str) -> bool {
        column == self.pk
            || self.created_at.as_deref() == Some(column)
            || self.updated_at.real() == Some(column)
            || self.deleted_at.real() == Some(column)
            || (self.foreign_keys.iter().any(|f| f.column == column) && !self.is_shared_column(column))
    }

    /// True when `column` is the key column of a bucket rule rooted at this table.
    pub fn is_shared_column(&self, column: &str) -> bool {
        self.shared.iter().any(|r| r.column == column)
    }

    /// True when `column` is an FK column to a registered table.
    pub fn is_fk_column(&self, column: &str) -> bool {
        self.foreign_keys.iter().any(|f| f.column == column)
    }
}

/// How [`Registry::scope_sql`] writes the parts of a scope condition that differ between the
/// engine's predicates and the generated RLS policies.
pub struct ScopeSql<'a> {
    /// The condition on owner column `column` of `table` under `alias` (whether NULL owners
    /// count, how the user is compared).
    pub owner: &'a dyn Fn(&str, &SyncTable, &str) -> String,
    /// The condition that the key of `root` under `alias` is shared with the user
    /// ([`SharedRoot::member_check`] with the caller's user expression).
    pub member: &'a dyn Fn(&SharedRoot, &str) -> String,
    /// The condition for rows whose chain ends at a table without ownership (no owner column,
    /// no rule key, no parent); `None`: there is no condition (the caller decides).
    pub unowned: Option<&'a str>,
}

/// Every synced table, in registration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    /// Registration order (`SYNC_TABLES` order, or publication order).
    pub tables: Vec<SyncTable>,
}

impl Registry {
    /// The membership table of every rule bucket, once per bucket name, sorted by it (rules of
    /// one bucket share their membership table).
    pub fn memberships(&self) -> Vec<(&str, &Membership)> {
        let mut out: Vec<(&str, &Membership)> = Vec::new();
        for root in self.tables.iter().flat_map(|t| &t.shared) {
            if !out.iter().any(|(b, _)| *b == root.bucket) {
                out.push((&root.bucket, &root.members));
            }
        }
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Every membership table, once (by oid).
    pub fn membership_tables(&self) -> Vec<&Membership> {
        let mut out: Vec<&Membership> = Vec::new();
        for (_, m) in self.memberships() {
            if !out.iter().any(|o| o.oid == m.oid) {
                out.push(m);
            }
        }
        out
    }

    /// True when bucket rules are configured.
    pub fn has_rules(&self) -> bool {
        self.tables.iter().any(|t| !t.shared.is_empty())
    }

    /// The SQL condition that a row of `table` under `alias` is in a user's scope, the rule
    /// bucket assignment follows (`crate::capture::buckets`):
    ///
    /// * a table with bucket rules: when a rule column holds a key, the row is in scope exactly
    ///   when the user is a member of one of its keys; otherwise the rules below apply;
    /// * a table with the owner column: [`ScopeSql::owner`];
    /// * a child table: its parent row (through the foreign key) is in scope, recursively;
    /// * otherwise [`ScopeSql::unowned`].
    ///
    /// `None` when the chain ends without ownership and `unowned` is `None`. Identifiers come
    /// from the registry, quoted; aliases of ancestors are `p1`, `p2`, ...
    pub fn scope_sql(&self, table: &SyncTable, alias: &str, spec: &ScopeSql<'_>) -> Option<String> {
        self.scope_at(table, alias, spec, 0)
    }

    fn scope_at(&self, table: &SyncTable, alias: &str, spec: &ScopeSql<'_>, depth: usize) -> Option<String> {
        let rest = if let Some(owner) = &table.owner {
            Some((spec.owner)(alias, table, owner))
        } else if let Some(link) = table.parent.as_ref().filter(|l| self.is_owned_chain(&l.table, depth + 1)) {
            // Cycles are refused at startup; the bound only guards a registry changed underneath.
            let parent = self.table(&link.table).filter(|_| depth < 16)?;
            let p = format!("p{}", depth + 1);
            self.scope_at(parent, &p, spec, depth + 1).map(|cond| {
                format!(
                    "EXISTS (SELECT 1 FROM {} {p} WHERE {p}.{} = {alias}.{} AND {cond})",
                    parent.qualified(),
                    quote_ident(&link.parent_column),
                    quote_ident(&link.fk_column),
                )
            })
        } else {
            spec.unowned.map(str::to_string)
        };
        if table.shared.is_empty() {
            return rest;
        }
        let keyed: Vec<String> = table.shared.iter().map(|r| r.has_key(alias)).collect();
        let member: Vec<String> =
            table.shared.iter().map(|r| format!("({} AND {})", r.has_key(alias), (spec.member)(r, alias))).collect();
        Some(format!(
            "(CASE WHEN {} THEN {} ELSE {} END)",
            keyed.join(" OR "),
            member.join(" OR "),
            rest.unwrap_or_else(|| "false".to_string())
        ))
    }

    /// True when `table` or one of its ancestors has the owner column or a bucket rule (a chain
    /// without either makes its rows global).
    fn is_owned_chain(&self, table: &str, depth: usize) -> bool {
        let Some(t) = self.table(table).filter(|_| depth <= 16) else { return false };
        t.owner.is_some()
            || !t.shared.is_empty()
            || t.parent.as_ref().is_some_and(|p| self.is_owned_chain(&p.table, depth + 1))
    }

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
            shared: Vec::new(),
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

    fn teams_registry() -> Registry {
        let members = Membership {
            schema: "public".into(),
            name: "team_members".into(),
            oid: Oid(9),
            key: "team_id".into(),
            user: "user_id".into(),
            user_type: "text".into(),
            deleted_at: None,
        };
        let mut projects = table("projects", &["teams"]);
        projects.parent =
            Some(ParentLink { table: "teams".into(), fk_column: "teams_id".into(), parent_column: "id".into() });
        projects.owner = Some("user_id".into());
        projects.shared = vec![SharedRoot { bucket: "team".into(), column: "teams_id".into(), members }];
        let mut tasks = table("tasks", &["projects"]);
        tasks.parent =
            Some(ParentLink { table: "projects".into(), fk_column: "projects_id".into(), parent_column: "id".into() });
        Registry { tables: vec![table("teams", &[]), projects, tasks] }
    }

    #[test]
    fn scope_follows_rules_then_owners_through_the_chain() {
        let r = teams_registry();
        let owner = |a: &str, _: &SyncTable, c: &str| format!("{a}.{c} = U");
        let member = |root: &SharedRoot, a: &str| root.member_check(a, "$1");
        let spec = ScopeSql { owner: &owner, member: &member, unowned: Some("EVERYONE") };
        let projects = r.scope_sql(r.table("projects").unwrap(), "t", &spec).unwrap();
        assert_eq!(
            projects,
            "(CASE WHEN (t.\"teams_id\" IS NOT NULL AND t.\"teams_id\"::text <> '') THEN \
             ((t.\"teams_id\" IS NOT NULL AND t.\"teams_id\"::text <> '') AND EXISTS (SELECT 1 FROM \"public\".\"team_members\" m \
             WHERE m.\"team_id\" = t.\"teams_id\" AND m.\"user_id\"::text = $1)) ELSE t.user_id = U END)"
        );
        let tasks = r.scope_sql(r.table("tasks").unwrap(), "t", &spec).unwrap();
        assert!(
            tasks.starts_with("EXISTS (SELECT 1 FROM \"public\".\"projects\" p1 WHERE p1.\"id\" = t.\"projects_id\" AND (CASE WHEN (p1.\"teams_id\""),
            "{tasks}"
        );
        assert!(tasks.ends_with("ELSE p1.user_id = U END))"), "{tasks}");
        // A table without ownership, and a child whose chain has none, are everyone's.
        assert_eq!(r.scope_sql(r.table("teams").unwrap(), "t", &spec).unwrap(), "EVERYONE");
        let none = ScopeSql { unowned: None, ..spec };
        assert_eq!(r.scope_sql(r.table("teams").unwrap(), "t", &none), None);
        assert_eq!(r.memberships().len(), 1);
        assert_eq!(r.membership_tables()[0].qualified(), "\"public\".\"team_members\"");
        assert!(r.has_rules());
        // The rule column stays writable though it is a foreign key.
        assert!(!r.table("projects").unwrap().is_protected("teams_id"));
        assert!(r.table("tasks").unwrap().is_protected("projects_id"));
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
