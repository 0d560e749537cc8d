//! synchrod end to end: in-process servers over real sockets against the test cluster, and the
//! binary as a subprocess.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use synchro::config::Config;
use synchro::server::{self, Running};

use crate::client::{get, post};
use crate::harness::{private_cluster, TestDb};

const USER: &str = "X-User-ID: alice\r\n";

pub fn start(db: &TestDb, vars: &[(&str, &str)]) -> Running {
    synchro::logging::set_level(synchro::config::LogLevel::Error);
    let mut map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    map.entry("DATABASE_URL".into()).or_insert_with(|| db.url());
    // Slots are per cluster: one per test database, so concurrent tests never share one.
    map.entry("SLOT_NAME".into()).or_insert_with(|| format!("slot_{}", db.name));
    map.entry("LISTEN_ADDR".into()).or_insert_with(|| "127.0.0.1:0".into());
    map.entry("HTTP_THREADS".into()).or_insert_with(|| "4".into());
    let config = Config::from_vars(&map).unwrap();
    server::start(&config).unwrap_or_else(|e| panic!("server start: {e}"))
}

const WIDE: &str = "CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE TABLE wide (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id text, b boolean NOT NULL DEFAULT false,
      i4 integer DEFAULT 0, i8 bigint, n2 numeric(10,2) NOT NULL DEFAULT 1.50, vc varchar(20), jb jsonb NOT NULL DEFAULT '{}',
      arr text[] NOT NULL DEFAULT '{}', bin bytea, dt date, tm time, tstz timestamptz, iv interval, m mood NOT NULL DEFAULT 'happy',
      created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE notes (id bigserial PRIMARY KEY, wide_id uuid REFERENCES wide (id), body text);";

