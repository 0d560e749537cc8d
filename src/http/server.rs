//! The listener, the dispatcher and the worker pool around `tiny_http`.
//!
//! `tiny_http` runs every connection on a thread of its own pool and has no timeouts, so:
//! * the listening socket gets `SO_RCVTIMEO`/`SO_SNDTIMEO`, which Linux copies onto every
//!   accepted socket: an idle keep-alive connection or a stalled client is closed after
//!   `idle_timeout` and its thread freed (1,000 idle connections cost 1,000 parked threads for at
//!   most that long, never a stuck server);
//! * the same timeout also bounds `accept()` on the listening socket, and `tiny_http`'s accept
//!   loop ends for good on any accept error: a small `http-heartbeat` thread connects to our own
//!   socket well within the timeout so an idle listener never times out (and, every 50 ms, so a
//!   wake-up that `tiny_http`'s connection pool lost in a burst of new connections costs at most
//!   that long instead of 5 s), and if the accept loop
//!   dies anyway (e.g. out of file descriptors) the dispatcher starts a fresh `tiny_http::Server`
//!   on a clone of the same socket while it keeps draining the old one's live connections;
//! * requests go from the dispatcher to a fixed pool of workers over a bounded channel: when it
//!   is full the dispatcher answers `429` itself instead of queueing without bound.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, TrySendError};
use socket2::{Domain, Protocol, Socket, Type};

use super::routes::{BodyError, Incoming, Router};
use super::{ApiError, Reply};

/// How often the heartbeat connects to our own listener (see [`HttpServer::start`]).
const POOL_NUDGE_EVERY: Duration = Duration::from_millis(50);

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Requests waiting for a worker before new ones get `429`.
    pub queue: usize,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Idle keep-alive and stalled-read timeout.
    pub idle_timeout: Duration,
    /// `Retry-After` seconds on `429`.
    pub retry_after_secs: u32,
}

impl HttpConfig {
    /// Defaults for `addr`: 2 x CPUs workers, a queue of 64 per worker, 32 MiB bodies, 30 s idle.
    pub fn new(addr: SocketAddr) -> HttpConfig {
        let threads = thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).max(4);
        HttpConfig {
            addr,
            threads,
            queue: threads * 64,
            max_body_bytes: 32 << 20,
            idle_timeout: Duration::from_secs(30),
            retry_after_secs: 1,
        }
    }
}

/// A running HTTP server. Dropping it without [`HttpServer::shutdown`] leaves threads running.
pub struct HttpServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    dispatcher: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    current: Arc<std::sync::Mutex<Arc<tiny_http::Server>>>,
}

fn bind(config: &HttpConfig) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(config.addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Inherited by accepted sockets on Linux: bounds idle keep-alive and slow clients.
    socket.set_read_timeout(Some(config.idle_timeout))?;
    socket.set_write_timeout(Some(config.idle_timeout))?;
    socket.bind(&config.addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn new_server(listener: &TcpListener) -> io::Result<tiny_http::Server> {
    tiny_http::Server::from_listener(listener.try_clone()?, None).map_err(|e| io::Error::other(e.to_string()))
}

/// Sends a [`Reply`] on a `tiny_http` request (also for embedders that run their own server).
pub fn respond(request: tiny_http::Request, reply: Reply) {
    // Bodies are fully built in memory: always send Content-Length (tiny_http would switch to
    // chunked encoding above 32 KiB), which every client handles and logs can show.
    let mut response =
        tiny_http::Response::from_data(reply.body).with_status_code(reply.status).with_chunked_threshold(usize::MAX);
    let mut headers = vec![("Content-Type", reply.content_type.to_string())];
    headers.extend(reply.headers);
    for (name, value) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    // The client may be gone; nothing to do about it.
    let _ = request.respond(response);
}

/// A request's headers with lower-case names, for [`super::routes::Incoming::header`].
pub fn lowercase_headers(request: &tiny_http::Request) -> Vec<(String, String)> {
    request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
        .collect()
}

/// Reads a request body, refusing more than `limit` bytes (by `Content-Length` or while reading).
pub fn read_limited(request: &mut tiny_http::Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(limit));
    let reader = request.as_reader();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(body),
            Ok(n) => {
                if body.len() + n > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BodyError::Io(e.to_string())),
        }
    }
}

static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The client's `X-Request-Id` when it is short and printable, else a new one.
fn request_id(given: Option<String>) -> String {
    match given {
        Some(id) if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) => id,
        _ => format!("{:x}-{:x}", process_id(), NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)),
    }
}

/// This process's id, read once (every read is a system call, and ids are made per request).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn serve_one(router: &Router, mut request: tiny_http::Request, max_body: usize) {
    let started = Instant::now();
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let headers = lowercase_headers(&request);
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let rid = request_id(header("x-request-id"));
    crate::logging::set_request_id(Some(rid.clone()));
    let mut body_cell: Option<Result<Vec<u8>, BodyError>> = None;
    let outcome = {
        let mut read_body = || {
            let b = read_limited(&mut request, max_body);
            body_cell = Some(b.clone());
            b
        };
        let mut incoming = Incoming { method: &method, url: &url, header: &header, read_body: &mut read_body };
        catch_unwind(AssertUnwindSafe(|| router.handle(&mut incoming)))
    };
    let (endpoint, reply) = match outcome {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            crate::error!("handler panicked", url = url.clone(), panic = what);
            (None, Reply::error(500, "internal error"))
        }
    };
    // An unread, oversized body would otherwise be parsed as the next request on this
    // connection: close it instead.
    let close = matches!(body_cell, Some(Err(_)));
    let mut reply = reply.with_header("X-Request-Id", rid);
    if close {
        reply = reply.with_header("Connection", "close");
    }
    router.api.observe(endpoint.map(|e| e.name()).unwrap_or("unknown"), reply.status, started.elapsed());
    crate::debug!(
        "request",
        method = method.clone(),
        endpoint = endpoint.map(|e| e.name()).unwrap_or("unknown"),
        status = reply.status,
        micros = started.elapsed().as_micros() as u64
    );
    respond(request, reply);
    crate::logging::set_request_id(None);
}

