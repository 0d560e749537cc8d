//! The `pgoutput` logical decoding messages (protocol version 1), decoded without copying:
//! names and values borrow from the XLogData payload.

use super::reader::Reader;
use super::{DecodeError, DecodeErrorKind};
use crate::types::{Lsn, Oid};

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// `n`: NULL.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: text form.
    Text(&'a [u8]),
    /// `b`: binary form (only with the `binary` option, which we do not request).
    Binary(&'a [u8]),
}

/// Which old tuple an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity key columns are set (others NULL).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// The old tuple of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple<'a> {
    /// Key or full.
    pub kind: OldKind,
    /// The values.
    pub tuple: Vec<TupleValue<'a>>,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Part of the replica identity key.
    pub is_key: bool,
    /// Name.
    pub name: &'a str,
    /// Type oid.
    pub type_oid: Oid,
    /// Type modifier.
    pub type_modifier: i32,
}

/// A pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgOutput<'a> {
    /// `B`.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, µs since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`.
    Commit {
        /// Flags (unused).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the transaction: resume after it.
        end_lsn: Lsn,
        /// Commit time, µs since 2000-01-01.
        commit_time: i64,
    },
    /// `O`.
    Origin {
        /// Commit LSN on the origin.
        commit_lsn: Lsn,
        /// Origin name.
        name: &'a str,
    },
    /// `R`.
    Relation {
        /// Relation id.
        rel: Oid,
        /// Schema.
        namespace: &'a str,
        /// Table.
        name: &'a str,
        /// REPLICA IDENTITY setting (`d`, `n`, `f`, `i`).
        replica_identity: u8,
        /// Columns.
        columns: Vec<RelationColumn<'a>>,
    },
    /// `Y`.
    Type {
        /// Type oid.
        oid: Oid,
        /// Schema.
        namespace: &'a str,
        /// Name.
        name: &'a str,
    },
    /// `I`.
    Insert {
        /// Relation id.
        rel: Oid,
        /// New row.
        new: Vec<TupleValue<'a>>,
    },
    /// `U`.
    Update {
        /// Relation id.
        rel: Oid,
        /// Old row or key, when sent.
        old: Option<OldTuple<'a>>,
        /// New row.
        new: Vec<TupleValue<'a>>,
    },
    /// `D`.
    Delete {
        /// Relation id.
        rel: Oid,
        /// Old row or key.
        old: OldTuple<'a>,
    },
    /// `T`.
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        /// Relation ids.
        relations: Vec<Oid>,
    },
    /// `M`.
    Message {
        /// Transactional.
        transactional: bool,
        /// LSN.
        lsn: Lsn,
        /// Prefix.
        prefix: &'a str,
        /// Content.
        content: &'a [u8],
    },
}

fn tuple<'a>(r: &mut Reader<'a>) -> Result<Vec<TupleValue<'a>>, DecodeError> {
    let raw = i64::from(r.i16()?);
    // Every column takes at least its one-byte kind.
    let n = r.count(raw, 1)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        values.push(match kind {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' | b'b' => {
                let len = r.i32()?;
                if len < 0 {
                    return Err(r.error(DecodeErrorKind::InvalidLength(i64::from(len))));
                }
                let bytes = r.bytes(len as usize)?;
                if kind == b't' {
                    TupleValue::Text(bytes)
                } else {
                    TupleValue::Binary(bytes)
                }
            }
            other => return Err(DecodeError { offset: r.offset() - 1, kind: DecodeErrorKind::UnknownTag(other) }),
        });
    }
    Ok(values)
}

