//! Who a request speaks for (contract §2.3). Exactly one mode is active per server.

use std::fmt;
use std::time::SystemTime;

use crate::jwt::{self, ClaimRules, JwtError};
use crate::types::UserId;

/// A request that cannot be authenticated: refused (401 with the contract's message), or not
/// decidable right now (503 with `Retry-After`, e.g. while the JWKS endpoint is unreachable).
/// `reason` is for the log and never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The contract's `error` message (401 only).
    pub client_message: &'static str,
    /// What went wrong, for the log.
    pub reason: String,
    /// `Some(seconds)` when the failure is transient: answered 503 with this `Retry-After`.
    pub retry_after: Option<u32>,
}

impl AuthFailure {
    /// A refusal: 401 with `client_message`.
    pub fn refused(client_message: &'static str, reason: impl Into<String>) -> AuthFailure {
        AuthFailure { client_message, reason: reason.into(), retry_after: None }
    }

    /// A transient failure: 503 with `Retry-After: retry_after`.
    pub fn unavailable(retry_after: u32, reason: impl Into<String>) -> AuthFailure {
        AuthFailure {
            client_message: "service temporarily unavailable",
            reason: reason.into(),
            retry_after: Some(retry_after),
        }
    }
}

impl From<JwtError> for AuthFailure {
    fn from(e: JwtError) -> AuthFailure {
        AuthFailure::refused(e.client_message(), e.to_string())
    }
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
            .ok_or_else(|| AuthFailure::refused("missing user identity", "no X-User-ID header"))
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
        _ => Err(AuthFailure::refused("missing or malformed authorization header", "no Bearer token")),
    }
}

impl Authenticator for JwtSecretAuthenticator {
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure> {
        let token = bearer_token(header)?;
        Ok(jwt::verify_hmac(&token, &self.secret, &self.rules, SystemTime::now())?)
    }
}
