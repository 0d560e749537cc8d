//! The HTTP boundary of the engine: [`SyncApi`] implemented by calling [`Engine`] and mapping
//! its errors to the contract's statuses, with each endpoint's own 500 message (§3.1).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::capture::supervisor::{CaptureState, CaptureStatus};
use crate::engine::{Engine, EngineError};
use crate::http::{ApiError, Body, BodySource, SyncApi};
use crate::metrics::{LabeledCounter, Metrics, Sample};
use crate::protocol::{
    DebugRequest, PullRequest, PushRequest, RebuildRequest, Record, RegisterRequest, SnapshotRequest,
};
use crate::types::UserId;

/// Seconds clients are asked to wait on 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// The engine behind the HTTP layer, with the metrics and capture state it reports.
#[derive(Clone)]
pub struct EngineApi {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    capture: Option<Arc<CaptureStatus>>,
    slot_name: String,
}

/// How long change capture may be down before `/healthz` reports the server unhealthy.
pub const CAPTURE_DOWN_THRESHOLD: Duration = Duration::from_secs(60);

impl EngineApi {
    /// Wraps an engine; `capture` is the change-capture status when this process runs it.
    pub fn new(engine: Arc<Engine>, capture: Option<Arc<CaptureStatus>>, slot_name: &str) -> EngineApi {
        EngineApi { engine, metrics: Arc::new(Metrics::default()), capture, slot_name: slot_name.to_string() }
    }

    /// A decoded pull, answered.
    fn pull_request(&self, user: &UserId, req: PullRequest) -> Result<Body, ApiError> {
        let failure = "failed to pull changes";
        let resp = self.engine.pull(user, req).map_err(|e| to_api_error(e, failure, false))?;
        page_body(resp, |r| &mut r.changes, failure)
    }

    fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut push = |name, kind, help, value: f64| out.push(Sample { name, kind, help, value });
        if let Some(c) = &self.capture {
            let wal_end = c.server_wal_end.load(Ordering::Relaxed);
            let committed = c.committed_lsn.load(Ordering::Relaxed);
            push(
                "synchro_capture_streaming",
                "gauge",
                "1 while the replication stream is up.",
                f64::from(u8::from(c.state() == CaptureState::Streaming)),
            );
            push(
                "synchro_capture_leader",
                "gauge",
                "1 while this instance holds the change-capture leadership (0 on a standby).",
                f64::from(u8::from(!matches!(c.state(), CaptureState::Standby | CaptureState::Stopped))),
            );
            push(
                "synchro_capture_state_seconds",
                "gauge",
                "Seconds in the current capture state.",
                c.in_state_for().as_secs_f64(),
            );
            push(
                "synchro_replication_lag_bytes",
                "gauge",
                "Server WAL end minus the committed (confirmed) position.",
                wal_end.saturating_sub(committed) as f64,
            );
            // Seconds behind: the age of the newest change in the changelog while WAL is pending.
            let last_commit = c.last_commit_ms.load(Ordering::Relaxed);
            let now_ms = crate::time::unix_ms_now();
            let lag_secs = if wal_end > committed && last_commit > 0 {
                now_ms.saturating_sub(last_commit) as f64 / 1000.0
            } else {
                0.0
            };
            push(
                "synchro_replication_lag_seconds",
                "gauge",
                "Age of the newest captured change while WAL is still pending (0 when caught up).",
                lag_secs,
            );
            push(
                "synchro_confirmed_flush_lsn",
                "gauge",
                "The position synchro has committed and confirmed, as a number.",
                committed as f64,
            );
            push(
                "synchro_capture_sessions_total",
                "counter",
                "Replication sessions started.",
                c.sessions.load(Ordering::Relaxed) as f64,
            );
            push(
                "synchro_wal_messages_total",
                "counter",
                "pgoutput messages received.",
                c.wal_messages.load(Ordering::Relaxed) as f64,
            );
            push(
                "synchro_changelog_rows_written_total",
                "counter",
                "Changelog rows written.",
                c.rows_written.load(Ordering::Relaxed) as f64,
            );
            push(
                "synchro_writer_batches_total",
                "counter",
                "Writer batches committed.",
                c.batches.load(Ordering::Relaxed) as f64,
            );
        }
        if let Ok(mut db) = self.engine.store_pool().get_timeout(Duration::from_secs(1)) {
            if let Ok(g) = crate::store::changelog::gauges(&mut **db) {
                push("synchro_clients_registered", "gauge", "Registered client devices.", g.clients);
                push("synchro_clients_active", "gauge", "Active client devices.", g.active_clients);
                push("synchro_changelog_rows", "gauge", "Changelog rows (planner estimate).", g.changelog_rows);
                push(
                    "synchro_changelog_bytes",
                    "gauge",
                    "Changelog size on disk, indexes included.",
                    g.changelog_bytes,
                );
            }
        }
        // The slot lives in the application database (the sync store may be another one).
        if let Ok(mut db) = self.engine.pool().get_timeout(Duration::from_secs(1)) {
            let row = db.query_one(
                "SELECT (SELECT active::int FROM pg_replication_slots WHERE slot_name = $1)::float8, \
                        (SELECT (pg_current_wal_lsn() - restart_lsn) FROM pg_replication_slots WHERE slot_name = $1)::float8",
                &[&self.slot_name],
            );
            if let Ok(r) = row {
                let get = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(0.0);
                push("synchro_slot_active", "gauge", "1 while the replication slot has a consumer.", get(0));
                push("synchro_slot_retained_wal_bytes", "gauge", "WAL the slot keeps on the server.", get(1));
            }
        }
        push(
            "synchro_push_retries_total",
            "counter",
            "Push transactions run a second time, with a savepoint per run, after a set-based statement failed.",
            self.engine.push_counts().retried as f64,
        );
        if let Some(replicas) = self.engine.read_replicas() {
            push("synchro_read_replicas", "gauge", "Configured read replicas.", replicas.len() as f64);
            push(
                "synchro_read_replicas_down",
                "gauge",
                "Read replicas taken out after a failure (their reads go to the primary).",
                replicas.down_count() as f64,
            );
        }
        out
    }
}

