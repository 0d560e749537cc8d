//! Protocol quantities as newtypes: no bare `u64` for an LSN, no bare `String` for a bucket.
//!
//! Everything here is plain data with no I/O, shared by the WAL path and the HTTP path.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL write-ahead-log position, displayed as `X/Y` (two hex halves).
///
/// ```
/// use synchro::types::Lsn;
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn.0, 0x16_B374_D848);
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The zero position ("no position stored yet").
    pub const ZERO: Lsn = Lsn(0);

    /// True for the zero position.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// An LSN text that is not of the form `X/Y` with hex halves of at most 8 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(pub String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid LSN {:?}: expected two hex numbers as X/Y", self.0)
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A PostgreSQL object id (relation ids in pgoutput, type ids in the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A changelog sequence number (`sync_changelog.seq`), the unit of every `checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub i64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A bucket id: `user:<id>`, `global`, or an embedder's own form. Never contains `,`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketId(String);

impl BucketId {
    /// The bucket of rows without an owner and of tables without ownership.
    pub fn global() -> BucketId {
        BucketId("global".to_string())
    }

    /// The bucket of rows owned by `user` (`user:<id>`).
    pub fn user(user: &str) -> BucketId {
        BucketId(format!("user:{user}"))
    }

    /// Wraps an embedder-chosen bucket name; `None` when it is empty or contains `,`
    /// (subscriptions round-trip through comma-joined text in existing deployments).
    pub fn custom(name: &str) -> Option<BucketId> {
        if name.is_empty() || name.contains(',') {
            None
        } else {
            Some(BucketId(name.to_string()))
        }
    }

    /// The bucket id as it appears on the wire and in the infrastructure tables.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id into its text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for BucketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated user id, already lower-cased (contract §2.2).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Normalises an identity from a token claim or header: per-code-point lower-casing.
    /// Returns `None` for an identity that is empty or only whitespace, or that fails the
    /// protocol's rule for client-supplied text (`protocol::check_text`: NUL, or longer than
    /// `protocol::MAX_USER_ID_BYTES`); such a request is not authenticated.
    pub fn new(raw: &str) -> Option<UserId> {
        if raw.trim().is_empty()
            || crate::protocol::check_text("user id", raw, crate::protocol::MAX_USER_ID_BYTES).is_err()
        {
            return None;
        }
        Some(UserId(raw.chars().flat_map(char::to_lowercase).collect()))
    }

    /// The normalised id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A changelog operation code (`sync_changelog.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 1: the record entered the bucket.
    Create = 1,
    /// 2: the record changed and stays in the bucket.
    Update = 2,
    /// 3: the record left the bucket or was deleted.
    Delete = 3,
}

impl Op {
    /// The SMALLINT stored in `sync_changelog.operation`.
    pub fn code(self) -> i16 {
        self as i16
    }

    /// Decodes a stored code.
    pub fn from_code(code: i16) -> Option<Op> {
        match code {
            1 => Some(Op::Create),
            2 => Some(Op::Update),
            3 => Some(Op::Delete),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for (text, value) in [("0/0", 0u64), ("16/B374D848", 0x16_B374_D848), ("FFFFFFFF/FFFFFFFF", u64::MAX)] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.0, value);
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for bad in ["", "0", "/0", "0/", "G/0", "123456789/0", "0/0/0", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn user_ids_are_lower_cased_and_never_empty() {
        assert_eq!(UserId::new("ABC-1").unwrap().as_str(), "abc-1");
        assert_eq!(UserId::new("ÄÖ").unwrap().as_str(), "äö");
        for refused in ["", " ", " \t\n", "a\0b", &"x".repeat(crate::protocol::MAX_USER_ID_BYTES + 1)] {
            assert!(UserId::new(refused).is_none(), "{refused:?}");
        }
        assert!(UserId::new(&"x".repeat(crate::protocol::MAX_USER_ID_BYTES)).is_some());
        assert_eq!(BucketId::user("abc-1").as_str(), "user:abc-1");
        assert!(BucketId::custom("a,b").is_none());
    }
}
