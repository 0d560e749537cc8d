//! The pull request decoded straight from the body's bytes, without the intermediate
//! `serde_json::Value` tree.
//!
//! Pulls are the most frequent request, and the device of a user in many teams sends a map of
//! dozens of bucket checkpoints with every one. Building a tree of the body and then copying
//! the map into the typed request was most of synchrod's own cost of an empty pull for such a
//! user. This decoder only takes the plain shape SDKs send: an object holding nothing but the
//! request's own keys, each at most once, every value of its type or `null`. Anything else (bad
//! JSON, an unknown or repeated key, a missing required key, a value of another type) is left
//! to the general decoding ([`PullRequest::decode`]), which applies every rule of §1.3 and
//! words the error. Where this decoder succeeds, the general decoding gives the same request:
//! the tests and the `request_body` fuzz target check exactly that.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{normalise_limit, PullRequest, SchemaPair};

/// A key the contract requires to be present, whose value may still be `null`.
#[derive(Default)]
enum Required<T> {
    #[default]
    Missing,
    Present(Option<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Required<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Required<T>, D::Error> {
        Option::<T>::deserialize(d).map(Required::Present)
    }
}

impl<T: Default> Required<T> {
    fn value(self) -> Option<T> {
        match self {
            Required::Missing => None,
            Required::Present(v) => Some(v.unwrap_or_default()),
        }
    }
}

/// `bucket_checkpoints`: bucket id to position, `null` meaning 0.
struct Positions(BTreeMap<String, i64>);

impl<'de> Deserialize<'de> for Positions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Positions, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Positions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of integers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Positions, A::Error> {
                let mut map = BTreeMap::new();
                // A repeated bucket id keeps its last value, as in the general decoding.
                while let Some((bucket, position)) = entries.next_entry::<String, Option<i64>>()? {
                    map.insert(bucket, position.unwrap_or(0));
                }
                Ok(Positions(map))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullWire {
    #[serde(default)]
    client_id: Required<String>,
    checkpoint: Option<i64>,
    bucket_checkpoints: Option<Positions>,
    tables: Option<Vec<String>>,
    limit: Option<i64>,
    known_buckets: Option<Vec<String>>,
    #[serde(default)]
    schema_version: Required<i64>,
    #[serde(default)]
    schema_hash: Required<String>,
}

/// The request, when `body` has the plain shape; `None` sends it to the general decoding.
/// Strings are not validated here ([`PullRequest::validate`] follows either way).
pub(super) fn decode(body: &[u8]) -> Option<PullRequest> {
    // serde would also take a JSON array for a struct; the contract wants an object.
    let first = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    if *first != b'{' {
        return None;
    }
    // Bytes after the object are ignored (§0.2), so the deserializer is not asked to end.
    let mut de = serde_json::Deserializer::from_slice(body);
    let wire = PullWire::deserialize(&mut de).ok()?;
    Some(PullRequest {
        client_id: wire.client_id.value()?,
        checkpoint: wire.checkpoint.unwrap_or(0),
        bucket_checkpoints: wire.bucket_checkpoints.map(|p| p.0).unwrap_or_default(),
        tables: wire.tables.unwrap_or_default(),
        limit: normalise_limit(wire.limit.unwrap_or(0)),
        known_buckets: wire.known_buckets.unwrap_or_default(),
        schema: SchemaPair { version: wire.schema_version.value()?, hash: wire.schema_hash.value()? },
    })
}

/// Panics when the short way and the general decoding disagree on `body` (the fuzz target's
/// check; the general decoding is the contract).
pub(crate) fn check_agrees(body: &[u8]) {
    let Some(fast) = decode(body) else { return };
    let fast = fast.validate().map(|()| fast);
    let general = super::parse_object(body).and_then(|map| PullRequest::decode(&map));
    assert_eq!(general, fast, "{}", String::from_utf8_lossy(body));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"{"client_id":"c1","checkpoint":12,"bucket_checkpoints":{"user:u":3,"global":null,"team:7":9},
        "tables":["a","b"],"limit":50,"known_buckets":["x"],"schema_version":4,"schema_hash":"h"}"#;

    #[test]
    fn the_plain_shape_takes_the_short_way_to_the_same_request() {
        for body in [
            PLAIN,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h"}"#,
            r#"  {"client_id":null,"schema_version":null,"schema_hash":null,"checkpoint":null,"limit":null} trailing"#,
            r#"{"client_id":"c","bucket_checkpoints":{},"tables":null,"known_buckets":[],"schema_version":1,"schema_hash":"h","limit":5000}"#,
            r#"{"client_id":"c\u00e9\n","bucket_checkpoints":{"a":1,"a":2},"schema_version":-3,"schema_hash":"h","limit":-1}"#,
        ] {
            assert!(decode(body.as_bytes()).is_some(), "{body}");
            check_agrees(body.as_bytes());
        }
        let req = decode(PLAIN.as_bytes()).unwrap();
        assert_eq!(req.bucket_checkpoints.get("global"), Some(&0));
        assert_eq!(req.limit, 50);
    }

    #[test]
    fn anything_else_is_left_to_the_general_decoding() {
        for body in [
            "",
            "[]",
            r#"["c",1,null,null,100,null,1,"h"]"#,
            r#"{"client_id":"c","schema_version":1}"#,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h","other":1}"#,
            r#"{"client_id":"c","client_id":"d","schema_version":1,"schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":1.0,"schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":1e3,"schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":"1","schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":-0,"schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":99999999999999999999,"schema_hash":"h"}"#,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h","bucket_checkpoints":[]}"#,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h","bucket_checkpoints":{"a":"1"}}"#,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h","tables":["a",null]}"#,
            r#"{"client_id":"c","schema_version":1,"schema_hash":"h""#,
        ] {
            assert!(decode(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn mutated_bodies_never_decode_differently() {
        // Every prefix, and every single-byte change to a set of interesting bytes, of a plain
        // body: whatever the short way still accepts, the general decoding reads the same.
        let plain = PLAIN.as_bytes();
        for end in 0..=plain.len() {
            check_agrees(&plain[..end]);
        }
        let bytes = b" {}[]:,\"\\0123456789-+.eEnull\x00\xff";
        for at in 0..plain.len() {
            for &b in bytes {
                let mut body = plain.to_vec();
                body[at] = b;
                check_agrees(&body);
                body.insert(at, b);
                check_agrees(&body);
            }
            let mut body = plain.to_vec();
            body.remove(at);
            check_agrees(&body);
        }
    }
}
