//! Request heads (RFC 9112 §2-§6): an incremental scanner that finds where a head ends, and a
//! parser for a complete head. No I/O.
//!
//! The scanner looks at each byte once however the head is split across reads, and fails as
//! soon as the input cannot be a valid HTTP/1 head: a bare LF or CR, a request line that does not
//! start with a method (a TLS handshake, the HTTP/2 preface), more header lines than allowed, or
//! more bytes than allowed before the blank line. A hostile client never makes us wait for a
//! timeout to learn what the first bytes already said.
//!
//! The parser is strict where leniency lets two parties disagree about where a message ends
//! (request smuggling): `Content-Length` together with `Transfer-Encoding`, differing or
//! malformed lengths, codings other than a final `chunked`, whitespace before a header's colon,
//! obsolete line folding. Each is a [`HeadError`] with its status (400, 417, 431, 501, 505).

use std::fmt;

/// Size limits applied while a head arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line plus header lines (with their line ends and the blank line), in bytes.
    pub max_bytes: usize,
    /// Header lines.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits { max_bytes: 16 * 1024, max_headers: 100 }
    }
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: the connection closes after the response unless the client asks otherwise.
    Http10,
    /// `HTTP/1.1`: persistent unless the client asks otherwise.
    Http11,
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Exactly(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a head was refused. [`HeadError::status`] is the answer; the connection is closed after
/// it, because where the next request would start is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadError {
    /// More than `limit` bytes without the blank line that ends a head (431).
    TooLarge {
        /// The byte limit.
        limit: usize,
    },
    /// More than `limit` header lines (431).
    TooManyHeaders {
        /// The line limit.
        limit: usize,
    },
    /// A line feed not preceded by a carriage return, or a carriage return not followed by a
    /// line feed (400).
    BareLineEnd {
        /// Byte offset in the head.
        offset: usize,
    },
    /// The request line is not `method SP target SP version` (400).
    RequestLine(&'static str),
    /// The HTTP/2 connection preface (400): this server speaks HTTP/1.x only.
    Http2Preface,
    /// A well-formed version other than 1.0 and 1.1 (505).
    Version(String),
    /// A malformed header line (400).
    Header {
        /// 1 for the first header line.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The message framing is ambiguous or invalid (400).
    Framing(&'static str),
    /// A transfer coding other than `chunked` (501).
    UnsupportedCoding(String),
    /// An `Expect` other than `100-continue` (417).
    Expectation,
}

impl HeadError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. } => 431,
            HeadError::Version(_) => 505,
            HeadError::UnsupportedCoding(_) => 501,
            HeadError::Expectation => 417,
            _ => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge { limit } => write!(f, "request head larger than {limit} bytes"),
            HeadError::TooManyHeaders { limit } => write!(f, "more than {limit} header lines"),
            HeadError::BareLineEnd { offset } => {
                write!(f, "malformed request head: bare CR or LF at byte {offset} (lines end with CRLF)")
            }
            HeadError::RequestLine(why) => write!(f, "malformed request line: {why}"),
            HeadError::Http2Preface => f.write_str("HTTP/2 is not supported: speak HTTP/1.1"),
            HeadError::Version(v) => write!(f, "HTTP version {v} is not supported: speak HTTP/1.1"),
            HeadError::Header { line, why } => write!(f, "malformed header line {line}: {why}"),
            HeadError::Framing(why) => write!(f, "invalid message framing: {why}"),
            HeadError::UnsupportedCoding(c) => write!(f, "transfer coding {c:?} is not supported (only chunked)"),
            HeadError::Expectation => f.write_str("only Expect: 100-continue is supported"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Finds the end of a head across any number of reads, looking at each byte once.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Bytes already looked at.
    seen: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// Whether the request line has ended (empty lines before it are skipped).
    request_line_done: bool,
    /// Whether the method of the request line has ended (its space was seen).
    method_done: bool,
    /// Header lines so far.
    headers: usize,
}

/// Token characters (RFC 9110 §5.6.2): methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HeadScanner {
    /// A scanner at the start of a head.
    pub fn new() -> HeadScanner {
        HeadScanner::default()
    }

    /// Looks at the bytes of `buf` it has not seen yet (`buf` holds the head from its first byte
    /// and grows between calls). Returns the head's length, blank line included, once it is
    /// complete; `None` while more bytes are needed.
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HeadError> {
        let end = buf.len().min(limits.max_bytes);
        let mut i = self.seen;
        while i < end {
            let b = buf[i];
            if i > 0 && buf[i - 1] == b'\r' && b != b'\n' {
                return Err(HeadError::BareLineEnd { offset: i - 1 });
            }
            if !self.method_done {
                // Judge the request line by its first bytes: a TLS handshake or binary noise is
                // refused at once instead of after the head limit or the head deadline.
                let pos = i - self.line_start;
                if b == b' ' && pos > 0 {
                    self.method_done = true;
                } else if !(is_tchar(b) || (pos == 0 && b == b'\r') || (pos == 1 && b == b'\n')) {
                    if b == b'\r' || b == b'\n' {
                        return Err(HeadError::RequestLine("no request target"));
                    }
                    return Err(HeadError::RequestLine("the method is not a token"));
                }
            }
            if b == b'\n' {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(HeadError::BareLineEnd { offset: i });
                }
                let line = &buf[self.line_start..i - 1];
                self.line_start = i + 1;
                if line.is_empty() {
                    if self.request_line_done {
                        self.seen = i + 1;
                        return Ok(Some(i + 1));
                    }
                    // An empty line before the request line is ignored (RFC 9112 §2.2); the
                    // method check starts again on the next line.
                } else if !self.request_line_done {
                    if line.starts_with(b"PRI * HTTP/2") {
                        return Err(HeadError::Http2Preface);
                    }
                    self.request_line_done = true;
                } else {
                    self.headers += 1;
                    if self.headers > limits.max_headers {
                        return Err(HeadError::TooManyHeaders { limit: limits.max_headers });
                    }
                }
            }
            i += 1;
        }
        self.seen = i;
        if buf.len() >= limits.max_bytes {
            return Err(HeadError::TooLarge { limit: limits.max_bytes });
        }
        Ok(None)
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent (a token; case is kept).
    pub method: String,
    /// The request target as sent (path and query for origin-form).
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// Header fields in order, names lower-cased, values without surrounding whitespace.
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub body: BodyLength,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expects_continue: bool,
}

impl RequestHead {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a comma-separated header list into trimmed, non-empty elements.
fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|s| s.trim_matches([' ', '\t'])).filter(|s| !s.is_empty())
}

