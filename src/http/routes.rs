//! Routing and the contract's processing order (§1.1): path -> authentication (401) ->
//! version gate (426) -> method (405) -> body (413/400) -> handler.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{AdmissionPolicy, ApiError, AuthFailure, Authenticator, Body, Reply, SyncApi};
use crate::protocol::{DebugRequest, HealthBody};
use crate::version::VersionGate;

/// The `/healthz` body: exactly `{"status":"..."}`, without the trailing newline of the others.
fn health_body(status: &str) -> Vec<u8> {
    serde_json::to_vec(&HealthBody { status }).unwrap_or_default()
}

/// The endpoints of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// POST /sync/register
    Register,
    /// POST /sync/pull
    Pull,
    /// POST /sync/push
    Push,
    /// POST /sync/snapshot
    Snapshot,
    /// POST /sync/rebuild
    Rebuild,
    /// GET /sync/tables
    Tables,
    /// GET /sync/schema
    Schema,
    /// GET /sync/debug
    Debug,
    /// GET /healthz
    Health,
    /// GET /metrics
    Metrics,
}

impl Endpoint {
    /// The endpoint at `path` (exact match, no trailing slash).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/sync/register" => Endpoint::Register,
            "/sync/pull" => Endpoint::Pull,
            "/sync/push" => Endpoint::Push,
            "/sync/snapshot" => Endpoint::Snapshot,
            "/sync/rebuild" => Endpoint::Rebuild,
            "/sync/tables" => Endpoint::Tables,
            "/sync/schema" => Endpoint::Schema,
            "/sync/debug" => Endpoint::Debug,
            "/healthz" => Endpoint::Health,
            "/metrics" => Endpoint::Metrics,
            _ => return None,
        })
    }

    /// The one method it answers.
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Register | Endpoint::Pull | Endpoint::Push | Endpoint::Snapshot | Endpoint::Rebuild => "POST",
            Endpoint::Tables | Endpoint::Schema | Endpoint::Debug | Endpoint::Health | Endpoint::Metrics => "GET",
        }
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Register => "register",
            Endpoint::Pull => "pull",
            Endpoint::Push => "push",
            Endpoint::Snapshot => "snapshot",
            Endpoint::Rebuild => "rebuild",
            Endpoint::Tables => "tables",
            Endpoint::Schema => "schema",
            Endpoint::Debug => "debug",
            Endpoint::Health => "healthz",
            Endpoint::Metrics => "metrics",
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (by `Content-Length` or while reading).
    TooLarge,
    /// The connection failed while reading.
    Io(String),
}

/// One request as the router sees it.
pub struct Incoming<'a> {
    /// The method, upper-case.
    pub method: &'a str,
    /// The request target (path and query).
    pub url: &'a str,
    /// Header lookup by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// Reads the body within the size limit (called at most once, only for POST endpoints).
    pub read_body: &'a mut dyn FnMut() -> Result<Vec<u8>, BodyError>,
}

/// The routing context shared by every worker.
pub struct Router {
    /// The endpoints' implementation.
    pub api: Arc<dyn SyncApi>,
    /// Who requests speak for.
    pub auth: Arc<dyn Authenticator>,
    /// `MIN_CLIENT_VERSION`.
    pub gate: VersionGate,
    /// The embedder's rate-limit / maintenance policy ([`super::AdmitAll`] by default).
    pub admission: Arc<dyn AdmissionPolicy>,
}

/// Parses a body per §0.2: the first JSON value must be an object; bytes after it are ignored.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    crate::protocol::parse_object(body).map_err(|e| ApiError::BadRequest(e.0))
}

/// The decoded value of query parameter `key`: `None` when absent, `Err` when it does not
/// decode to UTF-8 text (nothing is replaced or guessed).
fn query_param(url: &str, key: &str) -> Option<Result<String, ApiError>> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            String::from_utf8(percent_decode(v))
                .map_err(|_| ApiError::BadRequest(format!("{key} query parameter is not UTF-8 text")))
        })
    })
}

/// Percent-decoding (`+` is a space); a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

