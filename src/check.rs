//! `synchrod check`: the production checklist as pass/fail lines, each failure with its fix.

use std::time::Duration;

use crate::config::Config;
use crate::pg::conn::ReplicationConn;
use crate::pg::url;
use crate::registry::Registry;
use crate::rules::BucketRules;
use crate::store::introspect;
use crate::store::migrations::MIGRATIONS;
use crate::store::pool;

const RULES_FIX: &str = "fix the BUCKET_RULES file as the message says (README, Bucket rules)";

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix a failure.
    pub fix: String,
}

impl CheckResult {
    fn pass(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult { name, ok: true, detail: detail.into(), fix: String::new() }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult { name, ok: false, detail: detail.into(), fix: fix.into() }
    }

    /// `PASS name: detail` or `FAIL name: detail -> fix: ...`.
    pub fn line(&self) -> String {
        if self.ok {
            format!("PASS {}: {}", self.name, self.detail)
        } else {
            format!("FAIL {}: {}\n     fix: {}", self.name, self.detail, self.fix)
        }
    }
}

fn setting(db: &mut postgres::Client, name: &str) -> Option<String> {
    db.query_one("SELECT current_setting($1, true)", &[&name]).ok().and_then(|r| r.get(0))
}

/// The JWKS endpoint, when `JWKS_URL` is the authentication mode: one fetch, and whether it
/// yields usable keys. `None` in the other modes.
pub fn check_jwks(config: &Config) -> Option<CheckResult> {
    const NAME: &str = "JWKS endpoint";
    let crate::config::AuthMode::Jwks(url) = &config.auth else {
        return None;
    };
    #[cfg(feature = "jwks")]
    {
        use crate::jwks::cache::KeySource;
        let fetched = crate::jwks::HttpKeySource::new(url).and_then(|source| {
            let keys = source.fetch()?;
            Ok((source.describe(), keys))
        });
        Some(match fetched {
            Ok((url, fetched)) => CheckResult::pass(NAME, format!("{} usable key(s) from {url}", fetched.keys.keys().len())),
            Err(e) => CheckResult::fail(
                NAME,
                e.to_string(),
                "check JWKS_URL (the identity provider's jwks_uri), that this host can reach it, and SSL_CERT_FILE for https",
            ),
        })
    }
    #[cfg(not(feature = "jwks"))]
    {
        let _ = url;
        Some(CheckResult::fail(
            NAME,
            "this build lacks the `jwks` feature",
            "rebuild with --features jwks, or use JWT_SECRET",
        ))
    }
}

