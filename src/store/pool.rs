//! The connection pool every HTTP worker and background job draws from, and the store error
//! type with its transient/permanent classification (contract §3.2, C13).

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::Type;
use postgres::Statement;
use r2d2_postgres::PostgresConnectionManager;

use crate::pg::tls::TlsSettings;
use crate::pg::url;

/// The `postgres` crate's TLS hook: rustls with the `tls` feature, plaintext without.
#[cfg(feature = "tls")]
pub type Connector = crate::pg::tls::MakeRustlsConnect;
/// The `postgres` crate's TLS hook: rustls with the `tls` feature, plaintext without.
#[cfg(not(feature = "tls"))]
pub type Connector = postgres::NoTls;

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
    /// Keyed by the statement text's address and length: hashing the text itself (a pull's
    /// probe is 1.5 kB) cost more than the lookup saved.
    statements: HashMap<(usize, usize), Statement>,
    /// Statements whose text is built at run time.
    built: StatementCache,
}

impl Session {
    /// Wraps a connected client.
    pub fn new(client: postgres::Client) -> Session {
        Session { client, statements: HashMap::new(), built: StatementCache::default() }
    }

    /// The client and the cache of statements built at run time, borrowed apart, so a
    /// transaction on the client can run cached statements.
    pub fn parts(&mut self) -> (&mut postgres::Client, &mut StatementCache) {
        (&mut self.client, &mut self.built)
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
                self.statements.remove(&key(sql));
                let statement = self.statement(sql, types)?;
                self.client.query(&statement, params)
            }
            other => other,
        }
    }

    fn statement(&mut self, sql: &'static str, types: &[Type]) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(&key(sql)) {
            return Ok(s.clone());
        }
        let s = self.client.prepare_typed(sql, types)?;
        self.statements.insert(key(sql), s.clone());
        Ok(s)
    }
}

/// Prepared statements for SQL text built at run time from the registry: pull hydration, push
/// lookups and writes. Their texts are few per catalog (one per table and statement shape),
/// but each is expensive to plan: a key list of 100 makes PostgreSQL estimate every element,
/// which cost more than running the statement. Prepared once per session, the plan is made
/// once and reused (PostgreSQL switches to its generic plan after five executions).
///
/// At most [`StatementCache::CAPACITY`] statements are kept; beyond that the cache starts
/// over, so column subsets a client chooses can never grow it (a dropped statement is closed
/// on the server).
#[derive(Default)]
pub struct StatementCache {
    statements: HashMap<String, Statement>,
}

impl StatementCache {
    /// Statements kept per session.
    pub const CAPACITY: usize = 128;

    /// Runs `sql` with `params` (each with its type), prepared on `db`'s session the first time
    /// this cache sees the text. A statement the server no longer knows (deallocated by
    /// something else) fails this call and is prepared afresh by the next: inside a
    /// transaction, the failed statement has already aborted it.
    pub fn query(
        &mut self,
        db: &mut impl postgres::GenericClient,
        sql: &str,
        params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let s = db.prepare_typed(sql, &types)?;
                if self.statements.len() >= StatementCache::CAPACITY {
                    self.statements.clear();
                }
                self.statements.insert(sql.to_string(), s.clone());
                s
            }
        };
        let values: Vec<&(dyn postgres::types::ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        let rows = db.query(&statement, &values);
        if rows.as_ref().is_err_and(is_stale_statement) {
            self.statements.remove(sql);
        }
        rows
    }

    /// Statements held.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

impl fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementCache").field("prepared", &self.statements.len()).finish()
    }
}

/// Runs a statement whose text is a constant, with typed parameters: prepared once per session
/// on a pooled [`Session`] ([`Session::query_cached`]), parsed and planned on every call on a
/// plain client or in a transaction. Hot statements take it, so callers holding a session get
/// the prepared path without every caller needing one.
pub trait ConstQuery {
    /// Runs `sql` with `params`, each with its type.
    fn query_const(
        &mut self,
        sql: &'static str,
        params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<postgres::Row>, postgres::Error>;
}

impl ConstQuery for Session {
    fn query_const(
        &mut self,
        sql: &'static str,
        params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let values: Vec<&(dyn postgres::types::ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        self.query_cached(sql, &types, &values)
    }
}

impl ConstQuery for postgres::Client {
    fn query_const(
        &mut self,
        sql: &'static str,
        params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        self.query_typed(sql, params)
    }
}

impl ConstQuery for postgres::Transaction<'_> {
    fn query_const(
        &mut self,
        sql: &'static str,
        params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        self.query_typed(sql, params)
    }
}

/// A statement's cache key: a `&'static str` is the same text for as long as it lives.
fn key(sql: &'static str) -> (usize, usize) {
    (sql.as_ptr() as usize, sql.len())
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
        f.debug_struct("Session")
            .field("prepared", &self.statements.len())
            .field("built", &self.built.len())
            .finish_non_exhaustive()
    }
}

