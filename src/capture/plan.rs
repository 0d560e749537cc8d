//! Planning one chunk of row changes (§9.4 with contract C6 and C8): the changelog rows, the
//! net edge changes and the assignment failures it implies, computed from what the writer
//! read before. No I/O: the writer reads ([`touched`] records' held edges, every change's
//! owner, the current rows [`Checksums::missing`] names), calls [`plan`], and writes its
//! result.
//!
//! Rules, each with a unit test below:
//! * A record's buckets after a change come from the [`BucketAssigner`] (its owner, or its
//!   ancestors' through foreign keys); a bucket it leaves gets a removal row, a bucket it
//!   enters a create row, a bucket it stays in an update row. Removals come first (C8), so a
//!   client subscribed to both buckets ends with the row.
//! * A delete, or an update that sets the deleted-at column, removes the record from every
//!   bucket it holds; a record without edges (older than the consumer) is removed from the
//!   buckets it would be assigned, so clients still hear of it.
//! * A primary-key change removes the old key from all its buckets; the new key is then
//!   assigned like an insert.
//! * A change whose assignment fails becomes a [`Failure`], never a changelog row.
//! * A change whose routing column arrived as unchanged TOAST for a row that no longer exists
//!   ([`Owner::RowGone`]) is skipped: a later delete in the stream removes the record.
//! * Changes of tables that are not routed (not synced) produce nothing.
//! * Edge checksums are the checksum a pull emits for the record's current row (C6): rendered
//!   from the chunk's latest version of the row when its text determines `row_to_json`
//!   ([`super::row_json`]), taken from the row read back otherwise, NULL while the row has no
//!   current version (deleted later in the stream). Held edges are rewritten only when their
//!   checksum changed.
//! * Edge changes are net against what the database held before the chunk, and sorted.
//! * An updated row of a table with child tables whose buckets changed (an owner transfer, a
//!   re-parenting, a restore), or that is soft-deleted (its owner may have changed with no
//!   edges to tell), is reported in [`Plan::moved`]: its live children must follow it, and the
//!   writer routes them again in the same batch. An inserted row has no children yet (those
//!   inserted with it are in the stream). So is one whose buckets an update changed and a
//!   later one changed back within the chunk (a move between teams and back).
//! * When such a row held buckets before and holds some after (not a restore, not a soft
//!   delete), the plan is [`Plan::rerouted`]: its children are recorded in the buckets they
//!   end in even where those stay the same, since a read checked against the parent's row
//!   while it was elsewhere (a snapshot page) may have left them out.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use super::buckets::{dedup_buckets, BucketAssigner, Owner, RoutingTable, TableRouting};
use super::events::{ChangeKind, ColumnValue, RelColumn, RowChange};
use super::row_json;
use crate::store::changelog::{ChangeRef, Failure};
use crate::store::edges::{EdgeRef, HeldEdge};
use crate::store::writer_session::ChunkWrites;
use crate::types::Op;

/// A record inside one chunk: `(table, primary key)`, borrowed from the chunk.
pub type Key<'a> = (&'a str, &'a str);

/// A bucket id inside one plan: shared by the changelog rows, the edge changes and the working
/// state without copying the text each time.
pub type Bucket = Rc<str>;

/// The buckets a record belongs to, sorted and without duplicates (usually one).
type Buckets = Vec<Bucket>;

/// One changelog row of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRow<'a> {
    /// The bucket it is written for.
    pub bucket: Bucket,
    /// The registered table name.
    pub table: &'a str,
    /// The record's primary key as text.
    pub record: &'a str,
    /// What happened to the record in that bucket.
    pub op: Op,
}

/// One edge change of a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeChange<'a> {
    /// The registered table name.
    pub table: &'a str,
    /// The record's primary key as text.
    pub record: &'a str,
    /// The bucket.
    pub bucket: Bucket,
    /// The record checksum to store (unused for removals).
    pub checksum: Option<i32>,
}

impl EdgeChange<'_> {
    /// The change as the store's edge statements take it.
    pub fn as_ref(&self) -> EdgeRef<'_> {
        EdgeRef { table: self.table, record: self.record, bucket: &self.bucket, checksum: self.checksum }
    }
}

/// What a chunk writes. Tables and keys borrow the chunk's text: a plan allocates per bucket
/// and per failure, not per row and field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Changelog rows, in order (`seq` follows it).
    pub changelog: Vec<ChangelogRow<'a>>,
    /// Edges to remove (sorted).
    pub removed: Vec<EdgeChange<'a>>,
    /// Edges the database does not hold yet, with their checksums (sorted).
    pub added: Vec<EdgeChange<'a>>,
    /// Held edges whose checksum changed (sorted).
    pub rechecked: Vec<EdgeChange<'a>>,
    /// Changes whose bucket assignment failed.
    pub failures: Vec<Failure>,
    /// `(table, key)` of updated records with child tables whose children must follow them.
    pub moved: Vec<(String, String)>,
    /// Some of `moved` went from some buckets to others, or left them and came back within the
    /// chunk (not a restore, not a soft delete): their children are recorded in the buckets
    /// they end in even where those stay the same.
    pub rerouted: bool,
}

