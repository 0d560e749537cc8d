//! What the changelog holds per bucket, as far as this process has read it: the highest `seq`
//! of each bucket known, so an empty pull can be answered without probing every bucket.
//!
//! A pull probes each of the device's buckets through the `(bucket_id, seq)` index; a user in
//! fifty teams has fifty-two buckets, and those probes were most of the cost of the most common
//! request of all, the pull that finds nothing. This process keeps, for the buckets it has seen,
//! an upper bound of their highest `seq`:
//!
//! * every few milliseconds at most, one request reads the changelog's tail since the last read
//!   (`store::changelog::heads_after`: one index range on `seq`, shared by every request);
//! * a full probe that found nothing after a bucket's position teaches that the bucket holds
//!   nothing beyond it, as of the tail read before the probe.
//!
//! When every bucket a pull asks about is known to hold nothing after its position, the pull's
//! probe skips the per-bucket pages and instead asks whether any row came to the device's
//! buckets after the tail read the knowledge comes from (one short range of the changelog's
//! key); only then is the page read. So the knowledge never delays a row: a pull sees every row
//! committed before its probe, as it would without it. The bounds only ever err high (a bucket
//! then gets probed). The map is bounded; a forgotten bucket is probed again.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::store::changelog;
use crate::store::pool::StoreError;

/// The most buckets remembered; beyond it the map starts again (forgotten buckets are
/// probed, then learnt again).
const CAPACITY: usize = 200_000;

/// How old the tail read may be before a request reads it again.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(5);

struct State {
    /// Every changelog row up to this `seq` has been read into `bounds`.
    through: i64,
    /// Per bucket, a `seq` no row of the bucket exceeds (up to `through`).
    bounds: HashMap<String, i64>,
    /// When the tail was last read (`None`: never).
    read_at: Option<Instant>,
}

/// The per-process bucket heads.
pub(crate) struct Heads {
    /// Read by every pull, written by tail reads and probes that teach something.
    state: RwLock<State>,
    /// Held by the one request reading the tail; the others go on with what is known.
    reading: Mutex<()>,
}

impl Default for Heads {
    fn default() -> Heads {
        Heads {
            state: RwLock::new(State { through: 0, bounds: HashMap::new(), read_at: None }),
            reading: Mutex::new(()),
        }
    }
}

impl Heads {
    fn state(&self) -> RwLockReadGuard<'_, State> {
        match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        match self.state.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Reads the changelog's tail on `db` when the last read is older than `max_age` (and no
    /// other request is reading it), and returns the position up to which the tail has been
    /// read: bounds learnt from a probe that starts after this call hold as of it.
    pub(crate) fn refresh(&self, db: &mut impl postgres::GenericClient, max_age: Duration) -> Result<i64, StoreError> {
        let (through, fresh) = {
            let s = self.state();
            (s.through, s.read_at.is_some_and(|t| t.elapsed() < max_age))
        };
        if fresh {
            return Ok(through);
        }
        let Ok(_reading) = self.reading.try_lock() else { return Ok(through) };
        // The first read starts at the head: older rows are unknown (not in the map), so their
        // buckets are probed until a probe teaches their bound.
        let start = if self.state().read_at.is_none() { changelog::max_seq(db)? } else { through };
        let (heads, read) =
            if self.state().read_at.is_none() { (Vec::new(), start) } else { changelog::heads_after(db, start)? };
        let mut s = self.state_mut();
        if s.bounds.len() + heads.len() > CAPACITY {
            s.bounds.clear();
        }
        for (bucket, seq) in heads {
            let slot = s.bounds.entry(bucket).or_insert(seq);
            *slot = (*slot).max(seq);
        }
        s.through = s.through.max(read);
        s.read_at = Some(Instant::now());
        Ok(s.through)
    }

    /// True when every `(bucket, position)` is known to hold nothing after the position.
    pub(crate) fn all_empty<'a>(&self, positions: impl IntoIterator<Item = (&'a str, i64)>) -> bool {
        let s = self.state();
        if s.read_at.is_none() {
            return false;
        }
        positions.into_iter().all(|(b, p)| s.bounds.get(b).is_some_and(|&bound| bound <= p))
    }

    /// A probe that started after the tail was read through `through` found no row of these
    /// buckets after their positions: each position bounds its bucket as of `through` (later
    /// rows come with later tail reads).
    pub(crate) fn learn<'a>(&self, through: i64, positions: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut s = self.state_mut();
        // Bounds learnt against a tail read the map has since dropped (or a first read that has
        // not happened) would miss rows between that read and now.
        if s.read_at.is_none() || s.through < through {
            return;
        }
        if s.bounds.len() >= CAPACITY {
            s.bounds.clear();
        }
        for (bucket, position) in positions {
            // Known buckets (the common case) are updated in place, without a key to allocate.
            match s.bounds.get_mut(bucket) {
                Some(slot) => *slot = (*slot).max(position),
                None => {
                    s.bounds.insert(bucket.to_string(), position);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(heads: &Heads, through: i64, rows: &[(&str, i64)]) {
        let mut s = heads.state_mut();
        for (b, seq) in rows {
            let slot = s.bounds.entry(b.to_string()).or_insert(*seq);
            *slot = (*slot).max(*seq);
        }
        s.through = through;
        s.read_at = Some(Instant::now());
    }

    #[test]
    fn only_known_buckets_at_their_bounds_are_empty() {
        let heads = Heads::default();
        assert!(!heads.all_empty([("user:a", 10)]), "nothing is known before the first tail read");
        read(&heads, 100, &[("team:1", 90)]);
        assert!(heads.all_empty([("team:1", 90)]));
        assert!(!heads.all_empty([("team:1", 89)]), "a row after the position");
        assert!(!heads.all_empty([("team:1", 95), ("user:a", 100)]), "user:a is unknown");
        heads.learn(100, [("user:a", 70)]);
        assert!(heads.all_empty([("team:1", 95), ("user:a", 70)]));
        // A later row raises the bound; a learnt position never lowers it.
        read(&heads, 120, &[("user:a", 110)]);
        heads.learn(120, [("user:a", 80)]);
        assert!(!heads.all_empty([("user:a", 100)]));
        assert!(heads.all_empty([("user:a", 110)]));
        // Learning against a tail read newer than the map's is refused.
        heads.learn(500, [("user:b", 1)]);
        assert!(!heads.all_empty([("user:b", 1)]));
    }
}
