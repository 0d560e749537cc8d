//! The replication stream as one sequence of typed items: frames read from the connection,
//! CopyData payloads, pgoutput messages and the decoder's events, so the session loop above it
//! stays flat.

use std::time::Duration;

use super::decode::{Decoded, Decoder, Routes};
use super::error::CaptureError;
use super::events::WalEvent;
use crate::pg::conn::{ReplError, ReplicationConn};
use crate::pg::wire::backend::{self, BackendMessage, ReplicationMessage};
use crate::pg::wire::pgoutput;
use crate::types::Lsn;

/// One item of the stream.
#[derive(Debug, PartialEq)]
pub enum Streamed {
    /// A decoded change for the writer.
    Event(WalEvent),
    /// A keepalive.
    Keepalive {
        /// Outside any transaction and past the last one: once the writer committed everything
        /// before it, this WAL end may be confirmed ([`WalEvent::Idle`]).
        idle: Option<Lsn>,
        /// The server asks for a status update now.
        reply_requested: bool,
    },
    /// A Relation message changed the columns of a registered table (DDL) since this session
    /// first described it.
    SchemaChanged,
    /// Nothing to hand on: a message for no registered table, or a read that timed out.
    Nothing,
}

/// A replication connection in CopyBoth mode and the decoder of its messages.
pub struct ReplicationStream {
    conn: ReplicationConn,
    decoder: Decoder,
    in_txn: bool,
    last_idle: Lsn,
    /// The last WAL end the server reported.
    pub server_wal_end: Lsn,
    /// XLogData messages received.
    pub messages: u64,
}

impl ReplicationStream {
    /// Starts streaming `slot` from `from` for `publication` on `conn`, decoding the changes of
    /// the tables in `routes`. Reads block at most `read_timeout`, so the caller gets to send
    /// status updates and notice shutdown.
    pub fn start(
        mut conn: ReplicationConn,
        routes: Routes,
        slot: &str,
        from: Lsn,
        publication: &str,
        read_timeout: Duration,
    ) -> Result<ReplicationStream, ReplError> {
        conn.start_replication(slot, from, publication)?;
        conn.set_read_timeout(read_timeout)?;
        Ok(ReplicationStream {
            conn,
            decoder: Decoder::new(routes),
            in_txn: false,
            last_idle: Lsn::ZERO,
            server_wal_end: Lsn::ZERO,
            messages: 0,
        })
    }

    /// The next item.
    pub fn read(&mut self) -> Result<Streamed, CaptureError> {
        let Some(frame) = self.conn.read_frame("streaming")? else { return Ok(Streamed::Nothing) };
        let at = self.server_wal_end;
        let decode_error = |source| CaptureError::Decode { lsn: at, source };
        match backend::decode(backend::Frame { tag: frame.tag, body: &frame.body }).map_err(decode_error)? {
            BackendMessage::CopyData(payload) => match backend::decode_replication(payload).map_err(decode_error)? {
                ReplicationMessage::XLogData { data, wal_end, .. } => {
                    self.server_wal_end = self.server_wal_end.max(wal_end);
                    self.messages += 1;
                    let message =
                        pgoutput::decode(data).map_err(|source| CaptureError::Decode { lsn: wal_end, source })?;
                    match self.decoder.decode(&message)? {
                        Decoded::Event(event) => {
                            match &event {
                                WalEvent::Begin { .. } => self.in_txn = true,
                                WalEvent::Commit { .. } => self.in_txn = false,
                                _ => {}
                            }
                            Ok(Streamed::Event(event))
                        }
                        Decoded::SchemaChanged { table } => {
                            crate::info!("table definition changed in the stream", table = table);
                            Ok(Streamed::SchemaChanged)
                        }
                        Decoded::Nothing => Ok(Streamed::Nothing),
                    }
                }
                ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                    self.server_wal_end = self.server_wal_end.max(wal_end);
                    let idle = (!self.in_txn && wal_end > self.last_idle).then_some(wal_end);
                    if idle.is_some() {
                        self.last_idle = wal_end;
                    }
                    Ok(Streamed::Keepalive { idle, reply_requested })
                }
            },
            BackendMessage::Error(fields) => Err(CaptureError::Replication(ReplError::Server {
                context: "streaming".into(),
                fields: Box::new(fields),
            })),
            BackendMessage::CopyDone => Err(CaptureError::StreamEnded),
            _ => Ok(Streamed::Nothing),
        }
    }

    /// Sends a standby status update: everything up to `lsn` is written, flushed and applied.
    pub fn confirm(&mut self, lsn: Lsn) -> Result<(), ReplError> {
        self.conn.send_status(lsn, lsn, lsn, false)
    }

    /// Ends the stream and the session politely, once the server has left copy mode (so it
    /// has read every status update sent before).
    pub fn close(mut self) {
        self.conn.end_copy();
        self.conn.close();
    }
}
