//! The connection pool every HTTP worker and background job draws from, and the store error
//! type with its transient/permanent classification (contract §3.2, C13).

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::Type;
use postgres::{NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;

/// The pool type.
pub type Pool = r2d2::Pool<SessionManager>;
/// A connection checked out of the pool.
pub type PooledClient = r2d2::PooledConnection<SessionManager>;

/// A pooled PostgreSQL session: the client and the statements prepared on it.
///
/// The hot statements (the pull's opening probe, the catalog check) are parsed and planned once
/// per session instead of once per request: on a busy server PostgreSQL spent more time parsing
/// and planning them than running them. It dereferences to [`postgres::Client`], so everything
/// else uses the session as a plain client (`&mut **db` where a `GenericClient` is wanted).
pub struct Session {
    client: postgres::Client,
    statements: HashMap<&'static str, Statement>,
}

impl Session {
    /// Wraps a connected client.
    pub fn new(client: postgres::Client) -> Session {
        Session { client, statements: HashMap::new() }
    }

    /// Runs `sql`, prepared with `types` the first time this session sees it. A cached
    /// statement the server no longer accepts (its plan's result type changed after DDL on a
    /// table it reads, or it was deallocated) is prepared afresh and run once more.
    pub fn query_cached(
        &mut self,
        sql: &'static str,
        types: &[Type],
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql, types)?;
        match self.client.query(&statement, params) {
            Err(e) if is_stale_statement(&e) => {
                self.statements.remove(sql);
                let statement = self.statement(sql, types)?;
                self.client.query(&statement, params)
            }
            other => other,
        }
    }

    fn statement(&mut self, sql: &'static str, types: &[Type]) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare_typed(sql, types)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// `cached plan must not change result type` (0A000) or an unknown prepared statement (26000).
fn is_stale_statement(e: &postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME)
}

impl Deref for Session {
    type Target = postgres::Client;

    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("prepared", &self.statements.len()).finish_non_exhaustive()
    }
}

/// Opens [`Session`]s for the pool (r2d2_postgres's manager underneath).
#[derive(Debug)]
pub struct SessionManager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for SessionManager {
    type Connection = Session;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Session, postgres::Error> {
        self.0.connect().map(Session::new)
    }

    fn is_valid(&self, session: &mut Session) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut session.client)
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        self.0.has_broken(&mut session.client)
    }
}

/// A store-layer failure, with what we were doing.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// No pooled connection could be had in time (database down or pool exhausted).
    PoolTimeout {
        /// The pool's own message.
        detail: String,
    },
    /// A query failed.
    Query {
        /// What we were doing.
        context: String,
        /// The PostgreSQL error.
        source: postgres::Error,
    },
    /// The connection string is unusable.
    BadUrl {
        /// Why.
        detail: String,
    },
    /// A stored value breaks an invariant of the infrastructure tables.
    Corrupt {
        /// What was found.
        detail: String,
    },
}

impl StoreError {
    /// Wraps a query error with context.
    pub fn query(context: impl Into<String>) -> impl FnOnce(postgres::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Query { context, source }
    }

    /// True for failures a retry can cure (→ 503 with `Retry-After`): no connection, a closed
    /// or reset connection, cancellation, too many connections, shutdown in progress,
    /// serialisation failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::PoolTimeout { .. } => true,
            StoreError::BadUrl { .. } | StoreError::Corrupt { .. } => false,
            StoreError::Query { source, .. } => is_transient_pg(source),
        }
    }

    /// The SQLSTATE of a server error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Query { source, .. } => source.code().map(SqlState::code),
            _ => None,
        }
    }
}

/// The transient classification of a `postgres::Error`.
pub fn is_transient_pg(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || matches!(c, "53300" | "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03")
        }
        // No SQLSTATE: an I/O or protocol failure on the connection itself.
        None => e.as_db_error().is_none(),
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::PoolTimeout { detail } => write!(f, "no database connection available: {detail}"),
            StoreError::Query { context, source } => match source.as_db_error() {
                Some(db) => write!(f, "{context}: {} (SQLSTATE {})", db.message(), db.code().code()),
                None => write!(f, "{context}: {source}"),
            },
            StoreError::BadUrl { detail } => write!(f, "invalid database URL: {detail}"),
            StoreError::Corrupt { detail } => write!(f, "inconsistent sync tables: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Query { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> StoreError {
        StoreError::PoolTimeout { detail: e.to_string() }
    }
}

/// Parses `url` for the `postgres` crate with every session in UTC (contract C16) and a
/// connect timeout, so a dead database fails requests fast instead of hanging workers.
pub fn pg_config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config =
        url.parse().map_err(|e: postgres::Error| StoreError::BadUrl { detail: e.to_string() })?;
    config.options("-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c bytea_output=hex");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("synchrod");
    }
    Ok(config)
}

/// Builds the pool. Connections are opened lazily, so a database that is down at startup
/// shows up as 503s rather than a refusal to start.
pub fn connect_pool(url: &str, max_size: u32) -> Result<Pool, StoreError> {
    let manager = SessionManager(PostgresConnectionManager::new(pg_config(url)?, NoTls));
    let pool = r2d2::Pool::builder()
        .max_size(max_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(false)
        .build_unchecked(manager);
    Ok(pool)
}

/// Connects a single session (migrations, introspection, the writer) with the pool's settings.
pub fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    pg_config(url)?.connect(NoTls).map_err(StoreError::query("connecting to PostgreSQL"))
}
