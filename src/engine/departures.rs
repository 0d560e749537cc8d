//! A per-bucket device whose user left a rule bucket (`BUCKET_RULES`): its pulls carry deletes
//! for the rows it holds from that bucket until none is left.
//!
//! What the device holds from bucket `T` are the rows that were members of `T` at its
//! checkpoint of `T`. Those are the current members of `T` (the bucket edges) plus the rows
//! that left `T` after that checkpoint (its changelog since then). So a departure pages through
//! both: the members, answered with a delete each unless the row is still in the user's scope
//! (through another bucket), and the bucket's changelog from the device's checkpoint of it,
//! whose rows the scope predicate turns into deletes as it does for any row out of scope.
//! Progress is stored per device (`synchro_departures`); when the members are done and a page
//! reached the end of the changelog, the departure ends and the bucket is forgotten.
//!
//! Deleting a row the device does not hold is harmless (SDKs ignore it); keeping one it must
//! lose is not, so every doubt resolves to a delete, except for rows the user may still see.
//!
//! When the bucket's changelog after the device's position is no longer whole (compacted while
//! the device was away, or lost with the replication slot), the rows that left the bucket
//! meanwhile cannot be named, and a rebuild would not reach rows the device got from a
//! snapshot (which names no buckets): the device is asked for a snapshot instead, in
//! per-bucket mode too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::pull::{bucket_updates, keep_held, materialise, set_user};
use super::{CatalogState, Conns, Engine, EngineError};
use crate::protocol::{DeleteEntry, PullRequest, PullResponse};
use crate::store::changelog;
use crate::store::clients;
use crate::store::pool::StoreError;
use crate::store::pull_probe::Retention;
use crate::store::subscriptions::{self, Departure};
use crate::types::UserId;

/// What the pull decided before it came here.
pub(super) struct Leaving<'a> {
    /// The buckets the device holds and the user still has.
    pub held: &'a [String],
    /// The buckets the device is leaving.
    pub departing: &'a [String],
    /// Buckets to rebuild once the departures are done (joined or stale ones).
    pub rebuild: Vec<String>,
    /// How much of the changelog is left.
    pub retention: &'a Retention,
}

impl Engine {
    /// The device got deletes for rows of the rule buckets `lost` that the user no longer sees
    /// by the membership tables, while the subscriptions capture has reported still include
    /// them (a membership change capture has not recorded yet): its copy of those buckets is
    /// no longer whole. They leave what it holds, with a departure each that removes whatever
    /// else the user cannot see; if the user turns out to be a member after all (left and
    /// joined again before capture caught up), the bucket is rebuilt as a joined one. Without
    /// this, rows dropped in that window would never come back. `position` is the device's
    /// position in a bucket before this page.
    pub(super) fn lost_buckets(
        &self,
        dbs: &mut Conns,
        user: &UserId,
        client_id: &str,
        lost: &BTreeSet<String>,
        held: &[String],
        position: impl Fn(&str) -> i64,
    ) -> Result<(), EngineError> {
        let leaving: Vec<(String, i64)> =
            lost.iter().filter(|b| held.contains(b)).map(|b| (b.clone(), position(b))).collect();
        if leaving.is_empty() {
            return Ok(());
        }
        crate::debug!(
            "device copy of rule buckets no longer whole",
            client_id = client_id,
            buckets = leaving.len() as u64
        );
        let defaults = clients::default_subscriptions(user);
        Ok(subscriptions::start_departures(&mut ***dbs.store(), user, client_id, &leaving, &defaults)?)
    }

