//! The sync engine: register, pull, push, snapshot, rebuild, schema, tables and debug as a
//! library API over a connection pool, with no HTTP and no threads of its own. An embedding
//! application calls it with a user id it has authenticated itself.

mod catalog;
mod departures;
mod heads;
mod hooks;
mod pull;
mod push;
mod rebuild;
mod register;
mod replica_reads;
mod rows;
mod scope;
mod snapshot;
mod subscriptions;

use std::fmt;
use std::sync::Arc;
use std::sync::{Mutex, RwLock};

use serde_json::value::RawValue;

use crate::protocol::{BadRequest, SchemaResponse, TablesResponse};
use crate::store::introspect::{self, RegistryError, RegistrySettings};
use crate::store::pool::{Pool, PooledClient, StoreError};
use crate::store::replicas::ReplicaSet;
use crate::store::Stores;

/// The connections of one request: the application database and, when configured, the
/// separate sync store.
pub(crate) type Conns = Stores<PooledClient>;

pub use catalog::CatalogState;
pub use hooks::{Hooks, NoHooks};
pub use push::{last_writer_wins, ConflictResolver, LastWriterWins, PushCounts, ServerWins};
pub use replica_reads::ReadCounts;

/// What the engine can answer besides success. The HTTP layer maps each to a status.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// The request breaks the contract (400).
    BadRequest(String),
    /// No client `(user, client_id)` (404 or 500 depending on the endpoint).
    ClientNotRegistered,
    /// The client's schema pair is not the current one (409).
    SchemaMismatch {
        /// Current version.
        version: i64,
        /// Current hash.
        hash: String,
    },
    /// The client's `app_version` is below the minimum (426).
    UpgradeRequired,
    /// The request asks for something the user may not have (403).
    Forbidden(String),
    /// The registered tables cannot be served (500): DDL made the schema unsupported.
    Schema(String),
    /// A database failure; transient ones become 503.
    Store(StoreError),
    /// An embedder hook refused the operation (500; the push was rolled back).
    Hook(String),
}

impl EngineError {
    /// True when a retry may succeed (→ 503 with `Retry-After`).
    pub fn is_transient(&self) -> bool {
        matches!(self, EngineError::Store(e) if e.is_transient())
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::BadRequest(m) => write!(f, "bad request: {m}"),
            EngineError::ClientNotRegistered => f.write_str("client not registered"),
            EngineError::SchemaMismatch { version, .. } => write!(f, "schema mismatch (server version {version})"),
            EngineError::UpgradeRequired => f.write_str("client upgrade required"),
            EngineError::Forbidden(m) => write!(f, "forbidden: {m}"),
            EngineError::Schema(m) => write!(f, "schema unavailable: {m}"),
            EngineError::Store(e) => write!(f, "{e}"),
            EngineError::Hook(m) => write!(f, "hook failed: {m}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e)
    }
}

impl From<BadRequest> for EngineError {
    fn from(e: BadRequest) -> Self {
        EngineError::BadRequest(e.0)
    }
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(s) => EngineError::Store(s),
            other => EngineError::Schema(other.to_string()),
        }
    }
}

/// Engine settings beyond the registry.
#[derive(Clone)]
pub struct EngineSettings {
    /// Which tables and conventions.
    pub registry: RegistrySettings,
    /// `MIN_CLIENT_VERSION` (empty = off), checked on the register body's `app_version`.
    pub min_client_version: String,
    /// `PUSH_ROLE`: pushes run `SET LOCAL ROLE` to it so row-level security applies.
    pub push_role: Option<String>,
    /// Decides update conflicts on tables with an updated-at column (§7.9).
    pub resolver: Arc<dyn ConflictResolver>,
    /// The embedder's hooks ([`NoHooks`] for the standalone server).
    pub hooks: Arc<dyn Hooks>,
}

impl fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineSettings")
            .field("registry", &self.registry)
            .field("min_client_version", &self.min_client_version)
            .field("push_role", &self.push_role)
            .finish_non_exhaustive()
    }
}

/// A snapshot at which the catalog fingerprint of the registered tables is known.
#[derive(Debug, Clone)]
struct VerifiedSnapshot {
    snapshot: String,
    fingerprint: String,
}

