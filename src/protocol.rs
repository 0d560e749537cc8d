//! The wire messages of the sync endpoints: every field name of the contract appears here and
//! nowhere else.
//!
//! Requests are decoded from a parsed JSON object by hand rather than with serde derive,
//! because the contract's rules are specific: some keys must be *present* (even as `null`)
//! and are checked in a fixed order, `null` means absent for every optional field, integers
//! must be JSON integers (`1.0`, `"1"` and `1e3` are refused), unknown keys are ignored.
//! Responses are plain `Serialize` structs with the contract's omit-empty rules; record
//! `data` passes PostgreSQL's `row_to_json` text through untouched, so numbers are never
//! round-tripped through floating point.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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
        Ok(req)
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
    /// Decodes per §1.3.
    pub fn decode(body: &Map<String, Value>) -> Result<PullRequest, BadRequest> {
        let f = Fields::new(body);
        f.require(&["client_id", "schema_version", "schema_hash"])?;
        Ok(PullRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            checkpoint: f.int("checkpoint")?,
            bucket_checkpoints: f.opt_int_map("bucket_checkpoints")?.unwrap_or_default(),
            tables: f.opt_str_list("tables")?.unwrap_or_default(),
            limit: normalise_limit(f.int("limit")?),
            known_buckets: f.opt_str_list("known_buckets")?.unwrap_or_default(),
            schema: SchemaPair::read(&f)?,
        })
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
        Ok(PushRequest { client_id: f.str_or_empty("client_id")?.to_string(), changes, schema: SchemaPair::read(&f)? })
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
        Ok(SnapshotRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            cursor,
            limit: normalise_limit(f.int("limit")?),
            schema: SchemaPair::read(&f)?,
        })
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
        Ok(RebuildRequest {
            client_id: f.str_or_empty("client_id")?.to_string(),
            bucket_id: f.str_or_empty("bucket_id")?.to_string(),
            cursor: f.opt_str("cursor")?.filter(|c| !c.is_empty()).map(str::to_string),
            limit: normalise_limit(f.int("limit")?),
            schema: SchemaPair::read(&f)?,
        })
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