/// Parses a complete head (as [`HeadScanner::scan`] delimited it: optional empty lines, the
/// request line, header lines, the blank line).
pub fn parse_head(bytes: &[u8], limits: &HeadLimits) -> Result<RequestHead, HeadError> {
    if bytes.len() > limits.max_bytes {
        return Err(HeadError::TooLarge { limit: limits.max_bytes });
    }
    let mut rest = bytes;
    while let Some(after) = rest.strip_prefix(b"\r\n") {
        rest = after;
    }
    let mut lines = LineIter { rest, offset: bytes.len() - rest.len() };
    let request_line = lines.next_line()?.ok_or(HeadError::RequestLine("missing"))?;
    let (method, target, version) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    loop {
        let line = lines.next_line()?.ok_or(HeadError::Framing("the head does not end with a blank line"))?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= limits.max_headers {
            return Err(HeadError::TooManyHeaders { limit: limits.max_headers });
        }
        headers.push(parse_header_line(line, headers.len() + 1)?);
    }
    if !lines.rest.is_empty() {
        return Err(HeadError::Framing("bytes after the blank line that ends the head"));
    }
    let mut head = RequestHead {
        method,
        target,
        version,
        headers,
        body: BodyLength::Empty,
        keep_alive: version == Version::Http11,
        expects_continue: false,
    };
    interpret(&mut head)?;
    Ok(head)
}

