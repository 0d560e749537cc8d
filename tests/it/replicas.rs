//! READ_REPLICA_URLS end to end: a private primary, a streaming replica of it built with
//! pg_basebackup, and an in-process server. The replica is only ever read when it has replayed
//! far enough; paused or stopped, the primary answers and clients never see a stale row.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use synchro::cluster::LocalCluster;
use synchro::config::Config;
use synchro::engine::ReadCounts;
use synchro::server::Running;

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::{private_cluster, replica_of, TestDb};
use crate::server::start;

const SCHEMA: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, user_id text, body text NOT NULL DEFAULT '',
      updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    INSERT INTO notes (id, user_id, body) SELECT g, 'alice', 'v0' FROM generate_series(1, 5) g;";

const USER: &str = "X-User-ID: alice\r\n";

struct Fixture {
    server: Running,
    replica: LocalCluster,
    db: TestDb<'static>,
}

impl Fixture {
    fn new() -> Fixture {
        // The primary outlives every borrow of it; its watchdog stops it when the tests end.
        let primary: &'static LocalCluster = Box::leak(Box::new(private_cluster()));
        let db = TestDb::on(primary);
        db.execute(SCHEMA);
        let replica = replica_of(primary);
        wait_for(60, "the test table on the replica", || replica.psql(&db.name, "SELECT count(*) FROM notes").ok());
        let server = start(
            &db,
            &[
                ("SYNC_TABLES", "notes"),
                ("SLOT_NAME", &format!("s_{}", db.name)),
                ("READ_REPLICA_URLS", &replica.url(&db.name)),
            ],
        );
        Fixture { server, replica, db }
    }

    fn counts(&self) -> ReadCounts {
        self.server.engine.read_counts()
    }

    fn set_body(&self, id: i64, body: &str) {
        self.db.execute(&format!("UPDATE notes SET body = '{body}', updated_at = now() WHERE id = {id}"));
    }

    fn body_on_replica(&self, id: i64) -> String {
        self.replica.psql(&self.db.name, &format!("SELECT body FROM notes WHERE id = {id}")).expect("replica query")
    }

    fn pause_replay(&self) {
        self.replica.psql(&self.db.name, "SELECT pg_wal_replay_pause()").expect("pause");
        wait_for(20, "replay paused", || {
            let state = self.replica.psql(&self.db.name, "SELECT pg_get_wal_replay_pause_state()").ok()?;
            (state == "paused").then_some(())
        });
    }

    fn resume_replay(&self) {
        self.replica.psql(&self.db.name, "SELECT pg_wal_replay_resume()").expect("resume");
    }

    fn metric(&self, name: &str) -> f64 {
        crate::client::metric(self.server.addr, name)
    }

    /// Updates note 1 until a pull of it is hydrated on the replica (the replica is used as
    /// soon as it catches up; polling keeps the test independent of replay speed).
    fn wait_for_replica_pulls(&self, phone: &mut Phone, round: &str) {
        let before = self.counts().pull_replica;
        let mut n = 0;
        wait_for(60, "a pull hydrated on the replica", || {
            n += 1;
            let body = format!("{round}-{n}");
            self.set_body(1, &body);
            phone.pull_until(1, &body);
            (self.counts().pull_replica > before).then_some(())
        });
    }
}

/// A device of alice's: registered, snapshotted, then pulling in legacy mode.
struct Phone {
    addr: SocketAddr,
    client_id: String,
    version: i64,
    hash: String,
    checkpoint: i64,
}

impl Phone {
    fn new(addr: SocketAddr, client_id: &str) -> Phone {
        let schema = get(addr, "/sync/schema", USER).json();
        let mut p = Phone {
            addr,
            client_id: client_id.into(),
            version: schema["schema_version"].as_i64().unwrap(),
            hash: schema["schema_hash"].as_str().unwrap().to_string(),
            checkpoint: 0,
        };
        p.call("/sync/register", json!({"client_id": client_id, "schema_version": p.version, "schema_hash": p.hash}));
        p.snapshot();
        p
    }

