//! Every column type of the contract (§4.4) through the whole pipeline: a direct SQL write goes
//! WAL -> changelog -> pull, arrives rendered per §6.6, and the pulled values pushed back the way
//! an SDK stores and sends them (§7.8) recreate an identical row.

use serde_json::{json, Value};

use crate::capture::wait_for;
use crate::client::{get, post};
use crate::harness::TestDb;
use crate::server::start;
use synchro::config::TableName;
use synchro::store::introspect::RegistrySettings;

const USER: &str = "X-User-ID: alice\r\n";

const TYPED: &str = "
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE TABLE typed (
      id text PRIMARY KEY, user_id text,
      b boolean, i2 smallint, i4 integer, i8 bigint, r4 real, f8 double precision,
      num numeric, num2 numeric(10,2), nan numeric, t text, vc varchar(20), ch char(3), u uuid,
      j json, jb jsonb, by bytea, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
      iv interval, ta text[], ia int[], m mood, dom posint,
      updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);";

/// (column, SQL literal, the exact JSON text `row_to_json` renders in `data`).
const VALUES: &[(&str, &str, &str)] = &[
    ("b", "true", "true"),
    ("i2", "-32768", "-32768"),
    ("i4", "2147483647", "2147483647"),
    ("i8", "9007199254740993", "9007199254740993"),
    ("r4", "0.1", "0.1"),
    ("f8", "1e16", "1e+16"),
    ("num", "123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
    ("num2", "12.5", "12.50"),
    ("nan", "'NaN'", "\"NaN\""),
    ("t", "E'quote \" backslash \\\\ newline \\n \u{e9}'", "\"quote \\\" backslash \\\\ newline \\n \u{e9}\""),
    ("vc", "'varchar'", "\"varchar\""),
    ("ch", "'ab'", "\"ab \""),
    ("u", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""),
    ("j", "'[1, 2]'", "[1, 2]"),
    ("jb", "'{\"b\": 1, \"a\": [1, 2.50]}'", "{\"a\": [1, 2.50], \"b\": 1}"),
    ("by", "'\\x0102ff'", "\"\\\\x0102ff\""),
    ("d", "'2026-03-05'", "\"2026-03-05\""),
    ("tm", "'18:46:59.947115'", "\"18:46:59.947115\""),
    ("ttz", "'12:34:56+02'", "\"12:34:56+02\""),
    ("ts", "'2026-03-05 11:30:00.123'", "\"2026-03-05T11:30:00.123\""),
    ("tstz", "'2026-03-05 11:30:00.123456+00'", "\"2026-03-05T11:30:00.123456+00:00\""),
    ("iv", "'1 day 2 hours'", "\"1 day 02:00:00\""),
    ("ta", "ARRAY['a', 'b c']", "[\"a\",\"b c\"]"),
    ("ia", "'{{1,2},{3,4}}'", "[[1,2],[3,4]]"),
    ("m", "'sad'", "\"sad\""),
    ("dom", "7", "7"),
];

fn expected_logical_type(column: &str) -> &'static str {
    match column {
        "b" => "boolean",
        "i2" | "i4" | "dom" => "int",
        "i8" => "int64",
        "r4" | "f8" | "num" | "num2" | "nan" => "float",
        "j" | "jb" | "ta" | "ia" => "json",
        "by" => "bytes",
        "d" => "date",
        "tm" | "ttz" => "time",
        "ts" | "tstz" | "updated_at" | "deleted_at" => "datetime",
        _ => "string",
    }
}

/// How an SDK sends back a value it stored from `data` (§6.6 "How SDKs store data", §7.8):
/// objects and arrays as their JSON text, everything else as pulled.
fn as_sdk_sends(v: &Value) -> Value {
    match v {
        Value::Array(_) | Value::Object(_) => Value::String(v.to_string()),
        other => other.clone(),
    }
}

