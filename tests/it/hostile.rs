//! The attacks that used to take synchrod down, run as an attacker would: the `synchrod` binary
//! as a subprocess under `ulimit -n 1024`, clients on loopback, no token unless the attack
//! needs one. After each attack the process is alive, `/healthz` answers, memory is bounded,
//! and SIGTERM ends it with exit code 0 in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::capture::wait_for;
use crate::capture_faults::Synchrod;
use crate::client::{get, post, read_response, read_until_closed};
use crate::harness::TestDb;

const TABLE: &str = "CREATE TABLE items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id text, body text,
    updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)";

/// A synchrod child with `ulimit -n 1024` (soft and hard, so it cannot raise it), or another
/// limit.
pub struct Limited {
    pub child: Synchrod,
    pub addr: SocketAddr,
}

impl Limited {
    pub fn start(db: &TestDb, vars: &[(&str, &str)]) -> Limited {
        Limited::start_with_limit(db, 1024, vars)
    }

    pub fn start_with_limit(db: &TestDb, nofile: u32, vars: &[(&str, &str)]) -> Limited {
        db.execute(TABLE);
        let port = synchro::cluster::free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\""))
            .arg(env!("CARGO_BIN_EXE_synchrod"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("SYNC_TABLES", "items")
            .env("SLOT_NAME", format!("h_{}", db.name))
            .env("LISTEN_ADDR", &listen)
            .env("HTTP_THREADS", "2")
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = Synchrod(cmd.spawn().unwrap());
        let addr: SocketAddr = listen.parse().unwrap();
        wait_for(60, "synchrod to answer /healthz", || healthz(addr, Duration::from_secs(2)).then_some(()));
        Limited { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// Established connections on the server's side of its listening port (from
    /// `/proc/net/tcp`: the kernel's view, whatever the process does).
    pub fn established(&self) -> usize {
        let port = format!(":{:04X}", self.addr.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == "01"
            })
            .count()
    }

    /// Threads of the process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap().count()
    }

    pub fn assert_alive(&mut self, after: &str) {
        assert_eq!(self.child.try_wait().unwrap(), None, "synchrod died after {after}");
        assert!(healthz(self.addr, Duration::from_secs(5)), "/healthz not answered after {after}");
    }

    /// SIGTERM, then the exit status within `within`.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < within, "synchrod did not exit within {within:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether `/healthz` answers 200 within `timeout` (connect, write, read).
pub fn healthz(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.starts_with(b"HTTP/1.1 200 ")
}

#[test]
fn attack_1_a_huge_content_length_does_not_abort_the_process() {
    let db = TestDb::new();
    let mut server = Limited::start(&db, &[]);
    for head in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n",
        "POST /sync/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        "POST /sync/push HTTP/1.1\r\nHost: x\r\nX-User-ID: alice\r\nContent-Length: 1000000000000\r\n\r\n",
    ] {
        // As `printf ... | nc`: the head, then the sending side closed.
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let answer = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10))).into_owned();
        let want = if head.starts_with("GET") {
            "HTTP/1.1 200 "
        } else if head.contains("X-User-ID") {
            "HTTP/1.1 413 "
        } else {
            "HTTP/1.1 401 "
        };
        assert!(answer.starts_with(want), "{head:?} -> {answer:?}");
        assert!(answer.contains("Connection: close\r\n"), "the unread body ends the connection: {answer:?}");
        server.assert_alive(head);
    }
    // The same with the body trickling in: the server never reads it.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /sync/push HTTP/1.1\r\nHost: x\r\nX-User-ID: a\r\nContent-Length: 1000000000000\r\n\r\n")
        .unwrap();
    let _ = s.write_all(&[b'x'; 64 * 1024]);
    let r = read_response(&mut s);
    assert_eq!(r.status, 413);
    server.assert_alive("a body trickling behind a huge Content-Length");
    assert!(server.rss() < 100 << 20, "RSS {} MB", server.rss() >> 20);
    assert!(server.terminate(Duration::from_secs(15)).success());
}

#[test]
fn attack_2_unsent_bodies_hold_no_worker() {
    let db = TestDb::new();
    let mut server = Limited::start(&db, &[]);
    // Three times the worker count, each announcing a 1 MB body and sending none of it.
    let holders: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"POST /sync/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").unwrap();
            s
        })
        .collect();
    for _ in 0..5 {
        assert!(healthz(server.addr, Duration::from_secs(2)), "/healthz waits behind unsent bodies");
    }
    let r = post(
        server.addr,
        "/sync/register",
        "X-User-ID: alice\r\n",
        br#"{"client_id":"c","schema_version":0,"schema_hash":""}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    server.assert_alive("unsent bodies");
    drop(holders);
    assert!(server.terminate(Duration::from_secs(15)).success());
}

/// Opens `n` connections that send nothing.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()).collect()
}

#[test]
fn attack_3_descriptor_exhaustion_neither_kills_the_listener_nor_blocks_sigterm() {
    let db = TestDb::new();
    let mut server = Limited::start(&db, &[]);
    // More connections than the process may open descriptors: the longest-idle ones are
    // closed to make room, so /healthz is still answered.
    let held = hold(server.addr, 1100);
    assert!(held.len() >= 1000, "only {} connections", held.len());
    for _ in 0..3 {
        assert!(healthz(server.addr, Duration::from_secs(2)), "/healthz not answered with {} held", held.len());
    }
    drop(held);
    // And afterwards, as before.
    server.assert_alive("1,100 connections held and closed");
    let again = hold(server.addr, 1100);
    assert!(healthz(server.addr, Duration::from_secs(2)));
    // SIGTERM in the exhausted state: exit 0 within the deadline.
    let status = server.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    drop(again);
}

