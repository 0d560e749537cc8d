//! POST /sync/pull (§6) with the fixes of Appendix C: the per-bucket filter runs inside SQL
//! (C7), staleness is measured against the compaction watermark (C12), a lost replication slot
//! sends clients back to a snapshot (`history_unavailable`), and hydration errors fail the
//! request instead of silently skipping rows (C9). A hydrated row that is no longer in the
//! caller's scope is sent as a delete (`engine::scope`), and checkpoints are only stored for
//! subscribed buckets, whatever bucket ids the request names.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use postgres::GenericClient;

use super::heads;
use super::replica_reads::PageKind;
use super::rows::{self, to_record};
use super::scope::ClientBuckets;
use super::subscriptions::is_rule_bucket;
use super::{CatalogState, Engine, EngineError};
use crate::protocol::{BucketUpdate, DeleteEntry, PullRequest, PullResponse, Record};
use crate::store::changelog::{self, ChangelogEntry};
use crate::store::clients;
use crate::store::introspect;
use crate::store::pool::{Session, StatementCache, StoreError};
use crate::store::pull_probe::{self, PullProbeRequest, Retention};
use crate::types::{Op, UserId};

/// Whether a client positioned at `cp` has missed compacted history.
fn behind_retention(r: &Retention, cp: i64) -> bool {
    if r.compacted > 0 {
        cp < r.compacted
    } else {
        cp > 0 && r.min_seq > 0 && cp < r.min_seq
    }
}

/// Whether a per-bucket position `cp` needs its bucket rebuilt: it is behind retention (C12:
/// after any compaction a bucket at 0 may have missed compacted rows) or before a history reset.
fn needs_rebuild(r: &Retention, cp: i64) -> bool {
    behind_retention(r, cp) || (r.reset > 0 && cp < r.reset)
}

/// Why the changelog after `cp` is not whole any more, as a snapshot reason: history lost
/// with the replication slot, or compacted.
pub(super) fn history_gone(r: &Retention, cp: i64) -> Option<&'static str> {
    if r.reset > 0 && cp < r.reset {
        Some("history_unavailable")
    } else if behind_retention(r, cp) {
        Some("checkpoint_before_retention")
    } else {
        None
    }
}