#[test]
fn every_contract_type_round_trips_through_wal_pull_and_push() {
    let db = TestDb::new();
    db.execute(TYPED);
    let server = start(&db, &[("SYNC_TABLES", "typed")]);
    let addr = server.addr;

    // §4.4: logical types as the SDKs will map them.
    let schema = get(addr, "/sync/schema", USER).json();
    let columns = schema["tables"][0]["columns"].as_array().unwrap();
    for c in columns {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["logical_type"], expected_logical_type(name), "{name}: {c}");
    }
    let (version, hash) = (schema["schema_version"].clone(), schema["schema_hash"].clone());
    let call = |path: &str, body: Value| {
        let r = post(addr, path, USER, body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r
    };
    call(
        "/sync/register",
        json!({"client_id": "d1", "platform": "ios", "app_version": "1.0.0", "schema_version": version, "schema_hash": hash}),
    );

    // Bootstrap from an (empty) snapshot, as an SDK does before its first pull.
    let snap = call(
        "/sync/snapshot",
        json!({"client_id": "d1", "cursor": null, "schema_version": version, "schema_hash": hash}),
    )
    .json();
    let checkpoint = snap["checkpoint"].as_i64().unwrap();

    // A direct SQL write of every type...
    let cols: Vec<&str> = VALUES.iter().map(|v| v.0).collect();
    let lits: Vec<&str> = VALUES.iter().map(|v| v.1).collect();
    db.execute(&format!(
        "INSERT INTO typed (id, user_id, {}) VALUES ('sql1', 'alice', {})",
        cols.join(", "),
        lits.join(", ")
    ));
    db.execute("INSERT INTO typed (id, user_id) VALUES ('nulls', 'alice')");

    // ...reaches a pull, each value rendered exactly per §6.6 (numbers as PostgreSQL printed them).
    let body = wait_for(20, "both rows in a pull", || {
        let r = call(
            "/sync/pull",
            json!({"client_id": "d1", "checkpoint": checkpoint, "schema_version": version, "schema_hash": hash}),
        );
        (r.json()["changes"].as_array().unwrap().len() == 2).then_some(r.body)
    });
    let pulled: Value = serde_json::from_str(&body).unwrap();
    let record = |id: &str| {
        pulled["changes"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id}")).clone()
    };
    let sql1 = record("sql1");
    for (col, _, rendered) in VALUES {
        let needle = format!("\"{col}\":{rendered}");
        assert!(body.contains(&needle), "{col}: expected {needle} in {}", sql1["data"]);
    }
    // Edge checksums (rendered from WAL text: every column type here renders) equal the
    // checksums pull emitted while hydrating.
    let mut c = db.client();
    for id in ["sql1", "nulls"] {
        let sum: Option<i32> = c
            .query_one("SELECT checksum FROM sync_bucket_edges WHERE table_name = 'typed' AND record_id = $1", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(sum.map(i64::from), record(id)["checksum"].as_i64(), "{id}");
    }
    let nulls = record("nulls");
    for (col, _, _) in VALUES {
        assert_eq!(nulls["data"][col], Value::Null, "{col} present as null");
        assert!(nulls["data"].as_object().unwrap().contains_key(*col));
    }

    // Pushed back as an SDK sends its stored copy: an identical row.
    let mut data = serde_json::Map::new();
    for (col, _, _) in VALUES {
        data.insert(col.to_string(), as_sdk_sends(&sql1["data"][col]));
    }
    data.insert("id".into(), json!("pushed"));
    let r = call(
        "/sync/push",
        json!({"client_id": "d1", "schema_version": version, "schema_hash": hash, "changes": [
            {"id": "pushed", "table_name": "typed", "operation": "create",
             "client_updated_at": "2026-03-05T11:00:00.123Z", "data": data}]}),
    )
    .json();
    assert_eq!(r["accepted"].as_array().map(Vec::len), Some(1), "{r}");
    // Exact text equality, except json, whose whitespace an SDK's re-serialisation may change.
    let cast = |c: &str| if c == "j" { "jsonb" } else { "text" };
    let same = cols
        .iter()
        .map(|c| format!("a.{c}::{t} IS NOT DISTINCT FROM b.{c}::{t} AS {c}", t = cast(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let row = db
        .client()
        .query_one(&format!("SELECT {same} FROM typed a, typed b WHERE a.id = 'sql1' AND b.id = 'pushed'"), &[])
        .unwrap();
    for (i, col) in cols.iter().enumerate() {
        assert!(row.get::<_, bool>(i), "{col} differs after the round trip");
    }

    // The other spellings SDKs use (§7.8): base64 bytes, 0/1 booleans, integral floats for
    // integers, Swift's millisecond UTC timestamps, JSON arrays and objects as values.
    let r = call(
        "/sync/push",
        json!({"client_id": "d1", "schema_version": version, "schema_hash": hash, "changes": [
            {"id": "swift", "table_name": "typed", "operation": "create",
             "client_updated_at": "2026-03-05T11:00:00.123Z",
             "data": {"id": "swift", "b": 1, "i4": 12.0, "by": "AQL/", "tstz": "2026-03-05T11:30:00.123Z",
                      "ts": "2026-03-05 11:30:00", "ta": ["a", "b c"], "jb": {"b": 1}}}]}),
    )
    .json();
    assert_eq!(r["accepted"].as_array().map(Vec::len), Some(1), "{r}");
    let row = db
        .client()
        .query_one(
            "SELECT b, i4, by = '\\x0102ff'::bytea, tstz = '2026-03-05 11:30:00.123+00', ts = '2026-03-05 11:30:00', \
             ta = ARRAY['a', 'b c'], jb = '{\"b\": 1}'::jsonb FROM typed WHERE id = 'swift'",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), 12);
    for i in 2..7 {
        assert!(row.get::<_, bool>(i), "column {i} of the check");
    }
    server.shutdown(std::time::Duration::from_secs(5));
}

/// Columns of every type whose JSON the writer renders from WAL text (`synchro::capture::row_json`).
const RENDERED: &str = "
    CREATE TYPE mood2 AS ENUM ('happy', 'sad', 'it''s <b>');
    CREATE TYPE mood3 AS ENUM ('x');
    CREATE FUNCTION mood3_json(mood3) RETURNS json LANGUAGE sql AS $$ SELECT json_build_object('m', $1::text) $$;
    CREATE CAST (mood3 AS json) WITH FUNCTION mood3_json(mood3);
    CREATE DOMAIN posint2 AS integer CHECK (VALUE > 0);
    CREATE DOMAIN stamp AS timestamptz;
    CREATE DOMAIN dmood AS mood2;
    CREATE TABLE rendered (
      id text PRIMARY KEY, user_id text,
      b boolean, i2 smallint, i4 integer, i8 bigint, r4 real, f8 double precision, num numeric,
      t text, vc varchar(20), ch char(3), nm name, u uuid, j json, jb jsonb,
      d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
      ia int[], ta text[], tsa timestamptz[], jba jsonb[], na numeric[], ba boolean[],
      m mood2, ma mood2[], dp posint2, ds stamp, dm dmood, mc mood3, iv interval, by bytea,
      iva interval[], bya bytea[]);";

/// Rows of random values for [`RENDERED`], beside the edge values below.
const RANDOM_ROWS: usize = 300;

/// Rows of edge values for [`RENDERED`]: each `(column, SQL literal)` not listed is NULL.
const RENDERED_ROWS: &[&[(&str, &str)]] = &[
    &[("b", "true"), ("i2", "-32768"), ("i4", "0"), ("i8", "-9223372036854775808"), ("r4", "0.1"), ("f8", "0.1")],
    &[("b", "false"), ("i8", "9007199254740993"), ("r4", "'NaN'"), ("f8", "'-Infinity'"), ("num", "'NaN'")],
    &[("f8", "'-0'"), ("r4", "'Infinity'"), ("num", "'-0.000'"), ("i4", "2147483647")],
    &[("f8", "1e-7"), ("num", "0.000001"), ("r4", "3.4e38")],
    &[("f8", "5e-324"), ("num", "123456789012345678901234567890.123456789")],
    &[("f8", "1e300"), ("num", "1e20"), ("i2", "7")],
    &[("num", "1e400"), ("t", "'too big for a double'")],
    &[("t", "E'q \" b \\\\ n \\n t \\t c \\u0001 <a> & \u{e9} \u{2028} x'"), ("vc", "''"), ("ch", "'a'")],
    &[("nm", "'name'"), ("u", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"), ("ch", "'abc'")],
    &[("j", "'{\"b\": 1, \"a\": [1, 2.50, {\"z\": null, \"y\": \"<\"}], \"a\": 3}'"), ("jb", "'[1, \"x\", true]'")],
    &[("j", "'  12.0 '"), ("jb", "'{\"k\": {\"n\": 1e-7}}'")],
    &[("j", "'{\"x\": 1e400}'")],
    &[("d", "'2026-03-05'"), ("tm", "'00:00:00'"), ("ttz", "'23:59:59.999999-03:30'")],
    &[("d", "'0001-01-01'"), ("ts", "'0099-12-31 23:59:59.5'"), ("tstz", "'2026-03-05 11:30:00+05:30'")],
    &[("d", "'infinity'"), ("ts", "'-infinity'"), ("tstz", "'infinity'")],
    &[("d", "'0044-03-15 BC'"), ("ts", "'0044-03-15 12:00 BC'"), ("tstz", "'0044-03-15 12:00+00 BC'")],
    &[("d", "'12026-01-01'"), ("ts", "'12026-01-01 00:00'"), ("tstz", "'12026-01-01 00:00+00'")],
    &[("ts", "'2026-03-05 11:30:00.000001'"), ("tstz", "'2026-03-05 11:30:00.120000+00'")],
    &[("ia", "'[0:1]={1,2}'"), ("ta", "ARRAY['', 'NULL', 'a b', 'q\"x', E'b\\\\s', NULL, '{}', 'é,', E'tab\\t']")],
    &[("ia", "'{{1,NULL},{3,4}}'"), ("tsa", "ARRAY['2026-01-01 10:00:00.5+00'::timestamptz, NULL]")],
    &[("jba", "ARRAY['{\"b\": 1, \"a\": [2.50]}'::jsonb, '\"s\"']"), ("na", "ARRAY[1.50, 'NaN', -0.0]::numeric[]")],
    &[("ia", "'{}'"), ("ta", "'{}'"), ("ba", "'{t,f,NULL}'")],
    &[("tsa", "ARRAY['infinity'::timestamptz]")],
    &[("m", "'it''s <b>'"), ("ma", "ARRAY['happy', 'it''s <b>', NULL]::mood2[]"), ("dp", "7"), ("dm", "'sad'")],
    &[("ds", "'2026-03-05 11:30:00.5+00'"), ("iv", "'1 year 2 mons -3 days 04:05:06.789'"), ("by", "'\\x00ff7f'")],
    &[("iva", "ARRAY['1 day'::interval, NULL]"), ("bya", "ARRAY['\\x'::bytea, '\\x01']")],
    &[("mc", "'x'")],
];

/// The writer renders edge checksums from WAL text for the types of `synchro::capture::row_json`. For
/// edge values of each, the rendering gives exactly the checksum of PostgreSQL's own
/// `row_to_json`, or declines (and the writer reads the row back); through the running
/// pipeline, every edge checksum equals the checksum a pull emits for that row.
#[test]
fn checksums_rendered_from_wal_text_equal_row_to_json() {
    use synchro::capture::events::{ColumnValue, RelColumn};
    use synchro::checksum::record_checksum;

    let db = TestDb::new();
    db.execute(RENDERED);
    // `name` and a domain over an enum are not contract types: excluded from the schema, they
    // are still in row_to_json.
    let server = start(&db, &[("SYNC_TABLES", "rendered"), ("EXCLUDE_COLUMNS", "rendered.nm,rendered.dm")]);
    for (n, row) in RENDERED_ROWS.iter().enumerate() {
        let cols: Vec<&str> = row.iter().map(|v| v.0).collect();
        let lits: Vec<&str> = row.iter().map(|v| v.1).collect();
        db.execute(&format!(
            "INSERT INTO rendered (id, user_id, {}) VALUES ('r{n}', 'alice', {})",
            cols.join(", "),
            lits.join(", ")
        ));
    }

    // And random values across each type's range (seeded: a failure reproduces).
    db.execute(&format!(
        "SELECT setseed(0.42);
         INSERT INTO rendered (id, user_id, b, i2, i4, i8, r4, f8, num, t, vc, ch, j, jb, d, tm, ttz, ts, tstz, ia, ta, na,
                               m, dp, ds, iv, by)
         SELECT 'g' || i, 'alice', random() < 0.5, (random() * 65535 - 32768)::int2,
           (random() * 4e9 - 2e9)::int4, (random() * 1.8e19 - 9e18)::int8,
           ((random() - 0.5) * 10 ^ (random() * 70 - 35))::real, (random() - 0.5) * 10 ^ (random() * 600 - 300),
           round(((random() - 0.5) * 10 ^ (random() * 40 - 10))::numeric, (random() * 20)::int),
           (SELECT string_agg(chr(1 + (random() * random() * 9000)::int), '') FROM generate_series(0, (random() * 20)::int + i * 0)),
           left(md5(i::text), (random() * 20)::int), chr(65 + (random() * 25)::int),
           json_build_object('n', (random() - 0.5) * 10 ^ (random() * 40 - 20), 's', chr(1 + (random() * 200)::int)),
           jsonb_build_array(round((random() * 1e6)::numeric, 3), random() < 0.5, NULL),
           date '1000-01-01' + (random() * 3000000)::int, time '00:00' + random() * interval '24 hours',
           ((time '00:00' + random() * interval '24 hours')::text || '+0' || (random() * 9)::int)::timetz,
           timestamp '1000-01-01' + random() * interval '8999 years',
           timestamptz '1000-01-01 00:00+00' + random() * interval '8999 years',
           ARRAY[(random() * 1000)::int, NULL, -(random() * 10)::int],
           (SELECT array_agg(CASE WHEN random() < 0.1 THEN NULL ELSE chr(1 + (random() * 300)::int) || 'x' END)
              FROM generate_series(0, (random() * 5)::int + i * 0)),
           ARRAY[round((random() * 1e6)::numeric, (random() * 6)::int)],
           (ARRAY['happy', 'sad', 'it''s <b>'])[1 + (random() * 2)::int]::mood2, 1 + (random() * 1000)::int,
           timestamptz '1000-01-01 00:00+00' + random() * interval '8999 years',
           random() * interval '1000 days' - random() * interval '50 years',
           decode(md5(i::text), 'hex')
         FROM generate_series(1, {RANDOM_ROWS}) i"
    ));

    // Text as a replication session receives it (the output functions, TimeZone UTC, ISO).
    let mut c = db.client();
    c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'").unwrap();
    // The columns as the registry reads them, with the type each renders as.
    let settings = RegistrySettings {
        tables: vec![TableName { schema: None, name: "rendered".into() }],
        read_only: vec![],
        owner_column: "user_id".into(),
        excluded: ["nm", "dm"].map(|c| (TableName { schema: None, name: "rendered".into() }, c.into())).to_vec(),
        updated_at_column: "updated_at".into(),
        deleted_at_column: "deleted_at".into(),
        rules: Default::default(),
    };
    let registry = synchro::store::introspect::load_registry(&mut c, &settings).unwrap();
    let table = &registry.tables[0];
    let columns: Vec<RelColumn> =
        table.columns.iter().map(|c| RelColumn { name: c.name.clone(), type_oid: c.type_oid }).collect();
    let render: Vec<u32> = table.columns.iter().map(|c| c.render_oid.0).collect();
    let render_of = |name: &str| render[columns.iter().position(|c| c.name == name).unwrap()];
    assert_eq!((render_of("m"), render_of("ma"), render_of("dm")), (25, 1009, 25), "enums render as text");
    assert_eq!((render_of("dp"), render_of("ds")), (23, 1184), "domains render as their base type");
    assert_eq!(render_of("mc"), 0, "an enum with a cast to json is not rendered from text");
    // format('%s') calls the output function, as pgoutput does (a cast to text would strip
    // char(n) padding).
    let texts = columns
        .iter()
        .map(|c| format!("CASE WHEN t.{0} IS NULL THEN NULL ELSE format('%s', t.{0}) END", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c.query(&format!("SELECT row_to_json(t.*)::text, {texts} FROM rendered t ORDER BY id"), &[]).unwrap();
    let mut rendered = 0;
    for r in &rows {
        let values: Vec<ColumnValue> = (0..columns.len())
            .map(|i| r.get::<_, Option<String>>(i + 1).map_or(ColumnValue::Null, ColumnValue::Text))
            .collect();
        let json: String = r.get(0);
        if let Some(sum) = synchro::capture::row_json::row_checksum(&columns, &render, &values) {
            assert_eq!(sum, record_checksum(&json), "{json}");
            rendered += 1;
        }
    }
    // Declined: 1e400 (numeric and json), infinite (twice), BC and five-digit-year dates, the
    // enum with a cast to json.
    assert_eq!(rendered, RENDERED_ROWS.len() - 7 + RANDOM_ROWS, "rows rendered from text");

    // Through the pipeline: edge checksums equal the hydration checksums pull reports, which
    // cover the served JSON (the excluded columns never leave the server, not even in a checksum).
    wait_for(20, "every row's edge", || {
        let n: i64 =
            c.query_one("SELECT count(*) FROM sync_bucket_edges WHERE table_name = 'rendered'", &[]).unwrap().get(0);
        (n == (RENDERED_ROWS.len() + RANDOM_ROWS) as i64).then_some(())
    });
    for r in c
        .query(
            &format!(
                "SELECT e.record_id, e.checksum, {}::text FROM sync_bucket_edges e \
                 JOIN rendered t ON t.id = e.record_id WHERE e.table_name = 'rendered'",
                table.row_json_sql("t")
            ),
            &[],
        )
        .unwrap()
    {
        let (id, sum, json): (String, Option<i32>, String) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(sum, Some(record_checksum(&json)), "{id}: {json}");
    }
    server.shutdown(std::time::Duration::from_secs(5));
}
