//! Scope: the one place that decides what a caller may see and change.
//!
//! * **Rows.** [`row_predicate`] is the SQL condition (over alias `t`, `$1` = the user id) that
//!   a row is in the user's scope: its owner column (or the first ancestor's, through the
//!   foreign-key chain) is the user, or NULL/empty (a shared row, bucket `global`), or the
//!   table has no ownership at all; with bucket rules (`BUCKET_RULES`), a row whose rule column
//!   (or an ancestor's) holds a key is in scope exactly for the members of that key, read in
//!   the membership table by the same statement. It is the rule the bucket assignment and the
//!   generated read policies express, so it holds without row-level security too. Every read
//!   of a synced row evaluates it in the same statement that reads the row: pull hydration and
//!   rebuild pages (a row no longer in scope becomes a delete, or is left out), snapshot pages
//!   (a filter), push lookups (conflict rows are only shown when in scope). Writes use
//!   [`Access::Write`], which leaves shared rows out when `SHARED_ROWS_WRITABLE=false`.
//! * **Buckets.** [`ClientBuckets`] are the client's subscriptions: the only buckets it may
//!   rebuild, inspect in debug, or store checkpoints for, whatever bucket ids it sends.
//!
//! The scope is decided on the row version the statement reads, never on what the changelog
//! said about an older version: capture may lag behind a transfer, and a pull must not hand the
//! old owner the new owner's row.

use crate::registry::{quote_ident, Registry, ScopeSql, SharedRoot, SyncTable};
use crate::store::clients::ClientRow;
use crate::types::UserId;

/// What a predicate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reading: own rows and shared (ownerless) rows.
    Read,
    /// Writing: own rows, plus shared rows when `shared_rows_writable`.
    Write {
        /// `SHARED_ROWS_WRITABLE`: whether rows without an owner may be written by every user.
        shared_rows_writable: bool,
    },
}

impl Access {
    fn includes_shared(self) -> bool {
        match self {
            Access::Read => true,
            Access::Write { shared_rows_writable } => shared_rows_writable,
        }
    }
}

/// The SQL condition, over alias `t` with `$1` the user id, that a row of `table` is in the
/// user's scope for `access` (see the module documentation). Never NULL. Identifiers come from the
/// registry, quoted; the user id is always the bound `$1`.
pub(crate) fn row_predicate(registry: &Registry, table: &SyncTable, access: Access) -> String {
    let owner_ok = |alias: &str, _: &SyncTable, owner: &str| {
        let c = format!("{alias}.{}", quote_ident(owner));
        if access.includes_shared() {
            format!("({c} IS NULL OR {c}::text = '' OR {c}::text = $1)")
        } else {
            // A user id is never empty, so an empty owner never matches; NULL is not the user.
            format!("({c} IS NOT NULL AND {c}::text = $1)")
        }
    };
    // A row a bucket rule places is read and written by the members of its key, whatever the
    // access: that is what sharing it with a team means.
    let member = |root: &SharedRoot, alias: &str| root.member_check(alias, "$1");
    // Rows of a table without ownership are shared rows. `$1` is still typed so every
    // predicate takes the same parameter list.
    let shared = if access.includes_shared() { "($1::text IS NULL OR true)" } else { "($1::text IS NULL AND false)" };
    let spec = ScopeSql { owner: &owner_ok, member: &member, unowned: Some(shared) };
    registry.scope_sql(table, "t", &spec).unwrap_or_else(|| shared.to_string())
}

/// The buckets a client may use: its subscriptions (the default pair when none are stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientBuckets(Vec<String>);

impl ClientBuckets {
    /// The subscriptions of `client`.
    pub(crate) fn of(client: &ClientRow, user: &UserId) -> ClientBuckets {
        ClientBuckets(client.subscriptions(user))
    }

