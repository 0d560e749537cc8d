//! The connection pool every HTTP worker and background job draws from, and the store error
//! type with its transient/permanent classification (contract §3.2, C13).

use std::fmt;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

/// The pool type.
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
/// A connection checked out of the pool.
pub type PooledClient = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

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
    let manager = PostgresConnectionManager::new(pg_config(url)?, NoTls);
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
