//! POST /sync/rebuild (§8.2) and GET /sync/debug (§1.9).
//!
//! Rebuild fixes of §8.3: only subscribed buckets (C10), the checkpoint captured on the first
//! page and carried in the cursor, and the final page sets only the rebuilt bucket (C11). The
//! cursor is `<checkpoint>:<table>|<record id>`; the reference's `<table>|<record id>` is still
//! accepted (it then restarts the checkpoint capture).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::pull::set_user;
use super::rows::{self, to_record};
use super::scope::ClientBuckets;
use super::subscriptions::is_rule_bucket;
use super::{Engine, EngineError};
use crate::protocol::{
    ChangelogStats, DebugBucket, DebugClient, DebugRequest, DebugResponse, RebuildRequest, RebuildResponse,
};
use crate::store::changelog;
use crate::store::clients;
use crate::store::pool::StoreError;
use crate::time::format_timestamp;
use crate::types::UserId;

/// A parsed rebuild cursor.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    /// The checkpoint captured on the first page (`None` for the reference's form).
    checkpoint: Option<i64>,
    /// An earlier page left out a row of a rule bucket the user did not see (`~` after the
    /// checkpoint): the device's copy of the bucket is not whole.
    partial: bool,
    table: String,
    record: String,
}

/// Parses `<checkpoint>[~]:<table>|<record id>`, or the reference's `<table>|<record id>`.
fn parse_cursor(cursor: &str) -> Option<Cursor> {
    let (head, record) = cursor.split_once('|')?;
    let plain = || Cursor { checkpoint: None, partial: false, table: head.to_string(), record: record.to_string() };
    let Some((cp, table)) = head.split_once(':') else { return Some(plain()) };
    let (digits, partial) = match cp.strip_suffix('~') {
        Some(d) => (d, true),
        None => (cp, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(plain());
    }
    match digits.parse() {
        Ok(cp) => Some(Cursor { checkpoint: Some(cp), partial, table: table.to_string(), record: record.to_string() }),
        Err(_) => Some(Cursor { checkpoint: None, partial, table: table.to_string(), record: record.to_string() }),
    }
}

impl Engine {
    /// One page of a bucket's live rows.
    pub fn rebuild(&self, user: &UserId, req: &RebuildRequest) -> Result<RebuildResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        let client =
            clients::load(&mut ***dbs.store(), user, &req.client_id)?.ok_or(EngineError::ClientNotRegistered)?;
        let held = ClientBuckets::of(&client, user);
        // A bucket the user joined is rebuilt before the device holds it; with bucket rules the
        // user's current subscriptions decide.
        let joining = cat.registry.has_rules() && !held.contains(&req.bucket_id);
        let subscribed = if joining {
            let version = crate::store::subscriptions::version(&mut ***dbs.store(), user)?;
            self.current_subscriptions(&mut dbs, &cat, user, version, held.list())?.contains(&req.bucket_id)
        } else {
            held.contains(&req.bucket_id)
        };
        if !subscribed {
            return Err(EngineError::Forbidden(format!("bucket {} is not subscribed by this client", req.bucket_id)));
        }
        // Read before the members and rows, as for snapshots: later changes have higher `seq`.
        let max_seq = changelog::max_seq(&mut ***dbs.store())?;
        let (cp, after, mut partial) = match req.cursor.as_deref().and_then(parse_cursor) {
            Some(Cursor { checkpoint: Some(cp), partial, table, record }) => {
                if cp > max_seq {
                    return Err(EngineError::BadRequest("invalid rebuild cursor".into()));
                }
                (cp, Some((table, record)), partial)
            }
            Some(Cursor { checkpoint: None, partial, table, record }) => (max_seq, Some((table, record)), partial),
            None => (max_seq, None, false),
        };
        let rule_bucket = is_rule_bucket(&cat.registry, &req.bucket_id);
        let mut members = changelog::bucket_members(
            &mut ***dbs.store(),
            &req.bucket_id,
            after.as_ref().map(|(t, r)| (t.as_str(), r.as_str())),
            req.limit + 1,
        )?;
        let has_more = members.len() as i64 > req.limit;
        members.truncate(req.limit as usize);
        let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (t, r) in &members {
            by_table.entry(t.as_str()).or_default().push(r.clone());
        }
        // Members come from the edges (sync store), rows from the application database.
        let (client, cache) = dbs.app().parts();
        let mut tx =
            client.build_transaction().read_only(true).start().map_err(StoreError::query("starting the rebuild"))?;
        set_user(&mut tx, user)?;
        let mut records = Vec::new();
        for (table_name, ids) in by_table {
            // Edges of tables no longer synced are skipped: they cannot be hydrated or served.
            let Some(table) = cat.registry.table(table_name) else { continue };
            let mut rows = rows::hydrate(&mut tx, cache, &cat.registry, table, user, &ids)?;
            for id in ids {
                let Some(row) = rows.remove(&id) else { continue };
                // An edge not yet moved after a transfer (capture lags) never turns into data:
                // the row is left out, and the client drops it when the rebuild completes.
                if row.deleted_at.is_some() || !row.in_scope {
                    // In a rule bucket, a member the user does not see by the membership tables
                    // means capture has not reported a membership change yet: the bucket the
                    // device ends up with is not the whole bucket.
                    partial |= !row.in_scope && rule_bucket;
                    continue;
                }
                records.push(to_record(table_name, id, row, None, Some(req.bucket_id.clone()), true)?);
            }
        }
        tx.commit().map_err(StoreError::query("finishing the rebuild page"))?;
        let bucket_checksum = if has_more {
            None
        } else {
            changelog::bucket_checksums(&mut **dbs.store(), std::slice::from_ref(&req.bucket_id))?
                .first()
                .map(|(_, c)| *c)
        };
        let mark = if partial { "~" } else { "" };
        let cursor = if has_more { members.last().map(|(t, r)| format!("{cp}{mark}:{t}|{r}")) } else { None };
        if !has_more {
            let store = &mut ***dbs.store();
            let defaults = clients::default_subscriptions(user);
            if partial {
                // The device's copy of the bucket is not whole (see `Engine::lost_buckets`): it is
                // not held, and a departure removes what the user cannot see if the bucket turns
                // out to be left; if not, the next pull asks for this rebuild again.
                let leaving = [(req.bucket_id.clone(), cp)];
                crate::store::subscriptions::start_departures(store, user, &req.client_id, &leaving, &defaults)?;
            }
            if joining && !partial {
                // The device now holds the bucket: its changes come with every pull from here.
                crate::store::subscriptions::hold_bucket(store, user, &req.client_id, &req.bucket_id, &defaults)?;
            }
            clients::set_bucket_checkpoint(store, user, &req.client_id, &req.bucket_id, cp)?;
            clients::reactivate(store, user, &req.client_id)?;
        }
        Ok(RebuildResponse {
            records,
            cursor,
            checkpoint: cp,
            has_more,
            bucket_checksum,
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }

    /// GET /sync/debug: the client row, its checkpoints and the extent of the changelog. Only
    /// subscribed buckets are shown, whatever checkpoint rows exist.
    pub fn debug(&self, user: &UserId, req: &DebugRequest) -> Result<DebugResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let db = &mut ***dbs.store();
        let client = clients::load(db, user, &req.client_id)?.ok_or(EngineError::ClientNotRegistered)?;
        let subscribed = ClientBuckets::of(&client, user);
        let checkpoints = clients::bucket_checkpoints(db, user, &req.client_id)?;
        let mut buckets = Vec::new();
        for (bucket_id, checkpoint) in checkpoints.into_iter().filter(|(b, _)| subscribed.contains(b)) {
            let (member_count, checksum) = changelog::bucket_summary(db, &bucket_id)?;
            buckets.push(DebugBucket { bucket_id, checkpoint, checksum, member_count });
        }
        let (min_seq, max_seq, total_entries) = changelog::stats(db)?;
        Ok(DebugResponse {
            buckets,
            changelog_stats: ChangelogStats { max_seq, min_seq, total_entries },
            client: DebugClient {
                app_version: client.app_version,
                bucket_subs: client.bucket_subs,
                client_id: client.client_id,
                id: client.id,
                is_active: client.is_active,
                last_pull_at: client.last_pull_at.map(format_timestamp),
                last_push_at: client.last_push_at.map(format_timestamp),
                last_sync_at: client.last_sync_at.map(format_timestamp),
                legacy_checkpoint: client.last_pull_seq,
                platform: client.platform,
            },
            server_time: format_timestamp(SystemTime::now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        let c = |checkpoint: Option<i64>, partial: bool, table: &str, record: &str| {
            Some(Cursor { checkpoint, partial, table: table.into(), record: record.into() })
        };
        assert_eq!(parse_cursor("12:tasks|a|b"), c(Some(12), false, "tasks", "a|b"));
        assert_eq!(parse_cursor("12~:tasks|a"), c(Some(12), true, "tasks", "a"));
        assert_eq!(parse_cursor("tasks|a"), c(None, false, "tasks", "a"));
        assert_eq!(parse_cursor("no-bar"), None);
        assert_eq!(parse_cursor(":t|r"), c(None, false, ":t", "r"));
        assert_eq!(parse_cursor("~:t|r"), c(None, false, "~:t", "r"));
        assert_eq!(parse_cursor("1~2:t|r"), c(None, false, "1~2:t", "r"));
        assert_eq!(parse_cursor("99999999999999999999999:t|r"), c(None, false, "t", "r"));
    }
}
