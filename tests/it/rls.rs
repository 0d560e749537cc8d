//! Generated RLS policies apply cleanly and PostgreSQL itself refuses cross-user writes, granting
//! exactly what synchro's own checks grant in both `SHARED_ROWS_WRITABLE` modes.

use std::time::Duration;

use postgres::Transaction;
use serde_json::{json, Value};
use synchro::store::introspect;

use crate::client::{get, post};
use crate::harness::TestDb;
use crate::server::start;

const BOBS: &str = "60000000-0000-0000-0000-000000000001";
const SHARED: &str = "60000000-0000-0000-0000-0000000000a2";

/// The demo schema with `synchrod rls`'s policies for it applied, a push role, a row of bob's
/// and a task with an empty owner (a global row) with a comment: the generated SQL.
fn with_policies(db: &TestDb, shared_rows_writable: bool) -> String {
    db.execute(synchro::dev::DEMO_SCHEMA);
    let settings = introspect::RegistrySettings {
        tables: ["tasks", "comments", "categories"]
            .iter()
            .map(|t| synchro::config::TableName { schema: None, name: t.to_string() })
            .collect(),
        read_only: vec![],
        owner_column: "user_id".into(),
        excluded: vec![],
        updated_at_column: "updated_at".into(),
        deleted_at_column: "deleted_at".into(),
        rules: Default::default(),
    };
    let registry = introspect::load_registry(&mut db.client(), &settings).unwrap();
    let sql = synchro::rls::policies(&registry, "user_id", shared_rows_writable).join("\n");
    db.execute(&sql);
    db.execute(&format!(
        "CREATE ROLE push_role_{0} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, comments, categories TO push_role_{0};
         INSERT INTO tasks (id, user_id, title) VALUES ('{BOBS}', 'bob', 'bobs'), ('{SHARED}', '', 'empty owner');
         INSERT INTO comments (task_id, body) VALUES ('{SHARED}', 'on a shared task');",
        db.name
    ));
    sql
}

/// A transaction as the push role acting for alice, the way synchrod pushes under `PUSH_ROLE`.
fn as_alice<'a>(db: &TestDb, c: &'a mut postgres::Client) -> Transaction<'a> {
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE push_role_{}; SELECT set_config('app.user_id', 'alice', true);",
        db.name
    ))
    .unwrap();
    tx
}

