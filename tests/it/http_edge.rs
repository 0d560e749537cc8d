//! The HTTP edge's properties over real sockets, against a stub API: framing and limits before
//! a worker sees anything, workers held by no client, bounded memory for unread responses, the
//! connection cap, keep-alive and pipelining, and shutdown with a deadline.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use synchro::http::routes::Router;
use synchro::http::{ApiError, HeaderAuthenticator, HttpConfig, HttpServer, SyncApi};
use synchro::types::UserId;
use synchro::version::VersionGate;

use crate::capture::wait_for;
use crate::client::{get, post, read_response, read_until_closed, Resp};

/// `pull` blocks while `client_id` is "block" (until released or 20 s); `snapshot` answers
/// `{"pad": "xxx..."}` with `size` bytes of padding.
struct Stub {
    gate: Mutex<crossbeam_channel::Receiver<()>>,
    blocked: AtomicUsize,
    served: AtomicUsize,
}

impl SyncApi for Stub {
    fn pull(&self, _user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        if body.get("client_id").and_then(Value::as_str) == Some("block") {
            let gate = self.gate.lock().unwrap().clone();
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv_timeout(Duration::from_secs(20));
            self.blocked.fetch_sub(1, Ordering::SeqCst);
        }
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(br#"{"ok":true}"#.to_vec())
    }
    fn snapshot(&self, _user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        let size = body.get("size").and_then(Value::as_u64).unwrap_or(0) as usize;
        self.served.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::with_capacity(size + 16);
        out.extend_from_slice(b"{\"pad\":\"");
        out.resize(out.len() + size, b'x');
        out.extend_from_slice(b"\"}");
        Ok(out)
    }
}

struct Edge {
    server: Option<HttpServer>,
    addr: SocketAddr,
    stub: Arc<Stub>,
    release: crossbeam_channel::Sender<()>,
}

impl Edge {
    fn start(tune: impl FnOnce(&mut HttpConfig)) -> Edge {
        let (release, gate) = crossbeam_channel::unbounded();
        let stub = Arc::new(Stub { gate: Mutex::new(gate), blocked: AtomicUsize::new(0), served: AtomicUsize::new(0) });
        let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        config.threads = 2;
        config.queue = 64;
        config.max_body_bytes = 1 << 20;
        tune(&mut config);
        let router = Router {
            api: stub.clone(),
            auth: Arc::new(HeaderAuthenticator),
            gate: VersionGate::new(""),
            admission: Arc::new(synchro::http::AdmitAll),
        };
        let server = HttpServer::start(config, router).unwrap();
        let addr = server.local_addr();
        Edge { server: Some(server), addr, stub, release }
    }

    fn server(&self) -> &HttpServer {
        self.server.as_ref().unwrap()
    }

    fn release_all(&self) {
        for _ in 0..64 {
            let _ = self.release.send(());
        }
    }

    fn shutdown(mut self, deadline: Duration) -> Duration {
        let started = Instant::now();
        self.server.take().unwrap().shutdown(deadline);
        started.elapsed()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.release_all();
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_secs(5));
        }
    }
}

const USER: &str = "X-User-ID: alice\r\n";
const PULL: &str = r#"{"client_id":"c","schema_version":1,"schema_hash":"h"}"#;

fn pull_request(client_id: &str) -> String {
    let body = format!(r#"{{"client_id":"{client_id}","schema_version":1,"schema_hash":"h"}}"#);
    format!("POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// Sends `raw`, returns the status line's code and whether the server then closed.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(raw);
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10))).into_owned();
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[test]
fn bad_framing_is_refused_at_once_and_the_connection_closed() {
    // Long timeouts: a server that waited for more bytes instead of refusing would trip the
    // 10 s read timeout of `exchange`.
    let edge = Edge::start(|c| {
        c.head_timeout = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(60);
    });
    let long_head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "a".repeat(17 * 1024));
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(101));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "CL and TE",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        ("negative CL", b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        ("garbage CL", b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".to_vec(), 400),
        (
            "overflowing CL",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two CLs",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
        ),
        ("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n".to_vec(), 400),
        ("bare CR", b"GET /healthz HTTP/1.1\rHost: x\r\n\r\n".to_vec(), 400),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400),
        ("non-UTF-8 path", b"GET /sync/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("TLS handshake", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400),
        ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), 400),
        ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), 400),
        (
            "bad chunk size",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            "gzip coding",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        ("unknown version", b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(), 505),
        ("head over 16 KiB", long_head.into_bytes(), 431),
        ("101 headers", many_headers.into_bytes(), 431),
        (
            "unknown expectation",
            b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            417,
        ),
    ];
    for (case, raw, status) in cases {
        let (got, answer) = exchange(edge.addr, &raw);
        assert_eq!(got, status, "{case}: {answer:?}");
        assert!(answer.contains("Connection: close\r\n"), "{case}: {answer:?}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{case}: {e}: {body:?}"));
        assert!(json["error"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {json}");
    }
    assert_eq!(edge.stub.served.load(Ordering::SeqCst), 0, "no refused request reached a handler");
}

