//! synchrod's logs: JSON lines on stdout from the logger the binary installs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::capture::wait_for;
use crate::client::get;
use crate::harness::{Kill, TestDb};

#[test]
fn synchrod_logs_json_lines_with_request_ids_and_fields() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE notes (id uuid PRIMARY KEY, user_id text, updated_at timestamptz, deleted_at timestamptz)",
    );
    let port = synchro::cluster::free_port().unwrap();
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_synchrod"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("SYNC_TABLES", "notes")
            .env("SLOT_NAME", format!("log_{}", db.name))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_LEVEL", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let collected = lines.clone();
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|l| collected.lock().unwrap().push(l)));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(30, "synchrod to listen", || std::net::TcpStream::connect(addr).ok());
    assert_eq!(get(addr, "/healthz", "X-Request-Id: it-log-1\r\n").status, 200);
    let request = wait_for(20, "the request's log line", || {
        let lines = lines.lock().unwrap();
        lines.iter().find(|l| l.contains("it-log-1")).cloned()
    });
    let v: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!((v["msg"].as_str(), v["level"].as_str()), (Some("request"), Some("debug")), "{v}");
    assert_eq!((v["request_id"].as_str(), v["endpoint"].as_str()), (Some("it-log-1"), Some("healthz")), "{v}");
    assert_eq!(v["status"], 200, "fields keep their JSON type: {v}");
    assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    drop(child);
    // Every line is one JSON object, and no other crate's debug output (the driver's holds query
    // parameters) reaches the log even at LOG_LEVEL=debug.
    let lines = lines.lock().unwrap();
    assert!(lines.len() > 2, "{lines:?}");
    for line in lines.iter() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("target").is_none() || matches!(v["level"].as_str(), Some("warn" | "error")), "{line}");
    }
}
