//! What PostgreSQL itself says a user may read, for the randomized scope tests: each test names
//! its tables and its own statement of who may read a row, independent of synchro's.

use std::collections::BTreeMap;

use serde_json::Value;

/// `(table, id)` of a row.
pub type Key = (String, String);

/// A test's statement of readability.
pub struct Oracle {
    /// The synced tables.
    pub tables: &'static [&'static str],
    /// Those without a soft-delete column (`deleted_at` elsewhere).
    pub without_deleted_at: &'static [&'static str],
    /// The SQL condition under which a row of the table (alias `t`) is readable by `$1`.
    pub readable: fn(&str) -> String,
}

impl Oracle {
    /// Every live row `user` may read, as PostgreSQL holds it now.
    pub fn truth(&self, db: &mut postgres::Client, user: &str) -> BTreeMap<Key, Value> {
        let mut out = BTreeMap::new();
        for &table in self.tables {
            let live = if self.without_deleted_at.contains(&table) { "true" } else { "t.deleted_at IS NULL" };
            let sql = format!(
                "SELECT t.id::text, row_to_json(t)::text FROM {table} t WHERE {live} AND {}",
                (self.readable)(table)
            );
            for r in db.query(&sql, &[&user]).unwrap() {
                let json: String = r.get(1);
                out.insert((table.to_string(), r.get(0)), serde_json::from_str(&json).unwrap());
            }
        }
        out
    }

    /// Checks the records of one response: each row exists now, `user` may read it, and, when
    /// `current`, its data is the row as it is now.
    pub fn check_records(
        &self,
        db: &mut postgres::Client,
        user: &str,
        records: &[Value],
        current: bool,
        context: &str,
    ) {
        for rec in records {
            let table = rec["table_name"].as_str().unwrap();
            let id = rec["id"].as_str().unwrap();
            let sql =
                format!("SELECT row_to_json(t)::text, {} FROM {table} t WHERE t.id::text = $2", (self.readable)(table));
            let Some(row) = db.query_opt(&sql, &[&user, &id]).unwrap() else {
                panic!("{context}: {user} received {table}/{id}, which does not exist: {rec}")
            };
            assert!(row.get::<_, bool>(1), "{context}: {user} received {table}/{id} outside their scope: {rec}");
            if current {
                let now: Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
                assert_eq!(rec["data"], now, "{context}: {user} received {table}/{id} in a state it is not in");
            }
        }
    }
}