impl Engine {
    /// One pull page. The request is consumed: a page with nothing in it hands the request's
    /// bucket checkpoints back as they came.
    pub fn pull(&self, user: &UserId, mut req: PullRequest) -> Result<PullResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let per_bucket = !req.bucket_checkpoints.is_empty();
        // One round trip for the catalog snapshot, the client, retention and the first page.
        let defaults = clients::default_subscriptions(user);
        // When the buckets the device most likely holds (the request map, or the user's cached
        // subscriptions) are known to hold nothing after its positions, the probe skips the
        // changelog; what the device really holds is checked against the same knowledge below.
        let through = self.heads.refresh(&mut ***dbs.store(), heads::MAX_AGE)?;
        let hint = if per_bucket { None } else { self.subscription_hint(user) };
        let bare = if per_bucket {
            self.heads.all_empty(req.bucket_checkpoints.iter().map(|(b, p)| (b.as_str(), *p)))
        } else {
            let rules = hint.iter().flat_map(|r| r.iter());
            self.heads.all_empty(defaults.iter().chain(rules).map(|b| (b.as_str(), req.checkpoint)))
        };
        // The bare probe does not read the map.
        let map: Vec<(&str, i64)> =
            if bare { Vec::new() } else { req.bucket_checkpoints.iter().map(|(b, s)| (b.as_str(), *s)).collect() };
        let probe = pull_probe::probe(
            dbs.store(),
            &PullProbeRequest {
                user,
                client_id: &req.client_id,
                default_subscriptions: &defaults,
                checkpoint: if per_bucket { 0 } else { req.checkpoint },
                bucket_checkpoints: &map,
                tables: &req.tables,
                limit: req.limit + 1,
                page: !bare,
                known_through: through,
                rules: !self.settings.registry.rules.shared.is_empty(),
            },
        )?;
        drop(map);
        // The probe's snapshot is the store's; with a separate store the catalog check needs the
        // application database's own (one more round trip, on the other connection).
        let snapshot = if dbs.is_split() { introspect::current_snapshot(dbs.app())? } else { probe.snapshot };
        let cat = self.catalog_at(&mut dbs, &snapshot)?;
        Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        let mut client = probe.client.ok_or(EngineError::ClientNotRegistered)?;
        let buckets = ClientBuckets::take(&mut client, user);
        let subs = buckets.list();
        // With bucket rules, what the user is subscribed to now may differ from what the device
        // holds (`subs`): a membership changed since the device was brought in line.
        let current = self.current_subscriptions(&mut dbs, &cat, user, probe.subscription_version, subs)?;
        // Sets: a user in many teams has dozens of bucket ids that share a long prefix.
        // The device usually holds them in the order they are composed in: then the sets are
        // one and the same.
        let held_set = BucketSet::of(subs.iter().map(String::as_str));
        let same_order = current.iter().eq(subs.iter().map(String::as_str));
        let current_set = if same_order { held_set.clone() } else { BucketSet::of(current.iter()) };
        let in_line = probe.departing.is_empty() && (same_order || held_set == current_set);
        let stale = probe.retention;
        let empty = |checkpoint: i64, bucket_checkpoints: Option<BTreeMap<String, i64>>| PullResponse {
            changes: vec![],
            deletes: vec![],
            checkpoint,
            bucket_checkpoints,
            has_more: false,
            rebuild_buckets: vec![],
            bucket_checksums: BTreeMap::new(),
            snapshot_required: false,
            snapshot_reason: None,
            bucket_updates: None,
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        };
        // The common per-bucket case: the device holds exactly the user's buckets, names each
        // of them in its map, and none is behind retention. Its positions are then the map's,
        // with nothing to leave, join or rebuild.
        let aligned = per_bucket
            && in_line
            && req.bucket_checkpoints.keys().map(String::as_str).eq(held_set.0.iter().copied())
            && req.bucket_checkpoints.values().all(|&cp| !needs_rebuild(&stale, cp));
        // Whether the bare probe's knowledge was about exactly these positions (or more): the
        // map itself, or in legacy mode the cached rule buckets the user is subscribed to.
        let mut checked = aligned;
        let positions: Vec<(&str, i64)> = if aligned {
            req.bucket_checkpoints.iter().map(|(b, p)| (b.as_str(), *p)).collect()
        } else if per_bucket {
            // Buckets the device holds that the user left: the device is told to drop their
            // rows (a departure each), and they stop being what it holds.
            let leaving: Vec<(String, i64)> = subs
                .iter()
                .filter(|b| !current_set.contains(b))
                .map(|b| (b.clone(), req.bucket_checkpoints.get(b).copied().unwrap_or(0)))
                .collect();
            if !leaving.is_empty() {
                crate::store::subscriptions::start_departures(
                    &mut ***dbs.store(),
                    user,
                    &req.client_id,
                    &leaving,
                    &defaults,
                )?;
            }
            let held: Vec<String> = subs.iter().filter(|b| current_set.contains(b)).cloned().collect();
            // A departure runs even when the bucket is a subscription again (left and joined
            // anew, or a copy that stopped being whole): it only removes what the user cannot
            // see, and the bucket is rebuilt after it (it is not held).
            let mut departing: Vec<String> =
                probe.departing.iter().cloned().chain(leaving.into_iter().map(|(b, _)| b)).collect();
            departing.sort();
            departing.dedup();
            // A bucket the user joined (not held by the device yet) reaches it whole through a
            // rebuild, like a stale one.
            let rebuild: Vec<String> = current
                .iter()
                .filter(|b| {
                    !held_set.contains(b)
                        || match req.bucket_checkpoints.get(*b) {
                            None => stale.min_seq > 0 || stale.compacted > 0,
                            Some(&cp) => needs_rebuild(&stale, cp),
                        }
                })
                .map(str::to_string)
                .collect();
            if !departing.is_empty() {
                let leaving =
                    super::departures::Leaving { held: &held, departing: &departing, rebuild, retention: &stale };
                return self.departure_page(&mut dbs, &cat, user, &req, leaving);
            }
            if !rebuild.is_empty() {
                let echo = Some(req.bucket_checkpoints.clone());
                return Ok(PullResponse { rebuild_buckets: rebuild, ..empty(req.checkpoint, echo) });
            }
            subs.iter().map(|b| (b.as_str(), req.bucket_checkpoints.get(b).copied().unwrap_or(0))).collect()
        } else {
            let reason = if req.checkpoint == 0 && client.last_pull_at.is_none() {
                Some("initial_sync_required")
            } else if let Some(reason) = history_gone(&stale, req.checkpoint) {
                Some(reason)
            } else if !in_line {
                // Joined or left a rule bucket: the device's history does not cover the new
                // bucket's rows (or the removal of the old one's), so it snapshots again.
                Some("history_unavailable")
            } else {
                None
            };
            if let Some(reason) = reason {
                let resp = PullResponse {
                    snapshot_required: true,
                    snapshot_reason: Some(reason),
                    ..empty(req.checkpoint, None)
                };
                self.notify_snapshot_required(user, &req.client_id, reason);
                return Ok(resp);
            }
            // In line, the device holds the defaults and exactly the rule buckets the hint named
            // when both came from the same cache entry, and it holds no bucket of an embedder's.
            checked = current.is_defaults_and(hint.as_ref());
            subs.iter().map(|b| (b.as_str(), req.checkpoint)).collect()
        };
        let from = positions.iter().map(|(_, p)| *p).min().unwrap_or(0);

