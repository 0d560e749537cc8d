//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) and of MD5 password authentication,
//! for our own replication connection. The nonce is passed in so tests replay recorded
//! exchanges; PBKDF2 is built from `hmac` + `sha2`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Refuse servers that ask for absurd work (a hostile server could stall us for minutes).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// A failed SCRAM exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScramError {
    /// The server-first message is malformed.
    BadServerFirst(&'static str),
    /// The server's nonce does not extend ours.
    NonceMismatch,
    /// The iteration count is 0 or above [`MAX_ITERATIONS`].
    BadIterations(u64),
    /// The server-final message is malformed or carries `e=`.
    BadServerFinal(String),
    /// The server's signature is wrong: it does not know the password.
    ServerSignatureMismatch,
    /// A message arrived out of order.
    OutOfOrder,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::BadServerFirst(why) => write!(f, "malformed SCRAM server-first message: {why}"),
            ScramError::NonceMismatch => f.write_str("SCRAM server nonce does not extend the client nonce"),
            ScramError::BadIterations(n) => write!(f, "SCRAM iteration count {n} refused"),
            ScramError::BadServerFinal(why) => write!(f, "SCRAM server-final message: {why}"),
            ScramError::ServerSignatureMismatch => f.write_str("SCRAM server signature mismatch"),
            ScramError::OutOfOrder => f.write_str("SCRAM message out of order"),
        }
    }
}

impl std::error::Error for ScramError {}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// PBKDF2-HMAC-SHA-256 with one output block (32 bytes), as SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

enum State {
    Initial,
    SentClientFirst { client_first_bare: String },
    SentClientFinal { server_signature: [u8; 32] },
    Done,
}

/// A SCRAM-SHA-256 client exchange.
pub struct ScramClient {
    password: Vec<u8>,
    username: String,
    nonce: String,
    state: State,
}

impl ScramClient {
    /// A client for `password` with our `nonce` (printable, no commas). PostgreSQL ignores the
    /// SCRAM user name (it uses the startup user), so it is normally empty.
    pub fn new(username: &str, password: &[u8], nonce: String) -> ScramClient {
        ScramClient { password: password.to_vec(), username: username.to_string(), nonce, state: State::Initial }
    }

    /// The client-first message (`n,,n=<user>,r=<nonce>`).
    pub fn client_first(&mut self) -> Vec<u8> {
        let bare = format!("n={},r={}", self.username.replace('=', "=3D").replace(',', "=2C"), self.nonce);
        let msg = format!("n,,{bare}");
        self.state = State::SentClientFirst { client_first_bare: bare };
        msg.into_bytes()
    }

    /// Takes the server-first message, returns the client-final message.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentClientFirst { client_first_bare } = &self.state else { return Err(ScramError::OutOfOrder) };
        let text = std::str::from_utf8(server_first).map_err(|_| ScramError::BadServerFirst("not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = parts.next().and_then(|p| p.strip_prefix("r=")).ok_or(ScramError::BadServerFirst("no nonce"))?;
        let salt = parts.next().and_then(|p| p.strip_prefix("s=")).ok_or(ScramError::BadServerFirst("no salt"))?;
        let iters =
            parts.next().and_then(|p| p.strip_prefix("i=")).ok_or(ScramError::BadServerFirst("no iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = STANDARD.decode(salt).map_err(|_| ScramError::BadServerFirst("salt is not base64"))?;
        let iterations: u64 =
            iters.parse().map_err(|_| ScramError::BadServerFirst("iteration count is not a number"))?;
        if iterations == 0 || iterations > u64::from(MAX_ITERATIONS) {
            return Err(ScramError::BadIterations(iterations));
        }
        let salted = hi(&self.password, &salt, iterations as u32);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{text},{without_proof}");
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature.iter()) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        self.state = State::SentClientFinal { server_signature };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Verifies the server-final message (the server proves it knows the password).
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::SentClientFinal { server_signature } = &self.state else { return Err(ScramError::OutOfOrder) };
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::BadServerFinal("not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::BadServerFinal(format!("server error {e}")));
        }
        let v = text
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .ok_or_else(|| ScramError::BadServerFinal("no verifier".into()))?;
        let got = STANDARD.decode(v).map_err(|_| ScramError::BadServerFinal("verifier is not base64".into()))?;
        // Constant-time comparison through the MAC's own verifier.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"compare").expect("any key length");
        mac.update(server_signature);
        let expected = mac.finalize().into_bytes();
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"compare").expect("any key length");
        mac.update(&got);
        if mac.verify_slice(&expected).is_err() {
            return Err(ScramError::ServerSignatureMismatch);
        }
        self.state = State::Done;
        Ok(())
    }
}

/// A random SCRAM nonce (24 random bytes, base64).
pub fn random_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(STANDARD.encode(bytes))
}

