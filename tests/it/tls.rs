//! TLS to PostgreSQL: a private cluster with a certificate from a throwaway CA, and a role that
//! may only log in over TLS, so every passing connection below provably ran encrypted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use synchro::cluster::LocalCluster;
use synchro::pg::conn::{ReplError, ReplicationConn};
use synchro::pg::url;
use synchro::store::pool;

use crate::capture::wait_for;
use crate::harness::{private_cluster, TestDb};

/// A CA, a server certificate for `localhost` signed by it, and an unrelated second CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn ca(&self) -> String {
        self.dir.join("ca.crt").display().to_string()
    }

    fn other_ca(&self) -> String {
        self.dir.join("other.crt").display().to_string()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("the openssl command");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_certs(name: &str) -> Certs {
    let dir = std::env::temp_dir().join(format!("synchro-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (key, crt, cn) in [("ca.key", "ca.crt", "synchro test CA"), ("other.key", "other.crt", "unrelated CA")] {
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", key, "-out", crt, "-days", "2", "-subj", &subj]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
        openssl(&dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(&dir, &args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Certs { dir }
}

/// Installs the server certificate, turns `ssl` on, and lets `tls_user` in only over TLS.
fn enable_tls(cluster: &LocalCluster, certs: &Certs) {
    let data = cluster.data_dir();
    for f in ["server.crt", "server.key"] {
        let dest = data.join(f);
        std::fs::copy(certs.dir.join(f), &dest).unwrap();
        let ok = Command::new("chown").arg("--reference").arg(&data).arg(&dest).status().unwrap().success();
        assert!(ok, "chown {f}");
        let ok = Command::new("chmod").arg("600").arg(&dest).status().unwrap().success();
        assert!(ok, "chmod {f}");
    }
    cluster.psql("postgres", "CREATE ROLE tls_user LOGIN SUPERUSER REPLICATION PASSWORD 'tls pw'").unwrap();
    cluster.psql("postgres", "ALTER SYSTEM SET ssl = on").unwrap();
    cluster.set_hba(&["hostssl all tls_user 127.0.0.1/32 scram-sha-256"]).unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    wait_for(10, "ssl = on", || (cluster.psql("postgres", "SHOW ssl").ok()?.trim() == "on").then_some(()));
}

fn url(cluster: &LocalCluster, db: &str, host: &str, query: &str) -> String {
    format!("postgres://tls_user:tls%20pw@{host}:{}/{db}?{query}", cluster.port())
}

fn pool_ssl(url: &str) -> Result<bool, String> {
    let mut c = pool::connect(url).map_err(|e| e.to_string())?;
    let row =
        c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn replication(url: &str) -> Result<ReplicationConn, ReplError> {
    let mut conn = ReplicationConn::connect(&url::parse(url).unwrap(), Duration::from_secs(5))?;
    conn.identify_system()?;
    Ok(conn)
}

#[test]
fn sslmodes_against_a_tls_cluster() {
    let cluster = private_cluster();
    let certs = make_certs("modes");
    enable_tls(&cluster, &certs);
    let db = TestDb::on(&cluster);
    let ca = certs.ca();

    // verify-full: chain and name checked; the pool and our replication client both go through.
    let full = url(&cluster, &db.name, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    assert_eq!(pool_ssl(&full), Ok(true));
    let conn = replication(&full).unwrap_or_else(|e| panic!("replication over verify-full: {e}"));
    assert!(conn.is_tls());
    conn.close();

    // The wrong CA fails cleanly, naming the certificate problem.
    let wrong = url(&cluster, &db.name, "localhost", &format!("sslmode=verify-full&sslrootcert={}", certs.other_ca()));
    let e = pool_ssl(&wrong).unwrap_err();
    assert!(e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"), "{e}");
    match replication(&wrong) {
        Err(ReplError::Tls(e)) => assert!(e.to_string().contains("UnknownIssuer"), "{e}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("the wrong CA was accepted"),
    }

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let by_ip = url(&cluster, &db.name, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"));
    assert!(pool_ssl(&by_ip).is_err());
    assert!(matches!(replication(&by_ip), Err(ReplError::Tls(_))));
    let ca_only = url(&cluster, &db.name, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert_eq!(pool_ssl(&ca_only), Ok(true));
    assert!(replication(&ca_only).unwrap().is_tls());
    // verify-ca still checks the chain.
    let ca_wrong = url(&cluster, &db.name, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", certs.other_ca()));
    assert!(pool_ssl(&ca_wrong).is_err());
    assert!(matches!(replication(&ca_wrong), Err(ReplError::Tls(_))));

    // require and prefer encrypt without verifying.
    for mode in ["require", "prefer"] {
        let u = url(&cluster, &db.name, "127.0.0.1", &format!("sslmode={mode}"));
        assert_eq!(pool_ssl(&u), Ok(true), "{mode}");
        assert!(replication(&u).unwrap().is_tls(), "{mode}");
    }

    // disable: plaintext, which this role is not allowed to use.
    let plain = url(&cluster, &db.name, "127.0.0.1", "sslmode=disable");
    assert!(pool_ssl(&plain).unwrap_err().contains("no pg_hba.conf entry"));
    assert!(replication(&plain).is_err());

    // A missing root file is a clear error, not a panic.
    let missing = url(&cluster, &db.name, "localhost", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    assert!(pool_ssl(&missing).unwrap_err().contains("/nonexistent/ca.pem"));
    let e = replication(&missing).err().expect("a missing root file fails").to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn require_against_a_server_without_tls_fails_cleanly() {
    let db = TestDb::new();
    let u = format!("{}?sslmode=require", db.url());
    let e = pool_ssl(&u).unwrap_err();
    assert!(e.contains("does not support TLS"), "{e}");
    match replication(&u) {
        Err(ReplError::Tls(e)) => assert!(e.to_string().contains("does not support TLS"), "{e}"),
        other => panic!("expected NotOffered, got {:?}", other.err().map(|e| e.to_string())),
    }
    // Unix sockets never use TLS (as libpq), whatever sslmode says.
    for mode in ["prefer", "require"] {
        let unix = format!(
            "host={} port={} user=postgres dbname={} sslmode={mode}",
            db.cluster.socket_dir().display(),
            db.cluster.port(),
            db.name
        );
        assert_eq!(pool_ssl(&unix), Ok(false), "{mode} over a Unix socket");
    }
    // prefer falls back to plaintext.
    let u = format!("{}?sslmode=prefer", db.url());
    assert_eq!(pool_ssl(&u), Ok(false));
    assert!(!replication(&u).unwrap().is_tls());
}

#[test]
fn synchrod_captures_and_serves_over_verify_full() {
    let cluster = private_cluster();
    let certs = make_certs("e2e");
    enable_tls(&cluster, &certs);
    let db = TestDb::on(&cluster);
    db.execute(
        "CREATE TABLE items (id text PRIMARY KEY, user_id text, title text,
           updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)",
    );
    let full = url(&cluster, &db.name, "localhost", &format!("sslmode=verify-full&sslrootcert={}", certs.ca()));
    let server = crate::server::start(&db, &[("DATABASE_URL", &full), ("SYNC_TABLES", "items")]);
    let r = crate::client::get(server.addr, "/sync/tables", "X-User-ID: alice\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    db.execute("INSERT INTO items (id, user_id, title) VALUES ('i1', 'alice', 'over tls')");
    wait_for(20, "the insert in the changelog", || {
        let n: i64 = db
            .client()
            .query_one("SELECT count(*) FROM sync_changelog WHERE record_id = 'i1' AND bucket_id = 'user:alice'", &[])
            .ok()?
            .get(0);
        (n == 1).then_some(())
    });
    // Every session synchrod opened (pool, writer, replication) is encrypted.
    let rows = db
        .client()
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = 'tls_user'",
            &[],
        )
        .unwrap();
    assert!(rows.iter().any(|r| r.get::<_, String>(0) == "walsender"), "a walsender is connected");
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)), "every tls_user session uses TLS");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_hostile_answer_to_sslrequest_is_a_clean_error() {
    // Something that is not PostgreSQL: answers the SSLRequest with a byte that means nothing,
    // or with a huge garbage stream, then hangs up.
    for reply in [&b"X"[..], &[0xffu8; 70_000][..], &b""[..]] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = reply.to_vec();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let Ok((mut s, _)) = listener.accept() else { return };
                let mut request = [0u8; 8];
                let _ = std::io::Read::read_exact(&mut s, &mut request);
                let _ = std::io::Write::write_all(&mut s, &reply);
            }
        });
        let url = format!("postgres://u@127.0.0.1:{port}/d?sslmode=require");
        let e = replication(&url).err().expect("not a PostgreSQL server").to_string();
        assert!(!e.is_empty());
        assert!(pool_ssl(&url).is_err());
        server.join().unwrap();
    }
}
