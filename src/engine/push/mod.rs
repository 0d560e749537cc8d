//! POST /sync/push (§7) with the fixes of Appendix C: one bad record never sinks the others
//! (C3), lenient timestamps (C4), JSON-text and array values for json and array columns and
//! hex/base64 for bytea (C5), `updated_at = now()` on every write (C2), and the owner verified
//! on resurrection (C14).
//!
//! ```text
//! records ─ screen (no database: table, operation, read-only, strings, authorize hook)
//!         ─ runs: consecutive records on one table with distinct ids
//!         ─ one transaction (app.user_id, PUSH_ROLE):
//!             per run: one lookup of every row ─ decide each record in Rust
//!                      ─ multi-row writes, RETURNING each row's write scope     (set.rs)
//!             a run whose statement fails: its records one by one, a savepoint each
//!         ─ conflict hooks, on_push_accepted hook, commit
//! ```
//!
//! Records depend on earlier ones only across runs (the same id again, or a child after its
//! parent in another table), and runs are applied in request order, so every record sees what
//! the records before it did. The outcome of every record is the one the per-record path gives
//! ([`per_record`], also what `PUSH_SET_BASED=false` runs): `set.rs` says why.
//!
//! Failure containment without a savepoint per run: the transaction first runs optimistically,
//! with no savepoints at all. When a set statement fails (a constraint violation in one
//! record, an id that is not a valid key), the transaction is rolled back and run once more,
//! carefully: every run inside a savepoint, and the failing run replayed record by record with
//! a savepoint each, so one bad record rejects only itself. The embedder hooks that observe
//! outcomes run only in the attempt that commits.
//!
//! SQL identifiers come from the registry only; every value is a bound text parameter cast to
//! the column's type by PostgreSQL, so a wrong type is a per-record rejection, never a 500.

mod counts;
mod decide;
mod outcome;
mod resolver;
mod set;
mod values;
mod write;

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use postgres::types::Type;
use postgres::Transaction;

use self::decide::{decide, screen, Decision};
use self::outcome::{ownership_violation, sql_failure, write_failure, Outcome};
use self::set::{RowLinks, RunResult};
use self::write::Undo;
use super::rows;
use super::scope::Access;
use super::{CatalogState, Engine, EngineError};
use crate::protocol::{PushRecord, PushRequest, PushResponse, PushResult};
use crate::registry::{quote_ident, SyncTable};
use crate::store::clients;
use crate::store::pool::{Session, StatementCache, StoreError};
use crate::time::format_timestamp;
use crate::types::{Oid, UserId};

pub(crate) use counts::PushCounters;
pub use counts::PushCounts;
pub use resolver::{last_writer_wins, ConflictResolver, LastWriterWins, ServerWins};

/// What every record of one push shares.
pub(super) struct RecordContext<'a> {
    cat: &'a CatalogState,
    user: &'a UserId,
    /// The write scope (`SHARED_ROWS_WRITABLE`).
    write: Access,
    resolver: &'a dyn ConflictResolver,
    hooks: &'a dyn super::Hooks,
}

/// Consecutive screened records on one table, by index into the request.
struct Run<'c> {
    table: &'c SyncTable,
    members: Vec<usize>,
    /// Applied with set-based statements (else record by record).
    set_based: bool,
}

/// Splits the screened records into runs: a run ends where the table changes or an id comes
/// again. Screened-out records write nothing, so they split nothing. Without `set_based`, every
/// record is a run of its own, applied by the per-record path.
fn runs<'c>(records: &[PushRecord], screened: &[Result<&'c SyncTable, Outcome>], set_based: bool) -> Vec<Run<'c>> {
    let mut out: Vec<Run<'c>> = Vec::new();
    let mut ids: HashSet<&str> = HashSet::new();
    for (i, (rec, s)) in records.iter().zip(screened).enumerate() {
        let Ok(t) = s else { continue };
        match out.last_mut() {
            Some(run) if set_based && run.table.name == t.name && ids.insert(rec.id.as_str()) => run.members.push(i),
            _ => {
                ids.clear();
                ids.insert(rec.id.as_str());
                out.push(Run { table: t, members: vec![i], set_based });
            }
        }
    }
    out
}

