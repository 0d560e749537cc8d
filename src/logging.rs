//! Structured logs: one JSON object per line on stdout, filtered by `LOG_LEVEL`.
//!
//! The level is process-wide (an atomic set once at startup); everything else is passed in.
//! Never log tokens, passwords or connection strings with credentials: callers pass
//! [`redact_url`] output instead of raw URLs.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use crate::config::LogLevel;

pub use serde_json::Value;

static LEVEL: AtomicU8 = AtomicU8::new(1);

thread_local! {
    /// The id of the request this thread is serving, added to every line it logs.
    static REQUEST_ID: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Sets (or clears) the request id of the current thread.
pub fn set_request_id(id: Option<String>) {
    REQUEST_ID.with(|r| *r.borrow_mut() = id);
}

fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 0,
        LogLevel::Info => 1,
        LogLevel::Warn => 2,
        LogLevel::Error => 3,
    }
}

/// Sets the threshold below which lines are dropped.
pub fn set_level(level: LogLevel) {
    LEVEL.store(rank(level), Ordering::Relaxed);
}

/// True when a line at `level` would be written.
pub fn enabled(level: LogLevel) -> bool {
    rank(level) >= LEVEL.load(Ordering::Relaxed)
}

/// Renders one log line (without the newline).
pub fn render(level: LogLevel, msg: &str, fields: &[(&str, Value)]) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), Value::from(format_now()));
    let name = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    obj.insert("level".into(), Value::from(name));
    obj.insert("msg".into(), Value::from(msg));
    REQUEST_ID.with(|r| {
        if let Some(id) = r.borrow().as_ref() {
            obj.insert("request_id".into(), Value::from(id.clone()));
        }
    });
    for (k, v) in fields {
        obj.insert((*k).to_string(), v.clone());
    }
    Value::Object(obj).to_string()
}

/// Writes one line if `level` passes the threshold. Write errors are ignored: logging must
/// never take the server down.
pub fn emit(level: LogLevel, msg: &str, fields: &[(&str, Value)]) {
    if !enabled(level) {
        return;
    }
    let mut line = render(level, msg, fields);
    line.push('\n');
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

fn format_now() -> String {
    crate::time::format_timestamp(SystemTime::now())
}

/// A connection string with its passwords replaced by `***`, safe to log (see
/// [`crate::pgurl::redact`]).
pub fn redact_url(url: &str) -> String {
    crate::pgurl::redact(url)
}

/// Logs at `info`: `info!("message", key = value, ...)` with values convertible to JSON.
#[macro_export]
macro_rules! info {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::logging::emit($crate::config::LogLevel::Info, $msg, &[$((stringify!($k), $crate::logging::Value::from($v))),*])
    };
}

/// Logs at `warn`.
#[macro_export]
macro_rules! warn {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::logging::emit($crate::config::LogLevel::Warn, $msg, &[$((stringify!($k), $crate::logging::Value::from($v))),*])
    };
}

/// Logs at `error`.
#[macro_export]
macro_rules! error {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::logging::emit($crate::config::LogLevel::Error, $msg, &[$((stringify!($k), $crate::logging::Value::from($v))),*])
    };
}

/// Logs at `debug`.
#[macro_export]
macro_rules! debug {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        if $crate::logging::enabled($crate::config::LogLevel::Debug) {
            $crate::logging::emit($crate::config::LogLevel::Debug, $msg, &[$((stringify!($k), $crate::logging::Value::from($v))),*])
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_objects_with_fields() {
        let line = render(LogLevel::Warn, "slot \"x\" lost", &[("lsn", Value::from("0/16")), ("n", Value::from(3))]);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "slot \"x\" lost");
        assert_eq!(v["n"], 3);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("host=h password=secret user=u"), "host=h password=*** user=u");
    }
}
