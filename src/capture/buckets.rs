//! Bucket assignment (§9.3): owner column -> `user:<id>`, NULL owner -> `global`, child tables
//! through their foreign-key chain to the root owner; with bucket rules (`BUCKET_RULES`) a rule
//! column holding a key -> `<bucket>:<key>`, checked before the owner at every level of the
//! chain. Owners are resolved for a whole chunk of changes at once (one query per table and
//! chain level, never per row); the final step is a [`BucketAssigner`] that embedders can
//! replace to put a row into several buckets. The rules are not a second path: they resolve
//! to [`Owner::Shared`], which the assigner turns into buckets like any other owner.

use std::collections::{HashMap, HashSet};

use postgres::GenericClient;

use crate::capture::events::{ColumnValue, RowChange};
use crate::registry::{quote_ident, Registry};
use crate::store::pool::StoreError;
use crate::types::BucketId;

/// How one table is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl TableRouting {
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

fn owner_of(value: Option<&str>) -> Owner {
    match value {
        None | Some("") => Owner::Null,
        Some(v) => Owner::User(v.to_string()),
    }
}

/// One parent-lookup row: the parent's rule keys, its owner (if it has the column) and its own
/// FK value.
struct ParentRow {
    keys: Vec<SharedKey>,
    owner: Option<Option<String>>,
    next_fk: Option<String>,
}

/// The rule keys of a row of `table`, given its rule columns' values in `table.shared` order.
fn shared_keys(table: &TableRouting, values: &[Option<String>]) -> Vec<SharedKey> {
    table
        .shared
        .iter()
        .zip(values)
        .filter_map(|((bucket, _), value)| {
            value.as_deref().filter(|v| !v.is_empty()).map(|v| SharedKey { bucket: bucket.clone(), key: v.to_string() })
        })
        .collect()
}

fn lookup_parents(
    db: &mut impl GenericClient,
    parent: &TableRouting,
    keys: &[String],
) -> Result<HashMap<String, ParentRow>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let owner = parent.owner.as_deref().map(|c| format!("p.{}::text", quote_ident(c))).unwrap_or("NULL::text".into());
    let fk = parent.parent.as_ref().map(|(_, c)| format!("p.{}::text", quote_ident(c))).unwrap_or("NULL::text".into());
    let shared: String = parent.shared.iter().map(|(_, c)| format!(", p.{}::text", quote_ident(c))).collect();
    let sql = format!(
        "SELECT p.{pk}::text, {owner}, {fk}{shared} FROM {table} p WHERE p.{pk} = ANY ($1::text[]::{ty}[])",
        pk = quote_ident(&parent.pk),
        table = parent.qualified,
        ty = parent.pk_type,
    );
    let rows =
        db.query(&sql, &[&keys]).map_err(StoreError::query(format!("resolving owners through {}", parent.name)))?;
    Ok(rows
        .iter()
        .map(|r| {
            let owner_value: Option<String> = r.get(1);
            let values: Vec<Option<String>> = (0..parent.shared.len()).map(|i| r.get(3 + i)).collect();
            let keys = shared_keys(parent, &values);
            (r.get(0), ParentRow { keys, owner: parent.owner.as_ref().map(|_| owner_value), next_fk: r.get(2) })
        })
        .collect())
}

/// Current values of `columns` for `keys` (used when a needed column arrived as unchanged TOAST).
pub fn current_values(
    db: &mut impl GenericClient,
    table: &TableRouting,
    column: &str,
    keys: &[String],
) -> Result<HashMap<String, Option<String>>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT t.{pk}::text, t.{col}::text FROM {table} t WHERE t.{pk} = ANY ($1::text[]::{ty}[])",
        pk = quote_ident(&table.pk),
        col = quote_ident(column),
        table = table.qualified,
        ty = table.pk_type,
    );
    let rows =
        db.query(&sql, &[&keys]).map_err(StoreError::query(format!("reading current values of {}", table.name)))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Resolves the owner of every change (same order), with one query per table and chain level.
