//! JSON Web Key sets: parsing (RFC 7517/7518) and signature verification with `ring`. No I/O.
//!
//! Only signature keys this server can verify are kept: RSA (`RS256`, `RS384`, `RS512`) and EC
//! P-256/P-384 (`ES256`, `ES384`). Everything else in a set (symmetric `oct` keys, `OKP`,
//! P-521, encryption keys, keys whose `alg` names something else) is skipped and logged at
//! debug, so one exotic key does not make the whole set unusable.
//!
//! Algorithm confusion is ruled out by construction: a token's `alg` must be one of the
//! asymmetric [`Algorithm`]s (never `none`, never `HS*`), and it is only ever checked against a
//! key of the matching type (and curve), whose own `alg`, when present, must agree.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

/// The asymmetric JWS algorithms accepted with JWKS keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
}

impl Algorithm {
    /// The algorithm a JWS header names, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            _ => return None,
        })
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
        }
    }
}

/// An EC curve we verify on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (`ES256`).
    P256,
    /// NIST P-384 (`ES384`).
    P384,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// The public part of a usable key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and exponent, big-endian without leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// An EC point in uncompressed form, `0x04 || x || y`.
    Ec {
        /// The curve.
        curve: Curve,
        /// The uncompressed point.
        point: Vec<u8>,
    },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            PublicKey::Ec { curve, .. } => write!(f, "Ec({curve:?})"),
        }
    }
}

/// One usable key of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// The key id, if the set gives one.
    pub kid: Option<String>,
    /// The key's own `alg`, if the set gives one (then tokens must use exactly it).
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: PublicKey,
}

impl Jwk {
    /// Whether a token signed with `alg` may be checked against this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        matches!(
            (alg, &self.key),
            (Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512, PublicKey::Rsa { .. })
                | (Algorithm::ES256, PublicKey::Ec { curve: Curve::P256, .. })
                | (Algorithm::ES384, PublicKey::Ec { curve: Curve::P384, .. })
        )
    }

    /// Verifies `signature` over `input` with this key; false when it does not verify or the
    /// key does not accept `alg`.
    pub fn verify(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA256,
                };
                RsaPublicKeyComponents { n, e }.verify(params, input, signature).is_ok()
            }
            PublicKey::Ec { curve, point } => {
                let params = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(params, point).verify(input, signature).is_ok()
            }
        }
    }
}

/// The usable keys of a JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

/// Why a JWKS document is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySetError {
    /// Not a JSON object with a `keys` array.
    NotAKeySet,
    /// The set holds no key this server can verify with (`skipped` were ignored).
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
}

impl fmt::Display for KeySetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySetError::NotAKeySet => f.write_str("not a JWK set (expected a JSON object with a \"keys\" array)"),
            KeySetError::NoUsableKeys { skipped } => {
                write!(
                    f,
                    "no usable signature key in the set ({skipped} RSA/EC-P256/EC-P384 keys expected, others skipped)"
                )
            }
        }
    }
}

impl std::error::Error for KeySetError {}

/// How a token's `kid` and `alg` resolve against a set.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// These keys may verify the token (one for a `kid`; every compatible key without one).
    Candidates(Vec<&'a Jwk>),
    /// No key has this `kid` (or, without a `kid`, no key accepts the algorithm): refreshing the
    /// set may help.
    Unknown,
    /// The `kid` names a key of another type or algorithm: an algorithm-confusion attempt or a
    /// misconfigured issuer. Refreshing does not help.
    Mismatch,
}