#[test]
fn attack_4_request_heads_are_bounded_in_size_and_time() {
    let db = TestDb::new();
    let mut server = Limited::start(&db, &[("HTTP_HEAD_TIMEOUT_SECS", "2")]);
    let before = server.rss();
    // Four connections each sending a header line that never ends: each is answered 431 and
    // closed after 16 KiB, long before 300 MB.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ").unwrap();
                let chunk = vec![b'a'; 64 * 1024];
                let mut sent = 0usize;
                while sent < 300 << 20 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                let answer = read_until_closed(&mut s, Duration::from_secs(10));
                (sent, String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    for t in senders {
        let (sent, answer) = t.join().unwrap();
        assert!(sent < 64 << 20, "the server kept reading: {sent} bytes");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    }
    let grown = server.rss().saturating_sub(before);
    assert!(grown < 32 << 20, "RSS grew by {} MB", grown >> 20);
    server.assert_alive("endless header lines");
    // 500 slowloris connections at one byte a second: every one is closed by the head deadline.
    let mut slow: Vec<TcpStream> = hold(server.addr, 500);
    for s in &slow {
        s.set_nonblocking(true).unwrap();
    }
    let started = Instant::now();
    let line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut open = slow.len();
    let mut i = 0;
    while open > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "{open} slowloris connections still open");
        open = 0;
        for s in &mut slow {
            let byte = line.get(i).copied().unwrap_or(b'a');
            let mut probe = [0u8; 64];
            let closed = match s.read(&mut probe) {
                Ok(0) => true,
                Ok(_) => true, // a 408 arrived: the server is closing it
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if !closed && s.write_all(&[byte]).is_ok() {
                open += 1;
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_secs(1));
        assert!(healthz(server.addr, Duration::from_secs(2)), "/healthz during slowloris");
    }
    server.assert_alive("slowloris");
    assert!(server.terminate(Duration::from_secs(15)).success());
}

#[test]
fn attack_5_clients_that_never_read_hold_no_worker() {
    let db = TestDb::new();
    let mut server = Limited::start(&db, &[("HTTP_WRITE_TIMEOUT_SECS", "3")]);
    // About 25 MB of alice's rows: one snapshot page.
    db.execute(
        "INSERT INTO items (user_id, body) SELECT 'alice', repeat(md5(g::text), 8192) FROM generate_series(1, 100) g",
    );
    let alice = "X-User-ID: alice\r\n";
    let schema = get(server.addr, "/sync/schema", alice).json();
    let (v, h) = (schema["schema_version"].clone(), schema["schema_hash"].clone());
    let register = json!({"client_id": "c", "schema_version": 0, "schema_hash": ""}).to_string();
    assert_eq!(post(server.addr, "/sync/register", alice, register.as_bytes()).status, 200);
    let snapshot = json!({"client_id": "c", "limit": 100, "schema_version": v, "schema_hash": h}).to_string();
    let request = format!(
        "POST /sync/snapshot HTTP/1.1\r\nHost: x\r\n{alice}Content-Length: {}\r\n\r\n{snapshot}",
        snapshot.len()
    );
    // One reader first, to know the page's size.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let page = read_response(&mut s);
    assert_eq!(page.status, 200);
    assert!(page.body.len() > 20 << 20, "page of {} bytes", page.body.len());
    drop(s);
    let before = server.rss();
    // Six clients (three times the workers) ask for the page and never read it.
    let stalled: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    for _ in 0..5 {
        assert!(healthz(server.addr, Duration::from_secs(2)), "/healthz waits behind clients that do not read");
    }
    let pull = json!({"client_id": "c", "schema_version": v, "schema_hash": h}).to_string();
    assert_eq!(post(server.addr, "/sync/pull", alice, pull.as_bytes()).status, 200, "workers are free");
    // Memory held for them is bounded (by HTTP_MAX_BUFFERED_BYTES), and released once the
    // write timeout drops them.
    assert!(server.rss() < before + (256 << 20), "RSS {} MB", server.rss() >> 20);
    wait_for(60, "the stalled readers dropped by the write timeout", || (server.established() == 0).then_some(()));
    for mut s in stalled {
        let got = read_until_closed(&mut s, Duration::from_secs(30));
        assert!(got.len() < page.body.len(), "a stalled reader was dropped, not served in full");
    }
    server.assert_alive("clients that never read");
    assert!(server.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_thousand_idle_keep_alive_connections_cost_no_thread_and_little_memory() {
    let db = TestDb::new();
    let mut server = Limited::start_with_limit(&db, 4096, &[]);
    assert!(healthz(server.addr, Duration::from_secs(5)));
    let (rss, threads) = (server.rss(), server.threads());
    // Each connection makes a request, then stays open, idle.
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).status, 200);
            s
        })
        .collect();
    let grown = server.rss().saturating_sub(rss);
    assert!(grown < 16 << 20, "1,000 idle connections cost {} KB of RSS", grown >> 10);
    assert!(
        server.threads() < threads + 4,
        "threads: {threads} before, {} with 1,000 idle connections",
        server.threads()
    );
    for _ in 0..20 {
        assert!(healthz(server.addr, Duration::from_secs(2)), "/healthz beside 1,000 idle connections");
    }
    for s in idle.iter_mut().step_by(100) {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(s).status, 200, "an idle connection is served again");
    }
    server.assert_alive("1,000 idle connections");
    assert!(server.terminate(Duration::from_secs(15)).success());
    drop(idle);
}
