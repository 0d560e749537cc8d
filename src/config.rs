//! Configuration from the environment: every variable, its default, and its validation.
//!
//! [`Config::from_vars`] takes the variables as a map so tests need not touch the process
//! environment; an invalid value is a [`ConfigError`] naming the variable and the accepted form.
//! [`help_text`] renders the same table for `synchrod --help`, so the two cannot drift apart.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::pg::url;

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
    /// Fixed number of HTTP worker threads.
    pub http_threads: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Idle keep-alive connections and stalled reads are closed after this long.
    pub http_idle_timeout: Duration,
    /// A non-superuser role pushes switch to (`SET LOCAL ROLE`) so RLS policies apply.
    pub push_role: Option<String>,
    /// How often the background compaction runs (`None` = never).
    pub compaction_interval: Option<Duration>,
    /// Clients that have not synced for this long are deactivated by compaction.
    pub stale_client_after: Duration,
    /// `lww` (last writer wins, the default) or `server_wins`.
    pub conflict_resolver: String,
    /// Clock-skew tolerance added to `client_updated_at` by last-writer-wins.
    pub clock_skew: Duration,
}

/// One documented variable: name, default shown in `--help`, and meaning.
struct VarDoc {
    name: &'static str,
    default: &'static str,
    meaning: &'static str,
}

const VARS: &[VarDoc] = &[
    VarDoc {
        name: "DATABASE_URL",
        default: "(required; `synchrod dev` starts its own)",
        meaning: "PostgreSQL URL of the application tables (and of the sync tables unless SYNC_STORE_URL is set)",
    },
    VarDoc {
        name: "SYNC_STORE_URL",
        default: "(empty: DATABASE_URL)",
        meaning: "separate database for the changelog, bucket edges, clients, checkpoints and manifest",
    },
    VarDoc {
        name: "REPLICATION_URL",
        default: "DATABASE_URL + replication=database",
        meaning: "connection used for logical replication",
    },
    VarDoc {
        name: "READ_REPLICA_URLS",
        default: "(empty)",
        meaning: "comma list of streaming replica URLs for pull hydration and snapshot pages (used only when caught up)",
    },
    VarDoc { name: "JWT_SECRET", default: "(empty)", meaning: "HMAC secret: HS256/HS384/HS512 bearer tokens" },
    VarDoc {
        name: "JWKS_URL",
        default: "(empty)",
        meaning: "JWKS endpoint (https://, or http:// locally): RS256/384/512, ES256/384 bearer tokens (when JWT_SECRET is empty)",
    },
    VarDoc {
        name: "JWKS_REFRESH_SECS",
        default: "30",
        meaning:
            "JWKS: at most one refetch per this many seconds for unknown kids; also the shortest cache age (1-86400)",
    },
    VarDoc {
        name: "SSL_CERT_FILE",
        default: "/etc/ssl/certs/ca-certificates.crt",
        meaning: "CA bundle (PEM) trusted for an https:// JWKS_URL",
    },
    VarDoc { name: "JWT_USER_CLAIM", default: "sub", meaning: "token claim holding the user id" },
    VarDoc { name: "JWT_ISSUER", default: "(empty: not checked)", meaning: "required iss claim of bearer tokens" },
    VarDoc {
        name: "JWT_AUDIENCE",
        default: "(empty: not checked)",
        meaning: "required aud of bearer tokens (string or one of an array)",
    },
    VarDoc { name: "JWT_LEEWAY_SECS", default: "30", meaning: "clock skew tolerated for exp and nbf (0-600)" },
    VarDoc { name: "LISTEN_ADDR", default: ":8080", meaning: "HTTP listen address (host:port, :port or [v6]:port)" },
    VarDoc { name: "SLOT_NAME", default: "synchro_slot", meaning: "logical replication slot" },
    VarDoc { name: "PUBLICATION_NAME", default: "synchro_pub", meaning: "publication streamed by the slot" },
    VarDoc {
        name: "MIN_CLIENT_VERSION",
        default: "(empty: no gate)",
        meaning: "oldest accepted X-App-Version / app_version (semver)",
    },
    VarDoc { name: "LOG_LEVEL", default: "info", meaning: "debug, info, warn or error" },
    VarDoc {
        name: "SYNC_TABLES",
        default: "(tables of the publication)",
        meaning: "comma list of synced tables, optionally schema.table",
    },
    VarDoc {
        name: "READ_ONLY_TABLES",
        default: "(empty)",
        meaning: "comma list of synced tables clients may not push to",
    },
    VarDoc { name: "OWNER_COLUMN", default: "user_id", meaning: "column holding a row's owner (bucket user:<value>)" },
    VarDoc {
        name: "EXCLUDE_COLUMNS",
        default: "(empty)",
        meaning: "comma list of table.column left out of the schema",
    },
    VarDoc { name: "UPDATED_AT_COLUMN", default: "updated_at", meaning: "last-modified timestamp column" },
    VarDoc { name: "DELETED_AT_COLUMN", default: "deleted_at", meaning: "soft-delete timestamp column" },
    VarDoc { name: "HTTP_THREADS", default: "2 x CPUs (min 4)", meaning: "HTTP worker threads (1-1024)" },
    VarDoc {
        name: "MAX_BODY_BYTES",
        default: "33554432 (32 MiB)",
        meaning: "largest request body (65536 to 1073741824)",
    },
    VarDoc {
        name: "HTTP_IDLE_TIMEOUT_SECS",
        default: "30",
        meaning: "idle keep-alive / stalled read timeout in seconds (1-3600)",
    },
];

