//! The one byte budget of the HTTP edge (`HTTP_MAX_BUFFERED_BYTES`): request heads and bodies
//! being received or waiting for a worker, and responses a client has not read yet, all count
//! against it.
//!
//! Bytes are reserved *before* they are read or kept: a body's reservation is its declared
//! `Content-Length` (taken when the head arrives, before the first body byte is read), a
//! chunked body grows its reservation ahead of each read, and an unwritten response reserves
//! its remainder before it is kept. A reservation that does not fit is refused and the request
//! answered `503` (or the response dropped and the connection closed): memory held by the edge
//! stays below the budget however many clients send or refuse to read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The shared budget; cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget { inner: Arc::new(Inner { limit, used: AtomicUsize::new(0) }) }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that can grow.
    pub fn empty(&self) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0 }
    }

    /// Reserves `bytes`, or `None` when they do not fit.
    pub fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut r = self.empty();
        r.grow(bytes).then_some(r)
    }

    fn take(&self, bytes: usize) -> bool {
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.inner.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.inner.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held against a [`Budget`]; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes in addition; `false` (and nothing changed) when they do not fit.
    pub fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        if self.budget.take(more) {
            self.bytes += more;
            true
        } else {
            false
        }
    }

    /// Holds `bytes` in all: grows or shrinks to it. `false` when growing does not fit.
    pub fn resize(&mut self, bytes: usize) -> bool {
        if bytes >= self.bytes {
            self.grow(bytes - self.bytes)
        } else {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
            true
        }
    }

    /// Moves `bytes` (at most what is held) into a new reservation.
    pub fn split_off(&mut self, bytes: usize) -> Reservation {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Reservation { budget: self.budget.clone(), bytes }
    }

    /// Adds another reservation of the same budget to this one.
    pub fn absorb(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_limit_and_are_returned_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none());
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        assert!(!a.grow(1));
        assert_eq!(a.bytes(), 60, "a refused growth changes nothing");
        drop(b);
        assert!(a.grow(40));
        assert!(a.resize(10));
        assert_eq!(budget.used(), 10);
        let c = a.split_off(4);
        assert_eq!((a.bytes(), c.bytes(), budget.used()), (6, 4, 10));
        a.absorb(c);
        assert_eq!((a.bytes(), budget.used()), (10, 10));
        let huge = a.split_off(usize::MAX);
        assert_eq!((a.bytes(), huge.bytes()), (0, 10));
        drop(huge);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(usize::MAX).is_none(), "no overflow");
        assert_eq!(budget.limit(), 100);
    }
}
