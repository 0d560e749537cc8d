//! Deployment mode A: an application with its own HTTP routes and its own authentication that
//! embeds synchro under `/sync/`.
//!
//! ```sh
//! DATABASE_URL=postgres://... SYNC_TABLES=tasks cargo run --example embedded
//! ```
//!
//! The application owns the `tiny_http` server; requests under `/sync/` are handed to
//! synchro's router after the application's own authentication (here a demo session header).
//! synchro's log records reach the application's own `log` logger (here a few lines printing
//! to stderr), fields included.

use std::sync::Arc;

use synchro::config::Config;
use synchro::engine::Engine;
use synchro::http::routes::{Incoming, Router};
use synchro::http::server::{lowercase_headers, read_limited, respond};
use synchro::http::{AuthFailure, Authenticator};
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

    // The application's own server and routes.
    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("listening on {}", server.server_addr());
    for mut request in server.incoming_requests() {
        let url = request.url().to_string();
        if url == "/hello" {
            let _ = request.respond(tiny_http::Response::from_string("hello from the app"));
            continue;
        }
        if url == "/shutdown" {
            let _ = request.respond(tiny_http::Response::from_string("bye"));
            break;
        }
        if !url.starts_with("/sync/") {
            let _ = request.respond(tiny_http::Response::from_string("not found").with_status_code(404));
            continue;
        }
        let method = request.method().as_str().to_ascii_uppercase();
        let headers = lowercase_headers(&request);
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let body = read_limited(&mut request, 32 << 20);
        let mut read_body = || body.clone();
        let (_, reply) =
            router.handle(&mut Incoming { method: &method, url: &url, header: &header, read_body: &mut read_body });
        respond(request, reply);
    }
    capture.stop();
    Ok(())
}
