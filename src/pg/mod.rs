//! Our PostgreSQL client: connection strings, TLS, authentication, the wire codec and the
//! replication connection built on them.

pub mod auth;
pub mod conn;
pub mod tls;
pub mod url;
pub mod wire;

/// The settings every session starts with, pooled and replication sessions alike: UTC
/// timestamps (contract C16), ISO dates, and the interval and bytea formats of the `data`
/// encoding (§6.6). Edge checksums rendered from WAL text rely on both kinds of session
/// rendering values alike (`capture::row_json`).
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c bytea_output=hex";
