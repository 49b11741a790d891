//! The settings a worker process is started with: everything it needs to
//! build its engine and serve, sent to it once as `ToWorker::Init`. Plain
//! data with no I/O, so the channel's fuzz target can include it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the engine is built from; identical in the compile child and in every
/// worker so that artifacts are compatible.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineSettings {
    pub max_memory: u64,
    pub max_concurrent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLimits {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_body: u64,
    /// Also bounds a new connection's first bytes (its HTTP/2 preface).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING after this long without a frame from the client...
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_interval: Duration,
    /// ...and the connection closed if it is not answered within this.
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent: u32,
    /// Requests that may wait for a turn, and for how long.
    pub max_queued: usize,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
}

/// Capabilities granted to the guest; empty by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grants {
    pub env: Vec<(String, String)>,
    pub dirs: Vec<DirGrant>,
    pub outbound: OutboundGrant,
    pub config: ConfigGrant,
    pub keyvalue: KeyValueGrant,
}

/// Outbound HTTP: the allow-list (checked patterns) and the caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundGrant {
    pub allow: Vec<String>,
    pub ca: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub between_bytes_timeout: Duration,
    pub max_in_flight: usize,
}

impl Default for OutboundGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            ca: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_in_flight: 256,
        }
    }
}

/// wasi:config values: from flags, and from a file each worker reads again
/// when it loads a version (so a deploy picks up its changes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigGrant {
    pub vars: Vec<(String, String)>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyValueBackend {
    /// The database file.
    Sqlite(PathBuf),
    /// redis://HOST:PORT[/DB]
    Redis(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValueGrant {
    pub backend: KeyValueBackend,
    pub max_key: usize,
    pub max_value: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for KeyValueGrant {
    fn default() -> Self {
        Self {
            backend: KeyValueBackend::Sqlite(PathBuf::from("keyvalue.sqlite3")),
            max_key: 1024,
            max_value: 1 << 20,
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
}

/// The first message a worker receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInit {
    pub index: usize,
    pub artifact: PathBuf,
    pub version: String,
    /// SHA-256 of the artifact, checked before it is loaded.
    pub digest: String,
    pub engine: EngineSettings,
    pub limits: RequestLimits,
    pub grants: Grants,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub smoke: SmokeCheck,
    /// 0: a fresh instance per request; N: an instance serves up to N.
    pub reuse_instances: u32,
    /// With reuse: requests one WASI 0.3 instance serves at once.
    pub max_instance_concurrency: u32,
    /// HTTPS: the PEM files (certificate chain, private key) of --tls-cert
    /// and --tls-key, which the primary has checked; the worker loads them
    /// and follows their changes (worker/tls.rs). None: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The request every new version must answer before it goes live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeCheck {
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}
