//! synchro: an offline-first sync server for PostgreSQL.
#![forbid(unsafe_code)]

pub mod types;
