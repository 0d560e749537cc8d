//! The infrastructure tables of the contract (§10), as versioned, idempotent migration steps.
//!
//! Every step is `CREATE ... IF NOT EXISTS`-style so synchro can take over a database that the
//! reference server already initialised; a row per applied step in `synchro_migrations` records
//! what ran. [`statements`] hands the SQL to embedders who run their own migration pipeline.

use postgres::GenericClient;

/// One migration step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Monotonic step number, recorded in `synchro_migrations.version`.
    pub version: i32,
    /// Short description.
    pub name: &'static str,
    /// The SQL of the step (several statements, idempotent).
    pub sql: &'static str,
}

/// Serialises concurrent starts: two instances migrating the same database at once would
/// otherwise race on `CREATE TABLE IF NOT EXISTS` (which is not concurrency-safe in PostgreSQL).
const MIGRATION_LOCK: i64 = 91_110_043;

/// All steps, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "contract infrastructure tables",
        sql: r#"
CREATE TABLE IF NOT EXISTS sync_changelog (
    seq        BIGSERIAL PRIMARY KEY,
    bucket_id  TEXT NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    operation  SMALLINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_sync_changelog_bucket_seq ON sync_changelog (bucket_id, seq);
CREATE INDEX IF NOT EXISTS idx_sync_changelog_record ON sync_changelog (table_name, record_id);

CREATE TABLE IF NOT EXISTS sync_clients (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    client_name   TEXT,
    platform      TEXT NOT NULL DEFAULT '',
    app_version   TEXT NOT NULL DEFAULT '',
    bucket_subs   TEXT[] NOT NULL DEFAULT '{}',
    last_sync_at  TIMESTAMPTZ,
    last_pull_at  TIMESTAMPTZ,
    last_push_at  TIMESTAMPTZ,
    last_pull_seq BIGINT,
    is_active     BOOLEAN NOT NULL DEFAULT true,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, client_id)
);
CREATE INDEX IF NOT EXISTS idx_sync_clients_user_id ON sync_clients (user_id);

CREATE TABLE IF NOT EXISTS sync_client_checkpoints (
    user_id    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    bucket_id  TEXT NOT NULL,
    checkpoint BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id, bucket_id)
);

CREATE TABLE IF NOT EXISTS sync_bucket_edges (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    bucket_id  TEXT NOT NULL,
    checksum   INTEGER,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, record_id, bucket_id)
);
CREATE INDEX IF NOT EXISTS idx_sync_bucket_edges_bucket ON sync_bucket_edges (bucket_id, table_name, record_id);

