//! synchro: an offline-first sync server for PostgreSQL.
#![forbid(unsafe_code)]

pub mod buckets;
pub mod change;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod dev;
pub mod engine;
pub mod fuzzing;
pub mod http;
pub mod json_text;
pub mod jwt;
pub mod logging;
pub mod pgurl;
pub mod protocol;
pub mod registry;
pub mod replication;
pub mod schema;
pub mod server;
pub mod service;
pub mod store;
pub mod time;
pub mod types;
pub mod version;
pub mod wire;
pub mod writer;
