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

/// A finished response: status, JSON body (or plain text), extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `application/json` or `text/plain; charset=utf-8`.
    pub content_type: &'static str,
    /// Extra headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// A 200 JSON reply with the reference's trailing newline.
    pub fn json(body: Vec<u8>) -> Reply {
        Reply::json_with_status(200, body)
    }

    /// A JSON reply with any status and the reference's trailing newline.
    fn json_with_status(status: u16, mut body: Vec<u8>) -> Reply {
        body.push(b'\n');
        Reply { status, body, content_type: "application/json", headers: Vec::new() }
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
        Reply { status, body: text.as_bytes().to_vec(), content_type: "text/plain; charset=utf-8", headers: Vec::new() }
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
    /// POST /sync/push.
    fn push(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/snapshot.
    fn snapshot(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
    }
    /// POST /sync/rebuild.
    fn rebuild(&self, _user: &UserId, _body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::NotImplemented)
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
