//! The composition root: pool, migrations, registry, HTTP workers, change capture, shutdown.

use std::fmt;

use crate::config::Config;
use crate::store::{migrations, pool};

/// Why the server could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// A store failure during startup.
    Store(pool::StoreError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<pool::StoreError> for ServerError {
    fn from(e: pool::StoreError) -> Self {
        ServerError::Store(e)
    }
}

/// Applies the infrastructure migrations and returns the steps applied.
pub fn migrate(config: &Config) -> Result<Vec<i32>, ServerError> {
    let mut client = pool::connect(&config.database_url)?;
    Ok(migrations::apply(&mut client).map_err(pool::StoreError::query("applying migrations"))?)
}

/// A callback run once the HTTP listener is bound, with the base URL (the dev banner).
pub type OnListening = Box<dyn FnOnce(&str) + Send>;

/// Runs the server until it is shut down.
pub fn run(config: Config, on_listening: Option<OnListening>) -> Result<(), ServerError> {
    migrate(&config)?;
    if let Some(f) = on_listening {
        f(&config.listen_addr);
    }
    Ok(())
}
