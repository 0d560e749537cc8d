//! Integration tests against a real PostgreSQL (see `harness`).

mod capture;
mod capture_faults;
mod client;
mod cluster;
mod dev;
mod embedded;
mod fuzz_corpus;
mod harness;
mod hooks;
mod hostile;
mod http;
mod http_edge;
mod introspect;
#[cfg(feature = "jwks")]
mod jwks;
mod leader;
mod logging;
mod migrations;
mod oracle;
mod push_paths;
mod replicas;
mod replication_conn;
mod rls;
mod rng;
mod rules;
mod scope;
mod scope_property;
mod server;
mod store;
mod streaming;
mod sync_api;
mod sync_store;
mod teams;
mod teams_property;
#[cfg(feature = "tls")]
mod tls;
mod types;
