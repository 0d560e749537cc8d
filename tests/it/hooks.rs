//! Embedder hooks through the library API (no HTTP).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use postgres::Transaction;
use serde_json::json;
use synchro::engine::{Engine, EngineError, EngineSettings, Hooks, LastWriterWins};
use synchro::protocol::{PullRequest, PushRecord, PushRequest, RegisterRequest, SchemaPair};
use synchro::store::introspect::RegistrySettings;
use synchro::store::{migrations, pool};
use synchro::types::UserId;

use crate::harness::TestDb;

#[derive(Default)]
struct Recorder {
    conflicts: AtomicUsize,
    snapshots: AtomicUsize,
    pulls: AtomicUsize,
}

impl Hooks for Recorder {
    fn authorize(&self, _user: &UserId, record: &PushRecord) -> Result<(), String> {
        let title = record.data.as_ref().and_then(|d| d.get("title")).and_then(|t| t.as_str()).unwrap_or("");
        if title.contains("forbidden") {
            Err("titles may not say forbidden".into())
        } else {
            Ok(())
        }
    }

    fn on_push_accepted(&self, tx: &mut Transaction<'_>, user: &UserId, applied: &[&PushRecord]) -> Result<(), String> {
        if applied.iter().any(|r| r.data.as_ref().and_then(|d| d.get("title")) == Some(&json!("boom"))) {
            return Err("audit refused".into());
        }
        tx.execute("INSERT INTO audit (who, n) VALUES ($1, $2)", &[&user.as_str(), &(applied.len() as i32)])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn on_conflict(&self, _user: &UserId, _record: &PushRecord, _reason: &str) {
        self.conflicts.fetch_add(1, Ordering::SeqCst);
    }

    fn on_pull_complete(&self, _user: &UserId, _client_id: &str, _checkpoint: i64, _has_more: bool) {
        self.pulls.fetch_add(1, Ordering::SeqCst);
    }

    fn on_snapshot_required(&self, _user: &UserId, _client_id: &str, _reason: &str) {
        self.snapshots.fetch_add(1, Ordering::SeqCst);
    }
}

fn record(id: &str, op: &str, title: &str) -> PushRecord {
    PushRecord {
        id: id.into(),
        table_name: "tasks".into(),
        operation: op.into(),
        data: Some(json!({"title": title})),
        client_updated_at: Some("2099-01-01T00:00:00Z".into()),
        base_updated_at: None,
    }
}

#[test]
fn hooks_authorize_audit_in_the_push_transaction_and_observe() {
    let db = TestDb::new();
    db.execute(synchro::dev::DEMO_SCHEMA);
    db.execute("CREATE TABLE audit (who text, n int)");
    migrations::apply(&mut db.client()).unwrap();
    let hooks = Arc::new(Recorder::default());
    let settings = EngineSettings {
        registry: RegistrySettings {
            tables: vec![synchro::config::TableName { schema: None, name: "tasks".into() }],
            read_only: vec![],
            owner_column: "user_id".into(),
            excluded: vec![],
            updated_at_column: "updated_at".into(),
            deleted_at_column: "deleted_at".into(),
            rules: Default::default(),
        },
        min_client_version: String::new(),
        push_role: None,
        resolver: Arc::new(LastWriterWins::default()),
        hooks: hooks.clone(),
    };
    let engine = Engine::new(pool::connect_pool(&db.url(), 4).unwrap(), settings).unwrap();
    let user = UserId::new("alice").unwrap();
    let reg = engine
        .register(
            &user,
            &RegisterRequest {
                client_id: "d".into(),
                client_name: None,
                platform: String::new(),
                app_version: String::new(),
                schema: SchemaPair::default(),
            },
        )
        .unwrap();
    let schema = SchemaPair { version: reg.schema_version, hash: reg.schema_hash.clone() };
    let push = |changes: Vec<PushRecord>| {
        engine.push(&user, &PushRequest { client_id: "d".into(), changes, schema: schema.clone() })
    };
    let id1 = "d0000000-0000-0000-0000-000000000001";
    let r = push(vec![
        record(id1, "create", "ok"),
        record("d0000000-0000-0000-0000-000000000002", "create", "forbidden words"),
    ])
    .unwrap();
    assert_eq!(r.accepted.len(), 1);
    assert_eq!(
        (r.rejected[0].reason_code, r.rejected[0].message.as_deref()),
        (Some("ownership_violation"), Some("titles may not say forbidden"))
    );
    let audit: i64 =
        db.client().query_one("SELECT count(*) FROM audit WHERE who = 'alice' AND n = 1", &[]).unwrap().get(0);
    assert_eq!(audit, 1, "the audit row committed with the push");
    // A failing on_push_accepted rolls the whole push back.
    let err = push(vec![record("d0000000-0000-0000-0000-000000000003", "create", "boom")]).unwrap_err();
    assert!(matches!(err, EngineError::Hook(_)), "{err}");
    let n: i64 = db.client().query_one("SELECT count(*) FROM tasks WHERE title = 'boom'", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    // Conflicts and pulls are observed.
    push(vec![record(id1, "create", "again")]).unwrap();
    assert_eq!(hooks.conflicts.load(Ordering::SeqCst), 1);
    let pull = PullRequest {
        client_id: "d".into(),
        checkpoint: 0,
        bucket_checkpoints: Default::default(),
        tables: vec![],
        limit: 100,
        known_buckets: vec![],
        schema: schema.clone(),
    };
    let r = engine.pull(&user, pull).unwrap();
    assert!(r.snapshot_required);
    assert_eq!(hooks.snapshots.load(Ordering::SeqCst), 1);
}