#[test]
fn schema_and_tables_are_served_exactly() {
    let db = TestDb::new();
    db.execute(WIDE);
    let server = start(&db, &[("SYNC_TABLES", "wide,notes"), ("READ_ONLY_TABLES", "notes")]);
    let r = get(server.addr, "/sync/schema", USER);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["schema_hash"].as_str().unwrap().len(), 64);
    assert!(v["server_time"].as_str().unwrap().ends_with('Z'));
    let tables = v["tables"].as_array().unwrap();
    assert_eq!(tables.iter().map(|t| t["table_name"].as_str().unwrap()).collect::<Vec<_>>(), vec!["notes", "wide"]);
    let notes = &tables[0];
    assert_eq!(notes["push_policy"], "enabled", "schema always says enabled");
    assert_eq!(notes["parent_table"], "wide");
    assert_eq!(notes["parent_fk_col"], "wide_id");
    assert_eq!(notes["dependencies"], serde_json::json!(["wide"]));
    assert_eq!(notes["updated_at_column"], "updated_at");
    let note_cols: Vec<&str> =
        notes["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        note_cols,
        vec!["id", "wide_id", "body", "updated_at", "deleted_at"],
        "virtual timestamp columns appended"
    );
    let wide = &tables[1];
    let col = |name: &str| wide["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(
        col("n2"),
        serde_json::json!({"name":"n2","db_type":"numeric(10,2)","logical_type":"float","nullable":false,
            "default_sql":"1.50","default_kind":"portable","sqlite_default_sql":"1.50","is_primary_key":false})
    );
    assert_eq!(
        col("id"),
        serde_json::json!({"name":"id","db_type":"uuid","logical_type":"string","nullable":false,
            "default_sql":"gen_random_uuid()","default_kind":"server_only","is_primary_key":true})
    );
    assert_eq!(col("m")["sqlite_default_sql"], "'happy'");
    assert_eq!(col("arr")["logical_type"], "json");
    assert_eq!(col("bin")["logical_type"], "bytes");
    assert_eq!(col("iv")["logical_type"], "string");
    assert_eq!(col("tstz")["default_kind"], "none");
    assert!(col("tstz").get("default_sql").is_none());

    let r = get(server.addr, "/sync/tables", USER);
    let v = r.json();
    assert_eq!(v["schema_hash"], get(server.addr, "/sync/schema", USER).json()["schema_hash"]);
    assert_eq!(v["tables"][0]["push_policy"], "disabled", "read-only in /sync/tables");
    assert_eq!(v["tables"][1]["push_policy"], "enabled");
    assert_eq!(v["tables"][1]["dependencies"], serde_json::json!([]));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn ddl_is_seen_by_the_next_request_and_the_version_only_moves_with_the_hash() {
    let db = TestDb::new();
    db.execute("CREATE TABLE items (id uuid PRIMARY KEY, title text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)");
    let server = start(&db, &[("SYNC_TABLES", "items")]);
    let v1 = get(server.addr, "/sync/schema", USER).json();
    let v1b = get(server.addr, "/sync/schema", USER).json();
    assert_eq!(
        (v1["schema_version"].clone(), v1["schema_hash"].clone()),
        (v1b["schema_version"].clone(), v1b["schema_hash"].clone())
    );
    let reg = post(server.addr, "/sync/register", USER, br#"{"client_id":"d1","schema_version":0,"schema_hash":""}"#);
    assert_eq!(reg.status, 200);
    db.execute("ALTER TABLE items ADD COLUMN note text");
    let pull = format!(
        r#"{{"client_id":"d1","schema_version":{},"schema_hash":{}}}"#,
        v1["schema_version"], v1["schema_hash"]
    );
    let r = post(server.addr, "/sync/pull", USER, pull.as_bytes());
    assert_eq!(r.status, 409);
    let body = r.json();
    assert_eq!(body["code"], "schema_mismatch");
    assert_eq!(body["server_schema_version"], 2);
    assert_ne!(body["server_schema_hash"], v1["schema_hash"]);
    server.shutdown(Duration::from_secs(5));
    // A restart on the same schema keeps version and hash.
    let again = start(&db, &[("SYNC_TABLES", "items")]);
    let v2 = get(again.addr, "/sync/schema", USER).json();
    assert_eq!(v2["schema_version"], 2);
    assert_eq!(v2["schema_hash"], body["server_schema_hash"]);
    again.shutdown(Duration::from_secs(5));
}

#[test]
fn ddl_after_repeated_pulls_on_a_quiet_database_is_seen_by_the_next_pull() {
    // Repeated pulls with no write in between reuse the fingerprint of an unchanged snapshot;
    // the DDL's transaction moves the snapshot, so the next pull must still get 409.
    let db = TestDb::new();
    db.execute("CREATE TABLE items (id uuid PRIMARY KEY, title text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)");
    let server = start(&db, &[("SYNC_TABLES", "items")]);
    let v1 = get(server.addr, "/sync/schema", USER).json();
    let reg = post(server.addr, "/sync/register", USER, br#"{"client_id":"d1","schema_version":0,"schema_hash":""}"#);
    assert_eq!(reg.status, 200);
    let pull = format!(
        r#"{{"client_id":"d1","schema_version":{},"schema_hash":{}}}"#,
        v1["schema_version"], v1["schema_hash"]
    );
    for _ in 0..3 {
        assert_eq!(post(server.addr, "/sync/pull", USER, pull.as_bytes()).status, 200);
    }
    db.execute("ALTER TABLE items ALTER COLUMN title DROP NOT NULL");
    let r = post(server.addr, "/sync/pull", USER, pull.as_bytes());
    assert_eq!(r.status, 409);
    let body = r.json();
    assert_eq!(body["code"], "schema_mismatch");
    assert_ne!(body["server_schema_hash"], v1["schema_hash"]);
    let schema = get(server.addr, "/sync/schema", USER).json();
    assert_eq!(schema["schema_hash"], body["server_schema_hash"]);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn concurrent_starts_agree_on_the_schema_version() {
    let db = TestDb::new();
    db.execute("CREATE TABLE items (id int PRIMARY KEY, title text)");
    let url = db.url();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut map = HashMap::new();
                map.insert("DATABASE_URL".to_string(), url);
                map.insert("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string());
                map.insert("SYNC_TABLES".to_string(), "items".to_string());
                let running = server::start(&Config::from_vars(&map).unwrap()).unwrap();
                let v = get(running.addr, "/sync/schema", USER).json()["schema_version"].as_i64().unwrap();
                running.shutdown(Duration::from_secs(5));
                v
            })
        })
        .collect();
    let versions: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(versions, vec![1, 1, 1]);
}

