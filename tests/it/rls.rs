//! Generated RLS policies apply cleanly and PostgreSQL itself refuses cross-user writes.

use std::time::Duration;

use serde_json::json;
use synchro::store::introspect;

use crate::client::{get, post};
use crate::harness::TestDb;
use crate::server::start;

#[test]
fn policies_bind_the_push_role() {
    let db = TestDb::new();
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
    let statements = synchro::rls::policies(&registry, "user_id");
    let sql = statements.join("\n");
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
    assert!(!sql.contains("sync_write_ins_categories"), "tables without ownership get no write policy");
    db.execute(&sql);
    db.execute(&format!(
        "CREATE ROLE push_role_{0} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, comments, categories TO push_role_{0};
         INSERT INTO tasks (id, user_id, title) VALUES ('60000000-0000-0000-0000-000000000001', 'bob', 'bobs')",
        db.name
    ));
    // PostgreSQL itself, with no help from synchro's checks: alice cannot touch bob's row.
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE push_role_{}; SELECT set_config('app.user_id', 'alice', true);",
        db.name
    ))
    .unwrap();
    assert_eq!(tx.execute("UPDATE tasks SET title = 'hijacked'", &[]).unwrap(), 0);
    assert_eq!(tx.query("SELECT * FROM tasks", &[]).unwrap().len(), 0, "bob's row is invisible to alice");
    let err = tx.batch_execute("INSERT INTO tasks (user_id, title) VALUES ('bob', 'forged')").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    tx.rollback().unwrap();
    // A row with an empty owner is a global row (so bucket assignment and the engine's scope
    // have it, even in a NOT NULL owner column): readable by everyone under the policies too,
    // with its comments; the policies let no client claim it at the top level.
    db.execute(
        "INSERT INTO tasks (id, user_id, title) VALUES ('60000000-0000-0000-0000-0000000000a2', '', 'empty owner'); \
         INSERT INTO comments (task_id, body) VALUES ('60000000-0000-0000-0000-0000000000a2', 'on a shared task');",
    );
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE push_role_{}; SELECT set_config('app.user_id', 'alice', true);",
        db.name
    ))
    .unwrap();
    let titles: Vec<String> =
        tx.query("SELECT title FROM tasks ORDER BY title", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(titles, ["empty owner"], "the ownerless row is visible, bob's is not");
    assert_eq!(tx.query("SELECT * FROM comments", &[]).unwrap().len(), 1, "a comment under a shared task");
    assert_eq!(tx.execute("UPDATE tasks SET title = 'claimed'", &[]).unwrap(), 0);
    tx.rollback().unwrap();
    // synchrod pushes through the same policies when PUSH_ROLE is set.
    let role = format!("push_role_{}", db.name);
    let server = start(
        &db,
        &[("SYNC_TABLES", "tasks,comments,categories"), ("PUSH_ROLE", &role), ("SLOT_NAME", &format!("s_{}", db.name))],
    );
    let h = "X-User-ID: alice\r\n";
    let s = get(server.addr, "/sync/schema", h).json();
    post(server.addr, "/sync/register", h, br#"{"client_id":"d","schema_version":0,"schema_hash":""}"#);
    let body = json!({"client_id": "d", "schema_version": s["schema_version"], "schema_hash": s["schema_hash"], "changes": [
        {"id": "60000000-0000-0000-0000-000000000002", "table_name": "tasks", "operation": "create", "data": {"title": "mine"}},
        {"id": "60000000-0000-0000-0000-000000000001", "table_name": "tasks", "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z", "data": {"title": "hijack"}}
    ]});
    let r = post(server.addr, "/sync/push", h, body.to_string().as_bytes()).json();
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        r["rejected"][0]["reason_code"], "record_not_found",
        "under RLS bob's row does not exist for alice: {r}"
    );
    server.shutdown(Duration::from_secs(5));
}