        // The page came with the probe and needs no transaction (the changelog has no RLS):
        // empty pulls, the common case, end here. Rows are hydrated in a read-only transaction
        // with app.user_id set, so RLS policies apply to them.
        // Rows captured since the tail read the knowledge comes from are not in it: the bare
        // probe saw whether any came to the device's buckets.
        let known_empty = bare && !probe.fresh && (checked || self.heads.all_empty(positions.iter().copied()));
        let mut entries = if !bare || known_empty {
            probe.page
        } else {
            // The device holds a bucket the hint did not name, or one with new rows.
            let tables = (!req.tables.is_empty()).then_some(req.tables.as_slice());
            changelog::read_page(&mut ***dbs.store(), &positions, tables, req.limit + 1)?
        };
        let has_more = entries.len() as i64 > req.limit;
        entries.truncate(req.limit as usize);
        if !has_more && !known_empty {
            // Every bucket was read to its end: none holds anything after its last row here.
            let mut bounds: HashMap<&str, i64> = positions.iter().copied().collect();
            for e in &entries {
                if let Some(bound) = bounds.get_mut(e.bucket.as_str()) {
                    *bound = (*bound).max(e.seq.0);
                }
            }
            self.heads.learn(through, bounds);
        }
        let Some(last) = entries.last() else {
            if pull_stamp_is_stale(&client) {
                clients::touch_pull(&mut ***dbs.store(), user, &req.client_id)?;
            }
            let checkpoint = if per_bucket { from } else { req.checkpoint };
            let updates = bucket_updates(subs, &req.known_buckets);
            let echo = per_bucket.then(|| std::mem::take(&mut req.bucket_checkpoints));
            return Ok(PullResponse { bucket_updates: updates, ..empty(checkpoint, echo) });
        };
        let checkpoint = last.seq.0;
        // The page was read above, so the primary's WAL position taken now covers every change
        // it announces: a replica that replayed past it holds at least those versions.
        let on_replica = self.read_on_replica(dbs.app(), PageKind::Pull, |replica| {
            read_changes(replica, user, &cat, &entries, per_bucket)
        })?;
        let mut page = match on_replica {
            Some(read) => read,
            None => {
                let read = read_changes(dbs.app(), user, &cat, &entries, per_bucket)?;
                self.reads.count(PageKind::Pull, false);
                read
            }
        };
        keep_held(&mut ***dbs.store(), subs, &mut page)?;
        let Materialised { changes, deletes, lost, .. } = page;
        if !lost.is_empty() {
            let at =
                |b: &str| if per_bucket { req.bucket_checkpoints.get(b).copied().unwrap_or(0) } else { req.checkpoint };
            self.lost_buckets(&mut dbs, user, &req.client_id, &lost, subs, at)?;
        }
        // Checksums come from the bucket edges (the sync store), after the rows were read.
        let bucket_checksums: BTreeMap<String, i32> = if has_more {
            BTreeMap::new()
        } else {
            changelog::bucket_checksums(&mut **dbs.store(), subs)?.into_iter().collect()
        };