impl std::fmt::Debug for EngineApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineApi").field("slot_name", &self.slot_name).finish_non_exhaustive()
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

/// A response body; a value that cannot be serialised (never expected) is the endpoint's 500.
fn to_body<T: serde::Serialize>(value: &T, failure: &'static str) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| {
        crate::error!("serialising a response failed", endpoint = failure, error = e.to_string());
        ApiError::Internal(failure)
    })
}

/// Pages whose records are estimated above this many bytes are streamed ([`Body::Stream`]):
/// rendered a piece at a time as the client reads, instead of whole.
pub const STREAM_PAGES_ABOVE: usize = 1 << 20;

/// A page of records (a response whose first field is its record list) as a body: whole when
/// small, else streamed. Either way the bytes are those of serialising the response whole.
fn page_body<T: serde::Serialize>(
    mut page: T,
    records: impl FnOnce(&mut T) -> &mut Vec<Record>,
    failure: &'static str,
) -> Result<Body, ApiError> {
    let list = records(&mut page);
    let estimate: usize = list.iter().map(|r| r.data.get().len() + 256).sum();
    if estimate <= STREAM_PAGES_ABOVE {
        return to_body(&page, failure).map(Body::Bytes);
    }
    let list = std::mem::take(list);
    // The response with no records is `{"<records>":[]...}`: the records go between the brackets.
    let mut outline = to_body(&page, failure)?;
    let Some(at) = outline.windows(2).position(|w| w == b"[]") else {
        crate::error!("a page has no record list to stream into", endpoint = failure);
        return Err(ApiError::Internal(failure));
    };
    let mut suffix = outline.split_off(at + 1);
    suffix.push(b'\n');
    Ok(Body::Stream(Box::new(RecordsBody { prefix: Some(outline), records: list.into_iter(), suffix, first: true })))
}

/// A page rendered record by record: the response up to its record list's `[`, each record,
/// then the rest of the response and the trailing newline.
struct RecordsBody {
    prefix: Option<Vec<u8>>,
    records: std::vec::IntoIter<Record>,
    suffix: Vec<u8>,
    first: bool,
}

impl BodySource for RecordsBody {
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let start = out.len();
        if let Some(prefix) = self.prefix.take() {
            out.extend_from_slice(&prefix);
        }
        while out.len() - start < max {
            let Some(record) = self.records.next() else {
                out.extend_from_slice(&self.suffix);
                return false;
            };
            if !std::mem::take(&mut self.first) {
                out.push(b',');
            }
            // Writing a record (strings, numbers and verbatim JSON) into memory cannot fail.
            let _ = serde_json::to_writer(&mut *out, &record);
        }
        true
    }
}

/// The request JSON becomes a typed request here, at the edge, and the response a body: the
/// engine only ever sees `protocol` structs.
impl SyncApi for EngineApi {
    fn register(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        let failure = "failed to register client";
        let req = RegisterRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        let resp = self.engine.register(user, &req).map_err(|e| to_api_error(e, failure, false))?;
        if let Some(last) = resp.last_sync_at.as_deref().and_then(crate::time::parse_client_timestamp) {
            if let Ok(away) = last.elapsed() {
                self.metrics.observe_since_last_sync(away.as_secs_f64());
            }
        }
        to_body(&resp, failure)
    }

