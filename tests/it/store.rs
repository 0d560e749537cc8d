use crate::harness::TestDb;
use synchro::store::{changelog, clients, migrations};
use synchro::types::{Op, UserId};

fn migrated() -> (TestDb<'static>, postgres::Client) {
    let db = TestDb::new();
    let mut c = db.client();
    migrations::apply(&mut c).unwrap();
    (db, c)
}

fn insert(c: &mut postgres::Client, rows: &[(&str, &str, &str, i16)]) {
    for (bucket, table, id, op) in rows {
        c.execute(
            "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) VALUES ($1, $2, $3, $4)",
            &[bucket, table, id, op],
        )
        .unwrap();
    }
}

#[test]
fn register_upserts_and_keeps_checkpoints() {
    let (_db, mut c) = migrated();
    let alice = UserId::new("Alice").unwrap();
    let reg = clients::Registration { client_id: "phone".into(), platform: "ios".into(), ..Default::default() };
    let first = clients::register(&mut c, &alice, &reg).unwrap();
    assert_eq!(first.bucket_subs, vec!["user:alice", "global"]);
    assert_eq!(first.id.len(), 36);
    clients::advance_legacy(&mut c, &alice, "phone", 7).unwrap();
    let again =
        clients::register(&mut c, &alice, &clients::Registration { client_name: Some("Mine".into()), ..reg.clone() })
            .unwrap();
    assert_eq!(again.id, first.id, "re-register returns the same id");
    assert_eq!(again.client_name.as_deref(), Some("Mine"));
    assert_eq!(again.last_pull_seq, Some(7), "checkpoints are not reset");
    assert_eq!(
        clients::bucket_checkpoints(&mut c, &alice, "phone").unwrap(),
        vec![("global".to_string(), 7), ("user:alice".to_string(), 7)]
    );
    // Another user with the same device id is a different client.
    let bob = UserId::new("bob").unwrap();
    assert!(clients::load(&mut c, &bob, "phone").unwrap().is_none());
}

#[test]
fn checkpoints_only_rise_except_on_rebuild() {
    let (_db, mut c) = migrated();
    let u = UserId::new("u").unwrap();
    clients::register(&mut c, &u, &clients::Registration { client_id: "d".into(), ..Default::default() }).unwrap();
    clients::raise_bucket_checkpoints(&mut c, &u, "d", &[("global".into(), 10), ("user:u".into(), 3)]).unwrap();
    clients::raise_bucket_checkpoints(&mut c, &u, "d", &[("global".into(), 4)]).unwrap();
    clients::advance_legacy(&mut c, &u, "d", 5).unwrap();
    clients::advance_legacy(&mut c, &u, "d", 2).unwrap();
    let cps = clients::bucket_checkpoints(&mut c, &u, "d").unwrap();
    assert_eq!(cps, vec![("global".to_string(), 10), ("user:u".to_string(), 5)]);
    clients::set_bucket_checkpoint(&mut c, &u, "d", "global", 1).unwrap();
    assert_eq!(clients::bucket_checkpoints(&mut c, &u, "d").unwrap()[0], ("global".to_string(), 1));
    assert_eq!(clients::load(&mut c, &u, "d").unwrap().unwrap().last_pull_seq, Some(5));
}

#[test]
fn pages_filter_each_bucket_in_sql() {
    let (_db, mut c) = migrated();
    // A leading bucket with many rows must not hide a lagging one (the reference's livelock).
    let mut rows = vec![("user:b", "t", "early", 1)];
    for i in 0..50 {
        rows.push(("user:a", "t", if i % 2 == 0 { "x" } else { "y" }, 2));
    }
    rows.push(("user:b", "t", "late", 1));
    rows.push(("user:c", "t", "other", 1));
    let rows: Vec<(&str, &str, &str, i16)> = rows.into_iter().collect();
    insert(&mut c, &rows);
    let page = changelog::read_page(&mut c, &[("user:a", 51), ("user:b", 0)], None, 5).unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(ids, vec!["early", "late"]);
    let page = changelog::read_page(&mut c, &[("user:a", 0), ("user:b", 0)], None, 3).unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(page[0].op, Op::Create);
    let filtered = changelog::read_page(&mut c, &[("user:b", 0)], Some(&["other_table".to_string()]), 10).unwrap();
    assert!(filtered.is_empty());
    assert_eq!(changelog::bounds(&mut c).unwrap(), (1, 53));
}