/// Runs every check against the configured database; never fails as a whole (a check that
/// cannot run is itself a failure line).
pub fn run(config: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    out.extend(check_jwks(config));
    let mut db = match pool::connect(&config.database_url) {
        Ok(db) => db,
        Err(e) => {
            out.push(CheckResult::fail(
                "database reachable",
                e.to_string(),
                "check DATABASE_URL and that PostgreSQL accepts connections",
            ));
            return out;
        }
    };
    out.push(CheckResult::pass("database reachable", crate::logging::redact_url(&config.database_url)));

    match setting(&mut db, "wal_level").as_deref() {
        Some("logical") => out.push(CheckResult::pass("wal_level", "logical")),
        other => out.push(CheckResult::fail(
            "wal_level",
            format!("{other:?}"),
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        )),
    }
    for (name, sql, fix) in [
        (
            "max_replication_slots headroom",
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int",
            "raise max_replication_slots (restart required) or drop unused slots",
        ),
        (
            "max_wal_senders headroom",
            "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int",
            "raise max_wal_senders (restart required)",
        ),
    ] {
        match db.query_one(sql, &[]) {
            Ok(r) => {
                let (max, used): (i32, i32) = (r.get(0), r.get(1));
                if max - used >= 1 {
                    out.push(CheckResult::pass(name, format!("{used} of {max} in use")));
                } else {
                    out.push(CheckResult::fail(name, format!("{used} of {max} in use"), fix));
                }
            }
            Err(e) => out.push(CheckResult::fail(name, e.to_string(), fix)),
        }
    }

    let repl = url::parse(&config.replication_url);
    let repl_user = repl.as_ref().map(|p| p.user.clone()).unwrap_or_default();
    match db.query_opt("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = $1", &[&repl_user]) {
        Ok(Some(r)) if r.get::<_, bool>(0) => {
            out.push(CheckResult::pass("REPLICATION privilege", format!("role {repl_user}")))
        }
        Ok(_) => out.push(CheckResult::fail(
            "REPLICATION privilege",
            format!("role {repl_user} cannot replicate"),
            format!("ALTER ROLE \"{repl_user}\" REPLICATION;"),
        )),
        Err(e) => {
            out.push(CheckResult::fail("REPLICATION privilege", e.to_string(), "check the role in REPLICATION_URL"))
        }
    }
    match repl {
        Ok(params) => match ReplicationConn::connect(&params, Duration::from_secs(5)).and_then(|mut c| {
            let r = c.identify_system();
            c.close();
            r
        }) {
            Ok(sys) => out.push(CheckResult::pass("replication connection (no pooler)", format!("system {} at {}", sys.system_id, sys.xlogpos))),
            Err(e) => out.push(CheckResult::fail(
                "replication connection (no pooler)",
                e.to_string(),
                "point REPLICATION_URL directly at PostgreSQL (not PgBouncer or another pooler), with replication=database",
            )),
        },
        Err(e) => out.push(CheckResult::fail("replication connection (no pooler)", e.to_string(), "fix REPLICATION_URL")),
    }

    // The infrastructure tables live in the sync store when one is configured.
    let mut store = match &config.sync_store_url {
        None => None,
        Some(url) => match pool::connect(url) {
            Ok(s) => {
                out.push(CheckResult::pass("sync store reachable", crate::logging::redact_url(url)));
                Some(s)
            }
            Err(e) => {
                out.push(CheckResult::fail(
                    "sync store reachable",
                    e.to_string(),
                    "check SYNC_STORE_URL and that its PostgreSQL accepts connections",
                ));
                return out;
            }
        },
    };
    let applied = crate::store::migrations::applied(store.as_mut().unwrap_or(&mut db));
    let missing: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    if missing.is_empty() {
        out.push(CheckResult::pass("infrastructure tables migrated", format!("{} steps applied", MIGRATIONS.len())));
    } else {
        out.push(CheckResult::fail(
            "infrastructure tables migrated",
            format!("steps {missing:?} missing"),
            "run `synchrod migrate` (or start synchrod once)",
        ));
    }

    // The tables are checked without the rules first, so a rules mistake does not hide the
    // tables' own state; then the rules are resolved against them.
    let rules = config.bucket_rules.as_ref().map(|path| BucketRules::load(path));
    let settings = crate::server::engine_settings_with(config, BucketRules::default()).map_err(|e| e.to_string());
    let plain = settings
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|s| introspect::load_registry(&mut db, &s.registry).map_err(|e| e.to_string()));
    match &plain {
        Ok(r) => out.push(CheckResult::pass("synced tables valid", format!("{} tables", r.tables.len()))),
        Err(e) => out.push(CheckResult::fail(
            "synced tables valid",
            e.clone(),
            "see the message; fix the table or SYNC_TABLES/EXCLUDE_COLUMNS",
        )),
    }
    let registry = match (&rules, &settings, plain) {
        (Some(Ok(rules)), Ok(settings), Ok(plain)) => {
            let mut with_rules = settings.registry.clone();
            with_rules.rules = rules.clone();
            match introspect::load_registry(&mut db, &with_rules) {
                Ok(r) => {
                    let shown: Vec<String> = rules.shared.iter().map(|r| r.describe()).collect();
                    out.push(CheckResult::pass(
                        "bucket rules",
                        format!("{} rule(s) from {}: {}", shown.len(), rules.source, shown.join("; ")),
                    ));
                    Ok(r)
                }
                Err(e) => {
                    out.push(CheckResult::fail("bucket rules", e.to_string(), RULES_FIX));
                    Ok(plain)
                }
            }
        }
        (Some(Err(e)), _, plain) => {
            out.push(CheckResult::fail("bucket rules", e.to_string(), RULES_FIX));
            plain
        }
        (_, _, plain) => plain,
    };
    if let Ok(registry) = &registry {
        check_publication(&mut db, config, registry, &mut out);
        check_identity(&mut db, registry, &mut out);
        check_push_role(&mut db, config, registry, &mut out);
    }
    check_slot(&mut db, config, &mut out);
    check_read_replicas(&mut db, config, &mut out);
    out
}

