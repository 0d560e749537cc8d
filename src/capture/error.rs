//! The capture layer's error, classified by what the supervisor does about it.

use std::fmt;

use super::decode::DecodeEventError;
use super::writer::WriterError;
use crate::pg::conn::ReplError;
use crate::pg::url::ConnStringError;
use crate::pg::wire::DecodeError;
use crate::store::pool::StoreError;
use crate::types::Lsn;

/// Why change capture (a replication session, or its start) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CaptureError {
    /// `REPLICATION_URL` cannot be parsed.
    Url(ConnStringError),
    /// The replication connection failed or the server refused a command.
    Replication(ReplError),
    /// The server sent bytes that are not valid protocol or pgoutput.
    Decode {
        /// The WAL position of the message (the server's WAL end when it was sent).
        lsn: Lsn,
        /// Where and what.
        source: DecodeError,
    },
    /// A valid pgoutput message that cannot become an event (a change before its relation).
    Event(DecodeEventError),
    /// The server ended the stream (CopyDone).
    StreamEnded,
    /// A query on the application database or the sync store failed.
    Store(StoreError),
    /// The changelog writer failed.
    Writer(WriterError),
    /// The changelog writer's thread panicked (a bug): the message it panicked with.
    WriterPanicked(String),
    /// The changelog writer stopped while the stream went on, without an error of its own.
    WriterStopped,
    /// The slot exists with another output plugin.
    SlotPlugin {
        /// The slot.
        slot: String,
        /// Its plugin.
        plugin: Option<String>,
    },
    /// A capture thread could not be started.
    Spawn(std::io::Error),
}

/// What the supervisor does after a session ended with a [`CaptureError`]. Every new session
/// resumes from the stored position, so nothing is lost or written twice whatever it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Start a new session at once: the cause is about to go away by itself (a slot still
    /// held by a departing walsender, a batch fenced off by another writer that lost the lock).
    RetrySoon,
    /// Start a new session with capped exponential backoff (network trouble, a server restart,
    /// a database error).
    Backoff,
    /// Retrying cannot help until an operator changes the configuration or the server (a bad
    /// URL, authentication refused, a pooler in front of the server, a slot with another
    /// plugin, a stream we cannot decode): the supervisor keeps retrying at its longest
    /// backoff and says so.
    NeedsOperator,
}

impl CaptureError {
    /// What the supervisor does about it.
    pub fn recovery(&self) -> Recovery {
        match self {
            CaptureError::Replication(e) if e.sqlstate() == Some("55006") => Recovery::RetrySoon,
            CaptureError::Writer(WriterError::Fenced { .. }) => Recovery::RetrySoon,
            CaptureError::Replication(e) if e.is_transient() => Recovery::Backoff,
            CaptureError::Replication(ReplError::Server { fields, .. }) if !fields.code.starts_with("28") => {
                Recovery::Backoff
            }
            CaptureError::Store(e) | CaptureError::Writer(WriterError::Store(e)) if e.is_transient() => {
                Recovery::Backoff
            }
            CaptureError::Store(e) | CaptureError::Writer(WriterError::Store(e)) if e.sqlstate().is_some() => {
                Recovery::Backoff
            }
            CaptureError::StreamEnded
            | CaptureError::WriterPanicked(_)
            | CaptureError::WriterStopped
            | CaptureError::Spawn(_) => Recovery::Backoff,
            CaptureError::Writer(WriterError::Spawn(_)) => Recovery::Backoff,
            _ => Recovery::NeedsOperator,
        }
    }
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Url(e) => write!(f, "REPLICATION_URL: {e}"),
            CaptureError::Replication(e) => write!(f, "replication: {e}"),
            CaptureError::Decode { lsn, source } => write!(f, "decoding the stream at {lsn}: {source}"),
            CaptureError::Event(e) => write!(f, "decoding the stream: {e}"),
            CaptureError::StreamEnded => f.write_str("the server ended the replication stream"),
            CaptureError::Store(e) => write!(f, "{e}"),
            CaptureError::Writer(e) => write!(f, "{e}"),
            CaptureError::WriterPanicked(m) => write!(f, "the changelog writer panicked: {m}"),
            CaptureError::WriterStopped => f.write_str("the changelog writer stopped unexpectedly"),
            CaptureError::SlotPlugin { slot, plugin } => {
                write!(f, "replication slot {slot} uses plugin {plugin:?}, not pgoutput; drop it or set SLOT_NAME")
            }
            CaptureError::Spawn(e) => write!(f, "starting a capture thread: {e}"),
        }
    }
}

