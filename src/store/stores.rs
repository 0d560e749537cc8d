//! The two databases synchro talks to, which are usually one.
//!
//! The *application database* (`DATABASE_URL`) holds the synced tables: pushes write there,
//! hydration reads there, and the replication slot and publication live there. The *sync
//! store* (`SYNC_STORE_URL`) holds everything synchro derives or tracks: the changelog,
//! bucket edges, clients and their checkpoints, the schema manifest, the watermarks and the
//! confirmed WAL position. When no separate store is configured both roles are played by the
//! application database and by one connection.
//!
//! The consistency rules that make the split safe are in `docs/scale-out.md` ("Separate sync
//! store"). The essential one: the store only ever holds facts derived from changes that are
//! already committed in the application database, so reading the store first and the
//! application database second never shows a client a row older than the change announcing it.

/// A connection (or pool checkout) to the application database and, when the sync tables
/// live elsewhere, one to the sync store.
#[derive(Debug)]
pub struct Stores<C> {
    app: C,
    store: Option<C>,
}

impl<C> Stores<C> {
    /// `store` is `None` when the sync tables live in the application database.
    pub fn new(app: C, store: Option<C>) -> Stores<C> {
        Stores { app, store }
    }

    /// The application database: synced tables, catalog, slot and publication.
    pub fn app(&mut self) -> &mut C {
        &mut self.app
    }

    /// The sync store: changelog, edges, clients, manifest, watermarks, WAL position.
    pub fn store(&mut self) -> &mut C {
        match &mut self.store {
            Some(s) => s,
            None => &mut self.app,
        }
    }

    /// The application connection and, only when it is a different database, the store's.
    pub fn split_mut(&mut self) -> (&mut C, Option<&mut C>) {
        (&mut self.app, self.store.as_mut())
    }

    /// True when the sync store is a separate database.
    pub fn is_split(&self) -> bool {
        self.store.is_some()
    }
}

impl Stores<postgres::Client> {
    /// Connects to the application database and, when `store_url` is set, to the sync store.
    pub fn connect(database_url: &str, store_url: Option<&str>) -> Result<Self, super::pool::StoreError> {
        let app = super::pool::connect(database_url)?;
        let store = match store_url {
            Some(url) => Some(super::pool::connect(url)?),
            None => None,
        };
        Ok(Stores::new(app, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_database_plays_both_roles() {
        let mut s = Stores::new(1, None);
        *s.store() += 1;
        assert_eq!(*s.app(), 2);
        assert!(!s.is_split());
        let mut s = Stores::new(1, Some(10));
        *s.store() += 1;
        assert_eq!((*s.app(), *s.store()), (1, 11));
        assert!(s.is_split());
    }
}
