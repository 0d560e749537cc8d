//! Change capture end to end: SQL writes -> WAL -> decoder -> buckets -> writer -> changelog.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::client::{metric, post};
use crate::harness::{private_cluster, TestDb};
use crate::server::start;

pub const SCHEMA: &str = "
    CREATE TABLE projects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id text, name text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE tasks (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), project_id uuid NOT NULL REFERENCES projects (id),
        title text NOT NULL DEFAULT '', notes text, updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE subtasks (id bigserial PRIMARY KEY, task_id uuid NOT NULL REFERENCES tasks (id), body text);
    CREATE TABLE tags (id int PRIMARY KEY, label text);
    CREATE TABLE unpublished (id int PRIMARY KEY, v text);
    CREATE TABLE events (id int PRIMARY KEY, v text);
    ALTER TABLE projects REPLICA IDENTITY FULL; ALTER TABLE tasks REPLICA IDENTITY FULL;";

pub const TABLES: &str = "projects,tasks,subtasks,tags,events";

/// Polls `f` until it returns `Some` (or panics after `secs`).
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `(bucket, table, record) -> ops in seq order`.
pub fn changelog(db: &TestDb) -> BTreeMap<(String, String, String), Vec<i16>> {
    let mut out: BTreeMap<(String, String, String), Vec<i16>> = BTreeMap::new();
    for r in db
        .client()
        .query("SELECT bucket_id, table_name, record_id, operation FROM sync_changelog WHERE table_name <> '' ORDER BY seq", &[])
        .unwrap()
    {
        out.entry((r.get(0), r.get(1), r.get(2))).or_default().push(r.get(3));
    }
    out
}

