//! Change capture under faults: synchrod killed mid-batch, slot invalidation, TOAST values,
//! schema changes mid-stream, and a randomized workload checked against the tables.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::capture::{changelog, edges, wait_for, SCHEMA, TABLES};
use crate::harness::{private_cluster, TestDb};
use crate::rng::Rng;
use crate::server::start;

/// A synchrod child process, killed when dropped (also when a test fails half-way).
pub struct Synchrod(pub Child);

impl std::ops::Deref for Synchrod {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Synchrod {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Synchrod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_synchrod(db: &TestDb, slot: &str) -> Synchrod {
    spawn_synchrod_with(db, slot, &[])
}

/// A synchrod child on `db` with the capture test schema's tables, plus `vars`.
pub fn spawn_synchrod_with(db: &TestDb, slot: &str, vars: &[(&str, &str)]) -> Synchrod {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synchrod"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("SYNC_TABLES", TABLES)
        .env("SLOT_NAME", slot)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Synchrod(cmd.spawn().unwrap())
}

/// Every live row's buckets hold it (last op create/update), every removed row is removed
/// (last op delete), and no (bucket, record) has two consecutive creates (a replayed insert).
/// Repeated deletes are legitimate: every update of a soft-deleted row re-emits one (§9.4).
pub fn assert_consistent(db: &TestDb) {
    assert_consistent_in(db, db);
}

/// [`assert_consistent`] with the sync tables in `store` (`SYNC_STORE_URL`).
pub fn assert_consistent_in(db: &TestDb, store: &TestDb) {
    let mut c = db.client();
    let mut live: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in c.query("SELECT id::text, COALESCE(user_id, '') FROM projects WHERE deleted_at IS NULL", &[]).unwrap() {
        let owner: String = r.get(1);
        live.insert(
            ("projects".into(), r.get(0)),
            if owner.is_empty() { "global".into() } else { format!("user:{owner}") },
        );
    }
    for r in c.query("SELECT id::text FROM tags", &[]).unwrap() {
        live.insert(("tags".into(), r.get(0)), "global".into());
    }
    let log = changelog(store);
    let mut last: BTreeMap<(String, String), BTreeMap<String, i16>> = BTreeMap::new();
    for ((bucket, table, record), ops) in &log {
        if table != "projects" && table != "tags" {
            continue;
        }
        for w in ops.windows(2) {
            assert!(!(w[0] == 1 && w[1] == 1), "duplicate create for {table}/{record} in {bucket}: {ops:?}");
        }
        last.entry((table.clone(), record.clone())).or_default().insert(bucket.clone(), *ops.last().unwrap());
    }
    for (key, bucket) in &live {
        let ops = last.get(key).unwrap_or_else(|| panic!("live row {key:?} missing from the changelog"));
        assert!(matches!(ops.get(bucket), Some(1 | 2)), "live row {key:?} not current in {bucket}: {ops:?}");
        for (b, op) in ops {
            if b != bucket {
                assert_eq!(*op, 3, "{key:?} still present in old bucket {b}");
            }
        }
    }
    for (key, ops) in &last {
        if !live.contains_key(key) {
            assert!(ops.values().all(|op| *op == 3), "removed row {key:?} still present: {ops:?}");
        }
    }
    let expected_edges: BTreeSet<(String, String, String)> =
        live.iter().map(|((t, r), b)| (t.clone(), r.clone(), b.clone())).collect();
    let actual: BTreeSet<(String, String, String)> =
        edges(store).into_iter().filter(|(t, _, _)| t == "projects" || t == "tags").collect();
    assert_eq!(actual, expected_edges, "bucket edges match the tables");
    crate::harness::assert_bucket_checksums_follow_edges(&mut store.client());
}

pub fn random_workload(db: &TestDb, rng: &mut Rng, statements: usize) {
    let mut c = db.client();
    let users = ["alice", "bob", "carol"];
    for _ in 0..statements {
        let id = rng.below(40);
        let uuid = format!("00000000-0000-0000-0000-{id:012}");
        let sql = match rng.below(7) {
            0 | 1 => format!(
                "INSERT INTO projects (id, user_id, name) VALUES ('{uuid}', '{}', 'n{}') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, deleted_at = NULL",
                users[rng.below(3) as usize],
                rng.next()
            ),
            2 => format!("UPDATE projects SET user_id = {} WHERE id = '{uuid}'", if rng.below(4) == 0 { "NULL".to_string() } else { format!("'{}'", users[rng.below(3) as usize]) }),
            3 => format!("UPDATE projects SET deleted_at = now() WHERE id = '{uuid}'"),
            4 => format!("DELETE FROM projects WHERE id = '{uuid}' AND NOT EXISTS (SELECT 1 FROM tasks WHERE project_id = '{uuid}')"),
            5 => format!("INSERT INTO tags VALUES ({id}, 'x') ON CONFLICT (id) DO UPDATE SET label = 'y{}'", rng.next()),
            _ => {
                if rng.below(10) == 0 {
                    "TRUNCATE tags".to_string()
                } else {
                    format!("DELETE FROM tags WHERE id = {id}")
                }
            }
        };
        c.batch_execute(&sql).unwrap();
    }
}

/// Writes a marker row and waits until the changelog has it: commit order is changelog order,
/// so everything committed before the marker has been processed too.
/// Writes a new marker until one reaches the changelog: the consumer is streaming (markers
/// written before its slot existed are never streamed).
pub fn wait_streaming(db: &TestDb) {
    let mut c = db.client();
    let mut k = 0;
    wait_for(60, "the consumer to stream", || {
        k += 1;
        c.batch_execute(&format!("INSERT INTO tags VALUES ({}, 'probe')", 900_000 + k)).ok()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let seen = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sync_changelog WHERE table_name = 'tags' AND record_id::int >= 900000)",
                &[],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        seen.then_some(())
    });
}

pub fn catch_up(db: &TestDb, marker: i32) {
    catch_up_in(db, db, marker);
}

/// [`catch_up`] with the changelog in `store`.
pub fn catch_up_in(db: &TestDb, store: &TestDb, marker: i32) {
    db.execute(&format!("INSERT INTO tags VALUES ({marker}, 'marker')"));
    let mut c = store.client();
    wait_for(90, "the consumer to catch up", || {
        // Tolerates a consumer still starting (its tables may not exist yet). The edge commits
        // with the changelog row; both are checked so a test may look at either.
        let seen = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sync_changelog WHERE table_name = 'tags' AND record_id = $1) \
                    AND EXISTS (SELECT 1 FROM sync_bucket_edges WHERE table_name = 'tags' AND record_id = $1)",
                &[&marker.to_string()],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        seen.then_some(())
    });
}