/// Pushes `changes` as alice through a synchrod with `PUSH_ROLE` and `vars`.
fn push_as_alice(db: &TestDb, vars: &[(&str, &str)], changes: Value) -> Value {
    let role = format!("push_role_{}", db.name);
    let slot = format!("s_{}", db.name);
    let mut all =
        vec![("SYNC_TABLES", "tasks,comments,categories"), ("PUSH_ROLE", role.as_str()), ("SLOT_NAME", &slot)];
    all.extend_from_slice(vars);
    let server = start(db, &all);
    let h = "X-User-ID: alice\r\n";
    let s = get(server.addr, "/sync/schema", h).json();
    post(server.addr, "/sync/register", h, br#"{"client_id":"d","schema_version":0,"schema_hash":""}"#);
    let body = json!({"client_id": "d", "schema_version": s["schema_version"], "schema_hash": s["schema_hash"], "changes": changes});
    let r = post(server.addr, "/sync/push", h, body.to_string().as_bytes()).json();
    server.shutdown(Duration::from_secs(5));
    r
}

fn update(id: &str, title: &str) -> Value {
    json!({"id": id, "table_name": "tasks", "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z", "data": {"title": title}})
}

#[test]
fn policies_bind_the_push_role() {
    let db = TestDb::new();
    let sql = with_policies(&db, false);
    assert!(sql.contains("CREATE POLICY \"sync_read_comments\""), "{sql}");
    assert!(
        sql.contains(
            "EXISTS (SELECT 1 FROM \"public\".\"tasks\" p1 WHERE p1.\"id\" = \"public\".\"comments\".\"task_id\""
        ),
        "{sql}"
    );
    assert!(
        sql.contains("CREATE POLICY \"sync_read_categories\" ON \"public\".\"categories\" FOR SELECT USING (true);")
    );
    assert!(!sql.contains("sync_write_ins_categories"), "shared rows read-only: no write policy without ownership");
    // PostgreSQL itself, with no help from synchro's checks: alice cannot touch bob's row.
    let mut c = db.client();
    let mut tx = as_alice(&db, &mut c);
    assert_eq!(tx.execute("UPDATE tasks SET title = 'hijacked' WHERE user_id = 'bob'", &[]).unwrap(), 0);
    let titles: Vec<String> =
        tx.query("SELECT title FROM tasks ORDER BY title", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    // A row with an empty owner is a global row (so bucket assignment and the engine's scope
    // have it, even in a NOT NULL owner column): readable by everyone, with its comments.
    assert_eq!(titles, ["empty owner"], "the ownerless row is visible, bob's is not");
    assert_eq!(tx.query("SELECT * FROM comments", &[]).unwrap().len(), 1, "a comment under a shared task");
    let err = tx.batch_execute("INSERT INTO tasks (user_id, title) VALUES ('bob', 'forged')").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    tx.rollback().unwrap();
    // With shared rows read-only, the policies let no client change them or attach to them.
    let mut tx = as_alice(&db, &mut c);
    assert_eq!(tx.execute("UPDATE tasks SET title = 'claimed'", &[]).unwrap(), 0);
    assert_eq!(tx.execute("UPDATE comments SET body = 'edited'", &[]).unwrap(), 0, "nor rows under them");
    assert!(tx.batch_execute("INSERT INTO categories (name) VALUES ('mine')").is_err());
    tx.rollback().unwrap();
    // synchrod pushes through the same policies when PUSH_ROLE is set, and agrees with them.
    let r = push_as_alice(
        &db,
        &[("SHARED_ROWS_WRITABLE", "false")],
        json!([
            {"id": "60000000-0000-0000-0000-000000000002", "table_name": "tasks", "operation": "create", "data": {"title": "mine"}},
            update(BOBS, "hijack"),
            update(SHARED, "claimed"),
        ]),
    );
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        r["rejected"][0]["reason_code"], "record_not_found",
        "under RLS bob's row does not exist for alice: {r}"
    );
    assert_eq!(r["rejected"][1]["reason_code"], "ownership_violation", "{r}");
}

/// The contract's default, `SHARED_ROWS_WRITABLE=true`: the policies let every user change
/// shared rows, as synchro's own checks do, and still nobody else's rows.
#[test]
fn policies_let_everyone_write_shared_rows_when_they_are_writable() {
    let db = TestDb::new();
    let sql = with_policies(&db, true);
    assert!(sql.contains("CREATE POLICY \"sync_write_ins_categories\""), "{sql}");
    let mut c = db.client();
    let mut tx = as_alice(&db, &mut c);
    assert_eq!(tx.execute("UPDATE tasks SET title = 'edited' WHERE user_id = ''", &[]).unwrap(), 1);
    assert_eq!(tx.execute("UPDATE comments SET body = 'edited'", &[]).unwrap(), 1, "a comment under a shared task");
    assert_eq!(tx.execute("UPDATE tasks SET title = 'hijacked' WHERE user_id = 'bob'", &[]).unwrap(), 0);
    tx.batch_execute("INSERT INTO categories (name) VALUES ('mine')").unwrap();
    let err = tx.batch_execute("INSERT INTO tasks (user_id, title) VALUES ('bob', 'forged')").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    tx.rollback().unwrap();
    let r = push_as_alice(&db, &[], json!([update(BOBS, "hijack"), update(SHARED, "edited by alice")]));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["accepted"][0]["id"], SHARED, "{r}");
    assert_eq!(r["rejected"][0]["reason_code"], "record_not_found", "{r}");
}