/// Opens [`Session`]s for the pool (r2d2_postgres's manager underneath).
#[derive(Debug)]
pub struct SessionManager(PostgresConnectionManager<Connector>);

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
                None => write!(f, "{context}: {}", with_causes(source)),
            },
            StoreError::BadUrl { detail } => write!(f, "invalid database URL: {detail}"),
            StoreError::Corrupt { detail } => write!(f, "inconsistent sync tables: {detail}"),
        }
    }
}

/// An error and its chain of causes on one line (the `postgres` crate's own `Display` stops at
/// its kind, e.g. "error performing TLS handshake", and leaves out why).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Displays that include their cause already (as ours do) are not repeated.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Logs why the pool could not open a connection (r2d2 itself keeps only the short message),
/// at most once per [`CONNECT_ERROR_LOG_EVERY`]: while the database is down r2d2 retries for
/// every waiting request, and one line per attempt would flood the log.
#[derive(Debug, Default)]
struct LogConnectErrors {
    last_logged_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

const CONNECT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl r2d2::HandleError<postgres::Error> for LogConnectErrors {
    fn handle_error(&self, error: postgres::Error) {
        use std::sync::atomic::Ordering;
        let now_ms = crate::time::unix_ms_now();
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        let due = now_ms.saturating_sub(last) >= CONNECT_ERROR_LOG_EVERY.as_millis() as u64;
        if due && self.last_logged_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            crate::warn!(
                "opening a pooled database connection failed",
                error = with_causes(&error),
                similar_failures_not_logged = suppressed
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
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
/// connect timeout, so a dead database fails requests fast instead of hanging workers. The TLS
/// parameters the `postgres` crate does not know (`verify-ca`, `verify-full`, `sslrootcert`) are
/// taken out and applied by the returned connector instead.
pub fn pg_config(url: &str) -> Result<(postgres::Config, Connector), StoreError> {
    let bad = |detail: String| StoreError::BadUrl { detail };
    let mut params = url::parse(url).map_err(|e| bad(e.to_string()))?;
    let tls = TlsSettings::from_params(&params).map_err(|e| bad(e.to_string()))?;
    // libpq never uses TLS over a Unix socket; neither do we.
    let crate_mode = match (&params.host, tls.mode.requires_tls()) {
        (url::Host::UnixDir(_), _) => "disable",
        (_, true) => "require",
        (_, false) => tls.mode.as_str(),
    };
    params.set_param("sslmode", Some(crate_mode));
    params.set_param("sslrootcert", None);
    let mut config: postgres::Config = params.to_conninfo().parse().map_err(|e: postgres::Error| bad(e.to_string()))?;
    config.options(crate::pg::SESSION_OPTIONS);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("synchrod");
    }
    Ok((config, connector(&tls)?))
}

#[cfg(feature = "tls")]
fn connector(tls: &TlsSettings) -> Result<Connector, StoreError> {
    let config = crate::pg::tls::client_config(tls).map_err(|e| StoreError::BadUrl { detail: e.to_string() })?;
    Ok(crate::pg::tls::MakeRustlsConnect::new(config))
}

#[cfg(not(feature = "tls"))]
fn connector(_tls: &TlsSettings) -> Result<Connector, StoreError> {
    Ok(postgres::NoTls)
}

/// Builds the pool. Connections are opened lazily, so a database that is down at startup
/// shows up as 503s rather than a refusal to start.
pub fn connect_pool(url: &str, max_size: u32) -> Result<Pool, StoreError> {
    let (config, connector) = pg_config(url)?;
    Ok(build_pool(config, connector, max_size, Box::new(LogConnectErrors::default())))
}

/// [`connect_pool`] for a pool whose owner reports connection failures itself (r2d2 retries a
/// failed connection in the background every few seconds, and the read replicas log only
/// changes of state, not every attempt), with `extra_options` (`-c name=value ...`) added to
/// every session's settings.
pub fn connect_quiet_pool(url: &str, max_size: u32, extra_options: &str) -> Result<Pool, StoreError> {
    let (mut config, connector) = pg_config(url)?;
    config.options(&format!("{} {extra_options}", crate::pg::SESSION_OPTIONS));
    Ok(build_pool(config, connector, max_size, Box::new(r2d2::NopErrorHandler)))
}

fn build_pool(
    config: postgres::Config,
    connector: Connector,
    max_size: u32,
    errors: Box<dyn r2d2::HandleError<postgres::Error>>,
) -> Pool {
    let manager = SessionManager(PostgresConnectionManager::new(config, connector));
    r2d2::Pool::builder()
        .max_size(max_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(false)
        .error_handler(errors)
        .build_unchecked(manager)
}

/// Connects a single session (migrations, introspection, the writer) with the pool's settings.
pub fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    let (config, connector) = pg_config(url)?;
    config.connect(connector).map_err(StoreError::query("connecting to PostgreSQL"))
}
