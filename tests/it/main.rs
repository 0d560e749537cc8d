//! Integration tests against a real PostgreSQL (see `harness`).

mod cluster;
mod harness;
mod migrations;
mod store;