/// The sync engine.
pub struct Engine {
    /// The application database.
    pool: Pool,
    /// The sync store, when it is a separate database (`SYNC_STORE_URL`).
    store: Option<Pool>,
    settings: EngineSettings,
    catalog: RwLock<Arc<CatalogState>>,
    /// Lets the per-request catalog check skip the fingerprint while the database's snapshot
    /// has not moved (see [`introspect::current_snapshot`]).
    verified: Mutex<Option<VerifiedSnapshot>>,
    /// Read replicas for pull hydration and snapshot pages (`READ_REPLICA_URLS`).
    replicas: Option<ReplicaSet>,
    /// Pages read on the replicas and on the primary.
    reads: replica_reads::ReadCounters,
    /// Users' current subscriptions, with bucket rules.
    subscriptions: subscriptions::SubscriptionCache,
    /// What the changelog holds per bucket, as far as this process has read it.
    heads: heads::Heads,
    /// `SHARED_ROWS_WRITABLE`: whether every user may change rows without an owner.
    shared_rows_writable: bool,
    /// `PUSH_SET_BASED`: whether pushes apply runs of records with set-based statements.
    set_based_push: bool,
    /// How pushes were applied.
    pushes: push::PushCounters,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads and validates the registry and the schema manifest. Fails on any table the SDKs
    /// could not sync (C15), with a message saying how to fix it.
    pub fn new(pool: Pool, settings: EngineSettings) -> Result<Engine, EngineError> {
        Engine::with_stores(pool, None, settings)
    }

    /// [`Engine::new`] with the sync tables (changelog, edges, clients, checkpoints, manifest,
    /// watermarks) in a separate database reached through `store`, while `app` holds the
    /// synced tables. See `docs/scale-out.md` for the consistency rules.
    pub fn with_stores(app: Pool, store: Option<Pool>, settings: EngineSettings) -> Result<Engine, EngineError> {
        let mut dbs = Stores::new(
            app.get().map_err(StoreError::from)?,
            store.as_ref().map(|s| s.get()).transpose().map_err(StoreError::from)?,
        );
        let state = CatalogState::load_from(&mut dbs, &settings.registry)?;
        drop(dbs);
        Ok(Engine {
            pool: app,
            store,
            settings,
            catalog: RwLock::new(Arc::new(state)),
            verified: Mutex::new(None),
            replicas: None,
            reads: replica_reads::ReadCounters::default(),
            subscriptions: subscriptions::SubscriptionCache::default(),
            heads: heads::Heads::default(),
            shared_rows_writable: true,
            set_based_push: true,
            pushes: push::PushCounters::default(),
        })
    }

    /// Lets pull hydration and snapshot pages read from `replicas` when one has replayed far
    /// enough to be indistinguishable from the primary for that page (see
    /// [`ReplicaSet::reader_for`]); everything else stays on the primary.
    pub fn with_read_replicas(mut self, replicas: ReplicaSet) -> Engine {
        self.replicas = Some(replicas);
        self
    }

    /// Whether clients may change rows without an owner (a NULL or empty owner column, their
    /// own or an ancestor's, or a table without ownership): `true` by default, as the contract
    /// has it (every user may update or delete them, and attach child rows to them, which then
    /// reach every user). With `false` such rows are read-only for clients
    /// (`ownership_violation`), and only server-side writes change them.
    pub fn with_shared_rows_writable(mut self, writable: bool) -> Engine {
        self.shared_rows_writable = writable;
        self
    }

    /// Whether pushes apply each run of consecutive records on one table with a few set-based
    /// statements (`true`, the default) or every record with statements of its own. The
    /// outcomes are the same either way; what differs is what triggers see: a statement-level
    /// trigger fires once per statement, and row-level `AFTER` triggers (foreign-key checks
    /// among them) at the end of each statement.
    pub fn with_set_based_push(mut self, set_based: bool) -> Engine {
        self.set_based_push = set_based;
        self
    }