    /// The subscriptions of `client`, moved out of the row (its `bucket_subs` is left empty).
    pub(crate) fn take(client: &mut ClientRow, user: &UserId) -> ClientBuckets {
        if client.bucket_subs.is_empty() {
            ClientBuckets::of(client, user)
        } else {
            ClientBuckets(std::mem::take(&mut client.bucket_subs))
        }
    }

    /// The subscribed buckets, in subscription order.
    pub(crate) fn list(&self) -> &[String] {
        &self.0
    }

    /// Whether the client is subscribed to `bucket`.
    pub(crate) fn contains(&self, bucket: &str) -> bool {
        self.0.iter().any(|b| b == bucket)
    }

    /// The `(bucket, value)` pairs of subscribed buckets, in the given order.
    pub(crate) fn keep<'a, T: Copy + 'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a String, &'a T)>,
    ) -> Vec<(String, T)> {
        pairs.into_iter().filter(|(b, _)| self.contains(b)).map(|(b, v)| (b.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ParentLink, TimestampColumn};
    use crate::types::Oid;

    fn table(name: &str, owner: Option<&str>, parent: Option<&str>) -> SyncTable {
        SyncTable {
            schema: "public".into(),
            name: name.into(),
            oid: Oid(1),
            columns: vec![],
            pk: "id".into(),
            owner: owner.map(str::to_string),
            updated_at: TimestampColumn::Virtual("updated_at".into()),
            deleted_at: TimestampColumn::Virtual("deleted_at".into()),
            created_at: None,
            foreign_keys: vec![],
            parent: parent.map(|p| ParentLink {
                table: p.into(),
                fk_column: format!("{p}_id"),
                parent_column: "id".into(),
            }),
            read_only: false,
            shared: Vec::new(),
        }
    }

    #[test]
    fn predicates_follow_the_owner_through_the_chain() {
        let r = Registry {
            tables: vec![
                table("lists", Some("user_id"), None),
                table("items", None, Some("lists")),
                table("notes", None, Some("items")),
                table("tags", None, None),
            ],
        };
        let read = |t: &str| row_predicate(&r, r.table(t).unwrap(), Access::Read);
        let write = |t: &str| row_predicate(&r, r.table(t).unwrap(), Access::Write { shared_rows_writable: false });
        assert_eq!(read("lists"), r#"(t."user_id" IS NULL OR t."user_id"::text = '' OR t."user_id"::text = $1)"#);
        assert_eq!(write("lists"), r#"(t."user_id" IS NOT NULL AND t."user_id"::text = $1)"#);
        assert_eq!(
            read("notes"),
            r#"EXISTS (SELECT 1 FROM "public"."items" p1 WHERE p1."id" = t."items_id" AND EXISTS (SELECT 1 FROM "public"."lists" p2 WHERE p2."id" = p1."lists_id" AND (p2."user_id" IS NULL OR p2."user_id"::text = '' OR p2."user_id"::text = $1)))"#
        );
        assert!(
            write("items").ends_with(r#"AND (p1."user_id" IS NOT NULL AND p1."user_id"::text = $1))"#),
            "{}",
            write("items")
        );
        assert_eq!(read("tags"), "($1::text IS NULL OR true)");
        assert_eq!(write("tags"), "($1::text IS NULL AND false)");
        assert_eq!(
            row_predicate(&r, r.table("tags").unwrap(), Access::Write { shared_rows_writable: true }),
            read("tags"),
            "with shared rows writable, writing is reading"
        );
    }

    #[test]
    fn only_subscribed_buckets_are_kept() {
        let b = ClientBuckets(vec!["user:a".into(), "global".into()]);
        let map: std::collections::BTreeMap<String, i64> =
            [("user:b".to_string(), 1), ("global".to_string(), 2), ("user:a".to_string(), 3)].into();
        assert_eq!(b.keep(&map), vec![("global".to_string(), 2), ("user:a".to_string(), 3)]);
        assert!(b.contains("global") && !b.contains("user:b"));
    }
}