    fn call(&self, path: &str, body: Value) -> Value {
        let r = post(self.addr, path, USER, body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    }

    /// Every snapshot record, `id -> body`, two per page.
    fn snapshot(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let page = self.call("/sync/snapshot", json!({"client_id": self.client_id, "cursor": cursor, "limit": 2, "schema_version": self.version, "schema_hash": self.hash}));
            for rec in page["records"].as_array().unwrap() {
                out.push((rec["id"].as_str().unwrap().to_string(), rec["data"]["body"].as_str().unwrap().to_string()));
            }
            if !page["has_more"].as_bool().unwrap() {
                self.checkpoint = page["checkpoint"].as_i64().unwrap();
                return out;
            }
            cursor = page["cursor"].clone();
        }
    }

    /// Pulls to the end of the changelog; returns the changed records in order.
    fn pull(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let page = self.call("/sync/pull", json!({"client_id": self.client_id, "checkpoint": self.checkpoint, "limit": 100, "schema_version": self.version, "schema_hash": self.hash}));
            out.extend(page["changes"].as_array().unwrap().iter().cloned());
            self.checkpoint = page["checkpoint"].as_i64().unwrap();
            if !page["has_more"].as_bool().unwrap() {
                return out;
            }
        }
    }

    /// Pulls until note `id` arrives. It was last changed to `body`, and this device is already
    /// past every earlier change, so any other body is a row older than its change: stale.
    fn pull_until(&mut self, id: i64, body: &str) {
        let id_text = id.to_string();
        wait_for(30, &format!("note {id} = {body}"), || {
            let mut seen = false;
            for rec in self.pull() {
                if rec["id"] == id_text.as_str() {
                    assert_eq!(rec["data"]["body"], body, "a stale row was served: {rec}");
                    seen = true;
                }
            }
            seen.then_some(())
        });
    }
}

#[test]
fn pulls_hydrate_on_a_caught_up_replica() {
    let f = Fixture::new();
    let mut phone = Phone::new(f.server.addr, "p1");
    f.wait_for_replica_pulls(&mut phone, "caught-up");
    assert!(f.metric("synchro_pull_hydrations_total{source=\"replica\"}") >= 1.0);
    assert_eq!(f.metric("synchro_read_replicas"), 1.0);
    assert_eq!(f.metric("synchro_read_replicas_down"), 0.0);
    f.server.shutdown(Duration::from_secs(5));
    // `synchrod check` vouches for the replica and refuses a server that is not in recovery.
    let not_a_replica = f.db.url().replace("127.0.0.1", "localhost");
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", f.db.url()),
        ("SYNC_TABLES", "notes".into()),
        ("READ_REPLICA_URLS", format!("{},{not_a_replica}", f.replica.url(&f.db.name))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let lines: Vec<String> = synchro::check::run(&Config::from_vars(&vars).unwrap())
        .into_iter()
        .filter(|r| r.name == "read replica")
        .map(|r| r.line())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("PASS read replica") && lines[0].contains("hot standby"), "{lines:?}");
    assert!(lines[1].starts_with("FAIL read replica") && lines[1].contains("not in recovery"), "{lines:?}");
}