pub fn resolve_owners(
    db: &mut impl GenericClient,
    routing: &RoutingTable,
    changes: &[&RowChange],
) -> Result<Vec<Owner>, StoreError> {
    let mut owners: Vec<Option<Owner>> = vec![None; changes.len()];
    // Pending child rows: index -> (current ancestor table, FK value pointing into it).
    let mut pending: Vec<(usize, String, String)> = Vec::new();
    // Values that arrived as unchanged TOAST, per (table, column): fetched in one query each.
    let mut toasted: HashMap<(String, String), Vec<String>> = HashMap::new();
    for c in changes {
        if let Some(t) = routing.get(&c.table) {
            for col in t.routing_columns() {
                if matches!(c.value(col), Some(ColumnValue::UnchangedToast)) {
                    toasted.entry((t.name.clone(), col.to_string())).or_default().push(c.key.clone());
                }
            }
        }
    }
    let mut current: HashMap<(String, String), HashMap<String, Option<String>>> = HashMap::new();
    for ((table, col), keys) in toasted {
        if let Some(t) = routing.get(&table) {
            current.insert((table.clone(), col.clone()), current_values(db, t, &col, &keys)?);
        }
    }
    let value_of = |c: &RowChange, col: &str| -> Option<String> {
        match c.value(col) {
            Some(ColumnValue::Text(v)) => Some(v.clone()),
            Some(ColumnValue::UnchangedToast) => {
                current.get(&(c.table.to_string(), col.to_string())).and_then(|m| m.get(&c.key).cloned()).flatten()
            }
            _ => None,
        }
    };
    let gone = |c: &RowChange, col: &str| -> bool {
        matches!(c.value(col), Some(ColumnValue::UnchangedToast))
            && !current.get(&(c.table.to_string(), col.to_string())).is_some_and(|m| m.contains_key(&c.key))
    };
    for (i, c) in changes.iter().enumerate() {
        let Some(t) = routing.get(&c.table) else {
            owners[i] = Some(Owner::ParentMissing(format!("table {} is not routed", c.table)));
            continue;
        };
        if t.routing_columns().into_iter().any(|col| gone(c, col)) {
            owners[i] = Some(Owner::RowGone);
            continue;
        }
        let values: Vec<Option<String>> = t.shared.iter().map(|(_, col)| value_of(c, col)).collect();
        let keys = shared_keys(t, &values);
        if !keys.is_empty() {
            owners[i] = Some(Owner::Shared(keys));
        } else if let Some(col) = &t.owner {
            owners[i] = Some(owner_of(value_of(c, col).as_deref()));
        } else if let Some((parent, fk)) = &t.parent {
            match value_of(c, fk) {
                Some(v) => pending.push((i, parent.clone(), v)),
                None => {
                    owners[i] = Some(Owner::ParentMissing(format!(
                        "{}/{}: foreign key {fk} is NULL or missing",
                        c.table, c.key
                    )))
                }
            }
        } else {
            owners[i] = Some(Owner::NoOwnership);
        }
    }
    // Walk up one level per round; each round runs one query per ancestor table.
    let mut guard = 0;
    while !pending.is_empty() {
        guard += 1;
        let mut by_table: HashMap<String, Vec<String>> = HashMap::new();
        for (_, table, key) in &pending {
            by_table.entry(table.clone()).or_default().push(key.clone());
        }
        let mut found: HashMap<String, HashMap<String, ParentRow>> = HashMap::new();
        for (table, mut keys) in by_table {
            keys.sort();
            keys.dedup();
            let Some(parent) = routing.get(&table) else { continue };
            found.insert(table, lookup_parents(db, parent, &keys)?);
        }
        let mut next = Vec::new();
        for (i, table, key) in pending {
            let row = found.get(&table).and_then(|m| m.get(&key));
            let parent = routing.get(&table);
            owners[i] = Some(match (row, parent) {
                (None, _) | (_, None) => Owner::ParentMissing(format!(
                    "{}/{}: parent {table} row {key} not found",
                    changes[i].table, changes[i].key
                )),
                (Some(r), Some(_)) if !r.keys.is_empty() => Owner::Shared(r.keys.clone()),
                (Some(r), Some(_)) if r.owner.is_some() => owner_of(r.owner.clone().flatten().as_deref()),
                (Some(r), Some(p)) => match (&p.parent, &r.next_fk) {
                    // Cycles are refused at startup; the guard only protects against a
                    // registry changed underneath us.
                    (Some((grand, _)), Some(fk)) if guard < 32 => {
                        next.push((i, grand.clone(), fk.clone()));
                        continue;
                    }
                    _ => Owner::Null,
                },
            });
        }
        pending = next;
    }
    Ok(owners.into_iter().map(|o| o.unwrap_or(Owner::NoOwnership)).collect())
}

/// The assigned buckets as strings, de-duplicated, in assignment order.
pub fn dedup_buckets(buckets: Vec<BucketId>) -> Vec<String> {
    let mut seen = HashSet::new();
    buckets.into_iter().map(BucketId::into_string).filter(|b| seen.insert(b.clone())).collect()
}
