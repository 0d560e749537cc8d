//! Bucket rules end to end: what each SDK generation sees when its user joins or leaves a
//! team, reads while capture lags behind a membership change, every endpoint against a user
//! outside the team, and the subscription cache.

use std::time::Duration;

use serde_json::{json, Value};

use crate::capture::wait_for;
use crate::harness::TestDb;
use crate::rules::RulesFile;
use crate::teams_property::{assert_holds_exactly, caught_up, project, task, team, Dev, MARKER_TEAM, SCHEMA};

/// Two teams with three projects and a task each: alice in team 0, bob in team 1.
fn seed(db: &TestDb) {
    db.execute(SCHEMA);
    let mut sql = format!("INSERT INTO teams (id, name) VALUES ('{MARKER_TEAM}', 'marker');");
    for n in 0..2 {
        sql.push_str(&format!("INSERT INTO teams (id, name) VALUES ('{}', 'team {n}');", team(n)));
    }
    sql.push_str(&format!(
        "INSERT INTO team_members (team_id, user_id) VALUES ('{}', 'alice'), ('{}', 'bob');",
        team(0),
        team(1)
    ));
    for n in 0..6 {
        sql.push_str(&format!(
            "INSERT INTO projects (id, team_id, name) VALUES ('{}', '{}', 'p{n}');
             INSERT INTO tasks (id, project_id, title) VALUES ('{}', '{}', 'k{n}');",
            project(n),
            team(n % 2),
            task(n),
            project(n)
        ));
    }
    db.execute(&sql);
}

/// [`seed`], served with the minimal rules.
fn seeded(db: &TestDb) -> (RulesFile, synchro::server::Running) {
    seed(db);
    let rules = RulesFile::new(db, crate::rules::MINIMAL);
    let server = crate::server::start(
        db,
        &[("SYNC_TABLES", "teams,team_members,projects,tasks"), ("BUCKET_RULES", &rules.shown())],
    );
    (rules, server)
}

fn bucket(n: u64) -> String {
    format!("team:{}", team(n))
}

fn team_rows(d: &Dev, n: u64) -> usize {
    d.rows
        .values()
        .filter(|(v, _)| v.get("team_id").and_then(Value::as_str) == Some(team(n).as_str()) && v.get("name").is_some())
        .count()
}

fn version(c: &mut postgres::Client, user: &str) -> i64 {
    c.query_one("SELECT COALESCE(max(version), 0) FROM synchro_subscription_versions WHERE user_id = $1", &[&user])
        .unwrap()
        .get(0)
}

