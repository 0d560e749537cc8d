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
