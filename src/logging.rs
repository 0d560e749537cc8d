//! Logging through the [`log`] facade, with structured fields.
//!
//! synchro logs with [`info!`](crate::info), [`warn!`](crate::warn), [`error!`](crate::error)
//! and [`debug!`](crate::debug): a message and `key = value` fields,
//! `crate::warn!("slot lost", slot = name.clone(), lsn = lsn.to_string())`. Each line becomes one
//! [`log::Record`]: its target is the calling module (`synchro::http::server`, ...), its message
//! the text, and its key-values (log's `kv` API) the fields, plus `request_id` while the thread
//! serves an HTTP request ([`set_request_id`]).
//!
//! # Where the records go
//!
//! The library installs no logger. Without one the facade drops every record, and the macros
//! do not even build the fields, as with any crate that logs through `log`:
//!
//! * The `synchrod` binary installs [`JsonLogger`] with [`install_json_logger`]: one JSON object
//!   per line (`ts`, `level`, `msg`, `request_id`, then the fields), filtered by `LOG_LEVEL`.
//! * An application that embeds synchro installs its own `log` logger (`env_logger`,
//!   `simplelog`, a bridge to `tracing`, ...) and receives synchro's records beside its own;
//!   `record.key_values()` holds the fields. It may filter on targets under `synchro::`, and
//!   should call [`set_level`] (or `log::set_max_level`) since the facade's default level is off.
//!   Or it installs [`JsonLogger`] to get the binary's format.
//!
//! Never log tokens, passwords or connection strings with credentials: callers pass
//! [`redact_url`] output instead of raw URLs.

use std::cell::RefCell;

use crate::config::LogLevel;

mod json;

pub use json::{install_json_logger, JsonLogger};
pub use serde_json::Value;

thread_local! {
    /// The id of the request this thread is serving, added to every record it logs.
    static REQUEST_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Sets (or clears) the request id of the current thread: every record logged on this thread
/// until it is cleared carries it as the `request_id` field.
pub fn set_request_id(id: Option<String>) {
    let _ = REQUEST_ID.try_with(|r| *r.borrow_mut() = id);
}

/// The `log` level of a `LOG_LEVEL`.
pub fn to_log_level(level: LogLevel) -> log::Level {
    match level {
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Info => log::Level::Info,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Error => log::Level::Error,
    }
}

/// Sets the facade's maximum level (`log::set_max_level`): records below `level` are dropped
/// before their fields are built, whichever logger is installed.
pub fn set_level(level: LogLevel) {
    log::set_max_level(to_log_level(level).to_level_filter());
}

/// True when a record at `level` passes the facade's maximum level.
pub fn enabled(level: LogLevel) -> bool {
    to_log_level(level) <= log::max_level()
}

/// The fields of one record, as log's key-values: the thread's request id, then the caller's.
struct Fields<'a> {
    request_id: Option<&'a str>,
    fields: &'a [(&'a str, Value)],
}

impl log::kv::Source for Fields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn log::kv::VisitSource<'kvs>) -> Result<(), log::kv::Error> {
        if let Some(id) = self.request_id {
            visitor.visit_pair(log::kv::Key::from_str("request_id"), log::kv::Value::from(id))?;
        }
        for (key, value) in self.fields {
            visitor.visit_pair(log::kv::Key::from_str(key), to_kv(value))?;
        }
        Ok(())
    }

    fn count(&self) -> usize {
        usize::from(self.request_id.is_some()) + self.fields.len()
    }
}

/// A field as a `log` value: numbers, strings, booleans and null keep their type; arrays and
/// objects are passed as their JSON text.
fn to_kv(value: &Value) -> log::kv::Value<'_> {
    match value {
        Value::Null => log::kv::Value::null(),
        Value::Bool(b) => log::kv::Value::from(*b),
        Value::String(s) => log::kv::Value::from(s.as_str()),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => log::kv::Value::from(u),
            (None, Some(i), _) => log::kv::Value::from(i),
            (None, None, Some(f)) => log::kv::Value::from(f),
            (None, None, None) => log::kv::Value::from_display(n),
        },
        Value::Array(_) | Value::Object(_) => log::kv::Value::from_display(value),
    }
}

/// Hands one record to the installed logger. The logging macros expand to this (behind an
/// [`enabled`] check); `target` is the calling module's path.
pub fn emit(level: LogLevel, target: &'static str, file: &'static str, line: u32, msg: &str, fields: &[(&str, Value)]) {
    let level = to_log_level(level);
    if level > log::max_level() {
        return;
    }
    // Copied out rather than borrowed across the call: the logger is foreign code.
    let request_id = REQUEST_ID.try_with(|r| r.borrow().clone()).ok().flatten();
    let fields = Fields { request_id: request_id.as_deref(), fields };
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(target)
            .module_path_static(Some(target))
            .file_static(Some(file))
            .line(Some(line))
            .args(format_args!("{msg}"))
            .key_values(&fields)
            .build(),
    );
}

/// A connection string with its passwords replaced by `***`, safe to log (see
/// [`crate::pg::url::redact`]).
pub fn redact_url(url: &str) -> String {
    crate::pg::url::redact(url)
}

/// What the four logging macros expand to: nothing is built unless the level is enabled.
#[doc(hidden)]
#[macro_export]
macro_rules! __synchro_log {
    ($level:expr, $msg:expr $(, $k:ident = $v:expr)*) => {
        if $crate::logging::enabled($level) {
            $crate::logging::emit(
                $level,
                module_path!(),
                file!(),
                line!(),
                $msg,
                &[$((stringify!($k), $crate::logging::Value::from($v))),*],
            )
        }
    };
}

/// Logs at `info`: `info!("message", key = value, ...)` with values convertible to JSON.
#[macro_export]
macro_rules! info {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__synchro_log!($crate::config::LogLevel::Info, $msg $(, $k = $v)*)
    };
}

/// Logs at `warn`.
#[macro_export]
macro_rules! warn {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__synchro_log!($crate::config::LogLevel::Warn, $msg $(, $k = $v)*)
    };
}

/// Logs at `error`.
#[macro_export]
macro_rules! error {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__synchro_log!($crate::config::LogLevel::Error, $msg $(, $k = $v)*)
    };
}

/// Logs at `debug`.
#[macro_export]
macro_rules! debug {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__synchro_log!($crate::config::LogLevel::Debug, $msg $(, $k = $v)*)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("host=h password=secret user=u"), "host=h password=*** user=u");
    }
}
