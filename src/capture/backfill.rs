//! Edge backfill (contract C17): at the start of capture, every existing row of every routed
//! table gets its bucket edges (with checksums), so rebuilds and bucket checksums cover rows
//! that predate the consumer. It runs once per table (remembered in `synchro_watermarks`), in
//! pages, writing no changelog rows, through the writer's own read -> plan -> write path.
//!
//! The slot must exist first: every row committed after it was created is streamed, every row
//! committed before is backfilled (a row in both is planned twice, which the edge probe makes
//! harmless).

use std::sync::Arc;

use super::buckets::{BucketAssigner, RoutingTable, TableRouting};
use super::events::{ChangeKind, ColumnValue, RelColumn, RowChange};
use super::source;
use super::writer::{plan_chunk, Reads, Tables, WriterConfig, WriterError};
use crate::store::changelog::{raise_watermark, read_watermark};
use crate::store::writer_session::{self, WriterSession};
use crate::types::Oid;

/// Rows per backfill page (one transaction each).
const PAGE_ROWS: i64 = 1000;

/// Backfills the edges of every routed table not yet done; returns how many rows it read.
/// Rows are read from the application database, edges written to the sync store.
pub fn backfill_edges(
    config: &WriterConfig,
    routing: &RoutingTable,
    assigner: &dyn BucketAssigner,
) -> Result<u64, WriterError> {
    let mut store = WriterSession::connect(config.store_url())?;
    let mut app = match &config.store_url {
        Some(_) => Some(writer_session::connect_keyed(&config.database_url)?),
        None => None,
    };
    let tables = Tables { routing, assigner, checksum: config.checksum };
    let mut routed: Vec<&TableRouting> = routing.tables().collect();
    routed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut total = 0;
    for t in routed {
        let mark = format!("backfill:{}", t.name);
        let mut batch = store.begin();
        if read_watermark(batch.client(), &mark)? > 0 {
            continue;
        }
        drop(batch);
        // Only the routing columns are read (the edge checksums come from the current rows):
        // their types do not matter here.
        let columns: Arc<[RelColumn]> =
            source::routing_columns(t).into_iter().map(|name| RelColumn { name, type_oid: Oid(0) }).collect();
        let table: Arc<str> = Arc::from(t.name.as_str());
        let mut after: Option<String> = None;
        loop {
            let mut batch = store.begin();
            let rows = match app.as_mut() {
                Some(a) => source::routing_page(a, t, after.as_deref(), PAGE_ROWS)?,
                None => source::routing_page(batch.client(), t, after.as_deref(), PAGE_ROWS)?,
            };
            if rows.is_empty() {
                raise_watermark(batch.client(), &mark, 1)?;
                batch.commit()?;
                break;
            }
            let chunk: Vec<RowChange> = rows
                .into_iter()
                .map(|values| RowChange {
                    table: table.clone(),
                    kind: ChangeKind::Insert,
                    // The primary key column is never NULL.
                    key: values.first().cloned().flatten().unwrap_or_default(),
                    old_key: None,
                    columns: columns.clone(),
                    values: values.into_iter().map(|v| v.map_or(ColumnValue::Null, ColumnValue::Text)).collect(),
                })
                .collect();
            after = chunk.last().map(|c| c.key.clone());
            total += chunk.len() as u64;
            let plan = plan_chunk(&mut batch, Reads { app: app.as_mut(), visibility: None }, &tables, &chunk)?;
            // Membership only: clients get these rows from snapshots.
            let mut writes = plan.writes();
            writes.changelog.clear();
            batch.write(&writes)?;
            batch.commit()?;
        }
    }
    Ok(total)
}
