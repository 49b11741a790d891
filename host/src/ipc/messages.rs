//! What crosses the primary <-> worker channel: one enum each way, as JSON.
//! The settings a worker starts with are configuration (config/worker.rs);
//! this only carries them. No I/O here: the decoder is a pure function of
//! the bytes, fuzzed by fuzz/fuzz_targets/ipc_decode.rs.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::worker::{Version, WorkerInit};

/// Messages the primary sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Everything the worker needs to load the handler; always the first message.
    Init(Box<WorkerInit>),
    /// A client connection; its fd rides along. Acknowledge with `Accepted`
    /// (connections that arrive together in one).
    Conn { id: u64 },
    /// Load this artifact, smoke-check it and swap it in; answer `Loaded`
    /// or `LoadFailed`. Requests in flight finish on the old version.
    Load(Version),
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

/// Upper bounds (seconds) of the request-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A worker's counters since it started; they only grow. The primary
/// exports their sum over the workers (and the workers that are gone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Requests answered, by method class (GET, HEAD, POST, PUT, DELETE,
    /// PATCH, OPTIONS, other) and status code.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests per DURATION_BUCKETS bucket (not cumulative), and one more
    /// for the rest; the sum of their durations in seconds.
    pub duration_buckets: Vec<u64>,
    pub duration_sum: f64,
    /// Guest calls that gave no response: trap, deadline, memory_limit,
    /// no_response, bad_gateway.
    pub guest_failures: BTreeMap<String, u64>,
    pub connections_accepted: u64,
    pub connections_open: u64,
    /// Requests refused with 503: the queue was full, or the wait too long.
    pub rejected_queue_full: u64,
    pub rejected_queue_timeout: u64,
}

impl WorkerCounts {
    /// Adds `other` into these counts (the open connections too).
    pub fn add(&mut self, other: &WorkerCounts) {
        for (method, statuses) in &other.requests {
            let mine = self.requests.entry(method.clone()).or_default();
            for (status, n) in statuses {
                *mine.entry(*status).or_default() += n;
            }
        }
        if self.duration_buckets.len() < other.duration_buckets.len() {
            self.duration_buckets
                .resize(other.duration_buckets.len(), 0);
        }
        for (mine, n) in self
            .duration_buckets
            .iter_mut()
            .zip(&other.duration_buckets)
        {
            *mine += n;
        }
        self.duration_sum += other.duration_sum;
        for (why, n) in &other.guest_failures {
            *self.guest_failures.entry(why.clone()).or_default() += n;
        }
        self.connections_accepted += other.connections_accepted;
        self.connections_open += other.connections_open;
        self.rejected_queue_full += other.rejected_queue_full;
        self.rejected_queue_timeout += other.rejected_queue_timeout;
    }
}

/// Decodes one message; anything malformed is an `InvalidData` error.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<M> {
    serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
