//! The publication the replication slot streams: created when absent, extended when
//! `SYNC_TABLES` grows. Tables are never removed from it automatically (another consumer may
//! rely on them); `synchrod check` reports extra ones.

use postgres::GenericClient;

use super::pool::StoreError;
use crate::registry::{quote_ident, Registry};

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationChange {
    /// Nothing: it already covered every synced table.
    Unchanged,
    /// It was created for the synced tables.
    Created,
    /// These tables were added to it.
    Added(Vec<String>),
}

/// Serialises publication changes of instances starting at the same time.
const PUBLICATION_LOCK: i64 = 91_110_044;

/// Makes `publication` cover every registered table and every membership table of the bucket
/// rules, whose changes move subscriptions (one transaction, under an advisory lock so
/// concurrent starts do not race on `CREATE PUBLICATION`).
pub fn ensure_publication(
    db: &mut impl GenericClient,
    publication: &str,
    registry: &Registry,
) -> Result<PublicationChange, StoreError> {
    let mut tx = db.transaction().map_err(StoreError::query("starting the publication transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLICATION_LOCK])
        .map_err(StoreError::query("locking the publication"))?;
    let change = ensure_in(&mut tx, publication, registry)?;
    tx.commit().map_err(StoreError::query("committing the publication change"))?;
    Ok(change)
}

fn ensure_in(
    db: &mut impl GenericClient,
    publication: &str,
    registry: &Registry,
) -> Result<PublicationChange, StoreError> {
    let exists = db
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication])
        .map_err(StoreError::query("looking up the publication"))?;
    // (schema, name, quoted) of every table the slot must stream.
    let mut wanted: Vec<(String, String, String)> =
        registry.tables.iter().map(|t| (t.schema.clone(), t.name.clone(), t.qualified())).collect();
    for m in registry.membership_tables() {
        if !wanted.iter().any(|(s, n, _)| s == &m.schema && n == &m.name) {
            wanted.push((m.schema.clone(), m.name.clone(), m.qualified()));
        }
    }
    let tables: Vec<String> = wanted.iter().map(|(_, _, q)| q.clone()).collect();
    match exists {
        None => {
            if tables.is_empty() {
                return Ok(PublicationChange::Unchanged);
            }
            db.batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                tables.join(", ")
            ))
            .map_err(StoreError::query(format!("creating publication {publication}")))?;
            Ok(PublicationChange::Created)
        }
        Some(row) if row.get::<_, bool>(0) => Ok(PublicationChange::Unchanged),
        Some(_) => {
            let covered: Vec<(String, String)> = db
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .map_err(StoreError::query("reading the publication's tables"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let missing: Vec<&(String, String, String)> =
                wanted.iter().filter(|(s, n, _)| !covered.iter().any(|(cs, cn)| cs == s && cn == n)).collect();
            if missing.is_empty() {
                return Ok(PublicationChange::Unchanged);
            }
            let list: Vec<&str> = missing.iter().map(|(_, _, q)| q.as_str()).collect();
            db.batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), list.join(", ")))
                .map_err(StoreError::query(format!("adding tables to publication {publication}")))?;
            Ok(PublicationChange::Added(missing.iter().map(|(_, n, _)| n.clone()).collect()))
        }
    }
}
