//! The primary's control plane as one synchronous state machine that
//! performs no I/O: the worker slots, the connections in transit, the roll,
//! the deploy history and the scale target live here and nowhere else.
//!
//! The shell (primary/mod.rs) feeds it typed inputs with the time they
//! happened (`handle(now, input)`) and performs the typed effects it returns,
//! in order. It never touches a socket, a clock or tokio, so its tests drive
//! it with simulated time (tests.rs, props.rs). When nothing happens, the
//! shell still calls `handle(now, Input::Tick)` by `poll_timeout()`: every
//! wait (a respawn, a worker loading a version, a drain, the debounce of
//! file events, a status reply) has a deadline there.
//!
//! One `Core`, several files, one concern each: workers.rs (slots, spawn,
//! "a worker is gone", backoff, liveness, scale), handoff.rs (connections),
//! deploys.rs (compile, roll, rollback, history).

mod deploys;
mod handoff;
mod workers;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::balancer::RoundRobin;
use super::control::protocol::{
    DeployCount, DeployKind, MetricsSnapshot, Refusal, Reply, Request, Status,
};
use super::release::{Release, Scope};
use crate::ipc::{ToPrimary, ToWorker};
use crate::signal::SignalEvent;

pub use super::control::protocol::WorkerState;
use deploys::Deploys;
use workers::Slot;

/// A worker process: its slot and which process in that slot (a slot's
/// replacement gets a new generation, so late news of the old one is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    pub index: usize,
    pub generation: u64,
}

/// A connection the shell accepted and holds until the core says to close it.
pub type ConnId = u64;
/// A control client waiting for its reply.
pub type ControlId = u64;
/// One run of the compile child.
pub type JobId = u64;

/// Something that happened, as the shell saw it.
#[derive(Debug)]
pub enum Input {
    /// The listener accepted a connection.
    Accepted(ConnId),
    /// Sending a connection to a worker failed: `full` when the worker's
    /// channel was full (try another), otherwise the channel is broken.
    ConnNotSent {
        conn: ConnId,
        worker: WorkerId,
        full: bool,
    },
    /// The worker's process was started.
    Spawned {
        worker: WorkerId,
        pid: u32,
    },
    /// A message from a worker.
    FromWorker(WorkerId, ToPrimary),
    /// The worker's channel or process is gone, however the shell noticed.
    WorkerGone(WorkerId, Gone),
    /// The compile child finished (`Err` holds its message).
    Compiled {
        job: JobId,
        result: Result<Release, String>,
    },
    Control(ControlId, Request),
    Signal(SignalEvent),
    /// A watched file changed on disk (debounced here): what to read again.
    FileChanged(Scope),
    /// Time passed.
    Tick,
}

/// How the shell noticed a worker was gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// Its channel reached end of file.
    ChannelClosed,
    /// Writing to its channel failed.
    ChannelBroken(String),
    /// The process exited (reaped), with its status.
    Exited(String),
    /// The process could not be started.
    SpawnFailed(String),
}

/// Something the shell must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start a worker process in `worker.index` serving `release`; answer
    /// with `Spawned` or `WorkerGone(SpawnFailed)`.
    Spawn {
        worker: WorkerId,
        release: Release,
    },
    /// Send the connection's fd to the worker; answer `ConnNotSent` on failure.
    SendConn {
        worker: WorkerId,
        conn: ConnId,
    },
    /// Close the primary's copy of the connection (the worker has it, or it
    /// is refused).
    CloseConn(ConnId),
    /// Send a message to the worker (in order; no answer expected).
    Send(WorkerId, ToWorker),
    /// SIGKILL the worker's process.
    Kill(WorkerId),
    /// Read, stage and compile what `scope` names (on top of `base`, the
    /// live app); answer `Compiled`.
    Compile {
        job: JobId,
        scope: Scope,
        base: Box<crate::config::app::App>,
    },
    Reply(ControlId, Reply),
    /// A line for stdout, the contract tests and people read.
    Announce(Announcement),
    /// Close the listening socket (the drain has begun).
    StopListening,
    /// The primary is done: exit with this result.
    Exit(Result<(), StartFailure>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// Every worker is ready (once, at start-up).
    Listening { workers: usize },
    /// A deploy or rollback reached every ready worker.
    Rolled {
        version: String,
        workers: usize,
        ms: u64,
    },
    /// A deploy or rollback began rolling `version` (systemd: RELOADING).
    RollStarted { version: String },
    /// It ended, either way; `serving` is the live version (systemd: READY).
    RollEnded { serving: String },
    /// SIGTERM: not ready any more, the drain follows (systemd: STOPPING).
    Draining,
}

