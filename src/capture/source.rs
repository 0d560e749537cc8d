//! The writer's reads of the application database: owners through foreign-key chains, values
//! that arrived as unchanged TOAST, current rows as `row_to_json`, and the pages of the edge
//! backfill. Every read is keyed by primary key, one query per table (and chain level), never
//! one per row.
//!
//! The caller must first make sure the replicated transactions are visible to its snapshot
//! ([`crate::store::visibility`]), or these reads may see the version before the change.

use std::collections::HashMap;
use std::sync::Arc;

use postgres::GenericClient;

use super::buckets::{owner_of, shared_keys, Owner, RoutingTable, SharedKey, TableRouting};
use super::events::{ChangeKind, ColumnValue, RelColumn, RowChange};
use crate::registry::quote_ident;
use crate::store::pool::StoreError;

/// One parent-lookup row: the parent's rule keys, its owner (if it has the column) and its own
/// FK value.
struct ParentRow {
    keys: Vec<SharedKey>,
    owner: Option<Option<String>>,
    next_fk: Option<String>,
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

/// Current values of `column` for `keys` (used when a needed column arrived as unchanged TOAST).
fn current_values(
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
    changes: &[RowChange],
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

/// `(primary key, row JSON as clients receive it)` of the rows of `t` with keys `ids` that
/// still exist.
pub fn current_rows(
    db: &mut impl GenericClient,
    t: &TableRouting,
    ids: &[&str],
) -> Result<Vec<(String, String)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT t.{pk}::text, {json}::text FROM {q} t WHERE t.{pk} = ANY ($1::text[]::{ty}[])",
        pk = quote_ident(&t.pk),
        json = t.row_json,
        q = t.qualified,
        ty = t.pk_type
    );
    let rows = db.query(&sql, &[&ids]).map_err(StoreError::query(format!("reading current rows of {}", t.name)))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The routing columns of `t`'s rows, for the edge backfill: the primary key, then the rule
/// columns, the owner column or the parent's foreign key (each as text, each once).
pub fn routing_columns(t: &TableRouting) -> Vec<String> {
    let mut names = vec![t.pk.clone()];
    for c in t.shared.iter().map(|(_, c)| c).chain(t.owner.iter()).chain(t.parent.as_ref().map(|(_, fk)| fk)) {
        if !names.contains(c) {
            names.push(c.clone());
        }
    }
    names
}

/// One page of the live rows of `t` in key order after `after` (exclusive), at most `limit`:
/// the values of [`routing_columns`]. Soft-deleted rows belong to no bucket and are left out.
pub fn routing_page(
    db: &mut impl GenericClient,
    t: &TableRouting,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Vec<Option<String>>>, StoreError> {
    let columns: Vec<String> = routing_columns(t).iter().map(|c| format!("t.{}::text", quote_ident(c))).collect();
    let live = t.deleted_at.as_deref().map(|c| format!("AND t.{} IS NULL", quote_ident(c))).unwrap_or_default();
    let sql = format!(
        "SELECT {cols} FROM {q} t WHERE ($1::text IS NULL OR t.{pk} > $1::text::{ty}) {live} ORDER BY t.{pk} LIMIT $2",
        cols = columns.join(", "),
        q = t.qualified,
        pk = quote_ident(&t.pk),
        ty = t.pk_type
    );
    let rows =
        db.query(&sql, &[&after, &limit]).map_err(StoreError::query(format!("backfilling edges of {}", t.name)))?;
    Ok(rows.iter().map(|r| (0..r.len()).map(|i| r.get(i)).collect()).collect())
}

/// The live child rows (one level down) of the `moved` records, as changes the planner routes
/// again: each carries its key and every column that routes it (its own rule keys and owner
/// decide before its parent does, then the foreign key to its parent), so its owner is resolved
/// exactly as a change of the row would be, through the parent's current row when it has
/// neither. Soft-deleted children hold no edges and are left alone.
pub fn descendants(
    db: &mut impl GenericClient,
    routing: &RoutingTable,
    moved: &[(String, String)],
) -> Result<Vec<RowChange>, StoreError> {
    let mut out = Vec::new();
    for child in routing.tables() {
        let Some((parent, fk)) = &child.parent else { continue };
        let keys: Vec<&str> = moved.iter().filter(|(t, _)| t == parent).map(|(_, k)| k.as_str()).collect();
        let Some(parent_routing) = routing.get(parent) else { continue };
        if keys.is_empty() {
            continue;
        }
        let live =
            child.deleted_at.as_deref().map(|c| format!(" AND c.{} IS NULL", quote_ident(c))).unwrap_or_default();
        let mut names: Vec<&str> = vec![&child.pk];
        for c in child.routing_columns().into_iter().chain([fk.as_str()]) {
            if !names.contains(&c) {
                names.push(c);
            }
        }
        let sql = format!(
            "SELECT {cols} FROM {q} c WHERE c.{fk} = ANY ($1::text[]::{ty}[]){live}",
            cols = names.iter().map(|n| format!("c.{}::text", quote_ident(n))).collect::<Vec<_>>().join(", "),
            fk = quote_ident(fk),
            q = child.qualified,
            ty = parent_routing.pk_type,
        );
        let rows = db
            .query(&sql, &[&keys])
            .map_err(StoreError::query(format!("reading the children of moved {parent} rows in {}", child.name)))?;
        let columns: Arc<[RelColumn]> =
            names.iter().map(|n| RelColumn { name: n.to_string(), type_oid: crate::types::Oid(0) }).collect();
        let table: Arc<str> = Arc::from(child.name.as_str());
        out.extend(rows.iter().map(|r| {
            RowChange {
                table: table.clone(),
                kind: ChangeKind::Update,
                key: r.get(0),
                old_key: None,
                columns: columns.clone(),
                values: (0..names.len())
                    .map(|i| r.get::<_, Option<String>>(i).map_or(ColumnValue::Null, ColumnValue::Text))
                    .collect(),
            }
        }));
    }
    Ok(out)
}
