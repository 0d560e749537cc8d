//! The changelog side of a batch: changelog rows (`COPY`), assignment failures, the rows a
//! TRUNCATE removes, and the stored WAL position with its compare-and-set.
//!
//! Without the edge session these statements run on the writer thread, in the batch's one
//! transaction. With it (`CAPTURE_EDGE_SESSION=true`) they run on a [`ChangelogSession`]: its
//! own thread and store session, so the changelog's `COPY` of one chunk runs while the writer
//! thread plans the next chunk and the edge session writes its edges. The writer encodes every
//! chunk's rows before sending them ([`encode_rows`]), so no row is copied per field on the
//! way.

use postgres::GenericClient;

use crate::capture::writer::WriterError;
use crate::session_thread::{answer, Done, Job, Reply, SessionThread};
use crate::store::pool::StoreError;
use crate::types::Lsn;

/// A failed bucket assignment: `(table, record, operation, error, row as JSON text)`.
pub type Failure = (String, String, i16, String, String);

/// Changelog rows `(bucket, table, record, operation)` in PostgreSQL's binary `COPY` format,
/// header and trailer included, for `COPY sync_changelog (bucket_id, table_name, record_id,
/// operation) FROM STDIN (FORMAT binary)`.
pub fn encode_rows<'a>(rows: impl ExactSizeIterator<Item = (&'a str, &'a str, &'a str, i16)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + rows.len() * 64);
    // Signature, flags, header extension length.
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        // A value longer than i32::MAX bytes cannot reach here: keys and bucket ids come from
        // single WAL messages, whose lengths are i32 themselves.
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for (bucket, table, record, op) in rows {
        out.extend_from_slice(&4i16.to_be_bytes());
        text(&mut out, bucket);
        text(&mut out, table);
        text(&mut out, record);
        out.extend_from_slice(&2i32.to_be_bytes());
        out.extend_from_slice(&op.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Appends rows encoded by [`encode_rows`] to the changelog; `seq` follows their order.
pub fn copy_rows(db: &mut impl GenericClient, encoded: &[u8]) -> Result<(), StoreError> {
    let mut sink = db
        .copy_in("COPY sync_changelog (bucket_id, table_name, record_id, operation) FROM STDIN (FORMAT binary)")
        .map_err(StoreError::query("starting the changelog COPY"))?;
    if let Err(e) = std::io::Write::write_all(&mut sink, encoded) {
        // The writer wraps the connection's error.
        let detail = e.to_string();
        return Err(match e.into_inner().and_then(|inner| inner.downcast::<postgres::Error>().ok()) {
            Some(source) => StoreError::Query { context: "writing changelog rows".into(), source: *source },
            None => StoreError::Corrupt { detail: format!("writing changelog rows: {detail}") },
        });
    }
    sink.finish().map_err(StoreError::query("finishing the changelog COPY"))?;
    Ok(())
}

/// Records failed bucket assignments (and logs each).
pub fn record_failures(db: &mut impl GenericClient, failures: &[Failure]) -> Result<(), StoreError> {
    for (table, id, op, why, payload) in failures {
        crate::warn!("bucket assignment failed", table = table.clone(), record_id = id.clone(), error = why.clone());
        db.execute(
            "INSERT INTO sync_rule_failures (table_name, record_id, operation, error_text, payload) VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[table, id, op, why, payload],
        )
        .map_err(StoreError::query("recording a bucket assignment failure"))?;
    }
    Ok(())
}

/// Delete rows for the edges a TRUNCATE removed: `tables[i]`, `ids[i]`, `buckets[i]` each.
pub fn record_truncate(
    db: &mut impl GenericClient,
    tables: &[String],
    ids: &[String],
    buckets: &[String],
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO sync_changelog (bucket_id, table_name, record_id, operation) \
         SELECT b, t, r, 3 FROM unnest($1::text[], $2::text[], $3::text[]) AS g(t, r, b)",
        &[&tables, &ids, &buckets],
    )
    .map_err(StoreError::query("recording a TRUNCATE"))?;
    Ok(())
}

/// Stores `lsn` as the position of `slot`, provided the stored value is still `expected` (what
/// this writer read or last wrote). The compare-and-set fences off a second writer: its batch
/// is rolled back instead of duplicating changelog rows. The row lock it takes serializes
/// concurrent writers, so the loser sees the winner's value.
pub fn store_position(db: &mut impl GenericClient, slot: &str, lsn: Lsn, expected: Lsn) -> Result<(), WriterError> {
    let n = db
        .execute(
            "INSERT INTO sync_wal_position (slot_name, confirmed_lsn, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (slot_name) DO UPDATE \
             SET confirmed_lsn = GREATEST(sync_wal_position.confirmed_lsn, EXCLUDED.confirmed_lsn), updated_at = now() \
             WHERE sync_wal_position.confirmed_lsn = $3",
            &[&slot, &(lsn.0 as i64), &(expected.0 as i64)],
        )
        .map_err(StoreError::query("storing the WAL position"))?;
    if n == 0 {
        return Err(WriterError::Fenced { expected });
    }
    Ok(())
}

enum ChangelogJob {
    /// Rows encoded by [`encode_rows`].
    Rows(Vec<u8>),
    Failures(Vec<Failure>),
    /// `(tables, records, buckets)` of the edges a TRUNCATE removed.
    Truncate(Vec<String>, Vec<String>, Vec<String>),
    /// Stores the position when there is one to store (compare-and-set against `expected`) and
    /// commits.
    Commit {
        slot: String,
        lsn: Option<Lsn>,
        expected: Lsn,
        reply: Reply<()>,
    },
}

impl Job for ChangelogJob {
    fn run(self, tx: &mut postgres::Transaction<'_>) -> Result<Done, WriterError> {
        match self {
            ChangelogJob::Rows(encoded) => copy_rows(tx, &encoded)?,
            ChangelogJob::Failures(failures) => record_failures(tx, &failures)?,
            ChangelogJob::Truncate(tables, ids, buckets) => record_truncate(tx, &tables, &ids, &buckets)?,
            ChangelogJob::Commit { slot, lsn, expected, reply } => {
                return Ok(match lsn.map_or(Ok(()), |lsn| store_position(tx, &slot, lsn, expected)) {
                    Ok(()) => Done::Commit(reply),
                    // Fenced (or failed): the batch rolls back.
                    Err(e) => answer(reply, Err(e)),
                });
            }
        }
        Ok(Done::Continue)
    }

    fn is_waited_for(&self) -> bool {
        matches!(self, ChangelogJob::Commit { .. })
    }

    fn refuse(self, err: WriterError) {
        if let ChangelogJob::Commit { reply, .. } = self {
            let _ = reply.send(Err(err));
        }
    }
}

/// The changelog thread and its session, beside the edge session (one per writer).
pub struct ChangelogSession(SessionThread<ChangelogJob>);

impl ChangelogSession {
    /// Starts the thread on an open session.
    pub fn start(client: postgres::Client) -> Result<ChangelogSession, WriterError> {
        // Two chunks queued at most: the writer plans one chunk ahead of the COPY.
        SessionThread::start("changelog-copy", client, 2).map(ChangelogSession)
    }

    /// Queues encoded rows ([`encode_rows`]); a failure surfaces at the commit.
    pub fn rows(&self, encoded: Vec<u8>) -> Result<(), WriterError> {
        self.0.send(ChangelogJob::Rows(encoded))
    }

    /// Queues failed assignments to record.
    pub fn failures(&self, failures: Vec<Failure>) -> Result<(), WriterError> {
        if failures.is_empty() {
            return Ok(());
        }
        self.0.send(ChangelogJob::Failures(failures))
    }

    /// Queues the delete rows of a TRUNCATE: `(tables, records, buckets)`.
    pub fn truncate(&self, tables: Vec<String>, ids: Vec<String>, buckets: Vec<String>) -> Result<(), WriterError> {
        self.0.send(ChangelogJob::Truncate(tables, ids, buckets))
    }

    /// Stores the position `lsn` of `slot` (when given; expected to replace `expected`) and
    /// commits everything queued since the last commit; waits for the outcome.
    pub fn commit(&self, slot: &str, lsn: Option<Lsn>, expected: Lsn) -> Result<(), WriterError> {
        self.0.ask(|reply| ChangelogJob::Commit { slot: slot.to_string(), lsn, expected, reply })
    }
}

#[cfg(test)]
mod tests {
    use super::encode_rows;

    #[test]
    fn rows_are_encoded_in_the_binary_copy_format() {
        let rows = [("user:a", "items", "1", 1i16), ("global", "t", "", 3)];
        let out = encode_rows(rows.into_iter());
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        for (b, t, r, op) in rows {
            want.extend_from_slice(&[0, 4]);
            for s in [b, t, r] {
                want.extend_from_slice(&(s.len() as u32).to_be_bytes());
                want.extend_from_slice(s.as_bytes());
            }
            want.extend_from_slice(&[0, 0, 0, 2, 0, op as u8]);
        }
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(out, want);
        // No rows: header and trailer only.
        assert_eq!(encode_rows(std::iter::empty()).len(), 19 + 2);
    }
}
