//! Pieces the benchmark programs share: a synchrod child process, a keep-alive HTTP client,
//! polling, percentiles and `/metrics` gauges. Each bench includes this module with
//! `#[allow(dead_code)] mod common;` (not every bench uses every piece).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synchro::cluster::{ClusterOptions, LocalCluster};

/// Writes a `BUCKET_RULES` file in `cluster`'s directory sharing `table` by its `team_id`
/// through `team_members` (bucket `team`), and returns its path.
pub fn team_rules(cluster: &LocalCluster, table: &str) -> String {
    let path = cluster.dir().join("rules.json");
    let rules = format!(
        r#"{{"shared": [{{"bucket": "team", "table": "{table}", "column": "team_id",
            "members": {{"table": "team_members", "key": "team_id", "user": "user_id"}}}}]}}"#
    );
    std::fs::write(&path, rules).expect("writing the rules file");
    path.display().to_string()
}

/// A throwaway cluster for one benchmark run (fast, unsafe settings, deleted when the process
/// exits) holding an empty database `db`; `extra_conf` lines go to postgresql.conf.
pub fn bench_cluster(name: &str, db: &str, extra_conf: &[&str]) -> LocalCluster {
    let dir = std::env::temp_dir().join(format!("synchro-bench-{name}-{}", std::process::id()));
    let mut opts = ClusterOptions::new(&dir);
    opts.fast_unsafe = true;
    opts.extra_conf.extend(extra_conf.iter().map(|l| l.to_string()));
    let cluster = LocalCluster::start(&opts).expect("cluster");
    cluster.stop_when_process_exits(std::process::id(), true).expect("watchdog");
    cluster.psql("postgres", &format!("CREATE DATABASE {db}")).expect("db");
    cluster
}

/// Whether the changelog on `c` holds a row for `record` of `table` (a marker the benchmark wrote).
pub fn in_changelog(c: &mut postgres::Client, table: &str, record: i64) -> bool {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM sync_changelog WHERE table_name = $1 AND record_id = $2)",
        &[&table, &record.to_string()],
    )
    .map(|r| r.get(0))
    .unwrap_or(false)
}

/// One request of a closed-loop load, given the client index and its keep-alive connection.
pub type Request = Arc<dyn Fn(usize, &mut Conn) + Send + Sync>;

/// Runs `request` in a loop on `clients` threads for `secs`, client `i` connected to
/// `addr_of(i)`; returns (requests/s, p50 ms, p99 ms).
pub fn closed_loop(
    clients: usize,
    secs: u64,
    addr_of: impl Fn(usize) -> SocketAddr,
    request: Request,
) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (request, addr) = (request.clone(), addr_of(i));
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    request(i, &mut conn);
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let started = Instant::now();
    let mut all: Vec<f64> = handles.into_iter().flat_map(|h| h.join().expect("client")).collect();
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / elapsed, percentile(&all, 0.5), percentile(&all, 0.99))
}

/// A synchrod child that is killed when dropped (also when the benchmark panics).
pub struct Synchrod(pub Child);

impl Drop for Synchrod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 connection speaking as `X-User-ID` users.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects, or `None` while nothing listens.
    pub fn try_new(addr: SocketAddr) -> Option<Conn> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Conn { s, buf: Vec::with_capacity(64 * 1024) })
    }

    /// Connects (panics when nothing listens).
    pub fn new(addr: SocketAddr) -> Conn {
        Conn::try_new(addr).unwrap_or_else(|| panic!("connecting to {addr}"))
    }

    /// One request; returns status and body.
    pub fn call(&mut self, method: &str, path: &str, user: &str, body: &str) -> (u16, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: b\r\nX-User-ID: {user}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.write_all(req.as_bytes()).expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16384];
        loop {
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().expect("status");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).expect("read");
                    assert!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return (status, self.buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

/// The value at `p` (0..=1) of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// Polls `f` every 5 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A sample from an instance's `/metrics` (name with its labels), `None` while it is not answering.
pub fn gauge(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut c = Conn::try_new(addr)?;
    let (_, body) = c.call("GET", "/metrics", "", "");
    String::from_utf8_lossy(&body).lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