        let bucket_checkpoints = per_bucket.then(|| {
            let mut map = std::mem::take(&mut req.bucket_checkpoints);
            for e in &entries {
                let slot = map.entry(e.bucket.clone()).or_insert(0);
                *slot = (*slot).max(e.seq.0);
            }
            map
        });
        // Best-effort bookkeeping after the data is safely out: a failure here is logged, the
        // client simply pulls the same rows again.
        let bookkeeping = (|| -> Result<(), StoreError> {
            if let Some(map) = &bucket_checkpoints {
                // Only subscribed buckets are ever stored, whatever bucket ids the client sent.
                let pairs = buckets.keep(map);
                clients::raise_bucket_checkpoints(&mut ***dbs.store(), user, &req.client_id, &pairs)?;
            }
            if checkpoint > req.checkpoint {
                // Also stamps last_pull_at.
                return clients::advance_legacy(&mut **dbs.store(), user, &req.client_id, checkpoint);
            }
            if pull_stamp_is_stale(&client) {
                clients::touch_pull(&mut ***dbs.store(), user, &req.client_id)?;
            }
            Ok(())
        })();
        if let Err(e) = bookkeeping {
            crate::warn!("recording pull progress failed", error = e.to_string());
        }
        self.settings.hooks.on_pull_complete(user, &req.client_id, checkpoint, has_more);
        Ok(PullResponse {
            changes,
            deletes,
            checkpoint,
            bucket_checkpoints,
            has_more,
            rebuild_buckets: vec![],
            bucket_checksums,
            snapshot_required: false,
            snapshot_reason: None,
            bucket_updates: bucket_updates(subs, &req.known_buckets),
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }

    pub(super) fn notify_snapshot_required(&self, user: &UserId, client_id: &str, reason: &str) {
        crate::debug!("snapshot required", user = user.as_str(), client_id = client_id, reason = reason);
        self.settings.hooks.on_snapshot_required(user, client_id, reason);
    }
}

/// A set of bucket ids as a sorted list: built and compared without hashing (a user in many
/// teams has dozens of ids sharing a long prefix, and a pull builds two of these).
#[derive(Clone, PartialEq, Eq)]
struct BucketSet<'a>(Vec<&'a str>);

impl<'a> BucketSet<'a> {
    fn of(buckets: impl Iterator<Item = &'a str>) -> BucketSet<'a> {
        let mut ids: Vec<&str> = buckets.collect();
        ids.sort_unstable();
        ids.dedup();
        BucketSet(ids)
    }

    fn contains(&self, bucket: &str) -> bool {
        self.0.binary_search(&bucket).is_ok()
    }
}

/// `last_pull_at` only feeds the first-sync check and compaction's staleness (days), so it is
/// refreshed at most every 30 s: an idle client's empty pulls then write nothing.
fn pull_stamp_is_stale(client: &clients::ClientRow) -> bool {
    match client.last_pull_at {
        None => true,
        Some(t) => t.elapsed().map(|e| e > std::time::Duration::from_secs(30)).unwrap_or(true),
    }
}

/// §6.7: only when the client listed `known_buckets`.
pub(super) fn bucket_updates(subs: &[String], known: &[String]) -> Option<BucketUpdate> {
    if known.is_empty() {
        return None;
    }
    let update = BucketUpdate {
        added: subs.iter().filter(|b| !known.contains(b)).cloned().collect(),
        removed: known.iter().filter(|b| !subs.contains(b)).cloned().collect(),
    };
    (!update.added.is_empty() || !update.removed.is_empty()).then_some(update)
}

/// `app.user_id` for the transaction, so RLS policies see the caller (§6.2 step 3).
///
/// The same statement turns sequential scans off for the transaction: every read that follows
/// (hydration by primary key, snapshot pages in key order, edges by bucket) has an index, and
/// right after a bulk load PostgreSQL's stale statistics made it scan whole tables instead.
pub(crate) fn set_user(tx: &mut impl GenericClient, user: &UserId) -> Result<(), StoreError> {
    tx.query_typed(
        "SELECT set_config('app.user_id', $1, true), set_config('enable_seqscan', 'off', true)",
        &[(&user.as_str(), postgres::types::Type::TEXT)],
    )
    .map_err(StoreError::query("setting app.user_id"))?;
    Ok(())
}

/// Hydrates a page in a read-only transaction of its own with `app.user_id` set, on the
/// primary or a replica alike (a replica applies the same RLS policies).
fn read_changes(
    db: &mut Session,
    user: &UserId,
    cat: &CatalogState,
    entries: &[ChangelogEntry],
    per_bucket: bool,
) -> Result<Materialised, EngineError> {
    let (client, cache) = db.parts();
    let mut tx = client.build_transaction().read_only(true).start().map_err(StoreError::query("starting the pull"))?;
    set_user(&mut tx, user)?;
    let out = materialise(&mut tx, cache, user, cat, entries, per_bucket)?;
    tx.commit().map_err(StoreError::query("finishing the pull"))?;
    Ok(out)
}

/// §6.4: de-duplicate by record (position of first occurrence, operation and bucket of the
/// last), split into changes and deletes, hydrate changes with one query per table. A row that
/// is no longer in the user's scope (transferred away while capture lags behind) is sent as a
/// delete, never as data.
///
/// With `per_bucket`, a removal is sent only for a row the user cannot see any more (one query
/// per table with removals): each bucket is read from its own position, so a bucket can be
/// behind the record's new bucket, which the device already holds it through (rebuilt after a
/// join, or pulled further), and a removal from the old bucket must not take the row away.
/// A row the user can see reaches the device through the bucket it is in now.
pub(super) fn materialise(
    db: &mut impl GenericClient,
    cache: &mut StatementCache,
    user: &UserId,
    cat: &CatalogState,
    entries: &[ChangelogEntry],
    per_bucket: bool,
) -> Result<Materialised, EngineError> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut last: HashMap<(&str, &str), &ChangelogEntry> = HashMap::new();
    for e in entries {
        let key = (e.table.as_str(), e.record_id.as_str());
        if last.insert(key, e).is_none() {
            order.push(key);
        }
    }
    let mut deletes = Vec::new();
    let mut lost = BTreeSet::new();
    let mut wanted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut removed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for key in &order {
        let e = last[key];
        if e.op == Op::Delete {
            deletes.push(DeleteEntry { id: e.record_id.clone(), table_name: e.table.clone() });
            removed.entry(key.0).or_default().push(key.1.to_string());
        } else {
            wanted.entry(key.0).or_default().push(key.1.to_string());
        }
    }
    let mut visible_removals = Vec::new();
    if per_bucket && !removed.is_empty() {
        let mut visible: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
        for (table_name, ids) in removed {
            // A table no longer synced: nothing of it is visible.
            let Some(table) = cat.registry.table(table_name) else { continue };
            visible.extend(
                rows::visible(db, cache, &cat.registry, table, user, &ids)?
                    .into_iter()
                    .map(|id| (table_name.to_string(), id)),
            );
        }
        let (kept, gone): (Vec<_>, Vec<_>) =
            deletes.into_iter().partition(|d: &DeleteEntry| visible.contains(&(d.table_name.clone(), d.id.clone())));
        deletes = gone;
        visible_removals = kept;
    }
    let mut changes = Vec::new();
    for (table_name, ids) in wanted {
        let table = cat.registry.table(table_name).ok_or_else(|| {
            // C9: a changelog row for a table no longer synced fails the request (the client
            // retries) rather than silently advancing past it.
            EngineError::Schema(format!("changelog refers to table {table_name}, which is not synced"))
        })?;
        let mut rows = rows::hydrate(db, cache, &cat.registry, table, user, &ids)?;
        for id in ids {
            let Some(row) = rows.remove(&id) else { continue };
            let e = last[&(table_name, id.as_str())];
            if !row.in_scope {
                if is_rule_bucket(&cat.registry, &e.bucket) {
                    lost.insert(e.bucket.clone());
                }
                deletes.push(DeleteEntry { id, table_name: table_name.to_string() });
                continue;
            }
            changes.push(to_record(table_name, id, row, Some(e.created_at), Some(e.bucket.clone()), true)?);
        }
    }
    Ok(Materialised { changes, deletes, lost, visible_removals })
}