/// The result of one attempt at the push transaction.
enum Attempt {
    /// Committed, with every record's outcome in request order and how the runs were applied.
    Committed(Vec<Outcome>, PushCounts),
    /// A set statement failed with no savepoint to return to: rolled back, to be run carefully.
    Retry(String),
}

impl Engine {
    /// Applies a batch of client changes in one transaction.
    pub fn push(&self, user: &UserId, req: &PushRequest) -> Result<PushResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        // The client is looked up and its push time stamped in the statement that opens the
        // push transaction (one round trip and one commit less per push), unless the sync
        // tables live in a database of their own: then around the transaction, there.
        let stamp = if dbs.is_split() {
            clients::load(&mut **dbs.store(), user, &req.client_id)?.ok_or(EngineError::ClientNotRegistered)?;
            None
        } else {
            Some(req.client_id.as_str())
        };
        let ctx = RecordContext {
            cat: &cat,
            user,
            write: Access::Write { shared_rows_writable: self.shared_rows_writable },
            resolver: self.settings.resolver.as_ref(),
            hooks: self.settings.hooks.as_ref(),
        };
        let screened: Vec<Result<&SyncTable, Outcome>> = req.changes.iter().map(|r| screen(&ctx, r)).collect();
        let runs = runs(&req.changes, &screened, self.set_based_push);
        let mut careful = false;
        let outcomes = loop {
            match self.attempt(dbs.app(), &ctx, &req.changes, &screened, &runs, stamp, careful)? {
                Attempt::Committed(outcomes, mut counts) => {
                    counts.retried = u64::from(careful);
                    self.pushes.record(counts);
                    break outcomes;
                }
                Attempt::Retry(why) => {
                    crate::debug!("push runs again with a savepoint per run", reason = why);
                    careful = true;
                }
            }
        };
        if stamp.is_none() {
            if let Err(e) = clients::touch_push(&mut **dbs.store(), user, &req.client_id) {
                crate::warn!("recording the push time failed", error = e.to_string());
            }
        }
        let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
        for (rec, o) in req.changes.iter().zip(outcomes) {
            let applied = o.status == "applied";
            let result = PushResult {
                id: rec.id.clone(),
                table_name: rec.table_name.clone(),
                operation: rec.operation.clone(),
                status: o.status,
                reason_code: o.reason,
                message: o.message,
                server_version: o.server_version.map(|r| *r),
                server_updated_at: o.server_updated_at.map(format_timestamp),
                server_deleted_at: o.server_deleted_at.map(format_timestamp),
            };
            if applied {
                accepted.push(result);
            } else {
                rejected.push(result);
            }
        }
        Ok(PushResponse {
            accepted,
            rejected,
            checkpoint: 0,
            server_time: format_timestamp(SystemTime::now()),
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }

    /// One attempt at the push transaction. `stamp`: the client to look up and stamp in it.
    /// `careful`: every set-based run inside a savepoint, a failing one replayed record by
    /// record (otherwise a failing run ends the attempt).
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        session: &mut Session,
        ctx: &RecordContext<'_>,
        records: &[PushRecord],
        screened: &[Result<&SyncTable, Outcome>],
        runs: &[Run<'_>],
        stamp: Option<&str>,
        careful: bool,
    ) -> Result<Attempt, EngineError> {
        let (client, cache) = session.parts();
        let mut tx = client.transaction().map_err(StoreError::query("starting the push"))?;
        let Some(links) = begin(&mut tx, cache, ctx.user, stamp, self.settings.push_role.as_deref(), runs)? else {
            // Dropping the transaction undoes nothing but the lookup.
            return Err(EngineError::ClientNotRegistered);
        };
        let mut outcomes: Vec<Option<Outcome>> = screened.iter().map(|s| s.as_ref().err().cloned()).collect();
        let mut counts = PushCounts::default();
        for run in runs {
            let members: Vec<&PushRecord> = run.members.iter().map(|&i| &records[i]).collect();
            if run.set_based {
                if careful {
                    savepoint(&mut tx, "SAVEPOINT synchro_run")?;
                }
                let result = set::apply(
                    &mut tx,
                    cache,
                    ctx,
                    run.table,
                    &members,
                    links.get(&run.table.oid).copied().unwrap_or_default(),
                )
                .map_err(|e| StoreError::Query { context: "pushing".into(), source: e })?;
                match result {
                    RunResult::Applied(applied) => {
                        if careful {
                            savepoint(&mut tx, "RELEASE SAVEPOINT synchro_run")?;
                        }
                        for (&i, o) in run.members.iter().zip(applied) {
                            outcomes[i] = Some(o);
                        }
                        counts.set_runs += 1;
                        continue;
                    }
                    RunResult::Unsettled => {
                        if careful {
                            savepoint(&mut tx, "RELEASE SAVEPOINT synchro_run")?;
                        }
                    }
                    RunResult::Failed(why) if !careful => return Ok(Attempt::Retry(why)),
                    RunResult::Failed(why) => {
                        crate::debug!(
                            "a push run is applied record by record",
                            table = run.table.name.clone(),
                            records = members.len(),
                            reason = why,
                        );
                        savepoint(&mut tx, "ROLLBACK TO SAVEPOINT synchro_run; RELEASE SAVEPOINT synchro_run")?;
                    }
                }
            }
            if run.set_based {
                counts.replayed_runs += 1;
            } else {
                counts.per_record += 1;
            }
            for (&i, rec) in run.members.iter().zip(&members) {
                outcomes[i] = Some(per_record(&mut tx, cache, ctx, run.table, rec)?);
            }
        }
        // Every record was screened out or belongs to a run.
        let Some(outcomes) = outcomes.into_iter().collect::<Option<Vec<Outcome>>>() else {
            return Err(EngineError::Schema("a pushed record was left without an outcome".into()));
        };
        let mut applied: Vec<&PushRecord> = Vec::new();
        for (rec, o) in records.iter().zip(&outcomes) {
            if o.status == "conflict" {
                ctx.hooks.on_conflict(ctx.user, rec, o.reason.unwrap_or(""));
            }
            if o.status == "applied" {
                applied.push(rec);
            }
        }
        if let Err(why) = ctx.hooks.on_push_accepted(&mut tx, ctx.user, &applied) {
            // Dropping the transaction rolls every record back.
            return Err(EngineError::Hook(why));
        }
        tx.commit().map_err(StoreError::query("committing the push"))?;
        Ok(Attempt::Committed(outcomes, counts))
    }
}

/// The opening statement of a push transaction, around the stamp of the client: `$1` the user,
/// `$2` the runs' tables.
macro_rules! begin_sql {
    ($stamp_with:literal, $registered:literal) => {
        concat!(
            $stamp_with,
            "SELECT set_config('app.user_id', $1, true), set_config('enable_seqscan', 'off', true), \
               ARRAY(SELECT indrelid FROM pg_index WHERE indrelid = ANY ($2) \
                     AND ((indisunique AND NOT indisprimary) OR indisexclusion)), \
               ARRAY(SELECT conrelid FROM pg_constraint WHERE conrelid = ANY ($2) \
                     AND contype = 'f' AND confrelid = conrelid), ",
            $registered
        )
    };
}

/// [`begin_sql`] that also stamps client `$3` (§7.1 step 5: `last_push_at = last_sync_at =
/// now()`) and says whether it exists: the stamp commits with the push or not at all.
const BEGIN_STAMPED: &str = begin_sql!(
    "WITH stamped AS (UPDATE sync_clients SET last_push_at = now(), last_sync_at = now() \
       WHERE user_id = $1 AND client_id = $3 RETURNING 1) ",
    "EXISTS (SELECT 1 FROM stamped)"
);

/// [`begin_sql`] alone.
const BEGIN: &str = begin_sql!("", "true");

/// Starts the push transaction: `app.user_id` for row-level security (§7.3) and, in the same
/// round trip, sequential scans off (every statement of a push reads rows by key, and right
/// after a bulk load stale statistics would scan whole tables for a join on a key list), the
/// [`RowLinks`] of the runs' tables from the catalog and, with `stamp`, the client's push
/// stamp; then `PUSH_ROLE`. `None` when the stamped client does not exist.
fn begin(
    tx: &mut Transaction<'_>,
    cache: &mut StatementCache,
    user: &UserId,
    stamp: Option<&str>,
    role: Option<&str>,
    runs: &[Run<'_>],
) -> Result<Option<HashMap<Oid, RowLinks>>, StoreError> {
    let oids: Vec<u32> = runs.iter().filter(|r| r.set_based).map(|r| r.table.oid.0).collect();
    let user = user.as_str();
    let rows = match stamp {
        Some(client_id) => {
            cache.query(tx, BEGIN_STAMPED, &[(&user, Type::TEXT), (&oids, Type::OID_ARRAY), (&client_id, Type::TEXT)])
        }
        None => cache.query(tx, BEGIN, &[(&user, Type::TEXT), (&oids, Type::OID_ARRAY)]),
    }
    .map_err(StoreError::query("starting the push"))?;
    let Some(row) = rows.first().filter(|r| r.get::<_, bool>(4)) else { return Ok(None) };
    let mut links: HashMap<Oid, RowLinks> = HashMap::new();
    for oid in row.get::<_, Vec<u32>>(2) {
        links.entry(Oid(oid)).or_default().unique = true;
    }
    for oid in row.get::<_, Vec<u32>>(3) {
        links.entry(Oid(oid)).or_default().self_reference = true;
    }
    if let Some(role) = role {
        tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(role)))
            .map_err(StoreError::query("switching to PUSH_ROLE"))?;
    }
    Ok(Some(links))
}