fn old_tuple<'a>(r: &mut Reader<'a>, tag: u8) -> Result<OldTuple<'a>, DecodeError> {
    let kind = match tag {
        b'K' => OldKind::Key,
        b'O' => OldKind::Full,
        other => return Err(DecodeError { offset: r.offset() - 1, kind: DecodeErrorKind::UnknownTag(other) }),
    };
    Ok(OldTuple { kind, tuple: tuple(r)? })
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(data: &[u8]) -> Result<PgOutput<'_>, DecodeError> {
    let mut r = Reader::new(data);
    let msg = match r.u8()? {
        b'B' => PgOutput::Begin { final_lsn: Lsn(r.u64()?), commit_time: r.i64()?, xid: r.u32()? },
        b'C' => PgOutput::Commit {
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
        },
        b'O' => PgOutput::Origin { commit_lsn: Lsn(r.u64()?), name: r.cstr()? },
        b'R' => {
            let rel = Oid(r.u32()?);
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let raw = i64::from(r.i16()?);
            // flags(1) + name(>=1) + type oid(4) + modifier(4)
            let n = r.count(raw, 10)?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(RelationColumn {
                    is_key: flags & 1 != 0,
                    name: r.cstr()?,
                    type_oid: Oid(r.u32()?),
                    type_modifier: r.i32()?,
                });
            }
            PgOutput::Relation { rel, namespace, name, replica_identity, columns }
        }
        b'Y' => PgOutput::Type { oid: Oid(r.u32()?), namespace: r.cstr()?, name: r.cstr()? },
        b'I' => {
            let rel = Oid(r.u32()?);
            match r.u8()? {
                b'N' => PgOutput::Insert { rel, new: tuple(&mut r)? },
                other => return Err(DecodeError { offset: r.offset() - 1, kind: DecodeErrorKind::UnknownTag(other) }),
            }
        }
        b'U' => {
            let rel = Oid(r.u32()?);
            let mut tag = r.u8()?;
            let old = if tag == b'K' || tag == b'O' {
                let old = old_tuple(&mut r, tag)?;
                tag = r.u8()?;
                Some(old)
            } else {
                None
            };
            if tag != b'N' {
                return Err(DecodeError { offset: r.offset() - 1, kind: DecodeErrorKind::UnknownTag(tag) });
            }
            PgOutput::Update { rel, old, new: tuple(&mut r)? }
        }
        b'D' => {
            let rel = Oid(r.u32()?);
            let tag = r.u8()?;
            PgOutput::Delete { rel, old: old_tuple(&mut r, tag)? }
        }
        b'T' => {
            let raw = i64::from(r.u32()?);
            let options = r.u8()?;
            let n = r.count(raw, 4)?;
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(Oid(r.u32()?));
            }
            PgOutput::Truncate { options, relations }
        }
        b'M' => {
            let transactional = r.u8()? != 0;
            let lsn = Lsn(r.u64()?);
            let prefix = r.cstr()?;
            let len = r.i32()?;
            if len < 0 {
                return Err(r.error(DecodeErrorKind::InvalidLength(i64::from(len))));
            }
            PgOutput::Message { transactional, lsn, prefix, content: r.bytes(len as usize)? }
        }
        other => return Err(DecodeError { offset: 0, kind: DecodeErrorKind::UnknownTag(other) }),
    };
    r.finish()?;
    Ok(msg)
}

/// Encoders producing pgoutput bytes, for tests and fuzz seeds.
pub mod encode {
    use super::{OldKind, TupleValue};

    fn tuple(out: &mut Vec<u8>, values: &[TupleValue<'_>]) {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                TupleValue::Null => out.push(b'n'),
                TupleValue::UnchangedToast => out.push(b'u'),
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    out.push(if matches!(v, TupleValue::Text(_)) { b't' } else { b'b' });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// `B`.
    pub fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
        let mut o = vec![b'B'];
        o.extend(final_lsn.to_be_bytes());
        o.extend(time.to_be_bytes());
        o.extend(xid.to_be_bytes());
        o
    }

    /// `C`.
    pub fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
        let mut o = vec![b'C', 0];
        o.extend(commit_lsn.to_be_bytes());
        o.extend(end_lsn.to_be_bytes());
        o.extend(time.to_be_bytes());
        o
    }

