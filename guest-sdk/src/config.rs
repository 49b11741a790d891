//! Configuration from the host: `wasi:config/store`.
//!
//! Settings that differ between deployments (a greeting, an upstream URL, a
//! feature switch) belong outside the `.wasm`, so the same build runs in
//! every environment. wcluster serves what `--config KEY=VALUE` and
//! `--config-file FILE` give it; `wasmtime serve -S config` what its own
//! flags give.
//!
//! ```no_run
//! use wcluster_guest::{Request, config};
//!
//! fn handle(_req: Request) -> Result<String, config::ConfigError> {
//!     let greeting = config::get("greeting")?.unwrap_or_else(|| "hello".to_string());
//!     Ok(format!("{greeting}\n"))
//! }
//! ```

use std::fmt;

use crate::bindings::wasi::config::store;

/// Why the host could not read the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The source behind the store failed (a file, a remote service).
    Upstream(String),
    /// An I/O error while reading it.
    Io(String),
}

impl From<store::Error> for ConfigError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Upstream(m) => Self::Upstream(m),
            store::Error::Io(m) => Self::Io(m),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upstream(m) => write!(f, "configuration source failed: {m}"),
            Self::Io(m) => write!(f, "configuration I/O error: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The value of `key`, or `None` when it is not set.
pub fn get(key: &str) -> Result<Option<String>, ConfigError> {
    Ok(store::get(key)?)
}

/// Every key and value, in the order the host gives them.
pub fn get_all() -> Result<Vec<(String, String)>, ConfigError> {
    Ok(store::get_all()?)
}
