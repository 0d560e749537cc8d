//! Password authentication of our replication connection: SCRAM-SHA-256 (RFC 5802, RFC 7677)
//! and MD5, as `postgres-protocol` implements them for the `postgres` crate. Its SCRAM applies
//! SASLprep to the password as libpq and the server do, so a password that is not in
//! normalized form (a non-ASCII password typed on another system) authenticates here exactly
//! as it does with `psql`.
//!
//! [`Scram`] is the client side of one exchange, advanced by the server's messages; it does
//! no I/O.

use std::fmt;
use std::io;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};

/// A failed SCRAM exchange.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScramError {
    /// A SASL message arrived out of turn.
    OutOfOrder(&'static str),
    /// The server-first message was refused: malformed, a nonce that does not extend ours, or
    /// an iteration count above what we accept (a hostile server could stall us for minutes).
    ServerFirst(io::Error),
    /// The server-final message was refused: malformed, an error from the server, or a
    /// signature showing that the server does not know the password.
    ServerFinal(io::Error),
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::OutOfOrder(what) => write!(f, "SCRAM {what} out of order"),
            ScramError::ServerFirst(e) => write!(f, "SCRAM server-first message refused: {e}"),
            ScramError::ServerFinal(e) => write!(f, "SCRAM server-final message refused: {e}"),
        }
    }
}

impl std::error::Error for ScramError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScramError::ServerFirst(e) | ScramError::ServerFinal(e) => Some(e),
            ScramError::OutOfOrder(_) => None,
        }
    }
}

enum Step {
    SentFirst,
    SentFinal,
    Done,
}

/// The client side of one SCRAM-SHA-256 exchange, without channel binding (the client-first
/// message says so, which servers accept whether or not they offer `SCRAM-SHA-256-PLUS`).
pub struct Scram {
    inner: ScramSha256,
    step: Step,
}

impl Scram {
    /// The mechanism name, as the server offers it.
    pub const MECHANISM: &'static str = SCRAM_SHA_256;

    /// Starts an exchange for `password` with a random nonce.
    pub fn start(password: &str) -> Scram {
        Scram { inner: ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported()), step: Step::SentFirst }
    }

    /// The client-first message, for the SASLInitialResponse.
    pub fn client_first(&self) -> Result<&[u8], ScramError> {
        match self.step {
            Step::SentFirst => Ok(self.inner.message()),
            _ => Err(ScramError::OutOfOrder("client-first message")),
        }
    }

    /// Takes the server-first message (SASLContinue); returns the client-final message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<&[u8], ScramError> {
        if !matches!(self.step, Step::SentFirst) {
            return Err(ScramError::OutOfOrder("server-first message"));
        }
        self.step = Step::Done;
        self.inner.update(server_first).map_err(ScramError::ServerFirst)?;
        self.step = Step::SentFinal;
        Ok(self.inner.message())
    }

    /// Verifies the server-final message (SASLFinal): the server proves it knows the password.
    pub fn verify(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        if !matches!(self.step, Step::SentFinal) {
            return Err(ScramError::OutOfOrder("server-final message"));
        }
        self.step = Step::Done;
        self.inner.finish(server_final).map_err(ScramError::ServerFinal)
    }
}

