//! Integration tests against a real PostgreSQL (see `harness`).

mod cluster;
mod harness;
mod introspect;
mod migrations;
mod store;
