//! A small blocking HTTP/1.1 GET client: enough to fetch a JWKS document, nothing more.
//!
//! One request per connection (`Connection: close`), no redirects, no cookies, no proxies, no
//! compression. The response head is capped at [`MAX_HEAD_BYTES`] and the body at the caller's
//! limit whatever the framing says (`Content-Length`, `chunked`, or read to end of stream), and
//! every socket operation has a timeout, so a misbehaving endpoint costs bounded time and memory.
//!
//! [`read_response`] works on any [`Read`] stream and does no I/O of its own, so the framing is
//! tested on byte slices. `https://` needs the `tls` feature (rustls with the ring provider).

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Status line plus headers larger than this are refused.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// `http://` or `https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP (local setups).
    Http,
    /// TLS (feature `tls`).
    Https,
}

/// A parsed `http(s)://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The scheme.
    pub scheme: Scheme,
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port (80/443 when not given).
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

impl Url {
    /// Parses an absolute `http://` or `https://` URL. User info (`user@`) and fragments are
    /// refused: a JWKS URL needs neither, and user info would end up in logs.
    pub fn parse(raw: &str) -> Result<Url, GetError> {
        let bad = |why: &'static str| GetError::new(GetErrorKind::InvalidUrl(why));
        let (scheme, rest) = if let Some(rest) = raw.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = raw.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(bad("expected http:// or https://"));
        };
        if raw.contains('#') || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("fragments, spaces and control characters are not allowed"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(bad("user info (user@host) is not supported"));
        }
        let default_port = if scheme == Scheme::Http { 80 } else { 443 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in host"))?;
            match after {
                "" => (host, default_port),
                p => (host, parse_port(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, parse_port(p)?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Url { scheme, host: host.to_string(), port, target })
    }

    /// The URL without its query, for logs and error messages: a query may carry an API key.
    pub fn redacted(&self) -> String {
        let scheme = if self.scheme == Scheme::Http { "http" } else { "https" };
        let path = self.target.split('?').next().unwrap_or("/");
        let query = if self.target.contains('?') { "?…" } else { "" };
        format!("{scheme}://{}{path}{query}", self.host_header())
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default_port = if self.scheme == Scheme::Http { 80 } else { 443 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn parse_port(raw: &str) -> Result<u16, GetError> {
    match raw.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(GetError::new(GetErrorKind::InvalidUrl("port must be 1-65535"))),
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.scheme == Scheme::Http { "http" } else { "https" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.target)
    }
}

/// Limits of one request.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Per address tried.
    pub connect_timeout: Duration,
    /// Per read and per write.
    pub io_timeout: Duration,
    /// For the whole exchange after connecting, so an endpoint trickling bytes just inside
    /// `io_timeout` cannot hold a fetch open indefinitely (checked before every read and write).
    pub total_timeout: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
        }
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The de-chunked body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a GET failed.
#[derive(Debug)]
pub struct GetError(Box<GetErrorKind>);

/// The kinds of [`GetError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum GetErrorKind {
    /// The URL cannot be used.
    InvalidUrl(&'static str),
    /// `https://` in a build without the `tls` feature.
    TlsNotBuilt,
    /// The TLS client configuration could not be built (e.g. unreadable CA file).
    TlsConfig(String),
    /// Name resolution failed or gave no address.
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: Option<io::Error>,
    },
    /// Every address refused or timed out.
    Connect {
        /// `host:port`.
        addr: String,
        /// The last error.
        source: io::Error,
    },
    /// Reading or writing failed (including timeouts and TLS errors).
    Io(io::Error),
    /// The head or body broke HTTP/1.1 framing.
    Protocol(&'static str),
    /// The head or body exceeded its cap.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The cap in bytes.
        limit: usize,
    },
}

impl GetError {
    fn new(kind: GetErrorKind) -> GetError {
        GetError(Box::new(kind))
    }

    /// What went wrong.
    pub fn kind(&self) -> &GetErrorKind {
        &self.0
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            GetErrorKind::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            GetErrorKind::TlsNotBuilt => f.write_str("https:// needs a build with the `tls` feature"),
            GetErrorKind::TlsConfig(why) => write!(f, "TLS client configuration: {why}"),
            GetErrorKind::Resolve { host, source: Some(e) } => write!(f, "cannot resolve {host}: {e}"),
            GetErrorKind::Resolve { host, source: None } => write!(f, "{host} resolves to no address"),
            GetErrorKind::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            GetErrorKind::Io(e) => write!(f, "HTTP I/O: {e}"),
            GetErrorKind::Protocol(why) => write!(f, "malformed HTTP response: {why}"),
            GetErrorKind::TooLarge { what, limit } => write!(f, "HTTP {what} larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for GetError {}

impl From<io::Error> for GetError {
    fn from(e: io::Error) -> GetError {
        GetError::new(GetErrorKind::Io(e))
    }
}

/// How to reach `https://` URLs: the rustls client configuration, built once by the caller.
#[derive(Clone, Default)]
pub struct TlsClient {
    #[cfg(feature = "tls")]
    config: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// No TLS: `https://` URLs fail with [`GetErrorKind::TlsNotBuilt`] or, in a `tls` build,
    /// [`GetErrorKind::TlsConfig`].
    pub fn none() -> TlsClient {
        TlsClient::default()
    }

    /// TLS with the system roots (see [`https_config`]).
    #[cfg(feature = "tls")]
    pub fn system_roots() -> Result<TlsClient, GetError> {
        Ok(TlsClient { config: Some(https_config()?) })
    }

    /// TLS with a given configuration.
    #[cfg(feature = "tls")]
    pub fn with_config(config: std::sync::Arc<rustls::ClientConfig>) -> TlsClient {
        TlsClient { config: Some(config) }
    }
}

/// The rustls client configuration for `https://` fetches: full verification against the
/// host's CA bundle (`SSL_CERT_FILE`, else the distribution's), as [`crate::pg::tls`] builds it.
#[cfg(feature = "tls")]
pub fn https_config() -> Result<std::sync::Arc<rustls::ClientConfig>, GetError> {
    crate::pg::tls::https_client_config().map_err(|e| GetError::new(GetErrorKind::TlsConfig(e.to_string())))
}

/// [`https_config`] trusting only the certificates of a given PEM file.
#[cfg(feature = "tls")]
pub fn https_config_with_roots(path: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>, GetError> {
    let settings = crate::pg::tls::TlsSettings {
        mode: crate::pg::tls::SslMode::VerifyFull,
        root: Some(crate::pg::tls::RootSource::File(path.to_path_buf())),
    };
    crate::pg::tls::client_config(&settings).map_err(|e| GetError::new(GetErrorKind::TlsConfig(e.to_string())))
}

/// Connects to the first address of `url` that answers within the connect timeout.
fn connect(url: &Url, options: &GetOptions) -> Result<TcpStream, GetError> {
    let addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| GetError::new(GetErrorKind::Resolve { host: url.host.clone(), source: Some(e) }))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, options.connect_timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(options.io_timeout))?;
                stream.set_write_timeout(Some(options.io_timeout))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(GetError::new(match last {
        Some(source) => GetErrorKind::Connect { addr: format!("{}:{}", url.host, url.port), source },
        None => GetErrorKind::Resolve { host: url.host.clone(), source: None },
    }))
}

/// Fetches `url` with one GET and returns the response, whatever its status.
pub fn get(url: &Url, tls: &TlsClient, options: &GetOptions) -> Result<Response, GetError> {
    match url.scheme {
        Scheme::Http => exchange(connect(url, options)?, url, options),
        Scheme::Https => get_tls(url, tls, options),
    }
}

#[cfg(feature = "tls")]
fn get_tls(url: &Url, tls: &TlsClient, options: &GetOptions) -> Result<Response, GetError> {
    let config = tls.config.clone().ok_or_else(|| GetError::new(GetErrorKind::TlsConfig("not configured".into())))?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|_| GetError::new(GetErrorKind::InvalidUrl("host is not a valid TLS server name")))?;
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| GetError::new(GetErrorKind::TlsConfig(e.to_string())))?;
    exchange(rustls::StreamOwned::new(conn, connect(url, options)?), url, options)
}

#[cfg(not(feature = "tls"))]
fn get_tls(_url: &Url, _tls: &TlsClient, _options: &GetOptions) -> Result<Response, GetError> {
    Err(GetError::new(GetErrorKind::TlsNotBuilt))
}

/// A stream that fails with `TimedOut` once its deadline has passed.
struct WithDeadline<S> {
    inner: S,
    deadline: Instant,
}

impl<S> WithDeadline<S> {
    fn check(&self) -> io::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the response took longer than the total timeout"));
        }
        Ok(())
    }
}

