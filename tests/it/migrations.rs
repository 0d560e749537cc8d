use crate::harness::TestDb;
use synchro::store::migrations;

#[test]
fn migrations_apply_once_and_are_idempotent() {
    let db = TestDb::new();
    let mut client = db.client();
    let first = migrations::apply(&mut client).unwrap();
    assert_eq!(first, migrations::MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
    assert!(migrations::apply(&mut client).unwrap().is_empty(), "second run applies nothing");
    let rows: i64 = client.query_one("SELECT count(*) FROM synchro_migrations", &[]).unwrap().get(0);
    assert_eq!(rows as usize, migrations::MIGRATIONS.len());
    for table in [
        "sync_changelog",
        "sync_clients",
        "sync_client_checkpoints",
        "sync_bucket_edges",
        "sync_rule_failures",
        "sync_schema_manifest",
        "sync_wal_position",
    ] {
        let n: i64 = client
            .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = $1", &[&table])
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table}");
    }
}

#[test]
fn printed_statements_build_the_same_database() {
    let db = TestDb::new();
    let mut client = db.client();
    for stmt in migrations::statements() {
        client.batch_execute(&stmt).unwrap();
    }
    // The ledger written by the printed SQL makes apply() a no-op.
    assert!(migrations::apply(&mut client).unwrap().is_empty());
}

#[test]
fn concurrent_migrations_do_not_race() {
    let db = TestDb::new();
    let url = db.url();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                migrations::apply(&mut c).unwrap()
            })
        })
        .collect();
    let applied: usize = handles.into_iter().map(|h| h.join().unwrap().len()).sum();
    assert_eq!(applied, migrations::MIGRATIONS.len(), "each step applied exactly once");
}

#[test]
fn takes_over_a_reference_database_without_edge_checksums() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE sync_bucket_edges (table_name TEXT NOT NULL, record_id TEXT NOT NULL, bucket_id TEXT NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (table_name, record_id, bucket_id))",
    );
    let mut client = db.client();
    migrations::apply(&mut client).unwrap();
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name='sync_bucket_edges' AND column_name='checksum'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Migration 5 removes the watermarks of the removed two-session capture mode; where such a
/// writer left its edges behind the changelog (a crash between its two commits), it drops the
/// edges and the backfill marks (the backfill rebuilds them) and records a history reset.
#[test]
fn edges_left_behind_by_the_two_session_mode_are_rebuilt_and_clients_resnapshot() {
    let db = TestDb::new();
    let mut c = db.client();
    migrations::apply(&mut c).unwrap();
    let state = |c: &mut postgres::Client, edges_lsn: i64| {
        c.batch_execute(&format!(
            "DELETE FROM synchro_migrations WHERE version = 5;
             INSERT INTO sync_wal_position (slot_name, confirmed_lsn) VALUES ('s', 100)
               ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = 100;
             INSERT INTO synchro_watermarks (name, seq) VALUES ('edges_lsn:s', {edges_lsn}), ('edges_seq', 7),
               ('backfill:items', 1) ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq;
             INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id) VALUES ('items', '1', 'global')
               ON CONFLICT DO NOTHING;"
        ))
        .unwrap();
    };
    let marks = |c: &mut postgres::Client| -> Vec<String> {
        c.query("SELECT name FROM synchro_watermarks ORDER BY name", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    let count = |c: &mut postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };

    // Edges caught up (a clean stop, or the one-transaction mode): only the watermarks go.
    state(&mut c, 100);
    assert_eq!(migrations::apply(&mut c).unwrap(), vec![5]);
    assert_eq!(marks(&mut c), ["backfill:items"]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM sync_bucket_edges"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM sync_changelog"), 0);

    // Edges behind the changelog: rebuilt by the backfill, and a history reset.
    state(&mut c, 90);
    assert_eq!(migrations::apply(&mut c).unwrap(), vec![5]);
    assert_eq!(marks(&mut c), ["history_reset"]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM sync_bucket_edges"), 0);
    let marker: i64 = count(&mut c, "SELECT seq FROM sync_changelog WHERE bucket_id = '__synchro_history_reset__'");
    assert_eq!(count(&mut c, "SELECT seq FROM synchro_watermarks WHERE name = 'history_reset'"), marker);
}

/// Migration 7 starts the per-bucket checksums from the edges already there, and from then on
/// every kind of write to the edges keeps them: multi-row inserts, updates and deletes, the
/// three at once in one statement's data-modifying CTEs (as the writer does), NULL checksums,
/// and a bucket losing its last member.
#[test]
fn bucket_checksums_start_from_the_edges_and_follow_every_write() {
    let db = TestDb::new();
    let mut c = db.client();
    let before_7 = 1 + 2 * migrations::MIGRATIONS.iter().filter(|m| m.version < 7).count();
    for stmt in migrations::statements().into_iter().take(before_7) {
        c.batch_execute(&stmt).unwrap();
    }
    c.batch_execute(
        "INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum) \
         SELECT 't', g::text, 'b' || (g % 3), g * 7919 FROM generate_series(1, 30) g; \
         INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum) VALUES ('t', 'n', 'b0', NULL)",
    )
    .unwrap();
    assert_eq!(migrations::apply(&mut c).unwrap(), [7]);
    crate::harness::assert_bucket_checksums_follow_edges(&mut c);
    let kept = |c: &mut postgres::Client, b: &str| -> Option<(i32, i64)> {
        c.query_opt("SELECT checksum, members FROM sync_bucket_checksums WHERE bucket_id = $1 AND members > 0", &[&b])
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    };
    assert_eq!(kept(&mut c, "b0").map(|k| k.1), Some(10), "a NULL checksum is not a member");
    for sql in [
        "WITH removed AS (DELETE FROM sync_bucket_edges WHERE (record_id, bucket_id) IN (('1', 'b1'), ('2', 'b2'))), \
              added AS (INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum) \
                        VALUES ('t', '100', 'b1', 5), ('t', '101', 'b9', 6), ('t', '102', 'b9', NULL)), \
              rechecked AS (UPDATE sync_bucket_edges SET checksum = 42 WHERE record_id IN ('3', 'n')) \
         SELECT 1",
        "UPDATE sync_bucket_edges SET checksum = NULL WHERE record_id = '6'",
        "UPDATE sync_bucket_edges SET bucket_id = 'b4' WHERE record_id IN ('7', '8')",
        "DELETE FROM sync_bucket_edges WHERE bucket_id = 'b9'",
    ] {
        c.batch_execute(sql).unwrap();
        crate::harness::assert_bucket_checksums_follow_edges(&mut c);
    }
    assert_eq!(kept(&mut c, "b9"), None, "a bucket without members has no checksum");
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("DELETE FROM sync_bucket_edges WHERE bucket_id = 'b1'").unwrap();
    tx.rollback().unwrap();
    crate::harness::assert_bucket_checksums_follow_edges(&mut c);
    assert!(kept(&mut c, "b1").is_some(), "a rolled-back write changes nothing");
}