impl std::error::Error for CaptureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaptureError::Url(e) => Some(e),
            CaptureError::Replication(e) => Some(e),
            CaptureError::Decode { source, .. } => Some(source),
            CaptureError::Event(e) => Some(e),
            CaptureError::Store(e) => Some(e),
            CaptureError::Writer(e) => Some(e),
            CaptureError::Spawn(e) => Some(e),
            CaptureError::StreamEnded
            | CaptureError::WriterPanicked(_)
            | CaptureError::WriterStopped
            | CaptureError::SlotPlugin { .. } => None,
        }
    }
}

impl From<ReplError> for CaptureError {
    fn from(e: ReplError) -> Self {
        CaptureError::Replication(e)
    }
}

impl From<StoreError> for CaptureError {
    fn from(e: StoreError) -> Self {
        CaptureError::Store(e)
    }
}

impl From<WriterError> for CaptureError {
    fn from(e: WriterError) -> Self {
        CaptureError::Writer(e)
    }
}

impl From<DecodeEventError> for CaptureError {
    fn from(e: DecodeEventError) -> Self {
        CaptureError::Event(e)
    }
}

impl From<ConnStringError> for CaptureError {
    fn from(e: ConnStringError) -> Self {
        CaptureError::Url(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wire::backend::PgErrorFields;

    fn server(code: &str) -> CaptureError {
        let fields = PgErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        };
        CaptureError::Replication(ReplError::Server { context: "streaming".into(), fields: Box::new(fields) })
    }

    #[test]
    fn errors_are_classified_by_what_the_supervisor_does() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let cases: Vec<(CaptureError, Recovery)> = vec![
            (server("55006"), Recovery::RetrySoon),
            (CaptureError::Writer(WriterError::Fenced { expected: Lsn(1) }), Recovery::RetrySoon),
            (CaptureError::Replication(ReplError::Io { context: "x".into(), source: io() }), Recovery::Backoff),
            (server("57P01"), Recovery::Backoff),
            (server("XX000"), Recovery::Backoff),
            (server("28P01"), Recovery::NeedsOperator),
            (CaptureError::Replication(ReplError::Pooler("pgbouncer".into())), Recovery::NeedsOperator),
            (CaptureError::Url(ConnStringError("bad".into())), Recovery::NeedsOperator),
            (CaptureError::SlotPlugin { slot: "s".into(), plugin: Some("wal2json".into()) }, Recovery::NeedsOperator),
            (CaptureError::StreamEnded, Recovery::Backoff),
            (CaptureError::WriterPanicked("boom".into()), Recovery::Backoff),
            (CaptureError::Store(StoreError::PoolTimeout { detail: "x".into() }), Recovery::Backoff),
            (CaptureError::Store(StoreError::Corrupt { detail: "x".into() }), Recovery::NeedsOperator),
        ];
        for (e, want) in cases {
            assert_eq!(e.recovery(), want, "{e}");
        }
    }

    #[test]
    fn the_source_chain_is_kept() {
        let e = CaptureError::Writer(WriterError::Spawn(std::io::Error::other("no threads")));
        let writer = std::error::Error::source(&e).expect("the writer error");
        assert_eq!(std::error::Error::source(writer).map(|s| s.to_string()).as_deref(), Some("no threads"));
        assert_eq!(crate::store::pool::with_causes(&e), "starting the changelog writer thread: no threads");
    }
}
