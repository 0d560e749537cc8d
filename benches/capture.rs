//! Change-capture benchmark: prints figures, each beside a baseline measured in the same run.
//!
//! `cargo bench --bench capture`. Settings:
//! * `BENCH_ROWS`: the size of the ingest workload (default 1,000,000 rows);
//! * `BENCH_STORE=1`: the sync tables in a separate database of the same server, as with
//!   `SYNC_STORE_URL`;
//! * `BENCH_BASELINE_BIN=<path to another synchrod>`: the ingest alternates this build and that
//!   one (A B B A), to measure a change side by side with what it changes;
//! * `BENCH_DRAINS`: how many times synchrod drains the ingest workload (default 4, A B B A
//!   repeated with a baseline build);
//! * `BENCH_PHASES`: the phases to run, comma-separated, of `ingest,singles,latency,rss,rules`
//!   (default: all).
//!
//! * WAL ingest: 1M narrow rows in 1k-row transactions, drained by synchrod vs `pg_recvlogical`
//!   (same cluster, same publication, its own slot, output to /dev/null); synchrod drains it
//!   four times (`BENCH_DRAINS`) from as many slots, the sync tables emptied in between.
//! * One-row transactions ingested per second: 10,000 written while synchrod is stopped.
//! * Commit -> changelog latency p50/p99 at a steady 1k rows/s.
//! * Peak RSS of synchrod while it ingests one 1M-row transaction.
//! * The ceiling: the contract's changelog and edge tables (with their indexes) written for the
//!   same workload by bare SQL, in two sessions at once, while `pg_recvlogical` drains the
//!   workload again; measured twice, by server-side `INSERT ... SELECT` and by `COPY` of text
//!   rendered beforehand, and the faster counts. No consumer that keeps these tables can ingest
//!   faster than that.
//! * Bucket rules: 200,000 rows (`BENCH_RULES_ROWS`) of a table placed by a bucket rule
//!   (`team:<team_id>`) against the same number of an owner table (`user:<user_id>`), drained
//!   from their own slots in the order owner, rule, rule, owner, on a cluster of its own
//!   (`BENCH_PHASES=rules` runs this comparison alone; `BENCH_RULES_ROWS` sets its size).

#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use synchro::cluster::LocalCluster;

use common::{bench_cluster, in_changelog, wait_until, Synchrod};

const DB: &str = "bench";
const STORE_DB: &str = "bench_store";
const CEILING_DB: &str = "bench_ceiling";
/// The slots synchrod drains the ingest workload from, in order (`BENCH_DRAINS`, default 4): the
/// first is also the later phases' slot.
fn drain_slots() -> Vec<String> {
    let drains: usize = std::env::var("BENCH_DRAINS").ok().and_then(|v| v.parse().ok()).unwrap_or(4).max(1);
    (0..drains).map(|i| if i == 0 { "bench_slot".to_string() } else { format!("drain_{i}") }).collect()
}
/// The slots of the ceiling's two `pg_recvlogical` drains (one per [`CeilingMethod`]).
const CEILING_SLOTS: [&str; 2] = ["ceiling_insert_slot", "ceiling_copy_slot"];

/// Whether this run keeps the sync tables in [`STORE_DB`] (`BENCH_STORE=1`).
fn separate_store() -> bool {
    std::env::var("BENCH_STORE").is_ok_and(|v| v == "1")
}

fn client(cluster: &LocalCluster) -> Client {
    Client::connect(&cluster.url(DB), NoTls).expect("connect")
}

/// A session on the database that holds the changelog.
fn store_client(cluster: &LocalCluster) -> Client {
    let db = if separate_store() { STORE_DB } else { DB };
    Client::connect(&cluster.url(db), NoTls).expect("connect")
}

fn spawn_synchrod(cluster: &LocalCluster, slot: &str) -> Synchrod {
    spawn_synchrod_bin(cluster, slot, env!("CARGO_BIN_EXE_synchrod"))
}

/// A synchrod built elsewhere to compare against (`BENCH_BASELINE_BIN`), if given.
fn baseline_bin() -> Option<String> {
    std::env::var("BENCH_BASELINE_BIN").ok().filter(|p| !p.is_empty())
}

