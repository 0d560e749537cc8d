//! The PostgreSQL wire protocol as pure functions: bytes in, typed messages out, and encoders
//! writing into a caller's buffer. No I/O here, so every decoder is fuzzable and unit-testable
//! with recorded frames.
//!
//! Every count and length is checked against the bytes actually present before anything is
//! allocated; malformed input yields a [`DecodeError`] with the byte offset, never a panic.

pub mod backend;
pub mod frontend;
pub mod pgoutput;
pub mod reader;

use std::fmt;

/// What is wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The message ended before a field of `needed` bytes.
    UnexpectedEof {
        /// Bytes the field needs.
        needed: usize,
    },
    /// A length field is negative or inconsistent.
    InvalidLength(i64),
    /// A count is larger than the remaining bytes could hold.
    CountTooLarge(i64),
    /// A string is not UTF-8.
    InvalidUtf8,
    /// A C string has no terminating NUL.
    UnterminatedString,
    /// An unknown message or field tag.
    UnknownTag(u8),
    /// Bytes left after a complete message.
    TrailingBytes(usize),
    /// A frame larger than the configured maximum.
    FrameTooLarge {
        /// Its declared length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// A decode failure at a byte offset within the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the offending field.
    pub offset: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::UnexpectedEof { needed } => {
                write!(f, "message ends at byte {} ({needed} more needed)", self.offset)
            }
            DecodeErrorKind::InvalidLength(n) => write!(f, "invalid length {n} at byte {}", self.offset),
            DecodeErrorKind::CountTooLarge(n) => write!(f, "count {n} at byte {} exceeds the message", self.offset),
            DecodeErrorKind::InvalidUtf8 => write!(f, "invalid UTF-8 at byte {}", self.offset),
            DecodeErrorKind::UnterminatedString => write!(f, "unterminated string at byte {}", self.offset),
            DecodeErrorKind::UnknownTag(t) => write!(f, "unknown tag {:?} at byte {}", *t as char, self.offset),
            DecodeErrorKind::TrailingBytes(n) => {
                write!(f, "{n} unexpected bytes after the message at byte {}", self.offset)
            }
            DecodeErrorKind::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
        }
    }
}

impl std::error::Error for DecodeError {}
