//! The wire messages of the sync endpoints: every field name of the contract appears here and
//! nowhere else (requests, responses, the served schema, error bodies).
//!
//! Requests are decoded from a parsed JSON object by hand rather than with serde derive,
//! because the contract's rules are specific: some keys must be *present* (even as `null`)
//! and are checked in a fixed order, `null` means absent for every optional field, integers
//! must be JSON integers (`1.0`, `"1"` and `1e3` are refused), unknown keys are ignored.
//! Decoding ends with the request's `validate`, the one check of every client-supplied string
//! ([`check_text`]: a length limit and no NUL; UTF-8 is guaranteed by `&str`), so nothing a
//! client sends reaches SQL, storage or the log unchecked. The engine runs `validate` again on
//! entry, because embedders may build requests by hand.
//! Responses are plain `Serialize` structs with the contract's omit-empty rules; record
//! `data` passes PostgreSQL's `row_to_json` text through untouched, so numbers are never
//! round-tripped through floating point. Field order is the order of the bytes on the wire.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json_text::push_string;

mod pull_wire;

/// Panics when the pull request's two decodings disagree on `body` (for the fuzz targets).
#[doc(hidden)]
pub fn pull_decodings_agree(body: &[u8]) {
    pull_wire::check_agrees(body);
}

/// A request that does not satisfy the contract; the message is the 400 body's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    /// `invalid request body`: wrong type or shape.
    pub fn invalid() -> BadRequest {
        BadRequest("invalid request body".into())
    }

    /// `<key> is required`: a presence check failed.
    pub fn required(key: &str) -> BadRequest {
        BadRequest(format!("{key} is required"))
    }
}

/// Parses a request body per §0.2: the first JSON value must be an object; bytes after it are
/// ignored.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(Value::Object(map))) => Ok(map),
        _ => Err(BadRequest::invalid()),
    }
}

/// The longest client-supplied identifier, in bytes: client ids, device details, bucket ids,
/// table names, the schema hash. Far above anything an SDK sends (a UUID is 36 bytes), and far
/// below what a PostgreSQL index entry can hold (about 2.7 kB).
pub const MAX_ID_BYTES: usize = 256;

/// The longest user id (the `user:` bucket of the user must still be a valid bucket id).
pub const MAX_USER_ID_BYTES: usize = MAX_ID_BYTES - "user:".len();

/// The longest record id (primary key text) in a push or a cursor.
pub const MAX_RECORD_ID_BYTES: usize = 1024;

/// The longest rebuild cursor: `<checkpoint>:<table>|<record id>`.
pub const MAX_CURSOR_BYTES: usize = 20 + 1 + MAX_ID_BYTES + 1 + MAX_RECORD_ID_BYTES;

/// The rule every client-supplied string passes before it is used: at most `max_bytes`, and no
/// NUL character (PostgreSQL text cannot hold one: it would fail the statement with SQLSTATE
/// 22021). `field` names the value in the message. Valid UTF-8 is a given: the JSON parser, the
/// query-string decoder and the token decoder refuse anything else before a `&str` exists.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), BadRequest> {
    if value.len() > max_bytes {
        return Err(BadRequest(format!("{field} is too long (at most {max_bytes} bytes)")));
    }
    if value.contains('\0') {
        return Err(BadRequest(format!("{field} contains a NUL character")));
    }
    Ok(())
}

/// The most entries of a pull's `tables` and `known_buckets`: far above any schema's tables or
/// any device's buckets, and a bound on the work a request can ask for (the table filter is
/// compared with every changelog row of the page, the known buckets with the subscriptions).
/// `bucket_checkpoints` has no such bound: its entries are only looked up, once each.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// [`check_text`] for every item of a list.
fn check_each<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a String>,
    max_bytes: usize,
) -> Result<(), BadRequest> {
    values.into_iter().try_for_each(|v| check_text(field, v, max_bytes))
}

/// [`check_each`] for a list of at most [`MAX_LIST_ENTRIES`].
fn check_list(field: &str, values: &[String], max_bytes: usize) -> Result<(), BadRequest> {
    if values.len() > MAX_LIST_ENTRIES {
        return Err(BadRequest(format!("{field} has too many entries (at most {MAX_LIST_ENTRIES})")));
    }
    check_each(field, values, max_bytes)
}

