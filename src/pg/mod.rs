//! Our PostgreSQL client: connection strings, TLS, authentication, the wire codec and the
//! replication connection built on them.

pub mod auth;
pub mod conn;
pub mod tls;
pub mod url;
pub mod wire;
