//! JSON Web Tokens: decoding, the shared claim checks, and HMAC verification (HS256, HS384, HS512).
//!
//! Verification order: shape (three base64url parts), header (a `crit` parameter is refused:
//! we understand no extension, and RFC 7515 §4.1.11 says a token naming one we do not
//! understand MUST be rejected; `alg` must be one the configured
//! key type verifies: `none` is always refused, and HMAC mode refuses every asymmetric
//! algorithm, so a token cannot pick a weaker check than the one configured), signature
//! (constant-time for HMAC), then registered claims (`exp`, `nbf` with a small leeway, optional
//! `iss` and `aud`), then the user claim. [`verify`] is that sequence with the signature step
//! supplied by the caller: [`verify_hmac`] here, the JWKS verifier in `crate::jwks`. Nothing
//! here logs the token.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

use crate::types::UserId;

/// Tokens larger than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. The variant is logged; clients only see the contract's message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, or over [`MAX_TOKEN_BYTES`].
    Malformed(&'static str),
    /// The header names an algorithm this key type does not verify (`none`, RS256, ...).
    AlgorithmNotAllowed(String),
    /// The header has a `crit` parameter: extensions the token says must be understood, and
    /// we understand none (RFC 7515 §4.1.11).
    CriticalHeader,
    /// The signature does not verify.
    BadSignature,
    /// No key of the configured key set matches the token's `kid` (or, without `kid`, its `alg`).
    UnknownKey {
        /// The token's `kid`, if it has one.
        kid: Option<String>,
    },
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` differs from the configured issuer.
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    WrongAudience,
    /// The payload is not a JSON object.
    ClaimsNotObject,
    /// The configured user claim is missing, empty or only whitespace, not a string or integer,
    /// or not usable as a user id (NUL, too long: see `types::UserId::new`).
    MissingUserClaim,
}

impl JwtError {
    /// The contract's 401 body message for this failure (§2.3).
    pub fn client_message(&self) -> &'static str {
        match self {
            JwtError::ClaimsNotObject => "invalid token claims",
            JwtError::MissingUserClaim => "token missing user claim",
            _ => "invalid token",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::AlgorithmNotAllowed(alg) => write!(f, "token algorithm {alg:?} is not allowed for this key"),
            JwtError::CriticalHeader => f.write_str("token header has crit parameters, and none is understood"),
            JwtError::BadSignature => f.write_str("bad token signature"),
            // The kid comes from the request: bounded so a huge one cannot flood the log.
            JwtError::UnknownKey { kid: Some(kid) } => {
                write!(f, "no key with kid {:?} in the key set", kid.chars().take(64).collect::<String>())
            }
            JwtError::UnknownKey { kid: None } => f.write_str("token has no kid and no key of its algorithm matches"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::WrongIssuer => f.write_str("token issuer mismatch"),
            JwtError::WrongAudience => f.write_str("token audience mismatch"),
            JwtError::ClaimsNotObject => f.write_str("token claims are not a JSON object"),
            JwtError::MissingUserClaim => f.write_str("token has no usable user claim"),
        }
    }
}

impl std::error::Error for JwtError {}

/// What a valid token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// The claim holding the user id (`JWT_USER_CLAIM`, default `sub`).
    pub user_claim: String,
    /// Required `iss`, when configured.
    pub issuer: Option<String>,
    /// Required member of `aud`, when configured.
    pub audience: Option<String>,
    /// Tolerated clock skew for `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules { user_claim: "sub".into(), issuer: None, audience: None, leeway: Duration::from_secs(30) }
    }
}

/// The three parts of a compact token, decoded but not yet verified.
#[derive(Debug)]
pub struct DecodedToken<'a> {
    /// The parsed header object.
    pub header: Map<String, Value>,
    /// The raw payload bytes (JSON).
    pub payload: Vec<u8>,
    /// `header.payload`, the signed input.
    pub signing_input: &'a [u8],
    /// The decoded signature bytes.
    pub signature: Vec<u8>,
}

impl DecodedToken<'_> {
    /// The header's `alg`, or an empty string.
    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    /// The header's `kid`, if any.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
}

/// Splits and base64url-decodes a compact JWS without verifying anything.
pub fn decode(token: &str) -> Result<DecodedToken<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("token too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    let b64 = |part: &str, what: &'static str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed(what));
    let header_bytes = b64(h, "header is not base64url")?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    let payload = b64(p, "payload is not base64url")?;
    let signature = b64(s, "signature is not base64url")?;
    let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
    Ok(DecodedToken { header, payload, signing_input, signature })
}

fn hmac_ok<M: Mac + KeyInit>(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    match <M as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input);
            // verify_slice compares in constant time.
            mac.verify_slice(signature).is_ok()
        }
        Err(_) => false,
    }
}