    /// `R` with `(name, type oid, is_key)` columns.
    pub fn relation(rel: u32, ns: &str, name: &str, columns: &[(&str, u32, bool)]) -> Vec<u8> {
        let mut o = vec![b'R'];
        o.extend(rel.to_be_bytes());
        for s in [ns, name] {
            o.extend(s.as_bytes());
            o.push(0);
        }
        o.push(b'd');
        o.extend((columns.len() as i16).to_be_bytes());
        for (n, t, key) in columns {
            o.push(u8::from(*key));
            o.extend(n.as_bytes());
            o.push(0);
            o.extend(t.to_be_bytes());
            o.extend((-1i32).to_be_bytes());
        }
        o
    }

    /// `I`.
    pub fn insert(rel: u32, new: &[TupleValue<'_>]) -> Vec<u8> {
        let mut o = vec![b'I'];
        o.extend(rel.to_be_bytes());
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    /// `U`.
    pub fn update(rel: u32, old: Option<(OldKind, &[TupleValue<'_>])>, new: &[TupleValue<'_>]) -> Vec<u8> {
        let mut o = vec![b'U'];
        o.extend(rel.to_be_bytes());
        if let Some((kind, values)) = old {
            o.push(if kind == OldKind::Key { b'K' } else { b'O' });
            tuple(&mut o, values);
        }
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    /// `D`.
    pub fn delete(rel: u32, kind: OldKind, old: &[TupleValue<'_>]) -> Vec<u8> {
        let mut o = vec![b'D'];
        o.extend(rel.to_be_bytes());
        o.push(if kind == OldKind::Key { b'K' } else { b'O' });
        tuple(&mut o, old);
        o
    }

    /// `T`.
    pub fn truncate(rels: &[u32]) -> Vec<u8> {
        let mut o = vec![b'T'];
        o.extend((rels.len() as u32).to_be_bytes());
        o.push(0);
        for r in rels {
            o.extend(r.to_be_bytes());
        }
        o
    }

    /// `M`.
    pub fn message(prefix: &str, content: &[u8]) -> Vec<u8> {
        let mut o = vec![b'M', 1];
        o.extend(7u64.to_be_bytes());
        o.extend(prefix.as_bytes());
        o.push(0);
        o.extend((content.len() as i32).to_be_bytes());
        o.extend(content);
        o
    }

    /// `O`.
    pub fn origin(name: &str) -> Vec<u8> {
        let mut o = vec![b'O'];
        o.extend(9u64.to_be_bytes());
        o.extend(name.as_bytes());
        o.push(0);
        o
    }

    /// `Y`.
    pub fn type_message(oid: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut o = vec![b'Y'];
        o.extend(oid.to_be_bytes());
        for s in [ns, name] {
            o.extend(s.as_bytes());
            o.push(0);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::encode;
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let t = TupleValue::Text(b"1");
        vec![
            encode::begin(10, 20, 30),
            encode::commit(10, 11, 20),
            encode::origin("o"),
            encode::relation(5, "public", "tasks", &[("id", 23, true), ("title", 25, false)]),
            encode::type_message(99, "public", "mood"),
            encode::insert(5, &[t, TupleValue::Null]),
            encode::update(5, None, &[t, TupleValue::UnchangedToast]),
            encode::update(
                5,
                Some((OldKind::Key, &[t, TupleValue::Null])),
                &[TupleValue::Text(b"2"), TupleValue::Text(b"x")],
            ),
            encode::update(5, Some((OldKind::Full, &[t, TupleValue::Text(b"y")])), &[t, TupleValue::Text(b"x")]),
            encode::delete(5, OldKind::Key, &[t, TupleValue::Null]),
            encode::delete(5, OldKind::Full, &[t, TupleValue::Text(b"x")]),
            encode::truncate(&[5, 6]),
            encode::message("p", b"hello"),
        ]
    }

    #[test]
    fn decodes_every_message_type() {
        let s = samples();
        assert_eq!(decode(&s[0]).unwrap(), PgOutput::Begin { final_lsn: Lsn(10), commit_time: 20, xid: 30 });
        assert_eq!(
            decode(&s[1]).unwrap(),
            PgOutput::Commit { flags: 0, commit_lsn: Lsn(10), end_lsn: Lsn(11), commit_time: 20 }
        );
        assert_eq!(decode(&s[2]).unwrap(), PgOutput::Origin { commit_lsn: Lsn(9), name: "o" });
        let PgOutput::Relation { rel, name, columns, .. } = decode(&s[3]).unwrap() else { panic!() };
        assert_eq!(
            (rel, name, columns.len(), columns[0].is_key, columns[1].type_oid),
            (Oid(5), "tasks", 2, true, Oid(25))
        );
        assert_eq!(decode(&s[4]).unwrap(), PgOutput::Type { oid: Oid(99), namespace: "public", name: "mood" });
        assert_eq!(
            decode(&s[5]).unwrap(),
            PgOutput::Insert { rel: Oid(5), new: vec![TupleValue::Text(b"1"), TupleValue::Null] }
        );
        let PgOutput::Update { old: None, new, .. } = decode(&s[6]).unwrap() else { panic!() };
        assert_eq!(new[1], TupleValue::UnchangedToast);
        let PgOutput::Update { old: Some(old), .. } = decode(&s[7]).unwrap() else { panic!() };
        assert_eq!(old.kind, OldKind::Key);
        let PgOutput::Update { old: Some(old), .. } = decode(&s[8]).unwrap() else { panic!() };
        assert_eq!(old.kind, OldKind::Full);
        let PgOutput::Delete { old, .. } = decode(&s[9]).unwrap() else { panic!() };
        assert_eq!(old.kind, OldKind::Key);
        assert!(matches!(decode(&s[10]).unwrap(), PgOutput::Delete { .. }));
        assert_eq!(decode(&s[11]).unwrap(), PgOutput::Truncate { options: 0, relations: vec![Oid(5), Oid(6)] });
        assert_eq!(
            decode(&s[12]).unwrap(),
            PgOutput::Message { transactional: true, lsn: Lsn(7), prefix: "p", content: b"hello" }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for msg in samples() {
            for cut in 0..msg.len() {
                assert!(decode(&msg[..cut]).is_err(), "{:?} cut at {cut}", msg[0] as char);
            }
            let mut longer = msg.clone();
            longer.push(0);
            assert!(matches!(decode(&longer).unwrap_err().kind, DecodeErrorKind::TrailingBytes(1)));
        }
    }

    #[test]
    fn hostile_counts_and_tags() {
        // 30000 columns announced with 3 bytes left.
        let mut m = vec![b'I', 0, 0, 0, 5, b'N'];
        m.extend(30_000i16.to_be_bytes());
        m.extend([b'n', b'n', b'n']);
        let err = decode(&m).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::CountTooLarge(_) | DecodeErrorKind::InvalidLength(_)), "{err}");
        let mut m = vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b't'];
        m.extend((-5i32).to_be_bytes());
        assert_eq!(decode(&m).unwrap_err().kind, DecodeErrorKind::InvalidLength(-5));
        let m = vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b'z'];
        assert_eq!(decode(&m).unwrap_err(), DecodeError { offset: 8, kind: DecodeErrorKind::UnknownTag(b'z') });
        let m = vec![b'I', 0, 0, 0, 5, b'X'];
        assert_eq!(decode(&m).unwrap_err().kind, DecodeErrorKind::UnknownTag(b'X'));
        assert_eq!(decode(b"Q").unwrap_err().kind, DecodeErrorKind::UnknownTag(b'Q'));
        let mut t = vec![b'T'];
        t.extend(u32::MAX.to_be_bytes());
        t.push(0);
        assert!(matches!(decode(&t).unwrap_err().kind, DecodeErrorKind::CountTooLarge(_)));
        let mut d = vec![b'D', 0, 0, 0, 5, b'N'];
        d.extend([0, 0]);
        assert_eq!(decode(&d).unwrap_err().kind, DecodeErrorKind::UnknownTag(b'N'));
    }

    /// Writes the fuzz seeds when the corpus directory is missing (a fresh checkout has them
    /// committed, so this only ever checks that they exist).
    #[test]
    fn fuzz_seeds_exist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pgoutput");
        if std::fs::read_dir(&dir).map(|d| d.count() == 0).unwrap_or(true) {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in samples().iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
            }
        }
        assert!(std::fs::read_dir(&dir).unwrap().count() > 0);
    }
}