#[test]
fn healthz_follows_postgresql_availability_and_no_push_is_lost_across_an_outage() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute("CREATE TABLE items (id text PRIMARY KEY, user_id text, title text, updated_at timestamptz NOT NULL DEFAULT now())");
    let server = start(&db, &[("SYNC_TABLES", "items")]);
    assert_eq!(get(server.addr, "/healthz", "").status, 200);
    let r = post(server.addr, "/sync/register", USER, br#"{"client_id":"d","schema_version":0,"schema_hash":""}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let schema = get(server.addr, "/sync/schema", USER).json();
    let push = format!(
        r#"{{"client_id":"d","schema_version":{},"schema_hash":{},"changes":[{{"id":"p1","table_name":"items","operation":"create","client_updated_at":"2026-03-05T11:00:00.000Z","data":{{"id":"p1","title":"written during the outage"}}}}]}}"#,
        schema["schema_version"], schema["schema_hash"]
    );
    let push = push.as_bytes();
    cluster.stop().unwrap();
    let r = get(server.addr, "/healthz", "");
    assert_eq!((r.status, r.body.as_str()), (503, r#"{"status":"unavailable"}"#));
    // Requests that need the database get 503 + Retry-After, not 500.
    let r = post(server.addr, "/sync/register", USER, br#"{"client_id":"d","schema_version":0,"schema_hash":""}"#);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    assert_eq!(r.json()["retry_after"], 5);
    let r = post(server.addr, "/sync/push", USER, push);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")), "{}", r.body);
    cluster.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(server.addr, "/healthz", "").status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "healthz never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client retries the refused push: it is applied exactly once.
    let r = post(server.addr, "/sync/push", USER, push);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"].as_array().map(Vec::len), Some(1), "{}", r.body);
    let n: i64 =
        db.client().query_one("SELECT count(*) FROM items WHERE id = 'p1' AND user_id = 'alice'", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn startup_refuses_unsyncable_tables_with_a_precise_message() {
    let db = TestDb::new();
    db.execute("CREATE TABLE pairs (a int, b int, PRIMARY KEY (a, b))");
    let mut map = HashMap::new();
    map.insert("DATABASE_URL".to_string(), db.url());
    map.insert("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string());
    map.insert("SYNC_TABLES".to_string(), "pairs".to_string());
    let err = server::start(&Config::from_vars(&map).unwrap()).err().expect("must refuse");
    assert!(err.to_string().contains("composite primary key"), "{err}");
    map.remove("SYNC_TABLES");
    let err = server::start(&Config::from_vars(&map).unwrap()).err().expect("must refuse");
    assert!(err.to_string().contains("set SYNC_TABLES"), "{err}");
}

fn synchrod(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synchrod"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_binary_names_missing_and_invalid_variables() {
    let out = synchrod(&[], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL"), "{err}");
    let out = synchrod(&[], &[("DATABASE_URL", "postgres://u@h/d"), ("HTTP_THREADS", "lots")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP_THREADS"));
    let out = synchrod(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "REPLICATION_URL",
        "JWT_SECRET",
        "JWKS_URL",
        "JWT_USER_CLAIM",
        "LISTEN_ADDR",
        "SLOT_NAME",
        "PUBLICATION_NAME",
        "MIN_CLIENT_VERSION",
        "LOG_LEVEL",
        "SYNC_TABLES",
        "READ_ONLY_TABLES",
        "OWNER_COLUMN",
        "EXCLUDE_COLUMNS",
        "UPDATED_AT_COLUMN",
        "DELETED_AT_COLUMN",
        "HTTP_THREADS",
        "MAX_BODY_BYTES",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    assert!(help.contains("CLOCK_SKEW_MS") && help.contains("[default: 3600]"), "{help}");
    let out = synchrod(&["--version"], &[]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("synchrod {} (features: ", env!("CARGO_PKG_VERSION"))), "{version}");
    // Help wins wherever it stands: `dev --help` explains instead of starting a cluster.
    assert!(String::from_utf8_lossy(&synchrod(&["dev", "--help"], &[]).stdout).contains("ENVIRONMENT"));
    for wrong in [&["frobnicate"][..], &["migrate", "--prnt"], &["check", "extra"]] {
        let out = synchrod(wrong, &[("DATABASE_URL", "postgres://u@h/d")]);
        assert_eq!(out.status.code(), Some(2), "{wrong:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("synchrod --help"), "{wrong:?}");
    }
}

#[test]
fn migrate_applies_and_prints() {
    let db = TestDb::new();
    let out = synchrod(&["migrate"], &[("DATABASE_URL", &db.url())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    let out = synchrod(&["migrate"], &[("DATABASE_URL", &db.url())]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    let out = synchrod(&["compact"], &[("DATABASE_URL", &db.url())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 0 changelog rows"));
    let out = synchrod(&["migrate", "--print"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CREATE TABLE IF NOT EXISTS sync_changelog"));
}

#[test]
fn check_lists_each_problem_with_its_fix_and_passes_when_fixed() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute("CREATE TABLE items (id int PRIMARY KEY, user_id text); ALTER TABLE items REPLICA IDENTITY NOTHING;");
    let env =
        [("DATABASE_URL", db.url()), ("SYNC_TABLES", "items".to_string()), ("SLOT_NAME", "check_slot".to_string())];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = synchrod(&["check"], &env_refs);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    for needle in [
        "PASS wal_level: logical",
        "PASS REPLICATION privilege",
        "PASS replication connection (no pooler)",
        "FAIL infrastructure tables migrated",
        "FAIL publication covers exactly the synced tables",
        "FAIL replica identity",
        "FAIL replication slot",
        "FAIL max_slot_wal_keep_size",
        "fix: ALTER TABLE ... REPLICA IDENTITY FULL",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // Fix everything, let synchrod create what it owns, and the checklist passes.
    db.execute("ALTER TABLE items REPLICA IDENTITY FULL");
    for sql in ["ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'", "SELECT pg_reload_conf()"] {
        db.execute(sql);
    }
    let server = start(&db, &[("SYNC_TABLES", "items"), ("SLOT_NAME", "check_slot")]);
    let out = synchrod(&["check"], &env_refs);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    server.shutdown(Duration::from_secs(5));
}