/// What each SDK generation sees, exactly as `docs/protocol.md` describes it.
#[test]
fn membership_changes_reach_each_sdk_generation_by_themselves() {
    let db = TestDb::new();
    let (_rules, server) = seeded(&db);
    let mut c = db.client();
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    let mut legacy = Dev::new(server.addr, "alice", 0, false);
    let mut latest = Dev::new(server.addr, "alice", 1, true);
    for d in [&mut legacy, &mut latest] {
        d.snapshot(&mut c, 2);
        d.sync(&mut c, 2);
        assert_eq!((team_rows(d, 0), team_rows(d, 1)), (3, 0));
    }
    assert!(
        latest.buckets.contains_key(&bucket(0)),
        "register hands the per-bucket SDK its team bucket: {:?}",
        latest.buckets
    );

    // Alice joins team 1 by SQL.
    let before = version(&mut c, "alice");
    c.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1::text::uuid, 'alice')", &[&team(1)]).unwrap();
    wait_for(30, "the join to be captured", || (version(&mut c, "alice") > before).then_some(()));
    // SDK 0.1.2 (and the latest SDK in legacy mode): one response asks for a snapshot.
    let asked = legacy.pull(&mut c, 2, None);
    assert_eq!(asked.snapshot.as_deref(), Some("history_unavailable"));
    legacy.snapshot(&mut c, 2);
    assert_eq!((team_rows(&legacy, 0), team_rows(&legacy, 1)), (3, 3));
    assert!(legacy.pull(&mut c, 2, None).snapshot.is_none(), "once in line, pulls are ordinary again");
    // The latest SDK: the new bucket is listed in rebuild_buckets, never a snapshot.
    let asked = latest.pull(&mut c, 2, None);
    assert!(asked.snapshot.is_none());
    assert_eq!(asked.rebuild.iter().cloned().collect::<Vec<_>>(), vec![bucket(1)]);
    latest.rebuild(&mut c, &bucket(1), 2);
    assert_eq!((team_rows(&latest, 0), team_rows(&latest, 1)), (3, 3));
    let asked = latest.pull(&mut c, 2, None);
    assert!(asked.snapshot.is_none() && asked.rebuild.is_empty(), "the rebuilt bucket is held now");
    for d in [&legacy, &latest] {
        assert_holds_exactly(&mut c, d, "after joining");
    }

    // Alice leaves team 0 by SQL.
    let before = version(&mut c, "alice");
    c.execute("DELETE FROM team_members WHERE team_id = $1::text::uuid AND user_id = 'alice'", &[&team(0)]).unwrap();
    wait_for(30, "the leave to be captured", || (version(&mut c, "alice") > before).then_some(()));
    let asked = legacy.pull(&mut c, 2, None);
    assert_eq!(asked.snapshot.as_deref(), Some("history_unavailable"));
    legacy.snapshot(&mut c, 2);
    assert_eq!((team_rows(&legacy, 0), team_rows(&legacy, 1)), (0, 3));
    // The latest SDK: deletes, a page at a time, within one pull loop.
    let mut pages = 0;
    loop {
        pages += 1;
        let map = json!(latest.buckets);
        let page = latest.call("/sync/pull", json!({"checkpoint": 0, "bucket_checkpoints": map, "limit": 1}));
        assert!(page.get("snapshot_required").is_none() && page.get("rebuild_buckets").is_none(), "{page}");
        for del in page["deletes"].as_array().unwrap() {
            latest
                .rows
                .remove(&(del["table_name"].as_str().unwrap().to_string(), del["id"].as_str().unwrap().to_string()));
        }
        for (b, cp) in page["bucket_checkpoints"].as_object().unwrap() {
            latest.buckets.insert(b.clone(), cp.as_i64().unwrap());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert!(pages >= 6, "six rows of team 0 at one delete per page: {pages} pages");
    assert_eq!((team_rows(&latest, 0), team_rows(&latest, 1)), (0, 3));
    assert_holds_exactly(&mut c, &latest, "after leaving");
    // The departure is over: the bucket is no longer held, its checkpoint row is gone.
    let row = c
        .query_one(
            "SELECT bucket_subs, (SELECT count(*) FROM sync_client_checkpoints k WHERE k.client_id = 'alice-1' AND k.bucket_id = $1),
                    (SELECT count(*) FROM synchro_departures) FROM sync_clients WHERE client_id = 'alice-1'",
            &[&bucket(0)],
        )
        .unwrap();
    let subs: Vec<String> = row.get(0);
    assert!(!subs.contains(&bucket(0)) && subs.contains(&bucket(1)), "{subs:?}");
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (0, 0));
    // The SDK keeps reporting the old bucket; nothing more comes of it.
    let asked = latest.pull(&mut c, 100, None);
    assert!(asked.snapshot.is_none() && asked.rebuild.is_empty());
    assert_holds_exactly(&mut c, &latest, "after the departure");
    server.shutdown(Duration::from_secs(5));
}

