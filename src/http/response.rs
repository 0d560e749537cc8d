//! Response heads: a [`Reply`] as the bytes that precede its body. No I/O.
//!
//! A body built in memory goes out with `Content-Length`; a body rendered as the client reads
//! it ([`super::BodySource`]) goes out chunked to HTTP/1.1 clients ([`encode_stream_head`],
//! [`push_chunk`]).
//! `Connection` is the edge's business, not the handler's: a `Connection` header in a reply is
//! dropped and the edge writes its own when the connection will close (or, for an HTTP/1.0
//! client that asked for it, stay open). A header whose name or value could break the head (a
//! CR, LF or other control character) is dropped rather than sent.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Reply;

/// What the `Connection` header of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: no header, the connection stays open.
    KeepAlive,
    /// `Connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAliveHttp10,
    /// `Connection: close`: this is the connection's last response.
    Close,
}

/// The reason phrase of a status (informational only; clients go by the number).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

fn safe(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The `Date` value for now, formatted at most once a second per thread.
pub fn date_now() -> String {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, crate::time::http_date(now));
        }
        c.1.clone()
    })
}

/// The status line and headers of `reply`, ending with the blank line. `Content-Length` is the
/// reply's body length even when the body is not sent (a `HEAD` request).
pub fn encode_head(reply: &Reply, persistence: Persistence, date: &str) -> Vec<u8> {
    head(reply, persistence, date, Some(reply.body.len()))
}

/// [`encode_head`] for a body sent in chunks: `Transfer-Encoding: chunked` instead of a length.
pub fn encode_stream_head(reply: &Reply, persistence: Persistence, date: &str) -> Vec<u8> {
    head(reply, persistence, date, None)
}

/// Appends `data` as one chunk (nothing for no data: an empty chunk would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// The last chunk, which ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn head(reply: &Reply, persistence: Persistence, date: &str, length: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + reply.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
    let line = format!("HTTP/1.1 {} {}\r\nDate: {date}\r\n", reply.status, reason(reply.status));
    out.extend_from_slice(line.as_bytes());
    if safe(reply.content_type) {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(reply.content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &reply.headers {
        let reserved = ["connection", "content-length", "transfer-encoding", "date", "content-type"];
        if reserved.iter().any(|r| name.eq_ignore_ascii_case(r)) || !safe_name(name) || !safe(value) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        None => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    match persistence {
        Persistence::KeepAlive => {}
        Persistence::KeepAliveHttp10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The interim response sent before reading a body the client holds back for it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_length_type_and_persistence() {
        let reply = Reply::error(429, "x").with_header("Retry-After", "1").with_header("Connection", "upgrade");
        let head = String::from_utf8(encode_head(&reply, Persistence::Close, "D")).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 429 Too Many Requests\r\nDate: D\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
             Content-Length: 14\r\nConnection: close\r\n\r\n"
        );
        let head = String::from_utf8(encode_head(&Reply::text(200, "ok"), Persistence::KeepAlive, "D")).unwrap();
        assert!(head.ends_with("Content-Length: 2\r\n\r\n"), "{head}");
        let head = String::from_utf8(encode_head(&Reply::text(200, ""), Persistence::KeepAliveHttp10, "D")).unwrap();
        assert!(head.ends_with("Connection: keep-alive\r\n\r\n"), "{head}");
    }

    #[test]
    fn streamed_bodies_are_chunked() {
        let head =
            String::from_utf8(encode_stream_head(&Reply::json(Vec::new()), Persistence::KeepAlive, "D")).unwrap();
        assert!(head.ends_with("Transfer-Encoding: chunked\r\n\r\n") && !head.contains("Content-Length"), "{head}");
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello, world");
        push_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"c\r\nhello, world\r\n0\r\n\r\n");
    }

    #[test]
    fn unsafe_headers_are_dropped() {
        let reply = Reply::text(200, "")
            .with_header("X-Evil", "a\r\nSet-Cookie: b")
            .with_header("Bad Name", "v")
            .with_header("Content-Length", "99")
            .with_header("X-Fine", "v\tw");
        let head = String::from_utf8(encode_head(&reply, Persistence::KeepAlive, "D")).unwrap();
        assert!(!head.contains("Evil") && !head.contains("Bad Name") && !head.contains("99"), "{head}");
        assert!(head.contains("X-Fine: v\tw\r\n"), "{head}");
        assert_eq!(reason(999), "Status");
        assert!(!date_now().is_empty());
    }
}
