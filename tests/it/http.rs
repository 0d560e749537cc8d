//! The HTTP layer against a stub API over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use synchro::http::routes::Router;
use synchro::http::{ApiError, HeaderAuthenticator, HttpConfig, HttpServer, SyncApi};
use synchro::protocol::PullRequest;
use synchro::types::UserId;
use synchro::version::VersionGate;

use crate::client::{get, post, read_response};

struct Stub {
    gate: Mutex<Option<crossbeam_channel::Receiver<()>>>,
    blocked: AtomicUsize,
}

impl SyncApi for Stub {
    fn pull(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        let req = PullRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        if req.client_id == "panic" {
            panic!("boom");
        }
        if req.client_id == "block" {
            let rx = self.gate.lock().unwrap().clone().unwrap();
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        Ok(serde_json::to_vec(
            &serde_json::json!({"user": user.as_str(), "client": req.client_id, "bytes": body.len()}),
        )
        .unwrap())
    }
    fn push(&self, _user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Ok(format!("{{\"keys\":{}}}", body.len()).into_bytes())
    }
    fn schema(&self, user: &UserId) -> Result<Vec<u8>, ApiError> {
        Ok(format!("{{\"user\":\"{}\"}}", user.as_str()).into_bytes())
    }
}

fn start(threads: usize, queue: usize, min_version: &str) -> (HttpServer, Arc<Stub>, crossbeam_channel::Sender<()>) {
    start_with(threads, queue, min_version, Arc::new(synchro::http::AdmitAll), Duration::from_secs(2))
}

fn start_with(
    threads: usize,
    queue: usize,
    min_version: &str,
    admission: Arc<dyn synchro::http::AdmissionPolicy>,
    idle_timeout: Duration,
) -> (HttpServer, Arc<Stub>, crossbeam_channel::Sender<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let stub = Arc::new(Stub { gate: Mutex::new(Some(rx)), blocked: AtomicUsize::new(0) });
    let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    config.threads = threads;
    config.queue = queue;
    config.max_body_bytes = 12 << 20;
    config.idle_timeout = idle_timeout;
    let router = Router {
        api: stub.clone(),
        auth: Arc::new(HeaderAuthenticator),
        gate: VersionGate::new(min_version),
        admission,
    };
    (HttpServer::start(config, router).unwrap(), stub, tx)
}

const USER: &str = "X-User-ID: Alice\r\n";
const PULL: &str = r#"{"client_id":"c","schema_version":1,"schema_hash":"h"}"#;

#[test]
fn routing_methods_and_errors_follow_the_contract() {
    let (server, _stub, _tx) = start(4, 64, "");
    let addr = server.local_addr();
    let r = get(addr, "/healthz", "");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(post(addr, "/healthz", "", b"").status, 405);
    for path in ["/sync/nope", "/sync/pull/", "/sync/", "/other"] {
        let r = get(addr, path, USER);
        assert_eq!((r.status, r.body.as_str()), (404, "404 page not found\n"), "{path}");
    }
    let r = get(addr, "/sync/pull", USER);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(r.body, "{\"error\":\"method not allowed\"}\n");
    let r = post(addr, "/sync/schema", USER, b"{}");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    // Not built yet -> 501 with a JSON error.
    for path in ["/sync/register", "/sync/snapshot", "/sync/rebuild"] {
        let r = post(addr, path, USER, b"{}");
        assert_eq!((r.status, r.body.as_str()), (501, "{\"error\":\"not implemented\"}\n"), "{path}");
    }
    assert_eq!(get(addr, "/sync/tables", USER).status, 501);
    let r = get(addr, "/sync/debug", USER);
    assert_eq!((r.status, r.body.as_str()), (400, "{\"error\":\"client_id query parameter is required\"}\n"));
    assert_eq!(get(addr, "/sync/debug?client_id=x", USER).status, 501);
    // Success: 200, JSON, trailing newline, user id lower-cased.
    let r = post(addr, "/sync/pull", USER, PULL.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"bytes\":3,\"client\":\"c\",\"user\":\"alice\"}\n");
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()), "every response carries a request id");
    let r = post(addr, "/sync/pull", &format!("{USER}X-Request-Id: trace-42\r\n"), PULL.as_bytes());
    assert_eq!(r.header("x-request-id"), Some("trace-42"), "a sane client id is echoed");
    let r = post(addr, "/sync/pull", &format!("{USER}X-Request-Id: {}\r\n", "x".repeat(100)), PULL.as_bytes());
    assert_ne!(r.header("x-request-id"), Some("x".repeat(100).as_str()), "an oversized id is replaced");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn authentication_and_version_gate_come_first() {
    let (server, _stub, _tx) = start(2, 16, "1.0.0");
    let addr = server.local_addr();
    let r = post(addr, "/sync/pull", "", PULL.as_bytes());
    assert_eq!((r.status, r.body.as_str()), (401, "{\"error\":\"missing user identity\"}\n"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(get(addr, "/sync/pull", "").status, 401, "auth before method");
    assert_eq!(post(addr, "/sync/pull", "X-User-ID: \r\n", PULL.as_bytes()).status, 401);
    let r = post(addr, "/sync/pull", &format!("{USER}X-App-Version: 0.0.1\r\n"), PULL.as_bytes());
    assert_eq!((r.status, r.body.as_str()), (426, "{\"error\":\"client upgrade required\"}\n"));
    assert_eq!(get(addr, "/sync/pull", &format!("{USER}X-App-Version: 1.0\r\n")).status, 426, "gate before method");
    for ok in ["v1.0.0", "1.0.0-beta", "2.3.4"] {
        assert_eq!(
            post(addr, "/sync/pull", &format!("{USER}X-App-Version: {ok}\r\n"), PULL.as_bytes()).status,
            200,
            "{ok}"
        );
    }
    assert_eq!(get(addr, "/healthz", "X-App-Version: 0.0.1\r\n").status, 200, "healthz has no auth and no gate");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn malformed_and_oversized_bodies() {
    let (server, _stub, _tx) = start(2, 16, "");
    let addr = server.local_addr();
    for bad in [&b""[..], b"null", b"[]", b"1", b"{", b"\xff\xfe{}", b"\"x\""] {
        let r = post(addr, "/sync/pull", USER, bad);
        assert_eq!((r.status, r.body.as_str()), (400, "{\"error\":\"invalid request body\"}\n"), "{bad:?}");
    }
    let r = post(addr, "/sync/pull", USER, br#"{"client_id":"c"}"#);
    assert_eq!((r.status, r.body.as_str()), (400, "{\"error\":\"schema_version is required\"}\n"));
    let r = post(addr, "/sync/pull", USER, br#"{"client_id":"c","schema_version":1.0,"schema_hash":"h"}"#);
    assert_eq!(r.status, 400);
    // Trailing bytes after the first value are ignored, like the reference.
    assert_eq!(post(addr, "/sync/pull", USER, format!("{PULL} trailing").as_bytes()).status, 200);
    // A 10 MB valid body is accepted.
    let big = format!(r#"{{"client_id":"c","schema_version":1,"schema_hash":"h","pad":"{}"}}"#, "x".repeat(10 << 20));
    assert_eq!(post(addr, "/sync/push", USER, big.as_bytes()).status, 200);
    // Over the limit by Content-Length: refused before reading.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!("POST /sync/push HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n", 13 << 20).as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.body.as_str()), (413, "{\"error\":\"request body too large\"}\n"));
    // Over the limit while reading a chunked body.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("POST /sync/push HTTP/1.1\r\nHost: x\r\n{USER}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut status = None;
    for _ in 0..14 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response(&mut s))) {
        status = Some(r.status);
    }
    assert_eq!(status, Some(413));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_panicking_handler_does_not_kill_its_worker() {
    let (server, _stub, _tx) = start(1, 16, "");
    let addr = server.local_addr();
    for _ in 0..3 {
        let r = post(addr, "/sync/pull", USER, br#"{"client_id":"panic","schema_version":1,"schema_hash":"h"}"#);
        assert_eq!((r.status, r.body.as_str()), (500, "{\"error\":\"internal error\"}\n"));
    }
    assert_eq!(post(addr, "/sync/pull", USER, PULL.as_bytes()).status, 200, "the only worker still serves");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn saturation_answers_429_instead_of_queueing() {
    let (server, stub, release) = start(1, 1, "");
    let addr = server.local_addr();
    let body = br#"{"client_id":"block","schema_version":1,"schema_hash":"h"}"#;
    let blocker = std::thread::spawn(move || post(addr, "/sync/pull", USER, body).status);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stub.blocked.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first request never reached the worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    // One request may wait in the queue; the others are refused at once with 429.
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let others: Vec<_> = (0..5)
        .map(|_| {
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                let r = post(addr, "/sync/pull", USER, PULL.as_bytes());
                let out = (r.status, r.header("retry-after").map(str::to_string), r.body);
                let _ = done_tx.send(out.0);
                out
            })
        })
        .collect();
    // At least four are answered while the worker is still blocked.
    for _ in 0..4 {
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(8)).unwrap(), 429);
    }
    for _ in 0..6 {
        release.send(()).unwrap();
    }
    assert_eq!(blocker.join().unwrap(), 200);
    let results: Vec<_> = others.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.0 == 200).count(), 1, "exactly one waited in the queue");
    for (status, retry, body) in results.iter().filter(|r| r.0 == 429) {
        assert_eq!((*status, retry.as_deref()), (429, Some("1")));
        assert_eq!(body, "{\"error\":\"Too Many Requests\",\"retry_after\":1}\n");
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_thousand_idle_connections_do_not_block_a_new_request() {
    // Idle connections are closed only after 30 s here: a server they blocked would answer
    // after that, not within the 10 s allowed below (loose enough for a loaded machine).
    let (server, _stub, _tx) = start_with(2, 64, "", Arc::new(synchro::http::AdmitAll), Duration::from_secs(30));
    let addr = server.local_addr();
    let idle: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Half of them even sent a partial request line.
    for s in idle.iter().step_by(2) {
        let mut s = s;
        s.write_all(b"POST /sync/pull HTTP/1.1\r\nHost").unwrap();
    }
    let started = Instant::now();
    let r = post(addr, "/sync/pull", USER, PULL.as_bytes());
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    drop(idle);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn idle_keep_alive_connections_are_closed_by_the_server() {
    let (server, _stub, _tx) = start(2, 16, "");
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    // Keep-alive: the connection stays open, then the server closes it after the idle timeout.
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "server closed the idle connection");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8), "closed after {waited:?}");
    server.shutdown(Duration::from_secs(5));
}

/// An embedder policy: a per-user budget and a maintenance switch.
struct Policy {
    maintenance: std::sync::atomic::AtomicBool,
    budget: AtomicUsize,
}

impl synchro::http::AdmissionPolicy for Policy {
    fn admit(&self, user: &UserId, endpoint: synchro::http::routes::Endpoint) -> synchro::http::Admission {
        use synchro::http::Admission;
        if self.maintenance.load(Ordering::SeqCst) {
            return Admission::Unavailable { retry_after: 30 };
        }
        if user.as_str() == "alice" && endpoint.name() == "pull" {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Admission::TooManyRequests { retry_after: 7 };
            }
            self.budget.store(left - 1, Ordering::SeqCst);
        }
        Admission::Admit
    }
}

