//! Configuration from the environment: every variable declared once.
//!
//! Each variable is one `Var` declaration: its name, what it does, what unset means and the
//! values it accepts (with the parser). [`Config::from_vars`] reads every field through those
//! declarations and [`help_text`] renders the same declarations for `synchrod --help`, so parsing,
//! defaults and documentation cannot drift apart; a test scans the sources for every variable
//! name the code reads and requires it in `--help`. Rules that involve two variables
//! (`REPLICATION_URL` derived from `DATABASE_URL`, read-only tables among the synced ones) follow
//! in [`Config::from_vars`].
//!
//! [`Config::from_vars`] takes the variables as a map so tests need not touch the process
//! environment; an invalid value is a [`ConfigError`] naming the variable and the accepted form.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::pg::url as pgurl;

/// A configuration variable with an invalid or missing value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What is wrong and what form is accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A table name as declared in configuration, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema, when given as `schema.table`.
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The `LOG_LEVEL` threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including per-batch details.
    Debug,
    /// Normal operation.
    Info,
    /// Recoverable trouble.
    Warn,
    /// Failures only.
    Error,
}

/// How requests are authenticated (contract §2.3): exactly one mode, chosen at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// HS256/384/512 tokens signed with `JWT_SECRET` (wins when both are set).
    JwtSecret(String),
    /// RS*/ES* tokens verified with keys from `JWKS_URL`.
    Jwks(String),
    /// The `X-User-ID` header: development only.
    DevHeader,
}

/// The complete server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The application database (synced tables, slot, publication), and the sync tables'
    /// database too unless `sync_store_url` is set.
    pub database_url: String,
    /// A separate database for the sync tables (`SYNC_STORE_URL`), `None` when they live in
    /// the application database.
    pub sync_store_url: Option<String>,
    /// Streaming replicas that pull hydration and snapshot pages may read from
    /// (`READ_REPLICA_URLS`), empty when none.
    pub read_replica_urls: Vec<String>,
    /// The replication connection (`replication=database`).
    pub replication_url: String,
    /// Whether `replication_url` was derived from `database_url` rather than given.
    pub replication_url_derived: bool,
    /// How requests are authenticated.
    pub auth: AuthMode,
    /// The token claim that holds the user id.
    pub jwt_user_claim: String,
    /// Required `iss` of tokens (`JWT_ISSUER`), unchecked when `None`.
    pub jwt_issuer: Option<String>,
    /// Required member of `aud` (`JWT_AUDIENCE`), unchecked when `None`.
    pub jwt_audience: Option<String>,
    /// Tolerated clock skew for `exp` and `nbf` (`JWT_LEEWAY_SECS`).
    pub jwt_leeway: Duration,
    /// Minimum time between JWKS fetches triggered by unknown key ids (`JWKS_REFRESH_SECS`).
    pub jwks_refresh: Duration,
    /// The HTTP listen address as given (`:8080`, `127.0.0.1:0`, `[::1]:8080`).
    pub listen_addr: String,
    /// The logical replication slot.
    pub slot_name: String,
    /// The publication the slot streams.
    pub publication_name: String,
    /// The minimum client version (`MIN_CLIENT_VERSION`), empty when the gate is off.
    pub min_client_version: String,
    /// The log threshold.
    pub log_level: LogLevel,
    /// The synced tables; empty means "the tables of the existing publication".
    pub sync_tables: Vec<TableName>,
    /// Tables whose pushes are refused.
    pub read_only_tables: Vec<TableName>,
    /// The owner column name.
    pub owner_column: String,
    /// Columns left out of the schema (`table.column`).
    pub exclude_columns: Vec<(TableName, String)>,
    /// The updated-at column name.
    pub updated_at_column: String,
    /// The deleted-at column name.
    pub deleted_at_column: String,
    /// The bucket rules file (`BUCKET_RULES`), read and checked at startup; `None` when rows are
    /// only owned or global.
    pub bucket_rules: Option<std::path::PathBuf>,
    /// Fixed number of HTTP worker threads.
    pub http_threads: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Idle keep-alive connections and stalled reads are closed after this long.
    pub http_idle_timeout: Duration,
    /// The HTTP edge's other limits (see [`HttpLimits`]).
    pub http_limits: HttpLimits,
    /// A non-superuser role pushes switch to (`SET LOCAL ROLE`) so RLS policies apply.
    pub push_role: Option<String>,
    /// `PUSH_SET_BASED`: pushes apply runs of records with set-based statements; see
    /// `Engine::with_set_based_push`.
    pub push_set_based: bool,
    /// How often the background compaction runs (`None` = never).
    pub compaction_interval: Option<Duration>,
    /// Clients that have not synced for this long are deactivated by compaction.
    pub stale_client_after: Duration,
    /// `lww` (last writer wins, the default) or `server_wins`.
    pub conflict_resolver: String,
    /// Clock-skew tolerance added to `client_updated_at` by last-writer-wins.
    pub clock_skew: Duration,
    /// `SHARED_ROWS_WRITABLE`: whether clients may change rows without an owner (the contract's
    /// default, `true`); see `Engine::with_shared_rows_writable`.
    pub shared_rows_writable: bool,
}

/// The HTTP edge's limits beyond `HTTP_THREADS`, `MAX_BODY_BYTES` and `HTTP_IDLE_TIMEOUT_SECS`:
/// what a hostile client can make the server hold, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections (`HTTP_MAX_CONNECTIONS`); the server also stays below the open-file
    /// limit.
    pub max_connections: usize,
    /// Request line plus headers in bytes (`HTTP_MAX_HEAD_BYTES`); larger heads get 431.
    pub max_head_bytes: usize,
    /// Header lines per request (`HTTP_MAX_HEADERS`); more get 431.
    pub max_headers: usize,
    /// A request head must arrive whole within this of its first byte, and a new connection
    /// must start one within this (`HTTP_HEAD_TIMEOUT_SECS`).
    pub head_timeout: Duration,
    /// A response the client does not read for this long is dropped with its connection
    /// (`HTTP_WRITE_TIMEOUT_SECS`).
    pub write_timeout: Duration,
    /// Bytes the edge holds in all: heads and bodies being received or queued, responses not
    /// yet read (`HTTP_MAX_BUFFERED_BYTES`, at least `MAX_BODY_BYTES`).
    pub max_buffered_bytes: usize,
}