/// Typed access to a request object with the contract's decoding rules.
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// Wraps a request body object.
    pub fn new(body: &'a Map<String, Value>) -> Fields<'a> {
        Fields(body)
    }

    /// Presence checks, in order: each key must exist (its value may be `null`).
    pub fn require(&self, keys: &[&str]) -> Result<(), BadRequest> {
        match keys.iter().find(|k| !self.0.contains_key(**k)) {
            Some(k) => Err(BadRequest::required(k)),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// An optional string (`null`/absent -> `None`).
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, BadRequest> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(BadRequest::invalid()),
        }
    }

    /// A string defaulting to `""`.
    pub fn str_or_empty(&self, key: &str) -> Result<&'a str, BadRequest> {
        Ok(self.opt_str(key)?.unwrap_or(""))
    }

    /// An integer defaulting to 0; only JSON integers are accepted.
    pub fn int(&self, key: &str) -> Result<i64, BadRequest> {
        match self.get(key) {
            None => Ok(0),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(BadRequest::invalid),
            Some(_) => Err(BadRequest::invalid()),
        }
    }

    /// An optional list of strings.
    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<String>>, BadRequest> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(BadRequest::invalid))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(BadRequest::invalid()),
        }
    }

    /// An optional map of string to integer.
    pub fn opt_int_map(&self, key: &str) -> Result<Option<BTreeMap<String, i64>>, BadRequest> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Number(n) => n.as_i64().map(|i| (k.clone(), i)).ok_or_else(BadRequest::invalid),
                    Value::Null => Ok((k.clone(), 0)),
                    _ => Err(BadRequest::invalid()),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(_) => Err(BadRequest::invalid()),
        }
    }

    /// The raw value of an optional key (`null` -> `None`).
    pub fn opt_value(&self, key: &str) -> Option<&'a Value> {
        self.get(key)
    }
}

/// The schema pair every schema-gated request carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaPair {
    /// `schema_version`.
    pub version: i64,
    /// `schema_hash`.
    pub hash: String,
}

impl SchemaPair {
    fn read(f: &Fields<'_>) -> Result<SchemaPair, BadRequest> {
        Ok(SchemaPair { version: f.int("schema_version")?, hash: f.str_or_empty("schema_hash")?.to_string() })
    }

    /// The register bootstrap pair `(0, "")`, accepted without comparison.
    pub fn is_bootstrap(&self) -> bool {
        self.version == 0 && self.hash.is_empty()
    }

    fn validate(&self) -> Result<(), BadRequest> {
        check_text("schema_hash", &self.hash, MAX_ID_BYTES)
    }
}

/// `limit` normalised: absent or <= 0 -> 100, above 1000 -> 1000.
pub fn normalise_limit(limit: i64) -> i64 {
    if limit <= 0 {
        100
    } else {
        limit.min(1000)
    }
}

/// POST /sync/register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Stable device id (non-empty).
    pub client_id: String,
    /// Optional device name.
    pub client_name: Option<String>,
    /// Platform.
    pub platform: String,
    /// App version.
    pub app_version: String,
    /// The client's schema pair.
    pub schema: SchemaPair,
}

impl RegisterRequest {
    /// Decodes per §1.2.
    pub fn decode(body: &Map<String, Value>) -> Result<RegisterRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["schema_version", "schema_hash"])?;
        let client_id = f.str_or_empty("client_id")?.to_string();
        let req = RegisterRequest {
            client_name: f.opt_str("client_name")?.map(str::to_string),
            platform: f.str_or_empty("platform")?.to_string(),
            app_version: f.str_or_empty("app_version")?.to_string(),
            schema: SchemaPair::read(&f)?,
            client_id,
        };
        if req.client_id.is_empty() {
            return Err(BadRequest::required("client_id"));
        }
        req.validate()?;
        Ok(req)
    }

    /// Checks every string of the request ([`check_text`]).
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)?;
        check_text("client_name", self.client_name.as_deref().unwrap_or(""), MAX_ID_BYTES)?;
        check_text("platform", &self.platform, MAX_ID_BYTES)?;
        check_text("app_version", &self.app_version, MAX_ID_BYTES)?;
        self.schema.validate()
    }
}

/// POST /sync/pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Device id.
    pub client_id: String,
    /// Legacy checkpoint.
    pub checkpoint: i64,
    /// Per-bucket checkpoints; a non-empty map selects per-bucket mode.
    pub bucket_checkpoints: BTreeMap<String, i64>,
    /// Optional table filter.
    pub tables: Vec<String>,
    /// Normalised page size.
    pub limit: i64,
    /// Buckets the client knows (rarely sent).
    pub known_buckets: Vec<String>,
    /// The client's schema pair.
    pub schema: SchemaPair,
}

impl PullRequest {
    /// Decodes a request body: [`parse_object`], then [`PullRequest::decode`]. The plain shape
    /// SDKs send takes a shorter way to the same request, without building a tree of the body.
    pub fn from_json(body: &[u8]) -> Result<PullRequest, BadRequest> {
        match pull_wire::decode(body) {
            Some(req) => {
                req.validate()?;
                Ok(req)
            }
            None => PullRequest::decode(&parse_object(body)?),
        }
    }

    /// Decodes per §1.3.
    pub fn decode(body: &Map<String, Value>) -> Result<PullRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["client_id", "schema_version", "schema_hash"])?;
        let req = PullRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            checkpoint: f.int("checkpoint")?,
            bucket_checkpoints: f.opt_int_map("bucket_checkpoints")?.unwrap_or_default(),
            tables: f.opt_str_list("tables")?.unwrap_or_default(),
            limit: normalise_limit(f.int("limit")?),
            known_buckets: f.opt_str_list("known_buckets")?.unwrap_or_default(),
            schema: SchemaPair::read(&f)?,
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks every string of the request ([`check_text`]).
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)?;
        check_each("bucket_checkpoints", self.bucket_checkpoints.keys(), MAX_ID_BYTES)?;
        check_list("tables", &self.tables, MAX_ID_BYTES)?;
        check_list("known_buckets", &self.known_buckets, MAX_ID_BYTES)?;
        self.schema.validate()
    }
}