fn savepoint(tx: &mut Transaction<'_>, sql: &str) -> Result<(), StoreError> {
    tx.batch_execute(sql).map_err(StoreError::query("managing a savepoint"))
}

/// One record on its own, inside a savepoint: its lookup, its decision, its write. A database
/// error rejects the record alone (C3, classified by [`sql_failure`]), and so does a write
/// outside the user's write scope; both are rolled back to the savepoint.
fn per_record(
    tx: &mut Transaction<'_>,
    cache: &mut StatementCache,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
) -> Result<Outcome, EngineError> {
    savepoint(tx, "SAVEPOINT synchro_record")?;
    let outcome = match lookup_and_write(tx, cache, ctx, t, rec) {
        Ok(o) => o,
        Err(e) if e.is_closed() => {
            return Err(EngineError::Store(StoreError::Query { context: "pushing".into(), source: e }))
        }
        Err(e) => {
            let (reason, message) = write_failure(&rec.operation);
            sql_failure(&e, t, rec, reason, message)
        }
    };
    savepoint(
        tx,
        if outcome.status == "applied" {
            "RELEASE SAVEPOINT synchro_record"
        } else {
            "ROLLBACK TO SAVEPOINT synchro_record; RELEASE SAVEPOINT synchro_record"
        },
    )?;
    Ok(outcome)
}

fn lookup_and_write(
    tx: &mut Transaction<'_>,
    cache: &mut StatementCache,
    ctx: &RecordContext<'_>,
    t: &SyncTable,
    rec: &PushRecord,
) -> Result<Outcome, postgres::Error> {
    let existing = match rows::lookup(tx, cache, &ctx.cat.registry, t, ctx.user, &rec.id, ctx.write) {
        Ok(e) => e,
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
            return Ok(Outcome::terminal("invalid_data", format!("invalid record id for {}", t.name)))
        }
        Err(e) => return Err(e),
    };
    let w = match decide(ctx, t, rec, existing.as_ref()) {
        Decision::Done(o) => return Ok(o),
        Decision::Write(w) => w,
    };
    let written = write::run(tx, cache, ctx, t, &w.shape(), &[(rec.id.as_str(), &w)])?;
    Ok(match w.outcome(t, written.first().map(|(_, w)| *w)) {
        Ok(o) => o,
        Err(Undo::OutOfScope) => ownership_violation(),
        Err(Undo::Skipped) => {
            let (reason, message) = write_failure(&rec.operation);
            Outcome::rejected("rejected_retryable", reason, message)
        }
    })
}