#[test]
fn killed_mid_batch_and_restarted_loses_and_duplicates_nothing() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let slot = format!("kill_{}", db.name);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut child = spawn_synchrod(&db, &slot);
    wait_streaming(&db);
    for round in 0..4 {
        let writer_db = TestDb { cluster: db.cluster, name: db.name.clone() };
        let handle = {
            let seed = rng.next();
            std::thread::spawn(move || {
                let mut r = Rng(seed | 1);
                random_workload(&writer_db, &mut r, 200);
                // Rows inserted exactly once: each must reach the changelog exactly once.
                let mut c = writer_db.client();
                for i in 0..200 {
                    c.batch_execute(&format!("INSERT INTO events VALUES ({}, 'once')", 100_000 + round * 1000 + i))
                        .unwrap();
                }
                std::mem::forget(writer_db);
            })
        };
        std::thread::sleep(Duration::from_millis(100 + 50 * round));
        child.kill().unwrap(); // SIGKILL: no shutdown path runs.
        child.wait().unwrap();
        handle.join().unwrap();
        child = spawn_synchrod(&db, &slot);
    }
    // A large transaction, then let it catch up.
    db.execute("INSERT INTO tags SELECT g, 'bulk' FROM generate_series(1000, 3000) g ON CONFLICT DO NOTHING");
    catch_up(&db, 1_000_001);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_consistent(&db);
    let log = changelog(&db);
    for round in 0..4u64 {
        for i in 0..200u64 {
            let id = (100_000 + round * 1000 + i).to_string();
            assert_eq!(
                log.get(&("global".into(), "events".into(), id.clone())),
                Some(&vec![1]),
                "event {id} exactly once"
            );
        }
    }
}

#[test]
fn a_randomized_workload_with_a_postgresql_restart_stays_consistent() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute(SCHEMA);
    let slot = "random_slot";
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", slot)]);
    let mut rng = Rng(42);
    random_workload(&db, &mut rng, 400);
    cluster.kill().unwrap();
    cluster.start_again().unwrap();
    random_workload(&db, &mut rng, 400);
    catch_up(&db, 1_000_002);
    server.shutdown(Duration::from_secs(5));
    assert_consistent(&db);
}