impl<S: Read> Read for WithDeadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<S: Write> Write for WithDeadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the request and reads the response on an open stream.
fn exchange<S: Read + Write>(stream: S, url: &Url, options: &GetOptions) -> Result<Response, GetError> {
    let mut stream = WithDeadline { inner: stream, deadline: Instant::now() + options.total_timeout };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: synchro/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.target,
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    read_response(stream, options.max_body_bytes)
}

/// Reads one response (head, then the body framed by `Transfer-Encoding: chunked`,
/// `Content-Length`, or the end of the stream) with the body capped at `max_body`.
pub fn read_response<R: Read>(stream: R, max_body: usize) -> Result<Response, GetError> {
    let mut reader = io::BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let too_large = || GetError::new(GetErrorKind::TooLarge { what: "body", limit: max_body });
    let body = if find("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        read_chunked(&mut reader, max_body)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().map_err(|_| GetError::new(GetErrorKind::Protocol("bad Content-Length")))?;
        if len > max_body {
            return Err(too_large());
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        (&mut reader).take(max_body as u64 + 1).read_to_end(&mut body)?;
        if body.len() > max_body {
            return Err(too_large());
        }
        body
    };
    Ok(Response { status, headers, body })
}

/// Reads one CRLF- (or LF-) terminated line, counting it against `budget`.
fn read_line<R: io::BufRead>(reader: &mut R, budget: &mut usize, what: &'static str) -> Result<String, GetError> {
    let mut line = Vec::new();
    let limit = *budget;
    (&mut *reader).take(limit as u64 + 1).read_until(b'\n', &mut line)?;
    if line.len() > limit {
        return Err(GetError::new(GetErrorKind::TooLarge { what, limit: MAX_HEAD_BYTES }));
    }
    if !line.ends_with(b"\n") {
        return Err(GetError::new(GetErrorKind::Protocol("connection closed mid-line")));
    }
    *budget -= line.len();
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| GetError::new(GetErrorKind::Protocol("head is not UTF-8")))
}

