//! What `wcluster status|reload|rollback|scale` and the primary say to each
//! other: one JSON request line, one JSON reply line, every field typed.
//! Outcomes and reasons are enums; they become text only where a person
//! reads them (the `Display` impls, used by the client and the logs).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ipc::WorkerCounts;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Deploy the handler file, or the manifest and all it names; with a
    /// `handler`, only that handler's file.
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handler: Option<String>,
    },
    /// The previous good version of the app, or of one `handler` alone.
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handler: Option<String>,
    },
    Scale {
        workers: usize,
    },
    /// The counters behind the admin endpoint's /metrics.
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Deploy(DeployOutcome),
    Scale(ScaleOutcome),
    Metrics(Box<MetricsSnapshot>),
    Refused { reason: Refusal },
}

impl Reply {
    /// Whether the command did what was asked (the client's exit status).
    pub fn ok(&self) -> bool {
        match self {
            Reply::Status(_) | Reply::Scale(_) | Reply::Metrics(_) => true,
            Reply::Deploy(d) => d.ok(),
            Reply::Refused { .. } => false,
        }
    }
}

/// Why a command was not carried out at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Refusal {
    /// A deploy or rollback is rolling; rollback waits for it to end.
    Busy,
    NoPreviousVersion,
    ShuttingDown,
    WorkersOutOfRange {
        asked: usize,
        min: usize,
        max: usize,
    },
    BadRequest {
        error: String,
    },
    /// No handler of the application has this name.
    UnknownHandler {
        name: String,
        known: Vec<String>,
    },
    /// The client runs as another user than the server (and not as root).
    NotPermitted {
        uid: u32,
        server: u32,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Busy => write!(f, "a deploy is in progress; try again when it ends"),
            Refusal::NoPreviousVersion => write!(f, "no previous version to roll back to"),
            Refusal::ShuttingDown => write!(f, "the server is shutting down"),
            Refusal::WorkersOutOfRange { asked, min, max } => write!(
                f,
                "cannot scale to {asked} workers: between {min} and {max} (--max-workers)"
            ),
            Refusal::BadRequest { error } => write!(f, "bad request: {error}"),
            Refusal::UnknownHandler { name, known } => write!(
                f,
                "no handler is named `{name}` (the application has: {})",
                known.join(", ")
            ),
            Refusal::NotPermitted { uid, server } => write!(
                f,
                "uid {uid} may not control this server: only its own user (uid {server}) and root may"
            ),
        }
    }
}

/// What started a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployKind {
    /// The version the server started with.
    Start,
    /// The file changed, SIGHUP, or `wcluster reload`.
    Deploy,
    Rollback,
    /// A worker came up on an older version (spawned during a roll) and is
    /// brought up to date.
    CatchUp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOutcome {
    pub kind: DeployKind,
    /// The version the deploy was for (none when the file could not be read).
    pub version: Option<String>,
    #[serde(flatten)]
    pub result: DeployResult,
}

impl DeployOutcome {
    pub fn ok(&self) -> bool {
        !matches!(
            self.result,
            DeployResult::Refused { .. } | DeployResult::RolledBack { .. }
        )
    }
}

impl DeployResult {
    /// Its name, as in the JSON (`outcome`) and the metrics' label.
    pub fn name(&self) -> &'static str {
        match self {
            DeployResult::Started => "started",
            DeployResult::Rolled { .. } => "rolled",
            DeployResult::Unchanged => "unchanged",
            DeployResult::Refused { .. } => "refused",
            DeployResult::RolledBack { .. } => "rolled_back",
            DeployResult::Abandoned => "abandoned",
        }
    }
}

impl DeployKind {
    pub fn name(&self) -> &'static str {
        match self {
            DeployKind::Start => "start",
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
            DeployKind::CatchUp => "catch_up",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeployResult {
    /// Serving since start-up.
    Started,
    /// Every ready worker runs the version now.
    Rolled {
        generation: u64,
        workers: usize,
        ms: u64,
    },
    /// The file's content is what every worker already runs.
    Unchanged,
    /// The file never reached a worker (it is not a handler, or could not
    /// be compiled).
    Refused { error: DeployError },
    /// A worker refused it or was lost while loading it: the workers that
    /// had switched went back to `kept`.
    RolledBack { error: DeployError, kept: String },
    /// The server began shutting down before the roll ended.
    Abandoned,
}

/// Why a deploy failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum DeployError {
    /// Reading, checking or compiling the file failed (the compile child's words).
    Compile { message: String },
    /// The worker loaded it and its smoke check (or loading) failed.
    WorkerRefused { worker: usize, message: String },
    /// The worker died or its channel broke while loading it.
    WorkerLost { worker: usize },
    /// The worker did not answer within the load deadline; it was killed.
    WorkerTimedOut { worker: usize, after_ms: u64 },
    /// No worker became ready to try it (the canary) within the deadline.
    NoReadyWorker { after_ms: u64 },
}

impl fmt::Display for DeployError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeployError::Compile { message } => write!(f, "{message}"),
            DeployError::WorkerRefused { worker, message } => {
                write!(f, "worker {worker} refused it: {message}")
            }
            DeployError::WorkerLost { worker } => {
                write!(f, "worker {worker} was lost while loading it")
            }
            DeployError::WorkerTimedOut { worker, after_ms } => write!(
                f,
                "worker {worker} did not finish loading it within {after_ms} ms (--smoke-timeout + margin); it was replaced"
            ),
            DeployError::NoReadyWorker { after_ms } => write!(
                f,
                "no worker was ready to try it within {after_ms} ms (are workers crash-looping?)"
            ),
        }
    }
}