/// Reads are checked against the membership tables in the statement that reads each row, so a
/// user who left a team receives none of its rows even before capture has seen the change.
#[test]
fn rows_of_a_team_left_never_reach_the_device_while_capture_lags() {
    let db = TestDb::new();
    let (_rules, server) = seeded(&db);
    let mut c = db.client();
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    let mut latest = Dev::new(server.addr, "alice", 1, true);
    latest.snapshot(&mut c, 100);
    latest.sync(&mut c, 100);
    // A change in team 0 that alice's device has not pulled yet.
    c.execute("UPDATE projects SET name = 'renamed' WHERE id = $1::text::uuid", &[&project(0)]).unwrap();
    caught_up(&mut c, &mut markers);
    // Capture is held up (its batch waits on this lock) while alice leaves team 0.
    let mut blocker = db.client();
    let mut hold = blocker.transaction().unwrap();
    hold.batch_execute("LOCK TABLE synchro_subscription_versions IN EXCLUSIVE MODE").unwrap();
    c.execute("DELETE FROM team_members WHERE team_id = $1::text::uuid AND user_id = 'alice'", &[&team(0)]).unwrap();
    // The pull carries the change as a delete, never as data (the page checks each record).
    let map = json!(latest.buckets);
    let page = latest.call("/sync/pull", json!({"checkpoint": 0, "bucket_checkpoints": map, "limit": 100}));
    assert!(page["changes"].as_array().unwrap().iter().all(|r| r["table_name"] == "teams"), "{page}");
    assert_eq!(page["deletes"], json!([{"id": project(0), "table_name": "projects"}]), "{page}");
    // A rebuild of the team (still a subscription as far as capture has told) hands out nothing.
    let rebuilt = latest.call("/sync/rebuild", json!({"bucket_id": bucket(0), "limit": 100}));
    assert_eq!(rebuilt["records"], json!([]), "{rebuilt}");
    // Nor does a snapshot.
    let mut fresh = Dev::new(server.addr, "alice", 2, false);
    fresh.snapshot(&mut c, 100);
    assert_eq!(team_rows(&fresh, 0), 0);
    hold.rollback().unwrap();
    caught_up(&mut c, &mut markers);
    latest.sync(&mut c, 100);
    assert_holds_exactly(&mut c, &latest, "once capture caught up");
    server.shutdown(Duration::from_secs(5));
}

