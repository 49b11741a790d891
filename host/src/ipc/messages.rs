//! What crosses the primary <-> worker channel: one enum each way, as JSON,
//! and the settings a worker is started with. No I/O here: the decoder is a
//! pure function of the bytes, fuzzed by fuzz/fuzz_targets/ipc_decode.rs.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Messages the primary sends to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Everything the worker needs to load the handler; always the first message.
    Init(Box<WorkerInit>),
    /// A client connection; its fd rides along. Acknowledge with `Accepted`.
    Conn { id: u64 },
    /// Load this artifact, smoke-check it and swap it in; answer `Loaded`
    /// or `LoadFailed`. Requests in flight finish on the old version.
    Load { artifact: PathBuf, version: String },
    /// Stop taking connections, finish what is in flight, exit.
    Drain,
}

/// Messages a worker sends to the primary.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToPrimary {
    /// The handler is loaded and pre-instantiated; send connections.
    Ready { version: String },
    /// The worker owns connection `id` now; the primary may close its copy.
    Accepted { id: u64 },
    /// Loading failed; the worker exits after sending this.
    Failed { error: String },
    /// `version` passed its smoke check and serves new requests now.
    Loaded { version: String },
    /// `version` was refused; the worker goes on with what it had.
    LoadFailed { version: String, error: String },
    /// Sent every second: requests served so far, and in flight now.
    Stats { requests: u64, in_flight: u32 },
}

/// Decodes one message; anything malformed is an `InvalidData` error.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<M> {
    serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// What the engine is built from; identical in the compile child and in every
/// worker so that artifacts are compatible.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineSettings {
    pub max_memory: u64,
    pub max_concurrent: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLimits {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_body: u64,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent: u32,
}

/// Capabilities granted to the guest; empty by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Grants {
    pub env: Vec<(String, String)>,
    pub dirs: Vec<DirGrant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
}

/// The first message a worker receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInit {
    pub index: usize,
    pub artifact: PathBuf,
    pub version: String,
    pub engine: EngineSettings,
    pub limits: RequestLimits,
    pub grants: Grants,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub smoke: SmokeCheck,
    /// 0: a fresh instance per request; N: an instance serves up to N.
    pub reuse_instances: u32,
}

/// The request every new version must answer before it goes live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeCheck {
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}