    /// The read replicas, if any.
    pub fn read_replicas(&self) -> Option<&ReplicaSet> {
        self.replicas.as_ref()
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The application database's pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The sync store's pool: the application pool unless a separate store is configured.
    pub fn store_pool(&self) -> &Pool {
        self.store.as_ref().unwrap_or(&self.pool)
    }

    /// True when the sync tables live in a separate database.
    pub fn has_separate_store(&self) -> bool {
        self.store.is_some()
    }

    /// Checks out the connections a request needs (one when there is no separate store).
    pub(crate) fn dbs(&self) -> Result<Conns, EngineError> {
        let app = self.pool.get().map_err(StoreError::from)?;
        let store = match &self.store {
            Some(s) => Some(s.get().map_err(StoreError::from)?),
            None => None,
        };
        Ok(Stores::new(app, store))
    }

    /// The current catalog, reloaded first when DDL touched a registered table (so a schema
    /// change is seen by the very next request, §4.6). While the application database's
    /// snapshot is the one at which the fingerprint was last taken this is one cheap prepared
    /// round trip.
    pub(crate) fn catalog(&self, dbs: &mut Conns) -> Result<Arc<CatalogState>, EngineError> {
        let snapshot = introspect::current_snapshot(dbs.app())?;
        self.catalog_at(dbs, &snapshot)
    }

    /// [`Engine::catalog`] for a request that already read the application database's current
    /// snapshot.
    pub(crate) fn catalog_at(&self, dbs: &mut Conns, snapshot: &str) -> Result<Arc<CatalogState>, EngineError> {
        let cached = self.cached_catalog();
        let known = match self.verified.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let fingerprint = match known {
            // The same snapshot sees the same catalog rows: the fingerprint cannot have changed.
            Some(k) if k.snapshot == snapshot => k.fingerprint,
            _ => {
                let (client, statements) = dbs.app().parts();
                let (snapshot, fingerprint) = introspect::snapshot_fingerprint(client, statements, cached.oids())?;
                let verified = VerifiedSnapshot { snapshot, fingerprint: fingerprint.clone() };
                match self.verified.lock() {
                    Ok(mut v) => *v = Some(verified),
                    Err(p) => *p.into_inner() = Some(verified),
                }
                fingerprint
            }
        };
        if fingerprint == cached.fingerprint() {
            return Ok(cached);
        }
        let fresh = Arc::new(CatalogState::load_from(dbs, &self.settings.registry)?);
        crate::info!("schema changed", schema_version = fresh.version, schema_hash = fresh.schema.hash.clone());
        match self.catalog.write() {
            Ok(mut c) => *c = fresh.clone(),
            Err(p) => *p.into_inner() = fresh.clone(),
        }
        // The rules were resolved again: memberships are read afresh.
        self.subscriptions.clear();
        Ok(fresh)
    }

    /// The current catalog, reloaded first when DDL touched a registered table since it was
    /// last loaded (change capture reads it at the start of each term).
    pub fn current_catalog(&self) -> Result<Arc<CatalogState>, EngineError> {
        let mut dbs = self.dbs()?;
        self.catalog(&mut dbs)
    }

    /// The catalog as last loaded, without checking for DDL.
    pub fn cached_catalog(&self) -> Arc<CatalogState> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// True when PostgreSQL (both databases, with a separate store) answers a trivial query.
    pub fn health(&self) -> bool {
        let answers = |pool: &Pool| {
            // A pooled connection may have died with a restarted server: try twice.
            (0..2).any(|_| {
                pool.get_timeout(std::time::Duration::from_secs(1))
                    .map(|mut db| db.simple_query("SELECT 1").is_ok())
                    .unwrap_or(false)
            })
        };
        answers(&self.pool) && self.store.as_ref().is_none_or(answers)
    }

    /// `GET /sync/schema`: version, hash, server time and the served tables.
    pub fn schema(&self) -> Result<SchemaResponse, EngineError> {
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        let tables = RawValue::from_string(cat.schema.tables_json.clone())
            .map_err(|e| EngineError::Schema(format!("the served schema is not JSON: {e}")))?;
        Ok(SchemaResponse {
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
            server_time: crate::time::format_timestamp(std::time::SystemTime::now()),
            tables,
        })
    }

    /// `GET /sync/tables`.
    pub fn tables(&self) -> Result<TablesResponse, EngineError> {
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        Ok(TablesResponse {
            schema_hash: cat.schema.hash.clone(),
            schema_version: cat.version,
            server_time: crate::time::format_timestamp(std::time::SystemTime::now()),
            tables: crate::schema::table_meta(&cat.registry),
        })
    }

    /// Fails with 409 unless `(version, hash)` is the current pair (§3.3 handshake rule).
    pub fn check_schema(cat: &CatalogState, version: i64, hash: &str) -> Result<(), EngineError> {
        if version <= 0 || hash.is_empty() || version != cat.version || hash != cat.schema.hash {
            return Err(EngineError::SchemaMismatch { version: cat.version, hash: cat.schema.hash.clone() });
        }
        Ok(())
    }
}
