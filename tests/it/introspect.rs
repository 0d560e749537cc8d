use crate::harness::TestDb;
use synchro::config::TableName;
use synchro::registry::TimestampColumn;
use synchro::schema::{table_meta, Schema};
use synchro::store::introspect::{self, RegistryError, RegistrySettings};
use synchro::store::migrations;

fn settings(tables: &[&str]) -> RegistrySettings {
    RegistrySettings {
        tables: tables.iter().map(|t| name(t)).collect(),
        read_only: vec![],
        owner_column: "user_id".into(),
        excluded: vec![],
        updated_at_column: "updated_at".into(),
        deleted_at_column: "deleted_at".into(),
        rules: Default::default(),
    }
}

fn name(t: &str) -> TableName {
    match t.split_once('.') {
        Some((s, n)) => TableName { schema: Some(s.into()), name: n.into() },
        None => TableName { schema: None, name: t.into() },
    }
}

fn schema_of(db: &TestDb, s: &RegistrySettings) -> Schema {
    let mut c = db.client();
    let reg = introspect::load_registry(&mut c, s).unwrap();
    let cat = introspect::type_catalog(&mut c).unwrap();
    Schema::build(&reg, &cat).unwrap()
}

#[test]
fn a_real_table_reproduces_the_contract_hash_vector() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text NOT NULL DEFAULT '', \
         updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)",
    );
    let schema = schema_of(&db, &settings(&["items"]));
    assert_eq!(schema.hash, "a07bf97b560880e16fd377e76ec524cbee4770dc54e6a09cf688a05dca540075");
}

#[test]
fn every_contract_type_is_introspected() {
    let db = TestDb::new();
    db.execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE TABLE wide (
           id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
           user_id text,
           b boolean NOT NULL DEFAULT false,
           i2 smallint, i4 integer DEFAULT 0, i8 bigint DEFAULT '9007199254740993'::bigint,
           r real, d double precision, n numeric, n2 numeric(10,2) NOT NULL DEFAULT 1.50,
           t text NOT NULL DEFAULT '', vc varchar(20) DEFAULT 'x''y', ch char(3), u uuid,
           j json DEFAULT '[1,2]', jb jsonb NOT NULL DEFAULT '{}', arr text[] NOT NULL DEFAULT '{}', iarr integer[][],
           bin bytea, dt date DEFAULT CURRENT_DATE, tm time, tmtz timetz, ts timestamp, tstz timestamptz DEFAULT now(),
           iv interval, m mood NOT NULL DEFAULT 'happy', p posint, secret tsvector,
           created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)",
    );
    let mut s = settings(&["wide"]);
    s.excluded = vec![(name("wide"), "secret".into())];
    let schema = schema_of(&db, &s);
    let t = &schema.tables[0];
    let want: &[(&str, &str, &str, bool, &str, &str)] = &[
        ("id", "uuid", "string", false, "server_only", ""),
        ("user_id", "text", "string", true, "none", ""),
        ("b", "boolean", "boolean", false, "portable", "0"),
        ("i2", "smallint", "int", true, "none", ""),
        ("i4", "integer", "int", true, "portable", "0"),
        ("i8", "bigint", "int64", true, "portable", "'9007199254740993'"),
        ("r", "real", "float", true, "none", ""),
        ("d", "double precision", "float", true, "none", ""),
        ("n", "numeric", "float", true, "none", ""),
        ("n2", "numeric(10,2)", "float", false, "portable", "1.50"),
        ("t", "text", "string", false, "portable", "''"),
        ("vc", "character varying(20)", "string", true, "portable", "'x''y'"),
        ("ch", "character(3)", "string", true, "none", ""),
        ("u", "uuid", "string", true, "none", ""),
        ("j", "json", "json", true, "portable", "'[1,2]'"),
        ("jb", "jsonb", "json", false, "portable", "'{}'"),
        ("arr", "text[]", "json", false, "portable", "'{}'"),
        ("iarr", "integer[]", "json", true, "none", ""),
        ("bin", "bytea", "bytes", true, "none", ""),
        ("dt", "date", "date", true, "portable", "CURRENT_DATE"),
        ("tm", "time without time zone", "time", true, "none", ""),
        ("tmtz", "time with time zone", "time", true, "none", ""),
        ("ts", "timestamp without time zone", "datetime", true, "none", ""),
        ("tstz", "timestamp with time zone", "datetime", true, "portable", "CURRENT_TIMESTAMP"),
        ("iv", "interval", "string", true, "none", ""),
        ("m", "mood", "string", false, "portable", "'happy'"),
        ("p", "posint", "int", true, "none", ""),
        ("created_at", "timestamp with time zone", "datetime", false, "portable", "CURRENT_TIMESTAMP"),
        ("updated_at", "timestamp with time zone", "datetime", false, "portable", "CURRENT_TIMESTAMP"),
        ("deleted_at", "timestamp with time zone", "datetime", true, "none", ""),
    ];
    let got: Vec<(&str, &str, &str, bool, &str, &str)> = t
        .columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.db_type.as_str(),
                c.logical_type.as_str(),
                c.nullable,
                c.default_kind.as_str(),
                c.sqlite_default_sql.as_str(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(t.columns[0].is_primary_key && t.columns.iter().filter(|c| c.is_primary_key).count() == 1);
    // The served JSON parses and carries every required key.
    let v: serde_json::Value = serde_json::from_str(&schema.tables_json).unwrap();
    for key in ["table_name", "push_policy", "updated_at_column", "deleted_at_column", "primary_key", "columns"] {
        assert!(v[0].get(key).is_some(), "{key}");
    }
    assert_eq!(v[0]["columns"][2]["default_sql"], "false");
    assert!(v[0]["columns"][1].get("default_sql").is_none(), "omit-empty");
}

