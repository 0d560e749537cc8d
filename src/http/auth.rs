//! Who a request speaks for (contract §2.3). Exactly one mode is active per server.

use std::fmt;
use std::time::SystemTime;

use crate::jwt::{self, ClaimRules, JwtError};
use crate::types::UserId;

/// A refused request: the 401 body message, and the reason to log (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The contract's `error` message.
    pub client_message: &'static str,
    /// What went wrong, for the log.
    pub reason: String,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.client_message, self.reason)
    }
}

/// Resolves the user of a request from its headers (lower-case names).
pub trait Authenticator: Send + Sync {
    /// `header(name)` returns the value of a header, matched case-insensitively.
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure>;
}

/// Development mode: the `X-User-ID` header, trusted blindly.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderAuthenticator;

impl Authenticator for HeaderAuthenticator {
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure> {
        header("x-user-id")
            .and_then(|v| UserId::new(v.trim()))
            .ok_or(AuthFailure { client_message: "missing user identity", reason: "no X-User-ID header".into() })
    }
}

/// `JWT_SECRET` mode: HS256/384/512 bearer tokens.
#[derive(Debug, Clone)]
pub struct JwtSecretAuthenticator {
    secret: Vec<u8>,
    rules: ClaimRules,
}

impl JwtSecretAuthenticator {
    /// A verifier for `secret` with `rules`.
    pub fn new(secret: &[u8], rules: ClaimRules) -> JwtSecretAuthenticator {
        JwtSecretAuthenticator { secret: secret.to_vec(), rules }
    }
}

/// Extracts the token of an `Authorization: Bearer <token>` header (exact, case-sensitive prefix).
pub fn bearer_token(header: &dyn Fn(&str) -> Option<String>) -> Result<String, AuthFailure> {
    let value = header("authorization").unwrap_or_default();
    match value.strip_prefix("Bearer ") {
        Some(token) if !token.is_empty() => Ok(token.to_string()),
        _ => Err(AuthFailure {
            client_message: "missing or malformed authorization header",
            reason: "no Bearer token".into(),
        }),
    }
}

impl Authenticator for JwtSecretAuthenticator {
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure> {
        let token = bearer_token(header)?;
        jwt::verify_hmac(&token, &self.secret, &self.rules, SystemTime::now())
            .map_err(|e: JwtError| AuthFailure { client_message: e.client_message(), reason: e.to_string() })
    }
}
