use crate::harness::{private_cluster, TestDb};

#[test]
fn a_private_cluster_stops_and_restarts_on_the_same_port() {
    let cluster = private_cluster();
    let db = TestDb::on(&cluster);
    db.execute("CREATE TABLE t (id int primary key)");
    let wal_level: String = db.client().query_one("SHOW wal_level", &[]).unwrap().get(0);
    assert_eq!(wal_level, "logical");
    let port = cluster.port();
    cluster.kill().unwrap();
    assert!(!cluster.is_running());
    assert!(postgres::Client::connect(&db.url(), postgres::NoTls).is_err());
    cluster.start_again().unwrap();
    assert_eq!(cluster.port(), port);
    db.execute("INSERT INTO t VALUES (1)");
}
