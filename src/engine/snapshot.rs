//! POST /sync/snapshot (§8.1): bootstrap pages, keyset-paginated by primary key in dependency
//! order, scoped to the caller's buckets even without RLS (C10), with the checkpoint captured
//! on the first page and carried in the cursor.

use super::pull::set_user;
use super::replica_reads::PageKind;
use super::rows::{self, to_record};
use super::subscriptions::is_rule_bucket;
use super::{Engine, EngineError};
use crate::protocol::{Record, SnapshotCursor, SnapshotRequest, SnapshotResponse};
use crate::registry::{Registry, SyncTable};
use crate::store::changelog;
use crate::store::clients;
use crate::store::pool::StoreError;
use crate::types::UserId;

fn is_bad_input(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

impl Engine {
    /// One snapshot page.
    pub fn snapshot(&self, user: &UserId, req: &SnapshotRequest) -> Result<SnapshotResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        let client =
            clients::load(&mut ***dbs.store(), user, &req.client_id)?.ok_or(EngineError::ClientNotRegistered)?;
        let rules = cat.registry.has_rules();
        let mut held = client.subscriptions(user);
        if req.cursor.is_none() && rules {
            // The snapshot brings the device in line with the user's memberships as the tables
            // hold them now; its pages read rows through the scope predicate, which checks them
            // in the statement that reads each row.
            let version = crate::store::subscriptions::version(&mut ***dbs.store(), user)?;
            let fresh = self.fresh_subscriptions(&mut dbs, &cat, user, version, &held)?.to_vec();
            held = fresh;
            crate::store::subscriptions::hold_exactly(&mut ***dbs.store(), user, &req.client_id, &held)?;
        }
        let tables = cat.registry.dependency_order();
        // Read before any row: every change committed after this point has a higher `seq`, so
        // the client catches up on it with its next pull (also with a separate sync store).
        let max_seq = changelog::max_seq(&mut ***dbs.store())?;
        let (idx, after, cp) = match &req.cursor {
            None => (0usize, String::new(), max_seq),
            Some(c) => {
                // A cursor is only ever one we issued: anything else is refused, never run as SQL.
                if c.table_idx < 0 || c.table_idx as usize > tables.len() || c.checkpoint < 0 || c.checkpoint > max_seq
                {
                    return Err(EngineError::BadRequest("invalid snapshot cursor".into()));
                }
                (c.table_idx as usize, c.after_id.clone(), if c.checkpoint == 0 { max_seq } else { c.checkpoint })
            }
        };
        // The checkpoint was captured (on the first page) before this page started, so a
        // replica past the primary's WAL position as of now holds every change at or below it.
        let page = match self.read_on_replica(dbs.app(), PageKind::Snapshot, |replica| {
            read_pages(replica, user, &cat.registry, &tables, idx, after.clone(), req.limit)
        })? {
            Some(page) => page,
            None => {
                let page = read_pages(dbs.app(), user, &cat.registry, &tables, idx, after, req.limit)?;
                self.reads.count(PageKind::Snapshot, false);
                page
            }
        };
        let Pages { records, idx, after, memberships } = page;
        if let Some(live) = memberships {
            // A membership that changed between the first page and this one: rows of that
            // bucket were read on one side of the change and not the other, so the device's
            // copy of it is not whole (see `Engine::lost_buckets`).
            let changed: Vec<(String, i64)> = held
                .iter()
                .filter(|b| is_rule_bucket(&cat.registry, b) && !live.contains(b))
                .chain(live.iter().filter(|b| !held.contains(b)))
                .map(|b| (b.clone(), cp))
                .collect();
            if !changed.is_empty() {
                let defaults = clients::default_subscriptions(user);
                crate::store::subscriptions::start_departures(
                    &mut ***dbs.store(),
                    user,
                    &req.client_id,
                    &changed,
                    &defaults,
                )?;
            }
        }
        let has_more = idx < tables.len();
        if !has_more {
            // A completed snapshot leaves the client with last_pull_at set (§6.5), even at cp 0.
            let store = &mut ***dbs.store();
            clients::advance_legacy(store, user, &req.client_id, cp)?;
            clients::touch_pull(store, user, &req.client_id)?;
            clients::reactivate(store, user, &req.client_id)?;
        }
        Ok(SnapshotResponse {
            records,
            cursor: has_more.then_some(SnapshotCursor { checkpoint: cp, table_idx: idx as i64, after_id: after }),
            checkpoint: cp,
            has_more,
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }
}

/// What one snapshot request read: the records and where the next page starts.
struct Pages {
    records: Vec<Record>,
    idx: usize,
    after: String,
    /// With bucket rules, the user's rule buckets as the page's transaction saw them.
    memberships: Option<Vec<String>>,
}

/// Reads up to `limit` records from table `idx` on, after key `after`, in one read-only
/// transaction with `app.user_id` set.
fn read_pages(
    db: &mut postgres::Client,
    user: &UserId,
    registry: &Registry,
    tables: &[&SyncTable],
    mut idx: usize,
    mut after: String,
    limit: i64,
) -> Result<Pages, EngineError> {
    let mut tx = db.build_transaction().read_only(true).start().map_err(StoreError::query("starting the snapshot"))?;
    set_user(&mut tx, user)?;
    let mut records = Vec::new();
    while idx < tables.len() && (records.len() as i64) < limit {
        let t = tables[idx];
        let remaining = limit - records.len() as i64;
        let rows = rows::page(&mut tx, registry, t, user, &after, remaining).map_err(|e| {
            // A cursor is only ever one we issued: a key that is not of the key's type is forged.
            if is_bad_input(&e) {
                EngineError::BadRequest("invalid snapshot cursor".into())
            } else {
                EngineError::Store(StoreError::Query {
                    context: format!("reading snapshot rows of {}", t.name),
                    source: e,
                })
            }
        })?;
        let got = rows.len() as i64;
        for (id, row) in rows {
            after = id.clone();
            records.push(to_record(&t.name, id, row, None, None, false)?);
        }
        if got < remaining {
            idx += 1;
            after = String::new();
        }
    }
    let memberships = if registry.has_rules() {
        Some(crate::store::subscriptions::memberships_in(&mut tx, registry, user)?)
    } else {
        None
    };
    tx.commit().map_err(StoreError::query("finishing the snapshot page"))?;
    Ok(Pages { records, idx, after, memberships })
}
