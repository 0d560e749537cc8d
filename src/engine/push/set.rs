//! The set-based path: a run of records on one table with distinct ids, applied with one
//! lookup and a few multi-row writes.
//!
//! Why the outcomes are those of the per-record path: within a run, no record's row is another
//! record's row (distinct keys, checked again on the keys as the table reads them), and a
//! write to one row of a table cannot change another row's lookup (the scope of a row depends
//! on its own owner or on rows of its ancestor tables, never of its own table). So one lookup
//! before any write reads what each record's own lookup would have read, and [`decide`] makes
//! each record's decision in Rust as it would. The writes then run in request order, grouped
//! into statements only where rows of the table cannot affect one another's writes (see
//! [`RowLinks`]). A write statement that fails, or a row written outside the user's write
//! scope (which must be undone alone), leaves the outcome to the per-record path: the caller
//! gets [`RunResult::Failed`] and replays the run with a savepoint per record.

use std::collections::HashMap;

use postgres::Transaction;

use super::decide::{decide, Decision, Write};
use super::outcome::Outcome;
use super::write::{self, Shape};
use super::RecordContext;
use crate::engine::rows;
use crate::protocol::PushRecord;
use crate::registry::SyncTable;
use crate::store::pool::StatementCache;

/// Constraints through which one row's write can decide another's in the same table, read
/// from the catalog at the start of every push (so DDL is never missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RowLinks {
    /// A unique or exclusion index besides the primary key: updates in one statement are
    /// checked against the rows as the statement left them, so an update that frees a value
    /// another record of the same statement takes would succeed where the same updates one by
    /// one fail (or the other way round, depending on the order PostgreSQL visits the rows).
    /// Inserts still share a statement: they run in request order and free nothing.
    pub(super) unique: bool,
    /// A foreign key to the table itself: checked at the end of a statement, so a row could
    /// refer to one written later in the same statement.
    pub(super) self_reference: bool,
}

impl RowLinks {
    /// Whether writes of `shape` may share a statement.
    fn batches(self, shape: &Shape<'_>) -> bool {
        match shape {
            _ if self.self_reference => false,
            Shape::Update { .. } => !self.unique,
            Shape::Insert(_) | Shape::Delete => true,
        }
    }
}

/// What became of a run.
#[derive(Debug)]
pub(super) enum RunResult {
    /// Every record's outcome, in order.
    Applied(Vec<Outcome>),
    /// Nothing was written; the per-record path decides (two ids of the run are one key).
    Unsettled,
    /// A statement failed or a write must be undone: the transaction is aborted or holds
    /// writes that must be rolled back. Says why, for the log.
    Failed(String),
}

/// Applies `records` (one table, distinct ids, in request order).
pub(super) fn apply(
    tx: &mut Transaction<'_>,
    cache: &mut StatementCache,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    records: &[&PushRecord],
    links: RowLinks,
) -> Result<RunResult, postgres::Error> {
    let failed = |e: postgres::Error| if e.is_closed() { Err(e) } else { Ok(RunResult::Failed(e.to_string())) };
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let found = match rows::lookup_many(tx, cache, &ctx.cat.registry, t, ctx.user, &ids, ctx.write) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    if found.len() != records.len() {
        return Ok(RunResult::Failed(format!("the lookup returned {} rows for {} ids", found.len(), records.len())));
    }
    let mut slot_of_key: HashMap<&str, usize> = HashMap::with_capacity(found.len());
    for (i, (key, _)) in found.iter().enumerate() {
        if slot_of_key.insert(key.as_str(), i).is_some() {
            return Ok(RunResult::Unsettled);
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(records.len());
    let mut writes: Vec<(usize, Write)> = Vec::new();
    for (i, (rec, (_, existing))) in records.iter().zip(&found).enumerate() {
        match decide(ctx, t, rec, existing.as_ref()) {
            Decision::Done(o) => outcomes.push(Some(o)),
            Decision::Write(w) => {
                outcomes.push(None);
                writes.push((i, w));
            }
        }
    }
    for batch in batches(&writes, links) {
        let members: Vec<(&str, &Write)> = batch.iter().map(|&(i, w)| (found[i].0.as_str(), w)).collect();
        let shape = members[0].1.shape();
        let returned = match write::run(tx, cache, ctx, t, &shape, &members) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        // Every row returned must be one member's, and each member's at most once.
        let mut written = vec![None; batch.len()];
        let position: HashMap<&str, usize> = members.iter().enumerate().map(|(p, (key, _))| (*key, p)).collect();
        for (key, w) in returned {
            match position.get(key.as_str()) {
                Some(&p) if written[p].is_none() => written[p] = Some(w),
                _ => return Ok(RunResult::Failed(format!("a write to {} returned an unexpected row", t.name))),
            }
        }
        for (&(i, w), written) in batch.iter().zip(written) {
            match w.outcome(t, written) {
                Ok(o) => outcomes[i] = Some(o),
                Err(undo) => return Ok(RunResult::Failed(format!("{undo:?} write to {}", t.name))),
            }
        }
    }
    // Every write's outcome was set above.
    match outcomes.into_iter().collect::<Option<Vec<Outcome>>>() {
        Some(all) => Ok(RunResult::Applied(all)),
        None => Ok(RunResult::Failed(format!("a write to {} was left without an outcome", t.name))),
    }
}

/// The writes grouped into statements, in the order they run. Without [`RowLinks`], writes of
/// one shape share a statement wherever they stand in the run; with them, only consecutive
/// writes of one shape do, and only shapes that [`RowLinks::batches`] allows.
fn batches(writes: &[(usize, Write)], links: RowLinks) -> Vec<Vec<(usize, &Write)>> {
    let mut out: Vec<(Shape<'_>, Vec<(usize, &Write)>)> = Vec::new();
    let independent = links == RowLinks::default();
    for (i, w) in writes {
        let shape = w.shape();
        let joins = if independent {
            out.iter().position(|(s, _)| *s == shape)
        } else {
            out.len().checked_sub(1).filter(|&last| out[last].0 == shape && links.batches(&shape))
        };
        match joins {
            Some(b) => out[b].1.push((*i, w)),
            None => out.push((shape, vec![(*i, w)])),
        }
    }
    out.into_iter().map(|(_, members)| members).collect()
}