/// Decodes a base64url member, as the JWK spec requires (unpadded; padding tolerated).
fn b64_member(jwk: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let raw = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing {name:?}"))?;
    URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).map_err(|_| format!("{name:?} is not base64url"))
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Parses one JWK, or says why it is skipped.
fn parse_jwk(value: &Value) -> Result<Jwk, String> {
    let jwk = value.as_object().ok_or("not an object")?;
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(use_) = text("use") {
        if use_ != "sig" {
            return Err(format!("use {use_:?} is not \"sig\""));
        }
    }
    let alg = match text("alg") {
        None => None,
        Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| format!("alg {name:?} is not supported"))?),
    };
    let key = match text("kty") {
        Some("RSA") => {
            let n = strip_leading_zeros(b64_member(jwk, "n")?);
            let e = strip_leading_zeros(b64_member(jwk, "e")?);
            if n.len() * 8 < 2048 || e.is_empty() {
                return Err("RSA modulus shorter than 2048 bits or empty exponent".into());
            }
            PublicKey::Rsa { n, e }
        }
        Some("EC") => {
            let curve = match text("crv") {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                other => return Err(format!("curve {:?} is not supported", other.unwrap_or(""))),
            };
            let (x, y) = (b64_member(jwk, "x")?, b64_member(jwk, "y")?);
            if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
                return Err("EC coordinates have the wrong length for the curve".into());
            }
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::Ec { curve, point }
        }
        other => return Err(format!("kty {:?} is not supported", other.unwrap_or(""))),
    };
    let kid = text("kid").map(str::to_string);
    let jwk = Jwk { kid, alg, key };
    if jwk.alg.is_some_and(|a| !jwk.accepts(a)) {
        return Err("alg does not match the key type".into());
    }
    Ok(jwk)
}

impl KeySet {
    /// Parses a JWKS document, keeping the usable keys. `skipped(kid, why)` is called for every
    /// key left out.
    pub fn parse(document: &[u8], mut skipped: impl FnMut(Option<&str>, &str)) -> Result<KeySet, KeySetError> {
        let doc: Value = serde_json::from_slice(document).map_err(|_| KeySetError::NotAKeySet)?;
        let items = doc.get("keys").and_then(Value::as_array).ok_or(KeySetError::NotAKeySet)?;
        let mut keys = Vec::new();
        for item in items {
            match parse_jwk(item) {
                Ok(jwk) => keys.push(jwk),
                Err(why) => skipped(item.get("kid").and_then(Value::as_str), &why),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKeys { skipped: items.len() });
        }
        Ok(KeySet { keys })
    }

    /// A set of the given keys.
    pub fn from_keys(keys: Vec<Jwk>) -> KeySet {
        KeySet { keys }
    }

