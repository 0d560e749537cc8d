//! Bucket rules (`BUCKET_RULES`): buckets shared by the members of a team, a family, a
//! clinic... declared in a JSON file instead of written in Rust.
//!
//! ```json
//! { "shared": [ { "bucket": "team", "table": "projects", "column": "team_id",
//!                 "members": { "table": "team_members", "key": "team_id", "user": "user_id" } } ] }
//! ```
//!
//! A row of `projects` whose `team_id` is `T` belongs to bucket `team:T`; rows that reach
//! `projects` through foreign keys follow it; a user `U` is subscribed to `team:T` for every
//! row of `team_members` with `user_id = U` and `team_id = T`.
//!
//! This module reads and checks a rules file on its own, with no database: JSON syntax, the
//! fields and their types, name syntax, limits and duplicates, each error naming the file, the
//! rule and the field. `store::introspect` then resolves every rule against the catalog (the
//! table is synced, the columns exist, the key types match) and records it on the registry as
//! [`crate::registry::SharedRoot`]s, which bucket assignment, the engine's scope, the
//! subscriptions and the generated RLS policies all read.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{is_identifier, table_name, TableName, IDENTIFIER};
use crate::types::BucketId;

/// The largest rules file read (a rules file is a few hundred bytes; anything near this is a
/// mistake, and it is refused before it is parsed).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most rules a file may hold. Every rule adds a membership check to the scope of its
/// table's rows and a branch to the subscription query.
pub const MAX_RULES: usize = 64;

/// The longest bucket name.
pub const MAX_BUCKET_NAME: usize = 32;

/// Bucket names the contract already uses: a rule named `user` would make `user:<team>`
/// buckets indistinguishable from users' own.
const RESERVED_BUCKETS: &[&str] = &["user", "global"];

/// The membership table of a rule, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The membership table (`table` or `schema.table`); it need not be synced.
    pub table: TableName,
    /// Its column holding the shared key (a team id).
    pub key: String,
    /// Its column holding the member's user id.
    pub user: String,
}

/// One `shared` entry, as written (names not yet checked against the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRule {
    /// The bucket name: rows go to `<bucket>:<value of column>`.
    pub bucket: String,
    /// The synced table whose rows the rule places.
    pub table: TableName,
    /// The column of `table` holding the shared key.
    pub column: String,
    /// Who is subscribed to each bucket of the rule.
    pub members: Members,
}

/// A parsed rules file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketRules {
    /// Where the rules came from (the file's path), for error messages.
    pub source: String,
    /// The rules, in file order (errors refer to them as `shared[i]`).
    pub shared: Vec<SharedRule>,
}