/// The PostgreSQL cluster's system identifier, which a physical replica shares with its primary
/// (`None` when the role may not read `pg_control_system()`).
fn system_identifier(db: &mut postgres::Client) -> Option<String> {
    db.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).ok().map(|r| r.get(0))
}

/// Each `READ_REPLICA_URLS` entry: reachable, in recovery (a streaming replica), and a copy of
/// this primary. synchrod itself never fails over one, it only stops reading it.
fn check_read_replicas(primary: &mut postgres::Client, config: &Config, out: &mut Vec<CheckResult>) {
    const NAME: &str = "read replica";
    let primary_id = system_identifier(primary);
    for url in &config.read_replica_urls {
        let shown = crate::logging::redact_url(url);
        let mut db = match pool::connect(url) {
            Ok(db) => db,
            Err(e) => {
                out.push(CheckResult::fail(
                    NAME,
                    format!("{shown}: {e}"),
                    "check READ_REPLICA_URLS and that the replica accepts connections (until then the primary serves its reads)",
                ));
                continue;
            }
        };
        match db.query_one("SELECT pg_is_in_recovery()", &[]).map(|r| r.get::<_, bool>(0)) {
            Ok(true) => {}
            Ok(false) => {
                out.push(CheckResult::fail(
                    NAME,
                    format!("{shown} is not in recovery, so it is not a streaming replica and is never read"),
                    "list only hot standbys of DATABASE_URL's server in READ_REPLICA_URLS",
                ));
                continue;
            }
            Err(e) => {
                out.push(CheckResult::fail(NAME, format!("{shown}: {e}"), "check the role in READ_REPLICA_URLS"));
                continue;
            }
        }
        match (&primary_id, system_identifier(&mut db)) {
            (Some(p), Some(r)) if *p != r => out.push(CheckResult::fail(
                NAME,
                format!("{shown} replicates system {r}, but DATABASE_URL is system {p}"),
                "list only hot standbys of DATABASE_URL's server in READ_REPLICA_URLS",
            )),
            _ => out.push(CheckResult::pass(NAME, format!("{shown}: a hot standby"))),
        }
    }
}