#[test]
fn an_embedder_admission_policy_limits_and_pauses_sync_requests() {
    let policy = Arc::new(Policy { maintenance: false.into(), budget: AtomicUsize::new(2) });
    let (server, _stub, tx) = start_with(2, 16, "", policy.clone(), Duration::from_secs(2));
    drop(tx);
    let addr = server.local_addr();
    for _ in 0..2 {
        assert_eq!(post(addr, "/sync/pull", USER, PULL.as_bytes()).status, 200);
    }
    let r = post(addr, "/sync/pull", USER, PULL.as_bytes());
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert_eq!(r.json()["retry_after"], 7);
    // Other users and endpoints are not affected by alice's budget.
    assert_eq!(post(addr, "/sync/pull", "X-User-ID: bob\r\n", PULL.as_bytes()).status, 200);
    assert_eq!(get(addr, "/sync/schema", USER).status, 200);
    // Maintenance: every sync request 503 + Retry-After; health and metrics still answer.
    policy.maintenance.store(true, Ordering::SeqCst);
    let r = get(addr, "/sync/schema", "X-User-ID: bob\r\n");
    assert_eq!((r.status, r.header("retry-after")), (503, Some("30")));
    assert_eq!(get(addr, "/healthz", "").status, 200);
    // Unauthenticated requests are refused before the policy is asked.
    assert_eq!(get(addr, "/sync/schema", "").status, 401);
    server.shutdown(Duration::from_secs(2));
}

