//! Capture takeover benchmark: three synchrod processes on one database under a steady write
//! load; the capture leader is killed with SIGKILL `BENCH_KILLS` times (default 20) and each
//! takeover is timed from the kill until another instance reports itself leader and streaming
//! (`/metrics`), and until a row committed right after the kill is in the changelog. At the end
//! every row written during the run must be in the changelog exactly once.
//!
//! `cargo bench --bench takeover`

#[allow(dead_code)]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use synchro::cluster::{free_port, LocalCluster};

use common::{bench_cluster, gauge, in_changelog, percentile, wait_until, Synchrod};

const DB: &str = "bench";

struct Instance {
    addr: SocketAddr,
    child: Synchrod,
}

fn spawn(cluster: &LocalCluster, port: u16) -> Instance {
    let child = Command::new(env!("CARGO_BIN_EXE_synchrod"))
        .env("DATABASE_URL", cluster.url(DB))
        .env("SYNC_TABLES", "events")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn synchrod");
    Instance { addr: SocketAddr::from(([127, 0, 0, 1], port)), child: Synchrod(child) }
}

fn is_leader(addr: SocketAddr) -> bool {
    gauge(addr, "synchro_capture_leader") == Some(1.0) && gauge(addr, "synchro_capture_streaming") == Some(1.0)
}

fn main() {
    let kills: usize = std::env::var("BENCH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let cluster = bench_cluster("takeover", DB, &[]);
    cluster.psql(DB, "CREATE TABLE events (id bigint PRIMARY KEY, user_id text)").expect("schema");
    let mut c = Client::connect(&cluster.url(DB), NoTls).expect("connect");
    println!("synchro capture takeover benchmark ({kills} kills of the leader among 3 instances, steady writes)");

    let mut instances: Vec<Instance> = (0..3).map(|_| spawn(&cluster, free_port().unwrap())).collect();
    wait_until("a leader", Duration::from_secs(60), || instances.iter().filter(|i| is_leader(i.addr)).count() == 1);

    // About 500 single-row transactions per second for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1));
    let load = {
        let (stop, next, url) = (stop.clone(), next.clone(), cluster.url(DB));
        std::thread::spawn(move || {
            let mut w = Client::connect(&url, NoTls).expect("connect");
            while !stop.load(Ordering::Acquire) {
                let id = next.fetch_add(1, Ordering::AcqRel);
                w.execute("INSERT INTO events VALUES ($1, 'u')", &[&id]).expect("insert");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut elected = Vec::new();
    let mut first_row = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(500));
        let leader = instances.iter().position(|i| is_leader(i.addr)).expect("a leader");
        let killed_at = Instant::now();
        instances[leader].child.0.kill().expect("kill");
        let _ = instances[leader].child.0.wait();
        let probe = next.load(Ordering::Acquire) + 1;
        wait_until("a new leader", Duration::from_secs(30), || {
            instances.iter().enumerate().any(|(i, inst)| i != leader && is_leader(inst.addr))
        });
        elected.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        wait_until("a row written after the kill", Duration::from_secs(30), || in_changelog(&mut c, "events", probe));
        first_row.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        let addr = instances[leader].addr;
        instances[leader] = spawn(&cluster, addr.port());
        wait_until("the restarted standby", Duration::from_secs(30), || {
            gauge(addr, "synchro_capture_leader") == Some(0.0)
        });
    }
    stop.store(true, Ordering::Release);
    load.join().expect("load thread");
    let last = next.load(Ordering::Acquire) - 1;
    wait_until("the last row", Duration::from_secs(60), || in_changelog(&mut c, "events", last));
    let row = c
        .query_one("SELECT count(DISTINCT record_id), count(*) FROM sync_changelog WHERE table_name = 'events'", &[])
        .expect("count");
    let (distinct, total): (i64, i64) = (row.get(0), row.get(1));

    elected.sort_by(f64::total_cmp);
    first_row.sort_by(f64::total_cmp);
    println!(
        "kill -> new leader streaming: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms (target < 2000 ms)",
        percentile(&elected, 0.5),
        percentile(&elected, 0.9),
        percentile(&elected, 1.0)
    );
    println!(
        "kill -> first row written after the kill in the changelog: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile(&first_row, 0.5),
        percentile(&first_row, 0.9),
        percentile(&first_row, 1.0)
    );
    println!(
        "changelog integrity: {last} rows written, {distinct} captured, {} duplicates, {} missing",
        total - distinct,
        last - distinct
    );
    assert_eq!((distinct, total), (last, last), "every row exactly once");
}