impl Plan<'_> {
    /// The plan as the store's batch writes it.
    pub fn writes(&self) -> ChunkWrites<'_> {
        fn edges<'p>(e: &'p [EdgeChange<'_>]) -> Vec<EdgeRef<'p>> {
            e.iter().map(EdgeChange::as_ref).collect()
        }
        ChunkWrites {
            removed: edges(&self.removed),
            added: edges(&self.added),
            rechecked: edges(&self.rechecked),
            changelog: self
                .changelog
                .iter()
                .map(|r| ChangeRef { bucket: &r.bucket, table: r.table, record: r.record, op: r.op })
                .collect(),
        }
    }
}

/// Every record `chunk` touches, old keys of key changes included, sorted by table and key
/// without duplicates: the records whose held edges the planner needs.
pub fn touched(chunk: &[RowChange]) -> Vec<Key<'_>> {
    let mut keys: Vec<Key<'_>> = Vec::with_capacity(chunk.len());
    for c in chunk {
        keys.push((&c.table, &c.key));
        if let Some(old) = &c.old_key {
            keys.push((&c.table, old));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The edge checksums of a chunk's records (C6), each the checksum a pull emits for the
/// record's current row: rendered from the chunk's latest version of the row where possible
/// ([`Checksums::render`]), from rows read back for the rest ([`Checksums::add_rows`]).
#[derive(Debug)]
pub struct Checksums<'a> {
    known: HashMap<Key<'a>, i32>,
    /// Records whose latest version in the chunk is not a delete and whose checksum cannot be
    /// rendered from the WAL text, sorted by table: their current rows must be read back.
    pub missing: Vec<Key<'a>>,
    checksum: fn(&str) -> i32,
}

impl<'a> Checksums<'a> {
    /// Renders what the chunk's text determines. With a `checksum` other than
    /// [`crate::checksum::record_checksum`] nothing is rendered: every row is read back.
    pub fn render(chunk: &'a [RowChange], routing: &RoutingTable, checksum: fn(&str) -> i32) -> Checksums<'a> {
        let renders = std::ptr::fn_addr_eq(checksum, crate::checksum::record_checksum as fn(&str) -> i32);
        let mut latest: HashMap<Key<'a>, &'a RowChange> = HashMap::with_capacity(chunk.len());
        for c in chunk {
            latest.insert((&c.table, &c.key), c);
        }
        let mut out = Checksums { known: HashMap::with_capacity(latest.len()), missing: Vec::new(), checksum };
        // Whether a relation's columns are the whole row as the registry knows it, once per
        // relation (changes share their relation's column list).
        let mut whole: Vec<(&Arc<[RelColumn]>, bool)> = Vec::new();
        for (key, c) in latest {
            if c.kind == ChangeKind::Delete {
                continue;
            }
            let Some(t) = routing.get(key.0) else { continue };
            let sum = renders.then(|| render(t, c, &mut whole)).flatten();
            match sum {
                Some(sum) => {
                    out.known.insert(key, sum);
                }
                None => out.missing.push(key),
            }
        }
        out.missing.sort_unstable();
        out
    }

    /// Adds the checksums of rows read back: `(table, primary key, row_to_json text)`. Rows
    /// not among [`Checksums::missing`] are ignored.
    pub fn add_rows<'r>(&mut self, rows: impl IntoIterator<Item = (&'r str, &'r str, &'r str)>) {
        for (table, id, json) in rows {
            if let Ok(i) = self.missing.binary_search(&(table, id)) {
                self.known.insert(self.missing[i], (self.checksum)(json));
            }
        }
    }

    fn get(&self, key: Key<'a>) -> Option<i32> {
        self.known.get(&key).copied()
    }
}

fn render<'c>(t: &TableRouting, c: &'c RowChange, whole: &mut Vec<(&'c Arc<[RelColumn]>, bool)>) -> Option<i32> {
    let is_whole = match whole.iter().find(|(cols, _)| Arc::ptr_eq(cols, &c.columns)) {
        Some((_, w)) => *w,
        None => {
            let w = t.is_whole_row(&c.columns);
            whole.push((&c.columns, w));
            w
        }
    };
    is_whole.then(|| row_json::row_checksum(&c.columns, &t.render_oids, &c.values)).flatten()
}

/// One shared copy of each bucket id seen by a plan.
#[derive(Default)]
struct Interner(HashSet<Bucket>);