impl Router {
    /// Answers one request. Never panics on input; the caller still wraps it in `catch_unwind`.
    pub fn handle(&self, req: &mut Incoming<'_>) -> (Option<Endpoint>, Reply) {
        let path = req.url.split('?').next().unwrap_or("");
        let Some(endpoint) = Endpoint::from_path(path) else {
            return (None, Reply::text(404, "404 page not found\n"));
        };
        if endpoint == Endpoint::Health {
            let reply = if req.method != "GET" && req.method != "HEAD" {
                Reply::text(405, "Method Not Allowed\n").with_header("Allow", "GET")
            } else if self.api.health() {
                Reply {
                    status: 200,
                    body: health_body("ok"),
                    content_type: "application/json",
                    headers: vec![],
                    stream: None,
                }
            } else {
                Reply {
                    status: 503,
                    body: health_body("unavailable"),
                    content_type: "application/json",
                    headers: vec![("Retry-After", "5".into())],
                    stream: None,
                }
            };
            return (Some(endpoint), reply);
        }
        if endpoint == Endpoint::Metrics {
            // Like /healthz: no authentication (restrict it at the proxy if needed).
            let reply = match (req.method, self.api.metrics()) {
                ("GET", Some(text)) => Reply {
                    status: 200,
                    body: text.into_bytes(),
                    content_type: "text/plain; version=0.0.4",
                    headers: vec![],
                    stream: None,
                },
                ("GET", None) => Reply::text(404, "404 page not found\n"),
                _ => Reply::text(405, "Method Not Allowed\n").with_header("Allow", "GET"),
            };
            return (Some(endpoint), reply);
        }
        let user = match self.auth.authenticate(req.header) {
            Ok(user) => user,
            Err(AuthFailure { retry_after: Some(retry_after), reason, .. }) => {
                crate::debug!(
                    "request not authenticated: keys unavailable",
                    endpoint = endpoint.name(),
                    reason = reason
                );
                return (Some(endpoint), ApiError::Unavailable { retry_after }.reply());
            }
            Err(failure) => {
                crate::debug!("request refused", endpoint = endpoint.name(), reason = failure.reason.clone());
                return (
                    Some(endpoint),
                    Reply::error(401, failure.client_message).with_header("WWW-Authenticate", "Bearer"),
                );
            }
        };
        if self.gate.check(&(req.header)("x-app-version").unwrap_or_default()).is_err() {
            return (Some(endpoint), ApiError::UpgradeRequired.reply());
        }
        if req.method != endpoint.method() {
            return (Some(endpoint), Reply::error(405, "method not allowed").with_header("Allow", endpoint.method()));
        }
        if let Some(refusal) = self.admission.admit(&user, endpoint).refusal() {
            crate::debug!("request not admitted by the admission policy", endpoint = endpoint.name());
            return (Some(endpoint), refusal.reply());
        }
        let bytes = |r: Result<Vec<u8>, ApiError>| r.map(Body::Bytes);
        let result = match endpoint {
            Endpoint::Tables => bytes(self.api.tables(&user)),
            Endpoint::Schema => bytes(self.api.schema(&user)),
            Endpoint::Debug => match query_param(req.url, DebugRequest::PARAMETER).transpose() {
                Err(e) => Err(e),
                Ok(client_id) => match DebugRequest::decode(client_id.as_deref()) {
                    Ok(req) => bytes(self.api.debug(&user, &req.client_id)),
                    Err(e) => Err(ApiError::BadRequest(e.0)),
                },
            },
            _ => {
                let body = match (req.read_body)() {
                    Ok(body) => body,
                    Err(BodyError::TooLarge) => return (Some(endpoint), Reply::error(413, "request body too large")),
                    Err(BodyError::Io(_)) => return (Some(endpoint), Reply::error(400, "invalid request body")),
                };
                if endpoint == Endpoint::Pull {
                    self.api.pull_json(&user, &body)
                } else {
                    match parse_object(&body) {
                        Err(e) => Err(e),
                        Ok(map) => match endpoint {
                            Endpoint::Register => bytes(self.api.register(&user, &map)),
                            Endpoint::Push => bytes(self.api.push(&user, &map)),
                            Endpoint::Snapshot => self.api.snapshot_body(&user, &map),
                            _ => self.api.rebuild_body(&user, &map),
                        },
                    }
                }
            }
        };
        match result {
            Ok(body) => (Some(endpoint), Reply::from_body(body)),
            Err(e) => (Some(endpoint), e.reply()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_start_with_an_object() {
        assert!(parse_object(br#"{"a":1} trailing garbage"#).is_ok());
        for bad in [&b""[..], b"null", b"[]", b"1", b"\"s\"", b"{", b"\xff\xfe", b"   "] {
            assert!(parse_object(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn query_parameters() {
        let param = |url: &str| query_param(url, "client_id").map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(param("/sync/debug?client_id=a%20b&x=1"), Some(Ok("a b".into())));
        assert_eq!(param("/sync/debug?client_id="), Some(Ok("".into())));
        assert_eq!(param("/sync/debug"), None);
        assert_eq!(param("/sync/debug?client_id=%zz%"), Some(Ok("%zz%".into())));
        assert_eq!(param("/sync/debug?client_id=a%00b"), Some(Ok("a\0b".into())), "NUL is refused by the request");
        assert_eq!(
            param("/sync/debug?client_id=%ff"),
            Some(Err("400 {\"error\":\"client_id query parameter is not UTF-8 text\"}".into()))
        );
    }

    #[test]
    fn transient_auth_failures_are_503_with_retry_after() {
        struct KeysMissing;
        impl Authenticator for KeysMissing {
            fn authenticate(&self, _: &dyn Fn(&str) -> Option<String>) -> Result<crate::types::UserId, AuthFailure> {
                Err(AuthFailure::unavailable(9, "no keys yet"))
            }
        }
        struct Api;
        impl SyncApi for Api {}
        let router = Router {
            api: Arc::new(Api),
            auth: Arc::new(KeysMissing),
            gate: VersionGate::new(""),
            admission: Arc::new(super::super::AdmitAll),
        };
        let mut read_body = || Ok(Vec::new());
        let mut req = Incoming { method: "GET", url: "/sync/tables", header: &|_| None, read_body: &mut read_body };
        let (_, reply) = router.handle(&mut req);
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers, vec![("Retry-After", "9".to_string())]);
        assert_eq!(reply.body, b"{\"error\":\"service temporarily unavailable\",\"retry_after\":9}\n");
    }

    #[test]
    fn paths_are_exact() {
        assert_eq!(Endpoint::from_path("/sync/pull"), Some(Endpoint::Pull));
        assert_eq!(Endpoint::from_path("/sync/pull/"), None);
        assert_eq!(Endpoint::from_path("/sync/Pull"), None);
        assert_eq!(Endpoint::from_path("/sync/"), None);
    }
}