    fn pull(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.pull_body(user, body).map(Body::into_bytes)
    }

    fn pull_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        let req = PullRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        self.pull_request(user, req)
    }

    fn pull_json(&self, user: &UserId, body: &[u8]) -> Result<Body, ApiError> {
        let req = PullRequest::from_json(body).map_err(|e| ApiError::BadRequest(e.0))?;
        self.pull_request(user, req)
    }

    fn push(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        let failure = "failed to push changes";
        let req = PushRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        let resp = self.engine.push(user, &req).map_err(|e| to_api_error(e, failure, false))?;
        for r in resp.accepted.iter().chain(resp.rejected.iter()) {
            self.metrics.observe_push(r.status);
        }
        to_body(&resp, failure)
    }

    fn snapshot(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.snapshot_body(user, body).map(Body::into_bytes)
    }

    fn snapshot_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        let failure = "failed to snapshot";
        let req = SnapshotRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        let resp = self.engine.snapshot(user, &req).map_err(|e| to_api_error(e, failure, true))?;
        page_body(resp, |r| &mut r.records, failure)
    }

    fn rebuild(&self, user: &UserId, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
        self.rebuild_body(user, body).map(Body::into_bytes)
    }

    fn rebuild_body(&self, user: &UserId, body: &Map<String, Value>) -> Result<Body, ApiError> {
        let failure = "failed to rebuild bucket";
        let req = RebuildRequest::decode(body).map_err(|e| ApiError::BadRequest(e.0))?;
        let resp = self.engine.rebuild(user, &req).map_err(|e| to_api_error(e, failure, true))?;
        page_body(resp, |r| &mut r.records, failure)
    }

    fn debug(&self, user: &UserId, client_id: &str) -> Result<Vec<u8>, ApiError> {
        let failure = "failed to get client debug info";
        let req = DebugRequest::decode(Some(client_id)).map_err(|e| ApiError::BadRequest(e.0))?;
        let resp = self.engine.debug(user, &req).map_err(|e| to_api_error(e, failure, true))?;
        to_body(&resp, failure)
    }

    fn tables(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        let failure = "failed to load table metadata";
        // Schema and tables have no 503 mapping in the contract.
        let resp = self.engine.tables().map_err(|e| match to_api_error(e, failure, false) {
            ApiError::Unavailable { .. } => ApiError::Internal(failure),
            other => other,
        })?;
        to_body(&resp, failure)
    }

    fn schema(&self, _user: &UserId) -> Result<Vec<u8>, ApiError> {
        let failure = "failed to load schema";
        let resp = self.engine.schema().map_err(|e| match to_api_error(e, failure, false) {
            ApiError::Unavailable { .. } => ApiError::Internal(failure),
            other => other,
        })?;
        to_body(&resp, failure)
    }

    fn health(&self) -> bool {
        let capture_ok = match &self.capture {
            // A standby serves HTTP fine: another instance captures.
            Some(c) => {
                matches!(c.state(), CaptureState::Streaming | CaptureState::Standby)
                    || c.in_state_for() < CAPTURE_DOWN_THRESHOLD
            }
            None => true,
        };
        capture_ok && self.engine.health()
    }

    fn metrics(&self) -> Option<String> {
        let mut out = self.metrics.render(&self.samples());
        let reads = self.engine.read_counts();
        LabeledCounter {
            name: "synchro_pull_hydrations_total",
            help: "Non-empty pull pages by where their rows were read (READ_REPLICA_URLS).",
            label: "source",
            values: vec![("replica", reads.pull_replica), ("primary", reads.pull_primary)],
        }
        .render_into(&mut out);
        LabeledCounter {
            name: "synchro_snapshot_pages_total",
            help: "Snapshot pages by where their rows were read (READ_REPLICA_URLS).",
            label: "source",
            values: vec![("replica", reads.snapshot_replica), ("primary", reads.snapshot_primary)],
        }
        .render_into(&mut out);
        let pushes = self.engine.push_counts();
        LabeledCounter {
            name: "synchro_push_runs_total",
            help: "Runs of pushed records (consecutive records on one table) by how they were applied: \
                   set-based, set-based then replayed record by record after a failed statement, \
                   or record by record (PUSH_SET_BASED=false: every record is a run of its own).",
            label: "path",
            values: vec![
                ("set", pushes.set_runs),
                ("replayed", pushes.replayed_runs),
                ("per_record", pushes.per_record),
            ],
        }
        .render_into(&mut out);
        Some(out)
    }

    fn observe(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.metrics.observe_request(endpoint, status, elapsed);
    }
}
