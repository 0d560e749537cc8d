//! The write statements of a push. One statement applies a batch of writes of one kind and
//! one column list to one table: the values travel as one text array per column, unnested in
//! SQL, each cast to its column's type by PostgreSQL (a wrong type fails the statement, never
//! a panic), and every statement decides in its own `RETURNING`, on the row version it wrote,
//! whether that row is in the user's write scope ([`scope::row_predicate`]): an owner transfer
//! or re-parenting that committed after the lookup (the statement waited for the row lock,
//! then saw the new version) makes it false. The per-record path runs the same statements with
//! a batch of one.
//!
//! SQL identifiers come from the registry only; `$1` is always the user id.

use std::time::SystemTime;

use postgres::types::{ToSql, Type};
use postgres::Transaction;

use super::decide::Write;
use super::outcome::{already_deleted, ownership_violation, Outcome};
use super::RecordContext;
use crate::engine::rows::{is_true, pk_type};
use crate::engine::scope;
use crate::registry::{quote_ident, SyncTable};
use crate::store::pool::StatementCache;

/// The statement a write needs: its kind and the columns it sets from `data`. Writes with the
/// same shape can share one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shape<'w> {
    /// INSERT of these columns.
    Insert(Vec<&'w str>),
    /// UPDATE of these columns, clearing the deleted-at column when resurrecting.
    Update { columns: Vec<&'w str>, resurrect: bool },
    /// Soft or hard delete.
    Delete,
}

impl Write {
    /// The statement shape of this write.
    pub(super) fn shape(&self) -> Shape<'_> {
        match self {
            Write::Insert(columns) => Shape::Insert(columns.iter().map(|(c, _)| c.as_str()).collect()),
            Write::Update { columns, resurrect } => {
                Shape::Update { columns: columns.iter().map(|(c, _)| c.as_str()).collect(), resurrect: *resurrect }
            }
            Write::Delete => Shape::Delete,
        }
    }

    /// The values this write sets, in its shape's column order.
    fn values(&self) -> impl Iterator<Item = &Option<String>> {
        let columns: &[(String, Option<String>)] = match self {
            Write::Insert(columns) | Write::Update { columns, .. } => columns,
            Write::Delete => &[],
        };
        columns.iter().map(|(_, v)| v)
    }

    /// The outcome once the statement ran: `written` is what `RETURNING` gave for this record's
    /// row (`None`: no row). `Err(())` when the row was written but is not in the user's write
    /// scope, so the write must be undone (rolled back to a savepoint) and the record is an
    /// ownership violation.
    pub(super) fn outcome(&self, t: &SyncTable, written: Option<Written>) -> Result<Outcome, Undo> {
        let Some(w) = written else {
            return Ok(match self {
                // A row that was deleted since the lookup, or that row-level security refused.
                Write::Update { .. } => ownership_violation(),
                Write::Delete if t.deleted_at.real().is_some() => ownership_violation(),
                Write::Delete => already_deleted(),
                // An insert always returns its row unless a trigger skipped it.
                Write::Insert(_) => return Err(Undo::Skipped),
            });
        };
        if !w.in_scope {
            // A child row under someone else's parent (or under a shared one that is read-only).
            return Err(Undo::OutOfScope);
        }
        let mut o = Outcome::applied();
        match self {
            Write::Delete => o.server_deleted_at = w.at,
            _ => o.server_updated_at = w.at,
        }
        Ok(o)
    }
}

/// What `RETURNING` gave for one row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// The updated-at value written (the deleted-at value for a delete); `None` when the
    /// table has no such column.
    pub(super) at: Option<SystemTime>,
    /// Whether the row written is in the user's write scope.
    pub(super) in_scope: bool,
}

/// Why a write's result cannot stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Undo {
    /// The row written is outside the user's write scope: an ownership violation.
    OutOfScope,
    /// An insert returned no row (a `BEFORE INSERT` trigger skipped it).
    Skipped,
}