/// One record of a push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRecord {
    /// Primary key text, echoed verbatim.
    pub id: String,
    /// Target table, echoed verbatim.
    pub table_name: String,
    /// Operation string, echoed verbatim (validated by the engine).
    pub operation: String,
    /// The row (`None` when absent or null).
    pub data: Option<Value>,
    /// `client_updated_at` as sent.
    pub client_updated_at: Option<String>,
    /// `base_updated_at` as sent.
    pub base_updated_at: Option<String>,
}

impl PushRecord {
    /// Why PostgreSQL could never store this record, by [`check_text`]: an oversized or NUL id,
    /// or a NUL character in a string of `data` (create and update). The engine rejects such a
    /// record on its own (`invalid_data`) before any statement, so the rest of the push applies.
    pub fn problem(&self) -> Option<String> {
        if let Err(e) = check_text("id", &self.id, MAX_RECORD_ID_BYTES) {
            return Some(e.0);
        }
        if self.operation == "delete" {
            return None;
        }
        let Some(Value::Object(data)) = &self.data else { return None };
        data.iter().find(|(_, v)| has_nul(v)).map(|(k, _)| {
            let shown: String = k.chars().filter(|c| *c != '\0').take(64).collect();
            format!("{shown} contains a NUL character")
        })
    }
}

/// True when a string anywhere inside `v` contains NUL.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// POST /sync/push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    /// Device id.
    pub client_id: String,
    /// The records, in order.
    pub changes: Vec<PushRecord>,
    /// The client's schema pair.
    pub schema: SchemaPair,
}

impl PushRequest {
    /// Decodes per §1.4. Timestamps are kept as text; the engine parses them leniently.
    pub fn decode(body: &Map<String, Value>) -> Result<PushRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["schema_version", "schema_hash"])?;
        let changes = match f.opt_value("changes") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let obj = item.as_object().ok_or_else(BadRequest::invalid)?;
                    let r = Fields::new(obj);
                    Ok(PushRecord {
                        id: r.str_or_empty("id")?.to_string(),
                        table_name: r.str_or_empty("table_name")?.to_string(),
                        operation: r.str_or_empty("operation")?.to_string(),
                        data: r.opt_value("data").cloned(),
                        client_updated_at: r.opt_str("client_updated_at")?.map(str::to_string),
                        base_updated_at: r.opt_str("base_updated_at")?.map(str::to_string),
                    })
                })
                .collect::<Result<Vec<_>, BadRequest>>()?,
            Some(_) => return Err(BadRequest::invalid()),
        };
        let req =
            PushRequest { client_id: f.str_or_empty("client_id")?.to_string(), changes, schema: SchemaPair::read(&f)? };
        req.validate()?;
        Ok(req)
    }

    /// Checks the request's own strings ([`check_text`]); each record is checked on its own
    /// with [`PushRecord::problem`], so one bad record never refuses the others.
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)?;
        self.schema.validate()
    }
}

/// The snapshot cursor (§1.5): all three keys always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCursor {
    /// Changelog position captured on the first page.
    pub checkpoint: i64,
    /// Index into the table list.
    pub table_idx: i64,
    /// Last emitted primary key text of that table.
    pub after_id: String,
}

/// POST /sync/snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Device id.
    pub client_id: String,
    /// The cursor of the previous page, `None` for the first.
    pub cursor: Option<SnapshotCursor>,
    /// Normalised page size.
    pub limit: i64,
    /// The client's schema pair.
    pub schema: SchemaPair,
}

impl SnapshotRequest {
    /// Decodes per §1.5; a cursor that is not an object of the three typed keys is refused.
    pub fn decode(body: &Map<String, Value>) -> Result<SnapshotRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["client_id", "schema_version", "schema_hash"])?;
        let cursor = match f.opt_value("cursor") {
            None => None,
            Some(Value::Object(c)) => {
                let c = Fields::new(c);
                Some(SnapshotCursor {
                    checkpoint: c.int("checkpoint")?,
                    table_idx: c.int("table_idx")?,
                    after_id: c.str_or_empty("after_id")?.to_string(),
                })
            }
            Some(_) => return Err(BadRequest::invalid()),
        };
        let req = SnapshotRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            cursor,
            limit: normalise_limit(f.int("limit")?),
            schema: SchemaPair::read(&f)?,
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks every string of the request ([`check_text`]).
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)?;
        if let Some(c) = &self.cursor {
            check_text("cursor", &c.after_id, MAX_RECORD_ID_BYTES)?;
        }
        self.schema.validate()
    }
}

/// POST /sync/rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildRequest {
    /// Device id.
    pub client_id: String,
    /// The bucket to rebuild.
    pub bucket_id: String,
    /// Opaque cursor of the previous page.
    pub cursor: Option<String>,
    /// Normalised page size.
    pub limit: i64,
    /// The client's schema pair (validated strictly even though not presence-checked).
    pub schema: SchemaPair,
}