/// What is wrong with a rules file: where (the file, the rule, the field) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    /// The file.
    pub source: String,
    /// The rule's index in `shared` and its bucket name when it has a readable one.
    pub rule: Option<(usize, Option<String>)>,
    /// The field inside the rule (`members.user`), or the top-level field.
    pub field: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BUCKET_RULES file {}", self.source)?;
        let mut sep = ": ";
        if let Some((i, bucket)) = &self.rule {
            write!(f, "{sep}shared[{i}]")?;
            if let Some(b) = bucket {
                write!(f, " (bucket {b:?})")?;
            }
            sep = ", ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RulesError {}

impl BucketRules {
    /// Reads and checks the rules file at `path`.
    pub fn load(path: &Path) -> Result<BucketRules, RulesError> {
        let source = path.display().to_string();
        let fail = |message: String| RulesError { source: source.clone(), rule: None, field: None, message };
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot be opened: {e}")))?;
        let mut bytes = Vec::new();
        // Read one byte past the limit, so an oversized file is refused without reading it all.
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(format!("cannot be read: {e}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(fail(format!("is larger than {MAX_FILE_BYTES} bytes; a rules file holds a few rules")));
        }
        let text = String::from_utf8(bytes).map_err(|e| fail(format!("is not UTF-8 text ({e})")))?;
        BucketRules::parse(&source, &text)
    }

    /// Parses and checks rules from `text`; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<BucketRules, RulesError> {
        let fail = |message: String| RulesError { source: source.to_string(), rule: None, field: None, message };
        let value: Value = serde_json::from_str(text).map_err(|e| fail(format!("is not valid JSON: {e}")))?;
        let Value::Object(top) = value else {
            return Err(fail(format!("must hold a JSON object with a \"shared\" list, not {}", kind(&value))));
        };
        if let Some(key) = top.keys().find(|k| *k != "shared") {
            return Err(RulesError {
                field: Some(key.chars().take(64).collect()),
                ..fail("unknown field (the file holds one field, \"shared\": the list of rules)".into())
            });
        }
        let list = match top.get("shared") {
            None => return Err(fail("has no \"shared\" list of rules".into())),
            Some(Value::Array(list)) => list,
            Some(other) => {
                return Err(RulesError {
                    field: Some("shared".into()),
                    ..fail(format!("must be a list of rules, not {}", kind(other)))
                })
            }
        };
        if list.len() > MAX_RULES {
            return Err(RulesError {
                field: Some("shared".into()),
                ..fail(format!("holds {} rules; at most {MAX_RULES} are accepted", list.len()))
            });
        }
        let mut shared: Vec<SharedRule> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let rule = parse_rule(source, i, item)?;
            let error = |field: &str, message: String| RulesError {
                source: source.to_string(),
                rule: Some((i, Some(rule.bucket.clone()))),
                field: Some(field.to_string()),
                message,
            };
            if let Some((j, _)) =
                shared.iter().enumerate().find(|(_, r)| r.table == rule.table && r.column == rule.column)
            {
                return Err(error(
                    "column",
                    format!("shared[{j}] already places {}.{} rows; one rule per column", rule.table, rule.column),
                ));
            }
            if let Some((j, other)) =
                shared.iter().enumerate().find(|(_, r)| r.bucket == rule.bucket && r.members != rule.members)
            {
                return Err(error(
                    "members",
                    format!(
                        "shared[{j}] also names bucket {:?} with members {}; rules of one bucket share their members \
                         (name the bucket differently, or give both the same members)",
                        rule.bucket,
                        describe_members(&other.members)
                    ),
                ));
            }
            shared.push(rule);
        }
        Ok(BucketRules { source: source.to_string(), shared })
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// True when `table` (a table of the publication, schema-qualified) is the membership
    /// table of a rule and not the table of any rule. Names in the file may omit the schema.
    pub fn names_membership_table(&self, table: &TableName) -> bool {
        let same = |named: &TableName| {
            named.name == table.name
                && (named.schema.is_none() || table.schema.is_none() || named.schema == table.schema)
        };
        self.shared.iter().any(|r| same(&r.members.table)) && !self.shared.iter().any(|r| same(&r.table))
    }

    /// An error about rule `i` (found when resolving it against the database).
    pub fn error(&self, i: usize, field: &str, message: impl Into<String>) -> RulesError {
        RulesError {
            source: self.source.clone(),
            rule: Some((i, self.shared.get(i).map(|r| r.bucket.clone()))),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

impl SharedRule {
    /// One line for `synchrod check`: `team:<projects.team_id>, members team_members(team_id, user_id)`.
    pub fn describe(&self) -> String {
        format!("{}:<{}.{}>, members {}", self.bucket, self.table, self.column, describe_members(&self.members))
    }
}

fn describe_members(m: &Members) -> String {
    format!("{}({} -> {})", m.table, m.key, m.user)
}

/// The bucket id of key `key` in bucket `bucket` (`team:<key>`), or `None` when the key cannot
/// form one (it is empty or contains `,`).
pub fn bucket_id(bucket: &str, key: &str) -> Option<BucketId> {
    if key.is_empty() {
        return None;
    }
    BucketId::custom(&format!("{bucket}:{key}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

const RULE_FIELDS: &[&str] = &["bucket", "table", "column", "members"];
const MEMBERS_FIELDS: &[&str] = &["table", "key", "user"];

fn parse_rule(source: &str, i: usize, item: &Value) -> Result<SharedRule, RulesError> {
    let bucket_name = item.get("bucket").and_then(Value::as_str).map(|b| b.chars().take(64).collect::<String>());
    let error = |field: Option<&str>, message: String| RulesError {
        source: source.to_string(),
        rule: Some((i, bucket_name.clone())),
        field: field.map(str::to_string),
        message,
    };
    let Value::Object(rule) = item else {
        return Err(error(None, format!("must be an object with {}, not {}", fields(RULE_FIELDS), kind(item))));
    };
    check_fields(rule, RULE_FIELDS, "").map_err(|(f, m)| error(Some(&f), m))?;
    let text = |map: &Map<String, Value>, field: &str, prefix: &str| -> Result<String, RulesError> {
        let shown = format!("{prefix}{field}");
        match map.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(error(Some(&shown), format!("must be a string, not {}", kind(other)))),
            None => Err(error(Some(&shown), "is required".into())),
        }
    };
    let bucket = text(rule, "bucket", "")?;
    check_bucket(&bucket).map_err(|m| error(Some("bucket"), m))?;
    let table = table_name(&text(rule, "table", "")?).map_err(|m| error(Some("table"), m))?;
    let column = column_name(&text(rule, "column", "")?).map_err(|m| error(Some("column"), m))?;
    let members = match rule.get("members") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(error(
                Some("members"),
                format!("must be an object with {}, not {}", fields(MEMBERS_FIELDS), kind(other)),
            ))
        }
        None => return Err(error(Some("members"), format!("is required: an object with {}", fields(MEMBERS_FIELDS)))),
    };
    check_fields(members, MEMBERS_FIELDS, "members.").map_err(|(f, m)| error(Some(&f), m))?;
    let members = Members {
        table: table_name(&text(members, "table", "members.")?).map_err(|m| error(Some("members.table"), m))?,
        key: column_name(&text(members, "key", "members.")?).map_err(|m| error(Some("members.key"), m))?,
        user: column_name(&text(members, "user", "members.")?).map_err(|m| error(Some("members.user"), m))?,
    };
    if members.key == members.user {
        return Err(error(Some("members.user"), format!("is the key column {:?} too; they must differ", members.key)));
    }
    Ok(SharedRule { bucket, table, column, members })
}

fn fields(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// Refuses a field the format does not have: a misspelt `"colum"` must not silently drop a
/// rule's meaning.
fn check_fields(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), (String, String)> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => {
            let shown: String = unknown.chars().take(64).collect();
            Err((format!("{prefix}{shown}"), format!("unknown field (expected {})", fields(known))))
        }
        None => Ok(()),
    }
}

fn check_bucket(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed || name.len() > MAX_BUCKET_NAME {
        return Err(format!(
            "invalid bucket name {:?}: lower-case letters, digits and _, starting with a letter, at most {MAX_BUCKET_NAME}",
            name.chars().take(64).collect::<String>()
        ));
    }
    if RESERVED_BUCKETS.contains(&name) {
        return Err(format!("bucket name {name:?} is reserved (user:<id> and global are the contract's own buckets)"));
    }
    Ok(())
}

fn column_name(raw: &str) -> Result<String, String> {
    if is_identifier(raw) {
        Ok(raw.to_string())
    } else {
        Err(format!("invalid column name {:?} (names are {IDENTIFIER})", raw.chars().take(64).collect::<String>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"shared": [{"bucket": "team", "table": "projects", "column": "team_id",
        "members": {"table": "team_members", "key": "team_id", "user": "user_id"}}]}"#;

    fn rule(bucket: &str, table: &str, column: &str, members: &str) -> String {
        format!(
            r#"{{"bucket": "{bucket}", "table": "{table}", "column": "{column}", "members": {{"table": "{members}", "key": "team_id", "user": "user_id"}}}}"#
        )
    }

    /// Parses `text` and returns the error's text.
    fn error(text: &str) -> String {
        BucketRules::parse("rules.json", text).unwrap_err().to_string()
    }

    #[test]
    fn the_minimal_form() {
        let r = BucketRules::parse("rules.json", MINIMAL).unwrap();
        assert_eq!(r.shared.len(), 1);
        let s = &r.shared[0];
        assert_eq!((s.bucket.as_str(), s.table.name.as_str(), s.column.as_str()), ("team", "projects", "team_id"));
        assert_eq!(s.members.table, TableName { schema: None, name: "team_members".into() });
        assert_eq!((s.members.key.as_str(), s.members.user.as_str()), ("team_id", "user_id"));
        assert_eq!(s.describe(), "team:<projects.team_id>, members team_members(team_id -> user_id)");
        assert!(BucketRules::parse("x", r#"{"shared": []}"#).unwrap().is_empty());
    }

    #[test]
    fn several_rules_and_qualified_names() {
        let text = format!(
            r#"{{"shared": [{}, {}, {}]}}"#,
            rule("team", "app.projects", "team_id", "app.team_members"),
            rule("team", "teams", "id", "app.team_members"),
            rule("org", "projects", "org_id", "org_members"),
        );
        let r = BucketRules::parse("rules.json", &text).unwrap();
        assert_eq!(r.shared.len(), 3);
        assert_eq!(r.shared[0].table.schema.as_deref(), Some("app"));
    }

    #[test]
    fn bucket_ids() {
        assert_eq!(bucket_id("team", "7").unwrap().as_str(), "team:7");
        assert!(bucket_id("team", "").is_none());
        assert!(bucket_id("team", "a,b").is_none(), "subscriptions round-trip through comma-joined text");
    }

    /// Every error names the file; those about a rule name it and its field.
    #[test]
    fn errors_name_the_file_the_rule_and_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "rules.json: is not valid JSON"),
            ("{", "is not valid JSON: EOF while parsing an object at line 1 column 1"),
            ("[]", "must hold a JSON object with a \"shared\" list, not a list"),
            ("null", "not null"),
            ("{}", "has no \"shared\" list"),
            (r#"{"shared": {}}"#, "field shared: must be a list of rules, not an object"),
            (r#"{"shared": [], "rules": []}"#, "field rules: unknown field"),
            (r#"{"shared": [7]}"#, "shared[0]: must be an object"),
            (r#"{"shared": [{}]}"#, "shared[0], field bucket: is required"),
            (r#"{"shared": [{"bucket": 1}]}"#, "shared[0], field bucket: must be a string, not a number"),
            (
                &MINIMAL.replace("\"column\"", "\"colum\""),
                "shared[0] (bucket \"team\"), field colum: unknown field (expected \"bucket\", \"table\", \"column\", \"members\")",
            ),
            (&MINIMAL.replace("\"team\"", "\"Team\""), "field bucket: invalid bucket name \"Team\""),
            (&MINIMAL.replace("\"team\"", "\"team:x\""), "invalid bucket name \"team:x\""),
            (&MINIMAL.replace("\"team\"", "\"user\""), "field bucket: bucket name \"user\" is reserved"),
            (&MINIMAL.replace("\"team\"", "\"global\""), "is reserved"),
            (&MINIMAL.replace("\"team\"", &format!("\"{}\"", "a".repeat(33))), "at most 32"),
            (&MINIMAL.replace("\"projects\"", "\"projects; drop table x\""), "field table: invalid table name"),
            (&MINIMAL.replace("\"projects\"", "\"a.b.c\""), "field table: invalid table name"),
            (&MINIMAL.replace("\"column\": \"team_id\"", "\"column\": \"team id\""), "field column: invalid column name"),
            (&MINIMAL.replace("\"column\": \"team_id\"", "\"column\": \"\\\"x\""), "field column: invalid column name"),
            (
                &MINIMAL.replace("{\"table\": \"team_members\", \"key\": \"team_id\", \"user\": \"user_id\"}", "[]"),
                "field members: must be an object",
            ),
            (&MINIMAL.replace("\"user\": \"user_id\"", "\"users\": \"user_id\""), "field members.users: unknown field"),
            (&MINIMAL.replace(", \"user\": \"user_id\"", ""), "field members.user: is required"),
            (&MINIMAL.replace("\"user\": \"user_id\"", "\"user\": 5"), "field members.user: must be a string"),
            (&MINIMAL.replace("\"user\": \"user_id\"", "\"user\": \"team_id\""), "field members.user: is the key column"),
            (&MINIMAL.replace("\"team_members\"", "\"\""), "field members.table: invalid table name"),
            (&MINIMAL.replace("\"key\": \"team_id\"", "\"key\": \"1x\""), "field members.key: invalid column name"),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(e.starts_with("BUCKET_RULES file rules.json: "), "{e}");
            assert!(e.contains(expected), "{text}\n  gave: {e}\n  expected: {expected}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let text =
            format!(r#"{{"shared": [{}, {}]}}"#, rule("team", "p", "team_id", "m"), rule("crew", "p", "team_id", "m"));
        assert!(
            error(&text).contains("shared[1] (bucket \"crew\"), field column: shared[0] already places p.team_id rows")
        );
        let text = format!(r#"{{"shared": [{}, {}]}}"#, rule("team", "p", "a", "m1"), rule("team", "q", "b", "m2"));
        assert!(
            error(&text).contains("shared[1] (bucket \"team\"), field members: shared[0] also names bucket \"team\"")
        );
    }

    #[test]
    fn hostile_files_are_refused_without_panicking() {
        let many = format!(r#"{{"shared": [{}]}}"#, vec![rule("team", "p", "c", "m"); MAX_RULES + 1].join(","));
        assert!(error(&many).contains(&format!("holds {} rules; at most {MAX_RULES}", MAX_RULES + 1)));
        // Deep nesting stops at serde_json's recursion limit.
        let deep = format!(r#"{{"shared": {}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(error(&deep).contains("recursion limit"));
        // Long names are shortened in messages.
        let long = MINIMAL.replace("\"column\": \"team_id\"", &format!("\"column\": \"{}\"", "x".repeat(100_000)));
        assert!(error(&long).len() < 400);
        let junk_key = format!(r#"{{"shared": [], "{}": 1}}"#, "k".repeat(100_000));
        assert!(error(&junk_key).len() < 400);
        // A NUL or a control character in a name is a name error, not a crash.
        assert!(error(&MINIMAL.replace("\"projects\"", "\"pro\\u0000jects\"")).contains("invalid table name"));
    }

    #[test]
    fn files_are_read_with_a_size_limit() {
        let dir = std::env::temp_dir().join(format!("synchro-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.json");
        std::fs::write(&ok, MINIMAL).unwrap();
        assert_eq!(BucketRules::load(&ok).unwrap().shared.len(), 1);
        let big = dir.join("big.json");
        std::fs::write(&big, " ".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(BucketRules::load(&big).unwrap_err().to_string().contains("is larger than"));
        let binary = dir.join("binary.json");
        std::fs::write(&binary, [0xff, 0xfe, b'{']).unwrap();
        assert!(BucketRules::load(&binary).unwrap_err().to_string().contains("is not UTF-8"));
        let missing = dir.join("missing.json");
        let e = BucketRules::load(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&format!("BUCKET_RULES file {}: cannot be opened", missing.display())), "{e}");
        assert!(BucketRules::load(&dir).unwrap_err().to_string().contains("cannot be read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