impl fmt::Display for DeployOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self.version.as_deref().unwrap_or("(unread)");
        let kind = match self.kind {
            DeployKind::Start => "start",
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
            DeployKind::CatchUp => "catch-up",
        };
        match &self.result {
            DeployResult::Started => write!(f, "started on {version}"),
            DeployResult::Rolled {
                generation,
                workers,
                ms,
            } => write!(
                f,
                "{kind}: {version} on {workers} workers in {ms} ms (generation {generation})"
            ),
            DeployResult::Unchanged => write!(f, "{kind}: {version} unchanged, nothing to do"),
            DeployResult::Refused { error } => write!(f, "{kind} refused: {error}"),
            DeployResult::RolledBack { error, kept } => {
                write!(f, "{kind} of {version} rolled back to {kept}: {error}")
            }
            DeployResult::Abandoned => write!(f, "{kind} of {version} abandoned: shutting down"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleOutcome {
    /// The number of workers asked for.
    pub target: usize,
    /// True when a roll is in progress: the change applies when it ends.
    pub deferred: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned, loading the handler; gets no connections yet.
    Starting,
    /// In the rotation.
    Ready,
    /// Finishing its requests before it exits; gets no connections.
    Draining,
    /// Gone (a replacement may be scheduled).
    Exited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub index: usize,
    pub pid: Option<u32>,
    pub state: WorkerState,
    pub version: String,
    pub requests: u64,
    pub in_flight: u32,
    /// It holds --max-connections connections and is sent no more.
    pub at_capacity: bool,
    /// Times this slot's worker was replaced after dying.
    pub restarts: u64,
}

/// One handler of the application, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerStatus {
    pub name: String,
    /// Its live version (a content hash of its file).
    pub version: String,
    pub routes: Vec<String>,
    pub source: String,
    /// What `wcluster rollback NAME` would put back.
    pub previous: Option<String>,
    /// The last deploy that changed or tried to change it.
    pub last_deploy: Option<DeployOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The last good version: what every worker should run.
    pub version: String,
    /// Counts successful rolls; 1 is the version the server started with.
    pub generation: u64,
    pub previous: Option<String>,
    pub deploying: bool,
    /// Workers asked for (by --workers, `scale`, TTIN/TTOU).
    pub target_workers: usize,
    /// A scale asked for during a roll, applied when it ends.
    pub pending_target: Option<usize>,
    pub last_deploy: DeployOutcome,
    /// The application's handlers, in manifest order (one without a manifest).
    #[serde(default)]
    pub handlers: Vec<HandlerStatus>,
    /// The most recent deploys, oldest first.
    pub history: Vec<DeployOutcome>,
    pub workers: Vec<WorkerStatus>,
    /// Connections accepted and waiting for a worker.
    pub queued_connections: usize,
    /// Connections sent to a worker that has not acknowledged them yet.
    pub connections_in_transit: usize,
}

/// What /metrics is made of: the status, every live worker's counters, the
/// counters of workers that are gone, and the primary's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub status: Status,
    /// Counters of the live workers, in slot order (`status.workers`).
    pub workers: Vec<WorkerCounts>,
    /// Counters of workers that are gone, so totals never go down.
    pub retired: WorkerCounts,
    pub connections_accepted: u64,
    pub connections_handed_off: u64,
    /// Accepted and closed unserved (only when shutting down).
    pub connections_refused: u64,
    /// Deploys by kind and outcome, since start.
    pub deploys: Vec<DeployCount>,
    /// How long ago the last deploy ended.
    pub last_deploy_age_ms: u64,
    /// How long the live version took to compile (0: it came from the cache).
    pub compile_ms: u64,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployCount {
    pub kind: DeployKind,
    pub outcome: String,
    pub count: u64,
}