impl RebuildRequest {
    /// Decodes per §1.6.
    pub fn decode(body: &Map<String, Value>) -> Result<RebuildRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["client_id", "bucket_id"])?;
        let req = RebuildRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            bucket_id: f.str_or_empty("bucket_id")?.to_string(),
            cursor: f.opt_str("cursor")?.filter(|c| !c.is_empty()).map(str::to_string),
            limit: normalise_limit(f.int("limit")?),
            schema: SchemaPair::read(&f)?,
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks every string of the request ([`check_text`]).
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)?;
        check_text("bucket_id", &self.bucket_id, MAX_ID_BYTES)?;
        check_text("cursor", self.cursor.as_deref().unwrap_or(""), MAX_CURSOR_BYTES)?;
        self.schema.validate()
    }
}

/// GET /sync/debug?client_id=...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugRequest {
    /// Device id (non-empty).
    pub client_id: String,
}

impl DebugRequest {
    /// The name of the query parameter that carries the client id.
    pub const PARAMETER: &'static str = "client_id";

    /// The request for the decoded `client_id` query parameter (`None` when absent).
    pub fn decode(client_id: Option<&str>) -> Result<DebugRequest, BadRequest> {
        match client_id {
            None | Some("") => Err(BadRequest("client_id query parameter is required".into())),
            Some(c) => {
                let req = DebugRequest { client_id: c.to_string() };
                req.validate()?;
                Ok(req)
            }
        }
    }

    /// Checks the client id ([`check_text`]).
    pub fn validate(&self) -> Result<(), BadRequest> {
        check_text("client_id", &self.client_id, MAX_ID_BYTES)
    }
}

/// A synced row as clients receive it (§1.11).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Primary key text.
    pub id: String,
    /// Table.
    pub table_name: String,
    /// The bucket it arrived through (pull and rebuild only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
    /// `row_to_json` of the row, verbatim.
    pub data: Box<RawValue>,
    /// Always present (the SDKs require it).
    pub updated_at: String,
    /// Present for soft-deleted rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// §13.1 checksum (pull and rebuild only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<i32>,
}

/// A removal in a pull page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteEntry {
    /// Primary key text.
    pub id: String,
    /// Table.
    pub table_name: String,
}

/// `bucket_updates` of a pull page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BucketUpdate {
    /// Subscribed buckets the client did not list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Listed buckets the client is not subscribed to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// POST /sync/register response.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterResponse {
    /// `sync_clients.id`.
    pub id: String,
    /// Now.
    pub server_time: String,
    /// Last pull/push time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
    /// `last_pull_seq` or 0.
    pub checkpoint: i64,
    /// Every checkpoint row of the client.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bucket_checkpoints: BTreeMap<String, i64>,
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
}

/// POST /sync/pull response.
#[derive(Debug, Clone, Serialize)]
pub struct PullResponse {
    /// Upserts.
    pub changes: Vec<Record>,
    /// Removals.
    pub deletes: Vec<DeleteEntry>,
    /// Next cursor.
    pub checkpoint: i64,
    /// Per-bucket mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_checkpoints: Option<BTreeMap<String, i64>>,
    /// More pages follow.
    pub has_more: bool,
    /// Buckets to rebuild (per-bucket mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rebuild_buckets: Vec<String>,
    /// Bucket aggregates on the final page.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bucket_checksums: BTreeMap<String, i32>,
    /// Legacy mode: the client must re-snapshot.
    #[serde(skip_serializing_if = "is_false")]
    pub snapshot_required: bool,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_reason: Option<&'static str>,
    /// Subscription changes relative to `known_buckets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_updates: Option<BucketUpdate>,
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
}

/// One push result (§1.4).
#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    /// Echo.
    pub id: String,
    /// Echo.
    pub table_name: String,
    /// Echo.
    pub operation: String,
    /// `applied`, `conflict`, `rejected_terminal` or `rejected_retryable`.
    pub status: &'static str,
    /// §7.6 reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<&'static str>,
    /// Human text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Current server row (conflicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<Record>,
    /// New updated-at value of an applied create/update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_updated_at: Option<String>,
    /// Deleted-at value of an applied soft delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_deleted_at: Option<String>,
}

/// POST /sync/push response.
#[derive(Debug, Clone, Serialize)]
pub struct PushResponse {
    /// Results with status `applied`.
    pub accepted: Vec<PushResult>,
    /// All other results.
    pub rejected: Vec<PushResult>,
    /// Always 0.
    pub checkpoint: i64,
    /// Now.
    pub server_time: String,
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
}

/// POST /sync/snapshot response.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotResponse {
    /// Rows of this page.
    pub records: Vec<Record>,
    /// Present iff `has_more`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<SnapshotCursor>,
    /// The flow's checkpoint.
    pub checkpoint: i64,
    /// More pages follow.
    pub has_more: bool,
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
}

/// POST /sync/rebuild response.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildResponse {
    /// Live rows of the bucket on this page.
    pub records: Vec<Record>,
    /// Present iff `has_more`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The flow's checkpoint.
    pub checkpoint: i64,
    /// More pages follow.
    pub has_more: bool,
    /// Bucket aggregate on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_checksum: Option<i32>,
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
}

/// GET /sync/schema response (§1.8).
#[derive(Debug, Clone, Serialize)]
pub struct SchemaResponse {
    /// Current schema version.
    pub schema_version: i64,
    /// Current schema hash.
    pub schema_hash: String,
    /// Now.
    pub server_time: String,
    /// The served tables, exactly the bytes the hash was computed over.
    pub tables: Box<RawValue>,
}

