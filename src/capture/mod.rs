//! Change capture: from the bytes of the replication stream to a committed changelog batch.

pub mod backfill;
pub mod buckets;
pub mod decode;
mod error;
pub mod events;
pub mod leader;
pub mod plan;
pub mod row_json;
pub mod source;
pub mod stream;
pub mod supervisor;
pub mod writer;

pub use error::{CaptureError, Recovery};