/// What an unset (or empty) variable means.
pub(crate) enum IfUnset<T: 'static> {
    /// Startup stops with this message: what to set, or what to run instead.
    Required(&'static str),
    /// This text, read like a set value and shown as is by `--help`.
    Text(&'static str),
    /// The value `value()` computes; `shown` describes it for `--help`.
    Computed { shown: &'static str, value: fn() -> T },
}

/// The values a variable accepts and how a set value becomes a `T`.
pub(crate) enum Form<T: 'static> {
    /// A whole number from `min` to `max` (counted in `unit`, empty for plain counts),
    /// converted by `into`.
    Number { min: u64, max: u64, unit: &'static str, into: fn(u64) -> T },
    /// Any other form: `expected` describes the accepted values (for `--help` and every
    /// error); `parse` reads a trimmed, non-empty value or says what is wrong with it.
    Parsed { expected: &'static str, parse: fn(&str) -> Result<T, String> },
}

/// One environment variable, declared once: its name, what it does, what unset means and the
/// values it accepts. [`Config::from_vars`] reads it through [`Var::read`] and [`help_text`]
/// shows the same declaration, so parsing and documentation cannot drift apart.
pub(crate) struct Var<T: 'static> {
    /// The environment variable.
    pub(crate) name: &'static str,
    /// What it does: one line of `--help`.
    pub(crate) help: &'static str,
    /// What an unset or empty variable means.
    pub(crate) if_unset: IfUnset<T>,
    /// The accepted values.
    pub(crate) form: Form<T>,
}

impl<T> Var<T> {
    /// Reads the variable from `vars`: surrounding white space is trimmed and an empty value
    /// counts as unset.
    pub(crate) fn read(&self, vars: &HashMap<String, String>) -> Result<T, ConfigError> {
        match vars.get(self.name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(raw) => self.parse(raw),
            None => match &self.if_unset {
                IfUnset::Required(what) => {
                    Err(ConfigError { variable: self.name, message: format!("is required: {what}") })
                }
                IfUnset::Text(text) => self.parse(text),
                IfUnset::Computed { value, .. } => Ok(value()),
            },
        }
    }

    /// Reads a set, trimmed value.
    fn parse(&self, raw: &str) -> Result<T, ConfigError> {
        match &self.form {
            Form::Number { min, max, into, .. } => match raw.parse::<u64>() {
                Ok(n) if (*min..=*max).contains(&n) => Ok(into(n)),
                _ => Err(self.invalid(format!("invalid value {raw:?}"))),
            },
            Form::Parsed { parse, .. } => parse(raw).map_err(|why| self.invalid(why)),
        }
    }

    /// The error for a value that is not of the accepted form: what is wrong, then the form.
    fn invalid(&self, why: String) -> ConfigError {
        ConfigError { variable: self.name, message: format!("{why}: expected {}", self.expected()) }
    }
}

/// What `--help` shows of a declaration, whatever its value type.
pub(crate) trait Declared: Sync {
    /// The environment variable.
    fn name(&self) -> &'static str;
    /// What it does.
    fn help(&self) -> &'static str;
    /// The accepted values, as every error about the variable states them.
    fn expected(&self) -> String;
    /// `[default: ...]`, or `[required]`.
    fn shown_default(&self) -> String;
    /// Reads the variable as if it were unset: its default must be of its own accepted form.
    #[cfg(test)]
    fn read_unset(&self) -> Result<(), ConfigError>;
}

impl<T> Declared for Var<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn help(&self) -> &'static str {
        self.help
    }

    fn expected(&self) -> String {
        match &self.form {
            Form::Number { min, max, unit: "", .. } => format!("a whole number from {min} to {max}"),
            Form::Number { min, max, unit, .. } => format!("a whole number of {unit} from {min} to {max}"),
            Form::Parsed { expected, .. } => expected.to_string(),
        }
    }

    fn shown_default(&self) -> String {
        match &self.if_unset {
            IfUnset::Required(_) => "[required]".to_string(),
            IfUnset::Text(text) => format!("[default: {text}]"),
            IfUnset::Computed { shown, .. } => format!("[default: {shown}]"),
        }
    }

    #[cfg(test)]
    fn read_unset(&self) -> Result<(), ConfigError> {
        self.read(&HashMap::new()).map(|_| ())
    }
}

// The declarations, in the order of `--help`. Adding a variable: one `Var` here, its entry in
// `SECTIONS`, its `Config` field and one line of `Config::from_vars`.

const DATABASE_URL: Var<String> = Var {
    name: "DATABASE_URL",
    help:
        "the application database (synced tables, slot, publication), and the sync tables' unless SYNC_STORE_URL is set",
    if_unset: IfUnset::Required(
        "set it to postgres://user:password@host:port/dbname, or run `synchrod dev` for a private local PostgreSQL",
    ),
    form: Form::Parsed { expected: PG_URL, parse: pg_url },
};

const SYNC_STORE_URL: Var<Option<String>> = Var {
    name: "SYNC_STORE_URL",
    help: "a separate database for the changelog, bucket edges, clients, checkpoints and manifest",
    if_unset: IfUnset::Computed { shown: "(empty: DATABASE_URL)", value: || None },
    form: Form::Parsed { expected: PG_URL, parse: |raw| pg_url(raw).map(Some) },
};

const REPLICATION_URL: Var<Option<String>> = Var {
    name: "REPLICATION_URL",
    help: "the logical replication connection",
    if_unset: IfUnset::Computed { shown: "DATABASE_URL with replication=database", value: || None },
    form: Form::Parsed { expected: PG_URL, parse: |raw| pg_url(raw).map(Some) },
};

const READ_REPLICA_URLS: Var<Vec<String>> = Var {
    name: "READ_REPLICA_URLS",
    help: "streaming replicas for pull hydration and snapshot pages (used only once caught up)",
    if_unset: IfUnset::Computed { shown: "(empty)", value: Vec::new },
    form: Form::Parsed { expected: "a comma list of postgres:// URLs", parse: pg_url_list },
};

const SLOT_NAME: Var<String> = Var {
    name: "SLOT_NAME",
    help: "the logical replication slot",
    if_unset: IfUnset::Text("synchro_slot"),
    form: Form::Parsed { expected: "lower-case letters, digits and _ (at most 63)", parse: slot_name },
};

const PUBLICATION_NAME: Var<String> = Var {
    name: "PUBLICATION_NAME",
    help: "the publication the slot streams",
    if_unset: IfUnset::Text("synchro_pub"),
    form: Form::Parsed { expected: IDENTIFIER, parse: identifier },
};

const PUSH_ROLE: Var<Option<String>> = Var {
    name: "PUSH_ROLE",
    help: "a non-superuser role pushes switch to (SET LOCAL ROLE) so row-level-security policies apply",
    if_unset: IfUnset::Computed { shown: "(empty: the pool's own role)", value: || None },
    form: Form::Parsed { expected: IDENTIFIER, parse: |raw| identifier(raw).map(Some) },
};

const PUSH_SET_BASED: Var<bool> = Var {
    name: "PUSH_SET_BASED",
    help: "apply each run of pushed records on one table with a few set-based statements \
           (false: statements of their own per record, as triggers saw them before; same outcomes)",
    if_unset: IfUnset::Text("true"),
    form: Form::Parsed { expected: "true or false", parse: boolean },
};

const SYNC_TABLES: Var<Vec<TableName>> = Var {
    name: "SYNC_TABLES",
    help: "the synced tables",
    if_unset: IfUnset::Computed { shown: "(the tables of the publication)", value: Vec::new },
    form: Form::Parsed { expected: TABLE_LIST, parse: table_list },
};