/// Bob is in team 1 only: every endpoint keeps team 0 from him, whatever he sends.
#[test]
fn every_endpoint_keeps_a_user_to_his_teams() {
    let db = TestDb::new();
    let (_rules, server) = seeded(&db);
    let mut c = db.client();
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    let mut bob = Dev::new(server.addr, "bob", 0, true);
    bob.snapshot(&mut c, 100);
    assert_eq!((team_rows(&bob, 0), team_rows(&bob, 1)), (0, 3), "snapshot");
    bob.sync(&mut c, 100);
    // Pull: a forged team bucket in the map yields nothing of it, and no checkpoint is stored.
    c.execute("UPDATE projects SET name = 'changed' WHERE team_id = $1::text::uuid", &[&team(0)]).unwrap();
    caught_up(&mut c, &mut markers);
    let mut map = bob.buckets.clone();
    map.insert(bucket(0), 0);
    let page = bob.call("/sync/pull", json!({"checkpoint": 0, "bucket_checkpoints": map, "limit": 1000}));
    let leaked: Vec<&Value> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["data"]["team_id"] == json!(team(0)) || r["bucket_id"] == json!(bucket(0)))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    let stored: i64 = c
        .query_one(
            "SELECT count(*) FROM sync_client_checkpoints WHERE client_id = 'bob-0' AND bucket_id = $1",
            &[&bucket(0)],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    // Legacy pulls from zero: nothing of team 0 either.
    let page = bob.call("/sync/pull", json!({"checkpoint": 0, "limit": 1000}));
    let team0: Vec<String> = [project(0), project(2), project(4), task(0), task(2), task(4)].into();
    let leaked: Vec<&Value> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| team0.contains(&r["id"].as_str().unwrap().to_string()))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    // Rebuild of a team bucket he is not in: refused.
    let r = bob.post("/sync/rebuild", json!({"bucket_id": bucket(0)}));
    assert_eq!(r.status, 403, "{}", r.body);
    // Debug shows only his own buckets.
    let r = crate::client::get(server.addr, "/sync/debug?client_id=bob-0", "X-User-ID: bob\r\n");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(&team(0)), "{}", r.body);
    // Push: creating in, moving into, editing and deleting under team 0 are refused and change nothing.
    let refused = |record: Value| {
        let r = bob.call("/sync/push", json!({"changes": [record.clone()]}));
        assert_eq!(r["accepted"], json!([]), "{record}: {r}");
        let reason = r["rejected"][0]["reason_code"].as_str().unwrap().to_string();
        assert!(["ownership_violation", "record_not_found"].contains(&reason.as_str()), "{record}: {r}");
        reason
    };
    let far = "2099-01-01T00:00:00Z";
    assert_eq!(
        refused(
            json!({"id": "c5000000-0000-0000-0000-000000000001", "table_name": "projects", "operation": "create", "data": {"team_id": team(0), "name": "x"}})
        ),
        "ownership_violation"
    );
    assert_eq!(
        refused(
            json!({"id": project(1), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"team_id": team(0)}})
        ),
        "ownership_violation",
        "moving his project into a team he is not in"
    );
    refused(
        json!({"id": project(0), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"name": "mine"}}),
    );
    refused(json!({"id": project(0), "table_name": "projects", "operation": "delete"}));
    refused(
        json!({"id": task(0), "table_name": "tasks", "operation": "update", "client_updated_at": far, "data": {"title": "mine"}}),
    );
    assert_eq!(
        refused(
            json!({"id": "c6000000-0000-0000-0000-000000000001", "table_name": "tasks", "operation": "create", "data": {"project_id": project(0), "title": "x"}})
        ),
        "ownership_violation"
    );
    let untouched: i64 = c
        .query_one(
            "SELECT count(*) FROM projects WHERE team_id = $1::text::uuid AND name = 'changed' AND deleted_at IS NULL",
            &[&team(0)],
        )
        .unwrap()
        .get(0);
    assert_eq!(untouched, 3);
    // Inside his team he may do all of it, including moving a project out of team 1 into a
    // team he is also in.
    c.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1::text::uuid, 'bob')", &[&MARKER_TEAM]).unwrap();
    let r = bob.call("/sync/push", json!({"changes": [
        {"id": "c5000000-0000-0000-0000-000000000002", "table_name": "projects", "operation": "create", "data": {"team_id": team(1), "name": "new"}},
        {"id": "c6000000-0000-0000-0000-000000000002", "table_name": "tasks", "operation": "create", "data": {"project_id": project(1), "title": "new"}},
        {"id": project(3), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"team_id": MARKER_TEAM}},
        {"id": task(1), "table_name": "tasks", "operation": "delete"}]}));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 4, "{r}");
    server.shutdown(Duration::from_secs(5));
}

/// Memberships are read once per captured change of the user, not per request.
#[test]
fn subscriptions_are_read_once_per_membership_change_not_per_request() {
    let db = TestDb::new();
    let (_rules, server) = seeded(&db);
    let mut c = db.client();
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    let mut d = Dev::new(server.addr, "alice", 0, true);
    d.snapshot(&mut c, 100);
    d.sync(&mut c, 100);
    let reads = server.engine.subscription_reads();
    for _ in 0..20 {
        d.pull(&mut c, 100, None);
    }
    assert_eq!(server.engine.subscription_reads(), reads, "twenty pulls, no membership query");
    let before = version(&mut c, "alice");
    c.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1::text::uuid, 'alice')", &[&team(1)]).unwrap();
    wait_for(30, "the join to be captured", || (version(&mut c, "alice") > before).then_some(()));
    d.sync(&mut c, 100);
    for _ in 0..5 {
        d.pull(&mut c, 100, None);
    }
    assert_eq!(server.engine.subscription_reads(), reads + 1, "one read after the change");
    assert_holds_exactly(&mut c, &d, "after the join");
    server.shutdown(Duration::from_secs(5));
}

