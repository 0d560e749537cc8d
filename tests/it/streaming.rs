//! Large bodies rendered as the client reads them: chunked on the wire, whole for HTTP/1.0,
//! one piece held for a client that does not read (and no worker), a failing source ending
//! only its own connection; and pull pages above the threshold, byte for byte what the whole
//! page would be.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use synchro::http::routes::Router;
use synchro::http::{ApiError, Body, BodySource, HeaderAuthenticator, HttpConfig, HttpServer, SyncApi};
use synchro::protocol::{PullRequest, SchemaPair};
use synchro::types::UserId;
use synchro::version::VersionGate;

use crate::capture::wait_for;
use crate::client::{post, read_chunked, read_response, read_until_closed};
use crate::harness::TestDb;
use crate::sync_api::{start_demo, Device};

/// `{"pad":"xxx..."}` with `size` bytes of padding, in pieces; `panic` after the first piece
/// when asked to.
struct Padding {
    size: usize,
    written: usize,
    started: bool,
    panic: bool,
    fills: Arc<AtomicUsize>,
}

impl BodySource for Padding {
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        self.fills.fetch_add(1, Ordering::SeqCst);
        if !std::mem::replace(&mut self.started, true) {
            out.extend_from_slice(b"{\"pad\":\"");
        } else if self.panic {
            panic!("the source failed");
        }
        let n = max.min(self.size - self.written);
        out.resize(out.len() + n, b'x');
        self.written += n;
        if self.written < self.size {
            return true;
        }
        out.extend_from_slice(b"\"}\n");
        false
    }
}

/// `pull` streams `size` bytes of padding (`"panic": true` makes the source fail); `push`
/// answers at once.
struct Stub {
    fills: Arc<AtomicUsize>,
}

impl SyncApi for Stub {
    fn pull_body(&self, _user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        let size = body.get("size").and_then(Value::as_u64).unwrap_or(0) as usize;
        let panic = body.get("panic").and_then(Value::as_bool).unwrap_or(false);
        Ok(Body::Stream(Box::new(Padding { size, written: 0, started: false, panic, fills: self.fills.clone() })))
    }

