//! Frontend (client -> server) encoders writing into a caller's buffer.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::types::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Now as microseconds since 2000-01-01 (the replication protocol's clock).
pub fn pg_clock(now: SystemTime) -> i64 {
    let unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix - PG_EPOCH_MICROS
}

fn with_length(out: &mut Vec<u8>, tag: Option<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    if let Some(t) = tag {
        out.push(t);
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// StartupMessage, protocol 3.0, with `params` (`user`, `database`, `replication`, ...).
pub fn startup(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    with_length(out, None, |b| {
        b.extend_from_slice(&196_608i32.to_be_bytes());
        for (k, v) in params {
            cstr(b, k);
            cstr(b, v);
        }
        b.push(0);
    });
}

/// PasswordMessage (cleartext or MD5 hash).
/// SSLRequest: asks the server to switch this connection to TLS (answered by one byte).
pub fn ssl_request(out: &mut Vec<u8>) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&80_877_103i32.to_be_bytes());
}

/// PasswordMessage (cleartext or MD5).
pub fn password(out: &mut Vec<u8>, password: &str) {
    with_length(out, Some(b'p'), |b| cstr(b, password));
}

/// SASLInitialResponse.
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    with_length(out, Some(b'p'), |b| {
        cstr(b, mechanism);
        b.extend_from_slice(&(data.len() as i32).to_be_bytes());
        b.extend_from_slice(data);
    });
}

/// SASLResponse.
pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    with_length(out, Some(b'p'), |b| b.extend_from_slice(data));
}

/// Simple Query.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    with_length(out, Some(b'Q'), |b| cstr(b, sql));
}

/// CopyData.
pub fn copy_data(out: &mut Vec<u8>, data: &[u8]) {
    with_length(out, Some(b'd'), |b| b.extend_from_slice(data));
}

/// CopyDone.
pub fn copy_done(out: &mut Vec<u8>) {
    with_length(out, Some(b'c'), |_| {});
}

/// Terminate.
pub fn terminate(out: &mut Vec<u8>) {
    with_length(out, Some(b'X'), |_| {});
}

/// Standby status update (`r`) inside CopyData: what we wrote, flushed and applied.
pub fn standby_status(out: &mut Vec<u8>, write: Lsn, flush: Lsn, apply: Lsn, clock: i64, reply: bool) {
    let mut payload = Vec::with_capacity(34);
    payload.push(b'r');
    payload.extend_from_slice(&write.0.to_be_bytes());
    payload.extend_from_slice(&flush.0.to_be_bytes());
    payload.extend_from_slice(&apply.0.to_be_bytes());
    payload.extend_from_slice(&clock.to_be_bytes());
    payload.push(u8::from(reply));
    copy_data(out, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wire::backend::next_frame;

    #[test]
    fn encodes_with_lengths() {
        let mut out = Vec::new();
        query(&mut out, "IDENTIFY_SYSTEM");
        assert_eq!(out[0], b'Q');
        assert_eq!(i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize, out.len() - 1);
        assert!(out.ends_with(b"IDENTIFY_SYSTEM\0"));
        let mut s = Vec::new();
        startup(&mut s, &[("user", "u"), ("replication", "database")]);
        assert_eq!(i32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize, s.len());
        assert_eq!(&s[4..8], &196_608i32.to_be_bytes());
        assert!(s.ends_with(b"database\0\0"));
        let mut st = Vec::new();
        standby_status(&mut st, Lsn(1), Lsn(2), Lsn(3), 4, true);
        let (f, used) = next_frame(&st, 1024).unwrap().unwrap();
        assert_eq!((f.tag, used, f.body.len()), (b'd', st.len(), 34));
        assert_eq!(f.body[0], b'r');
        assert_eq!(f.body[33], 1);
        assert_eq!(pg_clock(UNIX_EPOCH + std::time::Duration::from_secs(946_684_800)), 0);
    }
}