fn check_publication(db: &mut postgres::Client, config: &Config, registry: &Registry, out: &mut Vec<CheckResult>) {
    let name = "publication covers exactly the synced tables";
    let covered = match db.query(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
        &[&config.publication_name],
    ) {
        Ok(rows) => rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>(),
        Err(e) => return out.push(CheckResult::fail(name, e.to_string(), "check the database")),
    };
    let exists = db
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&config.publication_name])
        .map(|r| r.is_some())
        .unwrap_or(false);
    // Membership tables of bucket rules are streamed too (their changes move subscriptions).
    let mut wanted: Vec<(String, String)> =
        registry.tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
    for m in registry.membership_tables() {
        if !wanted.iter().any(|(s, n)| s == &m.schema && n == &m.name) {
            wanted.push((m.schema.clone(), m.name.clone()));
        }
    }
    let missing: Vec<String> =
        wanted.iter().filter(|w| !covered.contains(w)).map(|(s, n)| format!("{s}.{n}")).collect();
    let extra: Vec<String> = covered.iter().filter(|c| !wanted.contains(c)).map(|(s, n)| format!("{s}.{n}")).collect();
    if !exists {
        out.push(CheckResult::fail(
            name,
            format!("publication {} does not exist", config.publication_name),
            "start synchrod once (it creates the publication) or CREATE PUBLICATION ... FOR TABLE <synced tables>",
        ));
    } else if missing.is_empty() && extra.is_empty() {
        out.push(CheckResult::pass(name, format!("{} tables", covered.len())));
    } else {
        out.push(CheckResult::fail(
            name,
            format!("missing {missing:?}, extra {extra:?}"),
            format!(
                "ALTER PUBLICATION {} ADD/DROP TABLE ... (synchrod adds missing tables at start)",
                config.publication_name
            ),
        ));
    }
}

fn check_identity(db: &mut postgres::Client, registry: &Registry, out: &mut Vec<CheckResult>) {
    let name = "replica identity";
    let mut nothing = Vec::new();
    for t in &registry.tables {
        let ident: Option<String> = db
            .query_opt("SELECT relreplident::text FROM pg_class WHERE oid = $1", &[&t.oid.0])
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if ident.as_deref() == Some("n") {
            nothing.push(t.name.clone());
        }
    }
    check_membership_identity(db, registry, out);
    if nothing.is_empty() {
        out.push(CheckResult::pass(name, "every synced table has a usable replica identity"));
    } else {
        out.push(CheckResult::fail(
            name,
            format!("REPLICA IDENTITY NOTHING on {nothing:?}: updates and deletes fail"),
            "ALTER TABLE ... REPLICA IDENTITY FULL (or DEFAULT)",
        ));
    }
}

/// A membership table's deletes must say which user left: with `REPLICA IDENTITY NOTHING`
/// they are not streamed at all (a user who leaves keeps the team's rows), and with an
/// identity that leaves out the user column every cached subscription is refreshed instead of
/// that user's.
fn check_membership_identity(db: &mut postgres::Client, registry: &Registry, out: &mut Vec<CheckResult>) {
    const NAME: &str = "membership tables' replica identity";
    for m in registry.membership_tables() {
        let row = db.query_opt(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid                  AND a.attnum = ANY (i.indkey) WHERE i.indrelid = c.oid AND a.attname = $2                  AND (CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END))              FROM pg_class c WHERE c.oid = $1",
            &[&m.oid.0, &m.user],
        );
        let fix = format!("ALTER TABLE {} REPLICA IDENTITY FULL;", m.qualified());
        match row {
            Ok(Some(r)) => {
                let (ident, user_in_key): (String, bool) = (r.get(0), r.get(1));
                match ident.as_str() {
                    "n" => out.push(CheckResult::fail(
                        NAME,
                        format!("REPLICA IDENTITY NOTHING on {}: a member who leaves is never noticed", m.display_name()),
                        fix,
                    )),
                    "f" => out.push(CheckResult::pass(NAME, format!("{}: FULL", m.display_name()))),
                    _ if user_in_key => out.push(CheckResult::pass(
                        NAME,
                        format!("{}: its replica identity holds {}", m.display_name(), m.user),
                    )),
                    _ => out.push(CheckResult::pass(
                        NAME,
                        format!(
                            "{}: deletes do not carry {}, so each one refreshes every user's cached subscriptions                              (`{fix}` makes them precise)",
                            m.display_name(),
                            m.user
                        ),
                    )),
                }
            }
            Ok(None) => out.push(CheckResult::fail(
                NAME,
                format!("{} no longer exists", m.display_name()),
                "restore the table or fix BUCKET_RULES",
            )),
            Err(e) => out.push(CheckResult::fail(NAME, e.to_string(), "check the database")),
        }
    }
}

