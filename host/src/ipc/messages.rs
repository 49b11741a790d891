//! What crosses the primary <-> worker channel: one enum each way, as JSON.
//! The settings a worker starts with are configuration (config/worker.rs);
//! this only carries them. No I/O here: the decoder is a pure function of
//! the bytes, fuzzed by fuzz/fuzz_targets/ipc_decode.rs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::counts::WorkerCounts;
use crate::config::app::App;
use crate::config::worker::WorkerInit;

/// Messages the primary sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Everything the worker needs to load the handler; always the first message.
    Init(Box<WorkerInit>),
    /// A client connection; its fd rides along. Acknowledge with `Accepted`
    /// (connections that arrive together in one).
    Conn { id: u64 },
    /// Load this version of the application (the handlers the worker does
    /// not have yet), smoke-check them (with `smoke_all`, the handlers it
    /// keeps too: a canary checking a changed manifest as a whole) and swap
    /// the whole app in; answer `Loaded` or `LoadFailed`. Requests in
    /// flight finish on the old one.
    Load { app: Box<App>, smoke_all: bool },
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
    /// The worker owns these connections now; the primary may close its
    /// copies. One message for all that arrived together (at most 64), since
    /// each message wakes the primary.
    Accepted { ids: Vec<u64> },
    /// Loading failed; the worker exits after sending this.
    Failed { error: String },
    /// The artifact on disk is not what its version was compiled to (its
    /// digest differs): the primary compiles it again. The worker exits.
    ArtifactDamaged { error: String },
    /// `version` passed its smoke check and serves new requests now.
    Loaded { version: String },
    /// `version` was refused; the worker goes on with what it had.
    LoadFailed { version: String, error: String },
    /// The worker holds --max-connections connections (`full`), or has
    /// room again: the primary sends it none while it is full, and stops
    /// accepting when every worker is.
    Capacity { full: bool },
    /// Sent every second, and at once after `Report`: requests started so
    /// far, in flight now, and the counters behind the metrics.
    Stats {
        requests: u64,
        in_flight: u32,
        #[serde(default)]
        counts: Box<WorkerCounts>,
    },
}

/// Decodes one message; anything malformed is an `InvalidData` error.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<M> {
    serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