/// The `synchrod --help` text: commands, then every variable with its default.
pub fn help_text() -> String {
    let mut out = String::from(
        "synchrod: offline-first sync server for PostgreSQL\n\n\
         USAGE:\n  synchrod [serve]        run the server (needs DATABASE_URL)\n  \
         synchrod dev            run on a private local PostgreSQL with a demo schema\n  \
         synchrod migrate [--print]  apply (or print) the infrastructure migrations\n  \
         synchrod rls            print row-level-security policies for the synced tables\n  \
         synchrod compact        run one changelog compaction pass and print what it did\n  \
         synchrod check          production checklist: pass/fail lines with fixes, non-zero exit on failure\n  \
         synchrod --help         this text\n\nENVIRONMENT:\n",
    );
    let width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in VARS {
        out.push_str(&format!("  {:width$}  {} [default: {}]\n", v.name, v.meaning, v.default));
    }
    out
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).max(4)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 63
}

fn parse_table_name(variable: &'static str, raw: &str) -> Result<TableName, ConfigError> {
    let bad = || ConfigError {
        variable,
        message: format!(
            "invalid table name {raw:?}: expected name or schema.name (letters, digits, _; at most 63 characters each)"
        ),
    };
    let (schema, name) = match raw.split_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, raw.to_string()),
    };
    if !is_identifier(&name) || schema.as_deref().is_some_and(|s| !is_identifier(s)) {
        return Err(bad());
    }
    Ok(TableName { schema, name })
}

fn parse_table_list(variable: &'static str, raw: &str) -> Result<Vec<TableName>, ConfigError> {
    let mut out: Vec<TableName> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t = parse_table_name(variable, part)?;
        if out.contains(&t) {
            return Err(ConfigError { variable, message: format!("table {t} is listed twice") });
        }
        out.push(t);
    }
    Ok(out)
}

fn parse_number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    variable: &'static str,
    raw: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match raw.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(ConfigError {
            variable,
            message: format!("invalid value {raw:?}: expected a whole number from {min} to {max}"),
        }),
    }
}

