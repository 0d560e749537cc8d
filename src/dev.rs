//! `synchrod dev`: the embedded default. A private PostgreSQL cluster under `./.synchro/`, a
//! small demo schema, and development (`X-User-ID`) authentication, so one command gives a
//! working sync server on a fresh machine.
//!
//! Run as root from a directory the `postgres` OS user cannot enter (a `0700` home or temp
//! directory), the cluster lives under that user's home instead and `./.synchro/location` says
//! where (see [`LocalCluster::start`]); the banner always prints the data directory.

use std::collections::HashMap;
use std::path::Path;

use crate::cluster::{ClusterError, ClusterOptions, LocalCluster};

/// The database `synchrod dev` creates in its private cluster.
pub const DEV_DATABASE: &str = "synchro_dev";

/// The demo schema: an owner table (`tasks`), a child without the owner column reached through
/// its foreign key (`comments`), and a read-only global table (`categories`). Idempotent.
pub const DEMO_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS categories (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL DEFAULT '',
    color       text NOT NULL DEFAULT '#888888',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE TABLE IF NOT EXISTS tasks (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    category_id uuid REFERENCES categories (id),
    title       text NOT NULL DEFAULT '',
    done        boolean NOT NULL DEFAULT false,
    priority    integer NOT NULL DEFAULT 0,
    due_date    date,
    tags        text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE TABLE IF NOT EXISTS comments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id     uuid NOT NULL REFERENCES tasks (id),
    body        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
ALTER TABLE categories REPLICA IDENTITY FULL;
ALTER TABLE tasks REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;
INSERT INTO categories (id, name, color) VALUES
    ('00000000-0000-0000-0000-00000000c001', 'Work', '#3366cc'),
    ('00000000-0000-0000-0000-00000000c002', 'Home', '#33aa55'),
    ('00000000-0000-0000-0000-00000000c003', 'Errands', '#cc8833')
ON CONFLICT (id) DO NOTHING;
"#;

/// A running development environment: the cluster and the variables to run the server with.
#[derive(Debug)]
pub struct DevEnvironment {
    /// The private cluster (stopped by a watchdog when this process exits).
    pub cluster: LocalCluster,
    /// The process environment with the dev defaults filled in.
    pub vars: HashMap<String, String>,
    /// Whether the demo schema is in use (no `SYNC_TABLES` given).
    pub demo: bool,
}

/// Starts (or reuses) the cluster under `dir`, creates the dev database, loads the demo schema
/// unless the caller declared `SYNC_TABLES`, and returns the variables to serve with.
pub fn prepare(dir: &Path, mut vars: HashMap<String, String>) -> Result<DevEnvironment, ClusterError> {
    let cluster = LocalCluster::start(&ClusterOptions::new(dir))?;
    cluster.stop_when_process_exits(std::process::id(), false)?;
    let exists = cluster.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{DEV_DATABASE}'"))?;
    if exists.trim() != "1" {
        cluster.psql("postgres", &format!("CREATE DATABASE {DEV_DATABASE}"))?;
    }
    let is_set = |vars: &HashMap<String, String>, k: &str| vars.get(k).is_some_and(|v| !v.trim().is_empty());
    let demo = !is_set(&vars, "SYNC_TABLES");
    if demo {
        cluster.psql(DEV_DATABASE, DEMO_SCHEMA)?;
        vars.insert("SYNC_TABLES".into(), "tasks,comments,categories".into());
        vars.insert("READ_ONLY_TABLES".into(), "categories".into());
    }
    vars.insert("DATABASE_URL".into(), cluster.url(DEV_DATABASE));
    vars.remove("REPLICATION_URL");
    // Development mode authenticates with the X-User-ID header only.
    vars.remove("JWT_SECRET");
    vars.remove("JWKS_URL");
    if !is_set(&vars, "LISTEN_ADDR") {
        vars.insert("LISTEN_ADDR".into(), "127.0.0.1:8080".into());
    }
    Ok(DevEnvironment { cluster, vars, demo })
}

/// The banner printed once the dev server listens: where it is and what to try.
pub fn banner(base_url: &str, env: &DevEnvironment) -> String {
    let mut out = format!(
        "\nsynchro dev server: {base_url}\n\
         PostgreSQL (private, loopback only): {}\n\
         PostgreSQL data: {}\n\
         Authentication: X-User-ID header (development only; never expose this server)\n\n\
         Try:\n  curl {base_url}/healthz\n  curl -H 'X-User-ID: alice' {base_url}/sync/schema\n  \
         curl -H 'X-User-ID: alice' {base_url}/sync/tables\n  \
         curl -H 'X-User-ID: alice' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"client_id\":\"laptop\",\"schema_version\":0,\"schema_hash\":\"\"}}' {base_url}/sync/register\n",
        env.cluster.url(DEV_DATABASE),
        env.cluster.dir().display()
    );
    if env.demo {
        out.push_str(&format!(
            "  psql {} -c \"INSERT INTO tasks (user_id, title) VALUES ('alice', 'Buy milk')\"\n",
            env.cluster.url(DEV_DATABASE)
        ));
    }
    out.push_str("\nPress Ctrl-C to stop (the private PostgreSQL stops with it).\n");
    out
}
