//! Deployment mode A: an application with its own HTTP routes and its own authentication that
//! embeds synchro under `/sync/`.
//!
//! ```sh
//! DATABASE_URL=postgres://... SYNC_TABLES=tasks cargo run --example embedded
//! ```
//!
//! The application serves its own routes on synchro's HTTP server: requests to the sync
//! endpoints go to synchro's router after the application's own authentication (here a demo
//! session header), every other path to the application's [`Fallback`], under the same limits.
//! synchro's log records reach the application's own `log` logger (here a few lines printing
//! to stderr), fields included.

use std::sync::Arc;
use std::time::Duration;

use synchro::config::Config;
use synchro::engine::Engine;
use synchro::http::routes::Router;
use synchro::http::{AuthFailure, Authenticator, Fallback, HttpConfig, HttpServer, Reply, Request};
use synchro::service::EngineApi;
use synchro::types::UserId;
use synchro::version::VersionGate;

/// The application's own authentication: a session token mapped to a user (a stand-in for a
/// real session store).
struct SessionAuth;

impl Authenticator for SessionAuth {
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure> {
        match header("x-session").as_deref() {
            Some("session-alice") => Ok(UserId::new("alice").expect("non-empty")),
            Some("session-bob") => Ok(UserId::new("bob").expect("non-empty")),
            _ => Err(AuthFailure::refused("invalid session", "unknown session")),
        }
    }
}

/// The application's own routes: every path that is not a sync endpoint.
struct AppRoutes {
    /// Told when `/shutdown` is requested.
    stop: crossbeam_channel::Sender<()>,
}

impl Fallback for AppRoutes {
    fn handle(&self, request: &Request) -> Reply {
        match (request.method(), request.path()) {
            ("GET", "/hello") => Reply::text(200, "hello from the app"),
            ("GET", "/shutdown") => {
                let _ = self.stop.try_send(());
                Reply::text(200, "bye")
            }
            _ => Reply::text(404, "not found"),
        }
    }
}

/// The application's own logger: synchro logs through the `log` facade, so its records arrive
/// here with their structured fields (`record.key_values()`) beside the application's.
struct AppLogger;

impl log::Log for AppLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        struct Fields(String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {key}={value}"));
                Ok(())
            }
        }
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        eprintln!("[app] {} {}: {}{}", record.level(), record.target(), record.args(), fields.0);
    }

    fn flush(&self) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    vars.entry("LOG_LEVEL".into()).or_insert_with(|| "warn".into());
    let config = Config::from_vars(&vars)?;
    log::set_logger(&AppLogger)?;
    synchro::logging::set_level(config.log_level);

    // synchro's pieces, composed by the application.
    synchro::server::migrate(&config)?;
    let settings = synchro::server::engine_settings(&config)?;
    let pool = synchro::store::pool::connect_pool(&config.database_url, 8)?;
    let engine = Arc::new(Engine::new(pool, settings)?);
    let capture = synchro::server::start_capture(&config, &engine)?;
    let router = Router {
        api: Arc::new(EngineApi::new(engine.clone(), Some(capture.status.clone()), &config.slot_name)),
        auth: Arc::new(SessionAuth),
        gate: VersionGate::new(&config.min_client_version),
        // Plug the application's own rate limits or maintenance switch in here.
        admission: Arc::new(synchro::http::AdmitAll),
    };

    // One server for the application's routes and synchro's, with synchro's limits.
    let (stop, stopped) = crossbeam_channel::bounded(1);
    let mut http = HttpConfig::new("127.0.0.1:0".parse()?);
    http.max_body_bytes = config.max_body_bytes;
    let server = HttpServer::start_with_fallback(http, router, Arc::new(AppRoutes { stop }))?;
    println!("listening on {}", server.local_addr());
    let _ = stopped.recv();
    // Graceful: the `/shutdown` response and any request in flight are finished first.
    server.shutdown(Duration::from_secs(10));
    capture.stop();
    Ok(())
}