#[test]
fn an_invalidated_slot_is_recreated_and_clients_are_told_to_resnapshot() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute(SCHEMA);
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "ALTER SYSTEM SET wal_keep_size = 0",
        "SELECT pg_reload_conf()",
    ] {
        db.execute(sql);
    }
    let slot = "small_slot";
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", slot)]);
    db.execute("INSERT INTO tags VALUES (1, 'seen')");
    wait_for(20, "the first row", || changelog(&db).get(&("global".into(), "tags".into(), "1".into())).map(|_| ()));
    let user = "X-User-ID: u\r\n";
    let schema = crate::client::get(server.addr, "/sync/schema", user).json();
    crate::client::post(
        server.addr,
        "/sync/register",
        user,
        br#"{"client_id":"d","schema_version":0,"schema_hash":""}"#,
    );
    let cp: i64 = db.client().query_one("SELECT max(seq) FROM sync_changelog", &[]).unwrap().get(0);
    // Stall the consumer, then write and switch far more WAL than the slot may keep.
    server.shutdown(Duration::from_secs(5));
    for i in 0..6 {
        db.execute(&format!("INSERT INTO unpublished SELECT g + {i} * 100000, repeat('x', 1000) FROM generate_series(1, 2000) g; SELECT pg_switch_wal(); CHECKPOINT;"));
    }
    let status: String = db
        .client()
        .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .unwrap()
        .get(0);
    assert_eq!(status, "lost", "the slot must be invalidated for this test");
    db.execute("INSERT INTO tags VALUES (2, 'lost in the gap')");
    let server = start(&db, &[("SYNC_TABLES", TABLES), ("SLOT_NAME", slot)]);
    let reset: i64 = wait_for(30, "the history reset", || {
        db.client()
            .query_opt("SELECT seq FROM synchro_watermarks WHERE name = 'history_reset'", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    assert!(reset > cp);
    let body = format!(
        r#"{{"client_id":"d","checkpoint":{cp},"schema_version":{},"schema_hash":{}}}"#,
        schema["schema_version"], schema["schema_hash"]
    );
    let r = crate::client::post(server.addr, "/sync/pull", user, body.as_bytes()).json();
    assert_eq!(r["snapshot_required"], true, "{r}");
    assert_eq!(r["snapshot_reason"], "history_unavailable");
    // The new slot streams again.
    db.execute("INSERT INTO tags VALUES (3, 'after')");
    wait_for(30, "a row after the reset", || {
        changelog(&db).get(&("global".into(), "tags".into(), "3".into())).map(|_| ())
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn toast_values_and_schema_changes_mid_stream() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE docs_default (id int PRIMARY KEY, user_id text, body text, n int);
         CREATE TABLE docs_full (id int PRIMARY KEY, user_id text, body text, n int);
         CREATE TABLE docs_index (id int NOT NULL, user_id text, body text, n int, PRIMARY KEY (id));
         CREATE UNIQUE INDEX docs_index_id ON docs_index (id);
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         ALTER TABLE docs_index REPLICA IDENTITY USING INDEX docs_index_id;
         CREATE TABLE docs_nothing (id int PRIMARY KEY, body text);
         ALTER TABLE docs_nothing REPLICA IDENTITY NOTHING;",
    );
    let tables = "docs_default,docs_full,docs_index,docs_nothing";
    let server = start(&db, &[("SYNC_TABLES", tables), ("SLOT_NAME", &format!("t_{}", db.name))]);
    let big = "x".repeat(20_000);
    for t in ["docs_default", "docs_full", "docs_index"] {
        db.execute(&format!(
            "INSERT INTO {t} VALUES (1, 'alice', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 700) g), 0);
             UPDATE {t} SET n = 1 WHERE id = 1;
             UPDATE {t} SET n = n WHERE id = 1;
             INSERT INTO {t} VALUES (2, 'alice', '{big}', 0); UPDATE {t} SET n = 2 WHERE id = 2; DELETE FROM {t} WHERE id = 2;"
        ));
    }
    for t in ["docs_default", "docs_full", "docs_index"] {
        let log = wait_for(20, t, || {
            let log = changelog(&db);
            (log.get(&("user:alice".into(), t.into(), "2".into())).map(|o| o.len()) == Some(3)).then_some(log)
        });
        // Unchanged TOAST never turned the owner into NULL: the row stayed in alice's bucket.
        assert_eq!(log[&("user:alice".to_string(), t.to_string(), "1".to_string())], vec![1, 2, 2], "{t}");
        assert_eq!(log[&("user:alice".to_string(), t.to_string(), "2".to_string())], vec![1, 2, 3], "{t}");
        assert!(!log.contains_key(&("global".to_string(), t.to_string(), "1".to_string())), "{t}");
    }
    // With REPLICA IDENTITY NOTHING PostgreSQL itself refuses updates of a published table.
    db.execute("INSERT INTO docs_nothing VALUES (1, 'a')");
    let err = db.client().batch_execute("UPDATE docs_nothing SET body = 'b'").unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("replica identity"), "{message}");
    // ALTER TABLE mid-stream: the relation cache follows and new columns flow.
    db.execute("ALTER TABLE docs_full ADD COLUMN extra text; UPDATE docs_full SET extra = 'e' WHERE id = 1;");
    db.execute("ALTER TABLE docs_full ALTER COLUMN n TYPE bigint; UPDATE docs_full SET n = 5000000000 WHERE id = 1;");
    wait_for(20, "updates after ALTER TABLE", || {
        let log = changelog(&db);
        (log[&("user:alice".to_string(), "docs_full".to_string(), "1".to_string())].len() == 5).then_some(())
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn sigterm_under_load_shuts_down_cleanly_and_loses_nothing() {
    let db = TestDb::new();
    db.execute(SCHEMA);
    let slot = format!("term_{}", db.name);
    let mut child = spawn_synchrod(&db, &slot);
    // Streaming, not just started: rows written during the startup backfill would be both
    // backfilled and streamed (reaching clients as updates, which is harmless but not what
    // this test counts).
    wait_streaming(&db);
    let writer_db = TestDb { cluster: db.cluster, name: db.name.clone() };
    let load = std::thread::spawn(move || {
        let mut c = writer_db.client();
        for i in 0..400 {
            c.batch_execute(&format!("INSERT INTO events VALUES ({i}, 'x')")).unwrap();
        }
        std::mem::forget(writer_db);
    });
    std::thread::sleep(Duration::from_millis(150));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exited = wait_for(20, "synchrod to exit", || child.try_wait().unwrap());
    assert!(exited.success(), "graceful shutdown exits 0: {exited:?}");
    load.join().unwrap();
    // The final standby status confirmed exactly what was committed.
    let (stored, confirmed): (i64, String) = {
        let r = db
            .client()
            .query_one(
                "SELECT p.confirmed_lsn, s.confirmed_flush_lsn::text FROM sync_wal_position p, pg_replication_slots s \
                 WHERE p.slot_name = $1 AND s.slot_name = $1",
                &[&slot],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        confirmed.parse::<synchro::types::Lsn>().unwrap().0 >= stored as u64,
        "slot confirmed {confirmed}, stored {stored}"
    );
    child = spawn_synchrod(&db, &slot);
    catch_up(&db, 1_000_003);
    let log = changelog(&db);
    for i in 0..400 {
        assert_eq!(
            log.get(&("global".into(), "events".into(), i.to_string())),
            Some(&vec![1]),
            "event {i} exactly once"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_unchanged_toast_owner_of_a_row_deleted_later_is_not_misrouted() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE big_owner (id int PRIMARY KEY, user_id text, n int);
         ALTER TABLE big_owner ALTER COLUMN user_id SET STORAGE EXTERNAL;",
    );
    let server = start(&db, &[("SYNC_TABLES", "big_owner"), ("SLOT_NAME", &format!("b_{}", db.name))]);
    let owner = "u".repeat(5000);
    db.execute(&format!("INSERT INTO big_owner VALUES (1, '{owner}', 0)"));
    // The update carries the owner as unchanged TOAST; by the time the writer sees it the row
    // is already gone.
    db.execute("BEGIN; UPDATE big_owner SET n = 1 WHERE id = 1; DELETE FROM big_owner WHERE id = 1; COMMIT;");
    let bucket = format!("user:{owner}");
    let log = wait_for(20, "the delete", || {
        let log = changelog(&db);
        (log.get(&(bucket.clone(), "big_owner".into(), "1".into())).map(|o| o.len()) == Some(2)).then_some(log)
    });
    assert_eq!(log[&(bucket, "big_owner".to_string(), "1".to_string())], vec![1, 3]);
    assert!(
        !log.contains_key(&("global".to_string(), "big_owner".to_string(), "1".to_string())),
        "never routed to global"
    );
    server.shutdown(Duration::from_secs(5));
}