const READ_ONLY_TABLES: Var<Vec<TableName>> = Var {
    name: "READ_ONLY_TABLES",
    help: "synced tables clients may not push to",
    if_unset: IfUnset::Computed { shown: "(empty)", value: Vec::new },
    form: Form::Parsed { expected: TABLE_LIST, parse: table_list },
};

const OWNER_COLUMN: Var<String> = Var {
    name: "OWNER_COLUMN",
    help: "the column holding a row's owner (bucket user:<value>)",
    if_unset: IfUnset::Text("user_id"),
    form: Form::Parsed { expected: IDENTIFIER, parse: identifier },
};

const EXCLUDE_COLUMNS: Var<Vec<(TableName, String)>> = Var {
    name: "EXCLUDE_COLUMNS",
    help: "columns that never leave the server: not in the schema, in records, or in checksums",
    if_unset: IfUnset::Computed { shown: "(empty)", value: Vec::new },
    form: Form::Parsed { expected: "a comma list of table.column or schema.table.column", parse: column_list },
};

const SHARED_ROWS_WRITABLE: Var<bool> = Var {
    name: "SHARED_ROWS_WRITABLE",
    help: "whether every user may change rows without an owner (false: they are read-only for clients)",
    if_unset: IfUnset::Text("true"),
    form: Form::Parsed { expected: "true or false", parse: boolean },
};

const UPDATED_AT_COLUMN: Var<String> = Var {
    name: "UPDATED_AT_COLUMN",
    help: "the last-modified timestamp column",
    if_unset: IfUnset::Text("updated_at"),
    form: Form::Parsed { expected: IDENTIFIER, parse: identifier },
};

const DELETED_AT_COLUMN: Var<String> = Var {
    name: "DELETED_AT_COLUMN",
    help: "the soft-delete timestamp column",
    if_unset: IfUnset::Text("deleted_at"),
    form: Form::Parsed { expected: IDENTIFIER, parse: identifier },
};

const BUCKET_RULES: Var<Option<std::path::PathBuf>> = Var {
    name: "BUCKET_RULES",
    help: "a JSON file of shared-bucket rules: rows of a table shared by the members of a team (README, Bucket rules)",
    if_unset: IfUnset::Computed { shown: "(empty: rows are owned or global)", value: || None },
    form: Form::Parsed { expected: "the path of a JSON rules file", parse: |raw| Ok(Some(raw.into())) },
};

const JWT_SECRET: Var<Option<String>> = Var {
    name: "JWT_SECRET",
    help: "HMAC secret of HS256/HS384/HS512 bearer tokens (wins over JWKS_URL)",
    if_unset: IfUnset::Computed { shown: "(empty)", value: || None },
    form: Form::Parsed { expected: "the secret's text", parse: |raw| Ok(Some(raw.to_string())) },
};

const JWKS_URL: Var<Option<String>> = Var {
    name: "JWKS_URL",
    help: "JWKS endpoint of RS256/384/512 and ES256/384 bearer tokens (when JWT_SECRET is empty; \
           neither: X-User-ID header, development only)",
    if_unset: IfUnset::Computed { shown: "(empty)", value: || None },
    form: Form::Parsed { expected: "an https:// URL (or http:// for local setups)", parse: http_url },
};

const JWKS_REFRESH_SECS: Var<Duration> = Var {
    name: "JWKS_REFRESH_SECS",
    help: "JWKS: at most one refetch per this many seconds for unknown key ids; also the shortest cache age",
    if_unset: IfUnset::Text("30"),
    form: Form::Number { min: 1, max: 86_400, unit: "seconds", into: Duration::from_secs },
};

const SSL_CERT_FILE: Var<Option<std::path::PathBuf>> = Var {
    name: "SSL_CERT_FILE",
    help: "the CA bundle trusted for an https:// JWKS_URL and for sslrootcert=system",
    if_unset: IfUnset::Computed {
        shown: "the distribution's bundle, e.g. /etc/ssl/certs/ca-certificates.crt",
        value: || None,
    },
    form: Form::Parsed { expected: "the path of a PEM file", parse: |raw| Ok(Some(raw.into())) },
};

const JWT_USER_CLAIM: Var<String> = Var {
    name: "JWT_USER_CLAIM",
    help: "the token claim holding the user id",
    if_unset: IfUnset::Text("sub"),
    form: Form::Parsed { expected: "a claim name", parse: |raw| Ok(raw.to_string()) },
};

const JWT_ISSUER: Var<Option<String>> = Var {
    name: "JWT_ISSUER",
    help: "the required iss claim of bearer tokens",
    if_unset: IfUnset::Computed { shown: "(empty: not checked)", value: || None },
    form: Form::Parsed { expected: "the issuer's text", parse: |raw| Ok(Some(raw.to_string())) },
};

const JWT_AUDIENCE: Var<Option<String>> = Var {
    name: "JWT_AUDIENCE",
    help: "the required aud of bearer tokens (the string, or one of an array)",
    if_unset: IfUnset::Computed { shown: "(empty: not checked)", value: || None },
    form: Form::Parsed { expected: "the audience's text", parse: |raw| Ok(Some(raw.to_string())) },
};

const JWT_LEEWAY_SECS: Var<Duration> = Var {
    name: "JWT_LEEWAY_SECS",
    help: "clock skew tolerated for exp and nbf",
    if_unset: IfUnset::Text("30"),
    form: Form::Number { min: 0, max: 600, unit: "seconds", into: Duration::from_secs },
};

const MIN_CLIENT_VERSION: Var<String> = Var {
    name: "MIN_CLIENT_VERSION",
    help: "the oldest accepted X-App-Version / app_version (a minimum that does not parse refuses every version)",
    if_unset: IfUnset::Computed { shown: "(empty: no gate)", value: String::new },
    form: Form::Parsed { expected: "major.minor.patch", parse: |raw| Ok(raw.to_string()) },
};

const LISTEN_ADDR: Var<String> = Var {
    name: "LISTEN_ADDR",
    help: "the HTTP listen address",
    if_unset: IfUnset::Text(":8080"),
    form: Form::Parsed {
        expected: ":PORT, HOST:PORT or [V6]:PORT",
        parse: |raw| socket_addr(raw).map(|_| raw.to_string()),
    },
};

const HTTP_THREADS: Var<usize> = Var {
    name: "HTTP_THREADS",
    help: "HTTP worker threads",
    if_unset: IfUnset::Computed { shown: "2 x CPUs, at least 4", value: default_threads },
    form: Form::Number { min: 1, max: 1024, unit: "", into: |n| n as usize },
};

const MAX_BODY_BYTES: Var<usize> = Var {
    name: "MAX_BODY_BYTES",
    help: "the largest request body",
    if_unset: IfUnset::Text("33554432"),
    form: Form::Number { min: 65_536, max: 1 << 30, unit: "bytes", into: |n| n as usize },
};