struct LineIter<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> LineIter<'a> {
    /// The next CRLF-terminated line without its CRLF; `None` at the end.
    fn next_line(&mut self) -> Result<Option<&'a [u8]>, HeadError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let Some(lf) = self.rest.iter().position(|&b| b == b'\n') else {
            return Err(HeadError::Framing("the head does not end with a blank line"));
        };
        if lf == 0 || self.rest[lf - 1] != b'\r' {
            return Err(HeadError::BareLineEnd { offset: self.offset + lf });
        }
        let line = &self.rest[..lf - 1];
        if let Some(cr) = line.iter().position(|&b| b == b'\r') {
            return Err(HeadError::BareLineEnd { offset: self.offset + cr });
        }
        self.rest = &self.rest[lf + 1..];
        self.offset += lf + 1;
        Ok(Some(line))
    }
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HeadError> {
    if line.starts_with(b"PRI * HTTP/2") {
        return Err(HeadError::Http2Preface);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine("expected method, target and version separated by single spaces"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::RequestLine("the method is not a token"));
    }
    if target.is_empty() {
        return Err(HeadError::RequestLine("empty request target"));
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::RequestLine("control character in the request target"));
    }
    let target = std::str::from_utf8(target).map_err(|_| HeadError::RequestLine("the request target is not UTF-8"))?;
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        v if v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit() =>
        {
            return Err(HeadError::Version(String::from_utf8_lossy(&v[5..]).into_owned()));
        }
        _ => return Err(HeadError::RequestLine("unknown protocol version")),
    };
    // Methods are ASCII tokens, so this cannot fail; keep the error path anyway.
    let method = std::str::from_utf8(method).map_err(|_| HeadError::RequestLine("the method is not a token"))?;
    Ok((method.to_string(), target.to_string(), version))
}

fn parse_header_line(line: &[u8], number: usize) -> Result<(String, String), HeadError> {
    let err = |why| HeadError::Header { line: number, why };
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(err("obsolete line folding"));
    }
    let colon = line.iter().position(|&b| b == b':').ok_or_else(|| err("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Err(err("empty field name"));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        // Includes whitespace before the colon, which RFC 9112 §5.1 requires us to refuse.
        return Err(err("the field name is not a token"));
    }
    let start = value.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(value.len());
    let end = value.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |p| p + 1);
    let value = &value[start..end];
    if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(err("control character in the field value"));
    }
    let value = std::str::from_utf8(value).map_err(|_| err("the field value is not UTF-8"))?;
    let mut name = String::from_utf8_lossy(name).into_owned();
    name.make_ascii_lowercase();
    Ok((name, value.to_string()))
}

