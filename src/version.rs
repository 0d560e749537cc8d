//! The minimum client version gate (contract §2.4).
//!
//! Parsing is the reference's, exactly: one leading lower-case `v` removed, split on `.` into
//! at most three parts (so `1.2.3.4` has the third part `3.4` and fails), pre-release and build
//! metadata cut from the third part (`1.2.3-beta` == `1.2.3`), each part a base-10 integer
//! with leading zeros allowed and no whitespace.

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

/// Parses a version string; `None` when it does not follow the rules above.
pub fn parse(text: &str) -> Option<Version> {
    let s = text.strip_prefix('v').unwrap_or(text);
    let mut parts = s.splitn(3, '.');
    let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
    let patch = patch.split(['-', '+']).next().unwrap_or("");
    let num = |p: &str| -> Option<u64> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    Some(Version(num(major)?, num(minor)?, num(patch)?))
}

/// The gate: `None` when `MIN_CLIENT_VERSION` is empty.
#[derive(Debug, Clone)]
pub struct VersionGate {
    minimum: Option<Result<Version, String>>,
}

/// Why a version did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    /// Older than the minimum.
    TooOld,
    /// The client's version (or the configured minimum) does not parse.
    Unparseable,
}

impl VersionGate {
    /// A gate for `MIN_CLIENT_VERSION` (empty = off).
    pub fn new(minimum: &str) -> VersionGate {
        if minimum.is_empty() {
            VersionGate { minimum: None }
        } else {
            VersionGate { minimum: Some(parse(minimum).ok_or_else(|| minimum.to_string())) }
        }
    }

    /// True when a minimum is configured.
    pub fn is_enabled(&self) -> bool {
        self.minimum.is_some()
    }

    /// Checks a client version; an empty version always passes (absent header).
    pub fn check(&self, client: &str) -> Result<(), GateError> {
        let Some(minimum) = &self.minimum else { return Ok(()) };
        if client.is_empty() {
            return Ok(());
        }
        let minimum = minimum.as_ref().map_err(|_| GateError::Unparseable)?;
        let client = parse(client).ok_or(GateError::Unparseable)?;
        if client < *minimum {
            Err(GateError::TooOld)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        for (text, want) in [
            ("1.2.3", Some(Version(1, 2, 3))),
            ("v1.0.0", Some(Version(1, 0, 0))),
            ("1.0.0-beta", Some(Version(1, 0, 0))),
            ("1.0.0+build.7", Some(Version(1, 0, 0))),
            ("01.002.0003", Some(Version(1, 2, 3))),
            ("1.0", None),
            ("1.2.3.4", None),
            ("V1.0.0", None),
            ("vv1.0.0", None),
            (" 1.0.0", None),
            ("1. 0.0", None),
            ("1.0.x", None),
            ("", None),
            ("-1.0.0", None),
            ("99999999999999999999.0.0", None),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn gate_edges() {
        let gate = VersionGate::new("1.0.0");
        assert_eq!(gate.check("0.0.1"), Err(GateError::TooOld));
        assert_eq!(gate.check("0.9.99"), Err(GateError::TooOld));
        assert_eq!(gate.check("v1.0.0"), Ok(()));
        assert_eq!(gate.check("1.0.0-beta"), Ok(()));
        assert_eq!(gate.check("2.0.0"), Ok(()));
        assert_eq!(gate.check("1.0"), Err(GateError::Unparseable));
        assert_eq!(gate.check(""), Ok(()), "absent version passes");
        assert_eq!(VersionGate::new("").check("0.0.1"), Ok(()), "gate off");
        assert_eq!(
            VersionGate::new("garbage").check("1.0.0"),
            Err(GateError::Unparseable),
            "bad minimum fails every check"
        );
        assert!(!VersionGate::new("").is_enabled());
    }
}
