#[allow(dead_code)]
#[path = "../benches/common/mod.rs"]
mod common;
use common::{bench_cluster, closed_loop, Conn};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use synchro::config::Config;
fn ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .map(|t| {
            let rest = &t[t.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        })
        .unwrap_or(0)
}
fn pg_ticks(pm: &str) -> u64 {
    let mut sum = ticks(pm);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name.chars().all(|c| c.is_ascii_digit()) {
            if let Ok(t) = std::fs::read_to_string(format!("/proc/{name}/stat")) {
                let rest = &t[t.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = rest.split(' ').collect();
                if f[1] == pm {
                    sum += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
                }
            }
        }
    }
    sum
}
fn main() {
    let cluster = bench_cluster(
        "scratchpull",
        "bench",
        &["shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track_planning = on"],
    );
    cluster.psql("bench", synchro::dev::DEMO_SCHEMA).unwrap();
    cluster.psql("bench", "CREATE EXTENSION pg_stat_statements").unwrap();
    synchro::logging::set_level(synchro::config::LogLevel::Error);
    let mut vars = HashMap::new();
    vars.insert("DATABASE_URL".to_string(), cluster.url("bench"));
    vars.insert("SYNC_TABLES".to_string(), "tasks,comments,categories".to_string());
    vars.insert("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string());
    vars.insert("HTTP_THREADS".to_string(), "8".to_string());
    let running = synchro::server::start(&Config::from_vars(&vars).unwrap()).unwrap();
    let addr = running.addr;
    let mut admin = Conn::new(addr);
    let (_, schema) = admin.call("GET", "/sync/schema", "u0", "");
    let schema: Value = serde_json::from_slice(&schema).unwrap();
    let (v, h) = (schema["schema_version"].as_i64().unwrap(), schema["schema_hash"].as_str().unwrap().to_string());
    for i in 0..64 {
        let user = format!("u{i}");
        admin.call(
            "POST",
            "/sync/register",
            &user,
            &json!({"client_id": "c", "schema_version": 0, "schema_hash": ""}).to_string(),
        );
        admin.call(
            "POST",
            "/sync/snapshot",
            &user,
            &json!({"client_id": "c", "limit": 1000, "schema_version": v, "schema_hash": h}).to_string(),
        );
    }
    let mut c = postgres::Client::connect(&cluster.url("bench"), postgres::NoTls).unwrap();
    let head: i64 = c.query_one("SELECT COALESCE(max(seq), 0) FROM sync_changelog", &[]).unwrap().get(0);
    c.batch_execute(
        "INSERT INTO tasks (user_id, title) SELECT 'u' || (g % 64), 't' || g FROM generate_series(0, 6399) g",
    )
    .unwrap();
    loop {
        let n: i64 = c.query_one("SELECT count(*) FROM sync_changelog WHERE table_name = 'tasks'", &[]).unwrap().get(0);
        if n >= 6400 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.batch_execute("SELECT pg_stat_statements_reset()").unwrap();
    let secs: u64 = std::env::var("SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let pm =
        std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap().lines().next().unwrap().to_string();
    let hh = h.clone();
    let full = Arc::new(move |i: usize, c: &mut Conn| {
        let body = json!({"client_id": "c", "checkpoint": head, "limit": 100, "schema_version": v, "schema_hash": hh})
            .to_string();
        let (st, b) = c.call("POST", "/sync/pull", &format!("u{i}"), &body);
        assert_eq!(st, 200);
        assert!(b.len() > 1000);
    });
    println!("pid {} ready", std::process::id());
    let (me0, pg0) = (ticks("self"), pg_ticks(&pm));
    let (rps, p50, p99) = closed_loop(64, secs, |_| addr, full);
    let (me1, pg1) = (ticks("self"), pg_ticks(&pm));
    let n = rps * secs as f64;
    println!(
        "pull {rps:.0} req/s p50 {p50:.1} p99 {p99:.1}; cpu per pull: this process {:.2} ms, postgres {:.2} ms",
        (me1 - me0) as f64 * 10.0 / n,
        (pg1 - pg0) as f64 * 10.0 / n
    );
    for r in c.query("SELECT calls, plans::text || ' plans ' || round(total_plan_time::numeric,1)::text, round(mean_exec_time::numeric,3)::text, left(query, 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12", &[]).unwrap() {
        println!("{:>8} {:>10} {:>8} {}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3));
    }
    running.shutdown(std::time::Duration::from_secs(5));
}