#[test]
fn an_oversized_content_length_is_answered_before_the_body_and_never_read() {
    let edge = Edge::start(|_| {});
    // The client sends the head only and waits: the answer comes without the body.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    let head = format!("POST /sync/push HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n", (1 << 20) + 1);
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.body.as_str()), (413, "{\"error\":\"request body too large\"}\n"));
    assert_eq!(r.header("connection"), Some("close"));
    // Then the server closes (after a short linger), without reading the announced megabyte.
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(10)).is_empty());
    // Unauthenticated: 401 comes first, as the contract's order has it.
    let r = read_response(&mut {
        let mut s = TcpStream::connect(edge.addr).unwrap();
        s.write_all(b"POST /sync/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n").unwrap();
        s
    });
    assert_eq!(r.status, 401);
    // Expect: 100-continue is honoured for a body that fits, and not sent for one that does not.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            PULL.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let interim = read_response(&mut s);
    assert_eq!(interim.status, 100);
    s.write_all(PULL.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    s.write_all(
        format!(
            "POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            2 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut s).status, 413, "a final answer instead of 100 Continue");
}

#[test]
fn request_heads_have_a_deadline() {
    let edge = Edge::start(|c| c.head_timeout = Duration::from_secs(1));
    // Half a head, then nothing: 408 and closed.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    // A head dribbled a byte at a time is cut off by the same deadline, activity or not.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 200].iter()) {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10))).into_owned();
    assert!(cut || answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    // A connection that never sends a request is closed after the head deadline too.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(10)).is_empty());
}

#[test]
fn keep_alive_pipelining_and_versions() {
    let edge = Edge::start(|_| {});
    // Three requests in one write: three answers, in order, on one connection.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let snapshot = r#"{"client_id":"c","schema_version":1,"schema_hash":"h","size":3}"#;
    let pipelined = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{}POST /sync/snapshot HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{snapshot}\
         GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        pull_request("p"),
        snapshot.len()
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let answers: Vec<Resp> = (0..4).map(|_| read_response(&mut s)).collect();
    let got: Vec<(u16, &str)> = answers.iter().map(|r| (r.status, r.body.as_str())).collect();
    assert_eq!(
        got,
        [
            (200, r#"{"status":"ok"}"#),
            (200, "{\"ok\":true}\n"),
            (200, "{\"pad\":\"xxx\"}\n"),
            (404, "404 page not found\n")
        ]
    );
    assert!(answers.iter().all(|r| r.header("connection").is_none()), "HTTP/1.1 stays open");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).status, 200, "and serves again");
}

#[test]
fn http_10_head_and_connection_close() {
    let edge = Edge::start(|_| {});
    let (status, answer) = exchange(edge.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(answer.contains("Connection: close\r\n"), "HTTP/1.0 closes by default: {answer:?}");
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let r = read_response(&mut s);
        assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    }
    // HEAD: the GET's headers, Content-Length included, and no body.
    s.write_all(b"HEAD /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 ") && head.contains("Content-Length: 15\r\n"), "{head}");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let rest = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10))).into_owned();
    assert!(rest.starts_with("HTTP/1.1 200 ") && rest.ends_with(r#"{"status":"ok"}"#), "no HEAD body before: {rest:?}");
    assert!(rest.contains("Connection: close\r\n"));
}

#[test]
fn slow_senders_and_non_readers_hold_no_worker() {
    let edge = Edge::start(|c| {
        c.threads = 1;
        c.max_body_bytes = 1 << 20;
        c.write_timeout = Duration::from_secs(1);
    });
    // A body that never finishes, and a connection that sent nothing.
    let mut stalled = TcpStream::connect(edge.addr).unwrap();
    stalled
        .write_all(
            format!("POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: 100\r\n\r\n{{\"a\"").as_bytes(),
        )
        .unwrap();
    let _silent = TcpStream::connect(edge.addr).unwrap();
    // A 16 MB response nobody reads.
    let mut deaf = TcpStream::connect(edge.addr).unwrap();
    let big = r#"{"client_id":"c","schema_version":1,"schema_hash":"h","size":16000000}"#;
    deaf.write_all(
        format!("POST /sync/snapshot HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{big}", big.len())
            .as_bytes(),
    )
    .unwrap();
    // The only worker still serves.
    for _ in 0..3 {
        assert_eq!(post(edge.addr, "/sync/pull", USER, PULL.as_bytes()).status, 200);
    }
    // The unread response is dropped after the write timeout, and its memory returned.
    wait_for(20, "the unread response dropped", || (edge.server().stats().buffered_bytes < 1 << 20).then_some(()));
    let got = read_until_closed(&mut deaf, Duration::from_secs(10));
    assert!(got.len() < 16_000_000, "the whole response was delivered to a client that did not read");
    wait_for(10, "the stalled body and the silent connection left", || (edge.server().stats().open == 2).then_some(()));
}

#[test]
fn memory_for_unread_responses_is_bounded_in_total() {
    let edge = Edge::start(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_buffered_bytes = 32 << 20;
        c.write_timeout = Duration::from_secs(30);
    });
    // 20 MB: more than loopback socket buffers take at once, so the rest must be held.
    let big = r#"{"client_id":"c","schema_version":1,"schema_hash":"h","size":20000000}"#;
    let request =
        format!("POST /sync/snapshot HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{big}", big.len());
    let mut deaf: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(edge.addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    // Two 20 MB responses do not fit 32 MiB: one is kept, the others are dropped with their
    // connections.
    wait_for(20, "the responses that do not fit dropped", || {
        (edge.stub.served.load(Ordering::SeqCst) == 3 && edge.server().stats().open == 1).then_some(())
    });
    assert!(edge.server().stats().buffered_bytes <= 32 << 20);
    let sizes: Vec<usize> = deaf
        .iter_mut()
        .map(|s| {
            s.set_nonblocking(false).unwrap();
            let mut total = 0;
            let mut buf = [0u8; 64 * 1024];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        })
        .collect();
    assert_eq!(sizes.iter().filter(|n| **n > 20_000_000).count(), 1, "exactly one delivered in full: {sizes:?}");
}

#[test]
fn request_bodies_are_reserved_before_they_are_read() {
    let edge = Edge::start(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_buffered_bytes = 3 << 20;
    });
    // Two announced 1 MiB bodies take two thirds of the budget before a byte of them arrives;
    // a third does not fit.
    let head = format!("POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n", 1 << 20);
    let _holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(edge.addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    wait_for(10, "both bodies reserved", || (edge.server().stats().buffered_bytes >= 2 << 20).then_some(()));
    let (status, answer) = exchange(edge.addr, head.as_bytes());
    assert_eq!(status, 503, "{answer:?}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer:?}");
    // Small requests still fit.
    assert_eq!(get(edge.addr, "/healthz", "").status, 200);
}

#[test]
fn the_connection_cap_evicts_the_longest_idle_then_refuses() {
    let edge = Edge::start(|c| {
        c.max_connections = 20;
        c.threads = 2;
    });
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(edge.addr).unwrap()).collect();
    wait_for(10, "20 connections open", || (edge.server().stats().open == 20).then_some(()));
    // At the cap, a new client still gets in: the longest-idle connection makes room.
    assert_eq!(get(edge.addr, "/healthz", "").status, 200);
    assert!(edge.server().stats().evicted >= 1);
    let mut first = &idle[0];
    let mut buf = [0u8; 1];
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)), "the oldest idle connection was the one closed");
    drop(idle);
    // Twenty connections with a request in progress cannot be evicted: a newcomer gets 503.
    wait_for(10, "idle connections gone", || (edge.server().stats().open == 0).then_some(()));
    let busy: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(edge.addr).unwrap();
            s.write_all(pull_request("block").as_bytes()).unwrap();
            s
        })
        .collect();
    wait_for(10, "every request in progress", || (edge.server().stats().open == 20).then_some(()));
    let (status, answer) = exchange(edge.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503, "{answer:?}");
    assert!(answer.contains("Retry-After: 1\r\n") && answer.contains("Connection: close\r\n"), "{answer:?}");
    assert!(edge.server().stats().refused >= 1);
    edge.release_all();
    for mut s in busy {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = read_response(&mut s);
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
    }
}

