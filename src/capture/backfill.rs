//! Edge backfill (contract C17): at the start of capture, every existing row of every routed
//! table gets its bucket edges (with checksums), so rebuilds and bucket checksums cover rows
//! that predate the consumer. It runs once per table (remembered in `synchro_watermarks`), in
//! pages, writing no changelog rows, through the writer's own read -> plan -> write path.
//!
//! The slot must exist first: every row committed after it was created is streamed, every row
//! committed before is backfilled (a row in both is planned twice, which the edge probe makes
//! harmless).
//!
//! An edge's checksum is that of the row as clients receive it, so it depends on the table's
//! served shape: its columns and their types, and which of them `EXCLUDE_COLUMNS` leaves out.
//! When that shape differs from the one the edges were computed for (a column added or
//! dropped, an exclusion changed, or edges from before shapes were recorded), the table is
//! backfilled again at the start of capture, which corrects every edge whose checksum changed.
//! Without this, a bucket's kept checksum would differ from what its members hash to on
//! every device until each row changed, and SDKs would rebuild the bucket after every pull
//! that brought a change.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::buckets::{BucketAssigner, RoutingTable, TableRouting};
use super::events::{ChangeKind, ColumnValue, RelColumn, RowChange};
use super::source;
use super::writer::{plan_chunk, Reads, Tables, WriterConfig, WriterError};
use crate::store::changelog::{raise_watermark, read_watermark, set_watermark};
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
        let shape_mark = format!("served_shape:{}", t.name);
        let shape = served_shape(t);
        let mut batch = store.begin();
        if read_watermark(batch.client(), &mark)? > 0 && read_watermark(batch.client(), &shape_mark)? == shape {
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
                set_watermark(batch.client(), &shape_mark, shape)?;
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

/// A fingerprint of what the checksums of `t`'s rows are computed over: its served row JSON
/// and its columns with their types (SHA-256, stable across processes and builds; never 0, the
/// value of an absent mark).
fn served_shape(t: &TableRouting) -> i64 {
    let mut hash = Sha256::new();
    hash.update(t.row_json.as_bytes());
    for (column, type_oid) in t.columns.iter().zip(&t.type_oids) {
        hash.update([0u8]);
        hash.update(column.as_bytes());
        hash.update(type_oid.to_be_bytes());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.finalize()[..8]);
    (i64::from_be_bytes(first) >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[(&str, u32)], row_json: &str) -> TableRouting {
        TableRouting {
            columns: columns.iter().map(|(c, _)| c.to_string()).collect(),
            type_oids: columns.iter().map(|(_, t)| *t).collect(),
            render_oids: columns.iter().map(|(_, t)| *t).collect(),
            row_json: row_json.to_string(),
            ..TableRouting::default()
        }
    }

    #[test]
    fn the_served_shape_moves_with_columns_types_and_exclusions() {
        let base = served_shape(&table(&[("id", 25), ("title", 25)], "row_to_json(t)"));
        assert_eq!(base, served_shape(&table(&[("id", 25), ("title", 25)], "row_to_json(t)")), "stable");
        assert!(base > 0);
        for other in [
            table(&[("id", 25), ("title", 25), ("done", 16)], "row_to_json(t)"),
            table(&[("id", 25), ("title", 1043)], "row_to_json(t)"),
            table(&[("id", 25), ("title", 25)], "json_build_object('id', t.id)"),
            table(&[("idt", 25), ("itle", 25)], "row_to_json(t)"),
        ] {
            assert_ne!(served_shape(&other), base);
        }
    }
}
