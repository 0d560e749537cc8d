//! The JSON-lines logger `synchrod` installs: one JSON object per record.
//!
//! `{"level":"warn","msg":"...","request_id":"...","ts":"2024-05-01T12:00:00.000000Z", ...fields}`:
//! `ts` in the contract's UTC format, the record's key-values as fields with their JSON types
//! (numbers stay numbers), and `target` for records from other crates.

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use log::kv::{self, VisitSource, VisitValue};
use serde_json::{Map, Number, Value};

use crate::config::LogLevel;

/// A `log` logger writing one JSON object per line.
///
/// synchro's own records (targets `synchro` and `synchrod` and below) pass at the facade's level
/// ([`set_level`](super::set_level)); other crates' records (the `postgres` driver, the pool,
/// the HTTP library) only at `warn` and `error`, since their debug output can hold query
/// parameters, that is user data. Write errors are ignored: logging must never take the
/// server down.
pub struct JsonLogger<W = std::io::Stdout> {
    out: Mutex<W>,
}

impl JsonLogger<std::io::Stdout> {
    /// A logger writing to standard output.
    pub fn stdout() -> JsonLogger<std::io::Stdout> {
        JsonLogger::new(std::io::stdout())
    }
}

impl<W: Write + Send> JsonLogger<W> {
    /// A logger writing to `out`, one `write_all` per line.
    pub fn new(out: W) -> JsonLogger<W> {
        JsonLogger { out: Mutex::new(out) }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Installs a [`JsonLogger`] on `out` as the process's `log` logger and sets the facade's level.
/// Fails when a logger is already installed (the facade takes one per process).
pub fn install_json_logger<W: Write + Send + 'static>(out: W, level: LogLevel) -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(JsonLogger::new(out)))?;
    super::set_level(level);
    Ok(())
}

/// Whether a target is synchro's (the library's modules or the binary's).
fn is_ours(target: &str) -> bool {
    ["synchro", "synchrod"]
        .iter()
        .any(|name| target.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
}

impl<W: Write + Send> log::Log for JsonLogger<W> {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level() && (is_ours(metadata.target()) || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = render(record, SystemTime::now());
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(PoisonError::into_inner).flush();
    }
}

/// One record as a JSON object (without the newline).
pub(crate) fn render(record: &log::Record, now: SystemTime) -> String {
    let mut obj = Map::new();
    let _ = record.key_values().visit(&mut Collect(&mut obj));
    if !is_ours(record.target()) {
        obj.insert("target".into(), Value::from(record.target()));
    }
    obj.insert("ts".into(), Value::from(crate::time::format_timestamp(now)));
    obj.insert("level".into(), Value::from(record.level().as_str().to_ascii_lowercase()));
    obj.insert("msg".into(), Value::from(record.args().to_string()));
    Value::Object(obj).to_string()
}

/// Collects key-values into a JSON object.
struct Collect<'m>(&'m mut Map<String, Value>);

impl<'kvs> VisitSource<'kvs> for Collect<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let mut json = ToJson(Value::Null);
        value.visit(&mut json)?;
        self.0.insert(key.as_str().to_string(), json.0);
        Ok(())
    }
}

/// One `log` value as JSON: typed where `log` keeps the type, else its text.
struct ToJson(Value);

impl<'v> VisitValue<'v> for ToJson {
    fn visit_any(&mut self, value: kv::Value) -> Result<(), kv::Error> {
        self.0 = Value::String(value.to_string());
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = Value::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = Value::from(value);
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = Value::from(value);
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        self.0 = u64::try_from(value).map(Value::from).unwrap_or_else(|_| Value::String(value.to_string()));
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        self.0 = i64::try_from(value).map(Value::from).unwrap_or_else(|_| Value::String(value.to_string()));
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        self.0 = Number::from_f64(value).map(Value::Number).unwrap_or(Value::Null);
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = Value::Bool(value);
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.0 = Value::from(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Once;

    use log::Log;

    use super::*;
    use crate::config::LogLevel;
    use crate::logging::set_request_id;

    thread_local! {
        static CAPTURED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// The process's logger in this test binary: each thread's records, rendered like
    /// `JsonLogger` renders them, into that thread's buffer, so tests running side by side do
    /// not see each other's lines.
    struct Capture;

    impl Log for Capture {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            JsonLogger::new(Vec::new()).enabled(metadata)
        }

        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                CAPTURED.with(|c| c.borrow_mut().push(render(record, SystemTime::UNIX_EPOCH)));
            }
        }

        fn flush(&self) {}
    }