/// GET /sync/tables response (§1.7). Keys are in byte order (as the reference's map encoding
/// writes them), so the fields are declared in that order.
#[derive(Debug, Clone, Serialize)]
pub struct TablesResponse {
    /// Current schema hash.
    pub schema_hash: String,
    /// Current schema version.
    pub schema_version: i64,
    /// Now.
    pub server_time: String,
    /// Every synced table, sorted by name.
    pub tables: Vec<TableMeta>,
}

/// `GET /sync/tables` entry (§5.1), keys in byte order like the rest of that response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableMeta {
    /// Always named (C1).
    pub deleted_at_column: String,
    /// Always present.
    pub dependencies: Vec<String>,
    /// §5.3.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent_fk_col: String,
    /// §5.3.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent_table: String,
    /// `disabled` for read-only tables, else `enabled`.
    pub push_policy: &'static str,
    /// Name.
    pub table_name: String,
    /// Always named (C1).
    pub updated_at_column: String,
}

/// GET /sync/debug response (§1.9); keys in byte order at every level.
#[derive(Debug, Clone, Serialize)]
pub struct DebugResponse {
    /// One entry per checkpoint row of a subscribed bucket.
    pub buckets: Vec<DebugBucket>,
    /// The changelog's extent.
    pub changelog_stats: ChangelogStats,
    /// The client row.
    pub client: DebugClient,
    /// Now.
    pub server_time: String,
}

/// `client` of the debug response.
#[derive(Debug, Clone, Serialize)]
pub struct DebugClient {
    /// App version.
    pub app_version: String,
    /// Subscriptions as stored (`[]` when none).
    pub bucket_subs: Vec<String>,
    /// Device id.
    pub client_id: String,
    /// `sync_clients.id`.
    pub id: String,
    /// False once compaction deactivated it.
    pub is_active: bool,
    /// Last pull that reached the data phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pull_at: Option<String>,
    /// Last push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_push_at: Option<String>,
    /// Last pull or push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
    /// `last_pull_seq`, when set (0 included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_checkpoint: Option<i64>,
    /// Platform.
    pub platform: String,
}

/// One `buckets[]` entry of the debug response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebugBucket {
    /// The bucket.
    pub bucket_id: String,
    /// The client's stored checkpoint for it.
    pub checkpoint: i64,
    /// `BIT_XOR` of the bucket's non-null edge checksums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<i32>,
    /// Edges of the bucket (all users).
    pub member_count: i64,
}

/// `changelog_stats` of the debug response (0 when the changelog is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChangelogStats {
    /// Highest `seq`.
    pub max_seq: i64,
    /// Lowest `seq`.
    pub min_seq: i64,
    /// Row count.
    pub total_entries: i64,
}

/// The body of every error answer but 409, 429 and 503 (§3.1).
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    /// The message.
    pub error: &'a str,
}

/// The 429 and 503 body (§3.1): the message and the seconds of `Retry-After`.
#[derive(Debug, Clone, Serialize)]
pub struct RetryBody<'a> {
    /// The message.
    pub error: &'a str,
    /// Seconds, as in the header.
    pub retry_after: u32,
}

/// The 409 body (§3.3), keys in byte order.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaMismatchBody<'a> {
    /// Always `schema_mismatch`.
    pub code: &'a str,
    /// Human text.
    pub message: &'a str,
    /// Current schema hash.
    pub server_schema_hash: &'a str,
    /// Current schema version.
    pub server_schema_version: i64,
}

impl SchemaMismatchBody<'_> {
    /// The contract's body for the current pair.
    pub fn new(version: i64, hash: &str) -> SchemaMismatchBody<'_> {
        SchemaMismatchBody {
            code: "schema_mismatch",
            message: "client schema does not match server schema",
            server_schema_hash: hash,
            server_schema_version: version,
        }
    }
}

/// The `/healthz` body (§1.10).
#[derive(Debug, Clone, Serialize)]
pub struct HealthBody<'a> {
    /// `ok` or `unavailable`.
    pub status: &'a str,
}

/// The contract's logical column types (§4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogicalType {
    /// Text, varchar, char, uuid, enum, interval.
    String,
    /// smallint, integer.
    Int,
    /// bigint.
    Int64,
    /// real, double precision, numeric.
    Float,
    /// boolean.
    Boolean,
    /// json, jsonb and every array type.
    Json,
    /// bytea.
    Bytes,
    /// date.
    Date,
    /// time with or without time zone.
    Time,
    /// timestamp with or without time zone.
    Datetime,
}

impl LogicalType {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogicalType::String => "string",
            LogicalType::Int => "int",
            LogicalType::Int64 => "int64",
            LogicalType::Float => "float",
            LogicalType::Boolean => "boolean",
            LogicalType::Json => "json",
            LogicalType::Bytes => "bytes",
            LogicalType::Date => "date",
            LogicalType::Time => "time",
            LogicalType::Datetime => "datetime",
        }
    }
}