/// A burst of new keep-alive connections, as when many devices come online at once: every one
/// gets its first answer promptly. (A server that hands new connections to a thread pool can
/// lose a wake-up in such a burst; the connection then waits seconds before its first request
/// is read.) The bound leaves room for a loaded machine.
#[test]
fn a_burst_of_new_connections_is_served_without_stalls() {
    let (server, _stub, _tx) = start_with(
        8,
        4096,
        "",
        Arc::new(synchro::http::AdmitAll),
        HttpConfig::new("127.0.0.1:0".parse().unwrap()).idle_timeout,
    );
    let addr = server.local_addr();
    // Every client stays busy for `busy`: a stalled connection is not rescued by others
    // closing, so with the pool bug its first answer came after the pool's 5 s timeout. Without
    // it the first answer takes milliseconds; the bound leaves room for a loaded machine.
    let busy = Duration::from_secs(6);
    let mut worst = Duration::ZERO;
    for _round in 0..2 {
        let start = Arc::new(std::sync::Barrier::new(64));
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    let mut s = TcpStream::connect(addr).unwrap();
                    let mut first = None;
                    while began.elapsed() < busy {
                        let req = format!(
                            "POST /sync/pull HTTP/1.1\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{PULL}",
                            PULL.len()
                        );
                        s.write_all(req.as_bytes()).unwrap();
                        assert_eq!(read_response(&mut s).status, 200);
                        first.get_or_insert(began.elapsed());
                    }
                    first.unwrap_or(busy)
                })
            })
            .collect();
        for c in clients {
            worst = worst.max(c.join().unwrap());
        }
    }
    eprintln!("slowest first answer in the bursts: {worst:?}");
    assert!(worst < Duration::from_secs(4), "a new connection waited {worst:?} for its first answer");
}