const HTTP_IDLE_TIMEOUT_SECS: Var<Duration> = Var {
    name: "HTTP_IDLE_TIMEOUT_SECS",
    help: "idle keep-alive connections and stalled reads are closed after this long",
    if_unset: IfUnset::Text("30"),
    form: Form::Number { min: 1, max: 3600, unit: "seconds", into: Duration::from_secs },
};

const HTTP_MAX_CONNECTIONS: Var<usize> = Var {
    name: "HTTP_MAX_CONNECTIONS",
    help: "open HTTP connections (also kept below the open-file limit); at the cap the least recently active one with no request in progress is closed to make room, else the newcomer gets 503",
    if_unset: IfUnset::Text("16384"),
    form: Form::Number { min: 1, max: 1_000_000, unit: "", into: |n| n as usize },
};

const HTTP_MAX_HEAD_BYTES: Var<usize> = Var {
    name: "HTTP_MAX_HEAD_BYTES",
    help: "request line plus headers; larger heads get 431 and the connection is closed",
    if_unset: IfUnset::Text("16384"),
    form: Form::Number { min: 1024, max: 1 << 20, unit: "bytes", into: |n| n as usize },
};

const HTTP_MAX_HEADERS: Var<usize> = Var {
    name: "HTTP_MAX_HEADERS",
    help: "header lines per request; more get 431",
    if_unset: IfUnset::Text("100"),
    form: Form::Number { min: 1, max: 10_000, unit: "", into: |n| n as usize },
};

const HTTP_HEAD_TIMEOUT_SECS: Var<Duration> = Var {
    name: "HTTP_HEAD_TIMEOUT_SECS",
    help: "a request head must arrive whole within this of its first byte (a new connection must start one within this), else 408 and close",
    if_unset: IfUnset::Text("10"),
    form: Form::Number { min: 1, max: 3600, unit: "seconds", into: Duration::from_secs },
};

const HTTP_WRITE_TIMEOUT_SECS: Var<Duration> = Var {
    name: "HTTP_WRITE_TIMEOUT_SECS",
    help: "a response the client stops reading for this long is dropped with its connection",
    if_unset: IfUnset::Text("30"),
    form: Form::Number { min: 1, max: 3600, unit: "seconds", into: Duration::from_secs },
};

const HTTP_MAX_BUFFERED_BYTES: Var<usize> = Var {
    name: "HTTP_MAX_BUFFERED_BYTES",
    help: "bytes the HTTP edge holds for requests being received or queued and responses not yet read (at least MAX_BODY_BYTES); a request beyond it gets 503, a response is dropped with its connection",
    if_unset: IfUnset::Text("268435456"),
    form: Form::Number { min: 1 << 20, max: 1 << 40, unit: "bytes", into: |n| n as usize },
};

const CONFLICT_RESOLVER: Var<String> = Var {
    name: "CONFLICT_RESOLVER",
    help: "update conflicts: last writer wins (lww) or the server's row always wins (server_wins)",
    if_unset: IfUnset::Text("lww"),
    form: Form::Parsed { expected: "lww or server_wins", parse: conflict_resolver },
};

const CLOCK_SKEW_MS: Var<Duration> = Var {
    name: "CLOCK_SKEW_MS",
    help: "last writer wins: tolerance added to a push's client_updated_at",
    if_unset: IfUnset::Text("0"),
    form: Form::Number { min: 0, max: 3_600_000, unit: "milliseconds", into: Duration::from_millis },
};

const COMPACTION_INTERVAL_SECS: Var<Option<Duration>> = Var {
    name: "COMPACTION_INTERVAL_SECS",
    help: "how often the background changelog compaction runs (0: never)",
    if_unset: IfUnset::Text("3600"),
    form: Form::Number {
        min: 0,
        max: 30 * 24 * 3600,
        unit: "seconds",
        into: |n| (n > 0).then(|| Duration::from_secs(n)),
    },
};

const STALE_CLIENT_DAYS: Var<Duration> = Var {
    name: "STALE_CLIENT_DAYS",
    help: "compaction deactivates clients that have not synced for this long",
    if_unset: IfUnset::Text("7"),
    form: Form::Number { min: 1, max: 3650, unit: "days", into: |days| Duration::from_secs(days * 24 * 3600) },
};

const LOG_LEVEL: Var<LogLevel> = Var {
    name: "LOG_LEVEL",
    help: "the least severe level logged (JSON lines on stdout)",
    if_unset: IfUnset::Text("info"),
    form: Form::Parsed { expected: "debug, info, warn or error", parse: log_level },
};

const PG_BIN_DIR: Var<Option<std::path::PathBuf>> = Var {
    name: "PG_BIN_DIR",
    help: "synchrod dev: the directory holding initdb, pg_ctl and postgres",
    if_unset: IfUnset::Computed {
        shown: "pg_config --bindir, then the newest /usr/lib/postgresql/*/bin, then PATH",
        value: || None,
    },
    form: Form::Parsed { expected: "a directory", parse: |raw| Ok(Some(raw.into())) },
};

/// Every declaration, in the sections `--help` shows them in.
pub(crate) const SECTIONS: &[(&str, &[&dyn Declared])] = &[
    (
        "PostgreSQL",
        &[
            &DATABASE_URL,
            &SYNC_STORE_URL,
            &REPLICATION_URL,
            &READ_REPLICA_URLS,
            &SLOT_NAME,
            &PUBLICATION_NAME,
            &PUSH_ROLE,
            &PUSH_SET_BASED,
        ],
    ),
    (
        "Synced tables",
        &[
            &SYNC_TABLES,
            &READ_ONLY_TABLES,
            &OWNER_COLUMN,
            &EXCLUDE_COLUMNS,
            &SHARED_ROWS_WRITABLE,
            &UPDATED_AT_COLUMN,
            &DELETED_AT_COLUMN,
            &BUCKET_RULES,
        ],
    ),
    (
        "Authentication",
        &[
            &JWT_SECRET,
            &JWKS_URL,
            &JWKS_REFRESH_SECS,
            &SSL_CERT_FILE,
            &JWT_USER_CLAIM,
            &JWT_ISSUER,
            &JWT_AUDIENCE,
            &JWT_LEEWAY_SECS,
            &MIN_CLIENT_VERSION,
        ],
    ),
    (
        "HTTP",
        &[
            &LISTEN_ADDR,
            &HTTP_THREADS,
            &MAX_BODY_BYTES,
            &HTTP_IDLE_TIMEOUT_SECS,
            &HTTP_MAX_CONNECTIONS,
            &HTTP_MAX_HEAD_BYTES,
            &HTTP_MAX_HEADERS,
            &HTTP_HEAD_TIMEOUT_SECS,
            &HTTP_WRITE_TIMEOUT_SECS,
            &HTTP_MAX_BUFFERED_BYTES,
        ],
    ),
    ("Conflicts", &[&CONFLICT_RESOLVER, &CLOCK_SKEW_MS]),
    ("Capture and compaction", &[&COMPACTION_INTERVAL_SECS, &STALE_CLIENT_DAYS]),
    ("Logging", &[&LOG_LEVEL]),
    ("synchrod dev", &[&PG_BIN_DIR]),
];

