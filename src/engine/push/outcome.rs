//! What one record's push came to (§7.6), and database errors in the client's terms.

use std::time::SystemTime;

use postgres::error::{DbError, SqlState};

use crate::engine::rows::{to_record, Existing, Hydrated};
use crate::protocol::{PushRecord, Record};
use crate::registry::SyncTable;

/// The outcome of one record.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) status: &'static str,
    pub(super) reason: Option<&'static str>,
    pub(super) message: Option<String>,
    /// Boxed: a record is large, and most outcomes have none.
    pub(super) server_version: Option<Box<Record>>,
    pub(super) server_updated_at: Option<SystemTime>,
    pub(super) server_deleted_at: Option<SystemTime>,
}

impl Outcome {
    pub(super) fn applied() -> Outcome {
        Outcome {
            status: "applied",
            reason: None,
            message: None,
            server_version: None,
            server_updated_at: None,
            server_deleted_at: None,
        }
    }

    pub(super) fn rejected(status: &'static str, reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome { status, reason: Some(reason), message: Some(message.into()), ..Outcome::applied() }
    }

    pub(super) fn terminal(reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome::rejected("rejected_terminal", reason, message)
    }

    pub(super) fn conflict(
        reason: &'static str,
        message: impl Into<String>,
        server_version: Option<Record>,
    ) -> Outcome {
        Outcome { server_version: server_version.map(Box::new), ..Outcome::rejected("conflict", reason, message) }
    }
}

/// A database error inside a record, classified per C3: data and integrity errors (classes
/// 22 and 23) are terminal, a refusal by row-level security (42501) is an
/// `ownership_violation`, everything else retryable.
/// The client's message says what was wrong in terms of its own data ([`describe`]); the
/// database's full text, with its relation and constraint names, is logged at debug level
/// (with the request id).
pub(super) fn sql_failure(
    e: &postgres::Error,
    t: &SyncTable,
    rec: &PushRecord,
    reason: &'static str,
    message: &'static str,
) -> Outcome {
    let Some(db) = e.as_db_error() else {
        crate::debug!("push record failed", table = t.name.clone(), error = e.to_string());
        return Outcome::rejected("rejected_retryable", reason, message);
    };
    crate::debug!(
        "push record failed in the database",
        table = t.name.clone(),
        id = rec.id.chars().take(128).collect::<String>(),
        sqlstate = db.code().code(),
        error = db.message(),
        detail = db.detail().unwrap_or(""),
        constraint = db.constraint().unwrap_or(""),
    );
    let code = db.code().code();
    if code == "42501" {
        // Row-level security refused the row (PUSH_ROLE): an ownership question, whatever the
        // operation.
        return Outcome::terminal("ownership_violation", format!("ownership violation: {}", describe(db, t)));
    }
    if code.starts_with("22") || code.starts_with("23") {
        Outcome::terminal(reason, format!("{message}: {}", describe(db, t)))
    } else {
        Outcome::rejected("rejected_retryable", reason, message)
    }
}

/// A terminal database error in the client's terms: the column it concerns when PostgreSQL
/// names it (directly, in the key of the detail, or as the only column of a constraint named
/// the default way) and clients know it (not an excluded column), never a relation, constraint
/// or index name.
fn describe(db: &DbError, t: &SyncTable) -> String {
    let column = db
        .column()
        .filter(|c| is_served(t, c))
        .map(str::to_string)
        .or_else(|| key_columns(db.detail().unwrap_or(""), t))
        .or_else(|| constraint_column(db.constraint().unwrap_or(""), t));
    let subject = column.as_deref().unwrap_or("a value");
    match db.code() {
        c if *c == SqlState::NOT_NULL_VIOLATION => format!("{subject} must not be null"),
        c if *c == SqlState::UNIQUE_VIOLATION => format!("{subject} is already used by another record"),
        c if *c == SqlState::FOREIGN_KEY_VIOLATION => {
            if db.detail().is_some_and(|d| d.contains("is still referenced")) {
                "other records still refer to this record".to_string()
            } else {
                format!("{subject} refers to a record that does not exist")
            }
        }
        c if *c == SqlState::CHECK_VIOLATION => format!("{subject} is not allowed by the table's rules"),
        c if *c == SqlState::EXCLUSION_VIOLATION => format!("{subject} conflicts with another record"),
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => "the write is not allowed by row-level security".to_string(),
        // Data exceptions (class 22) name the type and the client's own value, nothing internal.
        c if c.code().starts_with("22") => db.message().to_string(),
        _ => "the record violates a rule of the table".to_string(),
    }
}

/// The columns of `Key (a, b)=(...)` in an error detail, when they are all columns of `t`
/// (not an expression of an index).
fn key_columns(detail: &str, t: &SyncTable) -> Option<String> {
    let rest = detail.strip_prefix("Key (")?;
    let columns = &rest[..rest.find(")=(")?];
    columns.split(", ").all(|c| is_served(t, c)).then(|| columns.to_string())
}

/// Whether `column` is a column of `t` that clients know (in the served schema).
fn is_served(t: &SyncTable, column: &str) -> bool {
    t.column(column).is_some_and(|c| !c.excluded)
}

/// The column of a constraint PostgreSQL named by default (`<table>_<column>_check`, `_key`,
/// `_fkey`, `_excl`), when that is a column of `t`.
fn constraint_column(constraint: &str, t: &SyncTable) -> Option<String> {
    let rest = constraint.strip_prefix(t.name.as_str())?.strip_prefix('_')?;
    let column = ["_check", "_key", "_fkey", "_excl"].iter().find_map(|s| rest.strip_suffix(s))?;
    is_served(t, column).then(|| column.to_string())
}

/// `rejected_terminal` / `ownership_violation` (§7.5).
pub(super) fn ownership_violation() -> Outcome {
    Outcome::terminal("ownership_violation", "ownership violation")
}

/// `applied` / `already_deleted`.
pub(super) fn already_deleted() -> Outcome {
    Outcome { reason: Some("already_deleted"), message: Some("record already deleted".into()), ..Outcome::applied() }
}

/// The reason code and message of a failed write, by the record's operation string (a
/// resurrection is a `create`).
pub(super) fn write_failure(operation: &str) -> (&'static str, &'static str) {
    match operation {
        "create" => ("create_failed", "failed to create record"),
        "update" => ("update_failed", "failed to update record"),
        _ => ("delete_failed", "failed to delete record"),
    }
}

/// `server_version` of a conflict (§7.6): the row as the transaction saw it, `deleted_at` only
/// for `record_deleted`.
pub(super) fn server_version(t: &SyncTable, id: &str, e: &Existing, with_deleted: bool) -> Option<Record> {
    let row = Hydrated {
        data: e.row.data.clone(),
        updated_at: e.row.updated_at,
        deleted_at: if with_deleted { e.row.deleted_at } else { None },
        in_scope: e.row.in_scope,
    };
    to_record(&t.name, id.to_string(), row, None, None, false).ok()
}
