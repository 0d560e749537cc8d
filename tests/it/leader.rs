//! Several synchrod instances on one database: exactly one captures, a standby takes over when
//! the leader is killed, and the changelog neither loses nor duplicates anything across
//! takeovers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synchro::cluster::free_port;

use crate::capture::wait_for;
use crate::capture::SCHEMA;
use crate::capture_faults::{assert_consistent_in, catch_up_in, random_workload, spawn_synchrod_with, Synchrod};
use crate::harness::TestDb;
use crate::rng::Rng;

/// A gauge from an instance's `/metrics`, or `None` while it is not answering.
fn gauge(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    crate::client::sample(&text, name)
}

fn is_leader(port: u16) -> bool {
    gauge(port, "synchro_capture_leader") == Some(1.0) && gauge(port, "synchro_capture_streaming") == Some(1.0)
}

struct Instance {
    port: u16,
    child: Synchrod,
}

/// An instance on `db`, with the sync tables in `store` when it is another database.
fn spawn(db: &TestDb, store: &TestDb, slot: &str, port: u16) -> Instance {
    let addr = format!("127.0.0.1:{port}");
    let store_url = store.url();
    let mut vars = vec![("LISTEN_ADDR", addr.as_str())];
    if store.name != db.name {
        vars.push(("SYNC_STORE_URL", store_url.as_str()));
    }
    let child = spawn_synchrod_with(db, slot, &vars);
    Instance { port, child }
}

fn leaders(instances: &[Instance]) -> Vec<usize> {
    (0..instances.len()).filter(|&i| is_leader(instances[i].port)).collect()
}

#[test]
fn three_instances_one_leader_takeover_after_kill_without_loss_or_duplicates() {
    let db = TestDb::new();
    takeovers_lose_and_duplicate_nothing(&db, &db);
}

/// With a separate sync store (`SYNC_STORE_URL`).
#[test]
fn takeovers_with_a_separate_sync_store_lose_and_duplicate_nothing() {
    let db = TestDb::new();
    let store = TestDb::new();
    takeovers_lose_and_duplicate_nothing(&db, &store);
}

/// Three instances under write load, the leader killed three times: one leader at a time,
/// takeover, and every change captured exactly once (in `store`'s changelog).
fn takeovers_lose_and_duplicate_nothing(db: &TestDb<'static>, store: &TestDb<'static>) {
    db.execute(SCHEMA);
    let slot = format!("ha_{}", db.name);
    let mut instances: Vec<Instance> = (0..3).map(|_| spawn(db, store, &slot, free_port().unwrap())).collect();
    let first = wait_for(60, "one leader among three", || match leaders(&instances)[..] {
        [one] => Some(one),
        _ => None,
    });
    for (i, inst) in instances.iter().enumerate() {
        if i != first {
            assert_eq!(gauge(inst.port, "synchro_capture_leader"), Some(0.0), "instance {i} stands by");
        }
    }
    // Standbys are healthy: they serve HTTP while another instance captures.
    for inst in &instances {
        let r = crate::client::get(format!("127.0.0.1:{}", inst.port).parse().unwrap(), "/healthz", "");
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // Write load throughout: a random mix plus rows that must appear exactly once.
    let stop = Arc::new(AtomicBool::new(false));
    let next_event = Arc::new(AtomicI32::new(1));
    let load = {
        let (stop, next_event) = (stop.clone(), next_event.clone());
        let writer_db = TestDb { cluster: db.cluster, name: db.name.clone() };
        std::thread::spawn(move || {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut c = writer_db.client();
            while !stop.load(Ordering::Acquire) {
                random_workload(&writer_db, &mut rng, 5);
                let id = next_event.fetch_add(1, Ordering::AcqRel);
                c.batch_execute(&format!("INSERT INTO events VALUES ({id}, 'once')")).unwrap();
                // Paces the load generator (a steady write rate), not a wait for a condition.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut takeovers = Vec::new();
    for round in 0..3 {
        // Let the current leader capture some of the load before it is killed.
        let target = next_event.load(Ordering::Acquire) + 50;
        wait_for(30, "the leader to capture the load", || {
            let n: i64 = store
                .client()
                .query_one("SELECT count(*) FROM sync_changelog WHERE table_name = 'events'", &[])
                .ok()?
                .get(0);
            (n >= i64::from(target)).then_some(())
        });
        let leader = match leaders(&instances)[..] {
            [one] => one,
            ref other => panic!("round {round}: expected one leader, found {other:?}"),
        };
        let killed_at = Instant::now();
        instances[leader].child.kill().unwrap();
        let _ = instances[leader].child.wait();
        let others: Vec<usize> = (0..instances.len()).filter(|&i| i != leader).collect();
        let new_leader =
            wait_for(30, "a standby to take over", || others.iter().copied().find(|&i| is_leader(instances[i].port)));
        takeovers.push(killed_at.elapsed());
        // The killed instance comes back as a standby.
        let port = instances[leader].port;
        instances[leader] = spawn(db, store, &slot, port);
        wait_for(30, "the restarted instance to stand by", || {
            (gauge(port, "synchro_capture_leader") == Some(0.0)).then_some(())
        });
        assert!(is_leader(instances[new_leader].port), "leadership stays put when the old leader returns");
    }
    stop.store(true, Ordering::Release);
    load.join().unwrap();
    catch_up_in(db, store, 999_999);
    eprintln!("takeover times: {takeovers:?}");
    for t in &takeovers {
        assert!(*t < Duration::from_secs(10), "takeover took {t:?}");
    }

    // Every event row reached the changelog exactly once; everything else is consistent.
    let total = next_event.load(Ordering::Acquire) - 1;
    let rows = store
        .client()
        .query("SELECT record_id, count(*) FROM sync_changelog WHERE table_name = 'events' GROUP BY record_id", &[])
        .unwrap();
    assert_eq!(rows.len() as i32, total, "every event row captured");
    for r in &rows {
        assert_eq!(r.get::<_, i64>(1), 1, "event {} captured once", r.get::<_, String>(0));
    }
    assert_consistent_in(db, store);
}
