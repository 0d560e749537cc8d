//! Our replication connection against real clusters: authentication methods, replication
//! commands and the CopyBoth stream.

use std::time::{Duration, Instant};

use synchro::pg::conn::{ReplError, ReplicationConn};
use synchro::pg::url;
use synchro::pg::wire::backend::{self, BackendMessage, ReplicationMessage};
use synchro::pg::wire::pgoutput::{self, PgOutput};

use crate::harness::{private_cluster, TestDb};

fn params(url: &str) -> url::ConnParams {
    url::parse(url).unwrap()
}

#[test]
fn authentication_methods() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute(
        "CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram pw';
         SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5pw';
         CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear';",
    );
    // A password SASLprep changes (a no-break space becomes a space, U+2168 becomes "IX"): the
    // server stores the verifier of the prepared form, and libpq prepares what the user types.
    let intl = "Gr\u{fc}\u{df}e\u{a0}\u{2168}";
    db.execute(&format!("RESET password_encryption; CREATE ROLE intl_user LOGIN REPLICATION PASSWORD '{intl}'"));
    cluster
        .set_hba(&[
            "host all scram_user 127.0.0.1/32 scram-sha-256",
            "host all intl_user 127.0.0.1/32 scram-sha-256",
            "host all md5_user 127.0.0.1/32 md5",
            "host all clear_user 127.0.0.1/32 password",
        ])
        .unwrap();
    let url = |user: &str, pw: &str| {
        let pw = percent_encoding::utf8_percent_encode(pw, percent_encoding::NON_ALPHANUMERIC);
        format!("postgres://{user}:{pw}@127.0.0.1:{}/{}", cluster.port(), db.name)
    };
    // The password works with psql (libpq)...
    let psql = std::process::Command::new(cluster.bin_dir().join("psql"))
        .env("PGPASSWORD", intl)
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &cluster.port().to_string(), "-U", "intl_user", "-d"])
        .args([db.name.as_str(), "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(psql.status.success(), "psql: {}", String::from_utf8_lossy(&psql.stderr));
    // ...and with our replication connection (below).
    let timeout = Duration::from_secs(5);
    for (user, pw) in [("scram_user", "scram pw"), ("intl_user", intl), ("md5_user", "md5pw"), ("clear_user", "clear")]
    {
        let mut conn =
            ReplicationConn::connect(&params(&url(user, pw)), timeout).unwrap_or_else(|e| panic!("{user}: {e}"));
        let sys = conn.identify_system().unwrap();
        assert!(!sys.system_id.is_empty() && sys.timeline >= 1, "{sys:?}");
        assert_eq!(sys.dbname.as_deref(), Some(db.name.as_str()));
        conn.close();
    }
    // The same password unprepared ("Grüße IX" as typed, no NBSP) is the prepared form: it
    // works too; a different one does not.
    ReplicationConn::connect(&params(&url("intl_user", "Gr\u{fc}\u{df}e IX")), timeout).unwrap().close();
    for (user, pw) in
        [("scram_user", "wrong"), ("intl_user", "Grusse IX"), ("md5_user", "wrong"), ("clear_user", "wrong")]
    {
        let err = ReplicationConn::connect(&params(&url(user, pw)), timeout).err().expect("must fail");
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
    }
    let no_pw = format!("postgres://scram_user@127.0.0.1:{}/{}", cluster.port(), db.name);
    assert!(matches!(ReplicationConn::connect(&params(&no_pw), timeout), Err(ReplError::Auth(_))));
    let refused = "postgres://u@127.0.0.1:1/x";
    let err = ReplicationConn::connect(&params(refused), timeout).err().unwrap();
    assert!(err.is_transient(), "{err}");
    let tls = format!("{}?sslmode=require", url("scram_user", "scram pw"));
    // This cluster has no TLS: require fails with a typed error (tests/it/tls.rs covers TLS).
    assert!(matches!(
        ReplicationConn::connect(&params(&tls), timeout),
        Err(ReplError::Tls(synchro::pg::tls::TlsError::NotOffered))
    ));
}

#[test]
fn streams_changes_over_tcp_and_unix_sockets() {
    let db = TestDb::new();
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;");
    let tcp = params(&db.url());
    let mut unix = tcp.clone();
    unix.host = url::Host::UnixDir(db.cluster.socket_dir().display().to_string());
    for (i, p) in [tcp, unix].into_iter().enumerate() {
        let slot = format!("s{i}_{}", db.name);
        let mut conn = ReplicationConn::connect(&p, Duration::from_secs(5)).unwrap();
        let start = conn.create_slot(&slot).unwrap();
        assert!(start.0 > 0);
        let err = conn.create_slot(&slot).err().unwrap();
        assert_eq!(err.sqlstate(), Some("42710"), "duplicate slot: {err}");
        db.execute(&format!("INSERT INTO t VALUES ({i}, 'x')"));
        conn.start_replication(&slot, start, "p").unwrap();
        conn.set_read_timeout(Duration::from_millis(200)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut saw_insert = false;
        while !saw_insert {
            assert!(Instant::now() < deadline, "no insert streamed");
            let Some(frame) = conn.read_frame("streaming").unwrap() else { continue };
            let BackendMessage::CopyData(payload) =
                backend::decode(backend::Frame { tag: frame.tag, body: &frame.body }).unwrap()
            else {
                continue;
            };
            match backend::decode_replication(payload).unwrap() {
                ReplicationMessage::XLogData { data, wal_start, .. } => {
                    if let PgOutput::Insert { new, .. } = pgoutput::decode(data).unwrap() {
                        assert_eq!(new.len(), 2);
                        saw_insert = true;
                        conn.send_status(wal_start, wal_start, wal_start, false).unwrap();
                    }
                }
                ReplicationMessage::PrimaryKeepalive { wal_end, .. } => {
                    conn.send_status(wal_end, wal_end, wal_end, false).unwrap()
                }
            }
        }
        conn.close();
    }
}

#[test]
fn replication_errors_carry_sqlstate() {
    let db = TestDb::new();
    let mut conn = ReplicationConn::connect(&params(&db.url()), Duration::from_secs(5)).unwrap();
    let err = conn.start_replication("no_such_slot", synchro::types::Lsn(0), "p").err().unwrap();
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    // The session stays usable after the error.
    assert!(conn.identify_system().is_ok());
    let err = conn.simple_query("SELEC 1").err().unwrap();
    assert_eq!(err.sqlstate(), Some("42601"));
}