/// What a page of changelog entries became.
pub(super) struct Materialised {
    pub changes: Vec<Record>,
    pub deletes: Vec<DeleteEntry>,
    /// Rule buckets with a row the user no longer sees by the membership tables, though the
    /// subscriptions (as capture has reported them) still include the bucket: the device's copy
    /// of the bucket is no longer whole (see [`Engine::lost_buckets`]).
    pub lost: BTreeSet<String>,
    /// Per-bucket removals of rows the user still sees: sent only when the row is not in a
    /// bucket the device holds ([`keep_held`]).
    pub visible_removals: Vec<DeleteEntry>,
}

/// Per-bucket mode: each bucket is read from its own position, so a bucket can be behind the
/// record's new bucket, which the device already holds it through (rebuilt after a join, or
/// pulled further), and a removal from the old bucket must not take the row away. A removal
/// of a row the user still sees is dropped when the row is in a bucket the device holds (its
/// edges, in the sync store): the row reaches the device through that bucket. Otherwise it is
/// sent (the row reaches the device again if it enters a held bucket).
pub(super) fn keep_held(
    store: &mut impl GenericClient,
    held: &[String],
    page: &mut Materialised,
) -> Result<(), StoreError> {
    let removals = std::mem::take(&mut page.visible_removals);
    if removals.is_empty() {
        return Ok(());
    }
    let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in &removals {
        by_table.entry(d.table_name.as_str()).or_default().push(d.id.clone());
    }
    let mut in_held: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    for (table, ids) in by_table {
        in_held.extend(changelog::members_in(store, table, &ids, held)?.into_iter().map(|id| (table.to_string(), id)));
    }
    page.deletes.extend(removals.into_iter().filter(|d| !in_held.contains(&(d.table_name.clone(), d.id.clone()))));
    Ok(())
}
