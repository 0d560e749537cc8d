//! Entry points shared by the `fuzz/` targets and the corpus replay in `cargo test`: each takes
//! arbitrary bytes and must never panic, whatever they hold.

use std::time::{Duration, SystemTime};

/// Request bodies: the body parser and every endpoint's decoder.
pub fn request_body(data: &[u8]) {
    crate::protocol::pull_decodings_agree(data);
    if let Ok(body) = crate::http::routes::parse_object(data) {
        let _ = crate::protocol::RegisterRequest::decode(&body);
        let _ = crate::protocol::PullRequest::decode(&body);
        let _ = crate::protocol::PushRequest::decode(&body);
        let _ = crate::protocol::SnapshotRequest::decode(&body);
        let _ = crate::protocol::RebuildRequest::decode(&body);
    }
}

/// Bearer tokens: splitting, decoding, verification and claim checks.
pub fn jwt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let rules = crate::jwt::ClaimRules::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = crate::jwt::verify_hmac(&text, b"fuzz-secret", &rules, now);
    let _ = crate::jwt::check_claims(data, &rules, now);
    #[cfg(feature = "jwks")]
    {
        let keys = fuzz_key_set();
        let _ = crate::jwt::verify(&text, &rules, now, |t| crate::jwks::verify_signature(&keys, t));
    }
}

/// A fixed key set for the JWT target: one RSA and one P-256 key (public values only).
#[cfg(feature = "jwks")]
fn fuzz_key_set() -> crate::jwks::keys::KeySet {
    use crate::jwks::keys::{Curve, Jwk, KeySet, PublicKey};
    let mut n = vec![0xc5u8];
    n.extend(std::iter::repeat_n(0x3b, 255));
    // The P-256 generator point: a valid public key.
    let mut point = vec![0x04];
    point.extend_from_slice(&[
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03,
        0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2,
        0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31,
        0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
    ]);
    KeySet::from_keys(vec![
        Jwk { kid: Some("r".into()), alg: None, key: PublicKey::Rsa { n, e: vec![1, 0, 1] } },
        Jwk { kid: Some("e".into()), alg: None, key: PublicKey::Ec { curve: Curve::P256, point } },
    ])
}

/// JWKS documents and `Cache-Control` values.
#[cfg(feature = "jwks")]
pub fn jwks(data: &[u8]) {
    let _ = crate::jwks::keys::KeySet::parse(data, |_, _| {});
    let _ = crate::jwks::cache::cache_control_max_age(&String::from_utf8_lossy(data));
}

/// HTTP responses as our GET client reads them (head, Content-Length, chunked, to end).
#[cfg(feature = "jwks")]
pub fn http_response(data: &[u8]) {
    let _ = crate::http_get::read_response(data, 4096);
}

/// HTTP request heads as our server reads them: the incremental scanner must reach the same
/// verdict whether the bytes arrive at once or split (at a point the input chooses), a complete
/// head goes through the parser, and the connection state machine consumes the whole input
/// (pipelined requests, bodies, refusals) with bounded steps and returns every reserved byte.
pub fn http_head(data: &[u8]) {
    use crate::http::budget::Budget;
    use crate::http::head::{parse_head, HeadLimits, HeadScanner};
    use crate::http::inbound::{Inbound, InboundLimits, Step};
    let limits = HeadLimits { max_bytes: 4096, max_headers: 32 };
    let whole = HeadScanner::new().scan(data, &limits);
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut scanner = HeadScanner::new();
    let split = match scanner.scan(&data[..cut], &limits) {
        Ok(None) => scanner.scan(data, &limits),
        decided => decided,
    };
    assert_eq!(whole, split, "the split at {cut} changed the verdict");
    if let Ok(Some(len)) = whole {
        let _ = parse_head(&data[..len], &limits);
    }
    let budget = Budget::new(1 << 20);
    {
        let mut inbound = Inbound::new(InboundLimits { head: limits, max_body: 1024, retry_after: 1 }, &budget);
        for piece in [&data[..cut], &data[cut..]] {
            if !inbound.push(piece) {
                break;
            }
            let mut steps = 0;
            while !matches!(inbound.next_step(), Step::NeedMore) {
                steps += 1;
                assert!(steps <= data.len() + 2, "the state machine does not consume its input");
            }
        }
    }
    assert_eq!(budget.used(), 0, "reserved bytes not returned");
}

/// Chunked request bodies: decoding in one piece and in two agrees, and never exceeds the limit.
pub fn chunked(data: &[u8]) {
    use crate::http::chunked::ChunkedDecoder;
    let limit = 2048;
    let decode = |pieces: &[&[u8]]| {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in pieces {
            if decoder.is_done() {
                break;
            }
            match decoder.decode(piece, &mut out) {
                Ok(n) => used += n,
                Err(e) => return Err(e),
            }
        }
        assert!(out.len() <= limit, "decoded past the limit");
        Ok((out, used, decoder.is_done()))
    };
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    assert_eq!(decode(&[data]), decode(&[&data[..cut], &data[cut..]]), "the split at {cut} changed the result");
}

/// Connection strings and client timestamps.
pub fn text_inputs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::pg::url::parse(&text);
    let _ = crate::pg::url::redact(&text);
    let _ = crate::protocol::DebugRequest::decode(Some(&text));
    let _ = crate::time::parse_client_timestamp(&text);
    let _ = crate::version::parse(&text);
    let _ = crate::checksum::record_checksum(&text);
    // The text of a column of each rendered kind, as pgoutput would send it.
    for oid in [16, 17, 20, 25, 114, 700, 1082, 1083, 1114, 1184, 1186, 1700, 3802, 1000, 1007, 1009, 1185, 1231, 3807]
    {
        let columns = [crate::capture::events::RelColumn { name: "c".into(), type_oid: crate::types::Oid(oid) }];
        let _ = crate::capture::row_json::canonical_row(
            &columns,
            &[oid],
            &[crate::capture::events::ColumnValue::Text(text.to_string())],
        );
    }
}

/// pgoutput messages.
pub fn pgoutput(data: &[u8]) {
    let _ = crate::pg::wire::pgoutput::decode(data);
}

/// A stream of backend frames, with replication payloads and pgoutput inside CopyData.
pub fn frame(data: &[u8]) {
    use crate::pg::wire::backend::{self, BackendMessage, ReplicationMessage};
    let mut rest = data;
    while let Ok(Some((frame, used))) = backend::next_frame(rest, 1 << 20) {
        if let Ok(BackendMessage::CopyData(payload)) = backend::decode(frame) {
            if let Ok(ReplicationMessage::XLogData { data, .. }) = backend::decode_replication(payload) {
                let _ = crate::pg::wire::pgoutput::decode(data);
            }
        }
        rest = &rest[used..];
    }
}