    /// Runs `f` with the capturing logger installed at `debug` and returns the lines it logged.
    fn captured(f: impl FnOnce()) -> Vec<Value> {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&Capture).expect("the only logger of this test binary");
            crate::logging::set_level(LogLevel::Debug);
        });
        CAPTURED.with(|c| c.borrow_mut().clear());
        f();
        CAPTURED.with(|c| c.borrow_mut().drain(..).map(|l| serde_json::from_str(&l).unwrap()).collect())
    }

    #[test]
    fn the_macros_reach_the_logger_with_typed_fields() {
        let lines = captured(|| {
            crate::warn!("slot \"x\" lost", lsn = "0/16", n = 3, ok = true, nothing = None::<String>, ratio = 0.5);
            crate::debug!("detail");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let v = &lines[0];
        assert_eq!((v["level"].as_str(), v["msg"].as_str()), (Some("warn"), Some("slot \"x\" lost")));
        assert_eq!((v["lsn"].as_str(), v["n"].as_u64(), v["ok"].as_bool()), (Some("0/16"), Some(3), Some(true)));
        assert_eq!((v["nothing"].is_null(), v["ratio"].as_f64()), (true, Some(0.5)));
        assert_eq!(v["ts"], "1970-01-01T00:00:00Z");
        assert!(v.get("target").is_none() && v.get("request_id").is_none(), "{v}");
        assert_eq!(lines[1]["level"], "debug");
    }

    #[test]
    fn the_request_id_is_a_field_of_every_record_while_it_is_set() {
        let lines = captured(|| {
            set_request_id(Some("rid-7".into()));
            crate::info!("request", status = 200);
            set_request_id(None);
            crate::info!("after");
        });
        assert_eq!(lines[0]["request_id"], "rid-7");
        assert_eq!(lines[0]["status"], 200);
        assert!(lines[1].get("request_id").is_none(), "{}", lines[1]);
    }

    #[test]
    fn other_crates_pass_only_at_warn_and_name_their_target() {
        let logger = JsonLogger::new(Vec::new());
        let record = |level, target| log::Record::builder().level(level).target(target).args(format_args!("m")).build();
        crate::logging::set_level(LogLevel::Debug);
        logger.log(&record(log::Level::Debug, "tokio_postgres::query"));
        logger.log(&record(log::Level::Info, "r2d2"));
        logger.log(&record(log::Level::Warn, "r2d2"));
        logger.log(&record(log::Level::Debug, "synchro::capture"));
        logger.log(&record(log::Level::Debug, "synchrod"));
        logger.log(&record(log::Level::Error, "synchronizer"));
        let text = String::from_utf8(logger.into_inner()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let targets: Vec<Option<&str>> = lines.iter().map(|v| v["target"].as_str()).collect();
        assert_eq!(targets, vec![Some("r2d2"), None, None, Some("synchronizer")], "{text}");
    }

    #[test]
    fn structured_values_and_large_numbers_survive() {
        let lines = captured(|| {
            crate::error!("e", big = u64::MAX, neg = -5i64, list = serde_json::json!(["a", 1]));
        });
        assert_eq!(lines[0]["big"].as_u64(), Some(u64::MAX));
        assert_eq!(lines[0]["neg"].as_i64(), Some(-5));
        assert_eq!(lines[0]["list"], "[\"a\",1]", "arrays travel as their JSON text");
    }
}
