//! Bucket assignment (§9.3): owner column -> `user:<id>`, NULL owner -> `global`, child tables
//! through their foreign-key chain to the root owner; with bucket rules (`BUCKET_RULES`) a rule
//! column holding a key -> `<bucket>:<key>`, checked before the owner at every level of the
//! chain ([`super::source::resolve_owners`] finds the owners). The final step is a
//! [`BucketAssigner`] that embedders can replace to put a row into several buckets. The rules
//! are not a second path: they resolve to [`Owner::Shared`], which the assigner turns into
//! buckets like any other owner. No I/O here.

use std::collections::{HashMap, HashSet};

use crate::capture::events::RowChange;
use crate::registry::Registry;
use crate::types::BucketId;

/// How one table is routed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRouting {
    /// Registered name.
    pub name: String,
    /// `"schema"."table"`.
    pub qualified: String,
    /// Primary key column.
    pub pk: String,
    /// The primary key's type (`format_type`), for index-friendly key lookups.
    pub pk_type: String,
    /// Owner column, when the table has it.
    pub owner: Option<String>,
    /// `(parent table, local FK column)` for child tables (§5.3).
    pub parent: Option<(String, String)>,
    /// `(bucket name, column)` of every bucket rule rooted at this table, in file order.
    pub shared: Vec<(String, String)>,
    /// The real deleted-at column (an update setting it is a removal).
    pub deleted_at: Option<String>,
    /// Every column, in table order: what `row_to_json` of a row holds.
    pub columns: Vec<String>,
    /// Each column's type oid, as the registry read it.
    pub type_oids: Vec<u32>,
    /// Each column's rendering type (`registry::Column::render_oid`), for
    /// `crate::capture::row_json`; `row_json::OMITTED` for an excluded column.
    pub render_oids: Vec<u32>,
    /// The SQL expression (over alias `t`) of a row's JSON as clients receive it
    /// (`registry::SyncTable::row_json_sql`: without excluded columns).
    pub row_json: String,
}

impl TableRouting {
    /// Whether a replicated tuple with these columns carries the whole row as the registry knows
    /// it, so that its JSON can be rendered from the tuple with [`TableRouting::render_oids`]
    /// (`false` after a schema change the registry has not caught up with, or with stored
    /// generated columns, which pgoutput leaves out).
    pub fn is_whole_row(&self, columns: &[crate::capture::events::RelColumn]) -> bool {
        columns.len() == self.columns.len()
            && columns
                .iter()
                .zip(self.columns.iter().zip(&self.type_oids))
                .all(|(c, (n, t))| &c.name == n && c.type_oid.0 == *t)
    }

    /// The columns that route a row of this table, in the order resolution reads them: rule
    /// columns, then the owner column, else the foreign key to the parent.
    pub fn routing_columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.shared.iter().map(|(_, c)| c.as_str()).collect();
        match (&self.owner, &self.parent) {
            (Some(owner), _) => out.push(owner),
            (None, Some((_, fk))) => out.push(fk),
            (None, None) => {}
        }
        out
    }
}

/// Every routed table by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    tables: HashMap<String, TableRouting>,
    /// Tables some other routed table is a child of.
    parents: HashSet<String>,
}

impl RoutingTable {
    /// Routing for the registered tables.
    pub fn from_registry(registry: &Registry) -> RoutingTable {
        let tables: HashMap<String, TableRouting> = registry
            .tables
            .iter()
            .map(|t| {
                let routing = TableRouting {
                    name: t.name.clone(),
                    qualified: t.qualified(),
                    pk: t.pk.clone(),
                    pk_type: t.column(&t.pk).map(|c| c.db_type.clone()).unwrap_or_else(|| "text".into()),
                    owner: t.owner.clone(),
                    parent: t.parent.as_ref().map(|p| (p.table.clone(), p.fk_column.clone())),
                    shared: t.shared.iter().map(|r| (r.bucket.clone(), r.column.clone())).collect(),
                    deleted_at: t.deleted_at.real().map(str::to_string),
                    columns: t.columns.iter().map(|c| c.name.clone()).collect(),
                    type_oids: t.columns.iter().map(|c| c.type_oid.0).collect(),
                    render_oids: t
                        .columns
                        .iter()
                        .map(|c| if c.excluded { crate::capture::row_json::OMITTED } else { c.render_oid.0 })
                        .collect(),
                    row_json: t.row_json_sql("t"),
                };
                (t.name.clone(), routing)
            })
            .collect();
        let parents = tables.values().filter_map(|t| t.parent.as_ref().map(|(p, _)| p.clone())).collect();
        RoutingTable { tables, parents }
    }

