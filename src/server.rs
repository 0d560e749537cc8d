//! The composition root: pool, migrations, registry, HTTP workers, change capture, shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::capture::buckets::DefaultAssigner;
use crate::capture::leader::{self, ElectedCapture, ElectionConfig, ElectionError};
use crate::capture::supervisor::{
    self as capture, CaptureConfig, CaptureHandle, CaptureState, CaptureStatus, CaptureTables,
};
use crate::capture::CaptureError;
use crate::config::{parse_listen_addr, AuthMode, Config};
use crate::engine::{Engine, EngineError, EngineSettings};
use crate::http::routes::Router;
use crate::http::{Authenticator, HeaderAuthenticator, HttpConfig, HttpServer, JwtSecretAuthenticator};
use crate::jwt::ClaimRules;
use crate::rules::BucketRules;
use crate::service::EngineApi;
use crate::store::introspect::{self, RegistrySettings};
use crate::store::publication::{self, PublicationChange};
use crate::store::replicas::{ReplicaSet, ReplicaSettings};
use crate::store::{migrations, pool};
use crate::version::VersionGate;

/// Why the server could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// A store failure during startup.
    Store(pool::StoreError),
    /// The synced tables cannot be served.
    Engine(EngineError),
    /// Configuration that is valid alone but unusable here.
    Config(String),
    /// Change capture could not start.
    Capture(CaptureError),
    /// The HTTP listener could not be bound.
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Store(e) => write!(f, "{e}"),
            ServerError::Engine(e) => write!(f, "{e}"),
            ServerError::Config(m) => f.write_str(m),
            ServerError::Capture(e) => write!(f, "{e}"),
            ServerError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Store(e) => Some(e),
            ServerError::Engine(e) => Some(e),
            ServerError::Capture(e) => Some(e),
            ServerError::Listen { source, .. } => Some(source),
            ServerError::Config(_) => None,
        }
    }
}

impl From<pool::StoreError> for ServerError {
    fn from(e: pool::StoreError) -> Self {
        ServerError::Store(e)
    }
}

impl From<CaptureError> for ServerError {
    fn from(e: CaptureError) -> Self {
        ServerError::Capture(e)
    }
}

impl From<ElectionError> for ServerError {
    fn from(e: ElectionError) -> Self {
        match e {
            ElectionError::Store(e) => ServerError::Store(e),
            ElectionError::Capture(e) => ServerError::Capture(e),
            ElectionError::Spawn(e) => ServerError::Capture(CaptureError::Spawn(e)),
        }
    }
}

impl From<EngineError> for ServerError {
    fn from(e: EngineError) -> Self {
        ServerError::Engine(e)
    }
}

/// Applies the infrastructure migrations (in the sync store) and returns the steps applied.
pub fn migrate(config: &Config) -> Result<Vec<i32>, ServerError> {
    let mut client = pool::connect(config.store_url())?;
    Ok(migrations::apply(&mut client).map_err(pool::StoreError::query("applying migrations"))?)
}