#[test]
fn shutdown_answers_kept_alive_connections_with_close_and_keeps_its_deadline() {
    let edge = Edge::start(|c| c.threads = 2);
    let addr = edge.addr;
    // A kept-alive connection, and a request in progress.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut kept).status, 200);
    let mut busy = TcpStream::connect(addr).unwrap();
    busy.write_all(pull_request("block").as_bytes()).unwrap();
    wait_for(10, "the request in progress", || (edge.stub.blocked.load(Ordering::SeqCst) == 1).then_some(()));
    let release = edge.release.clone();
    let mut edge = edge;
    let server = edge.server.take().unwrap();
    let stopping = std::thread::spawn(move || {
        let started = Instant::now();
        server.shutdown(Duration::from_secs(10));
        started.elapsed()
    });
    // New connections are refused at once.
    wait_for(10, "the listener closed", || TcpStream::connect(addr).is_err().then_some(()));
    // A request arriving on the kept-alive connection meanwhile is answered, with close.
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut kept);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    // The request in progress finishes, also with close; then the server stops.
    release.send(()).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response(&mut busy);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let took = stopping.join().unwrap();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    // Handlers that never return, clients that never read or never finish: the deadline holds.
    let edge = Edge::start(|c| c.threads = 1);
    let mut stuck = TcpStream::connect(edge.addr).unwrap();
    stuck.write_all(pull_request("block").as_bytes()).unwrap();
    wait_for(10, "the stuck handler", || (edge.stub.blocked.load(Ordering::SeqCst) == 1).then_some(()));
    let mut slow = TcpStream::connect(edge.addr).unwrap();
    slow.write_all(b"POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{").unwrap();
    let took = edge.shutdown(Duration::from_secs(2));
    assert!(took < Duration::from_secs(4), "shutdown took {took:?} with a 2 s deadline");
}