pub fn edges(db: &TestDb) -> BTreeSet<(String, String, String)> {
    db.client()
        .query("SELECT table_name, record_id, bucket_id FROM sync_bucket_edges", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

fn key(b: &str, t: &str, r: &str) -> (String, String, String) {
    (b.to_string(), t.to_string(), r.to_string())
}

#[test]
fn changes_reach_the_changelog_in_the_right_buckets() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", &format!("s_{}", db.name))]);
    db.execute(
        "INSERT INTO projects (id, user_id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'alice', 'a'),
                                                         ('00000000-0000-0000-0000-000000000002', NULL, 'shared');
         INSERT INTO tasks (id, project_id, title) VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-000000000001', 't');
         INSERT INTO subtasks (task_id, body) VALUES ('00000000-0000-0000-0000-0000000000a1', 's');
         INSERT INTO tags VALUES (1, 'x');
         INSERT INTO unpublished VALUES (1, 'ignored');",
    );
    let p1 = "00000000-0000-0000-0000-000000000001";
    let log = wait_for(20, "five changelog rows", || {
        let log = changelog(&db);
        (log.len() >= 5).then_some(log)
    });
    assert_eq!(log[&key("user:alice", "projects", p1)], vec![1]);
    assert_eq!(log[&key("global", "projects", "00000000-0000-0000-0000-000000000002")], vec![1]);
    assert_eq!(log[&key("user:alice", "tasks", "00000000-0000-0000-0000-0000000000a1")], vec![1], "child via FK");
    assert_eq!(log[&key("user:alice", "subtasks", "1")], vec![1], "grandchild via two FKs");
    assert_eq!(log[&key("global", "tags", "1")], vec![1], "table without ownership");
    assert!(!log.keys().any(|k| k.1 == "unpublished"));
    // Edge checksums equal the hydration checksum of the current row (C6).
    let mut c = db.client();
    for r in c.query("SELECT e.checksum, row_to_json(p)::text FROM sync_bucket_edges e JOIN projects p ON p.id::text = e.record_id WHERE e.table_name = 'projects'", &[]).unwrap() {
        let sum: Option<i32> = r.get(0);
        let json: String = r.get(1);
        assert_eq!(sum, Some(synchro::checksum::record_checksum(&json)));
    }

    // Owner change moves the row: removal first (C8), then the addition.
    db.execute(&format!("UPDATE projects SET user_id = NULL WHERE id = '{p1}'"));
    let log = wait_for(20, "the move", || {
        let log = changelog(&db);
        log.contains_key(&key("global", "projects", p1)).then_some(log)
    });
    assert_eq!(log[&key("user:alice", "projects", p1)], vec![1, 3]);
    assert_eq!(log[&key("global", "projects", p1)], vec![1]);
    let seqs: Vec<(String, i16)> = c
        .query("SELECT bucket_id, operation FROM sync_changelog WHERE record_id = $1 AND table_name = 'projects' ORDER BY seq", &[&p1])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(seqs[1..], [("user:alice".to_string(), 3), ("global".to_string(), 1)]);

    // Soft delete -> op 3 and edges removed; hard delete with a key-only old tuple finds its edges.
    db.execute(&format!(
        "UPDATE projects SET deleted_at = now() WHERE id = '{p1}'; DELETE FROM subtasks; DELETE FROM tags"
    ));
    let log = wait_for(20, "the deletes", || {
        let log = changelog(&db);
        (log[&key("global", "tags", "1")].len() == 2).then_some(log)
    });
    assert_eq!(log[&key("global", "projects", p1)], vec![1, 3]);
    assert_eq!(log[&key("user:alice", "subtasks", "1")], vec![1, 3]);
    assert_eq!(log[&key("global", "tags", "1")], vec![1, 3]);
    let e = edges(&db);
    assert!(!e.iter().any(|(t, r, _)| t == "projects" && r == p1));
    assert!(!e.iter().any(|(t, _, _)| t == "tags" || t == "subtasks"));

    // TRUNCATE removes every member.
    db.execute("INSERT INTO tags VALUES (2, 'y'), (3, 'z')");
    wait_for(20, "tags", || (edges(&db).iter().filter(|e| e.0 == "tags").count() == 2).then_some(()));
    db.execute("TRUNCATE tags");
    let log = wait_for(20, "the truncate", || {
        let log = changelog(&db);
        (log[&key("global", "tags", "3")].len() == 2).then_some(log)
    });
    assert_eq!(log[&key("global", "tags", "2")], vec![1, 3]);
    crate::harness::assert_bucket_checksums_follow_edges(&mut db.client());
    // A rolled-back transaction leaves nothing.
    let before = count(&db, "SELECT count(*) FROM sync_changelog");
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.execute("INSERT INTO tags VALUES (9, 'rolled back')", &[]).unwrap();
    tx.rollback().unwrap();
    db.execute("INSERT INTO tags VALUES (10, 'marker')");
    wait_for(20, "the marker", || changelog(&db).get(&key("global", "tags", "10")).map(|_| ()));
    assert_eq!(count(&db, "SELECT count(*) FROM sync_changelog"), before + 1);
    assert!(!changelog(&db).contains_key(&key("global", "tags", "9")));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn pulls_see_direct_sql_writes() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", &format!("s_{}", db.name))]);
    let user = "X-User-ID: Alice\r\n";
    let schema = crate::client::get(server.addr, "/sync/schema", user).json();
    let (v, h) = (schema["schema_version"].clone(), schema["schema_hash"].clone());
    assert_eq!(
        post(server.addr, "/sync/register", user, br#"{"client_id":"d1","schema_version":0,"schema_hash":""}"#).status,
        200
    );
    db.execute(
        "INSERT INTO projects (id, user_id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'alice', 'mine'),
                                                         ('00000000-0000-0000-0000-000000000002', 'bob', 'theirs');",
    );
    let body = format!(
        r#"{{"client_id":"d1","schema_version":{v},"schema_hash":{h},"bucket_checkpoints":{{"user:alice":0,"global":0}}}}"#
    );
    let pulled = wait_for(20, "a pull with the row", || {
        let r = post(server.addr, "/sync/pull", user, body.as_bytes()).json();
        // The row's edge (and with it the bucket checksum) follows its changelog row.
        (!r["changes"].as_array().unwrap().is_empty() && r["bucket_checksums"]["user:alice"].is_i64()).then_some(r)
    });
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "bob's row never reaches alice: {pulled}");
    assert_eq!(changes[0]["data"]["name"], "mine");
    assert_eq!(changes[0]["bucket_id"], "user:alice");
    assert!(changes[0]["updated_at"].as_str().unwrap().ends_with('Z'));
    let sum = changes[0]["checksum"].as_i64().unwrap();
    assert_eq!(pulled["bucket_checksums"]["user:alice"].as_i64().unwrap(), sum, "aggregate equals the only member");
    assert!(pulled["checkpoint"].as_i64().unwrap() > 0);
    // Metrics: Prometheus text, no authentication, request counters and capture gauges.
    let m = crate::client::get(server.addr, "/metrics", "");
    assert_eq!((m.status, m.header("content-type")), (200, Some("text/plain; version=0.0.4")));
    for needle in [
        "synchro_capture_streaming 1",
        "synchro_slot_active 1",
        "synchro_clients_registered 1",
        "synchro_http_requests_total{endpoint=\"pull\",status=\"200\"}",
        "synchro_http_request_duration_seconds_bucket{endpoint=\"register\",le=\"+Inf\"} 1",
        "# TYPE synchro_replication_lag_bytes gauge",
        "# TYPE synchro_replication_lag_seconds gauge",
    ] {
        assert!(m.body.contains(needle), "{needle} missing from\n{}", m.body);
    }
    assert_eq!(crate::client::post(server.addr, "/metrics", "", b"").status, 405);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn replication_lag_metrics_move_while_the_consumer_is_held_up() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let slot = format!("s_{}", db.name);
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", &slot)]);
    db.execute("INSERT INTO tags VALUES (1, 'first')");
    wait_for(20, "the first row", || changelog(&db).get(&key("global", "tags", "1")).map(|_| ()));
    wait_for(20, "no lag", || (metric(server.addr, "synchro_replication_lag_bytes") == 0.0).then_some(()));

    // Hold the writer up: its next changelog insert waits for this lock.
    let mut blocker = db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE sync_changelog IN EXCLUSIVE MODE").unwrap();
    for i in 2..50 {
        db.execute(&format!("INSERT INTO tags VALUES ({i}, repeat('x', 500))"));
    }
    let bytes = wait_for(20, "lag in bytes", || {
        let b = metric(server.addr, "synchro_replication_lag_bytes");
        (b > 0.0).then_some(b)
    });
    assert!(bytes >= 48.0 * 500.0, "lag covers the held-up inserts: {bytes}");
    // Lag in seconds grows while the writer stays held up.
    wait_for(20, "lag in seconds", || (metric(server.addr, "synchro_replication_lag_seconds") >= 1.0).then_some(()));

    tx.rollback().unwrap();
    wait_for(20, "the held-up rows", || changelog(&db).get(&key("global", "tags", "49")).map(|_| ()));
    wait_for(20, "lag back to zero", || {
        let caught_up = metric(server.addr, "synchro_replication_lag_bytes") == 0.0
            && metric(server.addr, "synchro_replication_lag_seconds") == 0.0;
        caught_up.then_some(())
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn writes_to_unpublished_tables_still_advance_the_slot() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let slot = format!("s_{}", db.name);
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", &slot)]);
    wait_for(20, "the slot", || {
        let n = count(&db, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"));
        (n == 1).then_some(())
    });
    let confirmed = |db: &TestDb| -> String {
        db.client()
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .unwrap()
            .get(0)
    };
    let lsn_num = |s: &str| -> u64 { s.parse::<synchro::types::Lsn>().unwrap().0 };
    let before = lsn_num(&confirmed(&db));
    for i in 0..50 {
        db.execute(&format!("INSERT INTO unpublished VALUES ({i}, repeat('x', 1000))"));
    }
    let current: String = db.client().query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let target = lsn_num(&current);
    // Keepalives are confirmed when nothing is pending, well within the 10 s status interval.
    wait_for(30, "confirmed_flush_lsn to pass the unpublished writes", || {
        let now = lsn_num(&confirmed(&db));
        (now >= target && now > before).then_some(())
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn postgresql_restarts_mid_stream_and_the_stream_resumes() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute(SCHEMA);
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", "restart_slot")]);
    db.execute("INSERT INTO tags VALUES (1, 'before')");
    wait_for(20, "the first row", || changelog(&db).get(&key("global", "tags", "1")).map(|_| ()));
    cluster.kill().unwrap();
    cluster.start_again().unwrap();
    db.execute("INSERT INTO tags VALUES (2, 'after')");
    wait_for(60, "the row written after the restart", || changelog(&db).get(&key("global", "tags", "2")).map(|_| ()));
    let log = changelog(&db);
    assert_eq!(log[&key("global", "tags", "1")], vec![1], "nothing written twice");
    server.shutdown(Duration::from_secs(5));
}

/// The writer opens its transaction with a batch's first change, never while idle: a server
/// with `idle_in_transaction_session_timeout` would otherwise end an idle writer's session, and
/// capture would restart after every quiet spell.
#[test]
fn an_idle_writer_holds_no_transaction_open() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    db.execute(&format!("ALTER DATABASE {} SET idle_in_transaction_session_timeout = '300ms'", db.name));
    let server = start(&db, &[("SYNC_TABLES", TABLES)]);
    for id in 1..=3 {
        db.execute(&format!("INSERT INTO tags VALUES ({id}, 'x')"));
        wait_for(20, "the row", || changelog(&db).get(&key("global", "tags", &id.to_string())).map(|_| ()));
        // A quiet spell longer than the timeout: synchrod's sessions (the writer's among them;
        // the leader lock's own session polls and is left out) have been idle, not idle in a
        // transaction, for 600 ms.
        let mut c = db.client();
        wait_for(20, "a quiet spell", || {
            c.query_one(
                "SELECT COALESCE(bool_and(state = 'idle' AND state_change < now() - interval '600 ms'), false) \
                 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'synchrod' \
                   AND backend_type = 'client backend'",
                &[],
            )
            .ok()
            .and_then(|r| r.get::<_, bool>(0).then_some(()))
        });
    }
    assert_eq!(metric(server.addr, "synchro_capture_sessions_total"), 1.0, "capture never restarted");
    server.shutdown(Duration::from_secs(5));
}
