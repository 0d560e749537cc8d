//! The HTTP boundary of the engine: [`SyncApi`] implemented by calling [`Engine`] and mapping
//! its errors to the contract's statuses, with each endpoint's own 500 message (§3.1).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::{Engine, EngineError};
use crate::http::{ApiError, SyncApi};
use crate::types::UserId;

/// Seconds clients are asked to wait on 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// The engine behind the HTTP layer.
#[derive(Debug, Clone)]
pub struct EngineApi {
    engine: Arc<Engine>,
}

impl EngineApi {
    /// Wraps an engine.
    pub fn new(engine: Arc<Engine>) -> EngineApi {
        EngineApi { engine }
    }
}

/// Maps an engine error for an endpoint whose generic failure message is `failure`.
/// `not_registered_is_404`: snapshot, rebuild and debug answer 404 for unknown clients; pull
/// and push answer 500 like the reference.
pub fn to_api_error(e: EngineError, failure: &'static str, not_registered_is_404: bool) -> ApiError {
    match e {
        EngineError::BadRequest(m) => ApiError::BadRequest(m),
        EngineError::ClientNotRegistered if not_registered_is_404 => ApiError::ClientNotRegistered,
        EngineError::ClientNotRegistered => ApiError::Internal(failure),
        EngineError::SchemaMismatch { version, hash } => ApiError::SchemaMismatch { version, hash },
        EngineError::UpgradeRequired => ApiError::UpgradeRequired,
        EngineError::Forbidden(m) => ApiError::Forbidden(m),
        e if e.is_transient() => {
            crate::warn!("transient database error", endpoint = failure, error = e.to_string());
            ApiError::Unavailable { retry_after: RETRY_AFTER_SECS }
        }
        e => {
            crate::error!("request failed", endpoint = failure, error = e.to_string());
            ApiError::Internal(failure)
        }
    }
}

impl SyncApi for EngineApi {
    fn register(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.engine.register_json(user, body).map_err(|e| to_api_error(e, "failed to register client", false))
    }

    fn pull(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.engine.pull_json(user, body).map_err(|e| to_api_error(e, "failed to pull changes", false))
    }

    fn push(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.engine.push_json(user, body).map_err(|e| to_api_error(e, "failed to push changes", false))
    }

    fn snapshot(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.engine.snapshot_json(user, body).map_err(|e| to_api_error(e, "failed to snapshot", true))
    }

    fn rebuild(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.engine.rebuild_json(user, body).map_err(|e| to_api_error(e, "failed to rebuild bucket", true))
    }

    fn debug(&self, user: &UserId, client_id: &str) -> Result<Vec<u8>, ApiError> {
        self.engine.debug_json(user, client_id).map_err(|e| to_api_error(e, "failed to get client debug info", true))
    }

    fn tables(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        // Schema and tables have no 503 mapping in the contract.
        self.engine.tables_json().map_err(|e| match to_api_error(e, "failed to load table metadata", false) {
            ApiError::Unavailable { .. } => ApiError::Internal("failed to load table metadata"),
            other => other,
        })
    }

    fn schema(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        self.engine.schema_json().map_err(|e| match to_api_error(e, "failed to load schema", false) {
            ApiError::Unavailable { .. } => ApiError::Internal("failed to load schema"),
            other => other,
        })
    }

    fn health(&self) -> bool {
        self.engine.health()
    }
}