/// The response to an MD5 password request: `md5` + hex(md5(hex(md5(password + user)) + salt)).
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    use super::*;

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The server side of an exchange for `stored_password` (as the server normalized it when
    /// the role's password was set): checks the client's proof, answers its signature.
    struct Server {
        salted: Vec<u8>,
        first: String,
        client_first_bare: String,
    }

    impl Server {
        fn first(stored_password: &str, client_first: &[u8]) -> Server {
            let client_first = std::str::from_utf8(client_first).unwrap();
            let bare = client_first.strip_prefix("n,,").expect("no channel binding").to_string();
            let nonce = bare.strip_prefix("n=,r=").unwrap();
            let salt = b"0123456789abcdef";
            // PBKDF2 with one block, 4096 iterations.
            let mut block = salt.to_vec();
            block.extend_from_slice(&1u32.to_be_bytes());
            let mut u = hmac(stored_password.as_bytes(), &block);
            let mut salted = u.clone();
            for _ in 1..4096 {
                u = hmac(stored_password.as_bytes(), &u);
                salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
            }
            let first = format!("r={nonce}srv,s={},i=4096", STANDARD.encode(salt));
            Server { salted, first, client_first_bare: bare }
        }

        /// Checks the client-final message; returns the server-final message when the proof
        /// is right.
        fn last(&self, client_final: &[u8]) -> Option<String> {
            let client_final = std::str::from_utf8(client_final).unwrap();
            let (without_proof, proof) = client_final.split_once(",p=").unwrap();
            let auth = format!("{},{},{without_proof}", self.client_first_bare, self.first);
            let client_key = hmac(&self.salted, b"Client Key");
            let signature = hmac(&Sha256::digest(&client_key), auth.as_bytes());
            let proof = STANDARD.decode(proof).unwrap();
            let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
            (Sha256::digest(&recovered) == Sha256::digest(&client_key))
                .then(|| format!("v={}", STANDARD.encode(hmac(&hmac(&self.salted, b"Server Key"), auth.as_bytes()))))
        }
    }

    fn exchange(client_password: &str, stored_password: &str) -> Result<(), ScramError> {
        let mut client = Scram::start(client_password);
        let server = Server::first(stored_password, client.client_first()?);
        let client_final = client.client_final(server.first.as_bytes())?.to_vec();
        match server.last(&client_final) {
            Some(server_final) => client.verify(server_final.as_bytes()),
            None => Err(ScramError::ServerFinal(io::Error::other("wrong proof"))),
        }
    }

    #[test]
    fn a_full_exchange_and_a_wrong_password() {
        exchange("pencil", "pencil").unwrap();
        assert!(exchange("pencil", "pen").is_err());
    }

    #[test]
    fn passwords_are_saslprepped_like_libpq_does() {
        // RFC 4013's examples: a soft hyphen maps to nothing, U+2168 (ROMAN NUMERAL NINE)
        // normalizes to "IX", and an e with a combining acute accent to "é".
        exchange("I\u{00AD}X", "IX").unwrap();
        exchange("\u{2168}", "IX").unwrap();
        exchange("caf\u{0065}\u{0301}", "caf\u{00E9}").unwrap();
    }

    #[test]
    fn every_failure_is_typed() {
        let start = || Scram::start("pw");
        let nonce = |c: &Scram| std::str::from_utf8(c.client_first().unwrap()).unwrap()[8..].to_string();
        let first_refused = |msg: String| {
            let mut c = start();
            let msg = msg.replace("NONCE", &nonce(&c));
            matches!(c.client_final(msg.as_bytes()), Err(ScramError::ServerFirst(_)))
        };
        for bad in [
            "s=AA==,i=1",
            "r=NONCEx,i=1",
            "r=NONCEx,s=AA==",
            "r=other,s=AA==,i=1",
            "r=NONCEx,s=!!,i=1",
            "r=NONCEx,s=AA==,i=x",
            "r=NONCEx,s=AA==,i=99999999",
            "\u{FFFD}",
        ] {
            assert!(first_refused(bad.to_string()), "{bad}");
        }
        let mut c = start();
        let msg = format!("r={}x,s=AA==,i=2", nonce(&c));
        c.client_final(msg.as_bytes()).unwrap();
        assert!(matches!(c.verify(b"v=AAAA"), Err(ScramError::ServerFinal(_))), "a wrong signature");
        let mut c = start();
        c.client_final(format!("r={}x,s=AA==,i=2", nonce(&c)).as_bytes()).unwrap();
        let err = c.verify(b"e=invalid-proof").unwrap_err();
        assert!(matches!(err, ScramError::ServerFinal(_)));
        assert!(std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("invalid-proof")));
        // Out of turn: a server-final before the server-first, anything after the end.
        assert!(matches!(start().verify(b"v="), Err(ScramError::OutOfOrder(_))));
        assert!(matches!(c.verify(b"v="), Err(ScramError::OutOfOrder(_))));
        assert!(matches!(c.client_final(b"r=x"), Err(ScramError::OutOfOrder(_))));
        assert!(matches!(c.client_first(), Err(ScramError::OutOfOrder(_))));
    }

    #[test]
    fn md5_matches_postgresql() {
        // python3: hashlib.md5(hashlib.md5(b"secretuser").hexdigest().encode() + bytes([1, 2, 3, 4])).hexdigest()
        assert_eq!(md5_response("user", "secret", [1, 2, 3, 4]), "md5fccef98e4f1cf6cbe96b743fad4e8bd0");
    }
}
