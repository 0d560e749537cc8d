//! Change capture: our own replication connection, the stream loop, and the pipeline that
//! feeds the changelog writer.

pub mod conn;
pub mod leader;
pub mod scram;
pub mod stream;
