//! All SQL lives here: migrations, registry introspection, changelog, clients, snapshot, read replicas.

pub mod changelog;
pub mod clients;
pub mod compaction;
pub mod edges;
pub mod introspect;
pub mod migrations;
pub mod pool;
pub mod position;
pub mod publication;
pub mod pull_probe;
pub mod replicas;
pub mod stores;
pub mod visibility;
pub mod writer_session;

pub use stores::Stores;
