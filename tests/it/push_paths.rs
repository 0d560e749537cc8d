//! The set-based push against the per-record path: the same batches, pushed through two
//! engines (`PUSH_SET_BASED` on and off) into two copies of one database, give the same
//! response, the same hook calls and the same rows, for mixed batches that hold every outcome
//! and for random ones; with and without row-level security under `PUSH_ROLE`.

use std::sync::{Arc, Mutex};

use postgres::Transaction;
use serde_json::{json, Value};
use synchro::engine::{Engine, EngineSettings, Hooks, LastWriterWins, PushCounts};
use synchro::protocol::{PushRecord, PushRequest, RegisterRequest, SchemaPair};
use synchro::store::introspect::{self, RegistrySettings};
use synchro::store::{migrations, pool};
use synchro::types::UserId;

use crate::harness::{cluster, TestDb};
use crate::rng::Rng;

/// The demo tables plus: `notes` (hard deletes, no timestamps), `labels` (a unique index besides
/// the key), `folders` (a foreign key to itself), `items` (none of these: runs of any shape
/// share statements), and a trigger on `tasks` that fails a write with a transient-looking
/// error (`retry-me`) or skips it (`skip-me`).
const EXTRA: &str = r#"
CREATE TABLE notes (id bigint PRIMARY KEY, user_id text, body text NOT NULL DEFAULT '');
CREATE TABLE labels (id uuid PRIMARY KEY, user_id text NOT NULL, name text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz, UNIQUE (user_id, name));
CREATE TABLE folders (id uuid PRIMARY KEY, user_id text NOT NULL, parent_id uuid REFERENCES folders (id),
    name text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
CREATE TABLE items (id uuid PRIMARY KEY, user_id text NOT NULL, title text NOT NULL DEFAULT '',
    qty integer NOT NULL DEFAULT 0 CHECK (qty >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.title = 'retry-me' THEN RAISE EXCEPTION 'try again later'; END IF;
    IF NEW.title = 'skip-me' THEN RETURN NULL; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION refuse();
"#;

const TABLES: [&str; 7] = ["tasks", "comments", "categories", "notes", "labels", "folders", "items"];

/// Rows both copies start from.
const SEED: &str = r#"
INSERT INTO tasks (id, user_id, title, updated_at) VALUES
    ('a0000000-0000-0000-0000-000000000001', 'alice', 'a1', '2020-01-01T00:00:00Z'),
    ('a0000000-0000-0000-0000-000000000003', 'alice', 'a3', '2020-01-01T00:00:00Z'),
    ('b0000000-0000-0000-0000-000000000001', 'bob', 'b1', '2020-01-01T00:00:00Z'),
    ('50000000-0000-0000-0000-000000000001', '', 'shared', '2020-01-01T00:00:00Z');
INSERT INTO tasks (id, user_id, title, updated_at, deleted_at) VALUES
    ('a0000000-0000-0000-0000-000000000002', 'alice', 'a2', '2020-01-01T00:00:00Z', '2020-02-01T00:00:00Z');
INSERT INTO comments (id, task_id, body, updated_at) VALUES
    ('c0000000-0000-0000-0000-0000000000a1', 'a0000000-0000-0000-0000-000000000001', 'on a1', '2020-01-01T00:00:00Z'),
    ('c0000000-0000-0000-0000-0000000000b1', 'b0000000-0000-0000-0000-000000000001', 'on b1', '2020-01-01T00:00:00Z');
INSERT INTO labels (id, user_id, name, updated_at) VALUES
    ('1a000000-0000-0000-0000-000000000001', 'alice', 'x', '2020-01-01T00:00:00Z'),
    ('1a000000-0000-0000-0000-000000000002', 'alice', 'y', '2020-01-01T00:00:00Z');
INSERT INTO folders (id, user_id, name, updated_at) VALUES
    ('f0000000-0000-0000-0000-000000000000', 'alice', 'root', '2020-01-01T00:00:00Z');
INSERT INTO notes (id, user_id, body) VALUES (1, 'alice', 'n1');
INSERT INTO items (id, user_id, title, updated_at, deleted_at) VALUES
    ('17000000-0000-0000-0000-000000000001', 'alice', 'live', '2020-01-01T00:00:00Z', NULL),
    ('17000000-0000-0000-0000-000000000002', 'alice', 'gone', '2020-01-01T00:00:00Z', '2020-02-01T00:00:00Z'),
    ('17000000-0000-0000-0000-000000000003', 'bob', 'bobs', '2020-01-01T00:00:00Z', NULL),
    ('17000000-0000-0000-0000-000000000004', 'bob', 'bobs gone', '2020-01-01T00:00:00Z', '2020-02-01T00:00:00Z');
"#;

/// Records every hook call, so both paths can be compared on them too.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Hooks for Recorder {
    fn authorize(&self, user: &UserId, record: &PushRecord) -> Result<(), String> {
        self.0.lock().unwrap().push(format!("authorize {} {}", user.as_str(), record.id));
        let title = record.data.as_ref().and_then(|d| d.get("title")).and_then(Value::as_str).unwrap_or("");
        if title.contains("forbidden") {
            return Err("titles may not say forbidden".into());
        }
        Ok(())
    }

    fn on_push_accepted(
        &self,
        _tx: &mut Transaction<'_>,
        user: &UserId,
        applied: &[&PushRecord],
    ) -> Result<(), String> {
        let ids: Vec<&str> = applied.iter().map(|r| r.id.as_str()).collect();
        self.0.lock().unwrap().push(format!("accepted {} {ids:?}", user.as_str()));
        Ok(())
    }

    fn on_conflict(&self, user: &UserId, record: &PushRecord, reason: &str) {
        self.0.lock().unwrap().push(format!("conflict {} {} {reason}", user.as_str(), record.id));
    }
}

/// Two copies of one database, each behind an engine: `set` pushes set-based, `one` record by
/// record.
struct Paths {
    // Engines first: their pools close before the databases are dropped.
    engines: [Engine; 2],
    hooks: [Arc<Recorder>; 2],
    schema: SchemaPair,
    dbs: [TestDb<'static>; 2],
}

impl Paths {
    /// `rls`: row-level security policies on every table, and pushes under a `PUSH_ROLE` they bind.
    fn new(rls: bool) -> Paths {
        let first = TestDb::new();
        first.execute(synchro::dev::DEMO_SCHEMA);
        first.execute(EXTRA);
        first.execute(SEED);
        migrations::apply(&mut first.client()).unwrap();
        let settings = |hooks: Arc<Recorder>, role: Option<String>| EngineSettings {
            registry: RegistrySettings {
                tables: TABLES
                    .iter()
                    .map(|t| synchro::config::TableName { schema: None, name: t.to_string() })
                    .collect(),
                read_only: vec![synchro::config::TableName { schema: None, name: "categories".into() }],
                owner_column: "user_id".into(),
                excluded: vec![],
                updated_at_column: "updated_at".into(),
                deleted_at_column: "deleted_at".into(),
                rules: Default::default(),
            },
            min_client_version: String::new(),
            push_role: role,
            resolver: Arc::new(LastWriterWins::default()),
            hooks,
        };
        let role = rls.then(|| format!("push_role_{}", first.name));
        if let Some(role) = &role {
            let registry =
                introspect::load_registry(&mut first.client(), &settings(Arc::default(), None).registry).unwrap();
            first.execute(&synchro::rls::policies(&registry, "user_id", true).join("\n"));
            first.execute(&format!(
                "CREATE ROLE {role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role}",
                TABLES.join(", ")
            ));
        }
        let second = TestDb { cluster: cluster(), name: format!("{}_copy", first.name) };
        cluster().psql("postgres", &format!("CREATE DATABASE {} TEMPLATE {}", second.name, first.name)).unwrap();
        let hooks = [Arc::new(Recorder::default()), Arc::new(Recorder::default())];
        let engine = |db: &TestDb, hooks: &Arc<Recorder>, set_based: bool| {
            Engine::new(pool::connect_pool(&db.url(), 4).unwrap(), settings(hooks.clone(), role.clone()))
                .unwrap()
                .with_set_based_push(set_based)
        };
        let engines = [engine(&first, &hooks[0], true), engine(&second, &hooks[1], false)];
        let mut schema = SchemaPair::default();
        for e in &engines {
            for user in ["alice", "bob"] {
                let req = RegisterRequest {
                    client_id: "d".into(),
                    client_name: None,
                    platform: String::new(),
                    app_version: String::new(),
                    schema: SchemaPair::default(),
                };
                let r = e.register(&UserId::new(user).unwrap(), &req).unwrap();
                schema = SchemaPair { version: r.schema_version, hash: r.schema_hash };
            }
        }
        Paths { engines, hooks, schema, dbs: [first, second] }
    }

    /// Pushes `changes` (JSON as an SDK sends it) as `user` through both engines and checks
    /// that both give the same response, the same hook calls and the same rows. Returns the
    /// set-based response and how the set-based engine applied it.
    fn push(&self, user: &str, changes: Value) -> (Value, PushCounts) {
        let body = json!({"client_id": "d", "changes": changes, "schema_version": self.schema.version,
                          "schema_hash": self.schema.hash});
        let req = PushRequest::decode(body.as_object().unwrap()).unwrap();
        let user = UserId::new(user).unwrap();
        let before = self.engines[0].push_counts();
        let responses: Vec<Value> =
            self.engines.iter().map(|e| serde_json::to_value(e.push(&user, &req).unwrap()).unwrap()).collect();
        let after = self.engines[0].push_counts();
        let counts = PushCounts {
            set_runs: after.set_runs - before.set_runs,
            replayed_runs: after.replayed_runs - before.replayed_runs,
            per_record: after.per_record - before.per_record,
            retried: after.retried - before.retried,
        };
        assert_eq!(
            normalize(responses[0].clone()),
            normalize(responses[1].clone()),
            "set-based (left) and per-record (right) responses differ"
        );
        assert_eq!(self.hooks[0].take(), self.hooks[1].take(), "hook calls differ");
        assert_eq!(self.rows(0), self.rows(1), "the two copies hold different rows");
        (responses[0].clone(), counts)
    }

    /// Every row of every table of copy `i`, timestamps written by a push made comparable.
    fn rows(&self, i: usize) -> Value {
        let mut c = self.dbs[i].client();
        let mut out = serde_json::Map::new();
        for t in TABLES {
            let r = c
                .query_one(&format!("SELECT COALESCE(json_agg(t ORDER BY t.id), '[]')::text FROM {t} t"), &[])
                .unwrap();
            out.insert(t.into(), normalize(serde_json::from_str(&r.get::<_, String>(0)).unwrap()));
        }
        Value::Object(out)
    }
}

/// Replaces every timestamp by a marker: `now()` differs between the two copies.
fn normalize(v: Value) -> Value {
    match v {
        Value::String(s) if is_timestamp(&s) => Value::String("<time>".into()),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b' ') && b[13] == b':'
}

/// `(id, status, reason_code)` of every result, accepted then rejected.
fn outcomes(r: &Value) -> Vec<(String, String, String)> {
    ["accepted", "rejected"]
        .iter()
        .flat_map(|list| r[list].as_array().unwrap().iter())
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_string(),
                x["status"].as_str().unwrap().to_string(),
                x["reason_code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn create(table: &str, id: &str, data: Value) -> Value {
    json!({"id": id, "table_name": table, "operation": "create", "client_updated_at": "2099-01-01T00:00:00Z", "data": data})
}

fn update(table: &str, id: &str, data: Value) -> Value {
    json!({"id": id, "table_name": table, "operation": "update", "client_updated_at": "2099-01-01T00:00:00Z", "data": data})
}

fn delete(table: &str, id: &str) -> Value {
    json!({"id": id, "table_name": table, "operation": "delete"})
}

const A1: &str = "a0000000-0000-0000-0000-000000000001";
const A2: &str = "a0000000-0000-0000-0000-000000000002";
const A3: &str = "a0000000-0000-0000-0000-000000000003";
const B1: &str = "b0000000-0000-0000-0000-000000000001";
const S1: &str = "50000000-0000-0000-0000-000000000001";

/// One batch with every outcome, checked on both paths, plus the outcomes expected of it.
fn mixed_batch(paths: &Paths, rls: bool) {
    let parent = "a0000000-0000-0000-0000-0000000000f1";
    let twice = "a0000000-0000-0000-0000-0000000000d1";
    let batch = json!([
        create("tasks", A1, json!({"title": "again"})),
        {"id": A3, "table_name": "tasks", "operation": "update", "client_updated_at": "2001-01-01T00:00:00Z",
         "base_updated_at": "2001-01-01T00:00:00Z", "data": {"title": "stale"}},
        create("tasks", "a0000000-0000-0000-0000-0000000000e1", json!({"title": "bad", "priority": "high"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000e2", json!({"title": "retry-me"})),
        create("tasks", parent, json!({"title": "parent"})),
        create("comments", "c0000000-0000-0000-0000-0000000000f1", json!({"task_id": parent, "body": "child"})),
        create("tasks", twice, json!({"title": "first"})),
        create("tasks", twice, json!({"title": "second"})),
        update("tasks", B1, json!({"title": "hijack"})),
        create("comments", "c0000000-0000-0000-0000-0000000000f2", json!({"task_id": B1, "body": "under bob's"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000e3", json!({"title": "skip-me"})),
        delete("tasks", A2),
        update("tasks", A2, json!({"title": "on a deleted row"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000e4", json!({"title": "forbidden words"})),
        update("categories", "00000000-0000-0000-0000-00000000c001", json!({"name": "mine"})),
        create("nope", "1", json!({})),
        {"id": "a0000000-0000-0000-0000-0000000000e5", "table_name": "tasks", "operation": "upsert", "data": {}},
        {"id": "a0000000-0000-0000-0000-0000000000e6", "table_name": "tasks", "operation": "create", "data": null},
        update("tasks", "not-a-uuid", json!({"title": "x"})),
        create("labels", "1a000000-0000-0000-0000-000000000003", json!({"name": "x"})),
        create("notes", "2", json!({"body": "n2"})),
        update("notes", "2", json!({"body": "n2'"})),
        delete("notes", "2"),
        delete("notes", "2"),
        create("folders", "f0000000-0000-0000-0000-000000000002", json!({"parent_id": "f0000000-0000-0000-0000-000000000003"})),
        create("folders", "f0000000-0000-0000-0000-000000000003", json!({"parent_id": "f0000000-0000-0000-0000-000000000000"})),
        delete("tasks", A3),
        create("tasks", A2, json!({"title": "resurrected"})),
        update("tasks", S1, json!({"title": "shared, changed"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000a1", json!({"title": "plain 1"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000a2", json!({"title": "plain 2"})),
        create("tasks", "a0000000-0000-0000-0000-0000000000a3", json!({"title": "plain 3"})),
    ]);
    let (r, counts) = paths.push("alice", batch);
    let got = outcomes(&r);
    let want = |id: &str, status: &str, reason: &str| (id.to_string(), status.to_string(), reason.to_string());
    // Under RLS bob's task does not exist for alice, and a comment under it fails PostgreSQL's
    // own WITH CHECK before synchro's scope check could see it: an ownership violation too.
    let (bob_update, bob_child) = if rls {
        (
            want(B1, "rejected_terminal", "record_not_found"),
            want("c0000000-0000-0000-0000-0000000000f2", "rejected_terminal", "ownership_violation"),
        )
    } else {
        (
            want(B1, "rejected_terminal", "ownership_violation"),
            want("c0000000-0000-0000-0000-0000000000f2", "rejected_terminal", "ownership_violation"),
        )
    };
    let mut expected = vec![
        // accepted
        want(parent, "applied", ""),
        want("c0000000-0000-0000-0000-0000000000f1", "applied", ""),
        want(twice, "applied", ""),
        want(A2, "applied", "already_deleted"),
        want("2", "applied", ""),
        want("2", "applied", ""),
        want("2", "applied", ""),
        want("2", "applied", "already_deleted"),
        want("f0000000-0000-0000-0000-000000000003", "applied", ""),
        want(A3, "applied", ""),
        want(A2, "applied", ""),
    ];
    // Shared rows are writable by default, and the generated policies say so too: the update of
    // the shared task applies with and without RLS.
    expected.push(want(S1, "applied", ""));
    expected.extend([
        want("a0000000-0000-0000-0000-0000000000a1", "applied", ""),
        want("a0000000-0000-0000-0000-0000000000a2", "applied", ""),
        want("a0000000-0000-0000-0000-0000000000a3", "applied", ""),
        // rejected
        want(A1, "conflict", "record_exists"),
        want(A3, "conflict", "server_won_conflict"),
        want("a0000000-0000-0000-0000-0000000000e1", "rejected_terminal", "create_failed"),
        want("a0000000-0000-0000-0000-0000000000e2", "rejected_retryable", "create_failed"),
        want(twice, "conflict", "record_exists"),
        bob_update,
        bob_child,
        want("a0000000-0000-0000-0000-0000000000e3", "rejected_retryable", "create_failed"),
        want(A2, "conflict", "record_deleted"),
        want("a0000000-0000-0000-0000-0000000000e4", "rejected_terminal", "ownership_violation"),
        want("00000000-0000-0000-0000-00000000c001", "rejected_terminal", "table_read_only"),
        want("1", "rejected_terminal", "table_not_registered"),
        want("a0000000-0000-0000-0000-0000000000e5", "rejected_terminal", "invalid_operation"),
        want("a0000000-0000-0000-0000-0000000000e6", "rejected_terminal", "invalid_data"),
        want("not-a-uuid", "rejected_terminal", "invalid_data"),
        want("1a000000-0000-0000-0000-000000000003", "rejected_terminal", "create_failed"),
        want("f0000000-0000-0000-0000-000000000002", "rejected_terminal", "create_failed"),
    ]);
    assert_eq!(got, expected, "{r:#}");
    let rejected = r["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["server_version"]["data"]["title"], "a1", "record_exists shows the row");
    assert_eq!(rejected[1]["message"], "server version is newer");
    assert_eq!(rejected[4]["server_version"]["data"]["title"], "first", "the duplicate sees the first create");
    assert!(rejected[8]["server_version"]["deleted_at"].is_string(), "record_deleted shows deleted_at");
    // PostgreSQL leaves the key out of the error when row-level security applies.
    let taken = if rls { "a value" } else { "user_id, name" };
    assert_eq!(rejected[15]["message"], format!("failed to create record: {taken} is already used by another record"));
    let accepted = r["accepted"].as_array().unwrap();
    assert!(accepted[0]["server_updated_at"].is_string());
    assert!(accepted[9]["server_deleted_at"].is_string(), "soft delete: {}", accepted[9]);
    // The run with failing records was replayed record by record in a second attempt; the
    // others were applied set-based.
    assert_eq!(counts.retried, 1, "{counts:?}");
    assert!(counts.replayed_runs >= 1 && counts.set_runs >= 5, "{counts:?}");
}

#[test]
fn mixed_batches_give_the_per_record_outcomes() {
    let paths = Paths::new(false);
    mixed_batch(&paths, false);
    // A clean batch in one run: one lookup and one insert, no second attempt.
    let changes: Vec<Value> = (0..100)
        .map(|i| create("tasks", &format!("e0000000-0000-0000-0000-{i:012}"), json!({"title": format!("t{i}")})))
        .collect();
    let (r, counts) = paths.push("alice", Value::Array(changes));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 100);
    assert_eq!(counts, PushCounts { set_runs: 1, ..PushCounts::default() });
    // Updates of those rows and children under them, interleaved: runs of one, still set-based.
    let changes: Vec<Value> = (0..10)
        .flat_map(|i| {
            let task = format!("e0000000-0000-0000-0000-{i:012}");
            [
                update("tasks", &task, json!({"title": format!("u{i}"), "done": true})),
                create("comments", &format!("ce000000-0000-0000-0000-{i:012}"), json!({"task_id": task, "body": "c"})),
            ]
        })
        .collect();
    let (r, counts) = paths.push("alice", Value::Array(changes));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 20, "{r}");
    assert_eq!(counts, PushCounts { set_runs: 20, ..PushCounts::default() });
    // Soft deletes in one run, then bob's view: nothing of alice's is his to delete.
    let changes: Vec<Value> = (0..10).map(|i| delete("tasks", &format!("e0000000-0000-0000-0000-{i:012}"))).collect();
    let (r, _) = paths.push("bob", Value::Array(changes.clone()));
    assert!(outcomes(&r).iter().all(|(_, s, c)| s == "rejected_terminal" && c == "ownership_violation"), "{r}");
    let (r, counts) = paths.push("alice", Value::Array(changes));
    assert!(r["accepted"].as_array().unwrap().iter().all(|x| x["server_deleted_at"].is_string()), "{r}");
    assert_eq!(counts.set_runs, 1);
}

#[test]
fn mixed_batches_under_row_level_security_give_the_per_record_outcomes() {
    let paths = Paths::new(true);
    mixed_batch(&paths, true);
}

#[test]
fn rows_that_constrain_each_other_are_written_in_request_order() {
    let paths = Paths::new(false);
    let l1 = "1a000000-0000-0000-0000-000000000001";
    let l2 = "1a000000-0000-0000-0000-000000000002";
    // Taking a name before its holder gives it up fails, in one statement or not.
    let (r, _) = paths
        .push("alice", json!([update("labels", l1, json!({"name": "y"})), update("labels", l2, json!({"name": "z"}))]));
    assert_eq!(r["rejected"][0]["reason_code"], "update_failed", "{r}");
    assert_eq!(r["accepted"][0]["id"], l2);
    // In the other order both apply.
    let (r, _) = paths
        .push("alice", json!([update("labels", l2, json!({"name": "w"})), update("labels", l1, json!({"name": "z"}))]));
    assert_eq!(r["accepted"].as_array().unwrap().len(), 2, "{r}");
    // A child before its parent in one run of a self-referencing table fails like it does alone.
    let (r, _) = paths.push(
        "alice",
        json!([
            create(
                "folders",
                "f0000000-0000-0000-0000-000000000011",
                json!({"parent_id": "f0000000-0000-0000-0000-000000000012"})
            ),
            create("folders", "f0000000-0000-0000-0000-000000000012", json!({"parent_id": null})),
            create(
                "folders",
                "f0000000-0000-0000-0000-000000000013",
                json!({"parent_id": "f0000000-0000-0000-0000-000000000012"})
            ),
        ]),
    );
    assert_eq!(
        outcomes(&r).iter().map(|(_, s, _)| s.as_str()).collect::<Vec<_>>(),
        ["applied", "applied", "rejected_terminal"],
        "{r}"
    );
    // Two spellings of one key in one run are one row.
    let upper = "A0000000-0000-0000-0000-0000000000C1";
    let (r, counts) = paths.push(
        "alice",
        json!([
            create("tasks", upper, json!({"title": "upper"})),
            create("tasks", &upper.to_lowercase(), json!({"title": "lower"}))
        ]),
    );
    assert_eq!(r["rejected"][0]["reason_code"], "record_exists", "{r}");
    assert_eq!(counts, PushCounts { replayed_runs: 1, ..PushCounts::default() });
}

#[test]
fn runs_of_creates_give_the_per_record_outcomes() {
    let paths = Paths::new(false);
    let item = |n: u32| format!("17000000-0000-0000-0000-{n:012}");
    let batch = json!([
        create("items", &item(10), json!({"title": "new"})),
        create("items", &item(1), json!({"title": "exists"})),
        create("items", &item(2), json!({"title": "resurrected"})),
        create("items", &item(3), json!({"title": "bob's"})),
        create("items", &item(4), json!({"title": "bob's, deleted"})),
        create("items", &item(1), json!({"qty": "many"})),
        create("items", &item(11), json!({"qty": 1.5})),
        create("items", &item(12), json!({"title": "new too", "qty": 3})),
    ]);
    let (r, counts) = paths.push("alice", batch);
    let got: Vec<(String, String)> =
        outcomes(&r).into_iter().map(|(id, status, reason)| (id, format!("{status} {reason}"))).collect();
    let want: Vec<(String, String)> = [
        (10, "applied "),
        (2, "applied "),
        (12, "applied "),
        (1, "conflict record_exists"),
        (3, "conflict record_exists"),
        (4, "rejected_terminal ownership_violation"),
        (1, "conflict record_exists"),
        (11, "rejected_terminal invalid_data"),
    ]
    .iter()
    .map(|(n, o)| (item(*n), o.to_string()))
    .collect();
    assert_eq!(got, want, "{r:#}");
    let rejected = r["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["server_version"]["data"]["title"], "live");
    assert!(rejected[1].get("server_version").is_none(), "bob's row is not shown to alice");
    // Two runs (item 1 comes again); "many" is never cast: the row exists, a conflict.
    assert_eq!(counts, PushCounts { set_runs: 2, ..PushCounts::default() });
    // A clean run is applied set-based; a run whose insert fails (a CHECK) replays record by
    // record, in a second attempt.
    let (_, counts) = paths.push(
        "alice",
        json!([create("items", &item(20), json!({"title": "a"})), create("items", &item(21), json!({"title": "b"}))]),
    );
    assert_eq!(counts, PushCounts { set_runs: 1, ..PushCounts::default() });
    let (r, counts) = paths.push(
        "alice",
        json!([create("items", &item(22), json!({"qty": -1})), create("items", &item(23), json!({"title": "fine"}))]),
    );
    assert_eq!(outcomes(&r)[0], (item(23), "applied".to_string(), String::new()));
    assert_eq!(r["rejected"][0]["message"], "failed to create record: qty is not allowed by the table's rules");
    assert_eq!(counts, PushCounts { replayed_runs: 1, retried: 1, ..PushCounts::default() });
    // Two spellings of one key.
    let upper = "17000000-0000-0000-0000-0000000000AB";
    let (r, _) = paths.push(
        "alice",
        json!([
            create("items", upper, json!({"title": "upper"})),
            create("items", &upper.to_lowercase(), json!({"title": "lower"}))
        ]),
    );
    assert_eq!(r["rejected"][0]["reason_code"], "record_exists", "{r}");
}

/// A random record: any table, operation and user-visible outcome, over small pools of ids so
/// that records collide with each other, with other users' rows and with earlier batches.
fn random_record(rng: &mut Rng) -> Value {
    let task = |rng: &mut Rng| format!("{}0000000-0000-0000-0000-00000000000{}", rng.pick(&["a", "b"]), rng.below(6));
    let op = *rng.pick(&["create", "create", "update", "delete"]);
    let mut rec = match rng.below(10) {
        0..=3 => {
            let title = *rng.pick(&["t", "u", "v", "retry-me", "skip-me", "forbidden"]);
            let mut data = json!({"title": title, "done": rng.below(2) == 1});
            if rng.below(8) == 0 {
                data["priority"] = json!("high");
            }
            json!({"id": task(rng), "table_name": "tasks", "data": data})
        }
        4 | 5 => json!({"id": format!("c0000000-0000-0000-0000-00000000000{}", rng.below(6)), "table_name": "comments",
                        "data": {"task_id": task(rng), "body": "c"}}),
        6 => json!({"id": format!("1a000000-0000-0000-0000-00000000000{}", rng.below(5)), "table_name": "labels",
                    "data": {"name": *rng.pick(&["x", "y", "z"])}}),
        7 => json!({"id": format!("f0000000-0000-0000-0000-00000000000{}", rng.below(5)), "table_name": "folders",
                    "data": {"parent_id": *rng.pick(&[Value::Null, json!("f0000000-0000-0000-0000-000000000000"),
                                                      json!("f0000000-0000-0000-0000-000000000001")])}}),
        8 if rng.below(2) == 0 => json!({"id": rng.below(4).to_string(), "table_name": "notes", "data": {"body": "n"}}),
        8 => json!({"id": format!("17000000-0000-0000-0000-00000000000{}", rng.below(6)), "table_name": "items",
                    "data": {"title": "i", "qty": *rng.pick(&[json!(1), json!(-1), json!("x"), Value::Null])}}),
        _ => json!({"id": rng.pick(&["not-a-uuid", A1, S1]), "table_name": "tasks", "data": {"title": "w"}}),
    };
    rec["operation"] = json!(op);
    match rng.below(4) {
        0 => rec["client_updated_at"] = json!("2001-01-01T00:00:00Z"),
        1 | 2 => rec["client_updated_at"] = json!("2099-01-01T00:00:00Z"),
        _ => {}
    }
    if rng.below(4) == 0 {
        rec["base_updated_at"] = json!(*rng.pick(&["2020-01-01T00:00:00Z", "2001-01-01T00:00:00Z", "garbage"]));
    }
    rec
}

#[test]
fn random_batches_give_the_per_record_outcomes() {
    let paths = Paths::new(false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = PushCounts::default();
    for _ in 0..40 {
        let n = 1 + rng.below(25);
        let batch: Vec<Value> = (0..n).map(|_| random_record(&mut rng)).collect();
        let user = *rng.pick(&["alice", "bob"]);
        let (_, c) = paths.push(user, Value::Array(batch));
        total.set_runs += c.set_runs;
        total.replayed_runs += c.replayed_runs;
        total.retried += c.retried;
    }
    // The generator reaches both the set-based path and the replays.
    assert!(total.set_runs > 100 && total.replayed_runs > 5 && total.retried > 5, "{total:?}");
}

/// A batch as a device of `user` might send after a while offline: tasks created with comments
/// under them in the same batch, edits and deletes of its own and others' rows (the id pools
/// are shared), duplicates, stale and fresh client times.
fn device_batch(rng: &mut Rng, round: u64) -> Value {
    let n = 5 + rng.below(30);
    let task = |rng: &mut Rng| format!("7a000000-0000-0000-0000-{:012}", rng.below(40));
    let batch: Vec<Value> = (0..n)
        .map(|k| {
            let id = task(rng);
            let stamp = *rng.pick(&["2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z"]);
            match rng.below(8) {
                0..=2 => create("tasks", &id, json!({"title": format!("r{round}.{k}"), "done": rng.below(2) == 1})),
                3 | 4 => {
                    json!({"id": format!("7c000000-0000-0000-0000-{:012}", rng.below(60)), "table_name": "comments",
                                "operation": "create", "data": {"task_id": id, "body": format!("c{round}.{k}")}})
                }
                5 => json!({"id": id, "table_name": "tasks", "operation": "update", "client_updated_at": stamp,
                            "data": {"title": format!("u{round}.{k}")}}),
                6 => delete("tasks", &id),
                _ => delete("comments", &format!("7c000000-0000-0000-0000-{:012}", rng.below(60))),
            }
        })
        .collect();
    Value::Array(batch)
}

#[test]
fn pushes_from_many_devices_at_once_converge() {
    use crate::sync_api::{start_demo, truth, Device};
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let users = ["alice", "bob", "carol"];
    let mut devices: Vec<Device> = users
        .iter()
        .flat_map(|u| (0..2).map(move |d| (u, d)))
        .map(|(u, d)| Device::new(server.addr, u, &format!("{u}-{d}")))
        .collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..8 {
        let batches: Vec<Value> = devices.iter().map(|_| device_batch(&mut rng, round)).collect();
        // Every device pushes at the same time, each batch in one request.
        std::thread::scope(|s| {
            for (d, batch) in devices.iter().zip(&batches) {
                s.spawn(move || {
                    let r = d.push(batch.clone());
                    let results = r["accepted"].as_array().unwrap().len() + r["rejected"].as_array().unwrap().len();
                    assert_eq!(results, batch.as_array().unwrap().len(), "one result per record: {r}");
                });
            }
        });
        if round % 3 == 0 {
            db.execute(&format!(
                "UPDATE tasks SET title = 'sql{round}' WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 3)"
            ));
        }
        for d in devices.iter_mut().filter(|_| rng.below(2) == 0) {
            d.pull();
        }
    }
    let all: Vec<_> = users.iter().map(|u| truth(&db, u)).collect();
    for table in ["tasks", "comments"] {
        assert!(all.iter().any(|t| t.keys().any(|(tb, _)| tb == table)), "the workload produced {table}");
    }
    // A shared marker row: once a device has it, it has everything committed before it.
    db.execute("INSERT INTO categories (id, name) VALUES ('00000000-0000-0000-0000-0000000000fe', 'marker')");
    for d in devices.iter_mut() {
        d.pull_until("the marker", |rows| {
            rows.contains_key(&("categories".into(), "00000000-0000-0000-0000-0000000000fe".into()))
        });
        assert_eq!(d.rows, truth(&db, &d.user), "{} {} holds exactly PostgreSQL's rows", d.user, d.client_id);
    }
    server.shutdown(std::time::Duration::from_secs(5));
}
