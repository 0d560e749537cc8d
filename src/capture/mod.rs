//! Change capture: from the bytes of the replication stream to a committed changelog batch.
//!
//! ```text
//! supervisor (thread wal-capture; restarts sessions per CaptureError::recovery)
//!   │  leader (thread capture-leader): an advisory lock decides which instance runs it
//!   ▼
//! stream: pg::conn frames ─► pg::wire (CopyData, pgoutput) ─► decode (relation cache) ─► events
//!   ▼  bounded channel of WalEvents: a slow writer slows WAL reading, memory stays flat
//! writer (thread changelog-writer): batches cut at replicated commits, chunks of changes:
//!   read   held edges (store), owners and current rows (source; the application database)
//!   plan   pure: buckets, changelog rows, net edge changes, checksums (plan, buckets, row_json)
//!   write  store::writer_session::Batch: edges, changelog rows, failures; at the end the WAL
//!          position, one transaction per batch
//!   ▲  the committed LSN flows back: the stream confirms it to the server
//! ```
//!
//! Deliberately absent: a second transaction or session per batch, any SQL on synchro's own
//! tables (that is in [`crate::store`]), I/O in [`plan`], [`buckets`] and [`row_json`].

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