fn spawn_synchrod_bin(cluster: &LocalCluster, slot: &str, bin: &str) -> Synchrod {
    let mut cmd = Command::new(bin);
    if separate_store() {
        cmd.env("SYNC_STORE_URL", cluster.url(STORE_DB));
    }
    let child = cmd
        .env("DATABASE_URL", cluster.url(DB))
        .env("SYNC_TABLES", "items,events")
        .env("SLOT_NAME", slot)
        .env("PUBLICATION_NAME", "bench_pub")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn synchrod");
    Synchrod(child)
}

fn marker_seen(c: &mut Client, id: i64) -> bool {
    in_changelog(c, "events", id)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn stop(child: Synchrod) {
    drop(child);
}

/// `pg_recvlogical` draining `slot` up to `end_lsn` into /dev/null.
fn recvlogical(cluster: &LocalCluster, slot: &str, end_lsn: &str) -> std::process::Child {
    Command::new(cluster.bin_dir().join("pg_recvlogical"))
        .args(["-d", &format!("host=127.0.0.1 port={} user=postgres dbname={DB}", cluster.port())])
        .args(["--slot", slot, "--start", "--endpos", end_lsn, "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
        .spawn()
        .expect("pg_recvlogical")
}

/// How the ceiling writes its rows.
#[derive(Clone, Copy)]
enum CeilingMethod {
    /// Server-side `INSERT ... SELECT generate_series`: no client work at all.
    InsertSelect,
    /// `COPY ... FROM STDIN` of text rendered before the clock starts: PostgreSQL's bulk path
    /// (multi-row heap inserts), the client only sends bytes.
    Copy,
}

/// The least work a consumer that keeps the contract's tables must do for the ingest workload:
/// one changelog row and one edge per source row, with the indexes §10.1 and §10.4 require, in
/// 1k-row transactions (no lookups, no checksums, no decoding), the changelog and the edges in
/// two sessions at once, while the walsender decodes the workload for `pg_recvlogical` from
/// `slot`. Returns the wall time until all three are done.
fn ceiling(cluster: &LocalCluster, rows: i64, end_lsn: &str, slot: &str, method: CeilingMethod) -> Duration {
    // Its own database: the walsender of the application database skips its WAL cheaply.
    let ceiling_client = || Client::connect(&cluster.url(CEILING_DB), NoTls).expect("connect");
    let mut c = ceiling_client();
    c.batch_execute(
        // PROTOCOL §10.1 and §10.4, indexes included.
        "DROP TABLE IF EXISTS ceiling_changelog, ceiling_edges;
         CREATE TABLE ceiling_changelog (seq BIGSERIAL PRIMARY KEY, bucket_id TEXT NOT NULL, table_name TEXT NOT NULL,
             record_id TEXT NOT NULL, operation SMALLINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE INDEX ON ceiling_changelog (bucket_id, seq);
         CREATE INDEX ON ceiling_changelog (table_name, record_id);
         CREATE TABLE ceiling_edges (table_name TEXT NOT NULL, record_id TEXT NOT NULL, bucket_id TEXT NOT NULL,
             checksum INTEGER, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (table_name, record_id, bucket_id));
         CREATE INDEX ON ceiling_edges (bucket_id, table_name, record_id);",
    )
    .unwrap();
    let batches = rows / 1000;
    // Per table: the statement, and for COPY the text of every batch, rendered up front.
    type Batches = Vec<String>;
    let render = |line: &dyn Fn(i64) -> String, sorted: bool| -> Batches {
        (0..batches)
            .map(|b| {
                let mut lines: Vec<String> = (b * 1000..b * 1000 + 1000).map(line).collect();
                if sorted {
                    lines.sort();
                }
                lines.concat()
            })
            .collect()
    };
    let work: [(&str, Batches); 2] = match method {
        CeilingMethod::InsertSelect => [
            (
                "INSERT INTO ceiling_changelog (bucket_id, table_name, record_id, operation) \
                 SELECT 'user:user' || (g % 100), 'items', g::text, 1 FROM generate_series($1::bigint, $1::bigint + 999) g",
                Vec::new(),
            ),
            (
                "INSERT INTO ceiling_edges (table_name, record_id, bucket_id, checksum, updated_at) \
                 SELECT 'items', g::text, 'user:user' || (g % 100), g::int, now() FROM generate_series($1::bigint, $1::bigint + 999) g \
                 ORDER BY 1, 2, 3",
                Vec::new(),
            ),
        ],
        CeilingMethod::Copy => [
            (
                "COPY ceiling_changelog (bucket_id, table_name, record_id, operation) FROM STDIN",
                render(&|g| format!("user:user{}\titems\t{g}\t1\n", g % 100), false),
            ),
            (
                // In key order, as the writer sends its edges.
                "COPY ceiling_edges (table_name, record_id, bucket_id, checksum) FROM STDIN",
                render(&|g| format!("items\t{g}\tuser:user{}\t{g}\n", g % 100), true),
            ),
        ],
    };
    let started = Instant::now();
    let mut drain = recvlogical(cluster, slot, end_lsn);
    std::thread::scope(|scope| {
        for (sql, data) in &work {
            scope.spawn(move || {
                let mut c = ceiling_client();
                for batch in 0..batches {
                    if data.is_empty() {
                        c.execute(*sql, &[&(batch * 1000)]).unwrap();
                    } else {
                        let mut w = c.copy_in(*sql).unwrap();
                        std::io::Write::write_all(&mut w, data[batch as usize].as_bytes()).unwrap();
                        w.finish().unwrap();
                    }
                }
            });
        }
    });
    assert!(drain.wait().expect("pg_recvlogical").success());
    started.elapsed()
}

fn main() {
    if ["ingest", "singles", "latency", "rss"].into_iter().any(phase) {
        capture_phases();
    }
    if phase("rules") {
        rules_ingest();
    }
}

/// The phases on one cluster with an owner table: ingest, singles, latency, rss.
fn capture_phases() {
    let rows: i64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    // pg_stat_statements: where the writer's time goes (printed after the ingest).
    let cluster =
        bench_cluster("capture", DB, &["max_wal_size = '4GB'", "shared_preload_libraries = 'pg_stat_statements'"]);
    cluster.psql("postgres", &format!("CREATE DATABASE {STORE_DB}")).expect("store db");
    cluster.psql("postgres", &format!("CREATE DATABASE {CEILING_DB}")).expect("ceiling db");
    let mut c = client(&cluster);
    // Where the changelog is read (the application database unless BENCH_STORE=1).
    let mut s = store_client(&cluster);
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, user_id text NOT NULL, n int NOT NULL);
         CREATE TABLE events (id bigint PRIMARY KEY, sent_at timestamptz DEFAULT clock_timestamp());
         CREATE PUBLICATION bench_pub FOR TABLE items, events;
         CREATE EXTENSION IF NOT EXISTS pg_stat_statements;",
    )
    .unwrap();
    println!(
        "synchro change-capture benchmark ({rows} rows, PostgreSQL {}{})",
        c.query_one("SHOW server_version", &[]).unwrap().get::<_, String>(0),
        if separate_store() { ", sync tables in a separate database" } else { "" }
    );

    // Let synchrod create its slot, migrate and backfill, then stop it so the workload queues up.
    let child = spawn_synchrod(&cluster, "bench_slot");
    // Streaming, which also means the slot exists and the (empty) tables are backfilled: the
    // slot is briefly active while it is being created, so that alone is not enough.
    let mut probe = 0i64;
    wait_until("synchrod to stream", Duration::from_secs(60), || {
        // A fresh row each time: one written before the slot existed is never streamed.
        probe -= 1;
        c.execute("INSERT INTO events (id) VALUES ($1)", &[&probe]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        marker_seen(&mut s, probe)
    });
    stop(child);
    if phase("ingest") {
        ingest(&cluster, &mut c, &mut s, rows);
    }
    if phase("singles") {
        singles(&cluster, &mut c, &mut s);
    }
    if phase("latency") {
        latency(&cluster, &mut c, &mut s);
    }
    if phase("rss") {
        rss(&cluster, &mut c, &mut s, rows);
    }
}

/// Whether `BENCH_PHASES` selects phase `name` (all phases when it is not set).
fn phase(name: &str) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

/// Phase 1, WAL ingest: 1M narrow rows in 1k-row transactions, drained by `pg_recvlogical`, by
/// the two ceilings and four times by synchrod.
fn ingest(cluster: &LocalCluster, c: &mut Client, s: &mut Client, rows: i64) {
    c.execute("SELECT pg_create_logical_replication_slot('baseline_slot', 'pgoutput')", &[]).unwrap();
    // synchrod drains the workload four times, each from its own slot created here.
    let drain_slots = drain_slots();
    for slot in drain_slots.iter().skip(1) {
        c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot]).unwrap();
    }
    // The ceiling's own drains of the same workload.
    for slot in CEILING_SLOTS {
        c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).unwrap();
    }

    let started = Instant::now();
    for batch in 0..(rows / 1000) {
        c.execute(
            "INSERT INTO items SELECT g, 'user' || (g % 100), g::int FROM generate_series($1::bigint, $1::bigint + 999) g",
            &[&(batch * 1000)],
        )
        .unwrap();
    }
    c.execute("INSERT INTO events (id) VALUES (1)", &[]).unwrap();
    let end_lsn: String = c.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    println!("workload written in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let status = recvlogical(cluster, "baseline_slot", &end_lsn).wait().expect("pg_recvlogical");
    assert!(status.success());
    let baseline = started.elapsed();
    // Right after the baseline, while the server is in the same state (autovacuum has yet to
    // process the tables of the later phases).
    let base_rate = rows as f64 / baseline.as_secs_f64();
    let methods = [(CeilingMethod::InsertSelect, "INSERT ... SELECT"), (CeilingMethod::Copy, "COPY FROM STDIN")];
    let mut bound_rate = 0f64;
    for ((method, label), slot) in methods.into_iter().zip(CEILING_SLOTS) {
        let took = ceiling(cluster, rows, &end_lsn, slot, method);
        c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).unwrap();
        let rate = rows as f64 / took.as_secs_f64();
        println!(
            "  ceiling by {label}: the contract's changelog and edge tables alone, in two sessions while pg_recvlogical \
             drains the workload: {rate:.0} rows/s ({:.1} s) | {:.2}x",
            took.as_secs_f64(),
            rate / base_rate
        );
        bound_rate = bound_rate.max(rate);
    }
    // (rates of this build, rates of the baseline build), two drains of each.
    let mut rates: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let baseline_synchrod = baseline_bin();
    for (i, slot) in drain_slots.iter().enumerate() {
        // A B B A, repeated: neither build gains from going first or last. Without a baseline
        // build, this build drains every time.
        let bin = match &baseline_synchrod {
            Some(b) if i % 4 == 1 || i % 4 == 2 => b.as_str(),
            _ => env!("CARGO_BIN_EXE_synchrod"),
        };
        let is_baseline = bin != env!("CARGO_BIN_EXE_synchrod");
        let label = if is_baseline { "baseline build" } else { "this build" };
        if i > 0 {
            // Start from empty sync tables again, as the first drain did, once the previous
            // synchrod's sessions are gone (a backend finishing its last statement would
            // otherwise deadlock with the TRUNCATE).
            wait_until("the previous synchrod's sessions to end", Duration::from_secs(60), || {
                c.query_one("SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'synchrod'", &[])
                    .map(|r| r.get(0))
                    .unwrap_or(false)
            });
            s.batch_execute("TRUNCATE sync_changelog, sync_bucket_edges").unwrap();
        }
        c.execute("SELECT pg_stat_statements_reset()", &[]).unwrap();
        let started = Instant::now();
        let child = spawn_synchrod_bin(cluster, slot, bin);
        wait_until("synchrod to ingest the workload", Duration::from_secs(1800), || marker_seen(s, 1));
        let ours = started.elapsed();
        stop(child);
        let our_rate = rows as f64 / ours.as_secs_f64();
        if is_baseline { &mut rates.1 } else { &mut rates.0 }.push(our_rate);
        println!(
            "WAL ingest, {rows} rows in 1k-row tx, {label}: synchrod {:.0} rows/s ({:.1} s) | pg_recvlogical {:.0} rows/s ({:.1} s) \
             | ratio {:.2}x (target >= 0.5x); {:.2}x of the ceiling",
            our_rate,
            ours.as_secs_f64(),
            base_rate,
            baseline.as_secs_f64(),
            our_rate / base_rate,
            our_rate / bound_rate
        );
        println!("  writer statements during the ingest (pg_stat_statements, by total time):");
        for r in c
            .query(
                "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements \
                 WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 6",
                &[],
            )
            .unwrap()
        {
            let (calls, ms, n, q): (i64, f64, i64, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
            println!("    {ms:>9.0} ms  {calls:>6} calls  {n:>8} rows  {q}");
        }
    }
    for slot in drain_slots.iter().skip(1) {
        // Its walsender exits a moment after synchrod.
        wait_until("a drain slot to be released", Duration::from_secs(60), || {
            c.execute("SELECT pg_drop_replication_slot($1)", &[slot]).is_ok()
        });
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "  ceiling (the faster of the two): {bound_rate:.0} rows/s | best possible ratio {:.2}x; \
         this build, mean of {} drains: {:.0} rows/s ({:.2}x of pg_recvlogical, {:.2}x of the ceiling)",
        bound_rate / base_rate,
        rates.0.len(),
        mean(&rates.0),
        mean(&rates.0) / base_rate,
        mean(&rates.0) / bound_rate,
    );
    if !rates.1.is_empty() {
        println!(
            "  baseline build, mean of {} drains: {:.0} rows/s ({:.2}x of pg_recvlogical, {:.2}x of the ceiling); \
             this build is {:.2}x as fast",
            rates.1.len(),
            mean(&rates.1),
            mean(&rates.1) / base_rate,
            mean(&rates.1) / bound_rate,
            mean(&rates.0) / mean(&rates.1)
        );
    }
}

/// Phase 2: 10,000 one-row transactions written while synchrod is stopped, then ingested after
/// it starts; for this build and the baseline build (`BENCH_BASELINE_BIN`), each on a slot of
/// its own. The rate counts from the first of them reaching the changelog (startup is timed
/// apart).
fn singles(cluster: &LocalCluster, c: &mut Client, s: &mut Client) {
    let singles: i64 = 10_000;
    let mut builds = vec![("this build", env!("CARGO_BIN_EXE_synchrod").to_string())];
    builds.extend(baseline_bin().map(|b| ("baseline build", b)));
    for (n, (label, bin)) in builds.into_iter().enumerate() {
        let slot = format!("singles_{n}");
        let first = 10_000_000 + 1_000_000 * n as i64;
        let marker = 2 + 10 * n as i64;
        // The slot exists and synchrod streams from it before the workload is written.
        let child = spawn_synchrod_bin(cluster, &slot, &bin);
        let mut probe = -1_000_000 * (n as i64 + 1);
        wait_until("synchrod to stream", Duration::from_secs(60), || {
            probe -= 1;
            c.execute("INSERT INTO events (id) VALUES ($1)", &[&probe]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            marker_seen(s, probe)
        });
        stop(child);
        for i in 0..singles {
            c.execute("INSERT INTO items VALUES ($1, 'solo', 0)", &[&(first + i)]).unwrap();
        }
        c.execute("INSERT INTO events (id) VALUES ($1)", &[&marker]).unwrap();
        let started = Instant::now();
        let child = spawn_synchrod_bin(cluster, &slot, &bin);
        wait_until("the first one-row transaction", Duration::from_secs(600), || {
            s.query_one(
                "SELECT EXISTS (SELECT 1 FROM sync_changelog WHERE table_name = 'items' AND record_id = $1)",
                &[&first.to_string()],
            )
            .map(|r| r.get(0))
            .unwrap_or(false)
        });
        let startup = started.elapsed();
        wait_until("one-row transactions", Duration::from_secs(600), || marker_seen(s, marker));
        let total = started.elapsed();
        let ingest = total - startup;
        stop(child);
        println!(
            "one-row transactions ingested, {label}: {:.0} tx/s ({singles} tx in {:.2} s after a {:.2} s startup; \
             target >= 5000 tx/s)",
            singles as f64 / ingest.as_secs_f64(),
            ingest.as_secs_f64(),
            startup.as_secs_f64(),
        );
        wait_until("the singles slot to be released", Duration::from_secs(60), || {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).is_ok()
        });
    }
}

/// Phase 3: commit -> changelog latency at a steady 1k rows/s, for this build and the baseline
/// build (`BENCH_BASELINE_BIN`), each on a slot of its own created just before. The changelog
/// row's insertion time is measured with `clock_timestamp()`, so it leaves out nothing but
/// the writer's own commit.
fn latency(cluster: &LocalCluster, c: &mut Client, s: &mut Client) {
    s.batch_execute("ALTER TABLE sync_changelog ALTER COLUMN created_at SET DEFAULT clock_timestamp()").unwrap();
    let mut builds = vec![("this build", env!("CARGO_BIN_EXE_synchrod").to_string())];
    builds.extend(baseline_bin().map(|b| ("baseline build", b)));
    for (n, (label, bin)) in builds.into_iter().enumerate() {
        let slot = format!("latency_{n}");
        let first = 1_000_000 * (n as i64 + 1);
        let child = spawn_synchrod_bin(cluster, &slot, &bin);
        // Streaming once a row written now arrives.
        let mut probe = first - 1;
        wait_until("synchrod to stream", Duration::from_secs(60), || {
            probe -= 1;
            c.execute("INSERT INTO events (id) VALUES ($1)", &[&probe]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            marker_seen(s, probe)
        });
        let total = 5_000i64;
        let tick = Duration::from_millis(1);
        let mut next = Instant::now();
        for i in 0..total {
            c.execute("INSERT INTO events (id) VALUES ($1)", &[&(first + i)]).unwrap();
            next += tick;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        wait_until("latency rows", Duration::from_secs(60), || marker_seen(s, first + total - 1));
        stop(child);
        // Joined here rather than in SQL: the changelog may be in another database.
        let epoch_ms = |client: &mut Client, sql: &str| -> std::collections::HashMap<String, f64> {
            client
                .query(sql, &[&first, &(first + total)])
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1)))
                .collect()
        };
        let sent = epoch_ms(
            c,
            "SELECT id::text, (EXTRACT(EPOCH FROM sent_at) * 1000)::float8 FROM events WHERE id >= $1 AND id < $2",
        );
        let logged = epoch_ms(
            s,
            "SELECT record_id, (EXTRACT(EPOCH FROM created_at) * 1000)::float8 FROM sync_changelog \
             WHERE table_name = 'events' AND record_id::int8 >= $1 AND record_id::int8 < $2",
        );
        let mut lat: Vec<f64> = sent.iter().filter_map(|(id, at)| Some(logged.get(id)? - at)).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!(
            "commit -> changelog latency at 1k rows/s, {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 50 ms)",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
        // Its walsender exits a moment after synchrod.
        wait_until("the latency slot to be released", Duration::from_secs(60), || {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).is_ok()
        });
    }
}

