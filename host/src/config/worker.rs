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

/// What bounds connections and the worker's turns; a request's deadline
/// and body size are its handler's (`HandlerLimits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLimits {
    /// Also bounds a new connection's first bytes (its HTTP/2 preface).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A response the client takes nothing of this long ends its connection.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
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
    /// --max-config-size: a larger file refuses the deploy.
    pub max_file_size: u64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyValueBackend {
    /// Not granted (no --keyvalue): every operation fails, naming the flag.
    Off,
    /// The database file.
    Sqlite(PathBuf),
    /// redis://[:PASSWORD@]HOST:PORT[/DB]: a secret, never shown as it is.
    Redis(String),
}

/// The Redis URL with its credentials replaced, should a grant be printed.
impl std::fmt::Debug for KeyValueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("Off"),
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Redis(url) => f.debug_tuple("Redis").field(&redact_url(url)).finish(),
        }
    }
}

/// `url` fit to show: what precedes the last `@` after `scheme://` (user and
/// password) becomes `***`, and so does a query (`?...`), which may hold a
/// password too. Without `://`, whatever precedes an `@` is hidden all the same.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (hidden, rest) = match rest.rfind('@') {
        Some(at) => ("***", &rest[at..]),
        None => ("", rest),
    };
    match rest.split_once('?') {
        Some((rest, _)) => format!("{scheme}{hidden}{rest}?***"),
        None => format!("{scheme}{hidden}{rest}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValueGrant {
    pub backend: KeyValueBackend,
    pub max_key: usize,
    pub max_value: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Keys in one get-many, set-many or delete-many.
    pub max_batch: usize,
    /// Bytes (keys and values) one batch carries, either way.
    pub max_batch_bytes: u64,
    /// The whole store's size.
    pub max_bytes: u64,
    /// The buckets the handler may open (a manifest's `key_value_stores`);
    /// None: any (the one-handler mode).
    #[serde(default)]
    pub buckets: Option<Vec<String>>,
}

impl Default for KeyValueGrant {
    fn default() -> Self {
        Self {
            backend: KeyValueBackend::Off,
            max_key: 1024,
            max_value: 1 << 20,
            timeout: Duration::from_secs(2),
            max_batch: 1000,
            max_batch_bytes: 4 << 20,
            max_bytes: 256 << 20,
            buckets: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
}

/// One compiled version of the handler, as it travels from the primary to
/// a worker and into the worker's handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The compiled artifact in the cache directory.
    pub artifact: PathBuf,
    /// Short content hash of the handler file: what logs and metrics show.
    pub id: String,
    /// SHA-256 of the artifact, checked before it is loaded.
    pub digest: String,
}

/// The first message a worker receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInit {
    pub index: usize,
    /// The application to serve first: its handlers, their grants and limits.
    pub app: super::app::App,
    pub engine: EngineSettings,
    pub limits: RequestLimits,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// HTTPS: the PEM files (certificate chain, private key) of --tls-cert
    /// and --tls-key, which the primary has checked; the worker loads them
    /// and follows their changes (worker/tls.rs). None: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `--reuse-instances`: how many requests one component instance serves
/// before it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reuse {
    /// Not given: WASI 0.3 instances are reused (`DEFAULT_LIFETIME`), WASI
    /// 0.2 ones serve one request each, as in each ABI's ecosystem.
    Default,
    /// `0`: a fresh instance for every request, whatever the ABI.
    Never,
    /// `N` or `MIN-MAX`: every instance serves a number of requests drawn
    /// at random in this range, so no guest can count on its lifetime.
    Lifetime { min: u32, max: u32 },
}

impl Reuse {
    /// What a WASI 0.3 instance serves by default: `wasmtime serve -Sp3`
    /// reuses one for up to 128 requests.
    pub const DEFAULT_LIFETIME: (u32, u32) = (64, 128);

    /// `0`, `N` or `MIN-MAX`, as `--reuse-instances` takes it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let number = |n: &str| {
            n.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{n}` is not a number of requests"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(s)?;
                (n, n)
            }
        };
        match (min, max) {
            (0, 0) => Ok(Reuse::Never),
            (0, _) => Err(format!("`{s}`: an instance serves at least one request")),
            (min, max) if min > max => Err(format!("`{s}`: the range is empty ({min} > {max})")),
            (min, max) => Ok(Reuse::Lifetime { min, max }),
        }
    }
}

/// The request every new version must answer before it goes live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeCheck {
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}
