//! Backend (server -> client) messages: framing, typed decoding, replication payloads.

use super::reader::Reader;
use super::{DecodeError, DecodeErrorKind};
use crate::types::Lsn;

/// The largest frame we accept by default: big enough for a row with 1 GB TOAST values in text
/// form is not a goal; 256 MiB bounds memory against a hostile or broken peer.
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;

/// One complete frame: tag and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message type byte.
    pub tag: u8,
    /// The body (after the length).
    pub body: &'a [u8],
}

/// Splits the next frame off `buf`. `Ok(None)` means "need more bytes"; the `usize` is how many
/// bytes the frame used.
pub fn next_frame(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(DecodeError { offset: 1, kind: DecodeErrorKind::InvalidLength(i64::from(len)) });
    }
    let len = len as usize;
    if len > max_len {
        return Err(DecodeError { offset: 1, kind: DecodeErrorKind::FrameTooLarge { len, max: max_len } });
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    Ok(Some((Frame { tag, body: &buf[5..1 + len] }, 1 + len)))
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgErrorFields {
    /// `S`/`V`: ERROR, FATAL, WARNING, NOTICE, ...
    pub severity: String,
    /// `C`: SQLSTATE.
    pub code: String,
    /// `M`: primary message.
    pub message: String,
    /// `D`.
    pub detail: Option<String>,
    /// `H`.
    pub hint: Option<String>,
}

/// Authentication requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// Done.
    Ok,
    /// Send the password in clear text.
    CleartextPassword,
    /// Send an MD5 hash with this salt.
    Md5Password([u8; 4]),
    /// SASL with these mechanisms.
    Sasl(Vec<&'a str>),
    /// SASL continuation data.
    SaslContinue(&'a [u8]),
    /// SASL final data.
    SaslFinal(&'a [u8]),
    /// A method we do not implement (Kerberos, GSS, SSPI, ...): its code.
    Unsupported(i32),
}

/// A decoded backend message (those a replication client meets).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage<'a> {
    /// `R`.
    Authentication(Authentication<'a>),
    /// `S`.
    ParameterStatus {
        /// Name.
        name: &'a str,
        /// Value.
        value: &'a str,
    },
    /// `K`.
    BackendKeyData {
        /// Process id.
        pid: i32,
        /// Cancel key.
        key: i32,
    },
    /// `Z`.
    ReadyForQuery {
        /// `I`, `T` or `E`.
        status: u8,
    },
    /// `E`.
    Error(PgErrorFields),
    /// `N`.
    Notice(PgErrorFields),
    /// `T`: the column names.
    RowDescription(Vec<&'a str>),
    /// `D`: the values.
    DataRow(Vec<Option<&'a [u8]>>),
    /// `C`.
    CommandComplete(&'a str),
    /// `I`.
    EmptyQueryResponse,
    /// `H`.
    CopyOutResponse,
    /// `W`.
    CopyBothResponse,
    /// `d`.
    CopyData(&'a [u8]),
    /// `c`.
    CopyDone,
    /// `v`.
    NegotiateProtocolVersion {
        /// Newest minor version the server supports.
        minor: i32,
    },
    /// Anything else (ignored by callers that do not expect it).
    Other(u8),
}

fn error_fields(r: &mut Reader<'_>) -> Result<PgErrorFields, DecodeError> {
    let mut f = PgErrorFields::default();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        let value = r.cstr()?.to_string();
        match code {
            b'V' => f.severity = value,
            b'S' if f.severity.is_empty() => f.severity = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            b'D' => f.detail = Some(value),
            b'H' => f.hint = Some(value),
            _ => {}
        }
    }
    Ok(f)
}

/// Decodes one frame.
pub fn decode(frame: Frame<'_>) -> Result<BackendMessage<'_>, DecodeError> {
    let mut r = Reader::with_base(frame.body, 5);
    let msg = match frame.tag {
        b'R' => {
            let code = r.i32()?;
            BackendMessage::Authentication(match code {
                0 => Authentication::Ok,
                3 => Authentication::CleartextPassword,
                5 => {
                    let s = r.bytes(4)?;
                    Authentication::Md5Password([s[0], s[1], s[2], s[3]])
                }
                10 => {
                    let mut mechs = Vec::new();
                    loop {
                        let m = r.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechs.push(m);
                    }
                    Authentication::Sasl(mechs)
                }
                11 => Authentication::SaslContinue(r.rest()),
                12 => Authentication::SaslFinal(r.rest()),
                other => {
                    r.rest();
                    Authentication::Unsupported(other)
                }
            })
        }
        b'S' => BackendMessage::ParameterStatus { name: r.cstr()?, value: r.cstr()? },
        b'K' => BackendMessage::BackendKeyData { pid: r.i32()?, key: r.i32()? },
        b'Z' => BackendMessage::ReadyForQuery { status: r.u8()? },
        b'E' => BackendMessage::Error(error_fields(&mut r)?),
        b'N' => BackendMessage::Notice(error_fields(&mut r)?),
        b'T' => {
            let raw = i64::from(r.i16()?);
            // Each field is at least a NUL plus 18 bytes of attributes.
            let n = r.count(raw, 19)?;
            let mut names = Vec::with_capacity(n);
            for _ in 0..n {
                names.push(r.cstr()?);
                r.bytes(18)?;
            }
            BackendMessage::RowDescription(names)
        }
        b'D' => {
            let raw = i64::from(r.i16()?);
            let n = r.count(raw, 4)?;
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                let len = r.i32()?;
                if len == -1 {
                    values.push(None);
                } else if len < 0 {
                    return Err(r.error(DecodeErrorKind::InvalidLength(i64::from(len))));
                } else {
                    values.push(Some(r.bytes(len as usize)?));
                }
            }
            BackendMessage::DataRow(values)
        }
        b'C' => BackendMessage::CommandComplete(r.cstr()?),
        b'I' => BackendMessage::EmptyQueryResponse,
        b'H' => {
            r.rest();
            BackendMessage::CopyOutResponse
        }
        b'W' => {
            r.rest();
            BackendMessage::CopyBothResponse
        }
        b'd' => BackendMessage::CopyData(r.rest()),
        b'c' => BackendMessage::CopyDone,
        b'v' => {
            let minor = r.i32()?;
            r.rest();
            BackendMessage::NegotiateProtocolVersion { minor }
        }
        other => {
            r.rest();
            BackendMessage::Other(other)
        }
    };
    r.finish()?;
    Ok(msg)
}

/// A message of the streaming replication protocol, inside CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage<'a> {
    /// `w`: WAL data (a pgoutput message for logical replication).
    XLogData {
        /// Where the data starts.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock, µs since 2000-01-01.
        server_clock: i64,
        /// The payload.
        data: &'a [u8],
    },
    /// `k`: keepalive.
    PrimaryKeepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock.
        server_clock: i64,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// Decodes a CopyData payload of a replication stream.
pub fn decode_replication(data: &[u8]) -> Result<ReplicationMessage<'_>, DecodeError> {
    let mut r = Reader::new(data);
    let msg = match r.u8()? {
        b'w' => ReplicationMessage::XLogData {
            wal_start: Lsn(r.u64()?),
            wal_end: Lsn(r.u64()?),
            server_clock: r.i64()?,
            data: r.rest(),
        },
        b'k' => ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(r.u64()?),
            server_clock: r.i64()?,
            reply_requested: r.u8()? != 0,
        },
        other => return Err(DecodeError { offset: 0, kind: DecodeErrorKind::UnknownTag(other) }),
    };
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_split_and_wait_for_more() {
        let mut buf = frame(b'Z', b"I");
        buf.extend(frame(b'C', b"SELECT 1\0"));
        let (f, used) = next_frame(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((f.tag, used), (b'Z', 6));
        assert_eq!(decode(f).unwrap(), BackendMessage::ReadyForQuery { status: b'I' });
        assert_eq!(next_frame(&buf[used..used + 3], DEFAULT_MAX_FRAME).unwrap(), None);
        assert_eq!(next_frame(&buf[used..buf.len() - 1], DEFAULT_MAX_FRAME).unwrap(), None);
        let (f, _) = next_frame(&buf[used..], DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(decode(f).unwrap(), BackendMessage::CommandComplete("SELECT 1"));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let err = next_frame(&[b'd', 0x7f, 0xff, 0xff, 0xff], 1024).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::FrameTooLarge { .. }));
        let err = next_frame(&[b'd', 0, 0, 0, 3], 1024).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::InvalidLength(3));
        let err = next_frame(&[b'd', 0xff, 0xff, 0xff, 0xff], 1024).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::InvalidLength(-1));
    }

    #[test]
    fn decodes_messages() {
        let auth = frame(
            b'R',
            &[0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6', 0, 0],
        );
        let (f, _) = next_frame(&auth, 1 << 20).unwrap().unwrap();
        assert_eq!(decode(f).unwrap(), BackendMessage::Authentication(Authentication::Sasl(vec!["SCRAM-SHA-256"])));
        let md5 = frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        let (f, _) = next_frame(&md5, 1 << 20).unwrap().unwrap();
        assert_eq!(decode(f).unwrap(), BackendMessage::Authentication(Authentication::Md5Password([1, 2, 3, 4])));
        let err = frame(b'E', b"SERROR\0VERROR\0C42704\0Mslot \"x\" does not exist\0Dd\0Hh\0\0");
        let (f, _) = next_frame(&err, 1 << 20).unwrap().unwrap();
        let BackendMessage::Error(e) = decode(f).unwrap() else { panic!() };
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "42704", "slot \"x\" does not exist")
        );
        assert_eq!((e.detail.as_deref(), e.hint.as_deref()), (Some("d"), Some("h")));
        let row = frame(b'D', &[0, 2, 0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff]);
        let (f, _) = next_frame(&row, 1 << 20).unwrap().unwrap();
        assert_eq!(decode(f).unwrap(), BackendMessage::DataRow(vec![Some(&b"x"[..]), None]));
        let bad_row = frame(b'D', &[0x7f, 0xff, 0, 0]);
        let (f, _) = next_frame(&bad_row, 1 << 20).unwrap().unwrap();
        assert!(matches!(decode(f).unwrap_err().kind, DecodeErrorKind::CountTooLarge(_)));
        let trailing = frame(b'Z', b"II");
        let (f, _) = next_frame(&trailing, 1 << 20).unwrap().unwrap();
        assert_eq!(decode(f).unwrap_err().kind, DecodeErrorKind::TrailingBytes(1));
    }

    #[test]
    fn decodes_replication_payloads() {
        let mut w = vec![b'w'];
        w.extend(1u64.to_be_bytes());
        w.extend(9u64.to_be_bytes());
        w.extend(7i64.to_be_bytes());
        w.extend(b"BEGIN");
        assert_eq!(
            decode_replication(&w).unwrap(),
            ReplicationMessage::XLogData { wal_start: Lsn(1), wal_end: Lsn(9), server_clock: 7, data: b"BEGIN" }
        );
        let mut k = vec![b'k'];
        k.extend(5u64.to_be_bytes());
        k.extend(0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            decode_replication(&k).unwrap(),
            ReplicationMessage::PrimaryKeepalive { wal_end: Lsn(5), server_clock: 0, reply_requested: true }
        );
        assert!(decode_replication(&k[..10]).is_err());
        assert_eq!(decode_replication(b"x").unwrap_err().kind, DecodeErrorKind::UnknownTag(b'x'));
        for cut in 0..w.len().min(25) {
            let _ = decode_replication(&w[..cut]);
        }
    }
}
