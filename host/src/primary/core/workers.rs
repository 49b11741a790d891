//! The worker slots: spawning, readiness, the one place that handles "a
//! worker is gone" (whichever path noticed it), crash-loop backoff,
//! liveness, and scaling.

use std::time::{Duration, Instant};

use super::{
    Announcement, ControlId, Core, Effect, Gone, Phase, StartFailure, WorkerId, WorkerState,
};
use crate::ipc::ToWorker;
use crate::ipc::WorkerCounts;
use crate::primary::control::protocol::{Refusal, Reply, ScaleOutcome, WorkerStatus};

/// A worker that lived this long before dying is not in a crash loop.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive quick deaths before the crash loop is reported as an error.
const CRASH_LOOP: u32 = 5;

pub(super) struct Slot {
    pub generation: u64,
    pub state: WorkerState,
    /// The handler version the worker serves.
    pub version: String,
    pub pid: Option<u32>,
    /// Last counts the worker reported.
    pub requests: u64,
    pub in_flight: u32,
    started: Instant,
    pub last_seen: Instant,
    /// Its channel was full at the last hand-off; skipped until it speaks.
    pub full: bool,
    /// It holds --max-connections connections; skipped until it has room.
    pub at_capacity: bool,
    /// Consecutive quick deaths.
    failures: u32,
    pub restarts: u64,
    /// When a replacement is due.
    pub respawn_at: Option<Instant>,
    /// When a draining worker is killed if it has not exited.
    pub drain_deadline: Option<Instant>,
    /// Its counters, as last reported.
    pub counts: WorkerCounts,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            generation: 0,
            state: WorkerState::Exited,
            version: String::new(),
            pid: None,
            requests: 0,
            in_flight: 0,
            started: now,
            last_seen: now,
            full: false,
            at_capacity: false,
            failures: 0,
            restarts: 0,
            respawn_at: None,
            drain_deadline: None,
            counts: WorkerCounts::default(),
        }
    }

    pub fn id(&self, index: usize) -> WorkerId {
        WorkerId {
            index,
            generation: self.generation,
        }
    }

    pub fn status(&self, index: usize) -> WorkerStatus {
        WorkerStatus {
            index,
            pid: self.pid.filter(|_| self.state != WorkerState::Exited),
            state: self.state,
            version: self.version.clone(),
            requests: self.requests,
            in_flight: self.in_flight,
            at_capacity: self.at_capacity,
            restarts: self.restarts,
        }
    }

    /// The delay before the next replacement, counting this death.
    fn backoff(&mut self, now: Instant) -> Duration {
        if now.duration_since(self.started) >= HEALTHY_RUN {
            self.failures = 0;
        }
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => (FIRST_BACKOFF * 2u32.saturating_pow(n.min(16))).min(MAX_BACKOFF),
        };
        self.failures += 1;
        delay
    }
}

impl Core {
    /// The slot of a worker that is still there (not gone, same generation).
    pub(super) fn slot_of(&mut self, worker: WorkerId) -> Option<&mut Slot> {
        self.slots
            .get_mut(worker.index)
            .filter(|s| s.generation == worker.generation && s.state != WorkerState::Exited)
    }