/// Why the primary gives up: a worker could not start the first version.
/// (Once it serves, a worker that fails is replaced instead.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// It could not load the handler: its error, as it sent it.
    Load { worker: usize, error: String },
    /// Its process or channel ended before it was ready.
    Gone { worker: usize, why: Gone },
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Load { worker, error } => {
                write!(f, "worker {worker} could not load the handler: {error}")
            }
            StartFailure::Gone { worker, why } => {
                write!(
                    f,
                    "worker {worker} exited during start-up ({})",
                    workers::describe(why)
                )
            }
        }
    }
}

impl std::error::Error for StartFailure {}

/// The core's limits and timings, from the checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workers: usize,
    pub max_workers: usize,
    /// How long a worker may take to answer `Load` (smoke timeout + margin).
    pub load_timeout: Duration,
    pub liveness_timeout: Duration,
    /// How long SIGTERM waits for workers before killing them.
    pub drain_timeout: Duration,
    /// After SIGTERM, how long readiness reads "not ready" while the
    /// cluster still accepts, before the drain begins.
    pub drain_delay: Duration,
    pub debounce: Duration,
}

/// Extra time, beyond the drain timeout, before workers are killed.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the liveness of workers is checked.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// How long `status` waits for the workers' fresh counts.
const STATUS_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Workers are loading the first version; nothing announced yet.
    Starting,
    Running,
    /// SIGTERM/SIGINT: workers finish and exit; killed at `kill_at`.
    Draining {
        kill_at: Instant,
    },
    /// `Exit` was emitted.
    Done,
}

/// A `status` request waiting for the workers' fresh counts.
struct StatusWait {
    to: ControlId,
    metrics: bool,
    waiting: HashSet<WorkerId>,
    deadline: Instant,
}

pub struct Core {
    settings: Settings,
    phase: Phase,
    slots: Vec<Slot>,
    /// Workers asked for; slots at or past it are retired when they exit.
    target: usize,
    /// A scale asked for during a roll.
    pending_target: Option<usize>,
    next_generation: u64,
    /// Processes started and not yet reaped (the drain waits for them).
    unreaped: HashSet<WorkerId>,
    balancer: RoundRobin,
    in_transit: HashMap<ConnId, WorkerId>,
    queue: VecDeque<ConnId>,
    deploys: Deploys,
    debounce_until: Option<Instant>,
    /// What the file events being debounced call for.
    changed: Option<Scope>,
    next_liveness_check: Instant,
    status_waits: Vec<StatusWait>,
    /// SIGTERM arrived; the drain begins at this time (--drain-delay).
    drain_at: Option<Instant>,
    draining_announced: bool,
    counters: Counters,
    out: Vec<Effect>,
}

/// The primary's own counters, for /metrics.
#[derive(Default)]
struct Counters {
    /// Counters of workers that are gone, so totals never go down.
    retired: crate::ipc::WorkerCounts,
    accepted: u64,
    handed_off: u64,
    refused: u64,
    deploys: std::collections::BTreeMap<(DeployKind, String), u64>,
    last_deploy: Option<Instant>,
}