type Head = (u16, Vec<(String, String)>);

fn read_head<R: io::BufRead>(reader: &mut R) -> Result<Head, GetError> {
    let mut budget = MAX_HEAD_BYTES;
    let status_line = read_line(reader, &mut budget, "head")?;
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(GetError::new(GetErrorKind::Protocol("bad status line")));
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(GetError::new(GetErrorKind::Protocol("bad status line")));
    }
    let status = code.parse().map_err(|_| GetError::new(GetErrorKind::Protocol("bad status code")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget, "head")?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| GetError::new(GetErrorKind::Protocol("header without a colon")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn read_chunked<R: io::BufRead>(reader: &mut R, max_body: usize) -> Result<Vec<u8>, GetError> {
    let mut body = Vec::new();
    // Chunk-size lines and trailers are small; they share the head's budget.
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let line = read_line(reader, &mut budget, "chunk framing")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| GetError::new(GetErrorKind::Protocol("bad chunk size")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader, &mut budget, "chunk framing")?.is_empty() {}
            return Ok(body);
        }
        if size > max_body - body.len() {
            return Err(GetError::new(GetErrorKind::TooLarge { what: "body", limit: max_body }));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader, &mut budget, "chunk framing")?.is_empty() {
            return Err(GetError::new(GetErrorKind::Protocol("chunk not followed by CRLF")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response, GetError> {
        read_response(raw, 64)
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://idp.example.com/.well-known/jwks.json").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Https, "idp.example.com", 443, "/.well-known/jwks.json")
        );
        let u = Url::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!((u.port, u.target.as_str(), u.host_header()), (8081, "/", "127.0.0.1:8081".to_string()));
        let u = Url::parse("http://[::1]:9/k?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("::1", 9, "/k?x=1"));
        assert_eq!(u.to_string(), "http://[::1]:9/k?x=1");
        assert_eq!(u.redacted(), "http://[::1]:9/k?…");
        assert_eq!(Url::parse("https://h/jwks").unwrap().redacted(), "https://h/jwks");
        assert_eq!(Url::parse("http://h?x").unwrap().target, "/?x");
        for bad in [
            "ftp://h/",
            "http://",
            "http://u:p@h/",
            "http://h:0/",
            "http://h:x/",
            "http://h/#f",
            "http://h/ a",
            "http://[::1/",
        ] {
            assert!(matches!(Url::parse(bad).map_err(|e| *e.0), Err(GetErrorKind::InvalidUrl(_))), "{bad}");
        }
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("cache-control")), (200, &b"hello"[..], Some("max-age=60")));
        let r =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse(b"HTTP/1.0 404 Not Found\nServer: x\n\nall of it").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"all of it"[..]));
        let r = parse(b"HTTP/1.1 204\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn every_framing_error_is_typed() {
        let big = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 65]].concat();
        let long_head = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD_BYTES], b"\r\n\r\n"].concat();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "connection closed mid-line"),
            (b"SSH-2.0 hello\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status code"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header without a colon"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", "body larger than 64"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "I/O"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n", "body larger than 64"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "chunk not followed by CRLF",
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", "connection closed mid-line"),
            (&big, "body larger than 64"),
            (&long_head, "head larger than"),
            (b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n", "not UTF-8"),
        ];
        for (raw, want) in cases {
            let err = parse(raw).expect_err(want).to_string();
            assert!(err.contains(want), "{:?}: {err}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn unreachable_and_unsupported_endpoints_fail_fast() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/jwks")).unwrap();
        let err = get(&url, &TlsClient::none(), &GetOptions::default()).unwrap_err();
        assert!(matches!(err.kind(), GetErrorKind::Connect { .. }), "{err}");
        let url = Url::parse("https://127.0.0.1:1/jwks").unwrap();
        let err = get(&url, &TlsClient::none(), &GetOptions::default()).unwrap_err();
        assert!(matches!(err.kind(), GetErrorKind::TlsNotBuilt | GetErrorKind::TlsConfig(_)), "{err}");
    }

    #[test]
    fn a_request_over_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                req.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
            String::from_utf8(req).unwrap()
        });
        let url = Url::parse(&format!("http://{addr}/keys?v=1")).unwrap();
        let r = get(&url, &TlsClient::none(), &GetOptions::default()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let req = server.join().unwrap();
        assert!(req.starts_with(&format!("GET /keys?v=1 HTTP/1.1\r\nHost: {addr}\r\n")), "{req}");
        assert!(req.contains("Connection: close\r\n"), "{req}");
    }

    #[test]
    fn a_trickling_endpoint_hits_the_total_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // One header byte at a time, each well inside the per-read timeout, until the client
            // gives up and the write fails.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            for _ in 0..200 {
                if s.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let url = Url::parse(&format!("http://{addr}/")).unwrap();
        let options = GetOptions { total_timeout: Duration::from_millis(300), ..GetOptions::default() };
        let err = get(&url, &TlsClient::none(), &options).unwrap_err();
        assert!(matches!(err.kind(), GetErrorKind::Io(e) if e.kind() == io::ErrorKind::TimedOut), "{err}");
        drop(err);
        server.join().unwrap();
    }

    #[cfg(feature = "tls")]
    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    /// A one-connection HTTPS server with the test-only localhost certificate.
    #[cfg(feature = "tls")]
    fn tls_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("tls-test-localhost.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("tls-test-localhost.key.pem")).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return, // the client refused the handshake
                }
            }
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (addr, handle)
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_with_a_trusted_ca() {
        let tls = TlsClient::with_config(https_config_with_roots(&fixture("tls-test-ca.pem")).unwrap());
        for host in ["localhost", "127.0.0.1"] {
            let (addr, server) = tls_server();
            let url = Url::parse(&format!("https://{host}:{}/jwks", addr.port())).unwrap();
            let r = get(&url, &tls, &GetOptions::default()).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!((r.status, r.body.as_slice()), (200, &br#"{"keys":[]}"#[..]), "{host}");
            server.join().unwrap();
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_with_an_untrusted_certificate_fails() {
        let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
        if !system.exists() {
            return; // nothing else to trust that is certain not to include our test CA
        }
        let tls = TlsClient::with_config(https_config_with_roots(system).unwrap());
        let (addr, server) = tls_server();
        let url = Url::parse(&format!("https://localhost:{}/jwks", addr.port())).unwrap();
        let err = get(&url, &tls, &GetOptions::default()).unwrap_err();
        assert!(matches!(err.kind(), GetErrorKind::Io(_)), "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
        server.join().unwrap();
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_roots_must_exist_and_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("synchro-http-get-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = https_config_with_roots(&empty).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("no usable PEM certificate"), "{err}");
        let err = https_config_with_roots(&dir.join("missing.pem")).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
        if system.exists() {
            assert!(https_config_with_roots(system).is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
