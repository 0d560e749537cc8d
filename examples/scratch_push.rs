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
        "scratch",
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
    if let Ok(v) = std::env::var("PSB") {
        vars.insert("PUSH_SET_BASED".into(), v);
    }
    let mut lockc = postgres::Client::connect(&cluster.url("bench"), postgres::NoTls).unwrap();
    if std::env::var("NOCAP").is_ok() {
        lockc.execute("SELECT pg_advisory_lock($1)", &[&synchro::capture::leader::lock_key("synchro_slot")]).unwrap();
    }
    let running = synchro::server::start(&Config::from_vars(&vars).unwrap()).unwrap();
    let addr = running.addr;
    let mut admin = Conn::new(addr);
    let (_, schema) = admin.call("GET", "/sync/schema", "u0", "");
    let schema: Value = serde_json::from_slice(&schema).unwrap();
    let (v, h) = (schema["schema_version"].as_i64().unwrap(), schema["schema_hash"].as_str().unwrap().to_string());
    for i in 0..16 {
        admin.call(
            "POST",
            "/sync/register",
            &format!("u{i}"),
            &json!({"client_id": "c", "schema_version": 0, "schema_hash": ""}).to_string(),
        );
    }
    let mut c = postgres::Client::connect(&cluster.url("bench"), postgres::NoTls).unwrap();
    c.batch_execute("SELECT pg_stat_statements_reset()").unwrap();
    println!("pid {} ready", std::process::id());
    let secs: u64 = std::env::var("SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ctr = counter.clone();
    let h2 = h.clone();
    let request = Arc::new(move |i: usize, c: &mut Conn| {
        let h = &h2;
        let base = ctr.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        let changes: Vec<Value> = (0..100).map(|k| {
            let id = format!("80000000-0000-0000-0000-{:012}", base + k);
            json!({"id": id, "table_name": "tasks", "operation": "create", "client_updated_at": "2026-01-01T00:00:00Z", "data": {"title": "p"}})
        }).collect();
        let body = json!({"client_id": "c", "changes": changes, "schema_version": v, "schema_hash": h}).to_string();
        let (st, _) = c.call("POST", "/sync/push", &format!("u{i}"), &body);
        assert_eq!(st, 200);
    });
    let pm =
        std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap().lines().next().unwrap().to_string();
    let (me0, pg0) = (ticks("self"), pg_ticks(&pm));
    let (rps, p50, p99) = closed_loop(16, secs, |_| addr, request);
    let (me1, pg1) = (ticks("self"), pg_ticks(&pm));
    let pushes = rps * secs as f64;
    println!(
        "cpu per push: this process {:.2} ms, postgres {:.2} ms",
        (me1 - me0) as f64 * 10.0 / pushes,
        (pg1 - pg0) as f64 * 10.0 / pushes
    );
    println!("push {:.0} records/s p50 {p50:.1} p99 {p99:.1}", rps * 100.0);
    // The engine alone, no HTTP.
    let engine = running.engine.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hs: Vec<_> = (0..16)
        .map(|i| {
            let (engine, counter, total, h) = (engine.clone(), counter.clone(), total.clone(), h.clone());
            std::thread::spawn(move || {
                let user = synchro::types::UserId::new(&format!("u{i}")).unwrap();
                let mut lat = Vec::new();
                while std::time::Instant::now() < deadline {
                    let base = counter.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                    let changes = (0..100)
                        .map(|k| synchro::protocol::PushRecord {
                            id: format!("80000000-0000-0000-0000-{:012}", base + k),
                            table_name: "tasks".into(),
                            operation: "create".into(),
                            data: Some(json!({"title": "p"})),
                            client_updated_at: Some("2026-01-01T00:00:00Z".into()),
                            base_updated_at: None,
                        })
                        .collect();
                    let req = synchro::protocol::PushRequest {
                        client_id: "c".into(),
                        changes,
                        schema: synchro::protocol::SchemaPair { version: v, hash: h.clone() },
                    };
                    let t = std::time::Instant::now();
                    engine.push(&user, &req).unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    total.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    let (me0, pg0) = (ticks("self"), pg_ticks(&pm));
    let mut lat: Vec<f64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let (me1, pg1) = (ticks("self"), pg_ticks(&pm));
    let pushes = total.load(std::sync::atomic::Ordering::Relaxed) as f64 / 100.0;
    println!(
        "engine cpu per push (partial window): this process {:.2} ms, postgres {:.2} ms",
        (me1 - me0) as f64 * 10.0 / pushes,
        (pg1 - pg0) as f64 * 10.0 / pushes
    );
    lat.sort_by(f64::total_cmp);
    println!(
        "engine only: {:.0} records/s p50 {:.1}",
        total.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs as f64,
        lat[lat.len() / 2]
    );
    for r in c.query("SELECT calls, plans::text || ' plans ' || round(total_plan_time::numeric,1)::text, round(mean_exec_time::numeric,3)::text, left(query, 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 14", &[]).unwrap() {
        println!("{:>8} {:>10} {:>8} {}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3));
    }
    c.batch_execute("SELECT pg_stat_statements_reset(); CREATE SEQUENCE bench_push_ids").unwrap();
    let script = "/tmp/scratch_push.sql";
    std::fs::write(script, "\\set u random(0, 15)\nINSERT INTO tasks (id, user_id, title, updated_at) SELECT ('a1000000-0000-0000-0000-' || lpad(nextval('bench_push_ids')::text, 12, '0'))::uuid, 'u' || CAST(:u AS text), 'p', now() FROM generate_series(1, 100);\n").unwrap();
    let _ = std::process::Command::new("chmod").arg("644").arg(script).status();
    let out = std::process::Command::new(cluster.bin_dir().join("pgbench"))
        .args(["-n", "-M", "prepared", "-c", "16", "-j", "2", "-T", "8", "-h", "127.0.0.1", "-p"])
        .arg(cluster.port().to_string())
        .args(["-U", "postgres", "-f", script, "bench"])
        .output()
        .unwrap();
    println!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("tps") || l.contains("latency"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for r in c.query("SELECT calls, round(total_exec_time::numeric,1)::text, round(mean_exec_time::numeric,3)::text, left(query, 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 6", &[]).unwrap() {
        println!("{:>8} {:>10} {:>8} {}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3));
    }
    running.shutdown(std::time::Duration::from_secs(5));
}
