//! Data never leaves its scope: rows transferred away, lagging capture, forged bucket ids,
//! deletes racing a transfer, hostile strings, excluded columns, ownerless rows and the error
//! text of rejected records. Each test reproduces an attack on the server as a client would run it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::TestDb;
use crate::server::start;
use crate::sync_api::{start_demo, task, Device};

const T: &str = "e0000000-0000-0000-0000-000000000001";
const B: &str = "e0000000-0000-0000-0000-0000000000b0";

fn key(table: &str, id: &str) -> (String, String) {
    (table.to_string(), id.to_string())
}

/// Waits until the writer has recorded a change of `table`/`id` for `bucket`.
fn wait_changelog(db: &TestDb, bucket: &str, table: &str, id: &str) {
    let mut c = db.client();
    wait_for(30, &format!("{table}/{id} in {bucket}"), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM sync_changelog WHERE bucket_id = $1 AND table_name = $2 AND record_id = $3",
                &[&bucket, &table, &id],
            )
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    });
}

/// The owner of each task record in `page` (pull `changes`, snapshot or rebuild `records`).
fn task_owners(page: &Value, list: &str) -> Vec<String> {
    page[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table_name"] == "tasks")
        .map(|r| r["data"]["user_id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Pulls every page from `checkpoint` with `limit` (legacy mode, or per-bucket mode with
/// `buckets`), asserting that no record of another user arrives, and returns the deleted ids.
fn pull_all(d: &Device, checkpoint: i64, limit: i64, buckets: Option<Value>) -> Vec<String> {
    let mut deleted = Vec::new();
    let (mut cp, mut map) = (checkpoint, buckets);
    loop {
        let r = d.call(
            "/sync/pull",
            json!({"client_id": d.client_id, "checkpoint": cp, "bucket_checkpoints": map, "limit": limit,
                   "schema_version": d.version, "schema_hash": d.hash}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("BOB"), "limit {limit}: another user's row reached {}: {}", d.user, r.body);
        let page = r.json();
        for owner in task_owners(&page, "changes") {
            assert!(owner == d.user || owner.is_empty(), "limit {limit}: a task of {owner:?} reached {}", d.user);
        }
        for del in page["deletes"].as_array().unwrap() {
            deleted.push(del["id"].as_str().unwrap().to_string());
        }
        cp = page["checkpoint"].as_i64().unwrap();
        if page.get("bucket_checkpoints").is_some() {
            map = Some(page["bucket_checkpoints"].clone());
        }
        if !page["has_more"].as_bool().unwrap() {
            return deleted;
        }
    }
}

#[test]
fn a_row_transferred_away_reaches_its_old_owner_as_a_delete_never_as_data() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let mut a = Device::new(server.addr, "alice", "a1");
    assert_eq!(a.push(json!([task(T, "mine")]))["accepted"].as_array().unwrap().len(), 1);
    a.pull_until("the task", |rows| rows.contains_key(&key("tasks", T)));
    let from = a.checkpoint;
    db.execute(&format!("UPDATE tasks SET title = 'alice edit' WHERE id = '{T}'"));
    db.execute(&format!("UPDATE tasks SET user_id = 'bob', title = 'BOB-PRIVATE after transfer' WHERE id = '{T}'"));
    wait_changelog(&db, "user:bob", "tasks", T);
    let buckets = json!({"user:alice": from, "global": from});
    for limit in [1, 2, 100] {
        assert!(pull_all(&a, from, limit, None).contains(&T.to_string()), "limit {limit}: the task leaves as a delete");
        assert!(pull_all(&a, 0, limit, Some(buckets.clone())).contains(&T.to_string()), "per-bucket, limit {limit}");
    }

    // Capture lagging behind a transfer: the changelog still announces Bob's row to Alice.
    db.execute(&format!("INSERT INTO tasks (id, user_id, title) VALUES ('{B}', 'bob', 'BOB-SECRET')"));
    wait_changelog(&db, "user:bob", "tasks", B);
    let mut c = db.client();
    let cp: i64 = c.query_one("SELECT max(seq) FROM sync_changelog", &[]).unwrap().get(0);
    c.execute(
        "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) VALUES ('user:alice', 'tasks', $1, 2)",
        &[&B],
    )
    .unwrap();
    for limit in [1, 100] {
        assert!(pull_all(&a, cp, limit, None).contains(&B.to_string()), "a lagging entry becomes a delete");
        assert!(pull_all(&a, 0, limit, Some(json!({"user:alice": cp, "global": cp}))).contains(&B.to_string()));
    }
    // The same for a child row, whose owner is its parent's.
    db.execute(&format!("INSERT INTO comments (id, task_id, body) VALUES ('{B}', '{B}', 'BOB-COMMENT')"));
    wait_changelog(&db, "user:bob", "comments", B);
    let cp: i64 = c.query_one("SELECT max(seq) FROM sync_changelog", &[]).unwrap().get(0);
    c.execute(
        "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) VALUES ('user:alice', 'comments', $1, 1)",
        &[&B],
    )
    .unwrap();
    let page = a
        .call(
            "/sync/pull",
            json!({"client_id": "a1", "checkpoint": cp, "schema_version": a.version, "schema_hash": a.hash}),
        )
        .json();
    assert_eq!(page["changes"], json!([]), "{page}");
    assert_eq!(page["deletes"], json!([{"id": B, "table_name": "comments"}]));

    // Rebuild reads members from the edges: a stale edge never turns into data either.
    c.execute(
        "INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum) VALUES ('tasks', $1, 'user:alice', 0), \
         ('comments', $1, 'user:alice', 0) ON CONFLICT DO NOTHING",
        &[&B],
    )
    .unwrap();
    let r = a.call(
        "/sync/rebuild",
        json!({"client_id": "a1", "bucket_id": "user:alice", "schema_version": a.version, "schema_hash": a.hash}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("BOB"), "{}", r.body);
    for owner in task_owners(&r.json(), "records") {
        assert_eq!(owner, "alice");
    }
    // And the snapshot never held them.
    a.snapshot(1);
    assert!(!a.rows.contains_key(&key("tasks", T)) && !a.rows.contains_key(&key("tasks", B)));
    assert!(!a.rows.contains_key(&key("comments", B)));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn checkpoints_are_only_stored_for_subscribed_buckets() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let bob = Device::new(server.addr, "bob", "b1");
    bob.push(json!([task(B, "BOB-PRIVATE")]));
    wait_changelog(&db, "user:bob", "tasks", B);
    let a = Device::new(server.addr, "alice", "a1");
    let stored = |db: &TestDb| -> Vec<String> {
        db.client()
            .query(
                "SELECT bucket_id FROM sync_client_checkpoints WHERE user_id = 'alice' AND client_id = 'a1' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let r = a.call(
        "/sync/pull",
        json!({"client_id": "a1", "bucket_checkpoints": {"user:bob": 0, "user:alice": a.checkpoint, "global": a.checkpoint, "junk": 0},
               "schema_version": a.version, "schema_hash": a.hash}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("BOB"), "{}", r.body);
    assert_eq!(stored(&db), vec!["global", "user:alice"]);
    let debug_buckets = |a: &Device| -> Vec<String> {
        let d = get(a.addr, "/sync/debug?client_id=a1", &a.headers()).json();
        let mut ids: Vec<String> =
            d["buckets"].as_array().unwrap().iter().map(|b| b["bucket_id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(debug_buckets(&a), vec!["global", "user:alice"]);
    // A checkpoint row of another bucket (left by an older version) is never shown.
    db.execute("INSERT INTO sync_client_checkpoints (user_id, client_id, bucket_id, checkpoint) VALUES ('alice', 'a1', 'user:bob', 0)");
    assert_eq!(debug_buckets(&a), vec!["global", "user:alice"]);
    let reg = a.call("/sync/register", json!({"client_id": "a1", "schema_version": a.version, "schema_hash": a.hash}));
    assert_eq!(reg.status, 200);
    assert_eq!(
        reg.json()["bucket_checkpoints"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["global", "user:alice"]
    );
    db.execute("DELETE FROM sync_client_checkpoints WHERE bucket_id = 'user:bob'");
    // 100,000 junk keys in one pull: answered, nothing stored.
    let mut junk = serde_json::Map::new();
    for i in 0..100_000 {
        junk.insert(format!("junk:{i:016}"), json!(i));
    }
    junk.insert("user:alice".into(), json!(a.checkpoint));
    let r = a.call(
        "/sync/pull",
        json!({"client_id": "a1", "bucket_checkpoints": junk, "schema_version": a.version, "schema_hash": a.hash}),
    );
    assert_eq!(r.status, 200, "{}", &r.body[..200.min(r.body.len())]);
    assert_eq!(stored(&db), vec!["global", "user:alice"]);
    let reg = a.call("/sync/register", json!({"client_id": "a1", "schema_version": a.version, "schema_hash": a.hash}));
    assert!(reg.body.len() < 1000, "{}", reg.body.len());
    server.shutdown(Duration::from_secs(5));
}

/// Waits until some backend of `db` waits for a lock (a push blocked behind our transaction).
fn wait_for_lock_waiter(db: &TestDb) {
    let mut c = db.client();
    wait_for(30, "the push to wait for the row lock", || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    });
}

#[test]
fn a_delete_racing_an_owner_transfer_never_removes_the_new_owners_row() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let a = Device::new(server.addr, "alice", "a1");
    let r = a.push(
        json!([task(T, "mine"), {"id": "77", "table_name": "notes", "operation": "create", "data": {"body": "n"}}]),
    );
    assert_eq!(r["accepted"].as_array().unwrap().len(), 2, "{r}");
    for (table, id, cast) in [("tasks", T, "uuid"), ("notes", "77", "bigint")] {
        // The transfer holds the row lock while alice's delete looks the row up (still hers) and
        // then waits to write it.
        let mut locker = db.client();
        let mut tx = locker.transaction().unwrap();
        tx.execute(&format!("UPDATE {table} SET user_id = 'bob' WHERE id = $1::text::{cast}"), &[&id]).unwrap();
        let (addr, headers) = (a.addr, a.headers());
        let body = json!({"client_id": "a1", "schema_version": a.version, "schema_hash": a.hash,
                          "changes": [{"id": id, "table_name": table, "operation": "delete"}]});
        let push = std::thread::spawn(move || post(addr, "/sync/push", &headers, body.to_string().as_bytes()));
        wait_for_lock_waiter(&db);
        tx.commit().unwrap();
        let r = push.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let r = r.json();
        assert_eq!(r["rejected"][0]["reason_code"], "ownership_violation", "{table}: {r}");
        let row = db
            .client()
            .query_one(
                &format!("SELECT user_id, row_to_json(t)::text FROM {table} t WHERE id = $1::text::{cast}"),
                &[&id],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "bob");
        let json: Value = serde_json::from_str(&row.get::<_, String>(1)).unwrap();
        assert!(json.get("deleted_at").is_none_or(Value::is_null), "{table}: bob's row is not deleted: {json}");
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn nul_bytes_and_oversized_strings_are_refused_with_4xx() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let a = Device::new(server.addr, "alice", "a1");
    let (v, h) = (a.version, a.hash.clone());
    let huge = "x".repeat(1 << 20);
    // One entry more than a pull's lists may hold.
    let many: Vec<String> = (0..=synchro::protocol::MAX_LIST_ENTRIES).map(|n| format!("b{n}")).collect();
    let cases: Vec<(&str, Value)> = vec![
        ("/sync/register", json!({"client_id": "a\u{0}b", "schema_version": v, "schema_hash": h})),
        ("/sync/register", json!({"client_id": huge, "schema_version": v, "schema_hash": h})),
        ("/sync/register", json!({"client_id": "c", "platform": "io\u{0}s", "schema_version": v, "schema_hash": h})),
        (
            "/sync/register",
            json!({"client_id": "c", "app_version": "1.0.0\u{0}", "schema_version": v, "schema_hash": h}),
        ),
        ("/sync/register", json!({"client_id": "c", "client_name": "\u{0}", "schema_version": v, "schema_hash": h})),
        ("/sync/register", json!({"client_id": "c", "client_name": huge, "schema_version": v, "schema_hash": h})),
        ("/sync/pull", json!({"client_id": "a\u{0}1", "schema_version": v, "schema_hash": h})),
        ("/sync/pull", json!({"client_id": huge, "schema_version": v, "schema_hash": h})),
        (
            "/sync/pull",
            json!({"client_id": "a1", "bucket_checkpoints": {"user:\u{0}": 0}, "schema_version": v, "schema_hash": h}),
        ),
        (
            "/sync/pull",
            json!({"client_id": "a1", "bucket_checkpoints": {huge.clone(): 0}, "schema_version": v, "schema_hash": h}),
        ),
        (
            "/sync/pull",
            json!({"client_id": "a1", "checkpoint": 1, "tables": ["ta\u{0}sks"], "schema_version": v, "schema_hash": h}),
        ),
        ("/sync/pull", json!({"client_id": "a1", "known_buckets": ["\u{0}"], "schema_version": v, "schema_hash": h})),
        (
            "/sync/pull",
            json!({"client_id": "a1", "known_buckets": many.clone(), "schema_version": v, "schema_hash": h}),
        ),
        ("/sync/pull", json!({"client_id": "a1", "tables": many.clone(), "schema_version": v, "schema_hash": h})),
        ("/sync/push", json!({"client_id": "a\u{0}1", "changes": [], "schema_version": v, "schema_hash": h})),
        ("/sync/snapshot", json!({"client_id": "a\u{0}1", "schema_version": v, "schema_hash": h})),
        (
            "/sync/snapshot",
            json!({"client_id": "a1", "cursor": {"checkpoint": 0, "table_idx": 0, "after_id": "\u{0}"}, "schema_version": v, "schema_hash": h}),
        ),
        (
            "/sync/rebuild",
            json!({"client_id": "a1", "bucket_id": "user:alice", "cursor": "1:tasks|a\u{0}", "schema_version": v, "schema_hash": h}),
        ),
        (
            "/sync/rebuild",
            json!({"client_id": "a1", "bucket_id": "user:alice", "cursor": format!("1:tasks|{huge}"), "schema_version": v, "schema_hash": h}),
        ),
        ("/sync/rebuild", json!({"client_id": "a1", "bucket_id": "user:\u{0}", "schema_version": v, "schema_hash": h})),
    ];
    for (path, body) in cases {
        let r = a.call(path, body.clone());
        let shown: String = body.to_string().chars().take(160).collect();
        assert_eq!(r.status, 400, "{path} {shown}: {}", r.body);
        assert!(r.json()["error"].is_string());
        if shown.contains("\"b0\"") {
            assert!(r.body.contains("too many entries (at most 10000)"), "{}", r.body);
        }
    }
    for query in ["a%00b", "%ff", &"x".repeat(4096)] {
        let r = get(server.addr, &format!("/sync/debug?client_id={query}"), &a.headers());
        assert_eq!(r.status, 400, "debug {}: {}", &query[..query.len().min(20)], r.body);
    }
    // A record the database cannot store is rejected on its own; the others apply.
    let r = a.push(json!([
        {"id": "e0000000-0000-0000-0000-\u{0}", "table_name": "tasks", "operation": "update", "data": {}},
        {"id": "e0000000-0000-0000-0000-000000000003", "table_name": "tasks", "operation": "create", "data": {"title": "a\u{0}b"}},
        {"id": huge, "table_name": "notes", "operation": "delete"},
        task(T, "fine"),
    ]));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1, "{r}");
    for rej in r["rejected"].as_array().unwrap() {
        assert_eq!(
            (rej["status"].as_str(), rej["reason_code"].as_str()),
            (Some("rejected_terminal"), Some("invalid_data")),
            "{rej}"
        );
    }
    // The service is healthy afterwards.
    assert_eq!(
        a.call(
            "/sync/pull",
            json!({"client_id": "a1", "checkpoint": a.checkpoint, "schema_version": v, "schema_hash": h})
        )
        .status,
        200
    );
    server.shutdown(Duration::from_secs(5));
}

/// An HS256 token for `claims`, optionally with extra header parameters.
fn hs256(header: Value, claims: Value, secret: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    synchro::jwt::encode(&header, &claims, |input| {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    })
}

#[test]
fn tokens_with_unknown_critical_headers_or_blank_users_are_refused() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    let secret = "s3cret";
    let server = start(&db, &[("SYNC_TABLES", "tasks,comments,categories"), ("JWT_SECRET", secret)]);
    let call = |token: &str| get(server.addr, "/sync/schema", &format!("Authorization: Bearer {token}\r\n"));
    let ok = hs256(json!({"alg": "HS256"}), json!({"sub": "alice"}), secret.as_bytes());
    assert_eq!(call(&ok).status, 200);
    for (header, claims, message) in [
        (json!({"alg": "HS256", "crit": ["exp"]}), json!({"sub": "alice"}), "invalid token"),
        (
            json!({"alg": "HS256", "crit": ["urn:example:x"], "urn:example:x": 1}),
            json!({"sub": "alice"}),
            "invalid token",
        ),
        (json!({"alg": "HS256", "crit": []}), json!({"sub": "alice"}), "invalid token"),
        (json!({"alg": "HS256"}), json!({"sub": " \t "}), "token missing user claim"),
        (json!({"alg": "HS256"}), json!({"sub": "al\u{0}ice"}), "token missing user claim"),
        (json!({"alg": "HS256"}), json!({"sub": "x".repeat(4096)}), "token missing user claim"),
    ] {
        let r = call(&hs256(header.clone(), claims.clone(), secret.as_bytes()));
        assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (401, message), "{header} {claims}");
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn synchrod_check_never_prints_a_password() {
    let db = TestDb::new();
    let url = db.url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let with_query = format!("{url}{sep}password=hunter2-query");
    let with_userinfo = with_query.replacen("://", "://postgres:hunter2-userinfo@", 1);
    let conninfo = "host=127.0.0.1 port=1 user=u password='hunter2 conninfo' dbname=x".to_string();
    for (database, replication) in [(&with_query, &with_userinfo), (&with_userinfo, &conninfo)] {
        let vars: std::collections::HashMap<String, String> = [
            ("DATABASE_URL", database.as_str()),
            ("REPLICATION_URL", replication.as_str()),
            ("READ_REPLICA_URLS", conninfo.as_str()),
            ("SYNC_TABLES", "nothing"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = synchro::config::Config::from_vars(&vars).unwrap();
        let out: Vec<String> = synchro::check::run(&config).iter().map(|c| c.line()).collect();
        let text = out.join("\n");
        assert!(text.contains("database reachable"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn ownerless_rows_are_read_only_when_shared_rows_are_not_writable() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    db.execute(&format!(
        "INSERT INTO tasks (id, user_id, title) VALUES ('{B}', '', 'shared'); INSERT INTO notes (id, user_id, body) VALUES (5, NULL, 'shared')"
    ));
    // The contract's default: every user may change ownerless rows.
    let a = Device::new(server.addr, "alice", "a1");
    let mut upd = task(B, "changed by alice");
    upd["operation"] = json!("update");
    upd["client_updated_at"] = json!("2099-01-01T00:00:00Z");
    let r = a.push(json!([upd, {"id": "5", "table_name": "notes", "operation": "update", "data": {"body": "x"}}]));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 2, "{r}");
    server.shutdown(Duration::from_secs(5));

    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    db.execute("CREATE TABLE notes (id bigint PRIMARY KEY, user_id text, body text NOT NULL DEFAULT '');");
    db.execute(&format!(
        "INSERT INTO tasks (id, user_id, title) VALUES ('{B}', '', 'shared'); INSERT INTO notes (id, user_id, body) VALUES (5, NULL, 'shared')"
    ));
    let server = start(
        &db,
        &[
            ("SYNC_TABLES", "tasks,comments,categories,notes"),
            ("READ_ONLY_TABLES", "categories"),
            ("SHARED_ROWS_WRITABLE", "false"),
        ],
    );
    let mut a = Device::new(server.addr, "alice", "a1");
    assert!(a.rows.contains_key(&key("tasks", B)), "ownerless rows stay readable");
    let mut upd = task(B, "changed by alice");
    upd["operation"] = json!("update");
    upd["client_updated_at"] = json!("2099-01-01T00:00:00Z");
    let r = a.push(json!([
        upd,
        {"id": B, "table_name": "tasks", "operation": "delete"},
        {"id": "5", "table_name": "notes", "operation": "update", "data": {"body": "x"}},
        {"id": "5", "table_name": "notes", "operation": "delete"},
        {"id": "e0000000-0000-0000-0000-00000000c0c0", "table_name": "comments", "operation": "create", "data": {"task_id": B, "body": "spam"}},
        task(T, "own rows still work"),
    ]));
    let codes: Vec<&str> =
        r["rejected"].as_array().unwrap().iter().map(|x| x["reason_code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["ownership_violation"; 5], "{r}");
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1);
    let n: i64 = db.client().query_one("SELECT count(*) FROM comments", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    a.pull_until("its own task", |rows| rows.contains_key(&key("tasks", T)));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn rejected_records_name_the_column_not_the_database_internals() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    db.execute(
        "CREATE TABLE notes (id bigint PRIMARY KEY, user_id text, body text NOT NULL DEFAULT '', \
           CONSTRAINT notes_body_key UNIQUE (body), CONSTRAINT notes_body_check CHECK (body <> 'forbidden'));",
    );
    let server = start(&db, &[("SYNC_TABLES", "tasks,comments,categories,notes"), ("READ_ONLY_TABLES", "categories")]);
    let a = Device::new(server.addr, "alice", "a1");
    let note =
        |id: &str, body: Value| json!({"id": id, "table_name": "notes", "operation": "create", "data": {"body": body}});
    let r = a.push(json!([
        note("1", json!("taken")),
        note("2", json!("taken")),
        note("3", Value::Null),
        note("4", json!("forbidden")),
        {"id": "e0000000-0000-0000-0000-00000000c0c1", "table_name": "comments", "operation": "create",
         "data": {"task_id": "e0000000-0000-0000-0000-00000000dead", "body": "orphan"}},
    ]));
    let rejected = r["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 4, "{r}");
    let expect = [("2", "body"), ("3", "body"), ("4", "body"), ("e0000000-0000-0000-0000-00000000c0c1", "task_id")];
    for (rej, (id, column)) in rejected.iter().zip(expect) {
        let message = rej["message"].as_str().unwrap();
        assert_eq!((rej["id"].as_str().unwrap(), rej["status"].as_str().unwrap()), (id, "rejected_terminal"), "{rej}");
        assert_eq!(rej["reason_code"], "create_failed", "{rej}");
        assert!(message.contains(column), "{message}");
        for internal in ["relation", "constraint", "notes_body", "fkey", "violates", "\"notes\"", "\"tasks\""] {
            assert!(!message.contains(internal), "{message} names {internal}");
        }
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn excluded_columns_never_leave_the_server() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    db.execute("ALTER TABLE tasks ADD COLUMN secret text NOT NULL DEFAULT 'classified';");
    db.execute("CREATE TABLE vault (id bigint PRIMARY KEY, user_id text, label text, pin text NOT NULL);");
    let server = start(
        &db,
        &[
            ("SYNC_TABLES", "tasks,comments,categories,vault"),
            ("READ_ONLY_TABLES", "categories"),
            ("EXCLUDE_COLUMNS", "tasks.secret,vault.pin"),
        ],
    );
    let mut a = Device::new(server.addr, "alice", "a1");
    let mut with_secret = task(T, "mine");
    with_secret["data"]["secret"] = json!("from the client");
    assert_eq!(a.push(json!([with_secret]))["accepted"].as_array().unwrap().len(), 1);
    // A secret large enough to be stored out of line: a later update leaves it unchanged in the
    // WAL, and the writer still renders the row's checksum without it.
    db.execute(&format!(
        "INSERT INTO tasks (id, user_id, title, secret) VALUES ('{B}', 'alice', 'big', repeat(md5(random()::text), 4000));
         UPDATE tasks SET title = 'big, edited' WHERE id = '{B}';"
    ));
    a.pull_until("both tasks", |rows| rows.get(&key("tasks", B)).is_some_and(|r| r["title"] == "big, edited"));
    let secret: String =
        db.client().query_one("SELECT secret FROM tasks WHERE id = $1::text::uuid", &[&T]).unwrap().get(0);
    assert_eq!(secret, "classified", "clients cannot write an excluded column");
    let clean = |body: &str| assert!(!body.contains("secret") && !body.contains("classified"), "{body}");
    for rows in a.rows.values() {
        clean(&rows.to_string());
    }
    let r = a.call("/sync/pull", json!({"client_id": "a1", "checkpoint": 0, "bucket_checkpoints": {"user:alice": 0, "global": 0}, "schema_version": a.version, "schema_hash": a.hash}));
    clean(&r.body);
    let page = r.json();
    // The edges' aggregate equals what the client computes from the records it received.
    let xor = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["bucket_id"] == "user:alice")
        .fold(0i32, |x, c| x ^ c["checksum"].as_i64().unwrap() as i32);
    assert_eq!(page["has_more"], false);
    assert_eq!(page["bucket_checksums"]["user:alice"].as_i64().map(|v| v as i32), Some(xor), "{page}");
    let r = a.call(
        "/sync/rebuild",
        json!({"client_id": "a1", "bucket_id": "user:alice", "schema_version": a.version, "schema_hash": a.hash}),
    );
    clean(&r.body);
    let rebuild = r.json();
    let xor =
        rebuild["records"].as_array().unwrap().iter().fold(0i32, |x, c| x ^ c["checksum"].as_i64().unwrap() as i32);
    assert_eq!(rebuild["bucket_checksum"].as_i64().map(|v| v as i32), Some(xor));
    a.snapshot(1);
    assert!(a.rows.contains_key(&key("tasks", T)));
    for rows in a.rows.values() {
        clean(&rows.to_string());
    }
    let r = a.call(
        "/sync/push",
        json!({"client_id": "a1", "schema_version": a.version, "schema_hash": a.hash, "changes": [task(T, "again")]}),
    );
    assert_eq!(r.json()["rejected"][0]["reason_code"], "record_exists");
    clean(&r.body);
    // Not even a rejection names an excluded column.
    let r = a.push(
        json!([{"id": "1", "table_name": "vault", "operation": "create", "data": {"label": "l", "pin": "1234"}}]),
    );
    let message = r["rejected"][0]["message"].as_str().unwrap();
    assert_eq!(message, "failed to create record: a value must not be null", "{r}");
    server.shutdown(Duration::from_secs(5));
}

/// Edges written while a column was served keep the checksum of the row with it; once the
/// column is excluded (a restart with another `EXCLUDE_COLUMNS`), capture recomputes them, so a
/// bucket's checksum is again the XOR of what clients receive and SDKs do not rebuild it over
/// and over.
#[test]
fn edge_checksums_follow_a_change_of_the_excluded_columns() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    db.execute("ALTER TABLE tasks ADD COLUMN secret text NOT NULL DEFAULT 'classified';");
    let tables = ("SYNC_TABLES", "tasks,comments,categories");
    let server = start(&db, &[tables]);
    db.execute(&format!(
        "INSERT INTO tasks (id, user_id, title) VALUES ('{T}', 'alice', 'one'), ('{B}', 'alice', 'two')"
    ));
    wait_changelog(&db, "user:alice", "tasks", B);
    server.shutdown(Duration::from_secs(5));
    let kept = |db: &TestDb| -> i32 {
        db.client()
            .query_one("SELECT checksum FROM sync_bucket_checksums WHERE bucket_id = 'user:alice'", &[])
            .unwrap()
            .get(0)
    };
    let before = kept(&db);

    let server = start(&db, &[tables, ("EXCLUDE_COLUMNS", "tasks.secret")]);
    let mut a = Device::new(server.addr, "alice", "a1");
    a.snapshot(100);
    let rebuild = |a: &Device| {
        a.call(
            "/sync/rebuild",
            json!({"client_id": "a1", "bucket_id": "user:alice", "schema_version": a.version, "schema_hash": a.hash}),
        )
        .json()
    };
    let page = wait_for(30, "the edges recomputed without the excluded column", || {
        let page = rebuild(&a);
        let xor = page["records"].as_array()?.iter().fold(0i32, |x, r| x ^ r["checksum"].as_i64().unwrap() as i32);
        (page["bucket_checksum"].as_i64().map(|v| v as i32) == Some(xor)).then_some(page)
    });
    assert_eq!(page["records"].as_array().unwrap().len(), 2, "{page}");
    assert!(!page.to_string().contains("classified"));
    assert_ne!(kept(&db), before, "the kept checksum moved with the served rows");
    crate::harness::assert_bucket_checksums_follow_edges(&mut db.client());
    server.shutdown(Duration::from_secs(5));
}

/// DDL on a synced table while capture runs: the capture restarts on the current catalog and
/// recomputes the table's edge checksums, so rows that did not change since are covered as
/// clients now receive them (with the new column).
#[test]
fn edge_checksums_follow_ddl_on_a_synced_table_without_a_restart() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    // One row from before the DDL, one after: a column added to every row changes each row's
    // checksum by the same amount, which an even number of stale rows would cancel out.
    db.execute(&format!("INSERT INTO tasks (id, user_id, title) VALUES ('{T}', 'alice', 'one')"));
    wait_changelog(&db, "user:alice", "tasks", T);
    let mut a = Device::new(server.addr, "alice", "a1");
    db.execute(&format!(
        "ALTER TABLE tasks ADD COLUMN effort int NOT NULL DEFAULT 7; \
         INSERT INTO tasks (id, user_id, title) VALUES ('{B}', 'alice', 'two')"
    ));
    let page = wait_for(30, "the edge checksums recomputed with the new column", || {
        let schema = get(server.addr, "/sync/schema", &a.headers()).json();
        a.version = schema["schema_version"].as_i64()?;
        a.hash = schema["schema_hash"].as_str()?.to_string();
        let page = a
            .call(
                "/sync/rebuild",
                json!({"client_id": "a1", "bucket_id": "user:alice", "schema_version": a.version, "schema_hash": a.hash}),
            )
            .json();
        let records = page["records"].as_array()?;
        let xor = records.iter().fold(0i32, |x, r| x ^ r["checksum"].as_i64().unwrap() as i32);
        (records.len() == 2 && page["bucket_checksum"].as_i64().map(|v| v as i32) == Some(xor)).then_some(page)
    });
    assert!(page["records"].as_array().unwrap().iter().all(|r| r["data"]["effort"] == 7), "{page}");

    crate::harness::assert_bucket_checksums_follow_edges(&mut db.client());
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn child_rows_follow_their_parent_to_its_new_owner() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let mut a = Device::new(server.addr, "alice", "a1");
    let mut b = Device::new(server.addr, "bob", "b1");
    let comment = |id: &str| json!({"id": id, "table_name": "comments", "operation": "create", "data": {"task_id": T, "body": "child"}});
    let (c1, c2) = ("e0000000-0000-0000-0000-0000000000c1", "e0000000-0000-0000-0000-0000000000c2");
    assert_eq!(a.push(json!([task(T, "parent"), comment(c1), comment(c2)]))["accepted"].as_array().unwrap().len(), 3);
    let children = |rows: &std::collections::BTreeMap<(String, String), Value>| {
        [c1, c2].iter().filter(|c| rows.contains_key(&key("comments", c))).count()
    };
    a.pull_until("the task and its comments", |rows| children(rows) == 2);
    db.execute(&format!("UPDATE tasks SET user_id = 'bob' WHERE id = '{T}'"));
    b.pull_until("the transferred task's comments", |rows| rows.contains_key(&key("tasks", T)) && children(rows) == 2);
    a.pull_until("the comments gone with their task", |rows| {
        !rows.contains_key(&key("tasks", T)) && children(rows) == 0
    });
    // A soft-deleted parent holds no buckets itself, but its live children still follow it.
    db.execute(&format!("UPDATE tasks SET deleted_at = now() WHERE id = '{T}'"));
    db.execute(&format!("UPDATE tasks SET user_id = 'alice' WHERE id = '{T}'"));
    a.pull_until("the comments back with alice", |rows| children(rows) == 2);
    b.pull_until("the comments gone from bob", |rows| children(rows) == 0);
    // Editing the parent without moving it records nothing for its children.
    let before: i64 =
        db.client().query_one("SELECT count(*) FROM sync_changelog WHERE table_name = 'comments'", &[]).unwrap().get(0);
    db.execute(&format!("UPDATE tasks SET deleted_at = NULL, title = 'restored' WHERE id = '{T}'"));
    a.pull_until("the restored task", |rows| rows.get(&key("tasks", T)).is_some_and(|t| t["title"] == "restored"));
    db.execute(&format!("UPDATE tasks SET title = 'edited' WHERE id = '{T}'"));
    a.pull_until("the edited task", |rows| rows.get(&key("tasks", T)).is_some_and(|t| t["title"] == "edited"));
    let after: i64 =
        db.client().query_one("SELECT count(*) FROM sync_changelog WHERE table_name = 'comments'", &[]).unwrap().get(0);
    assert_eq!(before, after, "no changelog rows for children whose buckets did not change");
    server.shutdown(Duration::from_secs(5));
}
