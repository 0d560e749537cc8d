//! Every statement on synchro's own tables (`sync_*`, `synchro_*`) lives here: migrations,
//! registry introspection, the changelog writer's session and batch, changelog, edges, the WAL
//! position, watermarks, clients, the pull probe, publication, read replicas. Nothing here knows
//! of capture or the engine: they call in.

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
pub mod subscriptions;
pub mod visibility;
pub mod writer_session;

pub use stores::Stores;