fn check_push_role(db: &mut postgres::Client, config: &Config, registry: &Registry, out: &mut Vec<CheckResult>) {
    let Some(role) = &config.push_role else {
        out.push(CheckResult::pass("push role", "PUSH_ROLE not set (synchro's own scoping applies; RLS optional)"));
        return;
    };
    match db.query_opt("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1", &[role]) {
        Ok(Some(r)) if !r.get::<_, bool>(0) => {
            out.push(CheckResult::pass("push role is not a superuser", role.clone()))
        }
        Ok(Some(_)) => out.push(CheckResult::fail(
            "push role is not a superuser",
            format!("{role} bypasses RLS"),
            format!("ALTER ROLE \"{role}\" NOSUPERUSER NOBYPASSRLS;"),
        )),
        Ok(None) => out.push(CheckResult::fail(
            "push role is not a superuser",
            format!("role {role} does not exist"),
            format!("CREATE ROLE \"{role}\" NOLOGIN; GRANT the synced tables to it"),
        )),
        Err(e) => out.push(CheckResult::fail("push role is not a superuser", e.to_string(), "check the database")),
    }
    let mut off = Vec::new();
    for t in &registry.tables {
        let row = db.query_opt(
            "SELECT c.relrowsecurity, EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) FROM pg_class c WHERE c.oid = $1",
            &[&t.oid.0],
        );
        if let Ok(Some(r)) = row {
            let (enabled, has_policies): (bool, bool) = (r.get(0), r.get(1));
            if has_policies && !enabled {
                off.push(t.name.clone());
            }
        }
    }
    if off.is_empty() {
        out.push(CheckResult::pass("RLS enabled where policies exist", "ok"));
    } else {
        out.push(CheckResult::fail(
            "RLS enabled where policies exist",
            format!("policies but RLS off on {off:?}"),
            "ALTER TABLE ... ENABLE ROW LEVEL SECURITY; ALTER TABLE ... FORCE ROW LEVEL SECURITY (see `synchrod rls`)",
        ));
    }
}

fn check_slot(db: &mut postgres::Client, config: &Config, out: &mut Vec<CheckResult>) {
    let row = db.query_opt(
        "SELECT COALESCE(wal_status, ''), (pg_current_wal_lsn() - restart_lsn)::float8, active FROM pg_replication_slots WHERE slot_name = $1",
        &[&config.slot_name],
    );
    match row {
        Ok(Some(r)) => {
            let (status, retained, active): (String, Option<f64>, bool) = (r.get(0), r.get(1), r.get(2));
            let mb = retained.unwrap_or(0.0) / 1_048_576.0;
            if status == "lost" {
                out.push(CheckResult::fail(
                    "replication slot",
                    format!("{} is invalidated", config.slot_name),
                    "start synchrod: it recreates the slot and sends clients to a snapshot",
                ));
            } else {
                out.push(CheckResult::pass(
                    "replication slot",
                    format!(
                        "{} {}, {mb:.1} MB of WAL retained",
                        config.slot_name,
                        if active { "active" } else { "inactive" }
                    ),
                ));
            }
        }
        Ok(None) => out.push(CheckResult::fail(
            "replication slot",
            format!("{} does not exist", config.slot_name),
            "start synchrod once (it creates the slot)",
        )),
        Err(e) => out.push(CheckResult::fail("replication slot", e.to_string(), "check the database")),
    }
    match setting(db, "max_slot_wal_keep_size").as_deref() {
        Some("-1") | None => out.push(CheckResult::fail(
            "max_slot_wal_keep_size",
            "unlimited: a stopped synchrod lets the slot fill the disk",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); (synchro recovers from an invalidated slot)",
        )),
        Some(v) => out.push(CheckResult::pass("max_slot_wal_keep_size", v.to_string())),
    }
}