CREATE TABLE IF NOT EXISTS sync_rule_failures (
    id         BIGSERIAL PRIMARY KEY,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    operation  SMALLINT NOT NULL,
    error_text TEXT NOT NULL,
    payload    JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_sync_rule_failures_created ON sync_rule_failures (created_at);

CREATE TABLE IF NOT EXISTS sync_schema_manifest (
    schema_version BIGINT PRIMARY KEY,
    schema_hash    TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_sync_schema_manifest_hash ON sync_schema_manifest (schema_hash);

CREATE TABLE IF NOT EXISTS sync_wal_position (
    slot_name     TEXT PRIMARY KEY,
    confirmed_lsn BIGINT NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 2,
        name: "bucket edge checksums on databases created by 0.1.2",
        sql: "ALTER TABLE sync_bucket_edges ADD COLUMN IF NOT EXISTS checksum INTEGER;",
    },
    Migration {
        version: 3,
        name: "synchro watermarks (compaction boundary, history resets)",
        sql: r#"
CREATE TABLE IF NOT EXISTS synchro_watermarks (
    name       TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 4,
        name: "checkpoints only for subscribed buckets",
        sql: r#"
DELETE FROM sync_client_checkpoints k WHERE NOT EXISTS (
    SELECT 1 FROM sync_clients c WHERE c.user_id = k.user_id AND c.client_id = k.client_id
       AND k.bucket_id = ANY (COALESCE(NULLIF(c.bucket_subs, '{}'), ARRAY['user:' || c.user_id, 'global'])));
"#,
    },
    Migration {
        version: 5,
        name: "one capture mode: edge-session watermarks removed",
        sql: r#"
-- A writer with CAPTURE_EDGE_SESSION=true (two transactions per batch) that crashed between its
-- changelog and edge commits left the edges behind the changelog: edges_lsn:<slot> below the
-- slot's stored position. A one-transaction writer cannot replay edges alone, so the edges are
-- rebuilt from the tables by the backfill at the next start of capture (it runs again once
-- its marks are gone), and a history reset sends every client to a fresh snapshot, so none
-- keeps a row whose removal fell into the gap.
DELETE FROM sync_bucket_edges WHERE EXISTS (
    SELECT 1 FROM synchro_watermarks w JOIN sync_wal_position p ON w.name = 'edges_lsn:' || p.slot_name
    WHERE w.seq < p.confirmed_lsn);
DELETE FROM synchro_watermarks WHERE name LIKE 'backfill:%' AND EXISTS (
    SELECT 1 FROM synchro_watermarks w JOIN sync_wal_position p ON w.name = 'edges_lsn:' || p.slot_name
    WHERE w.seq < p.confirmed_lsn);
WITH marker AS (
    INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation)
    SELECT '__synchro_history_reset__', '', '', 2 WHERE EXISTS (
        SELECT 1 FROM synchro_watermarks w JOIN sync_wal_position p ON w.name = 'edges_lsn:' || p.slot_name
        WHERE w.seq < p.confirmed_lsn)
    RETURNING seq)
INSERT INTO synchro_watermarks (name, seq) SELECT 'history_reset', seq FROM marker
ON CONFLICT (name) DO UPDATE SET seq = GREATEST(synchro_watermarks.seq, EXCLUDED.seq), updated_at = now();
DELETE FROM synchro_watermarks WHERE name = 'edges_seq' OR name LIKE 'edges\_lsn:%';
"#,
    },
    Migration {
        version: 6,
        name: "rule-bucket subscriptions: membership versions and departures",
        sql: r#"
CREATE TABLE IF NOT EXISTS synchro_subscription_versions (
    user_id    TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS synchro_departures (
    user_id      TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    bucket_id    TEXT NOT NULL,
    since        BIGINT NOT NULL,
    after_table  TEXT,
    after_record TEXT,
    members_done BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id, bucket_id)
);
"#,
    },
    Migration {
        version: 7,
        name: "bucket checksums kept per bucket",
        sql: r#"
-- Per bucket, the BIT_XOR of its edges' non-null checksums and how many there are (§6.8): a
-- pull's final page reads one row per bucket instead of aggregating every edge of the bucket.
-- Kept by a statement-level trigger in the transaction of every write to the edges, whatever
-- writes them (the changelog writer, the backfill, a TRUNCATE's removals, an operator).
CREATE TABLE IF NOT EXISTS sync_bucket_checksums (
    bucket_id TEXT PRIMARY KEY,
    checksum  INTEGER NOT NULL,
    members   BIGINT NOT NULL
);

CREATE OR REPLACE FUNCTION synchro_bucket_checksums_follow() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- An edge leaving XORs its checksum out, one arriving XORs its checksum in: the same
    -- operation, so each side is a list of (bucket, checksum, +1 or -1).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sync_bucket_checksums AS s (bucket_id, checksum, members)
        SELECT bucket_id, BIT_XOR(checksum), count(*) FROM synchro_edges_added
        WHERE checksum IS NOT NULL GROUP BY bucket_id ORDER BY bucket_id
        ON CONFLICT (bucket_id) DO UPDATE
        SET checksum = s.checksum # EXCLUDED.checksum, members = s.members + EXCLUDED.members;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO sync_bucket_checksums AS s (bucket_id, checksum, members)
        SELECT bucket_id, BIT_XOR(checksum), -count(*) FROM synchro_edges_removed
        WHERE checksum IS NOT NULL GROUP BY bucket_id ORDER BY bucket_id
        ON CONFLICT (bucket_id) DO UPDATE
        SET checksum = s.checksum # EXCLUDED.checksum, members = s.members + EXCLUDED.members;
    ELSE
        INSERT INTO sync_bucket_checksums AS s (bucket_id, checksum, members)
        SELECT bucket_id, BIT_XOR(checksum), sum(n) FROM (
            SELECT bucket_id, checksum, 1 AS n FROM synchro_edges_added WHERE checksum IS NOT NULL
            UNION ALL
            SELECT bucket_id, checksum, -1 FROM synchro_edges_removed WHERE checksum IS NOT NULL) d
        GROUP BY bucket_id ORDER BY bucket_id
        ON CONFLICT (bucket_id) DO UPDATE
        SET checksum = s.checksum # EXCLUDED.checksum, members = s.members + EXCLUDED.members;
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS synchro_bucket_checksums_insert ON sync_bucket_edges;
DROP TRIGGER IF EXISTS synchro_bucket_checksums_delete ON sync_bucket_edges;
DROP TRIGGER IF EXISTS synchro_bucket_checksums_update ON sync_bucket_edges;
CREATE TRIGGER synchro_bucket_checksums_insert AFTER INSERT ON sync_bucket_edges
    REFERENCING NEW TABLE AS synchro_edges_added
    FOR EACH STATEMENT EXECUTE FUNCTION synchro_bucket_checksums_follow();
CREATE TRIGGER synchro_bucket_checksums_delete AFTER DELETE ON sync_bucket_edges
    REFERENCING OLD TABLE AS synchro_edges_removed
    FOR EACH STATEMENT EXECUTE FUNCTION synchro_bucket_checksums_follow();
CREATE TRIGGER synchro_bucket_checksums_update AFTER UPDATE ON sync_bucket_edges
    REFERENCING OLD TABLE AS synchro_edges_removed NEW TABLE AS synchro_edges_added
    FOR EACH STATEMENT EXECUTE FUNCTION synchro_bucket_checksums_follow();

-- The edges as they are now (the triggers hold writes off until this transaction ends).
DELETE FROM sync_bucket_checksums;
INSERT INTO sync_bucket_checksums (bucket_id, checksum, members)
SELECT bucket_id, BIT_XOR(checksum), count(*) FROM sync_bucket_edges
WHERE checksum IS NOT NULL GROUP BY bucket_id;
"#,
    },
];

const LEDGER: &str = r#"
CREATE TABLE IF NOT EXISTS synchro_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// Every statement needed to bring an empty database up to date, ledger rows included, for
/// embedders who apply migrations with their own tooling (`synchrod migrate --print`).
pub fn statements() -> Vec<String> {
    let mut out = vec![LEDGER.trim().to_string()];
    for m in MIGRATIONS {
        out.push(m.sql.trim().to_string());
        out.push(format!(
            "INSERT INTO synchro_migrations (version, name) VALUES ({}, '{}') ON CONFLICT (version) DO NOTHING;",
            m.version,
            m.name.replace('\'', "''")
        ));
    }
    out
}

/// The versions recorded as applied (empty when the ledger does not exist yet).
pub fn applied(db: &mut impl GenericClient) -> Vec<i32> {
    db.query("SELECT version FROM synchro_migrations", &[])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Applies every step not yet recorded, in one transaction under an advisory lock, and returns
/// the versions it applied (empty when the database was already up to date).
pub fn apply(client: &mut impl GenericClient) -> Result<Vec<i32>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(LEDGER)?;
    let done: Vec<i32> = tx.query("SELECT version FROM synchro_migrations", &[])?.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)?;
        tx.execute("INSERT INTO synchro_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])?;
        applied.push(m.version);
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(statements().len(), 1 + 2 * MIGRATIONS.len());
    }
}