/// A per-bucket device away long enough for compaction to pass its position: when it comes
/// back and its user has left a team meanwhile, the rows that left the team while it was away
/// can no longer be named from the changelog, so it is asked for a snapshot (per-bucket mode
/// too) instead of a departure that would leave them behind.
#[test]
fn a_team_left_behind_compacted_history_is_dropped_by_a_snapshot() {
    let db = TestDb::new();
    let (_rules, server) = seeded(&db);
    let mut c = db.client();
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    let mut away = Dev::new(server.addr, "alice", 1, true);
    away.snapshot(&mut c, 100);
    away.sync(&mut c, 100);
    assert!(away.buckets.contains_key(&bucket(0)), "{:?}", away.buckets);
    assert_eq!(team_rows(&away, 0), 3);
    // While it is away, a project of team 0 moves to team 1 (not alice's), then alice leaves
    // team 0: the device still holds the moved project and its task.
    c.execute("UPDATE projects SET team_id = $2::text::uuid WHERE id = $1::text::uuid", &[&project(0), &team(1)])
        .unwrap();
    let before = version(&mut c, "alice");
    c.execute("DELETE FROM team_members WHERE team_id = $1::text::uuid AND user_id = 'alice'", &[&team(0)]).unwrap();
    wait_for(30, "the leave to be captured", || (version(&mut c, "alice") > before).then_some(()));
    caught_up(&mut c, &mut markers);
    // Bob's device keeps up; alice's has not synced for a month and no longer holds
    // compaction back.
    let mut bob = Dev::new(server.addr, "bob", 0, false);
    bob.snapshot(&mut c, 100);
    bob.sync(&mut c, 100);
    c.execute("UPDATE sync_clients SET last_sync_at = now() - interval '30 days' WHERE client_id = 'alice-1'", &[])
        .unwrap();
    let mut vars = std::collections::HashMap::new();
    vars.insert("DATABASE_URL".to_string(), db.url());
    let report = synchro::server::compact_once(&synchro::config::Config::from_vars(&vars).unwrap()).unwrap();
    assert_eq!(report.deactivated, 1, "{report:?}");
    let position = away.buckets[&bucket(0)];
    assert!(report.compacted_through > position, "{report:?}, the device is at {position}");
    // Every active device had read it all: nothing is left of the changelog, and a snapshot
    // starts from the compaction watermark (from 0 it would be sent back to a snapshot again).
    let left: i64 = c.query_one("SELECT count(*) FROM sync_changelog", &[]).unwrap().get(0);
    assert_eq!(left, 0);

    // The SDK starts again (register reactivates it) and pulls with the map it kept.
    away.call("/sync/register", json!({}));
    let map = json!(away.buckets);
    let page = away.call("/sync/pull", json!({"checkpoint": 0, "bucket_checkpoints": map, "limit": 2}));
    assert_eq!(page["snapshot_required"], json!(true), "{page}");
    assert_eq!(page["snapshot_reason"], json!("checkpoint_before_retention"), "{page}");
    assert_eq!((page["changes"].clone(), page["deletes"].clone()), (json!([]), json!([])), "{page}");
    assert_eq!(page["bucket_checkpoints"], map, "the map is echoed: {page}");
    // Until the device snapshots, every pull says the same and nothing is lost meanwhile.
    let again = away.call("/sync/pull", json!({"checkpoint": 0, "bucket_checkpoints": map, "limit": 2}));
    assert_eq!(again["snapshot_reason"], json!("checkpoint_before_retention"), "{again}");
    let departures: i64 =
        c.query_one("SELECT count(*) FROM synchro_departures WHERE client_id = 'alice-1'", &[]).unwrap().get(0);
    assert_eq!(departures, 1);
    // The snapshot's first page ends the departure and holds exactly the current buckets.
    away.snapshot(&mut c, 2);
    assert_eq!(team_rows(&away, 0), 0);
    assert!(!away.rows.contains_key(&("projects".to_string(), project(0))));
    let departures: i64 =
        c.query_one("SELECT count(*) FROM synchro_departures WHERE client_id = 'alice-1'", &[]).unwrap().get(0);
    assert_eq!(departures, 0);
    away.sync(&mut c, 2);
    assert_holds_exactly(&mut c, &away, "after the snapshot");
    let asked = away.pull(&mut c, 100, None);
    assert!(asked.snapshot.is_none() && asked.rebuild.is_empty(), "in line again");
    server.shutdown(Duration::from_secs(5));
}

