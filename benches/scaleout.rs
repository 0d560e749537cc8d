//! Scale-out benchmark: empty incremental pulls from 64 keep-alive clients spread over 1, 2 and 3
//! synchrod processes sharing one database (one of them is the capture leader, the others
//! stand by). On a 2-core machine this shows the cost of the extra processes more than a gain;
//! the point of several instances there is availability (see `cargo bench --bench takeover`).
//!
//! Then the same on one instance with a separate sync store (`SYNC_STORE_URL`).
//!
//! Then 100-change pulls (hydration-heavy) on one instance without and with a streaming replica
//! (`READ_REPLICA_URLS`), where hydration moves to the replica when it has replayed far enough.
//!
//! `cargo bench --bench scaleout`

#[allow(dead_code)]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use std::sync::Arc;
use synchro::cluster::{free_port, ClusterOptions, LocalCluster};

use common::{bench_cluster, closed_loop, gauge, Conn, Request, Synchrod};

const DB: &str = "bench";
const CLIENTS: usize = 64;

struct Instance {
    addr: SocketAddr,
    _child: Synchrod,
}

fn spawn(cluster: &LocalCluster, threads: usize) -> Instance {
    spawn_with(cluster, threads, &[])
}

fn spawn_with(cluster: &LocalCluster, threads: usize, vars: &[(&str, String)]) -> Instance {
    let port = free_port().expect("port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synchrod"));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd
        .env("DATABASE_URL", cluster.url(DB))
        .env("SYNC_TABLES", "tasks,comments,categories")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("HTTP_THREADS", threads.to_string())
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn synchrod");
    Instance { addr: format!("127.0.0.1:{port}").parse().expect("addr"), _child: Synchrod(child) }
}

fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(mut c) = Conn::try_new(addr) {
            if c.call("GET", "/healthz", "", "").0 == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "instance at {addr} never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers and bootstraps every client through the first instance, runs `prepare` (between
/// the snapshots and the load), then pulls from the snapshot checkpoints for `secs` seconds with
/// client `i` on instance `i % n`. Returns (requests/s, p50 ms, p99 ms).
fn pulls(instances: &[Instance], secs: u64, prepare: impl FnOnce(usize)) -> (f64, f64, f64) {
    let n = instances.len();
    let mut admin = Conn::new(instances[0].addr);
    let (_, schema) = admin.call("GET", "/sync/schema", "u0", "");
    let schema: Value = serde_json::from_slice(&schema).expect("schema");
    let (v, h) = (schema["schema_version"].clone(), schema["schema_hash"].clone());
    let mut checkpoints = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("u{i}");
        let body = json!({"client_id": "c", "schema_version": v, "schema_hash": h}).to_string();
        assert_eq!(admin.call("POST", "/sync/register", &user, &body).0, 200);
        let body = json!({"client_id": "c", "limit": 1000, "schema_version": v, "schema_hash": h}).to_string();
        let (st, page) = admin.call("POST", "/sync/snapshot", &user, &body);
        assert_eq!(st, 200);
        let page: Value = serde_json::from_slice(&page).expect("page");
        checkpoints.push(page["checkpoint"].as_i64().unwrap_or(0));
    }
    prepare(CLIENTS);
    let bodies: Vec<String> = checkpoints
        .iter()
        .map(|cp| {
            json!({"client_id": "c", "checkpoint": cp, "limit": 100, "schema_version": v, "schema_hash": h}).to_string()
        })
        .collect();
    let pull: Request = Arc::new(move |i, c: &mut Conn| {
        assert_eq!(c.call("POST", "/sync/pull", &format!("u{i}"), &bodies[i]).0, 200);
    });
    closed_loop(CLIENTS, secs, |i| instances[i % n].addr, pull)
}

fn main() {
    let cluster = bench_cluster("scaleout", DB, &[]);
    cluster.psql(DB, synchro::dev::DEMO_SCHEMA).expect("schema");
    println!("synchro scale-out benchmark ({CLIENTS} clients, empty pulls, 8 HTTP workers in all, 2 cores)");

    for n in 1..=3usize {
        let threads = (8 / n).max(2);
        let instances: Vec<Instance> = (0..n).map(|_| spawn(&cluster, threads)).collect();
        for i in &instances {
            wait_healthy(i.addr);
        }
        let (rps, p50, p99) = pulls(&instances, 5, |_| ());
        println!("{n} instance(s) x {threads} workers: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
        drop(instances);
    }

    // The same empty pulls on one instance whose sync tables live in a separate store (another
    // database of the same server, with its own slot): one more connection and round trip each.
    cluster.psql("postgres", &format!("CREATE DATABASE {DB}_store")).expect("store db");
    let split = vec![spawn_with(
        &cluster,
        8,
        &[("SYNC_STORE_URL", cluster.url(&format!("{DB}_store"))), ("SLOT_NAME", "store_slot".into())],
    )];
    wait_healthy(split[0].addr);
    let (rps, p50, p99) = pulls(&split, 5, |_| ());
    println!("1 instance x 8 workers, separate sync store: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
    drop(split);

    // 100-change pulls on one instance, without and with a streaming replica.
    let fill = |clients: usize| {
        let sql = format!(
            "INSERT INTO tasks (user_id, title) SELECT 'u' || (g % {clients}), 't' || g FROM generate_series(0, {}) g",
            clients * 100 - 1
        );
        cluster.psql(DB, &sql).expect("tasks");
        std::thread::sleep(Duration::from_secs(2)); // captured
    };
    let one = vec![spawn(&cluster, 8)];
    wait_healthy(one[0].addr);
    let (rps, p50, p99) = pulls(&one, 5, fill);
    println!("100-change pulls, 1 instance, primary only: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
    drop(one);
    let mut ropts = ClusterOptions::new(cluster.dir().join("replica"));
    ropts.fast_unsafe = true;
    let replica = cluster.start_replica(&ropts).expect("replica");
    replica.stop_when_process_exits(std::process::id(), true).expect("replica watchdog");
    let with = vec![spawn_with(&cluster, 8, &[("READ_REPLICA_URLS", replica.url(DB))])];
    wait_healthy(with[0].addr);
    let (rps, p50, p99) = pulls(&with, 5, fill);
    println!(
        "100-change pulls, 1 instance + 1 replica: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms \
         (pages hydrated on the replica: {:.0}, on the primary: {:.0})",
        gauge(with[0].addr, "synchro_pull_hydrations_total{source=\"replica\"}").unwrap_or(f64::NAN),
        gauge(with[0].addr, "synchro_pull_hydrations_total{source=\"primary\"}").unwrap_or(f64::NAN)
    );
}
