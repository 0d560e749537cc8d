//! The HTTP/1.1 server: one I/O thread that owns every socket, and a fixed pool of workers that
//! only run handlers.
//!
//! ```text
//!            accept (cap, eviction, EMFILE backoff)
//! clients ──► http-io ── reads, parses, limits ([`super::inbound`]) ──► bounded queue ──► http-worker-N
//!    ▲          │  ▲                                    full: 429                          │
//!    │          │  └──── "done": the response, handed back ◄─────────────────────────────────┤
//!    └──────────┴──────── response bytes, written by http-io ◄──────────────────────────────┘
//! ```
//!
//! * **Probes have a lane of their own.** `/healthz` and `/metrics` are served by one more
//!   thread with its own small queue, so a probe is answered while every worker is busy.
//! * **Workers only do work.** The I/O thread reads heads and bodies and writes responses
//!   (readiness-based, `mio`); a worker runs the router and hands the finished response back,
//!   so a client that sends slowly, never sends its body or never reads its response holds no
//!   worker. A request costs three thread wake-ups: the I/O thread on arrival, a worker, the
//!   I/O thread again to write. Output the socket does not take at once is finished as the
//!   client reads, under `HTTP_WRITE_TIMEOUT_SECS`.
//! * **Completion goes through a per-connection mutex.** A connection's response state sits
//!   behind it; the worker stores the response there and tells the I/O thread, which writes it.
//! * **One request per connection at a time.** Requests of a pipelining client are parsed one
//!   after another, each dispatched once the previous response is out, so responses leave in
//!   order; at most 64 KiB of a next request is read ahead meanwhile.
//! * **Bounded everything.** Heads, header counts, bodies and chunk sizes are checked before
//!   bytes are kept; every byte held (heads, bodies, unread responses) is reserved against one
//!   [`Budget`]; the head has a deadline, idle and stalled connections an idle timeout, pending
//!   output a write timeout; open connections are capped. At the cap the least recently
//!   active connection without a request at a worker or a response in progress (idle, part of
//!   a head, or an upload stalled for a second) is closed to make room, else the newcomer gets
//!   `503`. Accept failures for lack of descriptors (`EMFILE`, `ENFILE`) pause accepting with
//!   a capped backoff and resume by themselves.
//! * **Idle connections cost no thread** and no buffer: a few hundred bytes of state each.
//! * **Shutdown with a deadline.** The listener closes at once; requests in flight finish and
//!   requests arriving on open connections meanwhile are served with `Connection: close`;
//!   when no request is left, or at the deadline, every connection closes and the server stops,
//!   whatever the clients do.

use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::budget::{Budget, Reservation};
use super::head::{HeadLimits, Version};
use super::inbound::{Inbound, InboundLimits, Request, Step};
use super::response::{date_now, encode_head, encode_stream_head, push_chunk, Persistence, CONTINUE, LAST_CHUNK};
use super::routes::{Endpoint, Incoming, Router};
use super::{ApiError, BodySource, BodyStream, Reply};

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Worker threads (`HTTP_THREADS`).
    pub threads: usize,
    /// Requests waiting for a worker before new ones get `429`.
    pub queue: usize,
    /// Largest accepted body (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Idle keep-alive connections and stalled body reads are closed after this
    /// (`HTTP_IDLE_TIMEOUT_SECS`).
    pub idle_timeout: Duration,
    /// `Retry-After` seconds on `429` and on the edge's own `503`s.
    pub retry_after_secs: u32,
    /// Open connections (`HTTP_MAX_CONNECTIONS`); also kept below the open-file limit.
    pub max_connections: usize,
    /// Request line plus headers, in bytes (`HTTP_MAX_HEAD_BYTES`).
    pub max_head_bytes: usize,
    /// Header lines per request (`HTTP_MAX_HEADERS`).
    pub max_headers: usize,
    /// A whole request head must arrive within this of its first byte (`HTTP_HEAD_TIMEOUT_SECS`).
    pub head_timeout: Duration,
    /// A response the client does not read for this long is dropped with its connection
    /// (`HTTP_WRITE_TIMEOUT_SECS`).
    pub write_timeout: Duration,
    /// Every byte the edge holds: heads, bodies, unread responses (`HTTP_MAX_BUFFERED_BYTES`).
    pub max_buffered_bytes: usize,
}

impl HttpConfig {
    /// Defaults for `addr`: 2 x CPUs workers, a queue of 64 per worker, 32 MiB bodies, 30 s idle,
    /// 16,384 connections, 16 KiB and 100 header lines per head within 10 s, 30 s write timeout,
    /// 256 MiB buffered.
    pub fn new(addr: SocketAddr) -> HttpConfig {
        let threads = thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).max(4);
        HttpConfig {
            addr,
            threads,
            queue: threads * 64,
            max_body_bytes: 32 << 20,
            idle_timeout: Duration::from_secs(30),
            retry_after_secs: 1,
            max_connections: 16_384,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// Serves the requests whose path is not one of the sync endpoints, for an application that
/// embeds synchro and keeps its own routes on the same server (see `examples/embedded.rs`).
/// Runs on a worker under `catch_unwind`, like the router.
pub trait Fallback: Send + Sync {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Reply;
}

/// Counters of the edge, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Connections open now.
    pub open: usize,
    /// The connection cap in force (configured cap, lowered to fit the open-file limit).
    pub max_connections: usize,
    /// Connections answered `503` because the cap was reached and none could be closed.
    pub refused: u64,
    /// Idle connections closed to make room for new ones.
    pub evicted: u64,
    /// Failed `accept` calls (e.g. `EMFILE`); each pauses accepting briefly.
    pub accept_errors: u64,
    /// Bytes reserved against the budget now.
    pub buffered_bytes: usize,
}

/// Where a connection sits in the I/O thread's table; `generation` tells a reused slot apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnId {
    slot: usize,
    generation: u64,
}