    /// One pull page of a device that is leaving buckets.
    pub(super) fn departure_page(
        &self,
        dbs: &mut Conns,
        cat: &CatalogState,
        user: &UserId,
        req: &PullRequest,
        leaving: Leaving<'_>,
    ) -> Result<PullResponse, EngineError> {
        let mut departures: Vec<Departure> = subscriptions::departures(&mut ***dbs.store(), user, &req.client_id)?
            .into_iter()
            .filter(|d| leaving.departing.contains(&d.bucket))
            .collect();
        // The changelog of the held buckets and of the departing ones, each from the device's
        // position (a departing bucket it no longer reports starts where it left).
        let mut positions: Vec<(String, i64)> =
            leaving.held.iter().map(|b| (b.clone(), req.bucket_checkpoints.get(b).copied().unwrap_or(0))).collect();
        positions.extend(
            departures
                .iter()
                .map(|d| (d.bucket.clone(), req.bucket_checkpoints.get(&d.bucket).copied().unwrap_or(d.since))),
        );
        let history = departures.iter().find_map(|d| {
            super::pull::history_gone(
                leaving.retention,
                req.bucket_checkpoints.get(&d.bucket).copied().unwrap_or(d.since),
            )
        });
        if let Some(reason) = history {
            // Nothing is updated: the snapshot's first page ends the departures.
            self.notify_snapshot_required(user, &req.client_id, reason);
            return Ok(PullResponse {
                changes: Vec::new(),
                deletes: Vec::new(),
                checkpoint: req.checkpoint,
                bucket_checkpoints: Some(req.bucket_checkpoints.clone()),
                has_more: false,
                rebuild_buckets: Vec::new(),
                bucket_checksums: BTreeMap::new(),
                snapshot_required: true,
                snapshot_reason: Some(reason),
                bucket_updates: None,
                schema_version: cat.version,
                schema_hash: cat.schema.hash.clone(),
            });
        }
        let from = positions.iter().map(|(_, p)| *p).min().unwrap_or(0);
        let tables = (!req.tables.is_empty()).then_some(req.tables.as_slice());
        let mut entries = changelog::read_page(&mut ***dbs.store(), &positions, tables, req.limit + 1)?;
        let log_has_more = entries.len() as i64 > req.limit;
        entries.truncate(req.limit as usize);

        // The members, up to `limit` of them per page across the departures.
        let mut budget = req.limit;
        let mut members: Vec<(String, String)> = Vec::new();
        for d in departures.iter_mut().filter(|d| !d.members_done) {
            if budget <= 0 {
                break;
            }
            let asked = budget;
            let page = changelog::bucket_members(
                &mut ***dbs.store(),
                &d.bucket,
                d.after.as_ref().map(|(t, r)| (t.as_str(), r.as_str())),
                asked,
            )?;
            budget -= page.len() as i64;
            d.members_done = (page.len() as i64) < asked;
            if let Some(last) = page.last() {
                d.after = Some(last.clone());
            }
            members.extend(page);
        }
        let members_pending = departures.iter().any(|d| !d.members_done);

        let (client, cache) = dbs.app().parts();
        let mut tx =
            client.build_transaction().read_only(true).start().map_err(StoreError::query("starting the pull"))?;
        set_user(&mut tx, user)?;
        // The departing buckets' records, members and changelog alike, are only ever removed,
        // and only when the user cannot see them any more: their changelog is read from where
        // the device left the bucket, behind its other buckets, and a removal there must not
        // take away a row that moved to a bucket the device holds.
        let mut candidates: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (t, r) in &members {
            candidates.entry(t.as_str()).or_default().insert(r.clone());
        }
        let (kept, leaving_entries): (Vec<_>, Vec<_>) =
            entries.iter().cloned().partition(|e| leaving.held.contains(&e.bucket));
        for e in &leaving_entries {
            candidates.entry(e.table.as_str()).or_default().insert(e.record_id.clone());
        }
        let mut deletes: Vec<DeleteEntry> = Vec::new();
        let mut visible_removals: Vec<DeleteEntry> = Vec::new();
        for (table_name, ids) in candidates {
            let ids: Vec<String> = ids.into_iter().collect();
            // A member of a table no longer synced: the device cannot hold it as a row of a
            // synced table either.
            let visible: HashSet<String> = match cat.registry.table(table_name) {
                Some(table) => super::rows::visible(&mut tx, cache, &cat.registry, table, user, &ids)?,
                None => HashSet::new(),
            };
            for id in ids {
                let d = DeleteEntry { id, table_name: table_name.to_string() };
                if visible.contains(&d.id) {
                    visible_removals.push(d);
                } else {
                    deletes.push(d);
                }
            }
        }
        let mut page = materialise(&mut tx, cache, user, cat, &kept, true)?;
        tx.commit().map_err(StoreError::query("finishing the pull"))?;
        // A row the user still sees is kept only when it is in a bucket the device holds, which
        // keeps it up to date (and removes it when it goes).
        page.visible_removals.extend(visible_removals);
        keep_held(&mut ***dbs.store(), leaving.held, &mut page)?;
        let (changes, log_deletes) = (page.changes, page.deletes);
        let mut seen: HashSet<(String, String)> =
            deletes.iter().map(|d| (d.table_name.clone(), d.id.clone())).collect();
        deletes.extend(log_deletes.into_iter().filter(|d| seen.insert((d.table_name.clone(), d.id.clone()))));
        // A record both changed in a held bucket and removed from a departing one: the change
        // wins (it is visible, so the departure never listed it; this only guards the order).
        let changed: HashSet<(&str, &str)> = changes.iter().map(|c| (c.table_name.as_str(), c.id.as_str())).collect();
        deletes.retain(|d| !changed.contains(&(d.table_name.as_str(), d.id.as_str())));

        let has_more = log_has_more || members_pending;
        let checkpoint = entries.last().map_or(from, |e| e.seq.0);
        let bucket_checksums: BTreeMap<String, i32> = if has_more || entries.is_empty() {
            BTreeMap::new()
        } else {
            changelog::bucket_checksums(&mut ***dbs.store(), leaving.held)?.into_iter().collect()
        };
        let mut map = req.bucket_checkpoints.clone();
        for e in &entries {
            let slot = map.entry(e.bucket.clone()).or_insert(0);
            *slot = (*slot).max(e.seq.0);
        }
        let positions: BTreeMap<String, i64> = positions.into_iter().collect();
        self.lost_buckets(dbs, user, &req.client_id, &page.lost, leaving.held, |b| {
            positions.get(b).copied().unwrap_or(0)
        })?;
        let bookkeeping = (|| -> Result<(), StoreError> {
            let store = &mut ***dbs.store();
            let held: Vec<(String, i64)> =
                map.iter().filter(|(b, _)| leaving.held.contains(b)).map(|(b, s)| (b.clone(), *s)).collect();
            clients::raise_bucket_checkpoints(store, user, &req.client_id, &held)?;
            if has_more {
                for d in &departures {
                    subscriptions::record_departure(store, user, &req.client_id, d)?;
                }
            } else {
                // Every member answered and the changelog read to its end: the device holds
                // nothing of these buckets any more.
                let done: Vec<String> = departures.iter().map(|d| d.bucket.clone()).collect();
                subscriptions::finish_departures(store, user, &req.client_id, &done)?;
            }
            if checkpoint > req.checkpoint {
                return clients::advance_legacy(store, user, &req.client_id, checkpoint);
            }
            clients::touch_pull(store, user, &req.client_id)
        })();
        if let Err(e) = bookkeeping {
            // The device pulls the same page again: deletes are idempotent.
            crate::warn!("recording departure progress failed", error = e.to_string());
        }
        self.settings.hooks.on_pull_complete(user, &req.client_id, checkpoint, has_more);
        Ok(PullResponse {
            changes,
            deletes,
            checkpoint,
            bucket_checkpoints: Some(map),
            has_more,
            // Buckets joined meanwhile are rebuilt once the departures are done (the SDK
            // rebuilds every bucket any page of its pull loop listed).
            rebuild_buckets: if has_more { Vec::new() } else { leaving.rebuild },
            bucket_checksums,
            snapshot_required: false,
            snapshot_reason: None,
            bucket_updates: bucket_updates(leaving.held, &req.known_buckets),
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }
}
