//! Pieces the benchmark programs share: a synchrod child process, a keep-alive HTTP client,
//! polling, percentiles and `/metrics` gauges. Each bench includes this module with
//! `#[allow(dead_code)] mod common;` (not every bench uses every piece).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// A synchrod child that is killed when dropped (also when the benchmark panics).
pub struct Synchrod(pub Child);

impl Drop for Synchrod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 connection speaking as `X-User-ID` users.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects, or `None` while nothing listens.
    pub fn try_new(addr: SocketAddr) -> Option<Conn> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Conn { s, buf: Vec::with_capacity(64 * 1024) })
    }

    /// Connects (panics when nothing listens).
    pub fn new(addr: SocketAddr) -> Conn {
        Conn::try_new(addr).unwrap_or_else(|| panic!("connecting to {addr}"))
    }

    /// One request; returns status and body.
    pub fn call(&mut self, method: &str, path: &str, user: &str, body: &str) -> (u16, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: b\r\nX-User-ID: {user}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.write_all(req.as_bytes()).expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16384];
        loop {
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().expect("status");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).expect("read");
                    assert!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return (status, self.buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

/// The value at `p` (0..=1) of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// Polls `f` every 5 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A sample from an instance's `/metrics` (name with its labels), `None` while it is not answering.
pub fn gauge(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut c = Conn::try_new(addr)?;
    let (_, body) = c.call("GET", "/metrics", "", "");
    String::from_utf8_lossy(&body).lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