/// The `synchrod --help` text: the commands, then every variable with its accepted values and
/// its default, from the same declarations [`Config::from_vars`] reads.
pub fn help_text() -> String {
    let mut out = String::from(
        "synchrod: offline-first sync server for PostgreSQL\n\n\
         USAGE:\n  \
         synchrod [serve]            run the server (needs DATABASE_URL)\n  \
         synchrod dev                run on a private local PostgreSQL with a demo schema\n  \
         synchrod migrate [--print]  apply (or print) the infrastructure migrations\n  \
         synchrod rls                print row-level-security policies for the synced tables\n  \
         synchrod compact            run one changelog compaction pass and print what it did\n  \
         synchrod check              production checklist: pass/fail lines with fixes, non-zero exit on failure\n  \
         synchrod --help             this text\n  \
         synchrod --version          the version and the features built in\n\n\
         ENVIRONMENT (surrounding white space is trimmed; an empty value counts as unset):\n",
    );
    let width = SECTIONS.iter().flat_map(|(_, vars)| vars.iter()).map(|v| v.name().len()).max().unwrap_or(0);
    for (section, vars) in SECTIONS {
        out.push_str(&format!("\n  {section}\n"));
        for v in *vars {
            out.push_str(&format!("    {:width$}  {}\n", v.name(), v.help()));
            out.push_str(&format!("    {:width$}  {} {}\n", "", v.expected(), v.shown_default()));
        }
    }
    out
}

const PG_URL: &str =
    "postgres://user:password@host:port/dbname or key=value pairs (sslmode, sslrootcert as parameters)";
pub(crate) const IDENTIFIER: &str = "letters, digits, _ and $, not starting with a digit (at most 63)";
const TABLE_LIST: &str = "a comma list of table or schema.table names";

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).clamp(4, 1024)
}

/// Whether `s` is an unquoted-style SQL name: letters, digits, `_` and `$`, not starting with a
/// digit, at most 63 bytes.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 63
}

fn identifier(raw: &str) -> Result<String, String> {
    if is_identifier(raw) {
        Ok(raw.to_string())
    } else {
        Err(format!("invalid name {raw:?}"))
    }
}

fn slot_name(raw: &str) -> Result<String, String> {
    if raw.len() <= 63 && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(raw.to_string())
    } else {
        Err(format!("invalid slot name {raw:?}"))
    }
}

/// A `table` or `schema.table` name, or what is wrong with it.
pub(crate) fn table_name(raw: &str) -> Result<TableName, String> {
    let (schema, name) = match raw.split_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, raw.to_string()),
    };
    if !is_identifier(&name) || schema.as_deref().is_some_and(|s| !is_identifier(s)) {
        return Err(format!("invalid table name {raw:?} (names are {IDENTIFIER})"));
    }
    Ok(TableName { schema, name })
}

fn table_list(raw: &str) -> Result<Vec<TableName>, String> {
    let mut out: Vec<TableName> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t = table_name(part)?;
        if out.contains(&t) {
            return Err(format!("table {t} is listed twice"));
        }
        out.push(t);
    }
    Ok(out)
}

fn column_list(raw: &str) -> Result<Vec<(TableName, String)>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (table, column) = part.rsplit_once('.').ok_or_else(|| format!("invalid entry {part:?}"))?;
        let table = table_name(table)?;
        if !is_identifier(column) {
            return Err(format!("invalid column name {column:?} in {part:?} (names are {IDENTIFIER})"));
        }
        out.push((table, column.to_string()));
    }
    Ok(out)
}

/// A connection string that parses and whose TLS settings are usable. The value itself is not
/// repeated in errors: it may hold a password.
fn pg_url(raw: &str) -> Result<String, String> {
    let params = pgurl::parse(raw).map_err(|e| e.to_string())?;
    crate::pg::tls::TlsSettings::from_params(&params).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

fn pg_url_list(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',').map(str::trim).filter(|u| !u.is_empty()).map(pg_url).collect()
}

fn http_url(raw: &str) -> Result<Option<String>, String> {
    if raw.starts_with("https://") || raw.starts_with("http://") {
        Ok(Some(raw.to_string()))
    } else {
        Err(format!("invalid URL {raw:?}"))
    }
}

fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(format!("invalid value {raw:?}")),
    }
}

fn conflict_resolver(raw: &str) -> Result<String, String> {
    match raw {
        "lww" | "server_wins" => Ok(raw.to_string()),
        _ => Err(format!("invalid resolver {raw:?}")),
    }
}

fn log_level(raw: &str) -> Result<LogLevel, String> {
    match raw.to_ascii_lowercase().as_str() {
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warn" | "warning" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        _ => Err(format!("invalid level {raw:?}")),
    }
}

