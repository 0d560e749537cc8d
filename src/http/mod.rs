//! The HTTP edge: synchro's own HTTP/1.1 server on plain threads (one I/O thread, a fixed pool
//! of workers), routing, authentication, the version gate, request bodies, and the one mapping
//! from errors to status codes.
//!
//! Flow of a request: the I/O thread ([`server`]) reads it off the socket and applies every
//! limit ([`head`], [`chunked`], [`inbound`], [`budget`]); a complete request goes to the
//! workers over a bounded channel (a full channel answers `429` at once: queueing is bounded);
//! a worker runs [`routes::Router::handle`] under `catch_unwind`, which applies the contract's
//! processing order (§1.1) and calls the [`SyncApi`] the composition root supplies, and writes
//! the response ([`response`]); the I/O thread finishes what the socket did not take.
//!
//! The edge is our own code, not an HTTP server crate, because its limits must hold before
//! memory is allocated or a thread is held, and a server that drains or buffers what a client
//! sends on its own cannot promise that: `tiny_http` 0.12, the small thread-based server this
//! design would otherwise use, drains an unread body into a buffer sized by the client's
//! `Content-Length`, so one request aborts the process in code no handler can reach.

pub mod admission;
pub mod auth;
pub mod budget;
pub mod chunked;
pub mod fd_limit;
pub mod head;
pub mod inbound;
pub mod response;
pub mod routes;
pub mod server;

use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::protocol::{ErrorBody, RetryBody, SchemaMismatchBody};
use crate::types::UserId;

pub use admission::{Admission, AdmissionPolicy, AdmitAll};
pub use auth::{AuthFailure, Authenticator, HeaderAuthenticator, JwtSecretAuthenticator};
pub use inbound::Request;
pub use server::{EdgeStats, Fallback, HttpConfig, HttpServer};

/// Everything a handler can answer besides success; [`ApiError::reply`] is the single
/// place that turns it into a status code and JSON body (contract §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 with this message (`invalid request body`, `<key> is required`, ...).
    BadRequest(String),
    /// 404 `client not registered`.
    ClientNotRegistered,
    /// 403 with this message (e.g. a rebuild of a bucket the client is not subscribed to).
    Forbidden(String),
    /// 409 schema mismatch with the server's current pair.
    SchemaMismatch {
        /// Current version.
        version: i64,
        /// Current hash.
        hash: String,
    },
    /// 426 `client upgrade required`.
    UpgradeRequired,
    /// 429 with `Retry-After`.
    TooManyRequests {
        /// Seconds.
        retry_after: u32,
    },
    /// 500 with the endpoint's message (`failed to pull changes`, ...).
    Internal(&'static str),
    /// 501 for an endpoint that is not built.
    NotImplemented,
    /// 503 with `Retry-After` (transient database trouble).
    Unavailable {
        /// Seconds.
        retry_after: u32,
    },
}

/// Renders a response body piece by piece, for bodies too large to build whole: the edge asks
/// for the next piece when the client has read the previous ones, on a worker, and sends the
/// pieces chunked (`Transfer-Encoding: chunked`), so what it holds for a client that reads
/// slowly is one piece, and no worker waits for the client.
pub trait BodySource: Send {
    /// Appends the next part of the body to `out`, about `max` bytes (one indivisible item may
    /// make it more). Returns `false` once the body is complete.
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> bool;
}

/// A successful response's JSON body, as a [`SyncApi`] method returns it.
pub enum Body {
    /// The whole body; the edge appends the trailing newline.
    Bytes(Vec<u8>),
    /// A body rendered as the client reads it; the source writes all of it, trailing newline
    /// included.
    Stream(Box<dyn BodySource>),
}

impl Body {
    /// The whole body, rendering a stream to its end (trailing newline excluded either way).
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Body::Bytes(b) => b,
            Body::Stream(mut source) => {
                let mut out = Vec::new();
                while source.fill(&mut out, 1 << 20) {}
                if out.last() == Some(&b'\n') {
                    out.pop();
                }
                out
            }
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Body::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// The rest of a [`Reply`]'s body, rendered as the client reads it. The edge takes the source
/// out once, to send it; a copy of the reply shares it.
#[derive(Clone)]
pub struct BodyStream(Arc<Mutex<Option<Box<dyn BodySource>>>>);

impl BodyStream {
    /// Wraps a source.
    pub fn new(source: Box<dyn BodySource>) -> BodyStream {
        BodyStream(Arc::new(Mutex::new(Some(source))))
    }

    /// The source, unless it was taken already.
    pub fn take(&self) -> Option<Box<dyn BodySource>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl PartialEq for BodyStream {
    fn eq(&self, other: &BodyStream) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BodyStream {}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream")
    }
}

/// A finished response: status, JSON body (or plain text), extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (with a `stream`, the body is the stream's output instead).
    pub body: Vec<u8>,
    /// `application/json` or `text/plain; charset=utf-8`.
    pub content_type: &'static str,
    /// Extra headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// A body rendered as the client reads it ([`Body::Stream`]).
    pub stream: Option<BodyStream>,
}

