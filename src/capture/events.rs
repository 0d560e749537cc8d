//! The events that flow from the replication thread to the changelog writer.

use std::sync::Arc;
use std::time::SystemTime;

use crate::types::{Lsn, Oid};

/// A column of a replicated relation, as its Relation message described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// The column name.
    pub name: String,
    /// The column's type oid (a domain's own oid for a domain).
    pub type_oid: Oid,
}

/// A column value in pgoutput's text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// The text rendering of the value.
    Text(String),
    /// A TOASTed value the update did not change and pgoutput did not send: never NULL.
    UnchangedToast,
}

impl ColumnValue {
    /// The text, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// One row change of a registered table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// The registered (unqualified) table name, shared by every change of the table.
    pub table: Arc<str>,
    /// What happened.
    pub kind: ChangeKind,
    /// The primary key as PostgreSQL text.
    pub key: String,
    /// For an update that changed the primary key: the old key.
    pub old_key: Option<String>,
    /// The relation's columns (shared by every change until the relation changes).
    pub columns: Arc<[RelColumn]>,
    /// One value per column of `columns` (new tuple; for deletes the old tuple, possibly key-only).
    pub values: Vec<ColumnValue>,
}

impl RowChange {
    /// The value of a column, if the tuple carried it.
    pub fn value(&self, column: &str) -> Option<&ColumnValue> {
        self.columns.iter().position(|c| c.name == column).and_then(|i| self.values.get(i))
    }

    /// `(column name, value)` pairs in column order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ColumnValue)> {
        self.columns.iter().map(|c| c.name.as_str()).zip(self.values.iter())
    }
}

/// An event of the replication stream, in WAL order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// A transaction starts; `final_lsn` is its commit record's position.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// The transaction id (32 bits, as pgoutput sends it).
        xid: u32,
    },
    /// A row change inside the current transaction.
    Row(RowChange),
    /// A row change of a bucket rules' membership table inside the current transaction: the
    /// subscriptions of `users` changed. `row` is the change itself when the table is synced too.
    Membership {
        /// The user ids named by the old and new rows, as the membership table holds them; `""`
        /// stands for a user the stream did not say (a delete whose user column is not in the
        /// replica identity), that is every user.
        users: Vec<String>,
        /// The change, for a membership table that is also a synced table.
        row: Option<RowChange>,
    },
    /// TRUNCATE of registered tables inside the current transaction.
    Truncate {
        /// The tables.
        tables: Vec<String>,
    },
    /// The transaction committed; replication resumes after `end_lsn`.
    Commit {
        /// End of the transaction.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: SystemTime,
    },
    /// Nothing is in flight up to `wal_end` (a keepalive outside any transaction): once every
    /// earlier event is committed, this position may be confirmed.
    Idle {
        /// The server's WAL end.
        wal_end: Lsn,
    },
}