/// `:8080` means every interface; `host:port` and `[v6]:port` as usual.
fn socket_addr(raw: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = if raw.starts_with(':') { format!("0.0.0.0{raw}") } else { raw.to_string() };
    let mut addrs = full.to_socket_addrs().map_err(|e| format!("invalid address {raw:?} ({e})"))?;
    addrs.next().ok_or_else(|| format!("address {raw:?} resolves to no address"))
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Where the sync tables live: `SYNC_STORE_URL`, else `DATABASE_URL`.
    pub fn store_url(&self) -> &str {
        self.sync_store_url.as_deref().unwrap_or(&self.database_url)
    }

    /// Reads the configuration from a variable map (surrounding white space trimmed, empty
    /// values count as unset): every variable through its declaration, then the rules that
    /// involve two of them.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let database_url = DATABASE_URL.read(vars)?;
        let (replication_url, replication_url_derived) = match REPLICATION_URL.read(vars)? {
            Some(url) => (url, false),
            None => (pgurl::with_replication_database(&database_url), true),
        };
        let sync_store_url = SYNC_STORE_URL.read(vars)?;
        // The same database twice would be harmless but pays for a second connection per
        // request; say so instead.
        if sync_store_url.as_deref() == Some(database_url.as_str()) {
            return Err(ConfigError {
                variable: SYNC_STORE_URL.name,
                message: "is DATABASE_URL itself: leave it unset to keep the sync tables in the application database"
                    .to_string(),
            });
        }
        let read_replica_urls = READ_REPLICA_URLS.read(vars)?;
        for (i, url) in read_replica_urls.iter().enumerate() {
            if *url == database_url || sync_store_url.as_ref() == Some(url) || read_replica_urls[..i].contains(url) {
                return Err(ConfigError {
                    variable: READ_REPLICA_URLS.name,
                    message: "lists the same URL twice, or DATABASE_URL or SYNC_STORE_URL itself".to_string(),
                });
            }
        }
        let auth = match (JWT_SECRET.read(vars)?, JWKS_URL.read(vars)?) {
            (Some(secret), _) => AuthMode::JwtSecret(secret),
            (None, Some(url)) => AuthMode::Jwks(url),
            (None, None) => AuthMode::DevHeader,
        };
        let sync_tables = SYNC_TABLES.read(vars)?;
        let read_only_tables = READ_ONLY_TABLES.read(vars)?;
        if !sync_tables.is_empty() {
            if let Some(t) = read_only_tables.iter().find(|t| !sync_tables.contains(t)) {
                return Err(ConfigError {
                    variable: READ_ONLY_TABLES.name,
                    message: format!("table {t} is not in SYNC_TABLES"),
                });
            }
        }

        let max_body_bytes = MAX_BODY_BYTES.read(vars)?;
        let http_limits = HttpLimits {
            max_connections: HTTP_MAX_CONNECTIONS.read(vars)?,
            max_head_bytes: HTTP_MAX_HEAD_BYTES.read(vars)?,
            max_headers: HTTP_MAX_HEADERS.read(vars)?,
            head_timeout: HTTP_HEAD_TIMEOUT_SECS.read(vars)?,
            write_timeout: HTTP_WRITE_TIMEOUT_SECS.read(vars)?,
            max_buffered_bytes: HTTP_MAX_BUFFERED_BYTES.read(vars)?,
        };
        if http_limits.max_buffered_bytes < max_body_bytes {
            return Err(ConfigError {
                variable: HTTP_MAX_BUFFERED_BYTES.name,
                message: format!(
                    "{} is less than MAX_BODY_BYTES ({max_body_bytes}): a body of the largest allowed size could never be received",
                    http_limits.max_buffered_bytes
                ),
            });
        }

        Ok(Config {
            database_url,
            sync_store_url,
            read_replica_urls,
            replication_url,
            replication_url_derived,
            auth,
            jwt_user_claim: JWT_USER_CLAIM.read(vars)?,
            jwt_issuer: JWT_ISSUER.read(vars)?,
            jwt_audience: JWT_AUDIENCE.read(vars)?,
            jwt_leeway: JWT_LEEWAY_SECS.read(vars)?,
            jwks_refresh: JWKS_REFRESH_SECS.read(vars)?,
            listen_addr: LISTEN_ADDR.read(vars)?,
            slot_name: SLOT_NAME.read(vars)?,
            publication_name: PUBLICATION_NAME.read(vars)?,
            min_client_version: MIN_CLIENT_VERSION.read(vars)?,
            log_level: LOG_LEVEL.read(vars)?,
            sync_tables,
            read_only_tables,
            owner_column: OWNER_COLUMN.read(vars)?,
            exclude_columns: EXCLUDE_COLUMNS.read(vars)?,
            updated_at_column: UPDATED_AT_COLUMN.read(vars)?,
            deleted_at_column: DELETED_AT_COLUMN.read(vars)?,
            bucket_rules: BUCKET_RULES.read(vars)?,
            http_threads: HTTP_THREADS.read(vars)?,
            max_body_bytes,
            http_idle_timeout: HTTP_IDLE_TIMEOUT_SECS.read(vars)?,
            http_limits,
            push_role: PUSH_ROLE.read(vars)?,
            push_set_based: PUSH_SET_BASED.read(vars)?,
            compaction_interval: COMPACTION_INTERVAL_SECS.read(vars)?,
            stale_client_after: STALE_CLIENT_DAYS.read(vars)?,
            conflict_resolver: CONFLICT_RESOLVER.read(vars)?,
            clock_skew: CLOCK_SKEW_MS.read(vars)?,
            shared_rows_writable: SHARED_ROWS_WRITABLE.read(vars)?,
        })
    }
}

