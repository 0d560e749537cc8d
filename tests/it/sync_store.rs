//! A separate sync store (`SYNC_STORE_URL`): the application tables stay in one database, the
//! changelog, edges, clients, checkpoints, manifest and WAL position live in another, and the
//! protocol behaves exactly as with one database.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use synchro::config::Config;

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::{private_cluster, TestDb};
use crate::sync_api::{converge, snapshot_under_writes, start_demo, task, truth, Device};

/// The infrastructure tables of `db`, by name.
fn sync_tables(db: &TestDb) -> Vec<String> {
    db.client()
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND (tablename LIKE 'sync\\_%' OR tablename LIKE 'synchro\\_%') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

const T1: &str = "20000000-0000-0000-0000-000000000001";

#[test]
fn the_sync_tables_live_only_in_the_store_and_every_endpoint_works() {
    let app = TestDb::new();
    let store = TestDb::new();
    let server = start_demo(&app, Some(&store.url()));
    assert!(server.engine.has_separate_store());
    assert_eq!(sync_tables(&app), Vec::<String>::new(), "nothing of synchro's in the application database");
    for t in ["sync_bucket_edges", "sync_changelog", "sync_clients", "sync_schema_manifest", "sync_wal_position"] {
        assert!(sync_tables(&store).iter().any(|s| s == t), "{t} in the store");
    }
    // The three seeded categories predate the consumer: their edges were backfilled into the store.
    assert_eq!(count(&store, "SELECT count(*) FROM sync_bucket_edges WHERE bucket_id = 'global'"), 3);

    let a = Device::new(server.addr, "alice", "phone");
    let mut b = Device::new(server.addr, "alice", "laptop");
    assert_eq!(a.rows.len(), 3, "the snapshot (rows from the application database)");
    assert_eq!(count(&store, "SELECT count(*) FROM sync_clients WHERE user_id = 'alice'"), 2);

    // Push: written to the application database, bookkeeping in the store.
    let r = a.push(json!([task(T1, "buy milk")]));
    assert_eq!(r["accepted"][0]["status"], "applied", "{r}");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM tasks WHERE id = '{T1}'")), 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM sync_clients WHERE client_id = 'phone' AND last_push_at IS NOT NULL"),
        1
    );
    // Capture reads the application database's WAL and writes the store.
    b.pull_until("the pushed task on B", |rows| rows.contains_key(&("tasks".into(), T1.into())));
    assert_eq!(b.rows[&("tasks".to_string(), T1.to_string())]["title"], "buy milk");
    // A child row: its owner is resolved through the foreign key, in the application database.
    app.execute(&format!("INSERT INTO comments (task_id, body) VALUES ('{T1}', 'fresh')"));
    b.pull_until("the comment on B", |rows| rows.keys().any(|(t, _)| t == "comments"));
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM sync_bucket_edges WHERE table_name = 'comments' AND bucket_id = 'user:alice'"
        ),
        1
    );
    // A direct SQL delete reaches B as a delete.
    app.execute(&format!("DELETE FROM comments; DELETE FROM tasks WHERE id = '{T1}'"));
    b.pull_until("the deletes on B", |rows| !rows.keys().any(|(t, _)| t == "tasks" || t == "comments"));
    assert_eq!(b.rows, truth(&app, "alice"));

    // Rebuild: members from the store's edges, rows from the application database, and the
    // checksum pull reports for the same bucket.
    let rebuild = a.call(
        "/sync/rebuild",
        json!({"client_id": "phone", "bucket_id": "global", "limit": 10, "schema_version": a.version, "schema_hash": a.hash}),
    );
    assert_eq!(rebuild.status, 200, "{}", rebuild.body);
    let rebuild = rebuild.json();
    assert_eq!(rebuild["records"].as_array().unwrap().len(), 3, "{rebuild}");
    let sum = rebuild["bucket_checksum"].as_i64().expect("a checksum for the complete bucket");
    app.execute("UPDATE categories SET name = name || '!' WHERE name = (SELECT min(name) FROM categories)");
    let pulled = wait_for(20, "a pull page with checksums", || {
        let r = a.call("/sync/pull", json!({"client_id": "phone", "checkpoint": rebuild["checkpoint"], "limit": 100, "schema_version": a.version, "schema_hash": a.hash}));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        // The edge checksum follows the changelog row a moment later.
        (!v["changes"].as_array().unwrap().is_empty() && v["bucket_checksums"]["global"].as_i64() != Some(sum))
            .then_some(v)
    });
    let after = pulled["bucket_checksums"]["global"].as_i64().expect("global checksum");
    assert_ne!(after, sum, "the update changed the bucket's checksum in the store");

    // Debug and metrics read the store; the slot gauge reads the application database.
    let debug = get(server.addr, "/sync/debug?client_id=phone", "X-User-ID: alice\r\n");
    assert_eq!(debug.status, 200, "{}", debug.body);
    let metrics = get(server.addr, "/metrics", "").body;
    assert!(metrics.contains("synchro_clients_registered 2"), "{metrics}");
    assert!(metrics.contains("synchro_slot_active 1"), "{metrics}");
    assert_eq!(get(server.addr, "/healthz", "").status, 200);
    // Schema changes are versioned in the store's manifest.
    app.execute("ALTER TABLE notes ADD COLUMN extra text");
    let schema = get(server.addr, "/sync/schema", "X-User-ID: alice\r\n").json();
    assert_eq!(schema["schema_version"], 2);
    assert_eq!(count(&store, "SELECT count(*) FROM sync_schema_manifest"), 2);
    server.shutdown(Duration::from_secs(5));

    // `synchrod check` looks for the infrastructure tables in the store.
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", app.url()),
        ("SYNC_STORE_URL", store.url()),
        ("SYNC_TABLES", "tasks,comments,categories,notes".into()),
        ("SLOT_NAME", format!("s_{}", app.name)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let lines: Vec<String> = synchro::check::run(&Config::from_vars(&vars).unwrap()).iter().map(|r| r.line()).collect();
    for name in ["sync store reachable", "infrastructure tables migrated", "synced tables valid"] {
        assert!(lines.iter().any(|l| l.starts_with(&format!("PASS {name}"))), "{name}: {lines:?}");
    }
    let unreachable = store.url().replace(&store.name, "no_such_store");
    let vars =
        vars.into_iter().map(|(k, v)| if k == "SYNC_STORE_URL" { (k, unreachable.clone()) } else { (k, v) }).collect();
    let lines: Vec<String> = synchro::check::run(&Config::from_vars(&vars).unwrap()).iter().map(|r| r.line()).collect();
    assert!(lines.iter().any(|l| l.starts_with("FAIL sync store reachable")), "{lines:?}");
}