/// A response the socket did not take at once.
struct Pending {
    head: Vec<u8>,
    body: Vec<u8>,
    written: usize,
    /// Last time bytes went out (the write timeout counts from here).
    progress: Instant,
    _held: Reservation,
    /// The rest of a streamed body, rendered by a worker once these bytes are out.
    source: Option<Box<dyn BodySource>>,
}

/// A connection's response side, shared by the I/O thread and the worker serving it.
struct Out {
    /// A request of this connection is queued or being served.
    in_flight: bool,
    /// The I/O thread wants to hear when it completes.
    notify: bool,
    /// Response bytes not written yet (the I/O thread finishes them).
    pending: Option<Pending>,
    /// When the last response was handed to the socket.
    done_at: Instant,
    /// The connection ends after its pending output.
    close: bool,
    /// Writing failed or a response could not be held: close now.
    broken: bool,
}

struct Shared {
    stream: TcpStream,
    id: ConnId,
    out: Mutex<Out>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Out> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `head` then `body` from `*written` on without blocking. `Ok(true)` when all is out.
fn write_parts(stream: &TcpStream, head: &[u8], body: &[u8], written: &mut usize) -> io::Result<bool> {
    loop {
        let slices = if *written < head.len() {
            [IoSlice::new(&head[*written..]), IoSlice::new(body)]
        } else if *written - head.len() < body.len() {
            [IoSlice::new(&body[*written - head.len()..]), IoSlice::new(&[])]
        } else {
            return Ok(true);
        };
        // MSG_NOSIGNAL: a peer that went away is an error here, never a SIGPIPE for the process.
        match SockRef::from(stream).send_vectored_with_flags(&slices, libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Hands a finished response to the I/O thread, which writes it (a worker never touches a
/// socket, so a client that does not read cannot hold one), and marks the request complete. The
/// bytes are held against the budget until they are out. Returns whether the I/O thread must act:
/// always, unless the connection is already broken and nobody waits for it.
fn complete(
    shared: &Shared,
    budget: &Budget,
    head: Vec<u8>,
    body: Vec<u8>,
    close: bool,
    source: Option<Box<dyn BodySource>>,
) -> bool {
    let mut out = shared.lock();
    let now = Instant::now();
    if !out.broken && out.pending.is_none() {
        match budget.reserve(head.len() + body.len()) {
            Some(held) => out.pending = Some(Pending { head, body, written: 0, progress: now, _held: held, source }),
            None => {
                crate::debug!("response dropped: the buffer budget is spent", bytes = (head.len() + body.len()) as u64);
                out.broken = true;
            }
        }
    }
    out.in_flight = false;
    out.done_at = now;
    out.close |= close;
    let wake = out.notify || out.close || out.broken || out.pending.is_some();
    out.notify = false;
    wake
}

/// State shared by the I/O thread, the workers and the [`HttpServer`] handle.
struct Ctx {
    waker: Waker,
    wake_pending: AtomicBool,
    done: Sender<ConnId>,
    /// Set by `shutdown`: the drain deadline.
    stop: Mutex<Option<Duration>>,
    /// Shutting down: responses say `Connection: close`.
    draining: AtomicBool,
    /// Past the shutdown deadline: queued requests are dropped unserved.
    abandoned: AtomicBool,
    budget: Budget,
    open: AtomicUsize,
    max_connections: usize,
    refused: AtomicU64,
    evicted: AtomicU64,
    accept_errors: AtomicU64,
}

impl Ctx {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // Failure means the I/O thread's poll is gone, i.e. it has stopped already.
            let _ = self.waker.wake();
        }
    }

    /// Tells the I/O thread that `id` needs it.
    fn notify(&self, id: ConnId) {
        // The queue holds at most one entry per request in flight (it is sized for them); a
        // lost entry would only delay the connection to the next sweep.
        let _ = self.done.try_send(id);
        self.wake();
    }
}

/// Work for a worker.
enum Job {
    /// A request to serve.
    Serve { conn: Arc<Shared>, request: Request, close: bool },
    /// The next piece of a streamed body: the client has read everything before it.
    Render { conn: Arc<Shared>, source: Box<dyn BodySource> },
}

impl Job {
    fn conn(&self) -> &Arc<Shared> {
        match self {
            Job::Serve { conn, .. } | Job::Render { conn, .. } => conn,
        }
    }
}

/// About how many bytes of a streamed body are rendered at a time: what the edge holds for a
/// streamed response at most (with the chunk framing), however slowly its client reads.
const STREAM_PIECE: usize = 256 * 1024;

/// The next piece of a streamed body, framed as a chunk, followed by the last chunk when the
/// body is complete; and whether more follows.
fn render_piece(source: &mut dyn BodySource) -> (Vec<u8>, bool) {
    let mut data = Vec::with_capacity(STREAM_PIECE + 4096);
    let more = source.fill(&mut data, STREAM_PIECE);
    let mut framed = Vec::with_capacity(data.len() + 32);
    push_chunk(&mut framed, &data);
    if !more {
        framed.extend_from_slice(LAST_CHUNK);
    }
    (framed, more)
}

/// What the workers serve.
struct Service {
    router: Router,
    fallback: Option<Arc<dyn Fallback>>,
}

/// The queues to the workers: sync work, and `/healthz` and `/metrics` on a thread of their own
/// so a probe never waits behind sync requests (a liveness check that fails because the server
/// is busy gets a healthy server restarted).
struct Lanes {
    sync: Sender<Job>,
    probes: Sender<Job>,
}

/// A running HTTP server. Dropping it without [`HttpServer::shutdown`] leaves threads running.
pub struct HttpServer {
    local_addr: SocketAddr,
    ctx: Arc<Ctx>,
    io: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// How often timers are checked (and how late one may fire).
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often the drain checks for remaining work during shutdown.
const DRAIN_SWEEP_EVERY: Duration = Duration::from_millis(20);
/// Reads per connection per turn, so one fast sender cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Accepts per turn, for the same reason.
const ACCEPTS_PER_TURN: usize = 64;
/// Bytes of a next request read ahead while the previous one is being served.
const READ_AHEAD_BYTES: usize = 64 * 1024;
/// The I/O thread's read buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// After a connection's last response, what the client still sends is read and discarded
/// (so its unread bytes do not turn our close into a reset that destroys the response before
/// the client reads it) for at most this long and this many bytes, into the scratch buffer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// Accept backoff after `EMFILE` and the like.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Descriptors left for everything but client connections when the cap is derived from the
/// open-file limit (pools, replication, JWKS fetches, the process's own files).
pub const RESERVED_FDS: usize = 64;
/// Probe requests waiting for the probe thread before new ones get `429`.
const PROBE_QUEUE: usize = 64;
/// Longest-idle connections remembered as eviction candidates between sweeps.
const EVICTION_CANDIDATES: usize = 256;

fn bind(config: &HttpConfig) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(config.addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&config.addr.into())?;
    // The kernel caps the backlog at net.core.somaxconn.
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The connection cap in force: the configured one, kept below the open-file limit.
fn effective_cap(configured: usize) -> usize {
    let fd_room = super::fd_limit::nofile_limit()
        .map(|l| usize::try_from(l.soft).unwrap_or(usize::MAX).saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX);
    configured.min(fd_room).max(1)
}

impl HttpServer {
    /// Binds `config.addr` and starts the I/O thread and the workers.
    pub fn start(config: HttpConfig, router: Router) -> io::Result<HttpServer> {
        HttpServer::start_with(config, router, None)
    }

    /// [`HttpServer::start`], with `fallback` answering every path that is not a sync endpoint
    /// (instead of `404`).
    pub fn start_with_fallback(
        config: HttpConfig,
        router: Router,
        fallback: Arc<dyn Fallback>,
    ) -> io::Result<HttpServer> {
        HttpServer::start_with(config, router, Some(fallback))
    }

    fn start_with(config: HttpConfig, router: Router, fallback: Option<Arc<dyn Fallback>>) -> io::Result<HttpServer> {
        let listener = bind(&config)?;
        let local_addr = listener.local_addr()?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let threads = config.threads.max(1);
        let queue = config.queue.max(1);
        let (done_tx, done_rx) = bounded(queue + threads + 16);
        let max_connections = effective_cap(config.max_connections);
        if max_connections < config.max_connections {
            crate::info!(
                "HTTP connection cap lowered to fit the open-file limit",
                configured = config.max_connections as u64,
                effective = max_connections as u64
            );
        }
        let ctx = Arc::new(Ctx {
            waker,
            wake_pending: AtomicBool::new(false),
            done: done_tx,
            stop: Mutex::new(None),
            draining: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            budget: Budget::new(config.max_buffered_bytes.max(config.max_body_bytes)),
            open: AtomicUsize::new(0),
            max_connections,
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        });
        let (jobs_tx, jobs_rx) = bounded::<Job>(queue);
        let (probes_tx, probes_rx) = bounded::<Job>(PROBE_QUEUE);
        let service = Arc::new(Service { router, fallback });
        let mut workers = Vec::with_capacity(threads + 1);
        for i in 0..threads {
            let (rx, service, ctx) = (jobs_rx.clone(), service.clone(), ctx.clone());
            workers.push(
                thread::Builder::new().name(format!("http-worker-{i}")).spawn(move || work(&rx, &service, &ctx))?,
            );
        }
        {
            let (service, ctx) = (service.clone(), ctx.clone());
            workers.push(
                thread::Builder::new().name("http-probe".into()).spawn(move || work(&probes_rx, &service, &ctx))?,
            );
        }
        let lanes = Lanes { sync: jobs_tx, probes: probes_tx };
        let io = IoLoop::new(poll, listener, lanes, done_rx, ctx.clone(), &config);
        let io = thread::Builder::new().name("http-io".into()).spawn(move || {
            // A panic here is a bug that would leave every client hanging with no one to serve
            // them: take the process down rather than limp on.
            if catch_unwind(AssertUnwindSafe(move || io.run())).is_err() {
                crate::error!("the HTTP I/O thread panicked; aborting");
                std::process::abort();
            }
        })?;
        Ok(HttpServer { local_addr, ctx, io: Some(io), workers })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The edge's counters now.
    pub fn stats(&self) -> EdgeStats {
        EdgeStats {
            open: self.ctx.open.load(Ordering::Relaxed),
            max_connections: self.ctx.max_connections,
            refused: self.ctx.refused.load(Ordering::Relaxed),
            evicted: self.ctx.evicted.load(Ordering::Relaxed),
            accept_errors: self.ctx.accept_errors.load(Ordering::Relaxed),
            buffered_bytes: self.ctx.budget.used(),
        }
    }

    /// Stops accepting at once, lets requests in flight (and requests arriving on open
    /// connections meanwhile, answered with `Connection: close`) finish for at most
    /// `deadline`, then closes every connection and joins the threads. Returns within
    /// `deadline` plus a few milliseconds whatever clients and handlers do; a handler still
    /// running then is left to finish on its own (its response goes nowhere).
    pub fn shutdown(mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        *self.ctx.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
        self.ctx.wake();
        if let Some(io) = self.io.take() {
            if io.join().is_err() {
                crate::error!("the HTTP I/O thread panicked");
            }
        }
        let mut stuck = 0u64;
        for w in self.workers.drain(..) {
            while !w.is_finished() && Instant::now() < end {
                thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                if w.join().is_err() {
                    crate::error!("an HTTP worker panicked");
                }
            } else {
                stuck += 1;
            }
        }
        if stuck > 0 {
            self.ctx.abandoned.store(true, Ordering::Release);
            crate::warn!("HTTP workers still busy at the shutdown deadline; not waiting for them", workers = stuck);
        }
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// The client's `X-Request-Id` when it is short and printable, else a new one.
fn request_id(given: Option<&str>) -> String {
    match given {
        Some(id) if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => format!("{:x}-{:x}", process_id(), NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)),
    }
}

/// This process's id, read once (every read is a system call, and ids are made per request).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn persistence(close: bool, version: Version) -> Persistence {
    match (close, version) {
        (true, _) => Persistence::Close,
        (false, Version::Http10) => Persistence::KeepAliveHttp10,
        (false, Version::Http11) => Persistence::KeepAlive,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A worker: serves queued requests until the queue closes.
fn work(jobs: &Receiver<Job>, service: &Service, ctx: &Ctx) {
    while let Ok(job) = jobs.recv() {
        if ctx.abandoned.load(Ordering::Acquire) {
            continue;
        }
        let conn = job.conn().clone();
        let run = || match job {
            Job::Serve { conn, request, close } => serve(service, ctx, conn, request, close),
            Job::Render { conn, mut source } => {
                let (body, more) = render_piece(&mut *source);
                if complete(&conn, &ctx.budget, Vec::new(), body, false, more.then_some(source)) {
                    ctx.notify(conn.id);
                }
            }
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(run)) {
            // Handlers run under their own catch_unwind; this is the code around them (and a
            // streamed body's source).
            crate::error!("HTTP worker failed outside the handler", panic = panic_message(&*panic));
            conn.lock().broken = true;
            if complete(&conn, &ctx.budget, Vec::new(), Vec::new(), true, None) {
                ctx.notify(conn.id);
            }
            crate::logging::set_request_id(None);
        }
    }
}

/// Runs the router (or the fallback) for one request and hands the response to the I/O thread.
fn serve(service: &Service, ctx: &Ctx, conn: Arc<Shared>, mut request: Request, close: bool) {
    let started = Instant::now();
    let method = request.method().to_ascii_uppercase();
    let rid = request_id(request.header("x-request-id"));
    crate::logging::set_request_id(Some(rid.clone()));
    let (endpoint, reply) = route(service, &mut request, &method);
    let close = close || ctx.draining.load(Ordering::Acquire);
    let reply = reply.with_header("X-Request-Id", rid);
    let name = endpoint.map(|e| e.name()).unwrap_or("unknown");
    service.router.api.observe(name, reply.status, started.elapsed());
    crate::debug!(
        "request",
        method = method.clone(),
        endpoint = name,
        status = reply.status,
        micros = started.elapsed().as_micros() as u64
    );
    let persistence = persistence(close, request.version());
    let head_only = method == "HEAD";
    let (head, body, source) = match reply.stream.as_ref().and_then(BodyStream::take) {
        // Chunked, a piece at a time: the first piece now, the next ones as the client reads.
        Some(mut source) if !head_only && request.version() == Version::Http11 => {
            let (body, more) = render_piece(&mut *source);
            (encode_stream_head(&reply, persistence, &date_now()), body, more.then_some(source))
        }
        // No chunks for HTTP/1.0 (nor a body for HEAD): the whole body, for its length.
        Some(mut source) => {
            let mut body = Vec::new();
            while source.fill(&mut body, STREAM_PIECE) {}
            let reply = Reply { body, stream: None, ..reply };
            let head = encode_head(&reply, persistence, &date_now());
            (head, if head_only { Vec::new() } else { reply.body }, None)
        }
        None => {
            let head = encode_head(&reply, persistence, &date_now());
            (head, if head_only { Vec::new() } else { reply.body }, None)
        }
    };
    // The request's bytes leave the budget before the response's may enter it.
    drop(request);
    if complete(&conn, &ctx.budget, head, body, close, source) {
        ctx.notify(conn.id);
    }
    crate::logging::set_request_id(None);
}

fn route(service: &Service, request: &mut Request, method: &str) -> (Option<Endpoint>, Reply) {
    let outcome = match &service.fallback {
        Some(fallback) if Endpoint::from_path(request.path()).is_none() => {
            let request: &Request = request;
            catch_unwind(AssertUnwindSafe(|| (None, fallback.handle(request))))
        }
        _ => {
            let mut body = Some(request.take_body());
            let request: &Request = request;
            let header = |name: &str| request.header(name).map(str::to_string);
            let mut read_body = || body.take().unwrap_or(Ok(Vec::new()));
            let mut incoming = Incoming { method, url: request.target(), header: &header, read_body: &mut read_body };
            catch_unwind(AssertUnwindSafe(|| service.router.handle(&mut incoming)))
        }
    };
    outcome.unwrap_or_else(|panic| {
        crate::error!("handler panicked", url = request.target().to_string(), panic = panic_message(&*panic));
        (None, Reply::error(500, "internal error"))
    })
}

/// A connection as the I/O thread sees it.
struct Conn {
    shared: Arc<Shared>,
    inbound: Inbound,
    /// A request was handed out and its response may still be outstanding (completion is
    /// learnt lazily, under the lock).
    dispatched: bool,
    /// The socket may hold unread bytes (a readable event since the last `WouldBlock`).
    want_read: bool,
    /// An event said the peer shut its sending side (its FIN may follow buffered data).
    peer_shut: bool,
    /// The peer shut its sending side.
    eof: bool,
    /// Last byte read or response completed.
    activity: Instant,
    /// First byte of the head being received.
    head_started: Option<Instant>,
    /// Closing after the last response: since when, bytes discarded.
    closing: Option<(Instant, usize)>,
    /// No request has been received yet.
    fresh: bool,
}

/// What happens to a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Close,
}

/// Where an outstanding response stands.
enum Settled {
    /// No response outstanding.
    Idle,
    /// A request is in flight or output is pending.
    Busy,
    /// The connection is closing or closed.
    Over(Fate),
}

struct IoLoop {
    poll: Poll,
    listener: Option<mio::net::TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u64,
    jobs: Option<Lanes>,
    done: Receiver<ConnId>,
    ctx: Arc<Ctx>,
    limits: InboundLimits,
    idle_timeout: Duration,
    head_timeout: Duration,
    write_timeout: Duration,
    retry_after: u32,
    scratch: Vec<u8>,
    /// Connections whose turn ended with bytes left to read.
    again: Vec<ConnId>,
    /// The accept loop ended its turn with connections left in the backlog.
    accept_again: bool,
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    accept_failures: u64,
    /// Eviction candidates, the longest-idle last.
    evictable: Vec<(Instant, ConnId)>,
    /// The last look for candidates found none.
    no_candidates_since: Option<Instant>,
    next_sweep: Instant,
    /// The shutdown deadline, once draining.
    drain_until: Option<Instant>,
}

impl IoLoop {
    fn new(
        poll: Poll,
        listener: mio::net::TcpListener,
        jobs: Lanes,
        done: Receiver<ConnId>,
        ctx: Arc<Ctx>,
        config: &HttpConfig,
    ) -> IoLoop {
        let now = Instant::now();
        IoLoop {
            poll,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            jobs: Some(jobs),
            done,
            ctx,
            limits: InboundLimits {
                head: HeadLimits { max_bytes: config.max_head_bytes, max_headers: config.max_headers },
                max_body: config.max_body_bytes,
                retry_after: config.retry_after_secs,
            },
            idle_timeout: config.idle_timeout,
            head_timeout: config.head_timeout,
            write_timeout: config.write_timeout,
            retry_after: config.retry_after_secs,
            scratch: vec![0; SCRATCH_BYTES],
            again: Vec::new(),
            accept_again: false,
            accept_paused_until: None,
            accept_backoff: ACCEPT_BACKOFF_START,
            accept_failures: 0,
            evictable: Vec::new(),
            no_candidates_since: None,
            next_sweep: now + SWEEP_EVERY,
            drain_until: None,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if self.drain_until.is_none() {
                let stop = *self.ctx.stop.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(deadline) = stop {
                    self.begin_drain(now, deadline);
                }
            }
            if let Some(until) = self.drain_until {
                if now >= until {
                    let left = self.conns.iter().flatten().count();
                    if left > 0 {
                        crate::warn!(
                            "HTTP shutdown deadline reached; closing the remaining connections",
                            connections = left as u64
                        );
                    }
                    self.ctx.abandoned.store(true, Ordering::Release);
                    break;
                }
            }
            let mut timeout = self.next_sweep.saturating_duration_since(now);
            if let Some(until) = self.accept_paused_until {
                timeout = timeout.min(until.saturating_duration_since(now));
            }
            if !self.again.is_empty() || self.accept_again {
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::error!("HTTP poll failed", error = e.to_string());
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.ctx.wake_pending.store(false, Ordering::Release),
                    Token(slot) => {
                        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                        self.with_conn(slot, None, |io, conn| {
                            conn.want_read |= readable;
                            conn.peer_shut |= event.is_read_closed();
                            io.drive(conn, now)
                        });
                    }
                }
            }
            // Notifications are drained every turn: a wake-up may have raced with the last drain.
            while let Ok(id) = self.done.try_recv() {
                self.with_conn(id.slot, Some(id.generation), |io, conn| io.drive(conn, now));
            }
            for id in std::mem::take(&mut self.again) {
                self.with_conn(id.slot, Some(id.generation), |io, conn| io.drive(conn, now));
            }
            if self.accept_again || self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept(now);
            }
            if now >= self.next_sweep {
                let work_left = self.sweep(now);
                if self.drain_until.is_some() && !work_left {
                    break;
                }
                let every = if self.drain_until.is_some() { DRAIN_SWEEP_EVERY } else { SWEEP_EVERY };
                self.next_sweep = now + every;
            }
        }
        for slot in 0..self.conns.len() {
            if let Some(conn) = self.conns[slot].take() {
                self.release(slot, conn);
            }
        }
        // Workers finish what is queued (or drop it once abandoned) and stop.
        self.jobs = None;
    }

    /// Runs `f` on the connection in `slot` (of `generation`, when given), closing it when `f`
    /// says so.
    fn with_conn(&mut self, slot: usize, generation: Option<u64>, f: impl FnOnce(&mut IoLoop, &mut Conn) -> Fate) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        if generation.is_some_and(|g| g != conn.shared.id.generation) {
            self.conns[slot] = Some(conn);
            return;
        }
        match f(self, &mut conn) {
            Fate::Keep => self.conns[slot] = Some(conn),
            Fate::Close => self.release(slot, conn),
        }
    }

    fn release(&mut self, slot: usize, conn: Conn) {
        let fd = conn.shared.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        // A worker may still hold the socket (its descriptor closes when it lets go); the peer
        // learns now that the connection is over.
        let _ = conn.shared.stream.shutdown(Shutdown::Both);
        drop(conn);
        self.free.push(slot);
        self.ctx.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn accept(&mut self, now: Instant) {
        self.accept_again = false;
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.accept_failures > 0 {
                        crate::info!("HTTP accept recovered", failures = self.accept_failures);
                        self.accept_failures = 0;
                    }
                    self.accept_backoff = ACCEPT_BACKOFF_START;
                    self.admit(stream.into(), now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog;
                    // try again shortly, backing off while it lasts.
                    self.ctx.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if self.accept_failures == 0 {
                        crate::warn!(
                            "HTTP accept failed; pausing accepts and retrying",
                            error = e.to_string(),
                            open_connections = self.ctx.open.load(Ordering::Relaxed) as u64
                        );
                    }
                    self.accept_failures += 1;
                    self.accept_paused_until = Some(now + self.accept_backoff);
                    self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_CAP);
                    return;
                }
            }
        }
        self.accept_again = true;
    }

    fn admit(&mut self, stream: TcpStream, now: Instant) {
        // Responses are written whole with one call; this only matters for what is left over.
        let _ = stream.set_nodelay(true);
        if self.ctx.open.load(Ordering::Relaxed) >= self.ctx.max_connections && !self.make_room(now) {
            self.ctx.refused.fetch_add(1, Ordering::Relaxed);
            let reply = ApiError::Unavailable { retry_after: self.retry_after }.reply();
            let head = encode_head(&reply, Persistence::Close, &date_now());
            // A fresh socket's send buffer is empty: this fits, or the client is gone.
            let _ = write_parts(&stream, &head, &reply.body, &mut 0);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.next_generation += 1;
        let id = ConnId { slot, generation: self.next_generation };
        let fd = stream.as_raw_fd();
        if let Err(e) =
            self.poll.registry().register(&mut SourceFd(&fd), Token(slot), Interest::READABLE | Interest::WRITABLE)
        {
            crate::warn!("cannot watch a new HTTP connection", error = e.to_string());
            self.free.push(slot);
            return;
        }
        let out = Out { in_flight: false, notify: false, pending: None, done_at: now, close: false, broken: false };
        let shared = Arc::new(Shared { stream, id, out: Mutex::new(out) });
        self.conns[slot] = Some(Conn {
            shared,
            inbound: Inbound::new(self.limits, &self.ctx.budget),
            dispatched: false,
            want_read: false,
            peer_shut: false,
            eof: false,
            activity: now,
            head_started: None,
            closing: None,
            fresh: true,
        });
        self.ctx.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the longest-idle connection that has no request in progress. `false` when none.
    fn make_room(&mut self, now: Instant) -> bool {
        // Candidates are looked for again once used up; after a look that found none, not for
        // a while (each look is a pass over every connection).
        if self.evictable.is_empty()
            && self.no_candidates_since.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(50))
        {
            self.collect_candidates(now);
            self.no_candidates_since = self.evictable.is_empty().then_some(now);
        }
        while let Some((activity, id)) = self.evictable.pop() {
            let Some(conn) = self.conns.get(id.slot).and_then(Option::as_ref) else { continue };
            if conn.shared.id != id || conn.activity != activity || !evictable(conn, now) {
                continue;
            }
            if let Some(conn) = self.conns[id.slot].take() {
                self.release(id.slot, conn);
                self.ctx.evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Remembers the longest-idle evictable connections, the oldest last (popped first).
    fn collect_candidates(&mut self, now: Instant) {
        self.evictable.clear();
        self.evictable
            .extend(self.conns.iter().flatten().filter(|c| evictable(c, now)).map(|c| (c.activity, c.shared.id)));
        if self.evictable.len() > EVICTION_CANDIDATES {
            self.evictable.select_nth_unstable_by_key(EVICTION_CANDIDATES, |(t, _)| *t);
            self.evictable.truncate(EVICTION_CANDIDATES);
        }
        self.evictable.sort_unstable_by_key(|(t, _)| std::cmp::Reverse(*t));
    }

    /// Moves a connection as far as it can go: settles its outstanding response, parses and
    /// dispatches buffered requests, reads while there is room.
    fn drive(&mut self, conn: &mut Conn, now: Instant) -> Fate {
        if conn.closing.is_some() {
            return self.linger(conn);
        }
        let mut reads = 0;
        loop {
            let busy = match self.settle(conn, now) {
                Settled::Over(fate) => return fate,
                Settled::Busy => true,
                Settled::Idle => false,
            };
            if !busy {
                match conn.inbound.next_step() {
                    Step::Request { request, close } => {
                        self.dispatch(conn, request, close);
                        continue;
                    }
                    Step::Continue => {
                        // Nothing else is outstanding on this connection, so the interim
                        // response goes out in order; 25 bytes fit an idle socket.
                        let _ = write_parts(&conn.shared.stream, CONTINUE, &[], &mut 0);
                        continue;
                    }
                    Step::Refuse(reply) => {
                        self.respond_inline(conn, reply, Persistence::Close, false);
                        continue;
                    }
                    Step::NeedMore => {
                        if conn.inbound.is_idle() {
                            conn.head_started = None;
                        } else if conn.head_started.is_none() && !conn.inbound.in_body() {
                            conn.head_started = Some(now);
                        }
                        if conn.eof {
                            // The client sent all it will and no request is complete.
                            return Fate::Close;
                        }
                    }
                }
            }
            let room = !conn.inbound.is_done() && (!busy || conn.inbound.buffered() < READ_AHEAD_BYTES);
            if !(conn.want_read && room) {
                if busy && (conn.want_read || conn.inbound.buffered() > 0) {
                    // Paused with input waiting: be told when the response is out.
                    self.ask_for_notice(conn);
                }
                return Fate::Keep;
            }
            if reads == READS_PER_TURN {
                self.again.push(conn.shared.id);
                return Fate::Keep;
            }
            reads += 1;
            match (&conn.shared.stream).read(&mut self.scratch) {
                Ok(0) => {
                    conn.eof = true;
                    conn.want_read = false;
                    if busy {
                        self.ask_for_notice(conn);
                        return Fate::Keep;
                    }
                }
                Ok(n) => {
                    conn.activity = now;
                    // A short read drained the socket: epoll reports every later arrival
                    // (data or the peer's FIN) as a new edge, so no read just to see EAGAIN.
                    // Unless the FIN is already known to be there: read on until it shows.
                    if n < self.scratch.len() && !conn.peer_shut {
                        conn.want_read = false;
                    }
                    if conn.inbound.is_idle() {
                        conn.head_started = Some(now);
                    }
                    if !conn.inbound.push(&self.scratch[..n]) {
                        let reply = conn.inbound.overloaded();
                        if busy {
                            // The budget is spent while a response is still owed here: close
                            // rather than hold more (the client sees a reset and retries).
                            return Fate::Close;
                        }
                        self.respond_inline(conn, reply, Persistence::Close, false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.want_read = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Fate::Close,
            }
        }
    }

    fn ask_for_notice(&self, conn: &Conn) {
        let mut out = conn.shared.lock();
        if out.in_flight {
            out.notify = true;
        }
    }

    /// Flushes pending output and learns whether the last response is out.
    fn settle(&mut self, conn: &mut Conn, now: Instant) -> Settled {
        if !conn.dispatched {
            return Settled::Idle;
        }
        let mut out = conn.shared.lock();
        if out.broken {
            return Settled::Over(Fate::Close);
        }
        if let Some(p) = &mut out.pending {
            let before = p.written;
            match write_parts(&conn.shared.stream, &p.head, &p.body, &mut p.written) {
                Ok(true) => {
                    if let Some(source) = out.pending.take().and_then(|p| p.source) {
                        // The client has read this piece: a worker renders the next one.
                        out.in_flight = true;
                        drop(out);
                        return self.render_next(conn, source, now);
                    }
                }
                Ok(false) => {
                    if p.written > before {
                        p.progress = now;
                    }
                    return Settled::Busy;
                }
                Err(_) => return Settled::Over(Fate::Close),
            }
        }
        if out.in_flight {
            return Settled::Busy;
        }
        let (close, done_at) = (out.close, out.done_at);
        drop(out);
        conn.dispatched = false;
        conn.activity = conn.activity.max(done_at);
        if close {
            return Settled::Over(self.begin_close(conn, now));
        }
        Settled::Idle
    }

    /// Hands the rest of a streamed body to a worker for its next piece. With the queue full,
    /// the source waits in the connection for the next turn (the sweep comes by at least).
    fn render_next(&mut self, conn: &mut Conn, source: Box<dyn BodySource>, now: Instant) -> Settled {
        let job = Job::Render { conn: conn.shared.clone(), source };
        let refused = match &self.jobs {
            Some(lanes) => match lanes.sync.try_send(job) {
                Ok(()) => return Settled::Busy,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        let Job::Render { source, .. } = refused else { return Settled::Over(Fate::Close) };
        let mut out = conn.shared.lock();
        out.in_flight = false;
        out.pending = Some(Pending {
            head: Vec::new(),
            body: Vec::new(),
            written: 0,
            progress: now,
            _held: self.ctx.budget.empty(),
            source: Some(source),
        });
        Settled::Busy
    }

    fn dispatch(&mut self, conn: &mut Conn, request: Request, close: bool) {
        let close = close || self.drain_until.is_some();
        {
            let mut out = conn.shared.lock();
            out.in_flight = true;
            out.notify = close || conn.eof;
        }
        conn.dispatched = true;
        conn.head_started = None;
        conn.fresh = false;
        let head_only = request.method().eq_ignore_ascii_case("HEAD");
        let persistence = persistence(close, request.version());
        let Some(lanes) = &self.jobs else { return };
        let lane = match Endpoint::from_path(request.path()) {
            Some(Endpoint::Health | Endpoint::Metrics) => &lanes.probes,
            _ => &lanes.sync,
        };
        let job = Job::Serve { conn: conn.shared.clone(), request, close };
        let (job, reply) = match lane.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => (job, ApiError::TooManyRequests { retry_after: self.retry_after }.reply()),
            Err(TrySendError::Disconnected(job)) => {
                (job, ApiError::Unavailable { retry_after: self.retry_after }.reply())
            }
        };
        drop(job);
        self.respond_inline(conn, reply, persistence, head_only);
    }

    /// Answers on the I/O thread (refusals, 429): the same path a worker takes.
    fn respond_inline(&mut self, conn: &mut Conn, reply: Reply, persistence: Persistence, head_only: bool) {
        let head = encode_head(&reply, persistence, &date_now());
        let body = if head_only { Vec::new() } else { reply.body };
        conn.shared.lock().in_flight = true;
        conn.dispatched = true;
        complete(&conn.shared, &self.ctx.budget, head, body, persistence == Persistence::Close, None);
    }

    /// After the last response: stop sending, and read what the client still sends for a
    /// short while so our close does not reset the connection before it reads the response.
    fn begin_close(&mut self, conn: &mut Conn, now: Instant) -> Fate {
        if conn.eof {
            return Fate::Close;
        }
        let _ = conn.shared.stream.shutdown(Shutdown::Write);
        conn.closing = Some((now, 0));
        self.linger(conn)
    }

    fn linger(&mut self, conn: &mut Conn) -> Fate {
        let Some((_, discarded)) = &mut conn.closing else { return Fate::Keep };
        loop {
            match (&conn.shared.stream).read(&mut self.scratch) {
                Ok(0) => return Fate::Close,
                Ok(n) => {
                    *discarded += n;
                    if *discarded > LINGER_BYTES {
                        return Fate::Close;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fate::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Fate::Close,
            }
        }
    }

    fn begin_drain(&mut self, now: Instant, deadline: Duration) {
        self.drain_until = Some(now + deadline);
        self.ctx.draining.store(true, Ordering::Release);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_again = false;
        self.accept_paused_until = None;
        self.next_sweep = now;
        crate::info!("HTTP draining", connections = self.ctx.open.load(Ordering::Relaxed) as u64);
    }

    /// Timers and lazy completion for every connection. Returns whether any request is still
    /// in progress (during shutdown, the server stops when none is).
    fn sweep(&mut self, now: Instant) -> bool {
        let mut work_left = false;
        for slot in 0..self.conns.len() {
            self.with_conn(slot, None, |io, conn| {
                let fate = io.check_timers(conn, now);
                if fate == Fate::Keep && (conn.dispatched || conn.inbound.in_body()) {
                    work_left = true;
                }
                fate
            });
        }
        if self.drain_until.is_none() {
            self.collect_candidates(now);
            self.no_candidates_since = None;
        }
        work_left
    }

    fn check_timers(&mut self, conn: &mut Conn, now: Instant) -> Fate {
        if let Some((since, _)) = conn.closing {
            return if now.duration_since(since) >= LINGER { Fate::Close } else { Fate::Keep };
        }
        if conn.dispatched {
            // Also catches a completion whose notice was lost.
            if self.drive(conn, now) == Fate::Close {
                return Fate::Close;
            }
            if conn.dispatched {
                let out = conn.shared.lock();
                let stalled =
                    out.pending.as_ref().is_some_and(|p| now.duration_since(p.progress) >= self.write_timeout);
                drop(out);
                if stalled {
                    crate::debug!("response not read within the write timeout; connection closed");
                    return Fate::Close;
                }
                return Fate::Keep;
            }
            if conn.closing.is_some() {
                return Fate::Keep;
            }
        }
        let timed_out = if conn.inbound.in_body() {
            now.duration_since(conn.activity) >= self.idle_timeout
        } else if conn.inbound.in_head() {
            conn.head_started.is_some_and(|t| now.duration_since(t) >= self.head_timeout)
        } else {
            false
        };
        if timed_out {
            self.respond_inline(conn, Reply::error(408, "request not received in time"), Persistence::Close, false);
            return self.drive(conn, now);
        }
        // A connection that never sent a request gets the head deadline, a kept-alive one the
        // idle timeout. (While draining, idle connections stay open as long as other requests
        // run, so requests arriving on them are still answered; then all close together.)
        let limit = if conn.fresh { self.head_timeout } else { self.idle_timeout };
        if conn.inbound.is_idle() && now.duration_since(conn.activity) >= limit {
            return Fate::Close;
        }
        Fate::Keep
    }
}

/// A body upload that has sent nothing for this long may be closed to make room at the cap.
const STALLED_UPLOAD: Duration = Duration::from_secs(1);

/// Whether a connection may be closed to make room: it has no request with a worker and no
/// response in progress (idle, or part of a head), or its body upload has stalled.
fn evictable(conn: &Conn, now: Instant) -> bool {
    !conn.dispatched
        && conn.closing.is_none()
        && (conn.inbound.is_idle()
            || conn.inbound.in_head()
            || (conn.inbound.in_body() && now.duration_since(conn.activity) >= STALLED_UPLOAD))
}
