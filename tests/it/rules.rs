//! Bucket rules (`BUCKET_RULES`): the rules file at startup and in `synchrod check`, and the
//! RLS policies `synchrod rls` generates for rule buckets.

use std::collections::HashMap;
use std::path::PathBuf;

use synchro::config::{Config, TableName};
use synchro::server;
use synchro::store::introspect;

use crate::harness::TestDb;

/// Teams, their members (not synced), projects shared by team and tasks under projects.
pub(crate) const TEAMS: &str = "
    CREATE TABLE teams (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL DEFAULT '',
      updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE team_members (team_id uuid NOT NULL REFERENCES teams (id), user_id text NOT NULL,
      PRIMARY KEY (team_id, user_id));
    CREATE INDEX ON team_members (user_id);
    CREATE TABLE projects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), team_id uuid REFERENCES teams (id),
      user_id text, name text NOT NULL DEFAULT '', secret text,
      updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE TABLE tasks (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), project_id uuid NOT NULL REFERENCES projects (id),
      title text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    ALTER TABLE teams REPLICA IDENTITY FULL; ALTER TABLE team_members REPLICA IDENTITY FULL;
    ALTER TABLE projects REPLICA IDENTITY FULL; ALTER TABLE tasks REPLICA IDENTITY FULL;";

/// The issue's minimal rules file.
pub(crate) const MINIMAL: &str = r#"{
  "shared": [
    {
      "bucket": "team",
      "table": "projects",
      "column": "team_id",
      "members": { "table": "team_members", "key": "team_id", "user": "user_id" }
    }
  ]
}"#;

/// A rules file in a directory of its own, removed with the value.
pub(crate) struct RulesFile {
    dir: PathBuf,
    pub(crate) path: PathBuf,
}

impl RulesFile {
    pub(crate) fn new(db: &TestDb, text: &str) -> RulesFile {
        let dir = std::env::temp_dir().join(format!("synchro-rules-{}", db.name));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.json");
        std::fs::write(&path, text).unwrap();
        RulesFile { dir, path }
    }

