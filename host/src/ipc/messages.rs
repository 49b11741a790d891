//! What crosses the primary <-> worker channel: one enum each way, as JSON.
//! The settings a worker starts with are configuration (config/worker.rs);
//! this only carries them. No I/O here: the decoder is a pure function of
//! the bytes, fuzzed by fuzz/fuzz_targets/ipc_decode.rs.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::worker::WorkerInit;

/// Messages the primary sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Everything the worker needs to load the handler; always the first message.
    Init(Box<WorkerInit>),
    /// A client connection; its fd rides along. Acknowledge with `Accepted`.
    Conn { id: u64 },
    /// Load this artifact, smoke-check it and swap it in; answer `Loaded`
    /// or `LoadFailed`. Requests in flight finish on the old version.
    Load {
        artifact: PathBuf,
        version: String,
        digest: String,
    },
    /// Stop taking connections, finish what is in flight, exit.
    Drain,
    /// Answer with `Stats` now (for `wcluster status`).
    Report,
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
    /// The worker holds --max-connections connections (`full`), or has
    /// room again: the primary sends it none while it is full, and stops
    /// accepting when every worker is.
    Capacity { full: bool },
    /// Sent every second, and at once after `Report`: requests served so
    /// far, and in flight now.
    Stats { requests: u64, in_flight: u32 },
}

/// Decodes one message; anything malformed is an `InvalidData` error.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<M> {
    serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