/// §4.5 `default_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultKind {
    /// No default.
    None,
    /// SQLite can evaluate the translated default.
    Portable,
    /// Only the server can evaluate it.
    ServerOnly,
}

impl DefaultKind {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultKind::None => "none",
            DefaultKind::Portable => "portable",
            DefaultKind::ServerOnly => "server_only",
        }
    }
}

/// One served column (§4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaColumn {
    /// Name.
    pub name: String,
    /// `format_type` text.
    pub db_type: String,
    /// Logical type.
    pub logical_type: LogicalType,
    /// Nullability.
    pub nullable: bool,
    /// Default expression or `""`.
    pub default_sql: String,
    /// Default classification.
    pub default_kind: DefaultKind,
    /// SQLite default or `""`.
    pub sqlite_default_sql: String,
    /// Primary key member.
    pub is_primary_key: bool,
}

impl SchemaColumn {
    /// Appends the reference encoder's compact JSON: keys in §4.3 order, omit-empty.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"name\":");
        push_string(out, &self.name);
        out.push_str(",\"db_type\":");
        push_string(out, &self.db_type);
        out.push_str(",\"logical_type\":");
        push_string(out, self.logical_type.as_str());
        out.push_str(if self.nullable { ",\"nullable\":true" } else { ",\"nullable\":false" });
        if !self.default_sql.is_empty() {
            out.push_str(",\"default_sql\":");
            push_string(out, &self.default_sql);
        }
        out.push_str(",\"default_kind\":");
        push_string(out, self.default_kind.as_str());
        if !self.sqlite_default_sql.is_empty() {
            out.push_str(",\"sqlite_default_sql\":");
            push_string(out, &self.sqlite_default_sql);
        }
        out.push_str(if self.is_primary_key { ",\"is_primary_key\":true}" } else { ",\"is_primary_key\":false}" });
    }
}

/// One served table (§4.2, the \[latest\] field set; `push_policy` is always `enabled` in the
/// schema). Serialised by hand, byte for byte as the reference does, because the SHA-256 of
/// these bytes is the `schema_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaTable {
    /// Name.
    pub table_name: String,
    /// §5.3 parent.
    pub parent_table: String,
    /// §5.3 FK column.
    pub parent_fk_col: String,
    /// §5.2.
    pub dependencies: Vec<String>,
    /// Always named (C1).
    pub updated_at_column: String,
    /// Always named (C1).
    pub deleted_at_column: String,
    /// The primary key (one column).
    pub primary_key: Vec<String>,
    /// Served columns.
    pub columns: Vec<SchemaColumn>,
}

impl SchemaTable {
    /// Appends the reference encoder's compact JSON: keys in §4.2 order, omit-empty.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"table_name\":");
        push_string(out, &self.table_name);
        out.push_str(",\"push_policy\":\"enabled\"");
        if !self.parent_table.is_empty() {
            out.push_str(",\"parent_table\":");
            push_string(out, &self.parent_table);
        }
        if !self.parent_fk_col.is_empty() {
            out.push_str(",\"parent_fk_col\":");
            push_string(out, &self.parent_fk_col);
        }
        if !self.dependencies.is_empty() {
            out.push_str(",\"dependencies\":");
            write_string_array(out, &self.dependencies);
        }
        if !self.updated_at_column.is_empty() {
            out.push_str(",\"updated_at_column\":");
            push_string(out, &self.updated_at_column);
        }
        if !self.deleted_at_column.is_empty() {
            out.push_str(",\"deleted_at_column\":");
            push_string(out, &self.deleted_at_column);
        }
        out.push_str(",\"primary_key\":");
        write_string_array(out, &self.primary_key);
        out.push_str(",\"columns\":[");
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            c.write_json(out);
        }
        out.push_str("]}");
    }
}