/// Phase 4: peak RSS of synchrod while it ingests one 1M-row transaction.
fn rss(cluster: &LocalCluster, c: &mut Client, s: &mut Client, rows: i64) {
    let child = spawn_synchrod(cluster, "bench_slot");
    let pid = child.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle = peak_rss_kib(pid);
    c.execute(
        "INSERT INTO items SELECT g, 'big', 1 FROM generate_series(20000000, 20000000 + $1::bigint - 1) g",
        &[&rows],
    )
    .unwrap();
    c.execute("INSERT INTO events (id) VALUES (3)", &[]).unwrap();
    wait_until("the large transaction", Duration::from_secs(1800), || marker_seen(s, 3));
    let peak = peak_rss_kib(pid);
    println!(
        "synchrod RSS: idle {:.1} MB, peak during a {rows}-row transaction {:.1} MB (target <= 64 MB)",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    stop(child);
}

/// The two tables of the bucket-rules comparison and what syncs them.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// `owned`: bucket `user:<user_id>`.
    Owner,
    /// `shared`: bucket `team:<team_id>` by a bucket rule over `team_members`.
    Rule,
}

/// A synchrod syncing one side of the comparison from `slot`.
fn spawn_placement(cluster: &LocalCluster, slot: &str, placement: Placement, rules: &str) -> Synchrod {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synchrod"));
    match placement {
        Placement::Owner => cmd.env("SYNC_TABLES", "owned,events").env("PUBLICATION_NAME", "pub_owned"),
        Placement::Rule => {
            cmd.env("SYNC_TABLES", "shared,events").env("PUBLICATION_NAME", "pub_shared").env("BUCKET_RULES", rules)
        }
    };
    let child = cmd
        .env("DATABASE_URL", cluster.url(DB))
        .env("SLOT_NAME", slot)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn synchrod");
    Synchrod(child)
}

