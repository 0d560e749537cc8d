//! Embedder hooks: an extra authorization step for pushed records and callbacks at the
//! points an application usually wants to observe or extend. Every method has a no-op default.

use postgres::Transaction;

use crate::protocol::PushRecord;
use crate::types::UserId;

/// Hooks an embedding application can plug into the engine.
pub trait Hooks: Send + Sync {
    /// Runs after synchro's own checks (read-only, ownership) for every pushed record, before it
    /// is written. `Err(message)` rejects the record as `rejected_terminal` /
    /// `ownership_violation` with that message; the other records go on.
    fn authorize(&self, _user: &UserId, _record: &PushRecord) -> Result<(), String> {
        Ok(())
    }

    /// Runs inside the push transaction after every record was processed, with the applied
    /// ones. `Err` rolls the whole push back (HTTP 500): use it for audit rows or side tables
    /// that must commit together with the data. The transaction is on the application database
    /// (`DATABASE_URL`), also when the sync tables live in a separate store.
    fn on_push_accepted(
        &self,
        _tx: &mut Transaction<'_>,
        _user: &UserId,
        _applied: &[&PushRecord],
    ) -> Result<(), String> {
        Ok(())
    }

    /// A pushed record lost a conflict (`record_exists`, `record_deleted`, `server_won_conflict`).
    fn on_conflict(&self, _user: &UserId, _record: &PushRecord, _reason: &str) {}

    /// A pull page was served.
    fn on_pull_complete(&self, _user: &UserId, _client_id: &str, _checkpoint: i64, _has_more: bool) {}

    /// A client was told to re-snapshot (`initial_sync_required`, `checkpoint_before_retention`,
    /// `history_unavailable`).
    fn on_snapshot_required(&self, _user: &UserId, _client_id: &str, _reason: &str) {}
}

/// No hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