#[test]
fn missing_timestamp_columns_are_served_as_virtual() {
    let db = TestDb::new();
    db.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)");
    let mut c = db.client();
    let reg = introspect::load_registry(&mut c, &settings(&["notes"])).unwrap();
    assert_eq!(reg.tables[0].updated_at, TimestampColumn::Virtual("updated_at".into()));
    let schema = schema_of(&db, &settings(&["notes"]));
    let names: Vec<&str> = schema.tables[0].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "body", "updated_at", "deleted_at"]);
    assert_eq!(schema.tables[0].updated_at_column, "updated_at");
    assert_eq!(schema.tables[0].columns[0].default_kind.as_str(), "server_only");
}

#[test]
fn relations_dependencies_and_order() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE categories (id uuid PRIMARY KEY, user_id uuid, name text);
         CREATE TABLE tasks (id uuid PRIMARY KEY, user_id text NOT NULL, category_id uuid REFERENCES categories (id),
                             alt_category uuid REFERENCES categories (id));
         CREATE TABLE comments (id uuid PRIMARY KEY, task_id uuid NOT NULL REFERENCES tasks (id), parent uuid REFERENCES comments (id));
         CREATE TABLE audit (id int PRIMARY KEY);
         CREATE TABLE events (id int PRIMARY KEY, audit_id int REFERENCES audit (id));",
    );
    let mut s = settings(&["comments", "tasks", "categories", "events"]);
    s.read_only = vec![name("categories")];
    let mut c = db.client();
    let reg = introspect::load_registry(&mut c, &s).unwrap();
    let order: Vec<&str> = reg.dependency_order().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(order, vec!["categories", "tasks", "comments", "events"]);
    let meta = table_meta(&reg);
    let names: Vec<&str> = meta.iter().map(|m| m.table_name.as_str()).collect();
    assert_eq!(names, vec!["categories", "comments", "events", "tasks"]);
    assert_eq!(meta[0].push_policy, "disabled");
    assert_eq!(meta[3].push_policy, "enabled");
    assert_eq!(meta[3].dependencies, vec!["categories", "categories"], "duplicates kept");
    assert_eq!(meta[3].parent_table, "", "two FKs: no parent");
    assert_eq!(meta[1].dependencies, vec!["comments", "tasks"]);
    assert_eq!(meta[2].dependencies, Vec::<String>::new(), "FK to an unsynced table is ignored");
    let json = serde_json::to_value(&meta).unwrap();
    assert_eq!(json[2]["dependencies"], serde_json::json!([]));
    assert!(json[0].get("parent_table").is_none());
    let comments = reg.table("comments").unwrap();
    assert_eq!(comments.owner, None);
    assert_eq!(reg.table("tasks").unwrap().owner.as_deref(), Some("user_id"));
}

