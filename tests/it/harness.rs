//! The test harness: one throwaway PostgreSQL cluster per test binary, a fresh database per test.
//!
//! The cluster lives under the system temp dir, listens on a free loopback port, and is stopped
//! and deleted by a watchdog once this test process exits (the test runner has no global
//! teardown hook). Fault tests that stop or kill PostgreSQL use [`private_cluster`] so they never
//! disturb tests running beside them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use postgres::{Client, NoTls};
use synchro::cluster::{ClusterOptions, LocalCluster};

static SHARED: OnceLock<LocalCluster> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn start_cluster(name: &str) -> LocalCluster {
    let dir = std::env::temp_dir().join(format!("synchro-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = ClusterOptions::new(&dir);
    opts.fast_unsafe = true;
    let cluster = LocalCluster::start(&opts).unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    cluster.stop_when_process_exits(std::process::id(), true).expect("watchdog");
    cluster
}

/// The cluster shared by every test of this binary.
pub fn cluster() -> &'static LocalCluster {
    SHARED.get_or_init(|| start_cluster(&unique("shared")))
}

/// A cluster of its own, for tests that stop, kill or reconfigure PostgreSQL.
pub fn private_cluster() -> LocalCluster {
    start_cluster(&unique("private"))
}

/// A streaming replica of `primary` (which must be running), stopped and deleted with this test
/// process like every test cluster.
pub fn replica_of(primary: &LocalCluster) -> LocalCluster {
    let dir = std::env::temp_dir().join(format!("synchro-test-{}", unique("replica")));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = ClusterOptions::new(&dir);
    opts.fast_unsafe = true;
    let replica = primary.start_replica(&opts).unwrap_or_else(|e| panic!("starting the replica: {e}"));
    replica.stop_when_process_exits(std::process::id(), true).expect("replica watchdog");
    replica
}

/// A fresh database on a cluster; dropped (with its connections) at the end of the test.
pub struct TestDb<'a> {
    /// The cluster holding the database.
    pub cluster: &'a LocalCluster,
    /// The database name.
    pub name: String,
}

impl TestDb<'static> {
    /// A fresh database on the shared cluster.
    pub fn new() -> TestDb<'static> {
        TestDb::on(cluster())
    }
}

impl<'a> TestDb<'a> {
    /// A fresh database on `cluster`.
    pub fn on(cluster: &'a LocalCluster) -> TestDb<'a> {
        let name = unique("t");
        cluster.psql("postgres", &format!("CREATE DATABASE {name}")).expect("create database");
        TestDb { cluster, name }
    }

    /// The database URL (superuser over loopback).
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A new client session with `TimeZone = UTC`.
    pub fn client(&self) -> Client {
        let mut config: postgres::Config = self.url().parse().expect("url");
        config.options("-c TimeZone=UTC");
        config.connect(NoTls).expect("connect")
    }

    /// Runs SQL statements (panics on error: test setup).
    pub fn execute(&self, sql: &str) {
        self.client().batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        if self.cluster.is_running() {
            let _ = self.cluster.psql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Panics unless the per-bucket checksums (`sync_bucket_checksums`, kept by a trigger) equal
/// the aggregate of the edges themselves, bucket by bucket, in the sync store at `db`.
pub fn assert_bucket_checksums_follow_edges(db: &mut impl postgres::GenericClient) {
    let rows = db
        .query(
            "SELECT COALESCE(a.bucket_id, e.bucket_id), a.checksum, a.members, e.x, e.n \
             FROM (SELECT * FROM sync_bucket_checksums WHERE members <> 0) a \
             FULL JOIN (SELECT bucket_id, BIT_XOR(checksum) x, count(checksum) n FROM sync_bucket_edges \
                        WHERE checksum IS NOT NULL GROUP BY bucket_id) e ON a.bucket_id = e.bucket_id \
             WHERE a.checksum IS DISTINCT FROM e.x OR a.members IS DISTINCT FROM e.n",
            &[],
        )
        .expect("comparing bucket checksums");
    let wrong: Vec<String> = rows
        .iter()
        .map(|r| {
            let (b, c, m, x, n): (String, Option<i32>, Option<i64>, Option<i32>, Option<i64>) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            format!("{b}: kept {c:?} over {m:?} members, edges {x:?} over {n:?}")
        })
        .collect();
    assert!(wrong.is_empty(), "bucket checksums differ from their edges: {wrong:?}");
}