    pub(crate) fn rewrite(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    pub(crate) fn shown(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(db: &TestDb, rules: &RulesFile, tables: &str) -> Config {
    let mut map = HashMap::new();
    map.insert("DATABASE_URL".to_string(), db.url());
    map.insert("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string());
    map.insert("SLOT_NAME".to_string(), format!("slot_{}", db.name));
    map.insert("SYNC_TABLES".to_string(), tables.to_string());
    map.insert("BUCKET_RULES".to_string(), rules.shown());
    Config::from_vars(&map).unwrap()
}

#[test]
fn startup_names_the_file_the_rule_and_the_field_of_every_mistake() {
    let db = TestDb::new();
    db.execute(TEAMS);
    db.execute(
        "CREATE TABLE labels (team_id text, user_id text); CREATE TABLE orgs (id int PRIMARY KEY, tags text[]);",
    );
    let rules = RulesFile::new(&db, MINIMAL);
    let edited = |from: &str, to: &str| MINIMAL.replace(from, to);
    let cases: Vec<(String, &str, &str)> = vec![
        ("{\"shared\": [".into(), "", "is not valid JSON: EOF while parsing a list at line 1 column 12"),
        (edited("\"column\"", "\"colunm\""), "", "shared[0] (bucket \"team\"), field colunm: unknown field"),
        (edited("\"projects\"", "\"project\""), "", "field table: project is not a synced table (synced: teams, projects, tasks)"),
        (edited("\"projects\"", "\"team_members\""), "", "field table: team_members is not a synced table"),
        (edited("\"column\": \"team_id\"", "\"column\": \"teamid\""), "", "field column: projects has no column \"teamid\" (its columns: id, team_id, user_id, name, secret, updated_at, deleted_at)"),
        (edited("\"column\": \"team_id\"", "\"column\": \"user_id\""), "", "field column: projects.user_id is the owner column"),
        (edited("\"column\": \"team_id\"", "\"column\": \"updated_at\""), "", "field column: projects.updated_at is a timestamp column"),
        (edited("\"column\": \"team_id\"", "\"column\": \"secret\""), "projects.secret", "field column: projects.secret is in EXCLUDE_COLUMNS"),
        (edited("\"team_members\"", "\"team_member\""), "", "field members.table: table team_member does not exist"),
        (edited("\"key\": \"team_id\"", "\"key\": \"team\""), "", "field members.key: public.team_members has no column \"team\" (its columns: team_id, user_id)"),
        (edited("\"user\": \"user_id\"", "\"user\": \"member\""), "", "field members.user: public.team_members has no column \"member\""),
        (edited("\"team_members\"", "\"labels\""), "", "field members.key: public.labels.team_id is of type text but projects.team_id is of type uuid"),
        (edited("\"column\": \"team_id\"", "\"column\": \"name\""), "", "field members.key: public.team_members.team_id is of type uuid but projects.name is of type text"),
    ];
    for (text, excluded, expected) in cases {
        rules.rewrite(&text);
        let mut config = config(&db, &rules, "teams,projects,tasks");
        if !excluded.is_empty() {
            config.exclude_columns = vec![(TableName { schema: None, name: "projects".into() }, "secret".into())];
        }
        let err = server::start(&config).err().unwrap_or_else(|| panic!("{text} must be refused")).to_string();
        let prefix = format!("BUCKET_RULES file {}: ", rules.shown());
        assert!(err.contains(&prefix), "{err}");
        assert!(err.contains(expected), "{text}\n  gave: {err}\n  expected: {expected}");
    }
    // An array key column cannot key a bucket.
    rules.rewrite(&edited("\"projects\"", "\"orgs\"").replace("\"column\": \"team_id\"", "\"column\": \"tags\""));
    let err = server::start(&config(&db, &rules, "teams,projects,tasks,orgs")).err().unwrap().to_string();
    assert!(err.contains("field column: orgs.tags is of type text[], which cannot key a bucket"), "{err}");
    // A file that is not there.
    let missing = RulesFile::new(&db, MINIMAL);
    std::fs::remove_file(&missing.path).unwrap();
    let err = server::start(&config(&db, &missing, "teams,projects,tasks")).err().unwrap().to_string();
    assert!(err.starts_with(&format!("BUCKET_RULES file {}: cannot be opened", missing.shown())), "{err}");
}

pub(crate) fn registry_with_rules(db: &TestDb, rules: &str, tables: &[&str]) -> synchro::registry::Registry {
    let settings = introspect::RegistrySettings {
        tables: tables.iter().map(|t| TableName { schema: None, name: t.to_string() }).collect(),
        read_only: vec![],
        owner_column: "user_id".into(),
        excluded: vec![],
        updated_at_column: "updated_at".into(),
        deleted_at_column: "deleted_at".into(),
        rules: synchro::rules::BucketRules::parse("rules.json", rules).unwrap(),
    };
    introspect::load_registry(&mut db.client(), &settings).unwrap()
}

#[test]
fn rules_land_on_the_registry_and_leave_the_schema_alone() {
    let db = TestDb::new();
    db.execute(TEAMS);
    let plain = registry_with_rules(&db, r#"{"shared": []}"#, &["teams", "projects", "tasks"]);
    let shared = registry_with_rules(&db, MINIMAL, &["teams", "projects", "tasks"]);
    let projects = shared.table("projects").unwrap();
    assert_eq!(projects.shared.len(), 1);
    assert_eq!(projects.shared[0].bucket, "team");
    assert_eq!(projects.shared[0].members.display_name(), "public.team_members");
    assert_eq!(projects.shared[0].members.user_type, "text");
    assert!(shared.table("tasks").unwrap().shared.is_empty(), "descendants follow through the chain");
    let types = introspect::type_catalog(&mut db.client()).unwrap();
    let hash = |r: &synchro::registry::Registry| synchro::schema::Schema::build(r, &types).unwrap().hash;
    assert_eq!(hash(&plain), hash(&shared), "rules do not change what clients see of the schema");
}

/// `synchrod rls` policies, applied, let PostgreSQL itself enforce rule buckets under a
/// non-superuser role: members read and write their team's projects and tasks, nobody else.
#[test]
fn rls_policies_cover_rule_buckets() {
    let db = TestDb::new();
    db.execute(TEAMS);
    db.execute(
        "INSERT INTO teams (id, name) VALUES ('10000000-0000-0000-0000-000000000001', 'red'), ('10000000-0000-0000-0000-000000000002', 'blue');
         INSERT INTO team_members VALUES ('10000000-0000-0000-0000-000000000001', 'alice'), ('10000000-0000-0000-0000-000000000002', 'bob');
         INSERT INTO projects (id, team_id, name) VALUES ('20000000-0000-0000-0000-000000000001', '10000000-0000-0000-0000-000000000001', 'red plan'),
           ('20000000-0000-0000-0000-000000000002', '10000000-0000-0000-0000-000000000002', 'blue plan');
         INSERT INTO projects (id, user_id, name) VALUES ('20000000-0000-0000-0000-000000000003', 'alice', 'personal');
         INSERT INTO tasks (project_id, title) VALUES ('20000000-0000-0000-0000-000000000001', 'red task'),
           ('20000000-0000-0000-0000-000000000002', 'blue task');",
    );
    let registry = registry_with_rules(&db, MINIMAL, &["teams", "projects", "tasks"]);
    let sql = synchro::rls::policies(&registry, "user_id", true).join("\n");
    assert!(!sql.contains("FUNCTION"), "a membership table without policies is read inline:\n{sql}");
    assert!(
        sql.contains("CREATE POLICY \"sync_read_projects\" ON \"public\".\"projects\" FOR SELECT USING ((CASE WHEN"),
        "{sql}"
    );
    db.execute(&sql);
    let role = format!("push_role_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON teams, projects, tasks TO {role};
         GRANT SELECT ON team_members TO {role};"
    ));
    let as_user = |user: &str, sql: &str| -> Result<Vec<String>, postgres::Error> {
        let mut c = db.client();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE {role}; SELECT set_config('app.user_id', '{user}', true);")).unwrap();
        let rows = tx.query(sql, &[])?;
        tx.commit().unwrap();
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    };
    let names = |user: &str| as_user(user, "SELECT name FROM projects ORDER BY name").unwrap();
    assert_eq!(names("alice"), vec!["personal", "red plan"]);
    assert_eq!(names("bob"), vec!["blue plan"]);
    assert_eq!(names("carol"), Vec::<String>::new());
    assert_eq!(as_user("alice", "SELECT title FROM tasks").unwrap(), vec!["red task"], "tasks follow their project");
    // Writing: into her team, yes; into bob's team or moving a project there, no.
    assert_eq!(
        as_user("alice", "UPDATE projects SET name = 'red plan 2' WHERE name = 'red plan' RETURNING name").unwrap(),
        vec!["red plan 2"]
    );
    assert!(as_user("alice", "UPDATE projects SET name = 'x' WHERE name = 'blue plan' RETURNING name")
        .unwrap()
        .is_empty());
    let moved = as_user(
        "alice",
        "UPDATE projects SET team_id = '10000000-0000-0000-0000-000000000002' WHERE name = 'red plan 2' RETURNING name",
    );
    assert_eq!(
        moved.unwrap_err().code().map(|c| c.code()),
        Some("42501"),
        "a project cannot move to a team she is not in"
    );
    let forged = as_user(
        "alice",
        "INSERT INTO projects (team_id, name) VALUES ('10000000-0000-0000-0000-000000000002', 'forged') RETURNING name",
    );
    assert_eq!(forged.unwrap_err().code().map(|c| c.code()), Some("42501"));
    let task = as_user(
        "alice",
        "INSERT INTO tasks (project_id, title) VALUES ('20000000-0000-0000-0000-000000000002', 'sneaky') RETURNING title",
    );
    assert_eq!(task.unwrap_err().code().map(|c| c.code()), Some("42501"), "nor a task under bob's project");
}

/// A membership table that is synced and placed by a rule itself (members see their team's
/// member list) reads memberships through a SECURITY DEFINER function: inline, its policies
/// would refer to themselves, which PostgreSQL refuses.
#[test]
fn rls_for_a_membership_table_shared_by_its_own_rule() {
    let db = TestDb::new();
    db.execute(TEAMS);
    db.execute(
        "ALTER TABLE team_members ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
         ALTER TABLE team_members DROP CONSTRAINT team_members_pkey; ALTER TABLE team_members ADD PRIMARY KEY (id);
         ALTER TABLE team_members ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
         INSERT INTO teams (id) VALUES ('10000000-0000-0000-0000-000000000001'), ('10000000-0000-0000-0000-000000000002');
         INSERT INTO team_members (team_id, user_id) VALUES ('10000000-0000-0000-0000-000000000001', 'alice'),
           ('10000000-0000-0000-0000-000000000001', 'carol'), ('10000000-0000-0000-0000-000000000002', 'bob');",
    );
    let rules = r#"{"shared": [
        {"bucket": "team", "table": "projects", "column": "team_id", "members": {"table": "team_members", "key": "team_id", "user": "user_id"}},
        {"bucket": "team", "table": "team_members", "column": "team_id", "members": {"table": "team_members", "key": "team_id", "user": "user_id"}}]}"#;
    let registry = registry_with_rules(&db, rules, &["teams", "projects", "tasks", "team_members"]);
    let sql = synchro::rls::policies(&registry, "user_id", true).join("\n");
    assert!(sql.contains("CREATE OR REPLACE FUNCTION \"public\".\"synchro_member_team\"(key uuid)"), "{sql}");
    assert!(sql.contains("SECURITY DEFINER"), "{sql}");
    db.execute(&sql);
    let role = format!("push_role_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON teams, projects, tasks, team_members TO {role};"
    ));
    let members = |user: &str| -> Vec<String> {
        let mut c = db.client();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE {role}; SELECT set_config('app.user_id', '{user}', true);")).unwrap();
        let rows = tx.query("SELECT user_id FROM team_members ORDER BY user_id", &[]).unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(members("alice"), vec!["alice", "carol"], "her team's member list");
    assert_eq!(members("bob"), vec!["bob"]);
    assert!(members("dave").is_empty());
}

fn synchrod_check(db: &TestDb, rules: &RulesFile) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synchrod"))
        .arg("check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("SYNC_TABLES", "teams,projects,tasks")
        .env("SLOT_NAME", format!("slot_{}", db.name))
        .env("BUCKET_RULES", rules.shown())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn check_shows_the_rules_or_what_is_wrong_with_them() {
    let db = TestDb::new();
    db.execute(TEAMS);
    let rules = RulesFile::new(&db, MINIMAL);
    let text = synchrod_check(&db, &rules);
    let expected = format!(
        "PASS bucket rules: 1 rule(s) from {}: team:<projects.team_id>, members team_members(team_id -> user_id)",
        rules.shown()
    );
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains("PASS membership tables' replica identity: public.team_members: FULL"), "{text}");
    assert!(text.contains("PASS synced tables valid: 3 tables"), "{text}");
    // The membership table is expected in the publication (synchrod adds it at start).
    assert!(text.contains("FAIL publication covers exactly the synced tables"), "{text}");
    db.execute("ALTER TABLE team_members REPLICA IDENTITY NOTHING");
    let text = synchrod_check(&db, &rules);
    assert!(
        text.contains("FAIL membership tables' replica identity: REPLICA IDENTITY NOTHING on public.team_members"),
        "{text}"
    );
    assert!(text.contains("fix: ALTER TABLE \"public\".\"team_members\" REPLICA IDENTITY FULL;"), "{text}");
    db.execute("ALTER TABLE team_members REPLICA IDENTITY DEFAULT");
    let text = synchrod_check(&db, &rules);
    assert!(
        text.contains(
            "PASS membership tables' replica identity: public.team_members: its replica identity holds user_id"
        ),
        "{text}"
    );
    // A broken file fails its own line; the tables are still checked.
    rules.rewrite(&MINIMAL.replace("\"user_id\" }", "\"uid\" }"));
    let text = synchrod_check(&db, &rules);
    assert!(text.contains("FAIL bucket rules: BUCKET_RULES file"), "{text}");
    assert!(text.contains("field members.user: public.team_members has no column \"uid\""), "{text}");
    assert!(text.contains("PASS synced tables valid: 3 tables"), "{text}");
    rules.rewrite("{");
    let text = synchrod_check(&db, &rules);
    assert!(text.contains("FAIL bucket rules: BUCKET_RULES file") && text.contains("is not valid JSON"), "{text}");
}

const RED: &str = "10000000-0000-0000-0000-000000000001";
const BLUE: &str = "10000000-0000-0000-0000-000000000002";

fn scalar(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

/// Capture puts rule rows into their team's bucket, descendants with them, moves them with
/// their key, and records membership changes as subscription versions.
#[test]
fn capture_routes_rule_rows_and_records_membership_changes() {
    let db = TestDb::new();
    db.execute(TEAMS);
    db.execute(&format!("INSERT INTO teams (id, name) VALUES ('{RED}', 'red'), ('{BLUE}', 'blue');"));
    // A project that predates capture gets its edge from the backfill.
    db.execute(&format!(
        "INSERT INTO projects (id, team_id, name) VALUES ('20000000-0000-0000-0000-000000000009', '{RED}', 'old')"
    ));
    let rules = RulesFile::new(&db, MINIMAL);
    let server =
        crate::server::start(&db, &[("SYNC_TABLES", "teams,projects,tasks"), ("BUCKET_RULES", &rules.shown())]);
    let edge = |table: &str, id: &str| -> Vec<String> {
        db.client()
            .query(
                "SELECT bucket_id FROM sync_bucket_edges WHERE table_name = $1 AND record_id = $2 ORDER BY 1",
                &[&table, &id],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(edge("projects", "20000000-0000-0000-0000-000000000009"), vec![format!("team:{RED}")]);
    db.execute(&format!(
        "INSERT INTO projects (id, team_id, name) VALUES ('20000000-0000-0000-0000-000000000001', '{RED}', 'plan');
         INSERT INTO projects (id, user_id, name) VALUES ('20000000-0000-0000-0000-000000000002', 'alice', 'mine');
         INSERT INTO tasks (id, project_id, title) VALUES ('30000000-0000-0000-0000-000000000001', '20000000-0000-0000-0000-000000000001', 't');"
    ));
    crate::capture::wait_for(30, "the task's edge", || {
        (!edge("tasks", "30000000-0000-0000-0000-000000000001").is_empty()).then_some(())
    });
    assert_eq!(edge("projects", "20000000-0000-0000-0000-000000000001"), vec![format!("team:{RED}")]);
    assert_eq!(
        edge("projects", "20000000-0000-0000-0000-000000000002"),
        vec!["user:alice".to_string()],
        "no key: the owner"
    );
    assert_eq!(
        edge("tasks", "30000000-0000-0000-0000-000000000001"),
        vec![format!("team:{RED}")],
        "tasks follow their project"
    );
    assert_eq!(edge("teams", RED), vec!["global".to_string()], "teams has no rule of its own");
    // Moving the project moves its task.
    db.execute(&format!("UPDATE projects SET team_id = '{BLUE}' WHERE id = '20000000-0000-0000-0000-000000000001'"));
    crate::capture::wait_for(30, "the task to follow", || {
        (edge("tasks", "30000000-0000-0000-0000-000000000001") == vec![format!("team:{BLUE}")]).then_some(())
    });
    let moves = scalar(
        &db,
        &format!(
            "SELECT count(*) FROM sync_changelog WHERE table_name = 'tasks' AND bucket_id = 'team:{RED}' AND operation = 3"
        ),
    );
    assert_eq!(moves, 1, "the old team hears the task leave");
    // Memberships move versions: per user, growing.
    let published = scalar(&db, "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'team_members'");
    assert_eq!(published, 1, "the membership table is streamed");
    let version = |user: &str| {
        scalar(
            &db,
            &format!("SELECT COALESCE(max(version), 0) FROM synchro_subscription_versions WHERE user_id = '{user}'"),
        )
    };
    db.execute(&format!("INSERT INTO team_members VALUES ('{RED}', 'Bob')"));
    crate::capture::wait_for(30, "bob's version", || (version("bob") > 0).then_some(()));
    let first = version("bob");
    db.execute("DELETE FROM team_members WHERE user_id = 'Bob'");
    crate::capture::wait_for(30, "bob's version to move", || (version("bob") > first).then_some(()));
    assert_eq!(version(""), 0, "a delete under REPLICA IDENTITY FULL names its user");
    db.execute("ALTER TABLE team_members REPLICA IDENTITY NOTHING; ALTER TABLE team_members REPLICA IDENTITY DEFAULT;");
    db.execute(&format!(
        "INSERT INTO team_members VALUES ('{BLUE}', 'carol'); DELETE FROM team_members WHERE user_id = 'carol';"
    ));
    crate::capture::wait_for(30, "carol's version", || (version("carol") > 0).then_some(()));
    assert_eq!(version(""), 0, "the primary key holds user_id: deletes still name their user");
    server.shutdown(std::time::Duration::from_secs(5));
}