/// Parses `LISTEN_ADDR`: `:8080` means every interface; `host:port`, `[v6]:port` as usual.
pub fn parse_listen_addr(raw: &str) -> Result<std::net::SocketAddr, ConfigError> {
    socket_addr(raw).map_err(|why| LISTEN_ADDR.invalid(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.entry("DATABASE_URL".into()).or_insert_with(|| "postgres://u@localhost/app".into());
        m
    }

    #[test]
    fn defaults_match_the_reference_server() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.replication_url, "postgres://u@localhost/app?replication=database");
        assert!(c.replication_url_derived);
        assert_eq!(c.auth, AuthMode::DevHeader);
        assert_eq!((c.jwt_user_claim.as_str(), c.listen_addr.as_str()), ("sub", ":8080"));
        assert_eq!((c.slot_name.as_str(), c.publication_name.as_str()), ("synchro_slot", "synchro_pub"));
        assert_eq!(
            (c.owner_column.as_str(), c.updated_at_column.as_str(), c.deleted_at_column.as_str()),
            ("user_id", "updated_at", "deleted_at")
        );
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.shared_rows_writable, "the contract's behaviour unless configured");
        assert!(!Config::from_vars(&vars(&[("SHARED_ROWS_WRITABLE", "false")])).unwrap().shared_rows_writable);
        assert!(c.push_set_based);
        assert!(!Config::from_vars(&vars(&[("PUSH_SET_BASED", "false")])).unwrap().push_set_based);
        assert!(c.http_threads >= 4);
        assert_eq!(c.max_body_bytes, 32 << 20);
        let http = &c.http_limits;
        assert_eq!((http.max_connections, http.max_head_bytes, http.max_headers), (16_384, 16_384, 100));
        assert_eq!((http.head_timeout, http.write_timeout), (Duration::from_secs(10), Duration::from_secs(30)));
        assert_eq!(http.max_buffered_bytes, 256 << 20);
        assert_eq!((c.jwt_issuer.as_deref(), c.jwt_audience.as_deref()), (None, None));
        assert_eq!((c.jwt_leeway, c.jwks_refresh), (Duration::from_secs(30), Duration::from_secs(30)));
    }

    #[test]
    fn the_sync_store_is_optional() {
        assert_eq!(Config::from_vars(&vars(&[])).unwrap().sync_store_url, None);
        let c = Config::from_vars(&vars(&[("SYNC_STORE_URL", " postgres://s:6432/store ")])).unwrap();
        assert_eq!(c.sync_store_url.as_deref(), Some("postgres://s:6432/store"));
    }

    #[test]
    fn read_replicas_are_a_comma_list() {
        assert!(Config::from_vars(&vars(&[])).unwrap().read_replica_urls.is_empty());
        let c =
            Config::from_vars(&vars(&[("READ_REPLICA_URLS", " postgres://r1/app , ,postgres://r2:6432/app")])).unwrap();
        assert_eq!(c.read_replica_urls, vec!["postgres://r1/app", "postgres://r2:6432/app"]);
    }

    #[test]
    fn token_rules() {
        let c = Config::from_vars(&vars(&[
            ("JWT_ISSUER", "https://idp"),
            ("JWT_AUDIENCE", "app"),
            ("JWT_LEEWAY_SECS", "0"),
            ("JWKS_REFRESH_SECS", "5"),
        ]))
        .unwrap();
        assert_eq!((c.jwt_issuer.as_deref(), c.jwt_audience.as_deref()), (Some("https://idp"), Some("app")));
        assert_eq!((c.jwt_leeway, c.jwks_refresh), (Duration::ZERO, Duration::from_secs(5)));
    }

    #[test]
    fn jwt_secret_wins_over_jwks() {
        let c = Config::from_vars(&vars(&[("JWT_SECRET", "s"), ("JWKS_URL", "https://x/jwks")])).unwrap();
        assert_eq!(c.auth, AuthMode::JwtSecret("s".into()));
        let c = Config::from_vars(&vars(&[("JWKS_URL", "https://x/jwks")])).unwrap();
        assert_eq!(c.auth, AuthMode::Jwks("https://x/jwks".into()));
    }

    #[test]
    fn parses_table_lists() {
        let c = Config::from_vars(&vars(&[
            ("SYNC_TABLES", "tasks, app.comments ,categories"),
            ("READ_ONLY_TABLES", "categories"),
            ("EXCLUDE_COLUMNS", "tasks.secret,app.comments.search"),
        ]))
        .unwrap();
        assert_eq!(c.sync_tables.len(), 3);
        assert_eq!(c.sync_tables[1], TableName { schema: Some("app".into()), name: "comments".into() });
        assert_eq!(c.exclude_columns[1].1, "search");
        assert_eq!(c.exclude_columns[1].0.schema.as_deref(), Some("app"));
    }

    #[test]
    fn every_invalid_value_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("DATABASE_URL", "")], "DATABASE_URL"),
            (&[("DATABASE_URL", "not a url")], "DATABASE_URL"),
            (&[("REPLICATION_URL", "postgres://h:0/x")], "REPLICATION_URL"),
            (&[("DATABASE_URL", "postgres://h/x?sslmode=allow")], "DATABASE_URL"),
            (&[("REPLICATION_URL", "postgres://h/x?sslmode=verify-ca&sslrootcert=")], "REPLICATION_URL"),
            (&[("READ_REPLICA_URLS", "postgres://r1/app,not a url")], "READ_REPLICA_URLS"),
            (&[("SYNC_STORE_URL", "not a url")], "SYNC_STORE_URL"),
            (&[("SYNC_STORE_URL", "postgres://u@localhost/app")], "SYNC_STORE_URL"),
            (&[("SYNC_STORE_URL", "postgres://s/x?sslmode=allow")], "SYNC_STORE_URL"),
            (
                &[("SYNC_STORE_URL", "postgres://s/store"), ("READ_REPLICA_URLS", "postgres://s/store")],
                "READ_REPLICA_URLS",
            ),
            (&[("READ_REPLICA_URLS", "postgres://r1/app, postgres://r1/app")], "READ_REPLICA_URLS"),
            (&[("READ_REPLICA_URLS", "postgres://u@localhost/app")], "READ_REPLICA_URLS"),
            (&[("READ_REPLICA_URLS", "postgres://r1/x?sslmode=allow")], "READ_REPLICA_URLS"),
            (&[("JWKS_URL", "ftp://x")], "JWKS_URL"),
            (&[("JWKS_REFRESH_SECS", "0")], "JWKS_REFRESH_SECS"),
            (&[("JWT_LEEWAY_SECS", "601")], "JWT_LEEWAY_SECS"),
            (&[("SLOT_NAME", "Bad-Slot")], "SLOT_NAME"),
            (&[("PUBLICATION_NAME", "1pub")], "PUBLICATION_NAME"),
            (&[("LOG_LEVEL", "loud")], "LOG_LEVEL"),
            (&[("SYNC_TABLES", "a;drop table x")], "SYNC_TABLES"),
            (&[("SYNC_TABLES", "a,a")], "SYNC_TABLES"),
            (&[("SYNC_TABLES", "a"), ("READ_ONLY_TABLES", "b")], "READ_ONLY_TABLES"),
            (&[("EXCLUDE_COLUMNS", "nocolumn")], "EXCLUDE_COLUMNS"),
            (&[("EXCLUDE_COLUMNS", "t.bad-col")], "EXCLUDE_COLUMNS"),
            (&[("OWNER_COLUMN", "owner id")], "OWNER_COLUMN"),
            (&[("UPDATED_AT_COLUMN", "x\"y")], "UPDATED_AT_COLUMN"),
            (&[("DELETED_AT_COLUMN", "9")], "DELETED_AT_COLUMN"),
            (&[("HTTP_THREADS", "0")], "HTTP_THREADS"),
            (&[("HTTP_THREADS", "many")], "HTTP_THREADS"),
            (&[("MAX_BODY_BYTES", "10")], "MAX_BODY_BYTES"),
            (&[("HTTP_IDLE_TIMEOUT_SECS", "-1")], "HTTP_IDLE_TIMEOUT_SECS"),
            (&[("HTTP_MAX_CONNECTIONS", "0")], "HTTP_MAX_CONNECTIONS"),
            (&[("HTTP_MAX_HEAD_BYTES", "100")], "HTTP_MAX_HEAD_BYTES"),
            (&[("HTTP_MAX_HEADERS", "many")], "HTTP_MAX_HEADERS"),
            (&[("HTTP_HEAD_TIMEOUT_SECS", "0")], "HTTP_HEAD_TIMEOUT_SECS"),
            (&[("HTTP_WRITE_TIMEOUT_SECS", "-1")], "HTTP_WRITE_TIMEOUT_SECS"),
            (&[("HTTP_MAX_BUFFERED_BYTES", "1000")], "HTTP_MAX_BUFFERED_BYTES"),
            (&[("HTTP_MAX_BUFFERED_BYTES", "2097152"), ("MAX_BODY_BYTES", "4194304")], "HTTP_MAX_BUFFERED_BYTES"),
            (&[("COMPACTION_INTERVAL_SECS", "soon")], "COMPACTION_INTERVAL_SECS"),
            (&[("STALE_CLIENT_DAYS", "0")], "STALE_CLIENT_DAYS"),
            (&[("PUSH_ROLE", "bad role")], "PUSH_ROLE"),
            (&[("CONFLICT_RESOLVER", "client_wins")], "CONFLICT_RESOLVER"),
            (&[("SHARED_ROWS_WRITABLE", "maybe")], "SHARED_ROWS_WRITABLE"),
            (&[("CLOCK_SKEW_MS", "-5")], "CLOCK_SKEW_MS"),
            (&[("LISTEN_ADDR", "nowhere")], "LISTEN_ADDR"),
        ];
        for (pairs, variable) in cases {
            let err = Config::from_vars(&vars(pairs)).unwrap_err();
            assert_eq!(err.variable, *variable, "{pairs:?}: {err}");
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr(":8080").unwrap().port(), 8080);
        assert_eq!(parse_listen_addr("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen_addr("[::1]:9").unwrap().is_ipv6());
        assert!(parse_listen_addr("8080").is_err());
    }

    #[test]
    fn help_shows_every_declaration_with_its_form_and_default() {
        let help = help_text();
        for v in SECTIONS.iter().flat_map(|(_, vars)| vars.iter()) {
            assert!(help.contains(v.name()), "{}", v.name());
            assert!(help.contains(&v.expected()) && help.contains(&v.shown_default()), "{}", v.name());
        }
        assert!(help.contains("[default: 30]") && help.contains("[required]"), "{help}");
    }

    #[test]
    fn defaults_are_of_their_own_form() {
        let mut names = std::collections::HashSet::new();
        for v in SECTIONS.iter().flat_map(|(_, vars)| vars.iter()) {
            assert!(names.insert(v.name()), "{} is declared twice", v.name());
            match v.read_unset() {
                Ok(()) => {}
                Err(e) => assert_eq!(v.shown_default(), "[required]", "{e}"),
            }
        }
    }

    #[test]
    fn errors_state_the_accepted_form() {
        let err = Config::from_vars(&vars(&[("JWT_LEEWAY_SECS", "601")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "JWT_LEEWAY_SECS: invalid value \"601\": expected a whole number of seconds from 0 to 600"
        );
        let err = Config::from_vars(&vars(&[("CONFLICT_RESOLVER", "client_wins")])).unwrap_err();
        assert_eq!(err.to_string(), "CONFLICT_RESOLVER: invalid resolver \"client_wins\": expected lww or server_wins");
        let err = Config::from_vars(&HashMap::new()).unwrap_err();
        assert!(err.to_string().starts_with("DATABASE_URL: is required: set it to postgres://"), "{err}");
        // A URL that does not parse is not repeated: it may hold a password.
        let err = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:s3cret@h:99999/d")])).unwrap_err();
        assert!(!err.to_string().contains("s3cret") && err.to_string().contains("expected postgres://"), "{err}");
    }

    #[test]
    fn values_are_trimmed_and_empty_means_unset() {
        let c = Config::from_vars(&vars(&[("JWT_LEEWAY_SECS", " 5 "), ("LOG_LEVEL", "  "), ("CLOCK_SKEW_MS", "250")]))
            .unwrap();
        assert_eq!((c.jwt_leeway, c.log_level), (Duration::from_secs(5), LogLevel::Info));
        assert_eq!(c.clock_skew, Duration::from_millis(250));
        let c = Config::from_vars(&vars(&[("COMPACTION_INTERVAL_SECS", "0"), ("STALE_CLIENT_DAYS", "2")])).unwrap();
        assert_eq!((c.compaction_interval, c.stale_client_after), (None, Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn the_readme_table_lists_every_variable() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for v in SECTIONS.iter().flat_map(|(_, vars)| vars.iter()) {
            assert!(readme.contains(&format!("| `{}` |", v.name())), "README's configuration table lacks {}", v.name());
        }
    }

    /// Names that look like environment variables in the sources but are not read from the
    /// environment, or are the operating system's rather than synchro's.
    const NOT_CONFIGURATION: &[&str] = &[
        // SQL keywords and a file inside PGDATA.
        "CURRENT_DATE",
        "CURRENT_TIME",
        "CURRENT_TIMESTAMP",
        "PG_VERSION",
        // A replication protocol command.
        "IDENTIFY_SYSTEM",
        // Cargo's, read at build time by env!.
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_VERSION",
        // The operating system's: the search path and libpq's ~/.postgresql.
        "PATH",
        "HOME",
    ];

    /// The string literals of Rust source text, each with the code just before it (comments,
    /// char literals and raw strings understood, so quotes inside them do not confuse the scan).
    fn string_literals(text: &str) -> Vec<(String, String)> {
        let chars: Vec<char> = text.chars().collect();
        let (mut out, mut code, mut i) = (Vec::new(), String::new(), 0);
        let tail = |code: &String| code.chars().rev().take(16).collect::<Vec<_>>().into_iter().rev().collect();
        while i < chars.len() {
            let rest = |n: usize| chars.get(i + n).copied();
            match chars[i] {
                '/' if rest(1) == Some('/') => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '/' if rest(1) == Some('*') => {
                    i += 2;
                    while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                        i += 1;
                    }
                    i += 2;
                }
                '\'' if rest(1) == Some('\\') => {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                '\'' if rest(2) == Some('\'') => i += 3,
                'r' if (rest(1) == Some('"') || rest(1) == Some('#'))
                    && !code.ends_with(|c: char| c.is_alphanumeric() || c == '_') =>
                {
                    let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                    if rest(1 + hashes) != Some('"') {
                        code.push('r');
                        i += 1;
                        continue;
                    }
                    let start = i + 2 + hashes;
                    let mut end = start;
                    while end < chars.len()
                        && !(chars[end] == '"'
                            && chars[end + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes)
                    {
                        end += 1;
                    }
                    out.push((tail(&code), chars[start..end.min(chars.len())].iter().collect()));
                    i = end + 1 + hashes;
                }
                '"' => {
                    let mut literal = String::new();
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] == '\\' {
                            // No variable name holds an escape: keep a character none holds.
                            literal.push('\\');
                            i += 2;
                        } else {
                            literal.push(chars[i]);
                            i += 1;
                        }
                    }
                    out.push((tail(&code), literal));
                    i += 1;
                }
                c => {
                    if !c.is_whitespace() {
                        code.push(c);
                    }
                    i += 1;
                }
            }
        }
        out
    }

    /// Every name the code could read from the environment or a variable map: string literals
    /// that look like variable names (upper case with an underscore) and the arguments of
    /// `env::var` / `env::var_os`, in every source file.
    fn names_in_sources() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let looks_like_a_variable = |s: &str| {
            s.len() > 2
                && s.contains('_')
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        let mut files = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut found = std::collections::BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
            for (code_before, literal) in string_literals(&text) {
                let read_from_env = code_before.ends_with("var(") || code_before.ends_with("var_os(");
                if looks_like_a_variable(&literal) || (read_from_env && !literal.is_empty()) {
                    found.entry(literal).or_insert_with(std::collections::BTreeSet::new).insert(shown.clone());
                }
            }
        }
        found
    }

    #[test]
    fn help_lists_every_variable_the_code_reads() {
        let found = names_in_sources();
        // The scan must see reads outside this file, or it proves nothing.
        for (name, file) in [
            ("PG_BIN_DIR", "src/cluster.rs"),
            ("SSL_CERT_FILE", "src/pg/tls.rs"),
            ("SYNC_TABLES", "src/dev.rs"),
            ("HOME", "src/pg/tls.rs"),
        ] {
            assert!(found.get(name).is_some_and(|files| files.contains(file)), "the scan missed {name} in {file}");
        }
        let declared: Vec<&str> = SECTIONS.iter().flat_map(|(_, vars)| vars.iter()).map(|v| v.name()).collect();
        let help = help_text();
        for (name, files) in &found {
            if NOT_CONFIGURATION.contains(&name.as_str()) || name.starts_with("SYNCHRO_TEST_") {
                continue;
            }
            assert!(
                declared.contains(&name.as_str()) && help.contains(&format!("    {name} ")),
                "{name} (read in {files:?}) is not declared in config.rs, so `synchrod --help` does not list it"
            );
        }
    }
}