    fn push(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Ok(br#"{"ok":true}"#.to_vec())
    }
}

fn edge(tune: impl FnOnce(&mut HttpConfig)) -> (HttpServer, Arc<AtomicUsize>) {
    let fills = Arc::new(AtomicUsize::new(0));
    let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    config.threads = 1;
    tune(&mut config);
    let router = Router {
        api: Arc::new(Stub { fills: fills.clone() }),
        auth: Arc::new(HeaderAuthenticator),
        gate: VersionGate::new(""),
        admission: Arc::new(synchro::http::AdmitAll),
    };
    (HttpServer::start(config, router).unwrap(), fills)
}

const USER: &str = "X-User-ID: alice\r\n";

fn pull(size: usize, panic: bool, version: &str) -> Vec<u8> {
    let body = json!({"size": size, "panic": panic}).to_string();
    format!("POST /sync/pull {version}\r\nHost: x\r\n{USER}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn padding(size: usize) -> String {
    format!("{{\"pad\":\"{}\"}}\n", "x".repeat(size))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

#[test]
fn a_large_body_goes_out_chunked_and_arrives_whole() {
    let (server, fills) = edge(|_| {});
    let addr = server.local_addr();
    let size = 3_000_000;
    let mut s = connect(addr);
    s.write_all(&pull(size, false, "HTTP/1.1")).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body == padding(size), "the body arrives whole");
    assert!(fills.load(Ordering::SeqCst) >= size / (512 * 1024), "rendered in pieces");
    // The connection stays usable after a streamed response.
    s.write_all(&pull(10, false, "HTTP/1.1")).unwrap();
    assert_eq!(read_response(&mut s).body, padding(10));
    // HTTP/1.0 has no chunks: the whole body with its length.
    let mut s = connect(addr);
    s.write_all(&pull(size, false, "HTTP/1.0")).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.header("content-length"), Some(padding(size).len().to_string().as_str()));
    assert!(r.body == padding(size));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_client_that_does_not_read_a_stream_costs_one_piece_and_no_worker() {
    let (server, fills) = edge(|c| c.write_timeout = Duration::from_secs(2));
    let addr = server.local_addr();
    // 256 MB: far more than socket buffers take; the client reads none of it.
    let mut deaf = connect(addr);
    deaf.write_all(&pull(256 << 20, false, "HTTP/1.1")).unwrap();
    // Rendering stops once the socket is full: the count settles (unchanged for 300 ms).
    let (mut last, mut since) = (usize::MAX, Instant::now());
    wait_for(20, "the stream to stall", || {
        let now = fills.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        (now > 0 && since.elapsed() >= Duration::from_millis(300)).then_some(())
    });
    assert!(last < 200, "only what the socket took was rendered: {last} pieces");
    assert!(server.stats().buffered_bytes < 1 << 20, "one piece held: {}", server.stats().buffered_bytes);
    // The only worker serves others meanwhile.
    for _ in 0..3 {
        assert_eq!(post(addr, "/sync/push", USER, b"{}").status, 200);
    }
    // The write timeout ends the stream and returns its memory.
    wait_for(20, "the unread stream dropped", || (server.stats().buffered_bytes == 0).then_some(()));
    let got = read_until_closed(&mut deaf, Duration::from_secs(10));
    assert!(got.len() < 256 << 20);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_failing_source_ends_its_own_connection_only() {
    let (server, _) = edge(|_| {});
    let addr = server.local_addr();
    let mut s = connect(addr);
    s.write_all(&pull(2_000_000, true, "HTTP/1.1")).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    assert!(!got.ends_with(b"0\r\n\r\n"), "the body is cut short, never completed");
    // The worker survived.
    assert_eq!(post(addr, "/sync/push", USER, b"{}").status, 200);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_large_pull_page_is_streamed_byte_for_byte() {
    let db = TestDb::new();
    let server = start_demo(&db, None);
    let mut device = Device::new(server.addr, "alice", "a1");
    // 60 tasks of 30 kB: a 1.8 MB page.
    db.execute(
        "INSERT INTO tasks (user_id, title) SELECT 'alice', repeat(chr(97 + g % 26), 30000) FROM generate_series(1, 60) g",
    );
    wait_for(30, "the tasks captured", || {
        let n: i64 = db
            .client()
            .query_one("SELECT count(*) FROM sync_changelog WHERE table_name = 'tasks'", &[])
            .unwrap()
            .get(0);
        (n >= 60).then_some(())
    });
    let body = json!({"client_id": "a1", "checkpoint": device.checkpoint, "limit": 100,
                      "schema_version": device.version, "schema_hash": device.hash});
    let mut s = connect(server.addr);
    let raw = format!(
        "POST /sync/pull HTTP/1.1\r\nHost: x\r\n{}Content-Length: {}\r\n\r\n{body}",
        device.headers(),
        body.to_string().len()
    );
    s.write_all(raw.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let streamed = read_chunked(&mut s);
    // The same page, rendered whole.
    let req = PullRequest {
        client_id: "a1".into(),
        checkpoint: device.checkpoint,
        bucket_checkpoints: Default::default(),
        tables: vec![],
        limit: 100,
        known_buckets: vec![],
        schema: SchemaPair { version: device.version, hash: device.hash.clone() },
    };
    let whole = server.engine.pull(&UserId::new("alice").unwrap(), req).unwrap();
    let mut expected = serde_json::to_vec(&whole).unwrap();
    expected.push(b'\n');
    assert!(streamed == expected, "streamed {} bytes, whole {} bytes", streamed.len(), expected.len());
    let page: Value = serde_json::from_slice(&streamed).unwrap();
    assert_eq!(page["changes"].as_array().unwrap().len(), 60);
    // The model client takes streamed pages like any other.
    device.pull();
    assert_eq!(device.rows.keys().filter(|(t, _)| t == "tasks").count(), 60);
    server.shutdown(Duration::from_secs(5));
}