/// Runs one statement for `writes` (all of one shape, on `t`, each with its record id), in
/// their order: an insert inserts in that order. Returns `(key as text, written)` per row
/// written, in no particular order.
pub(super) fn run(
    tx: &mut Transaction<'_>,
    cache: &mut StatementCache,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    shape: &Shape<'_>,
    writes: &[(&str, &Write)],
) -> Result<Vec<(String, Written)>, postgres::Error> {
    let sql = statement(ctx, t, shape);
    // $1 the user; then, for updates and deletes, the ids; then one array per column.
    let user = ctx.user.as_str();
    let ids: Vec<&str> = writes.iter().map(|(id, _)| *id).collect();
    let width = writes.first().map(|(_, w)| w.values().count()).unwrap_or(0);
    let mut columns: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(writes.len()); width];
    for (_, w) in writes {
        for (i, v) in w.values().enumerate() {
            columns[i].push(v.as_deref());
        }
    }
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&user, Type::TEXT)];
    if !matches!(shape, Shape::Insert(_)) {
        params.push((&ids, Type::TEXT_ARRAY));
    }
    params.extend(columns.iter().map(|c| (c as &(dyn ToSql + Sync), Type::TEXT_ARRAY)));
    let rows = cache.query(tx, &sql, &params)?;
    Ok(rows.iter().map(|r| (r.get(0), Written { at: r.get(1), in_scope: is_true(r, 2) })).collect())
}

/// The SQL of a statement of `shape` on `t`. Every statement returns `(pk::text, timestamp,
/// in write scope)` per row written.
fn statement(ctx: &RecordContext<'_>, t: &SyncTable, shape: &Shape<'_>) -> String {
    let q = t.qualified();
    let pk = quote_ident(&t.pk);
    let key_type = pk_type(t);
    let scope = scope::row_predicate(&ctx.cat.registry, t, ctx.write);
    let column_type = |c: &str| t.column(c).map(|c| c.db_type.as_str()).unwrap_or("text");
    let updated = t.updated_at.real().map(quote_ident);
    let returned_updated = updated.as_ref().map(|u| format!("t.{u}")).unwrap_or_else(|| "NULL".into());
    // `$n::text[]` for the values of column i, starting after the user (and the ids).
    let arrays = |first: usize, n: usize| (0..n).map(|i| format!("${}::text[]", first + i)).collect::<Vec<_>>();
    match shape {
        Shape::Insert(columns) => {
            let mut names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            let mut values: Vec<String> =
                columns.iter().enumerate().map(|(i, c)| format!("v.c{i}::{}", column_type(c))).collect();
            if let Some(u) = &updated {
                names.push(u.clone());
                values.push("now()".into());
            }
            let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
            format!(
                "INSERT INTO {q} AS t ({}) SELECT {} FROM unnest({}) WITH ORDINALITY AS v({}, ord) ORDER BY v.ord \
                 RETURNING t.{pk}::text, ({returned_updated})::timestamptz, {scope}",
                names.join(", "),
                values.join(", "),
                arrays(2, columns.len()).join(", "),
                aliases.join(", "),
            )
        }
        Shape::Update { columns, resurrect } => {
            let mut sets: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} = v.c{i}::{}", quote_ident(c), column_type(c)))
                .collect();
            if let Some(u) = &updated {
                sets.push(format!("{u} = now()"));
            }
            if let (true, Some(d)) = (resurrect, t.deleted_at.real()) {
                sets.push(format!("{} = NULL", quote_ident(d)));
            }
            let mut arrays = arrays(3, columns.len());
            arrays.insert(0, "$2::text[]".into());
            let aliases: Vec<String> = (0..columns.len()).map(|i| format!(", c{i}")).collect();
            format!(
                "UPDATE {q} t SET {} FROM unnest({}) AS v(id{}) WHERE t.{pk} = v.id::{key_type} \
                 RETURNING t.{pk}::text, ({returned_updated})::timestamptz, {scope}",
                sets.join(", "),
                arrays.join(", "),
                aliases.concat(),
            )
        }
        Shape::Delete => match t.deleted_at.real() {
            Some(d) => {
                let d = quote_ident(d);
                let set_updated = updated.map(|u| format!(", {u} = now()")).unwrap_or_default();
                format!(
                    "UPDATE {q} t SET {d} = now(){set_updated} FROM unnest($2::text[]) AS v(id) \
                     WHERE t.{pk} = v.id::{key_type} RETURNING t.{pk}::text, t.{d}::timestamptz, {scope}"
                )
            }
            None => format!(
                "DELETE FROM {q} t USING unnest($2::text[]) AS v(id) WHERE t.{pk} = v.id::{key_type} \
                 RETURNING t.{pk}::text, NULL::timestamptz, {scope}"
            ),
        },
    }
}