    /// Routing for the given tables (embedders and tests; the server uses
    /// [`RoutingTable::from_registry`]).
    pub fn new(tables: impl IntoIterator<Item = TableRouting>) -> RoutingTable {
        let tables: HashMap<String, TableRouting> = tables.into_iter().map(|t| (t.name.clone(), t)).collect();
        let parents = tables.values().filter_map(|t| t.parent.as_ref().map(|(p, _)| p.clone())).collect();
        RoutingTable { tables, parents }
    }

    /// A table's routing.
    pub fn get(&self, table: &str) -> Option<&TableRouting> {
        self.tables.get(table)
    }

    /// Every routed table.
    pub fn tables(&self) -> impl Iterator<Item = &TableRouting> {
        self.tables.values()
    }

    /// Whether some routed table is a child of `table` (routed through it to its owner).
    pub fn has_children(&self, table: &str) -> bool {
        self.parents.contains(table)
    }
}

/// A key of a bucket rule a row holds: the row belongs to `<bucket>:<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    /// The rule's bucket name (`team`).
    pub bucket: String,
    /// The key's text (the rule column's value).
    pub key: String,
}

/// The owner a row resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Owned by this user id (owner column text).
    User(String),
    /// Shared through bucket rules: the keys its rule columns (own or an ancestor's) hold.
    Shared(Vec<SharedKey>),
    /// The owner column (own or an ancestor's) is NULL or empty: a global row.
    Null,
    /// Neither the table nor any ancestor has an owner column.
    NoOwnership,
    /// A child row whose parent (or its FK value) cannot be found.
    ParentMissing(String),
    /// The routing column arrived as unchanged TOAST and the row no longer exists (a later
    /// delete in the stream removes it): the change is skipped, not assigned.
    RowGone,
}

/// Decides the buckets of a row. Must be cheap and pure: it runs for every change.
pub trait BucketAssigner: Send + Sync {
    /// The buckets of `change` in `table`, given its resolved `owner`. An `Err` records the
    /// change in `sync_rule_failures` instead of the changelog.
    fn assign(&self, table: &TableRouting, change: &RowChange, owner: &Owner) -> Result<Vec<BucketId>, String>;
}

/// The contract's rule: `user:<owner>` or `global`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultAssigner;

impl BucketAssigner for DefaultAssigner {
    fn assign(&self, table: &TableRouting, change: &RowChange, owner: &Owner) -> Result<Vec<BucketId>, String> {
        match owner {
            Owner::User(id) => BucketId::custom(&format!("user:{id}"))
                .map(|b| vec![b])
                .ok_or_else(|| format!("{}/{}: owner {id:?} cannot form a bucket id", table.name, change.key)),
            Owner::Shared(keys) => keys
                .iter()
                .map(|k| {
                    crate::rules::bucket_id(&k.bucket, &k.key).ok_or_else(|| {
                        format!("{}/{}: key {:?} cannot form a {} bucket id", table.name, change.key, k.key, k.bucket)
                    })
                })
                .collect(),
            Owner::Null | Owner::NoOwnership => Ok(vec![BucketId::global()]),
            Owner::ParentMissing(why) => Err(why.clone()),
            Owner::RowGone => Ok(Vec::new()),
        }
    }
}

/// The owner an owner column's value names.
pub(crate) fn owner_of(value: Option<&str>) -> Owner {
    match value {
        None | Some("") => Owner::Null,
        Some(v) => Owner::User(v.to_string()),
    }
}

/// The rule keys of a row of `table`, given its rule columns' values in `table.shared` order
/// (an empty or NULL value names no bucket).
pub(crate) fn shared_keys(table: &TableRouting, values: &[Option<String>]) -> Vec<SharedKey> {
    table
        .shared
        .iter()
        .zip(values)
        .filter_map(|((bucket, _), value)| {
            value.as_deref().filter(|v| !v.is_empty()).map(|v| SharedKey { bucket: bucket.clone(), key: v.to_string() })
        })
        .collect()
}

/// The assigned buckets as strings, de-duplicated, in assignment order.
pub fn dedup_buckets(buckets: Vec<BucketId>) -> Vec<String> {
    let mut seen = HashSet::new();
    buckets.into_iter().map(BucketId::into_string).filter(|b| seen.insert(b.clone())).collect()
}