/// Connects and migrates, retrying with capped backoff while PostgreSQL is unreachable.
fn migrate_with_retry(config: &Config, give_up_after: Duration) -> Result<(), ServerError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match migrate(config) {
            Ok(applied) => {
                if !applied.is_empty() {
                    crate::info!("migrations applied", steps = format!("{applied:?}"));
                }
                return Ok(());
            }
            Err(ServerError::Store(e)) if e.is_transient() && started.elapsed() < give_up_after => {
                crate::warn!(
                    "PostgreSQL not reachable yet, retrying",
                    error = e.to_string(),
                    retry_in_ms = delay.as_millis() as u64
                );
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The engine settings a configuration describes (reading the publication when `SYNC_TABLES`
/// is unset).
pub fn engine_settings(config: &Config) -> Result<EngineSettings, ServerError> {
    let rules = match &config.bucket_rules {
        Some(path) => BucketRules::load(path).map_err(|e| ServerError::Config(e.to_string()))?,
        None => BucketRules::default(),
    };
    engine_settings_with(config, rules)
}

/// [`engine_settings`] with bucket rules already read.
pub fn engine_settings_with(config: &Config, rules: BucketRules) -> Result<EngineSettings, ServerError> {
    let mut tables = config.sync_tables.clone();
    if tables.is_empty() {
        let mut db = pool::connect(&config.database_url)?;
        tables = introspect::publication_tables(&mut db, &config.publication_name)?;
        // synchro adds membership tables to the publication to capture their changes; that
        // does not make them synced (list them in SYNC_TABLES for that).
        tables.retain(|t| !rules.names_membership_table(t));
        if tables.is_empty() {
            return Err(ServerError::Config(format!(
                "no tables to sync: set SYNC_TABLES (e.g. SYNC_TABLES=orders,order_items) or create the publication \
                 (CREATE PUBLICATION {} FOR TABLE orders, order_items)",
                config.publication_name
            )));
        }
        crate::info!(
            "syncing the tables of the publication",
            publication = config.publication_name.clone(),
            tables = tables.len() as u64
        );
    }
    Ok(EngineSettings {
        registry: RegistrySettings {
            tables,
            read_only: config.read_only_tables.clone(),
            owner_column: config.owner_column.clone(),
            excluded: config.exclude_columns.clone(),
            updated_at_column: config.updated_at_column.clone(),
            deleted_at_column: config.deleted_at_column.clone(),
            rules,
        },
        min_client_version: config.min_client_version.clone(),
        push_role: config.push_role.clone(),
        resolver: match config.conflict_resolver.as_str() {
            "server_wins" => Arc::new(crate::engine::ServerWins),
            _ => Arc::new(crate::engine::LastWriterWins { skew: config.clock_skew }),
        },
        hooks: Arc::new(crate::engine::NoHooks),
    })
}

/// The claim rules every JWT mode applies.
fn claim_rules(config: &Config) -> ClaimRules {
    ClaimRules {
        user_claim: config.jwt_user_claim.clone(),
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        leeway: config.jwt_leeway,
    }
}

/// `Retry-After` while JWKS keys are not loaded yet (the contract's default).
#[cfg(feature = "jwks")]
const JWKS_RETRY_AFTER_SECS: u32 = 5;

fn authenticator(config: &Config) -> Result<Arc<dyn Authenticator>, ServerError> {
    match &config.auth {
        AuthMode::JwtSecret(secret) => {
            Ok(Arc::new(JwtSecretAuthenticator::new(secret.as_bytes(), claim_rules(config))))
        }
        AuthMode::Jwks(url) => jwks_authenticator(config, url),
        AuthMode::DevHeader => {
            crate::warn!(
                "no JWT_SECRET or JWKS_URL: requests are authenticated by the X-User-ID header; \
                 this is for development only, anyone can act as any user"
            );
            Ok(Arc::new(HeaderAuthenticator))
        }
    }
}

#[cfg(feature = "jwks")]
fn jwks_authenticator(config: &Config, url: &str) -> Result<Arc<dyn Authenticator>, ServerError> {
    let settings = crate::jwks::JwksSettings {
        url: url.to_string(),
        refresh_interval: config.jwks_refresh,
        rules: claim_rules(config),
        retry_after: JWKS_RETRY_AFTER_SECS,
    };
    let auth = crate::jwks::JwksAuthenticator::start(settings).map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(Arc::new(auth))
}

#[cfg(not(feature = "jwks"))]
fn jwks_authenticator(_config: &Config, _url: &str) -> Result<Arc<dyn Authenticator>, ServerError> {
    Err(ServerError::Config(
        "JWKS_URL is set but this build lacks the `jwks` feature: rebuild with --features jwks, \
         or use JWT_SECRET (HS256/384/512)"
            .into(),
    ))
}

/// The RLS policies (§12) for the configured tables.
pub fn rls_statements(config: &Config) -> Result<Vec<String>, ServerError> {
    let settings = engine_settings(config)?;
    let mut db = pool::connect(&config.database_url)?;
    let registry =
        introspect::load_registry(&mut db, &settings.registry).map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(crate::rls::policies(&registry, &config.owner_column, config.shared_rows_writable))
}

/// A callback run once the HTTP listener is bound, with the base URL (the dev banner).
pub type OnListening = Box<dyn FnOnce(&str) + Send>;

/// A running server: its address and the pieces to stop.
pub struct Running {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    http: HttpServer,
    /// The engine (for embedders and tests).
    pub engine: Arc<Engine>,
    /// Change capture, under leader election (this instance may be a standby).
    pub capture: ElectedCapture,
    compaction: Option<(Arc<std::sync::atomic::AtomicBool>, thread::JoinHandle<()>)>,
}

impl Running {
    /// Stops accepting requests and waits for in-flight ones (up to `deadline`), then stops
    /// change capture (the writer commits what is complete and the position is confirmed).
    pub fn shutdown(self, deadline: Duration) {
        self.http.shutdown(deadline);
        if let Some((stop, handle)) = self.compaction {
            stop.store(true, std::sync::atomic::Ordering::Release);
            if handle.join().is_err() {
                crate::error!("the compaction thread panicked");
            }
        }
        self.capture.stop();
    }
}

/// Starts everything and returns once the HTTP listener accepts requests.
pub fn start(config: &Config) -> Result<Running, ServerError> {
    // First, so an unusable authentication setup (bad JWKS_URL, no CA roots, a build without
    // `jwks`) stops startup before anything touches the database.
    let auth = authenticator(config)?;
    migrate_with_retry(config, Duration::from_secs(60))?;
    let settings = engine_settings(config)?;
    let pool_size = (config.http_threads as u32).saturating_add(4);
    let pool = pool::connect_pool(&config.database_url, pool_size)?;
    let store = match &config.sync_store_url {
        Some(url) => {
            crate::info!("sync tables in a separate store", store = crate::logging::redact_url(url));
            Some(pool::connect_pool(url, pool_size)?)
        }
        None => None,
    };
    let mut engine = Engine::with_stores(pool, store, settings)?
        .with_shared_rows_writable(config.shared_rows_writable)
        .with_set_based_push(config.push_set_based);
    if !config.read_replica_urls.is_empty() {
        let replicas = ReplicaSet::connect(
            &config.read_replica_urls,
            (config.http_threads as u32).saturating_add(4),
            ReplicaSettings::default(),
        )?;
        crate::info!("read replicas configured", replicas = replicas.len() as u64);
        engine = engine.with_read_replicas(replicas);
    }
    let engine = Arc::new(engine);
    let capture = start_elected_capture(config, engine.clone())?;
    let addr = parse_listen_addr(&config.listen_addr)?;
    let http = http_config(config, addr, pool_size);
    let router = Router {
        api: Arc::new(EngineApi::new(engine.clone(), Some(capture.status.clone()), &config.slot_name)),
        auth,
        gate: VersionGate::new(&config.min_client_version),
        admission: Arc::new(crate::http::AdmitAll),
    };
    let http = HttpServer::start(http, router)
        .map_err(|source| ServerError::Listen { addr: config.listen_addr.clone(), source })?;
    let addr = http.local_addr();
    crate::info!(
        "synchrod listening",
        addr = addr.to_string(),
        schema_version = engine.cached_catalog().version,
        tables = engine.cached_catalog().registry.tables.len() as u64
    );
    let compaction = match config.compaction_interval {
        Some(every) => Some(spawn_compaction(config, every, capture.status.clone())?),
        None => None,
    };
    Ok(Running { addr, http, engine, capture, compaction })
}

/// The HTTP edge's settings: the configured limits, with the connection cap kept below the
/// open-file limit minus what the database pools may hold.
fn http_config(config: &Config, addr: SocketAddr, pool_size: u32) -> HttpConfig {
    let limits = &config.http_limits;
    let pools = 1 + usize::from(config.sync_store_url.is_some()) + config.read_replica_urls.len();
    let pool_fds = pools * pool_size as usize;
    let fd_room = crate::http::fd_limit::nofile_limit()
        .map(|l| usize::try_from(l.soft).unwrap_or(usize::MAX).saturating_sub(pool_fds))
        .unwrap_or(usize::MAX);
    let mut http = HttpConfig::new(addr);
    http.threads = config.http_threads;
    http.queue = config.http_threads * 64;
    http.max_body_bytes = config.max_body_bytes;
    http.idle_timeout = config.http_idle_timeout;
    http.max_connections = limits.max_connections.min(fd_room).max(1);
    http.max_head_bytes = limits.max_head_bytes;
    http.max_headers = limits.max_headers;
    http.head_timeout = limits.head_timeout;
    http.write_timeout = limits.write_timeout;
    http.max_buffered_bytes = limits.max_buffered_bytes;
    http
}

/// Raises the soft open-file limit to the hard one (each HTTP connection is a descriptor) and
/// logs the figure; a failure is logged and the current limit kept.
fn raise_open_file_limit() {
    // An "unlimited" hard limit is not a number of descriptors worth asking for.
    match crate::http::fd_limit::raise_nofile_limit(1 << 20) {
        Ok(limit) => crate::info!("open-file limit", soft = limit.soft, hard = limit.hard),
        Err(e) => crate::warn!("cannot raise the open-file limit", error = e.to_string()),
    }
}

fn compaction_settings(config: &Config) -> crate::store::compaction::CompactionSettings {
    crate::store::compaction::CompactionSettings { stale_after: config.stale_client_after, ..Default::default() }
}

/// Runs one compaction pass (`synchrod compact`).
pub fn compact_once(config: &Config) -> Result<crate::store::compaction::CompactionReport, ServerError> {
    let mut db = pool::connect(config.store_url())?;
    Ok(crate::store::compaction::compact(&mut db, &compaction_settings(config))?)
}

/// The background compaction thread: one pass per interval, failures logged and retried at the
/// next interval (a failed pass deletes nothing it did not record).
/// Only the capture leader compacts, so instances sharing a database do not repeat the work.
fn spawn_compaction(
    config: &Config,
    every: Duration,
    capture: Arc<CaptureStatus>,
) -> Result<(Arc<std::sync::atomic::AtomicBool>, thread::JoinHandle<()>), ServerError> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, url, settings) = (stop.clone(), config.store_url().to_string(), compaction_settings(config));
    let handle = thread::Builder::new()
        .name("compaction".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                thread::sleep(Duration::from_millis(200));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + every;
                if matches!(capture.state(), CaptureState::Standby | CaptureState::Stopped) {
                    continue;
                }
                match pool::connect(&url).and_then(|mut db| crate::store::compaction::compact(&mut db, &settings)) {
                    Ok(r) => crate::info!(
                        "compaction pass",
                        deactivated = r.deactivated,
                        safe_seq = r.safe_seq,
                        deleted = r.deleted,
                        compacted_through = r.compacted_through
                    ),
                    Err(e) => {
                        crate::error!("compaction pass failed; retrying at the next interval", error = e.to_string())
                    }
                }
            }
        })
        .map_err(|e| ServerError::Config(format!("spawning the compaction thread: {e}")))?;
    Ok((stop, handle))
}