/// Runs `scenario` against synchrod on the demo tables with the sync tables in a second database.
fn with_a_separate_store(scenario: fn(&TestDb, &synchro::server::Running)) {
    let app = TestDb::new();
    let store = TestDb::new();
    let server = start_demo(&app, Some(&store.url()));
    scenario(&app, &server);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn randomized_devices_converge_with_a_separate_store() {
    with_a_separate_store(converge);
}

#[test]
fn writes_during_a_paged_snapshot_with_a_separate_store() {
    with_a_separate_store(snapshot_under_writes);
}

#[test]
fn a_store_outage_refuses_requests_cleanly_and_loses_no_change() {
    let app = TestDb::new();
    let cluster = private_cluster();
    let store = TestDb::on(&cluster);
    let server = start_demo(&app, Some(&store.url()));
    let mut a = Device::new(server.addr, "alice", "phone");

    cluster.stop().unwrap();
    // The client row is in the store: nothing can be checked, so nothing is written.
    let r = a.call(
        "/sync/push",
        json!({"client_id": "phone", "changes": [task(T1, "during the outage")], "schema_version": a.version, "schema_hash": a.hash}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.json()["error"].is_string(), "{}", r.body);
    assert_eq!(count(&app, &format!("SELECT count(*) FROM tasks WHERE id = '{T1}'")), 0, "no half-applied push");
    let pull = post(
        server.addr,
        "/sync/pull",
        "X-User-ID: alice\r\n",
        json!({"client_id": "phone", "checkpoint": 0, "limit": 10, "schema_version": a.version, "schema_hash": a.hash})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(pull.status, 503, "{}", pull.body);
    // Writes to the application database go on; the slot keeps them for the writer.
    for i in 0..20 {
        app.execute(&format!(
            "INSERT INTO tasks (id, user_id, title) VALUES ('30000000-0000-0000-0000-{i:012}', 'alice', 'sql {i}')"
        ));
    }
    cluster.start_again().unwrap();

    // The same push, retried as an SDK does, applies once.
    let r = wait_for(20, "a push accepted after the outage", || {
        let r = a.call(
            "/sync/push",
            json!({"client_id": "phone", "changes": [task(T1, "after the outage")], "schema_version": a.version, "schema_hash": a.hash}),
        );
        (r.status == 200).then(|| r.json())
    });
    assert_eq!(r["accepted"][0]["status"], "applied", "{r}");
    a.pull_until("every row written during the outage", |rows| {
        rows.keys().filter(|(t, id)| t == "tasks" && id.starts_with("30000000")).count() == 20
            && rows.contains_key(&("tasks".into(), T1.into()))
    });
    assert_eq!(a.rows, truth(&app, "alice"));
    // Exactly one create per row: the writer resumed from the stored position, nothing twice.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM sync_changelog WHERE table_name = 'tasks' AND record_id LIKE '30000000%' AND operation = 1"
        ),
        20
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM (SELECT 1 FROM sync_changelog WHERE table_name = 'tasks' \
             GROUP BY bucket_id, record_id, operation HAVING count(*) > 1 AND operation = 1) d"
        ),
        0,
        "no duplicate creates"
    );
    server.shutdown(Duration::from_secs(5));
}