fn validate_url(variable: &'static str, raw: &str) -> Result<(), ConfigError> {
    let params = url::parse(raw)
        .map_err(|e| ConfigError { variable, message: format!("{e} (got a value that does not parse)") })?;
    crate::pg::tls::TlsSettings::from_params(&params)
        .map(|_| ())
        .map_err(|e| ConfigError { variable, message: e.to_string() })
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

    /// Reads the configuration from a variable map (empty values count as unset).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let database_url = get("DATABASE_URL")
            .ok_or(ConfigError {
                variable: "DATABASE_URL",
                message: "is required: set it to postgres://user:password@host:port/dbname, \
                          or run `synchrod dev` for a private local PostgreSQL"
                    .to_string(),
            })?
            .to_string();
        validate_url("DATABASE_URL", &database_url)?;

        let (replication_url, replication_url_derived) = match get("REPLICATION_URL") {
            Some(u) => {
                validate_url("REPLICATION_URL", u)?;
                (u.to_string(), false)
            }
            None => (url::with_replication_database(&database_url), true),
        };

        let sync_store_url = match get("SYNC_STORE_URL") {
            Some(url) => {
                validate_url("SYNC_STORE_URL", url)?;
                // The same database twice would be harmless but pays for a second connection
                // per request; say so instead.
                (url != database_url).then(|| url.to_string()).ok_or(ConfigError {
                    variable: "SYNC_STORE_URL",
                    message:
                        "is DATABASE_URL itself: leave it unset to keep the sync tables in the application database"
                            .to_string(),
                })?;
                Some(url.to_string())
            }
            None => None,
        };

        let mut read_replica_urls = Vec::new();
        for url in get("READ_REPLICA_URLS").unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()) {
            validate_url("READ_REPLICA_URLS", url)?;
            if url == database_url
                || sync_store_url.as_deref() == Some(url)
                || read_replica_urls.iter().any(|u| u == url)
            {
                return Err(ConfigError {
                    variable: "READ_REPLICA_URLS",
                    message: "lists the same URL twice, or DATABASE_URL or SYNC_STORE_URL itself".to_string(),
                });
            }
            read_replica_urls.push(url.to_string());
        }

        let auth = match (get("JWT_SECRET"), get("JWKS_URL")) {
            (Some(secret), _) => AuthMode::JwtSecret(secret.to_string()),
            (None, Some(url)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(ConfigError {
                        variable: "JWKS_URL",
                        message: format!("invalid URL {url:?}: expected https://... (or http:// for local setups)"),
                    });
                }
                AuthMode::Jwks(url.to_string())
            }
            (None, None) => AuthMode::DevHeader,
        };

        let name_var = |variable: &'static str, default: &str, slot: bool| -> Result<String, ConfigError> {
            let v = get(variable).unwrap_or(default).to_string();
            let ok = if slot {
                !v.is_empty()
                    && v.len() <= 63
                    && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            } else {
                is_identifier(&v)
            };
            if ok {
                Ok(v)
            } else if slot {
                Err(ConfigError {
                    variable,
                    message: format!("invalid name {v:?}: expected lower-case letters, digits and _ (at most 63)"),
                })
            } else {
                Err(ConfigError {
                    variable,
                    message: format!("invalid name {v:?}: expected an identifier (letters, digits, _; at most 63)"),
                })
            }
        };

        let log_level = match get("LOG_LEVEL").unwrap_or("info").to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            other => {
                return Err(ConfigError {
                    variable: "LOG_LEVEL",
                    message: format!("invalid level {other:?}: expected debug, info, warn or error"),
                })
            }
        };

        let sync_tables = parse_table_list("SYNC_TABLES", get("SYNC_TABLES").unwrap_or(""))?;
        let read_only_tables = parse_table_list("READ_ONLY_TABLES", get("READ_ONLY_TABLES").unwrap_or(""))?;
        if !sync_tables.is_empty() {
            if let Some(t) = read_only_tables.iter().find(|t| !sync_tables.contains(t)) {
                return Err(ConfigError {
                    variable: "READ_ONLY_TABLES",
                    message: format!("table {t} is not in SYNC_TABLES"),
                });
            }
        }

        let mut exclude_columns = Vec::new();
        for part in get("EXCLUDE_COLUMNS").unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (table, column) = part.rsplit_once('.').ok_or(ConfigError {
                variable: "EXCLUDE_COLUMNS",
                message: format!("invalid entry {part:?}: expected table.column or schema.table.column"),
            })?;
            let table = parse_table_name("EXCLUDE_COLUMNS", table)?;
            if !is_identifier(column) {
                return Err(ConfigError {
                    variable: "EXCLUDE_COLUMNS",
                    message: format!("invalid column name {column:?} in {part:?}"),
                });
            }
            exclude_columns.push((table, column.to_string()));
        }

        let column_var = |variable: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = get(variable).unwrap_or(default);
            if is_identifier(v) {
                Ok(v.to_string())
            } else {
                Err(ConfigError {
                    variable,
                    message: format!("invalid column name {v:?}: expected letters, digits and _ (at most 63)"),
                })
            }
        };

        let listen_addr = get("LISTEN_ADDR").unwrap_or(":8080").to_string();
        parse_listen_addr(&listen_addr)?;

        Ok(Config {
            database_url,
            sync_store_url,
            read_replica_urls,
            replication_url,
            replication_url_derived,
            auth,
            jwt_user_claim: get("JWT_USER_CLAIM").unwrap_or("sub").to_string(),
            jwt_issuer: get("JWT_ISSUER").map(str::to_string),
            jwt_audience: get("JWT_AUDIENCE").map(str::to_string),
            jwt_leeway: Duration::from_secs(match get("JWT_LEEWAY_SECS") {
                Some(v) => parse_number("JWT_LEEWAY_SECS", v, 0u64, 600)?,
                None => 30,
            }),
            jwks_refresh: Duration::from_secs(match get("JWKS_REFRESH_SECS") {
                Some(v) => parse_number("JWKS_REFRESH_SECS", v, 1u64, 86_400)?,
                None => 30,
            }),
            listen_addr,
            slot_name: name_var("SLOT_NAME", "synchro_slot", true)?,
            publication_name: name_var("PUBLICATION_NAME", "synchro_pub", false)?,
            min_client_version: get("MIN_CLIENT_VERSION").unwrap_or("").to_string(),
            log_level,
            sync_tables,
            read_only_tables,
            owner_column: column_var("OWNER_COLUMN", "user_id")?,
            exclude_columns,
            updated_at_column: column_var("UPDATED_AT_COLUMN", "updated_at")?,
            deleted_at_column: column_var("DELETED_AT_COLUMN", "deleted_at")?,
            http_threads: match get("HTTP_THREADS") {
                Some(v) => parse_number("HTTP_THREADS", v, 1usize, 1024)?,
                None => default_threads(),
            },
            max_body_bytes: match get("MAX_BODY_BYTES") {
                Some(v) => parse_number("MAX_BODY_BYTES", v, 65_536usize, 1 << 30)?,
                None => 32 << 20,
            },
            push_role: match get("PUSH_ROLE") {
                Some(r) if is_identifier(r) => Some(r.to_string()),
                Some(r) => {
                    return Err(ConfigError {
                        variable: "PUSH_ROLE",
                        message: format!("invalid role name {r:?}: expected an identifier"),
                    })
                }
                None => None,
            },
            compaction_interval: match get("COMPACTION_INTERVAL_SECS") {
                Some(v) => match parse_number("COMPACTION_INTERVAL_SECS", v, 0u64, 30 * 24 * 3600)? {
                    0 => None,
                    n => Some(Duration::from_secs(n)),
                },
                None => Some(Duration::from_secs(3600)),
            },
            stale_client_after: Duration::from_secs(
                24 * 3600
                    * match get("STALE_CLIENT_DAYS") {
                        Some(v) => parse_number("STALE_CLIENT_DAYS", v, 1u64, 3650)?,
                        None => 7,
                    },
            ),
            conflict_resolver: match get("CONFLICT_RESOLVER").unwrap_or("lww") {
                r @ ("lww" | "server_wins") => r.to_string(),
                other => {
                    return Err(ConfigError {
                        variable: "CONFLICT_RESOLVER",
                        message: format!("invalid resolver {other:?}: expected lww or server_wins"),
                    })
                }
            },
            clock_skew: Duration::from_millis(match get("CLOCK_SKEW_MS") {
                Some(v) => parse_number("CLOCK_SKEW_MS", v, 0u64, 3_600_000)?,
                None => 0,
            }),
            http_idle_timeout: Duration::from_secs(match get("HTTP_IDLE_TIMEOUT_SECS") {
                Some(v) => parse_number("HTTP_IDLE_TIMEOUT_SECS", v, 1u64, 3600)?,
                None => 30,
            }),
        })
    }
}