/// Bob (team 1) pushes one batch of writes inside and outside his team: set-based and record
/// by record (`PUSH_SET_BASED`), each with and without the RLS policies of `synchrod rls`
/// under `PUSH_ROLE`. The projects and the tasks are one run each, so the set-based path
/// writes them with one statement per run. Returns the push response and the rows after it.
fn team_writes(set_based: bool, rls: bool) -> (Value, Vec<String>) {
    let db = TestDb::new();
    seed(&db);
    let tables = ["teams", "team_members", "projects", "tasks"];
    let role = format!("push_role_{}", db.name);
    if rls {
        let registry = crate::rules::registry_with_rules(&db, crate::rules::MINIMAL, &tables);
        db.execute(&synchro::rls::policies(&registry, "user_id", true).join("\n"));
        db.execute(&format!(
            "CREATE ROLE {role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role}",
            tables.join(", ")
        ));
    }
    let rules = RulesFile::new(&db, crate::rules::MINIMAL);
    let mut vars = vec![
        ("SYNC_TABLES", tables.join(",")),
        ("BUCKET_RULES", rules.shown()),
        ("PUSH_SET_BASED", set_based.to_string()),
    ];
    if rls {
        vars.push(("PUSH_ROLE", role.clone()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = crate::server::start(&db, &vars);
    let bob = Dev::new(server.addr, "bob", 0, true);
    let far = "2099-01-01T00:00:00Z";
    let r = bob.call("/sync/push", json!({"changes": [
        // Projects: creating in his team; creating in team 0; editing his; moving one of his
        // out of his team into team 0; editing, deleting and taking over team 0's.
        {"id": "c5000000-0000-0000-0000-000000000001", "table_name": "projects", "operation": "create", "data": {"team_id": team(1), "name": "new"}},
        {"id": "c5000000-0000-0000-0000-000000000002", "table_name": "projects", "operation": "create", "data": {"team_id": team(0), "name": "forged"}},
        {"id": project(1), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"name": "edited"}},
        {"id": project(3), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"team_id": team(0)}},
        {"id": project(0), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"name": "mine"}},
        {"id": project(2), "table_name": "projects", "operation": "delete"},
        {"id": project(4), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"team_id": team(1)}},
        // Tasks: under his project; under team 0's; editing team 0's; deleting his.
        {"id": "c6000000-0000-0000-0000-000000000001", "table_name": "tasks", "operation": "create", "data": {"project_id": project(1), "title": "new"}},
        {"id": "c6000000-0000-0000-0000-000000000002", "table_name": "tasks", "operation": "create", "data": {"project_id": project(0), "title": "forged"}},
        {"id": task(0), "table_name": "tasks", "operation": "update", "client_updated_at": far, "data": {"title": "mine"}},
        {"id": task(1), "table_name": "tasks", "operation": "delete"},
        // Joining team 0 by a push is his own membership row; then a project may go there.
        {"id": "c4000000-0000-0000-0000-000000000001", "table_name": "team_members", "operation": "create", "data": {"team_id": team(0)}},
        {"id": project(5), "table_name": "projects", "operation": "update", "client_updated_at": far, "data": {"team_id": team(0)}}
    ]}));
    let mut c = db.client();
    let rows: Vec<String> = c
        .query(
            "SELECT format('%s %s %s %s', id, team_id, name, deleted_at IS NOT NULL) FROM projects
             UNION ALL SELECT format('%s %s %s %s', id, project_id, title, deleted_at IS NOT NULL) FROM tasks
             UNION ALL SELECT format('%s %s', team_id, user_id) FROM team_members ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    server.shutdown(Duration::from_secs(5));
    (r, rows)
}