#[test]
fn a_paused_replica_never_serves_stale_rows() {
    let f = Fixture::new();
    let mut phone = Phone::new(f.server.addr, "p1");
    f.wait_for_replica_pulls(&mut phone, "before");
    f.pause_replay();
    let before = f.counts();
    for round in 0..3 {
        let body = format!("fresh-{round}");
        f.set_body(2, &body);
        phone.pull_until(2, &body);
    }
    assert_ne!(f.body_on_replica(2), "fresh-2", "replay is paused: the replica still holds an older row");
    let after = f.counts();
    assert_eq!(after.pull_replica, before.pull_replica, "never hydrated on the paused replica");
    assert!(after.pull_primary >= before.pull_primary + 3, "{before:?} -> {after:?}");
    // Replaying again, the replica is used again.
    f.resume_replay();
    f.wait_for_replica_pulls(&mut phone, "resumed");
    f.server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_stopped_replica_falls_back_to_the_primary_and_comes_back() {
    let f = Fixture::new();
    let mut phone = Phone::new(f.server.addr, "p1");
    f.wait_for_replica_pulls(&mut phone, "before");
    f.replica.stop().expect("stopping the replica");
    let before = f.counts();
    // Every request below asserts a 200: the replica's failure is never the client's.
    for round in 0..3 {
        let body = format!("down-{round}");
        f.set_body(3, &body);
        phone.pull_until(3, &body);
    }
    let rows = phone.snapshot();
    assert!(rows.contains(&("3".to_string(), "down-2".to_string())), "{rows:?}");
    let after = f.counts();
    assert_eq!(after.pull_replica, before.pull_replica);
    assert!(after.pull_primary >= before.pull_primary + 3 && after.snapshot_primary > before.snapshot_primary);
    assert_eq!(f.metric("synchro_read_replicas_down"), 1.0);
    // Restarted, it is retried after its back-off and used again.
    f.replica.start_again().expect("restarting the replica");
    f.wait_for_replica_pulls(&mut phone, "back");
    assert_eq!(f.metric("synchro_read_replicas_down"), 0.0);
    f.server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_snapshot_while_the_replica_is_paused_returns_current_rows() {
    let f = Fixture::new();
    let mut phone = Phone::new(f.server.addr, "p1");
    // Caught up, snapshot pages are read on the replica.
    wait_for(60, "a snapshot page read on the replica", || {
        let rows = phone.snapshot();
        assert_eq!(rows.len(), 5, "{rows:?}");
        (f.counts().snapshot_replica > 0).then_some(())
    });
    f.pause_replay();
    f.set_body(4, "current");
    f.db.execute("INSERT INTO notes (id, user_id, body) VALUES (99, 'alice', 'new')");
    assert_eq!(f.body_on_replica(4), "v0", "replay is paused: the replica still holds the old row");
    let before = f.counts();
    let mut fresh = Phone::new(f.server.addr, "p2");
    let rows = fresh.snapshot();
    assert!(rows.contains(&("4".to_string(), "current".to_string())), "{rows:?}");
    assert!(rows.contains(&("99".to_string(), "new".to_string())), "{rows:?}");
    assert_eq!(rows.len(), 6, "{rows:?}");
    let after = f.counts();
    assert_eq!(after.snapshot_replica, before.snapshot_replica, "never read on the paused replica");
    assert!(after.snapshot_primary > before.snapshot_primary);
    f.resume_replay();
    f.server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_replica_url_that_is_not_in_recovery_is_never_read() {
    // The primary itself under another spelling: reading it would be harmless here, but a
    // promoted or misconfigured "replica" may have diverged, so only servers in recovery count.
    let db = TestDb::new();
    db.execute(SCHEMA);
    let not_a_replica = db.url().replace("127.0.0.1", "localhost");
    let server = start(
        &db,
        &[("SYNC_TABLES", "notes"), ("SLOT_NAME", &format!("s_{}", db.name)), ("READ_REPLICA_URLS", &not_a_replica)],
    );
    let mut phone = Phone::new(server.addr, "p1");
    db.execute("UPDATE notes SET body = 'primary' WHERE id = 5");
    phone.pull_until(5, "primary");
    let counts = server.engine.read_counts();
    assert_eq!((counts.pull_replica, counts.snapshot_replica), (0, 0), "{counts:?}");
    assert!(counts.pull_primary >= 1 && counts.snapshot_primary >= 1, "{counts:?}");
    assert_eq!(server.engine.read_replicas().map(|r| r.down_count()), Some(1));
    server.shutdown(Duration::from_secs(5));
}
