//! A randomized check of bucket rules: teams, projects shared by team (`BUCKET_RULES`), tasks
//! under projects, and a membership table users join and leave, by plain SQL and by pushes,
//! while five devices (legacy and per-bucket pulls) pull at random page sizes.
//!
//! The test thread makes every change itself, one at a time, so while a request runs the
//! database holds exactly what it held when the previous step returned. Checked:
//!
//! * every record of every response (pull, snapshot, rebuild) exists, is in its user's teams
//!   (by the test's own scope rule, written independently of the server's) and carries the
//!   row as it is;
//! * every push inside the user's teams applies, every push outside them is refused and
//!   changes nothing;
//! * at regular quiet points (capture caught up), each device runs a sync cycle the way the
//!   SDKs do (pull loop; a snapshot when asked; rebuilds of the buckets the pages listed) and
//!   then holds exactly its user's rows: nothing of a team the user left, everything of a team
//!   the user joined.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::TestDb;
use crate::oracle::{Key, Oracle};
use crate::rng::Rng;
use crate::rules::RulesFile;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE teams (id uuid PRIMARY KEY, name text NOT NULL DEFAULT '',
      updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE team_members (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), team_id uuid NOT NULL REFERENCES teams (id),
      user_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (team_id, user_id));
    CREATE TABLE projects (id uuid PRIMARY KEY, team_id uuid REFERENCES teams (id), user_id text,
      name text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE tasks (id uuid PRIMARY KEY, project_id uuid NOT NULL REFERENCES projects (id),
      title text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    ALTER TABLE teams REPLICA IDENTITY FULL; ALTER TABLE team_members REPLICA IDENTITY FULL;
    ALTER TABLE projects REPLICA IDENTITY FULL; ALTER TABLE tasks REPLICA IDENTITY FULL;";

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const TEAMS: u64 = 3;
/// A team nobody joins, whose name is bumped as a capture marker (teams are global rows).
pub(crate) const MARKER_TEAM: &str = "c1000000-0000-0000-0000-0000000000ff";

pub(crate) fn team(n: u64) -> String {
    format!("c1000000-0000-0000-0000-{n:012}")
}

pub(crate) fn project(n: u64) -> String {
    format!("c2000000-0000-0000-0000-{n:012}")
}

pub(crate) fn task(n: u64) -> String {
    format!("c3000000-0000-0000-0000-{n:012}")
}

/// The test's own statement of who may read a row of `table` (alias `t`, `$1` = the user): a
/// project with a team is its members', one without is its owner's (or everyone's without
/// an owner); a task is readable with its project; a membership row is its user's; teams are
/// everyone's.
fn readable_sql(table: &str) -> String {
    let project = |p: &str| {
        format!(
            "(CASE WHEN {p}.team_id IS NOT NULL \
               THEN EXISTS (SELECT 1 FROM team_members m WHERE m.team_id = {p}.team_id AND m.user_id = $1) \
               ELSE ({p}.user_id IS NULL OR {p}.user_id = $1) END)"
        )
    };
    match table {
        "projects" => project("t"),
        "tasks" => format!("EXISTS (SELECT 1 FROM projects p WHERE p.id = t.project_id AND {})", project("p")),
        "team_members" => "t.user_id = $1".to_string(),
        _ => "$1::text IS NOT NULL".to_string(),
    }
}

const ORACLE: Oracle = Oracle {
    tables: &["teams", "team_members", "projects", "tasks"],
    without_deleted_at: &["team_members"],
    readable: readable_sql,
};

/// A device that behaves like an SDK: rows with the bucket each arrived through.
pub(crate) struct Dev {
    addr: SocketAddr,
    user: &'static str,
    client_id: String,
    version: i64,
    hash: String,
    per_bucket: bool,
    checkpoint: i64,
    pub(crate) buckets: BTreeMap<String, i64>,
    pub(crate) rows: BTreeMap<Key, (Value, String)>,
    /// What the device did, for the report of a failure.
    history: Vec<String>,
}

/// What one pull loop asked for besides data.
#[derive(Default)]
pub(crate) struct Asked {
    pub(crate) snapshot: Option<String>,
    pub(crate) rebuild: BTreeSet<String>,
}

impl Dev {
    pub(crate) fn new(addr: SocketAddr, user: &'static str, n: usize, per_bucket: bool) -> Dev {
        let schema = get(addr, "/sync/schema", &format!("X-User-ID: {user}\r\n")).json();
        let mut d = Dev {
            addr,
            user,
            client_id: format!("{user}-{n}"),
            version: schema["schema_version"].as_i64().unwrap(),
            hash: schema["schema_hash"].as_str().unwrap().to_string(),
            per_bucket,
            checkpoint: 0,
            buckets: BTreeMap::new(),
            rows: BTreeMap::new(),
            history: Vec::new(),
        };
        d.register();
        d
    }

    pub(crate) fn call(&self, path: &str, body: Value) -> Value {
        let r = self.post(path, body.clone());
        assert_eq!(r.status, 200, "{} {path} {body}: {}", self.client_id, r.body);
        r.json()
    }

    /// Posts `body` with the device's client id and schema pair, whatever the answer.
    pub(crate) fn post(&self, path: &str, mut body: Value) -> crate::client::Resp {
        body["client_id"] = json!(self.client_id);
        body["schema_version"] = json!(self.version);
        body["schema_hash"] = json!(self.hash);
        post(self.addr, path, &format!("X-User-ID: {}\r\n", self.user), body.to_string().as_bytes())
    }

    fn call_logged(&mut self, path: &str, body: Value) -> Value {
        let r = self.call(path, body.clone());
        self.history.push(format!("{path} {body}\n    -> {r}"));
        r
    }

    /// Registers; a per-bucket device adopts the server's bucket checkpoints, as the latest SDK
    /// does on every start.
    fn register(&mut self) {
        let r = self.call_logged("/sync/register", json!({}));
        if self.per_bucket {
            self.buckets = r["bucket_checkpoints"]
                .as_object()
                .map(|m| m.iter().map(|(b, v)| (b.clone(), v.as_i64().unwrap())).collect())
                .unwrap_or_default();
        }
    }

    pub(crate) fn snapshot(&mut self, db: &mut postgres::Client, limit: i64) {
        self.rows.clear();
        self.buckets.clear();
        let mut cursor = Value::Null;
        loop {
            let page = self.call_logged("/sync/snapshot", json!({"cursor": cursor, "limit": limit}));
            let records = page["records"].as_array().unwrap();
            ORACLE.check_records(db, self.user, records, true, &format!("{} snapshot", self.client_id));
            for rec in records {
                let key = (rec["table_name"].as_str().unwrap().to_string(), rec["id"].as_str().unwrap().to_string());
                self.rows.insert(key, (rec["data"].clone(), String::new()));
            }
            if !page["has_more"].as_bool().unwrap() {
                self.checkpoint = page["checkpoint"].as_i64().unwrap();
                // The latest SDK pulls in legacy mode until it starts again; restart it now.
                self.register();
                return;
            }
            cursor = page["cursor"].clone();
        }
    }

    /// Pulls up to `pages` pages (until `has_more` is false when `None`).
    pub(crate) fn pull(&mut self, db: &mut postgres::Client, limit: i64, pages: Option<usize>) -> Asked {
        let mut asked = Asked::default();
        for n in 1.. {
            let map = if self.buckets.is_empty() { Value::Null } else { json!(self.buckets) };
            let page = self.call_logged(
                "/sync/pull",
                json!({"checkpoint": self.checkpoint, "bucket_checkpoints": map, "limit": limit}),
            );
            if page.get("snapshot_required").is_some() {
                assert!(
                    !self.per_bucket || self.buckets.is_empty(),
                    "per-bucket pulls never ask for a snapshot: {page}"
                );
                asked.snapshot = page["snapshot_reason"].as_str().map(str::to_string);
                return asked;
            }
            let changes = page["changes"].as_array().unwrap();
            ORACLE.check_records(db, self.user, changes, true, &format!("{} pull", self.client_id));
            for rec in changes {
                let key = (rec["table_name"].as_str().unwrap().to_string(), rec["id"].as_str().unwrap().to_string());
                let bucket = rec["bucket_id"].as_str().unwrap().to_string();
                self.rows.insert(key, (rec["data"].clone(), bucket));
            }
            for del in page["deletes"].as_array().unwrap() {
                self.rows.remove(&(
                    del["table_name"].as_str().unwrap().to_string(),
                    del["id"].as_str().unwrap().to_string(),
                ));
            }
            if let Some(list) = page.get("rebuild_buckets").and_then(Value::as_array) {
                asked.rebuild.extend(list.iter().map(|b| b.as_str().unwrap().to_string()));
            }
            self.checkpoint = page["checkpoint"].as_i64().unwrap();
            if let Some(map) = page.get("bucket_checkpoints").and_then(Value::as_object) {
                for (b, cp) in map {
                    self.buckets.insert(b.clone(), cp.as_i64().unwrap());
                }
            }
            if !page["has_more"].as_bool().unwrap() || pages.is_some_and(|p| n >= p) {
                return asked;
            }
        }
        asked
    }

    /// Rebuilds `bucket` as the SDK does: the rows received replace the bucket's members.
    pub(crate) fn rebuild(&mut self, db: &mut postgres::Client, bucket: &str, limit: i64) {
        let mut cursor = Value::Null;
        let mut seen = BTreeSet::new();
        loop {
            let page =
                self.call_logged("/sync/rebuild", json!({"bucket_id": bucket, "cursor": cursor, "limit": limit}));
            let records = page["records"].as_array().unwrap();
            ORACLE.check_records(db, self.user, records, true, &format!("{} rebuild of {bucket}", self.client_id));
            for rec in records {
                let key = (rec["table_name"].as_str().unwrap().to_string(), rec["id"].as_str().unwrap().to_string());
                seen.insert(key.clone());
                self.rows.insert(key, (rec["data"].clone(), bucket.to_string()));
            }
            if !page["has_more"].as_bool().unwrap() {
                self.rows.retain(|k, (_, b)| b != bucket || seen.contains(k));
                self.buckets.insert(bucket.to_string(), page["checkpoint"].as_i64().unwrap());
                return;
            }
            cursor = page["cursor"].clone();
        }
    }

    /// A sync cycle as the SDKs run it, repeated until nothing more is asked.
    pub(crate) fn sync(&mut self, db: &mut postgres::Client, limit: i64) {
        for _ in 0..6 {
            let asked = self.pull(db, limit, None);
            if let Some(reason) = asked.snapshot {
                assert!(
                    ["initial_sync_required", "history_unavailable"].contains(&reason.as_str()),
                    "unexpected reason {reason}"
                );
                self.snapshot(db, limit);
                continue;
            }
            if asked.rebuild.is_empty() {
                return;
            }
            for b in &asked.rebuild {
                self.rebuild(db, b, limit);
            }
        }
        panic!("{} did not settle within six sync cycles", self.client_id);
    }
}

/// Whether `user` is a member of team `t` now.
fn member(db: &mut postgres::Client, user: &str, t: &str) -> bool {
    db.query_one(
        "SELECT EXISTS (SELECT 1 FROM team_members WHERE team_id = $1::text::uuid AND user_id = $2)",
        &[&t, &user],
    )
    .unwrap()
    .get(0)
}

/// The team of project `p` (`None`: personal or missing) and whether it exists live.
fn project_team(db: &mut postgres::Client, p: &str) -> Option<(Option<String>, Option<String>)> {
    db.query_opt("SELECT team_id::text, user_id FROM projects WHERE id = $1::text::uuid AND deleted_at IS NULL", &[&p])
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Whether `user` may write under project `p` (its tasks, or the project itself).
fn may_write_project(db: &mut postgres::Client, user: &str, p: &str) -> bool {
    match project_team(db, p) {
        Some((Some(t), _)) => member(db, user, &t),
        Some((None, owner)) => owner.as_deref() == Some(user),
        None => false,
    }
}

/// Pushes one record and checks the outcome: applied exactly when `allowed`.
fn push(dev: &Dev, record: Value, allowed: bool) {
    let r = dev.call("/sync/push", json!({"changes": [record.clone()]}));
    let applied = r["accepted"].as_array().unwrap().len() == 1;
    assert_eq!(applied, allowed, "{} pushed {record}: {r}", dev.user);
    if !allowed {
        let reason = r["rejected"][0]["reason_code"].as_str().unwrap_or_default();
        assert!(["ownership_violation", "record_not_found"].contains(&reason), "{record}: {r}");
    }
}

/// One random change, by SQL or by a push (whose outcome is checked against the rules).
fn change(rng: &mut Rng, db: &mut postgres::Client, devices: &[Dev], step: usize, fresh: &mut u64) {
    let t = team(rng.below(TEAMS));
    let user = *rng.pick(&USERS);
    let p = project(rng.below(10));
    let k = task(rng.below(16));
    let run = |db: &mut postgres::Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]| {
        db.execute(sql, params).unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    match rng.below(16) {
        // Joining and leaving by plain SQL.
        0 | 1 => run(db, "INSERT INTO team_members (team_id, user_id) VALUES ($1::text::uuid, $2) ON CONFLICT DO NOTHING", &[&t, &user]),
        2 | 3 => run(db, "DELETE FROM team_members WHERE team_id = $1::text::uuid AND user_id = $2", &[&t, &user]),
        4 => run(
            db,
            "INSERT INTO projects (id, team_id, name) VALUES ($1::text::uuid, $2::text::uuid, $3) \
             ON CONFLICT (id) DO UPDATE SET team_id = EXCLUDED.team_id, deleted_at = NULL",
            &[&p, &t, &format!("sql {step}")],
        ),
        // A project moves to another team.
        5 => run(db, "UPDATE projects SET team_id = $2::text::uuid, name = name || '>' WHERE id = $1::text::uuid", &[&p, &t]),
        6 => run(
            db,
            "INSERT INTO tasks (id, project_id, title) SELECT $1::text::uuid, id, $3 FROM projects WHERE id = $2::text::uuid \
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, deleted_at = NULL",
            &[&k, &p, &format!("sql {step}")],
        ),
        7 => run(db, "DELETE FROM tasks WHERE id = $1::text::uuid", &[&k]),
        _ => {
            let dev = rng.pick(devices);
            let me = dev.user;
            match rng.below(8) {
                // Joining by a push (the membership table is an owner table: users add themselves).
                0 => {
                    *fresh += 1;
                    let id = format!("c4000000-0000-0000-0000-{:012}", *fresh);
                    let exists = member(db, me, &t);
                    let r = dev.call("/sync/push", json!({"changes": [
                        {"id": id, "table_name": "team_members", "operation": "create", "data": {"team_id": t}}]}));
                    let applied = r["accepted"].as_array().unwrap().len() == 1;
                    assert_eq!(applied, !exists, "join {t}: {r}");
                }
                // Leaving by a push: deleting one's own membership row.
                1 => {
                    let row = db
                        .query_opt("SELECT id::text FROM team_members WHERE team_id = $1::text::uuid AND user_id = $2", &[&t, &me])
                        .unwrap();
                    if let Some(row) = row {
                        let id: String = row.get(0);
                        push(dev, json!({"id": id, "table_name": "team_members", "operation": "delete"}), true);
                    }
                }
                // Creating a project in a team: members only.
                2 => {
                    *fresh += 1;
                    let id = format!("c5000000-0000-0000-0000-{:012}", *fresh);
                    let allowed = member(db, me, &t);
                    push(
                        dev,
                        json!({"id": id, "table_name": "projects", "operation": "create",
                               "data": {"team_id": t, "name": format!("pushed {step}")}}),
                        allowed,
                    );
                }
                // Moving a project: a member of both teams only.
                3 => {
                    let Some((from, _)) = project_team(db, &p) else { return };
                    let allowed = may_write_project(db, me, &p) && member(db, me, &t);
                    let _ = from;
                    push(
                        dev,
                        json!({"id": p, "table_name": "projects", "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z",
                               "data": {"team_id": t, "name": format!("moved {step}")}}),
                        allowed,
                    );
                }
                // Editing a project.
                4 => {
                    if project_team(db, &p).is_none() {
                        return;
                    }
                    let allowed = may_write_project(db, me, &p);
                    push(
                        dev,
                        json!({"id": p, "table_name": "projects", "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z",
                               "data": {"name": format!("edited {step}")}}),
                        allowed,
                    );
                }
                // A task under a project: writable with the project.
                5 => {
                    *fresh += 1;
                    let id = format!("c6000000-0000-0000-0000-{:012}", *fresh);
                    if project_team(db, &p).is_none() {
                        return;
                    }
                    let allowed = may_write_project(db, me, &p);
                    push(
                        dev,
                        json!({"id": id, "table_name": "tasks", "operation": "create",
                               "data": {"project_id": p, "title": format!("pushed {step}")}}),
                        allowed,
                    );
                }
                _ => {
                    let row = db
                        .query_opt(
                            "SELECT project_id::text FROM tasks WHERE deleted_at IS NULL ORDER BY md5(id::text || $1) LIMIT 1",
                            &[&step.to_string()],
                        )
                        .unwrap();
                    let Some(row) = row else { return };
                    let parent: String = row.get(0);
                    let id: String = db
                        .query_one(
                            "SELECT id::text FROM tasks WHERE project_id = $1::text::uuid AND deleted_at IS NULL LIMIT 1",
                            &[&parent],
                        )
                        .unwrap()
                        .get(0);
                    let allowed = may_write_project(db, me, &parent);
                    let record = if rng.below(2) == 0 {
                        json!({"id": id, "table_name": "tasks", "operation": "delete"})
                    } else {
                        json!({"id": id, "table_name": "tasks", "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z",
                               "data": {"title": format!("edited {step}")}})
                    };
                    let before: String =
                        db.query_one("SELECT row_to_json(t)::text FROM tasks t WHERE id = $1::text::uuid", &[&id]).unwrap().get(0);
                    push(dev, record, allowed);
                    if !allowed {
                        let after: String = db
                            .query_one("SELECT row_to_json(t)::text FROM tasks t WHERE id = $1::text::uuid", &[&id])
                            .unwrap()
                            .get(0);
                        assert_eq!(before, after, "a refused push changed nothing");
                    }
                }
            }
        }
    }
}

/// Waits until capture has recorded every change committed so far (a marker row).
pub(crate) fn caught_up(db: &mut postgres::Client, markers: &mut i64) {
    *markers += 1;
    db.execute("UPDATE teams SET name = $2 WHERE id = $1::text::uuid", &[&MARKER_TEAM, &format!("marker {markers}")])
        .unwrap();
    let target = *markers;
    wait_for(30, "capture to catch up", || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM sync_changelog WHERE table_name = 'teams' AND record_id = $1",
                &[&MARKER_TEAM],
            )
            .unwrap()
            .get(0);
        (n >= target).then_some(())
    });
}

pub(crate) fn assert_holds_exactly(db: &mut postgres::Client, d: &Dev, when: &str) {
    let held: BTreeMap<Key, Value> = d.rows.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
    let expected = ORACLE.truth(db, d.user);
    let diff: Vec<String> = held
        .keys()
        .chain(expected.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| held.get(*k) != expected.get(*k))
        .map(|k| {
            let sql = "SELECT string_agg(seq || ' ' || bucket_id || ' op ' || operation, ', ' ORDER BY seq), \
                       (SELECT string_agg(bucket_id, ', ') FROM sync_bucket_edges e WHERE e.table_name = $1 AND e.record_id = $2) \
                       FROM sync_changelog WHERE table_name = $1 AND record_id = $2";
            let r = db.query_one(sql, &[&k.0, &k.1]).unwrap();
            format!(
                "{k:?}: held {:?}, expected {:?}\n  changelog [{}] edges [{}]",
                held.get(k).map(|v| v.to_string()),
                expected.get(k).map(|v| v.to_string()),
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                r.get::<_, Option<String>>(1).unwrap_or_default()
            )
        })
        .collect();
    if !diff.is_empty() {
        let ids: Vec<&String> =
            held.keys().chain(expected.keys()).filter(|k| held.get(*k) != expected.get(*k)).map(|k| &k.1).collect();
        // SYNCHRO_TEST_HISTORY=1 prints the device's whole history.
        let everything = std::env::var("SYNCHRO_TEST_HISTORY").is_ok();
        let relevant = |h: &&String| ids.iter().any(|id| h.contains(id.as_str())) || h.contains("rebuild_buckets");
        for h in d.history.iter().filter(|h| everything || relevant(h)) {
            eprintln!("{h}");
        }
    }
    assert!(
        diff.is_empty(),
        "{when}: {} ({}) holds exactly its user's rows (buckets {:?}):\n{}",
        d.client_id,
        if d.per_bucket { "per-bucket" } else { "legacy" },
        d.buckets,
        diff.join("\n")
    );
}

#[test]
fn devices_hold_exactly_their_users_teams_while_users_join_and_leave() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let mut c = db.client();
    let mut seed = String::new();
    for n in 0..TEAMS {
        seed.push_str(&format!("INSERT INTO teams (id, name) VALUES ('{}', 'team {n}');", team(n)));
    }
    seed.push_str(&format!("INSERT INTO teams (id, name) VALUES ('{MARKER_TEAM}', 'marker');"));
    for (user, teams) in [("alice", &[0u64][..]), ("bob", &[1]), ("carol", &[0, 2])] {
        for t in teams {
            seed.push_str(&format!("INSERT INTO team_members (team_id, user_id) VALUES ('{}', '{user}');", team(*t)));
        }
    }
    for n in 0..6 {
        seed.push_str(&format!(
            "INSERT INTO projects (id, team_id, name) VALUES ('{}', '{}', 'p{n}');",
            project(n),
            team(n % TEAMS)
        ));
        seed.push_str(&format!(
            "INSERT INTO tasks (id, project_id, title) VALUES ('{}', '{}', 'k{n}');",
            task(n),
            project(n)
        ));
    }
    seed.push_str(&format!("INSERT INTO projects (id, user_id, name) VALUES ('{}', 'alice', 'mine');", project(6)));
    db.execute(&seed);
    let rules = RulesFile::new(&db, crate::rules::MINIMAL);
    let server = crate::server::start(
        &db,
        &[("SYNC_TABLES", "teams,team_members,projects,tasks"), ("BUCKET_RULES", &rules.shown())],
    );
    let mut devices: Vec<Dev> = vec![
        Dev::new(server.addr, "alice", 0, false),
        Dev::new(server.addr, "alice", 1, true),
        Dev::new(server.addr, "bob", 0, true),
        Dev::new(server.addr, "bob", 1, false),
        Dev::new(server.addr, "carol", 0, true),
    ];
    let mut markers = 0;
    caught_up(&mut c, &mut markers);
    for d in devices.iter_mut() {
        // A new device bootstraps with a snapshot (local checkpoint 0), as the SDKs do.
        d.snapshot(&mut c, 3);
        d.sync(&mut c, 3);
        assert_holds_exactly(&mut c, d, "at the start");
    }
    // SYNCHRO_TEST_SEED explores other sequences; the default one always runs.
    let seed = std::env::var("SYNCHRO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x2545_f491_4f6c_dd1du64);
    let mut rng = Rng(seed);
    let mut fresh = 0;
    for step in 0..240 {
        change(&mut rng, &mut c, &devices, step, &mut fresh);
        // Reads right after changes, so capture is often behind the rows they read.
        let n = rng.below(devices.len() as u64) as usize;
        let limit = *rng.pick(&[1, 2, 3, 5, 100]);
        if rng.below(3) == 0 {
            let asked = devices[n].pull(&mut c, limit, Some(1 + rng.below(3) as usize));
            if asked.snapshot.is_some() {
                devices[n].snapshot(&mut c, limit);
            }
        }
        if step % 30 == 29 {
            // A quiet point: every device syncs and holds exactly its user's rows.
            caught_up(&mut c, &mut markers);
            for d in devices.iter_mut() {
                let limit = *rng.pick(&[1, 2, 3, 5, 100]);
                d.sync(&mut c, limit);
                assert_holds_exactly(&mut c, d, &format!("seed {seed:#x}, step {step}"));
            }
        }
    }
    // The memberships moved in both directions for every user, by SQL and by pushes.
    let versions: i64 = c.query_one("SELECT count(*) FROM synchro_subscription_versions", &[]).unwrap().get(0);
    assert!(versions >= 3, "{versions}");
    crate::harness::assert_bucket_checksums_follow_edges(&mut c);
    server.shutdown(Duration::from_secs(5));
}