impl Core {
    /// A core serving `first`; the returned effects spawn the workers.
    pub fn new(settings: Settings, first: Release, now: Instant) -> (Self, Vec<Effect>) {
        let target = settings.workers.clamp(1, settings.max_workers.max(1));
        let mut core = Core {
            phase: Phase::Starting,
            slots: Vec::new(),
            target,
            pending_target: None,
            next_generation: 1,
            unreaped: HashSet::new(),
            balancer: RoundRobin::new(),
            in_transit: HashMap::new(),
            queue: VecDeque::new(),
            deploys: Deploys::new(first),
            debounce_until: None,
            changed: None,
            next_liveness_check: now + LIVENESS_CHECK,
            status_waits: Vec::new(),
            drain_at: None,
            draining_announced: false,
            counters: Counters::default(),
            out: Vec::new(),
            settings,
        };
        core.fill_slots(now);
        let effects = std::mem::take(&mut core.out);
        (core, effects)
    }

    /// Takes one input; returns what the shell must do about it.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        if self.phase != Phase::Done {
            self.on_input(now, input);
            self.on_timers(now);
            self.converge(now);
        }
        std::mem::take(&mut self.out)
    }

    /// When the core next needs a `Tick`, at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        // Called once per loop iteration: a fold, no allocation.
        let draining = self
            .slots
            .iter()
            .filter(|s| s.state == WorkerState::Draining)
            .filter_map(|s| s.drain_deadline);
        let kill_at = match self.phase {
            Phase::Draining { kill_at } => Some(kill_at),
            _ => None,
        };
        // While an artifact is rebuilt, respawns wait for `Compiled`.
        let respawns = self
            .slots
            .iter()
            .filter_map(|s| s.respawn_at)
            .filter(|_| !self.deploys.repairing);
        respawns
            .chain(draining)
            .chain(self.deploys.deadline())
            .chain(self.debounce_until)
            .chain(self.status_waits.iter().map(|w| w.deadline))
            .chain(self.drain_at)
            .chain(kill_at)
            .fold(self.next_liveness_check, Instant::min)
            .into()
    }

    /// Whether the shell should accept connections now: not before start-up
    /// ends, not while draining, and not while no worker can take one (all
    /// at --max-connections, or none ready) or the connections already
    /// waiting fill the queue. Clients wait in the kernel's listen backlog
    /// instead of being accepted and closed.
    pub fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Running)
            && self.queue.len() < handoff::MAX_QUEUED
            && (0..self.slots.len()).any(|i| self.is_ready(i))
    }

    /// Whether a load balancer should send traffic: running, with a ready
    /// worker on the live version, and no SIGTERM yet (it flips before
    /// anything else of a drain). A worker is ready on a version only once
    /// every handler of it loaded, so this is "every handler is loaded in
    /// at least one worker".
    pub fn ready(&self) -> bool {
        let live = &self.deploys.current().version;
        self.phase == Phase::Running
            && self.drain_at.is_none()
            && self
                .slots
                .iter()
                .any(|s| s.state == WorkerState::Ready && &s.version == live)
    }

    /// Whether the process is alive and working: a ready worker, or a
    /// deliberate drain in progress.
    pub fn healthy(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
            || (self.phase == Phase::Running
                && self.slots.iter().any(|s| s.state == WorkerState::Ready))
    }

    /// The live release: what every worker runs once rolls end.
    pub fn live(&self) -> &Release {
        self.deploys.current()
    }

    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn on_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Accepted(conn) => {
                self.counters.accepted += 1;
                self.dispatch(conn)
            }
            Input::ConnNotSent { conn, worker, full } => {
                self.conn_not_sent(now, conn, worker, full)
            }
            Input::Spawned { worker, pid } => {
                if let Some(slot) = self.slot_of(worker) {
                    slot.pid = Some(pid);
                }
            }
            Input::FromWorker(worker, msg) => self.worker_said(now, worker, msg),
            Input::WorkerGone(worker, why) => self.worker_gone(now, worker, why),
            Input::Compiled { job, result } => self.compiled(now, job, result),
            Input::Control(to, request) => self.control(now, to, request),
            Input::Signal(signal) => self.signal(now, signal),
            Input::FileChanged(scope) => {
                if self.phase == Phase::Running || self.phase == Phase::Starting {
                    self.debounce_until = Some(now + self.settings.debounce);
                    self.changed = Some(match self.changed.take() {
                        Some(before) => before.merge(scope),
                        None => scope,
                    });
                }
            }
            Input::Tick => {}
        }
    }

    /// A worker could not load its first version and exits. At start-up
    /// that ends the primary; later its slot is refilled, and when the
    /// artifact was found `damaged`, only once the cache has rebuilt it.
    fn worker_failed(&mut self, now: Instant, worker: WorkerId, error: String, damaged: bool) {
        tracing::error!(
            worker = worker.index,
            "worker could not load the handler: {error}"
        );
        if self.phase == Phase::Starting {
            self.exit_now(Err(StartFailure::Load {
                worker: worker.index,
                error,
            }));
            return;
        }
        if damaged {
            tracing::warn!("the artifact is damaged: compiling the handler again");
            // The cache checks every artifact it hands out and rebuilds a
            // damaged one; the replacement waits for it.
            self.deploys.repairing = true;
        }
        self.worker_gone(now, worker, Gone::ChannelClosed);
        if damaged {
            self.repair(now);
        }
    }

    fn worker_said(&mut self, now: Instant, worker: WorkerId, msg: ToPrimary) {
        let Some(slot) = self.slot_of(worker) else {
            return;
        };
        slot.last_seen = now;
        // It is reading its channel again.
        slot.full = false;
        match msg {
            ToPrimary::Accepted { ids } => {
                for id in ids {
                    self.conn_accepted(worker, id)
                }
            }
            ToPrimary::Ready { version } => self.worker_ready(now, worker, version),
            ToPrimary::Failed { error } => self.worker_failed(now, worker, error, false),
            ToPrimary::ArtifactDamaged { error } => self.worker_failed(now, worker, error, true),
            ToPrimary::Loaded { version } => {
                if let Some(slot) = self.slot_of(worker) {
                    slot.version = version.clone();
                }
                self.roll_loaded(now, worker, version);
            }
            ToPrimary::LoadFailed { version, error } => {
                self.roll_load_failed(now, worker, version, error)
            }
            ToPrimary::Capacity { full } => {
                if let Some(slot) = self.slot_of(worker) {
                    slot.at_capacity = full;
                }
            }
            ToPrimary::Stats {
                requests,
                in_flight,
                counts,
            } => {
                if let Some(slot) = self.slot_of(worker) {
                    slot.requests = requests;
                    slot.in_flight = in_flight;
                    slot.counts = *counts;
                }
                for wait in &mut self.status_waits {
                    wait.waiting.remove(&worker);
                }
                self.answer_status_waits(now);
            }
        }
        self.flush_queue();
    }

    fn control(&mut self, now: Instant, to: ControlId, request: Request) {
        match request {
            Request::Status | Request::Metrics => {
                // Ask the ready workers for fresh counts; answer when all
                // have, or at the deadline with what is known.
                let waiting: HashSet<WorkerId> = self
                    .live_workers()
                    .filter(|(_, s)| s.state == WorkerState::Ready)
                    .map(|(id, _)| id)
                    .collect();
                for &w in &waiting {
                    self.out.push(Effect::Send(w, ToWorker::Report));
                }
                self.status_waits.push(StatusWait {
                    to,
                    metrics: request == Request::Metrics,
                    waiting,
                    deadline: now + STATUS_WAIT,
                });
                self.answer_status_waits(now);
            }
            Request::Reload { handler } => match handler {
                None => self.trigger(now, Some(to), Scope::All),
                Some(name) => {
                    if self.known_handler(to, &name) {
                        self.trigger(now, Some(to), Scope::handler(&name));
                    }
                }
            },
            Request::Rollback { handler } => match handler {
                None => self.rollback(now, to),
                Some(name) => {
                    if self.known_handler(to, &name) {
                        self.rollback_handler(now, to, &name);
                    }
                }
            },
            Request::Scale { workers } => self.scale_to(now, to, workers),
        }
    }

    fn signal(&mut self, now: Instant, signal: SignalEvent) {
        match signal {
            SignalEvent::Shutdown => self.begin_shutdown(now),
            SignalEvent::Reload => {
                tracing::info!("SIGHUP: reloading");
                self.trigger(now, None, Scope::All);
            }
            SignalEvent::ScaleUp => {
                let n = self.pending_target.unwrap_or(self.target) + 1;
                self.scale(now, n);
            }
            SignalEvent::ScaleDown => {
                let n = self.pending_target.unwrap_or(self.target).saturating_sub(1);
                self.scale(now, n);
            }
        }
    }

    /// The deadlines that have passed.
    fn on_timers(&mut self, now: Instant) {
        if self.drain_at.is_some_and(|t| now >= t) {
            self.shutdown(now);
        }
        if self.debounce_until.is_some_and(|t| now >= t) {
            self.debounce_until = None;
            let scope = self.changed.take().unwrap_or(Scope::All);
            tracing::info!("files changed: reading {scope:?} again");
            self.trigger(now, None, scope);
        }
        if now >= self.next_liveness_check {
            self.check_liveness(now);
        }
        self.respawn_due(now);
        self.roll_deadline(now);
        if self.phase == Phase::Running {
            self.drain_deadlines(now);
        }
        if self.status_waits.iter().any(|w| now >= w.deadline) {
            for w in &mut self.status_waits {
                if now >= w.deadline {
                    w.waiting.clear();
                }
            }
            self.answer_status_waits(now);
        }
        if let Phase::Draining { kill_at } = self.phase
            && now >= kill_at
        {
            tracing::warn!("workers still running after the drain timeout: killing them");
            let left: Vec<WorkerId> = self.unreaped.iter().copied().collect();
            for w in left {
                self.out.push(Effect::Kill(w));
            }
            self.exit_now(Ok(()));
        }
    }

    /// After every input: start what the state calls for (a catch-up roll,
    /// a pending scale), hand out waiting connections, and end the drain
    /// once every worker is gone.
    fn converge(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            if !self.deploys.busy()
                && let Some(target) = self.pending_target.take()
            {
                self.apply_scale(now, target);
            }
            self.catch_up(now);
        }
        self.flush_queue();
        if matches!(self.phase, Phase::Draining { .. })
            && self.unreaped.is_empty()
            && self.slots.iter().all(|s| s.state == WorkerState::Exited)
        {
            self.exit_now(Ok(()));
        }
    }

    fn answer_status_waits(&mut self, now: Instant) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.status_waits)
            .into_iter()
            .partition(|w| w.waiting.is_empty());
        self.status_waits = waiting;
        for w in done {
            let reply = if w.metrics {
                Reply::Metrics(Box::new(self.metrics(now)))
            } else {
                Reply::Status(self.status(now))
            };
            self.out.push(Effect::Reply(w.to, reply));
        }
    }

    /// The typed status, as `wcluster status --json` prints it.
    pub fn status(&self, _now: Instant) -> Status {
        let (current, previous, generation) = self.deploys.versions();
        Status {
            version: current.to_string(),
            generation,
            previous: previous.map(str::to_string),
            deploying: self.deploys.busy(),
            target_workers: self.target,
            pending_target: self.pending_target,
            last_deploy: self.deploys.last().clone(),
            handlers: self.deploys.handler_statuses(),
            history: self.deploys.history().cloned().collect(),
            workers: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| s.status(i))
                .collect(),
            queued_connections: self.queue.len(),
            connections_in_transit: self.in_transit.len(),
        }
    }

    /// What /metrics reports.
    pub fn metrics(&self, now: Instant) -> MetricsSnapshot {
        let c = &self.counters;
        MetricsSnapshot {
            status: self.status(now),
            workers: self.slots.iter().map(|s| s.counts.clone()).collect(),
            retired: c.retired.clone(),
            connections_accepted: c.accepted,
            connections_handed_off: c.handed_off,
            connections_refused: c.refused,
            deploys: c
                .deploys
                .iter()
                .map(|((kind, outcome), n)| DeployCount {
                    kind: *kind,
                    outcome: outcome.clone(),
                    count: *n,
                })
                .collect(),
            last_deploy_age_ms: c
                .last_deploy
                .map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64),
            compile_ms: self.deploys.current().compile_time.as_millis() as u64,
            ready: self.ready(),
        }
    }

    /// SIGTERM/SIGINT: readiness flips at once; the drain follows after
    /// --drain-delay, while the cluster still serves what load balancers
    /// send before they notice.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.phase == Phase::Running && !self.settings.drain_delay.is_zero() {
            self.announce_draining();
            if self.drain_at.is_none() {
                tracing::info!(
                    "shutting down: not ready; draining in {:?} (--drain-delay)",
                    self.settings.drain_delay
                );
                self.drain_at = Some(now + self.settings.drain_delay);
            }
            return;
        }
        self.shutdown(now);
    }

    fn shutdown(&mut self, now: Instant) {
        self.drain_at = None;
        match self.phase {
            Phase::Starting => {
                let all: Vec<WorkerId> = self.unreaped.iter().copied().collect();
                for w in all {
                    self.out.push(Effect::Kill(w));
                }
                self.exit_now(Ok(()));
            }
            Phase::Running => {
                tracing::info!(
                    "shutting down: draining workers (up to {:?})",
                    self.settings.drain_timeout
                );
                self.out.push(Effect::StopListening);
                self.announce_draining();
                // Connections waiting for a worker get one before the drain.
                self.flush_queue();
                self.phase = Phase::Draining {
                    kill_at: now + self.settings.drain_timeout + KILL_GRACE,
                };
                self.abandon_deploys();
                let live: Vec<WorkerId> = self.live_workers().map(|(id, _)| id).collect();
                for w in live {
                    self.drain_worker(now, w);
                }
                for conn in std::mem::take(&mut self.queue) {
                    self.counters.refused += 1;
                    self.out.push(Effect::CloseConn(conn));
                }
                for wait in &mut self.status_waits {
                    wait.waiting.clear();
                }
                self.answer_status_waits(now);
                for s in &mut self.slots {
                    s.respawn_at = None;
                }
            }
            Phase::Draining { .. } | Phase::Done => {}
        }
    }

    fn announce_draining(&mut self) {
        if !std::mem::replace(&mut self.draining_announced, true) {
            self.out.push(Effect::Announce(Announcement::Draining));
        }
    }

    fn exit_now(&mut self, result: Result<(), StartFailure>) {
        if self.phase == Phase::Done {
            return;
        }
        if result.is_err() {
            let all: Vec<WorkerId> = self.unreaped.iter().copied().collect();
            for w in all {
                self.out.push(Effect::Kill(w));
            }
        }
        self.phase = Phase::Done;
        for conn in std::mem::take(&mut self.queue) {
            self.counters.refused += 1;
            self.out.push(Effect::CloseConn(conn));
        }
        self.out.push(Effect::Exit(result));
    }

    /// Whether the live app has a handler `name`; refuses `to` if not.
    fn known_handler(&mut self, to: ControlId, name: &str) -> bool {
        let app = &self.deploys.current().app;
        if app.handler(name).is_some() {
            return true;
        }
        let known = app.handlers.iter().map(|h| h.name().to_string()).collect();
        self.refuse(
            to,
            Refusal::UnknownHandler {
                name: name.to_string(),
                known,
            },
        );
        false
    }

    fn refuse(&mut self, to: ControlId, reason: Refusal) {
        self.out.push(Effect::Reply(to, Reply::Refused { reason }));
    }
}