#[test]
fn every_validation_error_is_precise() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE nopk (a int);
         CREATE TABLE composite (a int, b int, PRIMARY KEY (a, b));
         CREATE TABLE cyc_a (id int PRIMARY KEY, b_id int);
         CREATE TABLE cyc_b (id int PRIMARY KEY, a_id int REFERENCES cyc_a (id));
         ALTER TABLE cyc_a ADD FOREIGN KEY (b_id) REFERENCES cyc_b (id);
         CREATE TABLE parent_unsynced (id int PRIMARY KEY);
         CREATE TABLE orphan (id int PRIMARY KEY, p int NOT NULL REFERENCES parent_unsynced (id));
         CREATE TABLE search (id int PRIMARY KEY, doc tsvector);
         CREATE TABLE serials (id int PRIMARY KEY, n serial);
         CREATE SCHEMA other; CREATE TABLE other.search (id int PRIMARY KEY);",
    );
    let mut c = db.client();
    let check = |c: &mut postgres::Client, s: RegistrySettings, want: &str| {
        let err = introspect::load_registry(c, &s).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(want), "{text:?} should contain {want:?}");
        err
    };
    assert!(matches!(
        check(&mut c, settings(&["missing"]), "missing does not exist"),
        RegistryError::TableMissing { .. }
    ));
    assert!(matches!(check(&mut c, settings(&["nopk"]), "no primary key"), RegistryError::NoPrimaryKey { .. }));
    assert!(matches!(
        check(&mut c, settings(&["composite"]), "composite primary key (a, b)"),
        RegistryError::CompositePrimaryKey { .. }
    ));
    assert!(matches!(check(&mut c, settings(&["cyc_a", "cyc_b"]), "cycle"), RegistryError::ForeignKeyCycle { .. }));
    assert!(matches!(
        check(&mut c, settings(&["orphan"]), "add public.parent_unsynced to SYNC_TABLES"),
        RegistryError::ForeignKeyToUnregistered { .. }
    ));
    assert!(matches!(check(&mut c, settings(&["search"]), "EXCLUDE_COLUMNS=search.doc"), RegistryError::Schema(_)));
    assert!(matches!(check(&mut c, settings(&["serials"]), "serials.n is NOT NULL"), RegistryError::Schema(_)));
    let mut s = settings(&["search"]);
    s.excluded = vec![(name("search"), "nope".into())];
    assert!(matches!(check(&mut c, s, "has no column nope"), RegistryError::ExcludedColumnMissing { .. }));
    assert!(matches!(
        check(&mut c, settings(&["search", "other.search"]), "two synced tables"),
        RegistryError::DuplicateName { .. }
    ));
    let mut s = settings(&["nopk"]);
    s.tables = vec![name("composite")];
    s.read_only = vec![name("search")];
    assert!(matches!(check(&mut c, s, "READ_ONLY_TABLES names search"), RegistryError::ReadOnlyNotSynced { .. }));
    // Excluding the unsupported column fixes it; schema-qualified lookups work.
    let mut s = settings(&["public.search"]);
    s.excluded = vec![(name("search"), "doc".into())];
    assert!(introspect::load_registry(&mut c, &s).is_ok());
}

#[test]
fn manifest_versions_follow_the_hash_and_ddl_is_detected() {
    let db = TestDb::new();
    db.execute("CREATE TABLE items (id int PRIMARY KEY, title text)");
    let mut c = db.client();
    migrations::apply(&mut c).unwrap();
    let s = settings(&["items"]);
    let reg = introspect::load_registry(&mut c, &s).unwrap();
    let oids: Vec<_> = reg.tables.iter().map(|t| t.oid).collect();
    let fp1 = introspect::catalog_fingerprint(&mut c, &oids).unwrap();
    let h1 = schema_of(&db, &s).hash;
    assert_eq!(introspect::manifest_version(&mut c, &h1).unwrap(), 1);
    assert_eq!(introspect::manifest_version(&mut c, &h1).unwrap(), 1, "same hash, same version");
    assert_eq!(introspect::catalog_fingerprint(&mut c, &oids).unwrap(), fp1, "no DDL, same fingerprint");
    db.execute("ALTER TABLE items ADD COLUMN note text");
    assert_ne!(introspect::catalog_fingerprint(&mut c, &oids).unwrap(), fp1);
    let h2 = schema_of(&db, &s).hash;
    assert_ne!(h1, h2);
    assert_eq!(introspect::manifest_version(&mut c, &h2).unwrap(), 2);
    db.execute("ALTER TABLE items DROP COLUMN note");
    assert_eq!(schema_of(&db, &s).hash, h1, "reverting restores the hash");
    assert_eq!(introspect::manifest_version(&mut c, &h1).unwrap(), 1, "and its old version");
    // Concurrent first sightings of a new hash agree on one version.
    let url = db.url();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                introspect::manifest_version(&mut c, "concurrent-hash").unwrap()
            })
        })
        .collect();
    let versions: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
    assert_eq!(versions[0], 3);
}

#[test]
fn publication_tables_are_listed() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE b, a",
    );
    let mut c = db.client();
    let tables = introspect::publication_tables(&mut c, "p").unwrap();
    assert_eq!(tables, vec![name("public.a"), name("public.b")]);
    assert!(introspect::publication_tables(&mut c, "none").unwrap().is_empty());
}
