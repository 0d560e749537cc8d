//! The embedding example (deployment mode A) is built by `cargo test` and run here.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::{Kill, TestDb};

#[test]
fn the_embedding_example_serves_its_own_routes_and_synchro() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples").join("embedded");
    assert!(example.exists(), "{} (built by cargo test)", example.display());
    let mut child = Kill(
        Command::new(&example)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("SYNC_TABLES", "tasks,comments,categories")
            .env("SLOT_NAME", format!("emb_{}", db.name))
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The example's own logger prints synchro's records to stderr: collect them.
    let app_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let collected = app_log.clone();
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| collected.lock().unwrap().push(l)));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().strip_prefix("listening on ").unwrap().parse().unwrap();
    assert_eq!(get(addr, "/hello", "").body, "hello from the app");
    let r = get(addr, "/sync/schema", "");
    assert_eq!((r.status, r.body.as_str()), (401, "{\"error\":\"invalid session\"}\n"), "the app's own authentication");
    let alice = "X-Session: session-alice\r\n";
    let schema = get(addr, "/sync/schema", alice).json();
    let (v, h) = (schema["schema_version"].clone(), schema["schema_hash"].clone());
    assert_eq!(
        post(addr, "/sync/register", alice, br#"{"client_id":"web","schema_version":0,"schema_hash":""}"#).status,
        200
    );
    let push = serde_json::json!({"client_id": "web", "schema_version": v, "schema_hash": h, "changes": [
        {"id": "c0000000-0000-0000-0000-000000000001", "table_name": "tasks", "operation": "create", "data": {"title": "embedded"}}]});
    let r = post(addr, "/sync/push", alice, push.to_string().as_bytes()).json();
    assert_eq!(r["accepted"].as_array().unwrap().len(), 1, "{r}");
    // Change capture runs inside the app too.
    wait_for(20, "the pushed row in the changelog", || {
        let n: i64 = db
            .client()
            .query_one("SELECT count(*) FROM sync_changelog WHERE bucket_id = 'user:alice'", &[])
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
    // synchro's records reached the application's logger, fields included.
    wait_for(20, "synchro's records in the application's log", || {
        let lines = app_log.lock().unwrap();
        lines.iter().any(|l| l.starts_with("[app] INFO synchro::") && l.contains('=')).then_some(())
    });
    assert_eq!(get(addr, "/shutdown", "").status, 200);
    let status = wait_for(20, "the example to exit", || child.0.try_wait().unwrap());
    assert!(status.success());
}