/// Starts change capture in this process unconditionally (no election): for embedders that run
/// exactly one instance. Stop it with [`CaptureHandle::stop`]. Several instances sharing a
/// database should use [`start_elected_capture`].
pub fn start_capture(config: &Config, engine: &Engine) -> Result<CaptureHandle, ServerError> {
    Ok(begin_capture(config, engine, Arc::new(CaptureStatus::default()))?)
}

/// Starts change capture under leader election: capture runs here only while this instance
/// holds the leader lock, and starts here when the current leader dies (see
/// [`crate::capture::leader`]). Stop it with [`ElectedCapture::stop`].
pub fn start_elected_capture(config: &Config, engine: Arc<Engine>) -> Result<ElectedCapture, ServerError> {
    let election = ElectionConfig::new(&config.database_url, &config.slot_name);
    let term_config = config.clone();
    let start_term: leader::StartTerm = Box::new(move |status| begin_capture(&term_config, &engine, status));
    Ok(leader::start(election, start_term)?)
}

/// Makes sure the publication covers the synced tables and the slot exists, backfills bucket
/// edges for rows that predate the consumer (C17), then starts the pipeline.
fn begin_capture(config: &Config, engine: &Engine, status: Arc<CaptureStatus>) -> Result<CaptureHandle, CaptureError> {
    // The catalog as it is now: a term also starts after DDL on a synced table. If it cannot be
    // read (requests then fail the same way), capture goes on with the one last loaded.
    let cat = engine.current_catalog().unwrap_or_else(|e| {
        crate::warn!("reading the current catalog failed; capture uses the last one loaded", error = e.to_string());
        engine.cached_catalog()
    });
    {
        let mut db = engine.pool().get().map_err(pool::StoreError::from)?;
        match publication::ensure_publication(&mut **db, &config.publication_name, &cat.registry)? {
            PublicationChange::Unchanged => {}
            PublicationChange::Created => {
                crate::info!("publication created", publication = config.publication_name.clone())
            }
            PublicationChange::Added(t) => {
                crate::info!(
                    "tables added to the publication",
                    publication = config.publication_name.clone(),
                    tables = t.join(",")
                )
            }
        }
    }
    let tables = CaptureTables::from_registry(&cat.registry);
    let assigner = Arc::new(DefaultAssigner);
    let mut capture_config =
        CaptureConfig::new(&config.replication_url, &config.database_url, &config.slot_name, &config.publication_name);
    capture_config.writer.store_url = config.sync_store_url.clone();
    // The slot must exist before the backfill: every row committed after this point is either
    // streamed or (if older) backfilled, never neither.
    capture::ensure_slot(&capture_config)?;
    let started = Instant::now();
    let rows = crate::capture::backfill::backfill_edges(&capture_config.writer, &tables.routing, assigner.as_ref())?;
    if rows > 0 {
        crate::info!("bucket edges backfilled", rows = rows, millis = started.elapsed().as_millis() as u64);
    }
    capture::start_with_status(capture_config, tables, assigner, status)
}

impl From<crate::config::ConfigError> for ServerError {
    fn from(e: crate::config::ConfigError) -> Self {
        ServerError::Config(e.to_string())
    }
}

/// The base URL clients on this machine can use for a bound address.
pub fn base_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// How long in-flight requests may take to finish on shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully: stop accepting, let
/// in-flight requests finish (up to [`SHUTDOWN_DEADLINE`]), stop compaction, let the writer
/// commit what is complete, confirm the final position and close the replication connection.
pub fn run(config: Config, on_listening: Option<OnListening>) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if config.replication_url_derived {
        crate::info!("REPLICATION_URL not set: using DATABASE_URL with replication=database");
    }
    // Registered before anything starts, so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| ServerError::Config(format!("installing signal handlers: {e}")))?;
    raise_open_file_limit();
    let running = start(&config)?;
    if let Some(f) = on_listening {
        f(&base_url(running.addr));
    }
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    crate::info!("shutting down", signal = if signal == SIGINT { "SIGINT" } else { "SIGTERM" });
    let started = Instant::now();
    running.shutdown(SHUTDOWN_DEADLINE);
    crate::info!("stopped", millis = started.elapsed().as_millis() as u64);
    Ok(())
}