    /// The usable keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// The keys that may verify a token with `alg` and `kid`.
    pub fn select(&self, alg: Algorithm, kid: Option<&str>) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let named: Vec<&Jwk> = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if named.is_empty() {
                    return Selection::Unknown;
                }
                let usable: Vec<&Jwk> = named.into_iter().filter(|k| k.accepts(alg)).collect();
                if usable.is_empty() {
                    Selection::Mismatch
                } else {
                    Selection::Candidates(usable)
                }
            }
            None => {
                let usable: Vec<&Jwk> = self.keys.iter().filter(|k| k.accepts(alg)).collect();
                if usable.is_empty() {
                    Selection::Unknown
                } else {
                    Selection::Candidates(usable)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ec_key() -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec1", "x": b64(&point[1..33]), "y": b64(&point[33..])});
        (pair, jwk)
    }

    fn rsa_jwk(kid: &str) -> Value {
        let mut n = vec![0u8, 0xc5];
        n.extend(std::iter::repeat_n(0x11, 255));
        json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": "AQAB", "alg": "RS256", "use": "sig"})
    }

    fn parse(doc: &Value) -> (Result<KeySet, KeySetError>, Vec<String>) {
        let mut skipped = Vec::new();
        let set = KeySet::parse(doc.to_string().as_bytes(), |kid, why| skipped.push(format!("{kid:?}: {why}")));
        (set, skipped)
    }

    #[test]
    fn usable_keys_are_kept_and_others_skipped_with_a_reason() {
        let (_, ec) = ec_key();
        let doc = json!({"keys": [
            rsa_jwk("r1"), ec,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            rsa_jwk("wrong-alg").as_object().map(|o| { let mut o = o.clone(); o.insert("alg".into(), json!("ES256")); o }).unwrap(),
            "not an object",
        ]});
        let (set, skipped) = parse(&doc);
        let set = set.unwrap();
        assert_eq!(set.keys().len(), 2);
        assert_eq!(set.keys()[0].kid.as_deref(), Some("r1"));
        assert_eq!(set.keys()[0].alg, Some(Algorithm::RS256));
        match &set.keys()[0].key {
            PublicKey::Rsa { n, e } => {
                assert_eq!((n.len(), e.as_slice()), (256, &[1u8, 0, 1][..]), "leading zero stripped")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(skipped.len(), 11, "{skipped:#?}");
        for want in [
            "kty \"oct\"",
            "kty \"OKP\"",
            "curve \"P-521\"",
            "wrong length",
            "2048",
            "not base64url",
            "missing \"n\"",
            "use \"enc\"",
            "PS256",
            "does not match",
            "not an object",
        ] {
            assert!(skipped.iter().any(|s| s.contains(want)), "{want}: {skipped:#?}");
        }
    }

    #[test]
    fn unusable_documents_are_errors() {
        assert_eq!(parse(&json!([1])).0, Err(KeySetError::NotAKeySet));
        assert_eq!(parse(&json!({"keys": {}})).0, Err(KeySetError::NotAKeySet));
        assert_eq!(parse(&json!({"keys": [{"kty": "oct"}]})).0, Err(KeySetError::NoUsableKeys { skipped: 1 }));
        assert_eq!(KeySet::parse(b"{not json", |_, _| {}), Err(KeySetError::NotAKeySet));
    }

    #[test]
    fn selection_by_kid_and_algorithm() {
        let (_, ec) = ec_key();
        let set = parse(&json!({"keys": [rsa_jwk("r1"), rsa_jwk("r2"), ec]})).0.unwrap();
        let kids = |s: Selection<'_>| match s {
            Selection::Candidates(keys) => keys.iter().map(|k| k.kid.clone().unwrap()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kids(set.select(Algorithm::RS256, Some("r2"))), ["r2"]);
        assert_eq!(kids(set.select(Algorithm::RS256, None)), ["r1", "r2"]);
        assert_eq!(kids(set.select(Algorithm::ES256, None)), ["ec1"]);
        assert_eq!(set.select(Algorithm::RS256, Some("ec1")), Selection::Mismatch, "RSA token, EC key");
        assert_eq!(set.select(Algorithm::ES256, Some("r1")), Selection::Mismatch, "EC token, RSA key");
        assert_eq!(set.select(Algorithm::RS384, Some("r1")), Selection::Mismatch, "key pinned to RS256");
        assert_eq!(set.select(Algorithm::ES384, None), Selection::Unknown);
        assert_eq!(set.select(Algorithm::RS256, Some("r9")), Selection::Unknown);
    }

    #[test]
    fn es256_signatures_verify_and_tampering_does_not() {
        let (pair, ec) = ec_key();
        let set = parse(&json!({"keys": [ec]})).0.unwrap();
        let key = &set.keys()[0];
        let sig = pair.sign(&SystemRandom::new(), b"input").unwrap();
        assert!(key.verify(Algorithm::ES256, b"input", sig.as_ref()));
        assert!(!key.verify(Algorithm::ES256, b"inpuT", sig.as_ref()));
        let mut bad = sig.as_ref().to_vec();
        bad[10] ^= 1;
        assert!(!key.verify(Algorithm::ES256, b"input", &bad));
        assert!(!key.verify(Algorithm::RS256, b"input", sig.as_ref()), "wrong family");
        assert!(!key.verify(Algorithm::ES384, b"input", sig.as_ref()), "wrong curve");
    }

    #[test]
    fn rs256_signatures_verify_with_the_fixture_key() {
        let der = include_bytes!("../../tests/fixtures/jwks-test-rsa-2048.pk8.der");
        let pair = signature::RsaKeyPair::from_pkcs8(der).unwrap();
        let public: RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
        let doc = json!({"keys": [{"kty": "RSA", "kid": "r", "n": b64(&public.n), "e": b64(&public.e)}]});
        let set = parse(&doc).0.unwrap();
        let key = &set.keys()[0];
        for (alg, params) in [
            (Algorithm::RS256, &signature::RSA_PKCS1_SHA256),
            (Algorithm::RS384, &signature::RSA_PKCS1_SHA384),
            (Algorithm::RS512, &signature::RSA_PKCS1_SHA512),
        ] {
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(params, &SystemRandom::new(), b"input", &mut sig).unwrap();
            assert!(key.verify(alg, b"input", &sig), "{alg:?}");
            assert!(!key.verify(alg, b"Input", &sig), "{alg:?}");
        }
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), b"input", &mut sig).unwrap();
        assert!(!key.verify(Algorithm::RS512, b"input", &sig), "hash must match alg");
    }

    #[test]
    fn only_asymmetric_algorithms_are_named() {
        for bad in ["none", "HS256", "PS256", "EdDSA", "ES512", "rs256", ""] {
            assert_eq!(Algorithm::from_name(bad), None, "{bad}");
        }
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::ES256, Algorithm::ES384] {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
    }
}