    /// The workers that have a process and a channel: starting, ready, draining.
    pub(super) fn live_workers(&self) -> impl Iterator<Item = (WorkerId, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != WorkerState::Exited)
            .map(|(i, s)| (s.id(i), s))
    }

    pub(super) fn is_ready(&self, index: usize) -> bool {
        self.slots
            .get(index)
            .is_some_and(|s| s.state == WorkerState::Ready && !s.full && !s.at_capacity)
    }

    /// Spawns a worker into every wanted slot that is empty and not waiting
    /// for a backoff.
    pub(super) fn fill_slots(&mut self, now: Instant) {
        while self.slots.len() < self.target {
            self.slots.push(Slot::new(now));
        }
        if self.deploys.repairing {
            return;
        }
        for index in 0..self.target {
            let s = &self.slots[index];
            if s.state == WorkerState::Exited && s.respawn_at.is_none() {
                self.spawn(now, index);
            }
        }
    }

    fn spawn(&mut self, now: Instant, index: usize) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let slot = &mut self.slots[index];
        slot.generation = generation;
        slot.state = WorkerState::Starting;
        slot.version.clear();
        slot.pid = None;
        slot.requests = 0;
        slot.in_flight = 0;
        slot.started = now;
        slot.last_seen = now;
        slot.full = false;
        slot.at_capacity = false;
        slot.respawn_at = None;
        slot.drain_deadline = None;
        let worker = WorkerId { index, generation };
        self.unreaped.insert(worker);
        self.out.push(Effect::Spawn {
            worker,
            release: self.deploys.current().clone(),
        });
    }

    pub(super) fn respawn_due(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.deploys.repairing {
            return;
        }
        for index in 0..self.slots.len() {
            let s = &mut self.slots[index];
            if s.respawn_at.is_some_and(|t| now >= t) {
                s.respawn_at = None;
                if index < self.target && s.state == WorkerState::Exited {
                    self.spawn(now, index);
                }
            }
        }
    }

    pub(super) fn worker_ready(&mut self, now: Instant, worker: WorkerId, version: String) {
        let Some(slot) = self.slot_of(worker) else {
            return;
        };
        if slot.state != WorkerState::Starting {
            return;
        }
        slot.state = WorkerState::Ready;
        tracing::info!(worker = worker.index, pid = slot.pid, %version, "worker ready");
        slot.version = version;
        if self.phase == Phase::Starting
            && (0..self.target).all(|i| self.slots[i].state == WorkerState::Ready)
        {
            self.phase = Phase::Running;
            self.next_liveness_check = now + super::LIVENESS_CHECK;
            self.out.push(Effect::Announce(Announcement::Listening {
                workers: self.target,
            }));
        }
        self.roll_worker_ready(now);
    }

    /// The one place a worker leaves: its channel closed or broke, its
    /// process exited or never started, it hung, or it failed a deadline.
    /// Takes it out of the rotation, makes sure its process is gone, gives
    /// its unacknowledged connections to others, tells the roll, and
    /// schedules a replacement if its slot is still wanted.
    pub(super) fn worker_gone(&mut self, now: Instant, worker: WorkerId, why: Gone) {
        if matches!(why, Gone::Exited(_) | Gone::SpawnFailed(_)) {
            self.unreaped.remove(&worker);
        }
        let Some(slot) = self.slot_of(worker) else {
            return;
        };
        let expected = slot.state == WorkerState::Draining;
        slot.state = WorkerState::Exited;
        slot.full = false;
        let mut counts = std::mem::take(&mut slot.counts);
        counts.plain.connections_open = 0;
        self.counters.retired.add(&counts);
        if !matches!(why, Gone::Exited(_) | Gone::SpawnFailed(_)) {
            // It cannot be talked to any more: make sure it is gone.
            self.out.push(Effect::Kill(worker));
        }
        self.reclaim(worker);
        self.roll_worker_lost(now, worker);
        for wait in &mut self.status_waits {
            wait.waiting.remove(&worker);
        }
        self.answer_status_waits(now);
        match self.phase {
            Phase::Starting => {
                self.exit_now(Err(StartFailure::Gone {
                    worker: worker.index,
                    why,
                }));
                return;
            }
            Phase::Draining { .. } | Phase::Done => return,
            Phase::Running => {}
        }
        let wanted = worker.index < self.target;
        let slot = &mut self.slots[worker.index];
        if expected {
            tracing::info!(worker = worker.index, "worker drained and exited");
            if wanted {
                // Scaled down, then up again before it left: refill now.
                slot.respawn_at = Some(now);
            }
        } else if wanted {
            let delay = slot.backoff(now);
            slot.restarts += 1;
            slot.respawn_at = Some(now + delay);
            let why = describe(&why);
            if slot.failures >= CRASH_LOOP {
                tracing::error!(
                    worker = worker.index,
                    failures = slot.failures,
                    "worker is crash-looping ({why}); next restart in {delay:?}"
                );
            } else {
                tracing::warn!(
                    worker = worker.index,
                    pid = slot.pid,
                    "worker lost ({why}); restarting in {delay:?}"
                );
            }
        }
        self.trim_retired();
        self.respawn_due(now);
    }

    /// Kills the workers that have said nothing for --liveness-timeout
    /// (hung, or stopped with SIGSTOP); their death then goes through
    /// `worker_gone` like any other.
    pub(super) fn check_liveness(&mut self, now: Instant) {
        let timeout = self.settings.liveness_timeout;
        let since_last_check =
            now.saturating_duration_since(self.next_liveness_check) + super::LIVENESS_CHECK;
        self.next_liveness_check = now + super::LIVENESS_CHECK;
        if since_last_check > super::LIVENESS_CHECK + timeout / 2 {
            // The primary itself was not running (stopped, or starved): the
            // workers' reports are queued, not missing. Start counting again.
            for s in &mut self.slots {
                s.last_seen = now;
            }
            return;
        }
        let hung: Vec<(WorkerId, Duration)> = self
            .live_workers()
            .filter(|(_, s)| matches!(s.state, WorkerState::Starting | WorkerState::Ready))
            .map(|(id, s)| (id, now.saturating_duration_since(s.last_seen)))
            .filter(|(_, silent)| *silent >= timeout)
            .collect();
        for (worker, silent) in hung {
            tracing::error!(
                worker = worker.index,
                "worker unresponsive for {silent:?} (--liveness-timeout): killing it"
            );
            self.worker_gone(now, worker, Gone::ChannelBroken("unresponsive".into()));
        }
    }

    /// Asks a worker to finish its requests and exit; it gets no new
    /// connections from now on, and is killed if it has not exited by the
    /// drain timeout (plus a grace).
    pub(super) fn drain_worker(&mut self, now: Instant, worker: WorkerId) {
        let deadline = now + self.settings.drain_timeout + super::KILL_GRACE;
        if let Some(slot) = self.slot_of(worker) {
            slot.state = WorkerState::Draining;
            slot.drain_deadline = Some(deadline);
            self.out.push(Effect::Send(worker, ToWorker::Drain));
        }
    }

    /// Retired workers still draining past their deadline are killed.
    pub(super) fn drain_deadlines(&mut self, now: Instant) {
        let late: Vec<WorkerId> = self
            .live_workers()
            .filter(|(_, s)| s.state == WorkerState::Draining)
            .filter(|(_, s)| s.drain_deadline.is_some_and(|t| now >= t))
            .map(|(id, _)| id)
            .collect();
        for worker in late {
            tracing::warn!(
                worker = worker.index,
                "worker still draining after the drain timeout: killing it"
            );
            self.worker_gone(now, worker, Gone::ChannelBroken("drain timed out".into()));
        }
    }

    /// `wcluster scale N`.
    pub(super) fn scale_to(&mut self, now: Instant, to: ControlId, workers: usize) {
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            return self.refuse(to, Refusal::ShuttingDown);
        }
        if !(1..=self.settings.max_workers).contains(&workers) {
            return self.refuse(
                to,
                Refusal::WorkersOutOfRange {
                    asked: workers,
                    min: 1,
                    max: self.settings.max_workers,
                },
            );
        }
        let deferred = self.scale(now, workers);
        self.out.push(Effect::Reply(
            to,
            Reply::Scale(ScaleOutcome {
                target: workers,
                deferred,
            }),
        ));
    }

    /// Sets the worker count, clamped to 1..=--max-workers. During a roll
    /// (or before start-up ends) it is remembered and applied when that
    /// ends, so a roll's set of workers never changes under it. Returns
    /// whether it was deferred.
    pub(super) fn scale(&mut self, now: Instant, workers: usize) -> bool {
        let workers = workers.clamp(1, self.settings.max_workers);
        if self.phase != Phase::Running || self.deploys.busy() {
            tracing::info!("scale to {workers} workers: applied when the current roll ends");
            self.pending_target = Some(workers);
            return true;
        }
        self.apply_scale(now, workers);
        false
    }

    pub(super) fn apply_scale(&mut self, now: Instant, workers: usize) {
        self.pending_target = None;
        if workers == self.target {
            return;
        }
        tracing::info!(
            from = self.target,
            to = workers,
            "scaling to {workers} workers"
        );
        self.target = workers;
        let retiring: Vec<WorkerId> = self
            .live_workers()
            .filter(|(id, s)| id.index >= workers && s.state != WorkerState::Draining)
            .map(|(id, _)| id)
            .collect();
        for w in retiring {
            self.drain_worker(now, w);
        }
        for s in self.slots.iter_mut().skip(workers) {
            s.respawn_at = None;
        }
        // A wanted slot whose old worker is still draining is refilled when
        // that one exits (worker_gone).
        self.fill_slots(now);
        self.trim_retired();
    }

    /// Drops the empty slots past the target at the end of the table.
    fn trim_retired(&mut self) {
        while self.slots.len() > self.target
            && self
                .slots
                .last()
                .is_some_and(|s| s.state == WorkerState::Exited)
        {
            self.slots.pop();
        }
    }
}

pub(super) fn describe(why: &Gone) -> String {
    match why {
        Gone::ChannelClosed => "channel closed".into(),
        Gone::ChannelBroken(e) => format!("channel broken: {e}"),
        Gone::Exited(status) => format!("exited: {status}"),
        Gone::SpawnFailed(e) => format!("could not start: {e}"),
    }
}