fn write_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, s);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn presence_checks_run_in_order() {
        assert_eq!(PullRequest::decode(&obj(json!({}))).unwrap_err(), BadRequest::required("client_id"));
        assert_eq!(
            PullRequest::decode(&obj(json!({"client_id": "c"}))).unwrap_err(),
            BadRequest::required("schema_version")
        );
        assert_eq!(
            PullRequest::decode(&obj(json!({"client_id": "c", "schema_version": 1}))).unwrap_err(),
            BadRequest::required("schema_hash")
        );
        assert_eq!(
            RebuildRequest::decode(&obj(json!({"client_id": "c"}))).unwrap_err(),
            BadRequest::required("bucket_id")
        );
        assert_eq!(
            RegisterRequest::decode(&obj(json!({"schema_hash": ""}))).unwrap_err(),
            BadRequest::required("schema_version")
        );
        // Present as null satisfies the presence check.
        let r =
            PullRequest::decode(&obj(json!({"client_id": "c", "schema_version": null, "schema_hash": null}))).unwrap();
        assert_eq!(r.schema, SchemaPair::default());
    }

    #[test]
    fn null_means_absent_and_integers_are_strict() {
        let r = PullRequest::decode(&obj(json!({
            "client_id": "c", "schema_version": 3, "schema_hash": "h",
            "checkpoint": null, "limit": null, "tables": null, "bucket_checkpoints": null, "known_buckets": null
        })))
        .unwrap();
        assert_eq!((r.checkpoint, r.limit, r.tables.len(), r.bucket_checkpoints.len()), (0, 100, 0, 0));
        for bad in [json!(1.0), json!("1"), json!(1e3), json!(true), json!([1])] {
            let body = obj(json!({"client_id": "c", "schema_version": 3, "schema_hash": "h", "checkpoint": bad}));
            assert_eq!(PullRequest::decode(&body).unwrap_err(), BadRequest::invalid());
        }
        let body = obj(json!({"client_id": 5, "schema_version": 3, "schema_hash": "h"}));
        assert_eq!(PullRequest::decode(&body).unwrap_err(), BadRequest::invalid());
    }

    #[test]
    fn limits_are_normalised() {
        for (given, want) in [(0, 100), (-5, 100), (1, 1), (1000, 1000), (5000, 1000)] {
            assert_eq!(normalise_limit(given), want);
        }
    }

    #[test]
    fn register_needs_a_client_id() {
        let err = RegisterRequest::decode(&obj(json!({"schema_version": 0, "schema_hash": ""}))).unwrap_err();
        assert_eq!(err, BadRequest::required("client_id"));
    }

    #[test]
    fn push_records_are_decoded_leniently_but_typed() {
        let r = PushRequest::decode(&obj(json!({
            "client_id": "c", "schema_version": 1, "schema_hash": "h",
            "changes": [{"id": "1", "table_name": "t", "operation": "upsert", "data": null, "base_updated_at": null}]
        })))
        .unwrap();
        assert_eq!(r.changes[0].operation, "upsert");
        assert!(r.changes[0].data.is_none());
        let bad = obj(json!({"schema_version": 1, "schema_hash": "h", "changes": {"id": "1"}}));
        assert_eq!(PushRequest::decode(&bad).unwrap_err(), BadRequest::invalid());
        let bad = obj(json!({"schema_version": 1, "schema_hash": "h", "changes": [5]}));
        assert_eq!(PushRequest::decode(&bad).unwrap_err(), BadRequest::invalid());
    }

    #[test]
    fn snapshot_cursors_must_be_typed_objects() {
        let ok = obj(json!({"client_id": "c", "schema_version": 1, "schema_hash": "h",
            "cursor": {"checkpoint": 4, "table_idx": 1, "after_id": "x"}}));
        assert_eq!(SnapshotRequest::decode(&ok).unwrap().cursor.unwrap().table_idx, 1);
        for bad in [json!("c"), json!({"checkpoint": "4"}), json!({"table_idx": 1.5})] {
            let body = obj(json!({"client_id": "c", "schema_version": 1, "schema_hash": "h", "cursor": bad}));
            assert_eq!(SnapshotRequest::decode(&body).unwrap_err(), BadRequest::invalid());
        }
    }

    /// The keys of every object in a JSON text, in the order they are written (serde_json's
    /// own map sorts them, so a visitor records them as they come).
    #[derive(Default)]
    struct KeyOrder(Vec<Vec<String>>);

    impl<'de> serde::Deserialize<'de> for KeyOrder {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = KeyOrder;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<KeyOrder, A::Error> {
                    let mut out = KeyOrder(vec![Vec::new()]);
                    while let Some(k) = m.next_key::<String>()? {
                        out.0[0].push(k);
                        out.0.extend(m.next_value::<KeyOrder>()?.0);
                    }
                    Ok(out)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<KeyOrder, A::Error> {
                    let mut out = KeyOrder::default();
                    while let Some(item) = s.next_element::<KeyOrder>()? {
                        out.0.extend(item.0);
                    }
                    Ok(out)
                }
                fn visit_bool<E>(self, _: bool) -> Result<KeyOrder, E> {
                    Ok(KeyOrder::default())
                }
                fn visit_i64<E>(self, _: i64) -> Result<KeyOrder, E> {
                    Ok(KeyOrder::default())
                }
                fn visit_u64<E>(self, _: u64) -> Result<KeyOrder, E> {
                    Ok(KeyOrder::default())
                }
                fn visit_str<E>(self, _: &str) -> Result<KeyOrder, E> {
                    Ok(KeyOrder::default())
                }
                fn visit_unit<E>(self) -> Result<KeyOrder, E> {
                    Ok(KeyOrder::default())
                }
            }
            d.deserialize_any(V)
        }
    }

    #[test]
    fn map_shaped_responses_keep_their_keys_in_byte_order() {
        let tables = TablesResponse {
            schema_hash: "h".into(),
            schema_version: 1,
            server_time: "t".into(),
            tables: vec![TableMeta {
                deleted_at_column: "deleted_at".into(),
                dependencies: vec![],
                parent_fk_col: "p_id".into(),
                parent_table: "p".into(),
                push_policy: "enabled",
                table_name: "t".into(),
                updated_at_column: "updated_at".into(),
            }],
        };
        let debug = DebugResponse {
            buckets: vec![DebugBucket {
                bucket_id: "global".into(),
                checkpoint: 1,
                checksum: Some(2),
                member_count: 3,
            }],
            changelog_stats: ChangelogStats { max_seq: 1, min_seq: 1, total_entries: 1 },
            client: DebugClient {
                app_version: "1".into(),
                bucket_subs: vec![],
                client_id: "c".into(),
                id: "i".into(),
                is_active: true,
                last_pull_at: Some("t".into()),
                last_push_at: Some("t".into()),
                last_sync_at: Some("t".into()),
                legacy_checkpoint: Some(0),
                platform: "ios".into(),
            },
            server_time: "t".into(),
        };
        let bodies = [
            serde_json::to_string(&tables).unwrap(),
            serde_json::to_string(&debug).unwrap(),
            serde_json::to_string(&SchemaMismatchBody::new(3, "h")).unwrap(),
            serde_json::to_string(&RetryBody { error: "e", retry_after: 5 }).unwrap(),
        ];
        for body in bodies {
            for keys in serde_json::from_str::<KeyOrder>(&body).unwrap().0 {
                let mut sorted = keys.clone();
                sorted.sort();
                assert_eq!(keys, sorted, "{body}");
            }
        }
        assert_eq!(
            serde_json::to_string(&SchemaMismatchBody::new(3, "h")).unwrap(),
            r#"{"code":"schema_mismatch","message":"client schema does not match server schema","server_schema_hash":"h","server_schema_version":3}"#
        );
    }

    #[test]
    fn client_strings_are_checked_once_for_every_field() {
        let nul = "a\u{0}b";
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let base = || json!({"client_id": "c", "schema_version": 1, "schema_hash": "h"});
        let with = |key: &str, v: Value| {
            let mut b = base();
            b[key] = v;
            obj(b)
        };
        for (key, v) in [
            ("client_id", json!(nul)),
            ("client_id", json!(long)),
            ("schema_hash", json!(nul)),
            ("bucket_checkpoints", json!({nul: 1})),
            ("tables", json!([nul])),
            ("known_buckets", json!([long])),
        ] {
            let err = PullRequest::decode(&with(key, v)).unwrap_err().0;
            assert!(err.starts_with(key), "{key}: {err}");
        }
        for (key, v) in [("client_name", json!(nul)), ("platform", json!(long)), ("app_version", json!(nul))] {
            assert!(RegisterRequest::decode(&with(key, v)).unwrap_err().0.starts_with(key));
        }
        let cursor = json!({"checkpoint": 1, "table_idx": 0, "after_id": nul});
        assert_eq!(SnapshotRequest::decode(&with("cursor", cursor)).unwrap_err().0, "cursor contains a NUL character");
        let mut rebuild = with("bucket_id", json!("b"));
        rebuild.insert("cursor".into(), json!(format!("1:t|{}", "x".repeat(MAX_CURSOR_BYTES))));
        assert!(RebuildRequest::decode(&rebuild).unwrap_err().0.starts_with("cursor is too long"));
        assert_eq!(DebugRequest::decode(Some(nul)).unwrap_err().0, "client_id contains a NUL character");
        assert_eq!(DebugRequest::decode(Some("")).unwrap_err().0, "client_id query parameter is required");
        assert_eq!(DebugRequest::decode(None).unwrap_err().0, "client_id query parameter is required");
        // Push records are checked one by one, so one bad record never refuses the others.
        let push =
            PushRequest::decode(&obj(json!({"client_id": "c", "schema_version": 1, "schema_hash": "h", "changes": [
                {"id": nul, "table_name": "t", "operation": "delete"},
                {"id": "1", "table_name": "t", "operation": "create", "data": {"title": ["ok", {"x": nul}]}},
                {"id": "2", "table_name": "t", "operation": "delete", "data": {"title": nul}},
                {"id": "3", "table_name": "t", "operation": "update", "data": {"title": "fine"}},
            ]})))
            .unwrap();
        let problems: Vec<Option<String>> = push.changes.iter().map(PushRecord::problem).collect();
        assert_eq!(
            problems,
            vec![Some("id contains a NUL character".into()), Some("title contains a NUL character".into()), None, None]
        );
        assert!(check_text("f", &"é".repeat(128), MAX_ID_BYTES).is_ok(), "the limit is in bytes: 256 here");
        assert!(check_text("f", &"é".repeat(129), MAX_ID_BYTES).is_err());
    }

    #[test]
    fn responses_follow_omit_empty() {
        let r = PullResponse {
            changes: vec![],
            deletes: vec![],
            checkpoint: 7,
            bucket_checkpoints: None,
            has_more: false,
            rebuild_buckets: vec![],
            bucket_checksums: BTreeMap::new(),
            snapshot_required: false,
            snapshot_reason: None,
            bucket_updates: None,
            schema_version: 1,
            schema_hash: "h".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"changes":[],"deletes":[],"checkpoint":7,"has_more":false,"schema_version":1,"schema_hash":"h"}"#
        );
        let rec = Record {
            id: "1".into(),
            table_name: "t".into(),
            bucket_id: None,
            data: RawValue::from_string(r#"{"n":12.50,"big":9007199254740993}"#.into()).unwrap(),
            updated_at: "2026-03-05T11:30:00Z".into(),
            deleted_at: None,
            checksum: Some(-5),
        };
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"id":"1","table_name":"t","data":{"n":12.50,"big":9007199254740993},"updated_at":"2026-03-05T11:30:00Z","checksum":-5}"#
        );
    }
}