impl HttpServer {
    /// Binds `config.addr` and starts the dispatcher and workers.
    pub fn start(config: HttpConfig, router: Router) -> io::Result<HttpServer> {
        let listener = bind(&config)?;
        let local_addr = listener.local_addr()?;
        let current = Arc::new(std::sync::Mutex::new(Arc::new(new_server(&listener)?)));
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded::<tiny_http::Request>(config.queue.max(1));
        let router = Arc::new(router);
        let mut workers = Vec::with_capacity(config.threads);
        for i in 0..config.threads.max(1) {
            workers.push(spawn_worker(i, rx.clone(), router.clone(), config.max_body_bytes)?);
        }
        let heartbeat = {
            let stopping = stopping.clone();
            let target = heartbeat_target(local_addr);
            // Often, for a second reason besides keeping accept() alive: tiny_http's connection
            // pool can lose a wake-up when several connections arrive at once, and the connection
            // it lost then waits for an idle thread's 5 s timeout or for another connection to
            // close before its first request is read. Each heartbeat connection is handed to
            // that pool too, and either wakes a waiting thread or starts a new one, which then
            // picks up the waiting connection: the stall is bounded by this interval.
            let every = (config.idle_timeout / 3).clamp(Duration::from_millis(10), POOL_NUDGE_EVERY);
            thread::Builder::new().name("http-heartbeat".into()).spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    thread::sleep(every);
                    // A connection that closes at once: tiny_http accepts it and its reader sees
                    // EOF. Failure is harmless (the listener is busy anyway).
                    let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1));
                }
            })?
        };
        let dispatcher = {
            let (current, stopping) = (current.clone(), stopping.clone());
            let retry_after = config.retry_after_secs;
            thread::Builder::new().name("http-dispatch".into()).spawn(move || {
                let mut backoff = Duration::from_millis(50);
                // Servers whose accept loop died: their open connections still deliver requests.
                let mut retired: Vec<Arc<tiny_http::Server>> = Vec::new();
                let dispatch = |request: tiny_http::Request| match tx.try_send(request) {
                    Ok(()) => {}
                    Err(TrySendError::Full(request)) => {
                        respond(request, ApiError::TooManyRequests { retry_after }.reply())
                    }
                    Err(TrySendError::Disconnected(request)) => {
                        respond(request, ApiError::Unavailable { retry_after }.reply())
                    }
                };
                while !stopping.load(Ordering::Acquire) {
                    for old in &retired {
                        while let Ok(Some(request)) = old.try_recv() {
                            dispatch(request);
                        }
                    }
                    let server = match current.lock() {
                        Ok(s) => s.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    let wait = if retired.is_empty() { Duration::from_millis(200) } else { Duration::from_millis(20) };
                    match server.recv_timeout(wait) {
                        Ok(Some(request)) => {
                            backoff = Duration::from_millis(50);
                            dispatch(request);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // tiny_http's accept loop has ended: start a new one on the same socket.
                            crate::error!("HTTP accept loop failed; restarting it", error = e.to_string());
                            thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            match new_server(&listener) {
                                Ok(s) => {
                                    retired.push(server);
                                    match current.lock() {
                                        Ok(mut c) => *c = Arc::new(s),
                                        Err(poisoned) => *poisoned.into_inner() = Arc::new(s),
                                    }
                                }
                                Err(e) => crate::error!("restarting the HTTP accept loop", error = e.to_string()),
                            }
                        }
                    }
                }
                drop(tx);
            })?
        };
        Ok(HttpServer {
            local_addr,
            stopping,
            dispatcher: Some(dispatcher),
            heartbeat: Some(heartbeat),
            workers,
            current,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets queued and in-flight requests finish (up to `deadline`), joins.
    pub fn shutdown(mut self, deadline: Duration) {
        self.stopping.store(true, Ordering::Release);
        if let Ok(server) = self.current.lock() {
            server.unblock();
        }
        for t in [self.dispatcher.take(), self.heartbeat.take()].into_iter().flatten() {
            let _ = t.join();
        }
        let end = Instant::now() + deadline;
        for w in self.workers.drain(..) {
            while !w.is_finished() && Instant::now() < end {
                thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// Where the heartbeat connects: the bound address, or loopback for a wildcard bind.
fn heartbeat_target(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

fn spawn_worker(
    i: usize,
    rx: Receiver<tiny_http::Request>,
    router: Arc<Router>,
    max_body: usize,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(format!("http-worker-{i}")).spawn(move || {
        // serve_one catches handler panics; the loop only ends when the dispatcher is gone.
        while let Ok(request) = rx.recv() {
            serve_one(&router, request, max_body);
        }
    })
}