/// Applies the framing and connection rules (RFC 9112 §6, §9.3) to a parsed head.
fn interpret(head: &mut RequestHead) -> Result<(), HeadError> {
    let mut length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive = false;
    for (name, value) in &head.headers {
        match name.as_str() {
            "content-length" => {
                let mut any = false;
                for element in list_elements(value) {
                    any = true;
                    if element.len() > 19 || !element.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(HeadError::Framing("Content-Length is not a decimal number"));
                    }
                    let n: u64 = element.parse().map_err(|_| HeadError::Framing("Content-Length out of range"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(HeadError::Framing("differing Content-Length values"));
                    }
                    length = Some(n);
                }
                if !any {
                    return Err(HeadError::Framing("empty Content-Length"));
                }
            }
            "transfer-encoding" => {
                let before = codings.len();
                codings.extend(list_elements(value).map(str::to_ascii_lowercase));
                if codings.len() == before {
                    return Err(HeadError::Framing("empty Transfer-Encoding"));
                }
            }
            "host" => hosts += 1,
            "connection" => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            "expect" => {
                if value.eq_ignore_ascii_case("100-continue") {
                    head.expects_continue = true;
                } else {
                    return Err(HeadError::Expectation);
                }
            }
            _ => {}
        }
    }
    if head.version == Version::Http11 && hosts != 1 {
        return Err(HeadError::Framing(if hosts == 0 { "missing Host header" } else { "more than one Host header" }));
    }
    head.body = match (length, codings.is_empty()) {
        (Some(_), false) => return Err(HeadError::Framing("both Content-Length and Transfer-Encoding")),
        (Some(0), true) | (None, true) => BodyLength::Empty,
        (Some(n), true) => BodyLength::Exactly(n),
        (None, false) => {
            if head.version == Version::Http10 {
                return Err(HeadError::Framing("Transfer-Encoding in an HTTP/1.0 request"));
            }
            match codings.last().map(String::as_str) {
                Some("chunked") if codings.len() == 1 => BodyLength::Chunked,
                Some("chunked") => {
                    let other = codings.iter().find(|c| *c != "chunked").cloned().unwrap_or_default();
                    return Err(HeadError::UnsupportedCoding(other));
                }
                _ => return Err(HeadError::Framing("chunked is not the final transfer coding")),
            }
        }
    };
    head.keep_alive = match head.version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits { max_bytes: 256, max_headers: 4 }
    }

    /// Scans `input` split at every position and in one piece; all must agree.
    fn scan_all(input: &[u8]) -> Result<Option<usize>, HeadError> {
        let whole = HeadScanner::new().scan(input, &limits());
        for cut in 0..=input.len() {
            let mut s = HeadScanner::new();
            let first = s.scan(&input[..cut], &limits());
            let split = match first {
                Ok(Some(n)) => Ok(Some(n)),
                Err(e) => Err(e),
                Ok(None) => s.scan(input, &limits()),
            };
            assert_eq!(split, whole, "split at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        whole
    }

    fn parse(input: &str) -> Result<RequestHead, HeadError> {
        let len = scan_all(input.as_bytes())?.expect("complete head");
        parse_head(&input.as_bytes()[..len], &limits())
    }

    #[test]
    fn a_simple_head() {
        let h = parse("GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v v \t\r\n\r\n").unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str(), h.version), ("GET", "/healthz?x=1", Version::Http11));
        assert_eq!(h.headers, vec![("host".into(), "a".into()), ("x-thing".into(), "v v".into())]);
        assert_eq!((h.body, h.keep_alive, h.expects_continue), (BodyLength::Empty, true, false));
        assert_eq!(h.header("x-thing"), Some("v v"));
    }

    #[test]
    fn the_scanner_stops_at_the_blank_line() {
        let input = b"\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(scan_all(input), Ok(Some(input.len() - 2)));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(scan_all(b""), Ok(None));
    }

    #[test]
    fn framing() {
        let body = |extra: &str| parse(&format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n")).map(|h| h.body);
        assert_eq!(body("Content-Length: 10\r\n"), Ok(BodyLength::Exactly(10)));
        assert_eq!(body("Content-Length: 0\r\n"), Ok(BodyLength::Empty));
        assert_eq!(body("Content-Length: 7, 7\r\nContent-Length: 7\r\n"), Ok(BodyLength::Exactly(7)));
        assert_eq!(body("Transfer-Encoding: Chunked\r\n"), Ok(BodyLength::Chunked));
        assert_eq!(body("Content-Length: 1000000000000000\r\n"), Ok(BodyLength::Exactly(1_000_000_000_000_000)));
        for (bad, status) in [
            ("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n", 400),
            ("Content-Length: -1\r\n", 400),
            ("Content-Length: +1\r\n", 400),
            ("Content-Length: 1 2\r\n", 400),
            ("Content-Length: 0x10\r\n", 400),
            ("Content-Length: 99999999999999999999\r\n", 400),
            ("Content-Length: 18446744073709551616\r\n", 400),
            ("Content-Length: 1\r\nContent-Length: 2\r\n", 400),
            ("Content-Length: \r\n", 400),
            ("Transfer-Encoding: gzip\r\n", 400),
            ("Transfer-Encoding: gzip, chunked\r\n", 501),
            ("Transfer-Encoding: chunked, chunked\r\n", 501),
            ("Transfer-Encoding: \r\n", 400),
            ("Expect: something\r\n", 417),
        ] {
            assert_eq!(body(bad).map_err(|e| e.status()), Err(status), "{bad:?}");
        }
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(h.expects_continue);
    }

    #[test]
    fn connection_persistence() {
        let alive = |head: &str| parse(head).map(|h| h.keep_alive).unwrap();
        assert!(alive("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!alive("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n"));
        assert!(!alive("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\n\r\n"));
        assert!(!alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(alive("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert_eq!(
            parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").map_err(|e| e.status()),
            Err(400),
            "no chunked in HTTP/1.0"
        );
    }

    #[test]
    fn malformed_heads_fail_as_soon_as_the_bytes_show_it() {
        for (input, status) in [
            (&b"GET / HTTP/1.1\nHost: a\n\n"[..], 400),
            (b"GET / HTTP/1.1\r\nHost: a\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
            (b"GET\r\n", 400),
            (b" GET / HTTP/1.1\r\n", 400),
            (b"G(T / HTTP/1.1\r\n", 400),
        ] {
            let e = scan_all(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.status(), status, "{:?}: {e}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn limits_are_enforced_while_scanning() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert_eq!(scan_all(long.as_bytes()), Err(HeadError::TooLarge { limit: 256 }));
        // Exactly at the limit is fine.
        let fits = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(256 - 27));
        assert_eq!(fits.len(), 256);
        assert_eq!(scan_all(fits.as_bytes()), Ok(Some(256)));
        let many = format!("GET / HTTP/1.1\r\n{}", "A: b\r\n".repeat(5));
        assert_eq!(scan_all(many.as_bytes()), Err(HeadError::TooManyHeaders { limit: 4 }));
        assert_eq!(HeadError::TooManyHeaders { limit: 4 }.status(), 431);
        assert_eq!(HeadError::TooLarge { limit: 4 }.status(), 431);
        let huge = "x".repeat(1000);
        assert!(parse_head(huge.as_bytes(), &limits()).is_err());
    }

    #[test]
    fn request_lines_and_header_lines() {
        for (input, status) in [
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        ] {
            assert_eq!(parse(input).map_err(|e| e.status()), Err(status), "{input:?}");
        }
        let bad_utf8 = b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n";
        let len = scan_all(bad_utf8).unwrap().unwrap();
        assert_eq!(
            parse_head(&bad_utf8[..len], &limits()),
            Err(HeadError::RequestLine("the request target is not UTF-8"))
        );
        let value = b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\r\n\r\n";
        assert!(matches!(parse_head(value, &limits()), Err(HeadError::Header { line: 2, .. })));
        // UTF-8 in values is kept.
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\nX: é\r\n\r\n").unwrap().header("x"), Some("é"));
    }

    #[test]
    fn every_error_has_a_message() {
        let errors = [
            HeadError::TooLarge { limit: 1 },
            HeadError::TooManyHeaders { limit: 1 },
            HeadError::BareLineEnd { offset: 3 },
            HeadError::RequestLine("x"),
            HeadError::Http2Preface,
            HeadError::Version("2.0".into()),
            HeadError::Header { line: 1, why: "x" },
            HeadError::Framing("x"),
            HeadError::UnsupportedCoding("gzip".into()),
            HeadError::Expectation,
        ];
        for e in errors {
            assert!(!e.to_string().is_empty());
            assert!([400, 417, 431, 501, 505].contains(&e.status()));
        }
    }
}