/// The MD5 password response: `md5` + hex(md5(hex(md5(password + user)) + salt)).
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = inner.into_bytes();
    outer.extend_from_slice(&salt);
    format!("md5{}", hex(&Md5::digest(&outer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_exchange() {
        let mut c = ScramClient::new("user", b"pencil", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_msg = c.handle_server_first(server_first).unwrap();
        assert_eq!(
            String::from_utf8(final_msg).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
    }

    #[test]
    fn every_failure_is_typed() {
        let start = || {
            let mut c = ScramClient::new("", b"pw", "abc".into());
            c.client_first();
            c
        };
        let cases: &[(&[u8], ScramError)] = &[
            (b"s=AA==,i=1", ScramError::BadServerFirst("no nonce")),
            (b"r=abcd,i=1", ScramError::BadServerFirst("no salt")),
            (b"r=abcd,s=AA==", ScramError::BadServerFirst("no iteration count")),
            (b"r=xyz1,s=AA==,i=1", ScramError::NonceMismatch),
            (b"r=abc,s=AA==,i=1", ScramError::NonceMismatch),
            (b"r=abcd,s=!!,i=1", ScramError::BadServerFirst("salt is not base64")),
            (b"r=abcd,s=AA==,i=x", ScramError::BadServerFirst("iteration count is not a number")),
            (b"r=abcd,s=AA==,i=0", ScramError::BadIterations(0)),
            (b"r=abcd,s=AA==,i=99999999", ScramError::BadIterations(99_999_999)),
            (b"\xff", ScramError::BadServerFirst("not UTF-8")),
        ];
        for (msg, want) in cases {
            assert_eq!(start().handle_server_first(msg).unwrap_err(), *want);
        }
        let mut c = start();
        c.handle_server_first(b"r=abcd,s=AA==,i=2").unwrap();
        assert_eq!(c.verify_server_final(b"v=AAAA").unwrap_err(), ScramError::ServerSignatureMismatch);
        let mut c = start();
        c.handle_server_first(b"r=abcd,s=AA==,i=2").unwrap();
        assert!(matches!(c.verify_server_final(b"e=invalid-proof"), Err(ScramError::BadServerFinal(_))));
        let mut c = start();
        c.handle_server_first(b"r=abcd,s=AA==,i=2").unwrap();
        assert!(matches!(c.verify_server_final(b"x=1"), Err(ScramError::BadServerFinal(_))));
        assert_eq!(
            ScramClient::new("", b"", "n".into()).verify_server_final(b"v=").unwrap_err(),
            ScramError::OutOfOrder
        );
        assert_eq!(
            ScramClient::new("", b"", "n".into()).handle_server_first(b"r=n1,s=,i=1").unwrap_err(),
            ScramError::OutOfOrder
        );
    }

    #[test]
    fn md5_matches_postgresql() {
        // python3: hashlib.md5(hashlib.md5(b"secretuser").hexdigest().encode() + bytes([1, 2, 3, 4])).hexdigest()
        assert_eq!(md5_password("user", "secret", [1, 2, 3, 4]), "md5fccef98e4f1cf6cbe96b743fad4e8bd0");
        assert!(random_nonce().unwrap().len() >= 32);
    }
}