/// Each result of a push response: id, status and reason, in order.
fn outcomes(r: &Value) -> Vec<(Value, Value, Value)> {
    let all = r["accepted"].as_array().unwrap().iter().chain(r["rejected"].as_array().unwrap());
    all.map(|x| (x["id"].clone(), x["status"].clone(), x["reason_code"].clone())).collect()
}

/// Writes inside a user's teams apply and writes outside them are refused, alike on both push
/// paths and under `PUSH_ROLE` with the generated policies.
#[test]
fn team_writes_are_checked_alike_on_both_push_paths_and_under_rls() {
    let (reference, rows) = team_writes(true, false);
    let reference_all = reference.clone();
    let accepted: Vec<&str> =
        reference["accepted"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    let p = |n| project(n);
    assert_eq!(
        accepted,
        vec![
            "c5000000-0000-0000-0000-000000000001",
            p(1).as_str(),
            "c6000000-0000-0000-0000-000000000001",
            task(1).as_str(),
            "c4000000-0000-0000-0000-000000000001",
            p(5).as_str()
        ],
        "{reference}"
    );
    let reasons: Vec<(String, String)> = reference["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["reason_code"].as_str().unwrap().to_string()))
        .collect();
    let reason = |id: &str| reasons.iter().find(|(i, _)| i == id).map(|(_, r)| r.as_str());
    assert_eq!(reason("c5000000-0000-0000-0000-000000000002"), Some("ownership_violation"), "creating in team 0");
    assert_eq!(reason(&p(3)), Some("ownership_violation"), "moving his project into team 0");
    assert_eq!(reason("c6000000-0000-0000-0000-000000000002"), Some("ownership_violation"), "a task under team 0");
    for id in [p(0), p(2), p(4), task(0)] {
        assert!(matches!(reason(&id), Some("ownership_violation" | "record_not_found")), "{id}: {reference}");
    }
    assert_eq!(reasons.len(), 7, "{reference}");
    // Nothing refused changed a row.
    for (id, held) in [(p(0), "p0 f"), (p(2), "p2 f"), (p(3), "p3 f"), (p(4), "p4 f")] {
        assert!(rows.iter().any(|r| r.starts_with(&id) && r.ends_with(held)), "{id} {held}: {rows:?}");
    }
    assert!(rows.iter().any(|r| r.starts_with(&task(0)) && r.ends_with("k0 f")), "{rows:?}");
    assert!(!rows.iter().any(|r| r.contains("forged")), "{rows:?}");
    // Outcomes compared without their timestamps. Under RLS a row the user cannot read is
    // not found (as for owner rows), else it is an ownership violation; both paths agree.
    let loose = |r: &Value| -> Vec<(Value, Value)> { outcomes(r).into_iter().map(|(i, s, _)| (i, s)).collect() };
    let mut under_rls: Option<Value> = None;
    for (set_based, rls) in [(false, false), (true, true), (false, true)] {
        let (r, after) = team_writes(set_based, rls);
        let reference = if rls { under_rls.get_or_insert_with(|| r.clone()) } else { &reference };
        assert_eq!(outcomes(&r), outcomes(reference), "set-based {set_based}, RLS {rls}: {r}");
        assert_eq!(loose(&r), loose(&reference_all), "set-based {set_based}, RLS {rls}: {r}");
        assert_eq!(after, rows, "set-based {set_based}, RLS {rls}");
    }
}