/// Parses `LISTEN_ADDR`: `:8080` means every interface; `host:port`, `[v6]:port` as usual.
pub fn parse_listen_addr(raw: &str) -> Result<std::net::SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| ConfigError {
        variable: "LISTEN_ADDR",
        message: format!("invalid address {raw:?}: {why}; expected :PORT, HOST:PORT or [V6]:PORT"),
    };
    let full = if raw.starts_with(':') { format!("0.0.0.0{raw}") } else { raw.to_string() };
    let mut addrs = full.to_socket_addrs().map_err(|e| bad(&e.to_string()))?;
    addrs.next().ok_or_else(|| bad("it resolves to no address"))
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
        assert!(c.http_threads >= 4);
        assert_eq!(c.max_body_bytes, 32 << 20);
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
            (&[("COMPACTION_INTERVAL_SECS", "soon")], "COMPACTION_INTERVAL_SECS"),
            (&[("STALE_CLIENT_DAYS", "0")], "STALE_CLIENT_DAYS"),
            (&[("PUSH_ROLE", "bad role")], "PUSH_ROLE"),
            (&[("CONFLICT_RESOLVER", "client_wins")], "CONFLICT_RESOLVER"),
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
    fn help_lists_every_variable_with_its_default() {
        let help = help_text();
        for v in VARS {
            assert!(help.contains(v.name) && help.contains(v.default), "{}", v.name);
        }
    }
}