/// Capture ingest of a table placed by a bucket rule against an owner table, same rows, same
/// transactions, in one run: each drains its own copy of the workload from its own slot, owner,
/// rule, rule, owner, from empty sync tables.
fn rules_ingest() {
    let rows: i64 = std::env::var("BENCH_RULES_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let cluster = bench_cluster("capture-rules", DB, &["max_wal_size = '4GB'"]);
    let mut c = client(&cluster);
    c.batch_execute(
        "CREATE TABLE owned (id bigint PRIMARY KEY, user_id text NOT NULL, n int NOT NULL);
         CREATE TABLE shared (id bigint PRIMARY KEY, team_id bigint NOT NULL, n int NOT NULL);
         CREATE TABLE team_members (team_id bigint NOT NULL, user_id text NOT NULL, PRIMARY KEY (team_id, user_id));
         CREATE TABLE events (id bigint PRIMARY KEY, sent_at timestamptz DEFAULT clock_timestamp());
         INSERT INTO team_members SELECT g, 'user' || g FROM generate_series(0, 99) g;
         CREATE PUBLICATION pub_owned FOR TABLE owned, events;
         CREATE PUBLICATION pub_shared FOR TABLE shared, events, team_members;",
    )
    .unwrap();
    let rules = common::team_rules(&cluster, "shared");
    println!("bucket rules: capture ingest of {rows} rows in 1k-row transactions, a rule table vs an owner table");
    // Migrations, slots and the (empty) backfills first, so the drains below do only the ingest.
    let drains = [
        ("owner_a1", Placement::Owner),
        ("rule_b1", Placement::Rule),
        ("rule_b2", Placement::Rule),
        ("owner_a2", Placement::Owner),
    ];
    let mut probe = 0i64;
    for placement in [Placement::Owner, Placement::Rule] {
        let child = spawn_placement(&cluster, "warmup", placement, &rules);
        wait_until("synchrod to stream", Duration::from_secs(60), || {
            probe -= 1;
            c.execute("INSERT INTO events (id) VALUES ($1)", &[&probe]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            marker_seen(&mut c, probe)
        });
        stop(child);
        wait_until("the warm-up slot to be released", Duration::from_secs(60), || {
            c.execute("SELECT pg_drop_replication_slot('warmup')", &[]).is_ok()
        });
    }
    for (slot, _) in drains {
        c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).unwrap();
    }
    for batch in 0..(rows / 1000) {
        c.execute(
            "INSERT INTO owned SELECT g, 'user' || (g % 100), g::int FROM generate_series($1::bigint, $1::bigint + 999) g",
            &[&(batch * 1000)],
        )
        .unwrap();
        c.execute(
            "INSERT INTO shared SELECT g, g % 100, g::int FROM generate_series($1::bigint, $1::bigint + 999) g",
            &[&(batch * 1000)],
        )
        .unwrap();
    }
    c.execute("INSERT INTO events (id) VALUES (1)", &[]).unwrap();
    let mut rates = [Vec::new(), Vec::new()];
    for (slot, placement) in drains {
        wait_until("the previous synchrod's sessions to end", Duration::from_secs(60), || {
            c.query_one("SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'synchrod'", &[])
                .map(|r| r.get(0))
                .unwrap_or(false)
        });
        c.batch_execute("TRUNCATE sync_changelog, sync_bucket_edges").unwrap();
        let started = Instant::now();
        let child = spawn_placement(&cluster, slot, placement, &rules);
        wait_until("synchrod to ingest the workload", Duration::from_secs(1800), || marker_seen(&mut c, 1));
        let took = started.elapsed();
        stop(child);
        let table = if placement == Placement::Owner { "owned" } else { "shared" };
        let written: i64 =
            c.query_one("SELECT count(*) FROM sync_changelog WHERE table_name = $1", &[&table]).unwrap().get(0);
        assert_eq!(written, rows, "every row reached the changelog");
        let rate = rows as f64 / took.as_secs_f64();
        rates[(placement == Placement::Rule) as usize].push(rate);
        println!(
            "  {}: {rate:.0} rows/s ({:.1} s)",
            if placement == Placement::Owner { "owner table (user:<id>)" } else { "rule table (team:<key>)" },
            took.as_secs_f64()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "  rule table at {:.2}x of the owner table (means of two drains each; target >= 0.8x)",
        mean(&rates[1]) / mean(&rates[0])
    );
}