#[test]
fn corrupt_operations_are_reported_not_panicked() {
    let (_db, mut c) = migrated();
    insert(&mut c, &[("global", "t", "1", 9)]);
    let err = changelog::read_page(&mut c, &[("global", 0)], None, 10).unwrap_err();
    assert!(err.to_string().contains("operation 9"), "{err}");
}

#[test]
fn checksums_and_members_come_from_edges() {
    let (_db, mut c) = migrated();
    c.batch_execute(
        "INSERT INTO sync_bucket_edges (table_name, record_id, bucket_id, checksum) VALUES \
         ('a', '1', 'global', -1549353149), ('a', '2', 'global', -434270003), ('b', '1', 'global', NULL), \
         ('a', '3', 'user:x', 5)",
    )
    .unwrap();
    let sums = changelog::bucket_checksums(&mut c, &["global".into(), "user:x".into(), "user:none".into()]).unwrap();
    assert_eq!(sums, vec![("global".to_string(), 1169895310), ("user:x".to_string(), 5)]);
    let first = changelog::bucket_members(&mut c, "global", None, 2).unwrap();
    assert_eq!(first, vec![("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())]);
    let rest = changelog::bucket_members(&mut c, "global", Some(("a", "2")), 2).unwrap();
    assert_eq!(rest, vec![("b".to_string(), "1".to_string())]);
}

#[test]
fn watermarks_only_rise() {
    let (_db, mut c) = migrated();
    assert_eq!(changelog::read_watermark(&mut c, changelog::watermark::COMPACTED_THROUGH).unwrap(), 0);
    changelog::raise_watermark(&mut c, changelog::watermark::COMPACTED_THROUGH, 9).unwrap();
    changelog::raise_watermark(&mut c, changelog::watermark::COMPACTED_THROUGH, 3).unwrap();
    assert_eq!(changelog::read_watermark(&mut c, changelog::watermark::COMPACTED_THROUGH).unwrap(), 9);
}

#[test]
fn transaction_visibility_follows_commit() {
    use synchro::store::visibility::{all_visible, wait_until_visible};
    let db = TestDb::new();
    db.execute("CREATE TABLE v (id int PRIMARY KEY)");
    let (mut writer, mut reader) = (db.client(), db.client());
    assert!(all_visible(&mut reader, &[]).unwrap(), "nothing to wait for");
    // A transaction that committed before (autocommit).
    let committed: i64 = reader.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    let (xid_tx, xid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // A transaction left open until told, then committed while the reader waits for it.
    let committer = std::thread::spawn(move || {
        let mut tx = writer.transaction().unwrap();
        tx.execute("INSERT INTO v VALUES (1)", &[]).unwrap();
        let xid: i64 = tx.query_one("SELECT txid_current()", &[]).unwrap().get(0);
        xid_tx.send((xid & 0xffff_ffff) as u32).unwrap();
        go_rx.recv().unwrap();
        tx.commit().unwrap();
    });
    let xid32 = xid_rx.recv().unwrap();
    assert!(!all_visible(&mut reader, &[xid32]).unwrap(), "in progress: not visible");
    go_tx.send(()).unwrap();
    wait_until_visible(&mut reader, &[xid32]).unwrap();
    let n: i64 = reader.query_one("SELECT count(*) FROM v", &[]).unwrap().get(0);
    assert_eq!(n, 1, "once visible, the row is there");
    committer.join().unwrap();
    // Older committed transactions are visible too (not just any older id: on a shared cluster
    // another test's transaction may still be running).
    assert!(all_visible(&mut reader, &[xid32, (committed & 0xffff_ffff) as u32, 3]).unwrap());
}

/// A transaction that precedes the `xmin` of a snapshot checked before is known to be visible
/// without another query (here: on a session that could not answer one any more).
#[test]
fn visibility_is_remembered_past_a_snapshots_horizon() {
    use synchro::store::visibility::Visibility;
    let db = TestDb::new();
    let mut c = db.client();
    let newer: i64 = c.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    let mut v = Visibility::default();
    // Transaction 3 is the first normal id: it precedes every horizon. (Not every committed
    // id before `newer` does: on a shared cluster another test's transaction may be older and
    // still running, which holds the horizon back.)
    assert!(!v.known(&[3]), "nothing checked yet");
    v.wait(&mut c, &[newer as u32]).unwrap();
    assert!(v.known(&[3]), "below the horizon");
    let mut dead = db.client();
    dead.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").ok();
    v.wait(&mut dead, &[3]).expect("no query needed");
    let future = (newer + 1000) as u32;
    assert!(!v.known(&[future]));
    assert!(v.wait(&mut dead, &[future]).is_err(), "a newer transaction is asked about");
}

/// The writer's batch: a batch that wrote nothing before writes its last chunk and the WAL
/// position in one statement; a fenced batch (the stored position moved) writes nothing on
/// either path, and an unfenced one everything.
#[test]
fn a_batch_commits_its_writes_with_the_position_or_nothing_when_fenced() {
    use synchro::store::changelog::ChangeRef;
    use synchro::store::edges::EdgeRef;
    use synchro::store::writer_session::{ChunkWrites, Committed, WriterSession, SMALL_CHUNK};
    use synchro::types::Lsn;

    let (db, mut c) = migrated();
    c.execute("INSERT INTO sync_wal_position (slot_name, confirmed_lsn) VALUES ('s', 100)", &[]).unwrap();
    let mut session = WriterSession::connect(&db.url()).unwrap();
    let count = |c: &mut postgres::Client| -> (i64, i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM sync_changelog), (SELECT count(*) FROM sync_bucket_edges), \
                        (SELECT confirmed_lsn FROM sync_wal_position WHERE slot_name = 's')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let ids: Vec<String> = (0..=SMALL_CHUNK).map(|i| i.to_string()).collect();
    let writes = |n: usize| ChunkWrites {
        added: ids[..n]
            .iter()
            .map(|r| EdgeRef { table: "t", record: r, bucket: "global", checksum: Some(1) })
            .collect(),
        changelog: ids[..n]
            .iter()
            .map(|r| ChangeRef { bucket: "global", table: "t", record: r, op: Op::Create })
            .collect(),
        ..Default::default()
    };

    // One statement, fenced (this writer expects 50, the store holds 100): nothing written.
    let batch = session.begin();
    assert_eq!(batch.commit_with(&writes(2), "s", Lsn(200), Lsn(50)).unwrap(), Committed::Fenced);
    assert_eq!(count(&mut c), (0, 0, 100));
    // The same, not fenced: everything, in the chunk's order.
    let batch = session.begin();
    assert_eq!(batch.commit_with(&writes(2), "s", Lsn(200), Lsn(100)).unwrap(), Committed::Done);
    assert_eq!(count(&mut c), (2, 2, 200));
    let order: Vec<String> =
        c.query("SELECT record_id FROM sync_changelog ORDER BY seq", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(order, ["0", "1"]);
    c.batch_execute("DELETE FROM sync_changelog; DELETE FROM sync_bucket_edges").unwrap();

    // A transaction: a large chunk (COPY) written first, then a fenced commit rolls all back.
    let mut batch = session.begin();
    batch.write(&writes(SMALL_CHUNK + 1)).unwrap();
    assert_eq!(count(&mut c), (0, 0, 200), "nothing visible before the commit");
    let last = ChunkWrites::default();
    assert_eq!(batch.commit_with(&last, "s", Lsn(300), Lsn(100)).unwrap(), Committed::Fenced);
    assert_eq!(count(&mut c), (0, 0, 200));
    let mut batch = session.begin();
    batch.write(&writes(SMALL_CHUNK + 1)).unwrap();
    assert_eq!(batch.commit_with(&last, "s", Lsn(300), Lsn(200)).unwrap(), Committed::Done);
    assert_eq!(count(&mut c), (SMALL_CHUNK as i64 + 1, SMALL_CHUNK as i64 + 1, 300));
    // Dropped without a commit: rolled back, and the session is usable after.
    let mut batch = session.begin();
    batch
        .write(&ChunkWrites {
            added: vec![EdgeRef { table: "u", record: "1", bucket: "b", checksum: None }],
            ..Default::default()
        })
        .unwrap();
    drop(batch);
    assert_eq!(session.stored_position("s").unwrap(), Lsn(300));
    assert_eq!(count(&mut c).1, SMALL_CHUNK as i64 + 1);
}
