//! Entry points shared by the `fuzz/` targets and the corpus replay in `cargo test`: each takes
//! arbitrary bytes and must never panic, whatever they hold.

use std::time::{Duration, SystemTime};

/// Request bodies: the body parser and every endpoint's decoder.
pub fn request_body(data: &[u8]) {
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
}

/// Connection strings and client timestamps.
pub fn text_inputs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::pgurl::parse(&text);
    let _ = crate::time::parse_client_timestamp(&text);
    let _ = crate::version::parse(&text);
    let _ = crate::checksum::record_checksum(&text);
}

/// pgoutput messages.
pub fn pgoutput(data: &[u8]) {
    let _ = crate::wire::pgoutput::decode(data);
}

/// A stream of backend frames, with replication payloads and pgoutput inside CopyData.
pub fn frame(data: &[u8]) {
    use crate::wire::backend::{self, BackendMessage, ReplicationMessage};
    let mut rest = data;
    while let Ok(Some((frame, used))) = backend::next_frame(rest, 1 << 20) {
        if let Ok(BackendMessage::CopyData(payload)) = backend::decode(frame) {
            if let Ok(ReplicationMessage::XLogData { data, .. }) = backend::decode_replication(payload) {
                let _ = crate::wire::pgoutput::decode(data);
            }
        }
        rest = &rest[used..];
    }
}
