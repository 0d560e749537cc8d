//! All SQL lives here: migrations, registry introspection, changelog, clients, snapshot.

pub mod migrations;
pub mod pool;
