//! All SQL lives here: migrations, registry introspection, changelog, clients, snapshot, read replicas.

pub mod changelog;
pub mod clients;
pub mod compaction;
pub mod introspect;
pub mod migrations;
pub mod pool;
pub mod publication;
pub mod pull_probe;
pub mod replicas;
pub mod stores;
pub mod subscriptions;
pub mod visibility;

pub use stores::Stores;