impl Reply {
    /// A 200 JSON reply with the reference's trailing newline.
    pub fn json(body: Vec<u8>) -> Reply {
        Reply::json_with_status(200, body)
    }

    /// A 200 JSON reply of a [`SyncApi`] body: bytes (newline appended) or a stream.
    pub fn from_body(body: Body) -> Reply {
        match body {
            Body::Bytes(bytes) => Reply::json(bytes),
            Body::Stream(source) => Reply {
                status: 200,
                body: Vec::new(),
                content_type: "application/json",
                headers: Vec::new(),
                stream: Some(BodyStream::new(source)),
            },
        }
    }

    /// A JSON reply with any status and the reference's trailing newline.
    fn json_with_status(status: u16, mut body: Vec<u8>) -> Reply {
        body.push(b'\n');
        Reply { status, body, content_type: "application/json", headers: Vec::new(), stream: None }
    }

    /// A protocol body serialised (it has no map with non-string keys, so this cannot fail).
    fn body(status: u16, value: &impl serde::Serialize) -> Reply {
        Reply::json_with_status(status, serde_json::to_vec(value).unwrap_or_default())
    }

    /// A JSON reply with any status, `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::body(status, &ErrorBody { error: message })
    }

    /// A plain-text reply.
    pub fn text(status: u16, text: &str) -> Reply {
        Reply {
            status,
            body: text.as_bytes().to_vec(),
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            stream: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

impl ApiError {
    /// The status and body of this error (contract §3.1).
    pub fn reply(&self) -> Reply {
        match self {
            ApiError::BadRequest(msg) => Reply::error(400, msg),
            ApiError::ClientNotRegistered => Reply::error(404, "client not registered"),
            ApiError::Forbidden(msg) => Reply::error(403, msg),
            ApiError::SchemaMismatch { version, hash } => Reply::body(409, &SchemaMismatchBody::new(*version, hash)),
            ApiError::UpgradeRequired => Reply::error(426, "client upgrade required"),
            ApiError::TooManyRequests { retry_after } => {
                Reply::body(429, &RetryBody { error: "Too Many Requests", retry_after: *retry_after })
                    .with_header("Retry-After", retry_after.to_string())
            }
            ApiError::Internal(msg) => Reply::error(500, msg),
            ApiError::NotImplemented => Reply::error(501, "not implemented"),
            ApiError::Unavailable { retry_after } => {
                Reply::body(503, &RetryBody { error: "service temporarily unavailable", retry_after: *retry_after })
                    .with_header("Retry-After", retry_after.to_string())
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.reply();
        write!(f, "{} {}", reply.status, String::from_utf8_lossy(&reply.body).trim_end())
    }
}

impl std::error::Error for ApiError {}

/// The sync endpoints as the HTTP layer calls them: an authenticated user and a parsed body
/// object in, serialized JSON out. Every method defaults to `501 not implemented`.
pub trait SyncApi: Send + Sync {
    /// POST /sync/register.
    fn register(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/pull.
    fn pull(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/pull as the router calls it: a large page may be a [`Body::Stream`].
    /// Defaults to [`SyncApi::pull`].
    fn pull_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        self.pull(user, body).map(Body::Bytes)
    }
    /// POST /sync/pull from the body's bytes, as the router calls it: the most frequent
    /// request may skip the parsed object. Defaults to [`routes::parse_object`] and
    /// [`SyncApi::pull_body`].
    fn pull_json(&self, user: &UserId, body: &[u8]) -> Result<Body, ApiError> {
        self.pull_body(user, &routes::parse_object(body)?)
    }
    /// POST /sync/push.
    fn push(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/snapshot.
    fn snapshot(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/snapshot as the router calls it; defaults to [`SyncApi::snapshot`].
    fn snapshot_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        self.snapshot(user, body).map(Body::Bytes)
    }
    /// POST /sync/rebuild.
    fn rebuild(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/rebuild as the router calls it; defaults to [`SyncApi::rebuild`].
    fn rebuild_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        self.rebuild(user, body).map(Body::Bytes)
    }
    /// GET /sync/tables.
    fn tables(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// GET /sync/schema.
    fn schema(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// GET /sync/debug?client_id=...
    fn debug(&self, _user: &UserId, _client_id: &str) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// GET /healthz: true when PostgreSQL answers.
    fn health(&self) -> bool {
        true
    }
    /// GET /metrics: the Prometheus text, or `None` when metrics are not served (404).
    fn metrics(&self) -> Option<String> {
        None
    }
    /// Called after every request with its endpoint name, status and duration.
    fn observe(&self, _endpoint: &'static str, _status: u16, _elapsed: std::time::Duration) {}
}