/// The whole verification sequence: decode, `check_signature` (which must refuse any `alg` its
/// key type does not verify, `none` included), then [`check_claims`]. Every verifier goes
/// through here so the claim rules cannot drift between key types.
pub fn verify(
    token: &str,
    rules: &ClaimRules,
    now: SystemTime,
    check_signature: impl FnOnce(&DecodedToken<'_>) -> Result<(), JwtError>,
) -> Result<UserId, JwtError> {
    let decoded = decode(token)?;
    // Whatever it lists (even nothing, which the RFC forbids): no extension is understood here.
    if decoded.header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    check_signature(&decoded)?;
    check_claims(&decoded.payload, rules, now)
}

/// Verifies an HS256/HS384/HS512 token with `secret` and returns the user id.
pub fn verify_hmac(token: &str, secret: &[u8], rules: &ClaimRules, now: SystemTime) -> Result<UserId, JwtError> {
    verify(token, rules, now, |decoded| {
        let ok = match decoded.alg() {
            "HS256" => hmac_ok::<Hmac<Sha256>>(secret, decoded.signing_input, &decoded.signature),
            "HS384" => hmac_ok::<Hmac<Sha384>>(secret, decoded.signing_input, &decoded.signature),
            "HS512" => hmac_ok::<Hmac<Sha512>>(secret, decoded.signing_input, &decoded.signature),
            other => return Err(JwtError::AlgorithmNotAllowed(other.to_string())),
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    })
}

/// Checks the registered claims and extracts the (lower-cased) user id from a verified payload.
pub fn check_claims(payload: &[u8], rules: &ClaimRules, now: SystemTime) -> Result<UserId, JwtError> {
    let claims: Value = serde_json::from_slice(payload).map_err(|_| JwtError::ClaimsNotObject)?;
    let claims = claims.as_object().ok_or(JwtError::ClaimsNotObject)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let leeway = rules.leeway.as_secs_f64();
    let numeric = |key: &str| -> Result<Option<f64>, JwtError> {
        match claims.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(JwtError::Malformed("exp/nbf must be numeric dates")),
        }
    };
    if let Some(exp) = numeric("exp")? {
        if now_secs >= exp + leeway {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = numeric("nbf")? {
        if now_secs + leeway < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iss) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(aud) = &rules.audience {
        let matches = match claims.get("aud") {
            Some(Value::String(s)) => s == aud,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(aud.as_str())),
            _ => false,
        };
        if !matches {
            return Err(JwtError::WrongAudience);
        }
    }
    let raw = match claims.get(&rules.user_claim) {
        Some(Value::String(s)) => s.clone(),
        // Numeric user ids are common in existing identity providers; integers only, so the
        // text form is unambiguous (no `1e+06`).
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(JwtError::MissingUserClaim),
    };
    UserId::new(&raw).ok_or(JwtError::MissingUserClaim)
}

/// Builds a compact token from a header, claims and a signing function over `header.payload`
/// (tests, tools and examples; the server only verifies).
pub fn encode(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Signs claims with HS256 (tests, tools and examples; the server only verifies).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    encode(&serde_json::json!({"alg": "HS256", "typ": "JWT"}), claims, |input| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rules() -> ClaimRules {
        ClaimRules { leeway: Duration::from_secs(5), ..ClaimRules::default() }
    }

    fn with_header(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        encode(header, claims, sign)
    }

    fn hs256(input: &[u8]) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
        m.update(input);
        m.finalize().into_bytes().to_vec()
    }

    #[test]
    fn valid_tokens_yield_lower_cased_user_ids() {
        let token = sign_hs256(&json!({"sub": "ABC-1", "exp": 2000}), SECRET);
        assert_eq!(verify_hmac(&token, SECRET, &rules(), at(1000)).unwrap().as_str(), "abc-1");
        let token = sign_hs256(&json!({"sub": 42}), SECRET);
        assert_eq!(verify_hmac(&token, SECRET, &rules(), at(1000)).unwrap().as_str(), "42");
    }

    #[test]
    fn hs384_and_hs512_verify() {
        for (alg, sign) in [
            (
                "HS384",
                Box::new(|i: &[u8]| {
                    let mut m = <Hmac<Sha384> as KeyInit>::new_from_slice(SECRET).unwrap();
                    m.update(i);
                    m.finalize().into_bytes().to_vec()
                }) as Box<dyn Fn(&[u8]) -> Vec<u8>>,
            ),
            (
                "HS512",
                Box::new(|i: &[u8]| {
                    let mut m = <Hmac<Sha512> as KeyInit>::new_from_slice(SECRET).unwrap();
                    m.update(i);
                    m.finalize().into_bytes().to_vec()
                }),
            ),
        ] {
            let token = with_header(&json!({"alg": alg}), &json!({"sub": "u"}), sign);
            assert_eq!(verify_hmac(&token, SECRET, &rules(), at(0)).unwrap().as_str(), "u", "{alg}");
        }
    }

    #[test]
    fn every_failure_is_typed() {
        let good = sign_hs256(&json!({"sub": "u"}), SECRET);
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let forged_payload = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#));
        let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        sig[0] ^= 1;
        let forged_sig = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig));
        let none = with_header(&json!({"alg": "none"}), &json!({"sub": "u"}), |_| Vec::new());
        let rs = with_header(&json!({"alg": "RS256"}), &json!({"sub": "u"}), |_| vec![1, 2, 3]);
        let r = rules();
        let strict = ClaimRules { issuer: Some("iss-a".into()), audience: Some("aud-a".into()), ..rules() };
        let cases: Vec<(String, &ClaimRules, JwtError)> = vec![
            ("a.b".into(), &r, JwtError::Malformed("expected three dot-separated parts")),
            ("a.b.c.d".into(), &r, JwtError::Malformed("expected three dot-separated parts")),
            ("!!.b.c".into(), &r, JwtError::Malformed("header is not base64url")),
            (format!("{}.e30.", URL_SAFE_NO_PAD.encode("[]")), &r, JwtError::Malformed("header is not a JSON object")),
            ("x".repeat(MAX_TOKEN_BYTES + 1), &r, JwtError::Malformed("token too large")),
            (forged_payload, &r, JwtError::BadSignature),
            (forged_sig, &r, JwtError::BadSignature),
            (none, &r, JwtError::AlgorithmNotAllowed("none".into())),
            (rs, &r, JwtError::AlgorithmNotAllowed("RS256".into())),
            (sign_hs256(&json!({"sub": "u", "exp": 990}), SECRET), &r, JwtError::Expired),
            (sign_hs256(&json!({"sub": "u", "nbf": 1010}), SECRET), &r, JwtError::NotYetValid),
            (
                sign_hs256(&json!({"sub": "u", "exp": "soon"}), SECRET),
                &r,
                JwtError::Malformed("exp/nbf must be numeric dates"),
            ),
            (sign_hs256(&json!({"sub": "u", "iss": "other", "aud": "aud-a"}), SECRET), &strict, JwtError::WrongIssuer),
            (sign_hs256(&json!({"sub": "u", "iss": "iss-a", "aud": ["x"]}), SECRET), &strict, JwtError::WrongAudience),
            (sign_hs256(&json!(["not", "object"]), SECRET), &r, JwtError::ClaimsNotObject),
            (sign_hs256(&json!({"sub": ""}), SECRET), &r, JwtError::MissingUserClaim),
            (sign_hs256(&json!({"sub": " \t"}), SECRET), &r, JwtError::MissingUserClaim),
            (sign_hs256(&json!({"sub": "a\u{0}b"}), SECRET), &r, JwtError::MissingUserClaim),
            (
                with_header(&json!({"alg": "HS256", "crit": ["exp"]}), &json!({"sub": "u"}), hs256),
                &r,
                JwtError::CriticalHeader,
            ),
            (
                with_header(&json!({"alg": "HS256", "crit": []}), &json!({"sub": "u"}), hs256),
                &r,
                JwtError::CriticalHeader,
            ),
            (sign_hs256(&json!({"sub": 1.5}), SECRET), &r, JwtError::MissingUserClaim),
            (sign_hs256(&json!({"name": "u"}), SECRET), &r, JwtError::MissingUserClaim),
        ];
        for (token, rules, want) in cases {
            assert_eq!(verify_hmac(&token, SECRET, rules, at(1000)), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn leeway_and_audience_lists() {
        let r = rules();
        let token = sign_hs256(&json!({"sub": "u", "exp": 998, "nbf": 1003}), SECRET);
        assert!(verify_hmac(&token, SECRET, &r, at(1000)).is_ok(), "within 5 s leeway on both sides");
        let strict = ClaimRules { issuer: Some("i".into()), audience: Some("a".into()), ..rules() };
        let token = sign_hs256(&json!({"sub": "u", "iss": "i", "aud": ["x", "a"]}), SECRET);
        assert!(verify_hmac(&token, SECRET, &strict, at(1000)).is_ok());
        assert!(verify_hmac(&token, b"other-secret", &strict, at(1000)).is_err());
    }

    #[test]
    fn client_messages_follow_the_contract() {
        assert_eq!(JwtError::Expired.client_message(), "invalid token");
        assert_eq!(JwtError::ClaimsNotObject.client_message(), "invalid token claims");
        assert_eq!(JwtError::MissingUserClaim.client_message(), "token missing user claim");
    }
}
