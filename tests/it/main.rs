//! Integration tests against a real PostgreSQL (see `harness`).

mod cluster;
mod harness;
mod http;
mod introspect;
mod migrations;
mod store;