#[test]
fn a_fallback_serves_every_other_path() {
    struct App;
    impl synchro::http::Fallback for App {
        fn handle(&self, request: &synchro::http::Request) -> synchro::http::Reply {
            if request.path() == "/panic" {
                panic!("app bug");
            }
            let body = request.body().map(|b| b.len()).unwrap_or(0);
            synchro::http::Reply::text(200, &format!("{} {} {body}", request.method(), request.target()))
        }
    }
    let router = Router {
        api: Arc::new(Stub {
            gate: Mutex::new(crossbeam_channel::never()),
            blocked: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        }),
        auth: Arc::new(HeaderAuthenticator),
        gate: VersionGate::new(""),
        admission: Arc::new(synchro::http::AdmitAll),
    };
    let server =
        HttpServer::start_with_fallback(HttpConfig::new("127.0.0.1:0".parse().unwrap()), router, Arc::new(App))
            .unwrap();
    let addr = server.local_addr();
    assert_eq!(post(addr, "/app/orders?x=1", "", b"abc").body, "POST /app/orders?x=1 3");
    assert_eq!(get(addr, "/sync/pull/", "").body, "GET /sync/pull/ 0", "not a sync endpoint");
    assert_eq!(get(addr, "/sync/schema", "").status, 401, "sync endpoints stay with the router");
    assert_eq!(get(addr, "/healthz", "").status, 200);
    let r = get(addr, "/panic", "");
    assert_eq!((r.status, r.body.as_str()), (500, "{\"error\":\"internal error\"}\n"));
    assert_eq!(get(addr, "/after", "").status, 200, "the worker survived");
    server.shutdown(Duration::from_secs(5));
}

/// Set in the child process of [`accept_recovers_from_descriptor_exhaustion`].
const EMFILE_CHILD: &str = "SYNCHRO_TEST_EMFILE_CHILD";

/// The server runs out of descriptors mid-accept: it backs off, and once descriptors are free
/// again it accepts the waiting connections and serves them. Runs in a child process with
/// `ulimit -n 256`, since the limit is per process and the other tests share this one.
#[test]
fn accept_recovers_from_descriptor_exhaustion() {
    if std::env::var(EMFILE_CHILD).is_ok() {
        return descriptor_exhaustion_in_this_process();
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "http_edge::accept_recovers_from_descriptor_exhaustion", "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("descriptor exhaustion: served after recovery"), "{stdout}\n{stderr}");
    assert!(stdout.contains("HTTP accept failed; pausing accepts and retrying"), "{stdout}");
    assert!(stdout.contains("HTTP accept recovered"), "{stdout}");
}

fn descriptor_exhaustion_in_this_process() {
    synchro::logging::install_json_logger(std::io::stdout(), synchro::config::LogLevel::Info).unwrap();
    let edge = Edge::start(|c| c.max_connections = 100_000);
    // Clients and server share this process's 256 descriptors: connect until none is left.
    let mut held = Vec::new();
    while let Ok(s) = TcpStream::connect(edge.addr) {
        held.push(s);
        assert!(held.len() < 256, "the descriptor limit is not in force");
    }
    // One more client takes a freed descriptor; the server has none left to accept it with.
    // (Connections still in the backlog may take a freed descriptor first: free until one is ours.)
    let mut waiting = loop {
        held.pop();
        match TcpStream::connect(edge.addr) {
            Ok(s) => break s,
            Err(e) => assert!(!held.is_empty(), "no descriptor came free: {e}"),
        }
    };
    wait_for(10, "an accept failure", || (edge.server().stats().accept_errors > 0).then_some(()));
    // Descriptors come back: the waiting connection is accepted and served.
    held.truncate(held.len() / 2);
    waiting.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut waiting).status, 200);
    assert_eq!(get(edge.addr, "/healthz", "").status, 200);
    let took = edge.shutdown(Duration::from_secs(5));
    assert!(took < Duration::from_secs(6));
    println!("descriptor exhaustion: served after recovery");
}
