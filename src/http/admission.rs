//! The embedder's own admission policy (rate limits, maintenance windows), asked once per
//! authenticated sync request before its body is read. synchro's built-in backpressure (429 when
//! the worker queue is full, 503 on transient database trouble) applies regardless.

use super::routes::Endpoint;
use super::ApiError;
use crate::types::UserId;

/// The policy's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Admit,
    /// `429` with `Retry-After` (e.g. the user's rate limit is spent).
    TooManyRequests {
        /// Seconds.
        retry_after: u32,
    },
    /// `503` with `Retry-After` (e.g. a maintenance window).
    Unavailable {
        /// Seconds.
        retry_after: u32,
    },
}

impl Admission {
    /// The error reply for a refusal, `None` for [`Admission::Admit`].
    pub fn refusal(self) -> Option<ApiError> {
        match self {
            Admission::Admit => None,
            Admission::TooManyRequests { retry_after } => Some(ApiError::TooManyRequests { retry_after }),
            Admission::Unavailable { retry_after } => Some(ApiError::Unavailable { retry_after }),
        }
    }
}

/// Decides whether an authenticated request is served. Must be cheap and must not block: it
/// runs on an HTTP worker for every sync request.
pub trait AdmissionPolicy: Send + Sync {
    /// `user` is the authenticated caller, `endpoint` the sync endpoint asked for.
    fn admit(&self, user: &UserId, endpoint: Endpoint) -> Admission;
}

/// The default: every request is admitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl AdmissionPolicy for AdmitAll {
    fn admit(&self, _user: &UserId, _endpoint: Endpoint) -> Admission {
        Admission::Admit
    }
}