impl Interner {
    fn get(&mut self, name: &str) -> Bucket {
        if let Some(b) = self.0.get(name) {
            return b.clone();
        }
        let b: Bucket = Rc::from(name);
        self.0.insert(b.clone());
        b
    }
}

/// The record's buckets as the plan has them so far: its latest state in the chunk, else what
/// the database held before the chunk.
fn held_now<'s, 'a>(
    state: &'s HashMap<Key<'a>, Buckets>,
    initial: &'s HashMap<Key<'a>, Buckets>,
    key: Key<'a>,
) -> Option<&'s Buckets> {
    state.get(&key).or_else(|| initial.get(&key))
}

fn is_soft_delete(t: &TableRouting, c: &RowChange) -> bool {
    c.kind == ChangeKind::Update
        && t.deleted_at.as_deref().is_some_and(|col| matches!(c.value(col), Some(ColumnValue::Text(_))))
}

/// The replicated values as a JSON object (unchanged TOAST values left out), for failures.
fn payload_json(c: &RowChange) -> String {
    let map: serde_json::Map<String, serde_json::Value> = c
        .iter()
        .filter_map(|(k, v)| match v {
            ColumnValue::Null => Some((k.to_string(), serde_json::Value::Null)),
            ColumnValue::Text(t) => Some((k.to_string(), serde_json::Value::String(t.clone()))),
            ColumnValue::UnchangedToast => None,
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Plans `chunk`: `held` are the edges its [`touched`] records held before it (others are
/// ignored), `owners` the owner of each change in chunk order, `sums` its records' checksums.
pub fn plan<'a>(
    chunk: &'a [RowChange],
    held: &[HeldEdge],
    owners: &[Owner],
    sums: &Checksums<'a>,
    routing: &RoutingTable,
    assigner: &dyn BucketAssigner,
) -> Plan<'a> {
    let keys = touched(chunk);
    // The chunk's own copy of a key the database sent back.
    let key_of = |table: &str, id: &str| keys.binary_search(&(table, id)).ok().map(|i| keys[i]);
    let mut buckets = Interner::default();
    let mut initial: HashMap<Key<'a>, Buckets> = HashMap::new();
    let mut stored_sums: HashMap<(Key<'a>, Bucket), Option<i32>> = HashMap::new();
    for e in held {
        let Some(key) = key_of(&e.table, &e.record) else { continue };
        let bucket = buckets.get(&e.bucket);
        let holding = initial.entry(key).or_default();
        if let Err(at) = holding.binary_search(&bucket) {
            holding.insert(at, bucket.clone());
        }
        stored_sums.insert((key, bucket), e.checksum);
    }

    // Each touched record's buckets after the changes so far (falling back to `initial`).
    let mut state: HashMap<Key<'a>, Buckets> = HashMap::new();
    // Records an update moved to other buckets at some point of the chunk, even when they end
    // where they began.
    let mut changed_midway: HashSet<Key<'a>> = HashSet::new();
    let mut plan = Plan::default();
    let row = |plan: &mut Plan<'a>, bucket: &Bucket, key: Key<'a>, op: Op| {
        plan.changelog.push(ChangelogRow { bucket: bucket.clone(), table: key.0, record: key.1, op })
    };
    for (c, owner) in chunk.iter().zip(owners) {
        let Some(t) = routing.get(&c.table) else { continue };
        if *owner == Owner::RowGone {
            // Nothing to route with and nothing left to serve: the later delete handles it.
            continue;
        }
        if let Some(old) = &c.old_key {
            // The primary key changed: the old record leaves all its buckets.
            let k: Key<'a> = (&c.table, old);
            for b in held_now(&state, &initial, k).cloned().unwrap_or_default() {
                row(&mut plan, &b, k, Op::Delete);
            }
            state.insert(k, Vec::new());
        }
        let key: Key<'a> = (&c.table, &c.key);
        let existing = held_now(&state, &initial, key).cloned().unwrap_or_default();
        let removal = c.kind == ChangeKind::Delete || is_soft_delete(t, c);
        if removal && !existing.is_empty() {
            for b in &existing {
                row(&mut plan, b, key, Op::Delete);
            }
            state.insert(key, Vec::new());
            continue;
        }
        let desired: Vec<Bucket> = match assigner.assign(t, c, owner) {
            Ok(b) => dedup_buckets(b).iter().map(|b| buckets.get(b)).collect(),
            Err(error) => {
                let op = match c.kind {
                    ChangeKind::Insert => Op::Create,
                    ChangeKind::Update => Op::Update,
                    ChangeKind::Delete => Op::Delete,
                };
                plan.failures.push(Failure {
                    table: c.table.to_string(),
                    record: c.key.clone(),
                    op,
                    error,
                    payload: payload_json(c),
                });
                continue;
            }
        };
        if removal {
            // No edges yet (e.g. a row older than the consumer): tell its assigned buckets.
            for b in &desired {
                row(&mut plan, b, key, Op::Delete);
            }
            state.insert(key, Vec::new());
            continue;
        }
        // C8: removals first, so a client subscribed to both buckets ends with the row.
        for b in existing.iter().filter(|b| !desired.contains(b)) {
            row(&mut plan, b, key, Op::Delete);
        }
        for b in &desired {
            row(&mut plan, b, key, if existing.contains(b) { Op::Update } else { Op::Create });
        }
        let mut after = desired;
        after.sort_unstable();
        after.dedup();
        if c.kind == ChangeKind::Update && after != existing {
            changed_midway.insert(key);
        }
        state.insert(key, after);
    }

    // Updated rows of tables with children, and whether the latest update left the row
    // soft-deleted: its live children still follow its owner, though it holds no edges itself.
    let mut updated: HashMap<Key<'a>, bool> = HashMap::new();
    for c in chunk.iter().filter(|c| c.kind == ChangeKind::Update && routing.has_children(&c.table)) {
        let soft_deleted = routing.get(&c.table).is_some_and(|t| is_soft_delete(t, c));
        updated.insert((&c.table, &c.key), soft_deleted);
    }
    // Net edge changes against what the database held before the chunk.
    for &k in &keys {
        let Some(after) = held_now(&state, &initial, k) else { continue };
        let before = initial.get(&k);
        let net = !after.is_empty() && before != Some(after);
        let midway = !after.is_empty() && changed_midway.contains(&k);
        let moved = match updated.get(&k) {
            Some(true) => true,
            Some(false) => net || midway,
            None => false,
        };
        if moved {
            let held_before = before.is_some_and(|b| !b.is_empty());
            plan.rerouted |= held_before && (net || midway);
            plan.moved.push((k.0.to_string(), k.1.to_string()));
        }
        for b in before.into_iter().flatten().filter(|b| !after.contains(b)) {
            plan.removed.push(EdgeChange { table: k.0, record: k.1, bucket: b.clone(), checksum: None });
        }
        // A row deleted later in the stream has no current version: its edge keeps a NULL
        // checksum until the delete removes it.
        let sum = sums.get(k);
        for b in after {
            let edge = EdgeChange { table: k.0, record: k.1, bucket: b.clone(), checksum: sum };
            if !before.is_some_and(|h| h.contains(b)) {
                plan.added.push(edge);
            } else if stored_sums.get(&(k, b.clone())) != Some(&sum) {
                plan.rechecked.push(edge);
            }
        }
    }
    plan.removed.sort();
    plan.added.sort();
    plan.rechecked.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::buckets::DefaultAssigner;
    use crate::checksum::record_checksum;
    use crate::types::Oid;

    const INT4: u32 = 23;
    const TEXT: u32 = 25;
    const TIMESTAMPTZ: u32 = 1184;

    /// `items (id int4, user_id text, n int4)`, owned by `user_id`; `notes (id int4, user_id
    /// text, body text, deleted_at timestamptz)` with soft deletes; `tasks (id int4, project_id
    /// int4)` routed through its parent `items`.
    fn routing() -> RoutingTable {
        let table = |name: &str, cols: &[(&str, u32)], owner: Option<&str>| TableRouting {
            name: name.into(),
            qualified: format!("\"public\".\"{name}\""),
            pk: "id".into(),
            pk_type: "integer".into(),
            owner: owner.map(String::from),
            parent: None,
            shared: Vec::new(),
            deleted_at: None,
            columns: cols.iter().map(|c| c.0.to_string()).collect(),
            type_oids: cols.iter().map(|c| c.1).collect(),
            render_oids: cols.iter().map(|c| c.1).collect(),
            row_json: "row_to_json(t.*)".into(),
        };
        let mut notes = table(
            "notes",
            &[("id", INT4), ("user_id", TEXT), ("body", TEXT), ("deleted_at", TIMESTAMPTZ)],
            Some("user_id"),
        );
        notes.deleted_at = Some("deleted_at".into());
        let mut tasks = table("tasks", &[("id", INT4), ("project_id", INT4)], None);
        tasks.parent = Some(("items".into(), "project_id".into()));
        RoutingTable::new([
            table("items", &[("id", INT4), ("user_id", TEXT), ("n", INT4)], Some("user_id")),
            notes,
            tasks,
        ])
    }

    fn columns(routing: &RoutingTable, table: &str) -> Arc<[RelColumn]> {
        let t = routing.get(table).expect("routed");
        t.columns.iter().zip(&t.type_oids).map(|(n, o)| RelColumn { name: n.clone(), type_oid: Oid(*o) }).collect()
    }

    fn value(v: &str) -> ColumnValue {
        match v {
            "NULL" => ColumnValue::Null,
            "TOAST" => ColumnValue::UnchangedToast,
            text => ColumnValue::Text(text.into()),
        }
    }

    /// A change of `table` whose values are given in column order (`NULL`, `TOAST` for an
    /// unchanged TOAST value); the key is the first value.
    fn change(routing: &RoutingTable, kind: ChangeKind, table: &str, values: &[&str]) -> RowChange {
        let columns = match routing.get(table) {
            Some(_) => columns(routing, table),
            None => vec![RelColumn { name: "id".into(), type_oid: Oid(INT4) }].into(),
        };
        RowChange {
            table: Arc::from(table),
            kind,
            key: values[0].to_string(),
            old_key: None,
            columns,
            values: values.iter().map(|v| value(v)).collect(),
        }
    }

    fn held(table: &str, record: &str, bucket: &str, checksum: Option<i32>) -> HeldEdge {
        HeldEdge { table: table.into(), record: record.into(), bucket: bucket.into(), checksum }
    }

    fn user(id: &str) -> Owner {
        Owner::User(id.into())
    }

    /// The plan's changelog as `(bucket, table, record, op)`.
    fn log(p: &Plan<'_>) -> Vec<(String, String, String, Op)> {
        p.changelog.iter().map(|r| (r.bucket.to_string(), r.table.into(), r.record.into(), r.op)).collect()
    }

    /// Edge changes as `(table, record, bucket, checksum)`.
    fn edges(e: &[EdgeChange<'_>]) -> Vec<(String, String, String, Option<i32>)> {
        e.iter().map(|e| (e.table.into(), e.record.into(), e.bucket.to_string(), e.checksum)).collect()
    }

    fn row(b: &str, t: &str, r: &str, op: Op) -> (String, String, String, Op) {
        (b.into(), t.into(), r.into(), op)
    }

    fn edge(t: &str, r: &str, b: &str, sum: Option<i32>) -> (String, String, String, Option<i32>) {
        (t.into(), r.into(), b.into(), sum)
    }

    /// Plans `chunk` with checksums rendered from the chunk (nothing read back).
    fn plan_of<'a>(routing: &RoutingTable, chunk: &'a [RowChange], held: &[HeldEdge], owners: &[Owner]) -> Plan<'a> {
        let sums = Checksums::render(chunk, routing, record_checksum);
        plan(chunk, held, owners, &sums, routing, &DefaultAssigner)
    }

    fn sum(json: &str) -> Option<i32> {
        Some(record_checksum(json))
    }

    #[test]
    fn an_insert_enters_its_owners_bucket_with_the_rows_checksum() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Insert, "items", &["1", "alice", "5"])];
        let p = plan_of(&r, &chunk, &[], &[user("alice")]);
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Create)]);
        let s = sum(r#"{"id": 1, "user_id": "alice", "n": 5}"#);
        assert_eq!(edges(&p.added), [edge("items", "1", "user:alice", s)]);
        assert!(p.removed.is_empty() && p.rechecked.is_empty() && p.failures.is_empty());
        assert_eq!(touched(&chunk), [("items", "1")]);
    }

    #[test]
    fn an_owner_change_removes_first_then_adds() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Update, "items", &["1", "bob", "5"])];
        let p = plan_of(&r, &chunk, &[held("items", "1", "user:alice", Some(9))], &[user("bob")]);
        // C8: the removal precedes the addition.
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Delete), row("user:bob", "items", "1", Op::Create)]);
        assert_eq!(edges(&p.removed), [edge("items", "1", "user:alice", None)]);
        let s = sum(r#"{"id": 1, "user_id": "bob", "n": 5}"#);
        assert_eq!(edges(&p.added), [edge("items", "1", "user:bob", s)]);
        assert!(p.rechecked.is_empty());
    }

    #[test]
    fn an_update_in_place_rewrites_the_checksum_only_when_it_changed() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Update, "items", &["1", "alice", "6"])];
        let s = sum(r#"{"id": 1, "user_id": "alice", "n": 6}"#);
        let p = plan_of(&r, &chunk, &[held("items", "1", "user:alice", Some(9))], &[user("alice")]);
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Update)]);
        assert_eq!(edges(&p.rechecked), [edge("items", "1", "user:alice", s)]);
        assert!(p.added.is_empty() && p.removed.is_empty());
        // The stored checksum is already the row's: nothing to write for the edge.
        let p = plan_of(&r, &chunk, &[held("items", "1", "user:alice", s)], &[user("alice")]);
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Update)]);
        assert!(p.rechecked.is_empty() && p.added.is_empty() && p.removed.is_empty());
    }

    #[test]
    fn a_child_reparented_to_another_owner_follows_the_new_parents_owner() {
        // The owner comes from the foreign-key chain the writer resolved: the child's parent
        // is now bob's.
        let r = routing();
        let chunk = [change(&r, ChangeKind::Update, "tasks", &["7", "2"])];
        let p = plan_of(&r, &chunk, &[held("tasks", "7", "user:alice", Some(1))], &[user("bob")]);
        assert_eq!(log(&p), [row("user:alice", "tasks", "7", Op::Delete), row("user:bob", "tasks", "7", Op::Create)]);
        assert_eq!(edges(&p.removed), [edge("tasks", "7", "user:alice", None)]);
        assert_eq!(edges(&p.added), [edge("tasks", "7", "user:bob", sum(r#"{"id": 7, "project_id": 2}"#))]);
        // A parent that cannot be found is a failure, not a changelog row.
        let missing = Owner::ParentMissing("tasks/7: parent items row 2 not found".into());
        let p = plan_of(&r, &chunk, &[], &[missing]);
        assert!(p.changelog.is_empty() && p.added.is_empty());
        assert_eq!(p.failures.len(), 1);
        let f = &p.failures[0];
        assert_eq!((f.table.as_str(), f.record.as_str(), f.op), ("tasks", "7", Op::Update));
        assert!(f.error.contains("parent items row 2"), "{}", f.error);
        assert_eq!(f.payload, r#"{"id":"7","project_id":"2"}"#);
    }

    #[test]
    fn a_key_change_removes_the_old_key_and_adds_the_new_one() {
        let r = routing();
        let mut c = change(&r, ChangeKind::Update, "items", &["2", "alice", "5"]);
        c.old_key = Some("1".into());
        let chunk = [c];
        assert_eq!(touched(&chunk), [("items", "1"), ("items", "2")]);
        let p = plan_of(&r, &chunk, &[held("items", "1", "user:alice", Some(3))], &[user("alice")]);
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Delete), row("user:alice", "items", "2", Op::Create)]);
        assert_eq!(edges(&p.removed), [edge("items", "1", "user:alice", None)]);
        let s = sum(r#"{"id": 2, "user_id": "alice", "n": 5}"#);
        assert_eq!(edges(&p.added), [edge("items", "2", "user:alice", s)]);
    }

    #[test]
    fn unchanged_toast_values_are_read_back_never_taken_as_null() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Update, "notes", &["4", "alice", "TOAST", "NULL"])];
        let mut sums = Checksums::render(&chunk, &r, record_checksum);
        assert_eq!(sums.missing, [("notes", "4")], "the row must be read back");
        let current = r#"{"id": 4, "user_id": "alice", "body": "long text", "deleted_at": null}"#;
        sums.add_rows([("notes", "4", current), ("notes", "99", "{}")]);
        let p =
            plan(&chunk, &[held("notes", "4", "user:alice", Some(1))], &[user("alice")], &sums, &r, &DefaultAssigner);
        assert_eq!(log(&p), [row("user:alice", "notes", "4", Op::Update)]);
        assert_eq!(edges(&p.rechecked), [edge("notes", "4", "user:alice", sum(current))]);
        // The row is gone by now (a later delete in the stream): a NULL checksum until then.
        let sums = Checksums::render(&chunk, &r, record_checksum);
        let p =
            plan(&chunk, &[held("notes", "4", "user:alice", Some(1))], &[user("alice")], &sums, &r, &DefaultAssigner);
        assert_eq!(edges(&p.rechecked), [edge("notes", "4", "user:alice", None)]);
        // The owner column itself unchanged TOAST and the row gone: no changelog row (the
        // delete that follows in the stream removes the record); its edge stays, without a
        // checksum.
        let chunk = [change(&r, ChangeKind::Update, "notes", &["4", "TOAST", "x", "NULL"])];
        let sums = Checksums::render(&chunk, &r, record_checksum);
        let p =
            plan(&chunk, &[held("notes", "4", "user:alice", Some(1))], &[Owner::RowGone], &sums, &r, &DefaultAssigner);
        assert!(p.changelog.is_empty() && p.removed.is_empty() && p.added.is_empty());
        assert_eq!(edges(&p.rechecked), [edge("notes", "4", "user:alice", None)]);
    }

    #[test]
    fn a_checksum_other_than_the_record_checksum_reads_every_row_back() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Insert, "items", &["1", "alice", "5"])];
        let custom: fn(&str) -> i32 = |json| json.len() as i32;
        let mut sums = Checksums::render(&chunk, &r, custom);
        assert_eq!(sums.missing, [("items", "1")]);
        sums.add_rows([("items", "1", "{\"id\":1}")]);
        let p = plan(&chunk, &[], &[user("alice")], &sums, &r, &DefaultAssigner);
        assert_eq!(edges(&p.added), [edge("items", "1", "user:alice", Some(8))]);
    }

    #[test]
    fn a_delete_with_a_key_only_identity_finds_its_buckets_through_the_edges() {
        let r = routing();
        // REPLICA IDENTITY DEFAULT: only the key; the owner column is NULL in the old tuple.
        let chunk = [change(&r, ChangeKind::Delete, "items", &["1", "NULL", "NULL"])];
        let p = plan_of(&r, &chunk, &[held("items", "1", "user:alice", Some(3))], &[Owner::Null]);
        assert_eq!(log(&p), [row("user:alice", "items", "1", Op::Delete)]);
        assert_eq!(edges(&p.removed), [edge("items", "1", "user:alice", None)]);
        assert!(p.added.is_empty() && p.rechecked.is_empty());
        assert!(Checksums::render(&chunk, &r, record_checksum).missing.is_empty(), "nothing to read back");
        // A row older than the consumer has no edges: its assigned buckets hear of it.
        let p = plan_of(&r, &chunk, &[], &[Owner::Null]);
        assert_eq!(log(&p), [row("global", "items", "1", Op::Delete)]);
        assert!(p.removed.is_empty() && p.added.is_empty());
    }

    #[test]
    fn a_soft_delete_removes_the_record_from_its_buckets() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Update, "notes", &["4", "alice", "x", "2026-01-01 00:00:00+00"])];
        let p = plan_of(&r, &chunk, &[held("notes", "4", "user:alice", Some(1))], &[user("alice")]);
        assert_eq!(log(&p), [row("user:alice", "notes", "4", Op::Delete)]);
        assert_eq!(edges(&p.removed), [edge("notes", "4", "user:alice", None)]);
        assert!(p.added.is_empty());
    }

    #[test]
    fn changes_within_a_chunk_net_out_against_what_was_held_before() {
        let r = routing();
        let chunk = [
            change(&r, ChangeKind::Insert, "items", &["1", "alice", "5"]),
            change(&r, ChangeKind::Update, "items", &["1", "bob", "5"]),
            change(&r, ChangeKind::Insert, "items", &["2", "carol", "1"]),
            change(&r, ChangeKind::Delete, "items", &["2", "NULL", "NULL"]),
        ];
        let owners = [user("alice"), user("bob"), user("carol"), Owner::Null];
        let p = plan_of(&r, &chunk, &[], &owners);
        assert_eq!(
            log(&p),
            [
                row("user:alice", "items", "1", Op::Create),
                row("user:alice", "items", "1", Op::Delete),
                row("user:bob", "items", "1", Op::Create),
                row("user:carol", "items", "2", Op::Create),
                row("user:carol", "items", "2", Op::Delete),
            ]
        );
        // Only the net result reaches the edges: record 1 in bob's bucket, record 2 nowhere.
        let s = sum(r#"{"id": 1, "user_id": "bob", "n": 5}"#);
        assert_eq!(edges(&p.added), [edge("items", "1", "user:bob", s)]);
        assert!(p.removed.is_empty() && p.rechecked.is_empty());
    }

    #[test]
    fn changes_of_tables_that_are_not_synced_produce_nothing() {
        let r = routing();
        let chunk = [change(&r, ChangeKind::Insert, "elsewhere", &["1"])];
        let p = plan_of(&r, &chunk, &[held("elsewhere", "1", "global", None)], &[Owner::NoOwnership]);
        assert_eq!(p, Plan::default());
        assert!(Checksums::render(&chunk, &r, record_checksum).missing.is_empty());
    }

    #[test]
    fn a_parent_that_changes_buckets_takes_its_children_along() {
        // `items` has a child table (`tasks`); `notes` has none.
        let r = routing();
        let moved = |p: &Plan<'_>| p.moved.iter().map(|(t, k)| format!("{t}/{k}")).collect::<Vec<_>>();
        let transfer = [change(&r, ChangeKind::Update, "items", &["1", "bob", "5"])];
        let p = plan_of(&r, &transfer, &[held("items", "1", "user:alice", Some(1))], &[user("bob")]);
        assert_eq!(moved(&p), ["items/1"], "an owner transfer moves the children");
        let p = plan_of(&r, &transfer, &[held("items", "1", "user:bob", Some(1))], &[user("bob")]);
        assert!(p.moved.is_empty(), "a plain edit leaves them where they are");
        let insert = [change(&r, ChangeKind::Insert, "items", &["1", "bob", "5"])];
        assert!(plan_of(&r, &insert, &[], &[user("bob")]).moved.is_empty(), "an inserted row has no children yet");
        let note = [change(&r, ChangeKind::Update, "notes", &["4", "bob", "x", "NULL"])];
        let p = plan_of(&r, &note, &[held("notes", "4", "user:alice", Some(1))], &[user("bob")]);
        assert!(p.moved.is_empty(), "a table without children");
        // A child moving to another parent moves its own children only if its table has any.
        let reparent = [change(&r, ChangeKind::Update, "tasks", &["7", "2"])];
        assert!(plan_of(&r, &reparent, &[held("tasks", "7", "user:alice", None)], &[user("bob")]).moved.is_empty());
    }

    #[test]
    fn a_rerouted_parent_has_its_children_recorded_where_they_stay() {
        let r = routing();
        let moved = |p: &Plan<'_>| p.moved.iter().map(|(t, k)| format!("{t}/{k}")).collect::<Vec<_>>();
        let held_alice = [held("items", "1", "user:alice", Some(1))];
        let transfer = [change(&r, ChangeKind::Update, "items", &["1", "bob", "5"])];
        let p = plan_of(&r, &transfer, &held_alice, &[user("bob")]);
        assert!(p.rerouted, "from some buckets to others");
        // Away and back within the chunk: the net edges do not change, the children still
        // follow (a read in between may have left them out).
        let back = [
            change(&r, ChangeKind::Update, "items", &["1", "bob", "5"]),
            change(&r, ChangeKind::Update, "items", &["1", "alice", "5"]),
        ];
        let p = plan_of(&r, &back, &held_alice, &[user("bob"), user("alice")]);
        assert_eq!(moved(&p), ["items/1"]);
        assert!(p.rerouted && p.added.is_empty() && p.removed.is_empty());
        // A plain edit neither moves nor reroutes; a row without edges before (a restore, or
        // older than the consumer) moves its children without rerouting them.
        let p = plan_of(&r, &transfer, &[held("items", "1", "user:bob", Some(1))], &[user("bob")]);
        assert!(p.moved.is_empty() && !p.rerouted);
        let p = plan_of(&r, &transfer, &[], &[user("bob")]);
        assert_eq!(moved(&p), ["items/1"]);
        assert!(!p.rerouted);
    }

    #[test]
    fn a_shared_owner_enters_its_rule_buckets() {
        use crate::capture::buckets::SharedKey;
        let r = routing();
        let key = |k: &str| SharedKey { bucket: "team".into(), key: k.into() };
        let chunk = [change(&r, ChangeKind::Update, "items", &["1", "alice", "5"])];
        let owners = [Owner::Shared(vec![key("7"), key("8")])];
        let p = plan_of(&r, &chunk, &[held("items", "1", "team:7", Some(1))], &owners);
        assert_eq!(log(&p), [row("team:7", "items", "1", Op::Update), row("team:8", "items", "1", Op::Create)]);
        assert!(p.removed.is_empty() && p.rerouted, "moved (a bucket added) with buckets held before");
    }

    #[test]
    fn a_soft_deleted_parent_takes_its_children_along() {
        // Soft deletes are a `notes` feature in this routing: give `items` a deleted-at column
        // and a child to check the rule where both meet.
        let mut r = routing();
        let mut items = r.get("items").cloned().unwrap();
        items.columns.push("deleted_at".into());
        items.type_oids.push(TIMESTAMPTZ);
        items.render_oids.push(TIMESTAMPTZ);
        items.deleted_at = Some("deleted_at".into());
        r = RoutingTable::new(r.tables().filter(|t| t.name != "items").cloned().chain([items]));
        let chunk = [change(&r, ChangeKind::Update, "items", &["1", "bob", "5", "2026-01-01 00:00:00+00"])];
        // Without edges (nothing to tell where it was), the children still follow its owner.
        let p = plan_of(&r, &chunk, &[], &[user("bob")]);
        assert_eq!(p.moved, [("items".to_string(), "1".to_string())]);
    }

    #[test]
    fn edges_of_records_outside_the_chunk_are_ignored_and_output_is_sorted() {
        let r = routing();
        let chunk = [
            change(&r, ChangeKind::Insert, "items", &["3", "NULL", "1"]),
            change(&r, ChangeKind::Insert, "items", &["1", "NULL", "1"]),
        ];
        let p = plan_of(&r, &chunk, &[held("items", "99", "global", None)], &[Owner::Null, Owner::Null]);
        let records: Vec<&str> = p.added.iter().map(|e| e.record).collect();
        assert_eq!(records, ["1", "3"]);
        assert!(p.removed.is_empty());
        // The changelog keeps stream order (`seq` is commit order).
        assert_eq!(p.changelog.iter().map(|r| r.record).collect::<Vec<_>>(), ["3", "1"]);
        let w = p.writes();
        assert_eq!(
            w.changelog.iter().map(|r| (r.bucket, r.record, r.op)).collect::<Vec<_>>(),
            [("global", "3", Op::Create), ("global", "1", Op::Create)]
        );
        assert_eq!(w.added.iter().map(|e| e.record).collect::<Vec<_>>(), ["1", "3"]);
    }
}
