//! Deploys: compile the new file once, then roll it through the ready
//! workers one at a time. The first worker is the canary; if any worker
//! refuses the version, is lost while loading it, or does not answer by the
//! load deadline, the roll turns around and puts the workers that switched
//! back on the last good version. A roll always ends: each worker is tried
//! at most once per direction, and every wait has a deadline.
//!
//! What rolls is the whole application (release.rs): a change to one
//! handler's file compiles that handler alone, and the release differs from
//! the live one in that handler only, so workers load it alone and keep the
//! others as they are; a canary that refuses it rolls back that change.
//!
//! One deploy at a time, whichever handlers it touches: a trigger during a
//! compile or a roll is remembered, and what it names is read again when
//! that ends (newest wins; a compile overtaken by a newer trigger is not
//! rolled at all). Rolls of different handlers never overlap: a worker
//! swaps one routing table at a time, so overlapping rolls would run
//! combinations of versions that no canary checked, and a refusal could
//! not say which change to take back. A roll takes seconds; the next
//! waits for it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Instant;

use super::{Announcement, ControlId, Core, Effect, JobId, Phase, WorkerId, WorkerState};
use crate::config::Version;
use crate::ipc::ToWorker;
use crate::primary::control::protocol::HandlerStatus;
use crate::primary::control::protocol::{
    DeployError, DeployKind, DeployOutcome, DeployResult, Refusal, Reply,
};
use crate::primary::release::{Release, Scope};

/// Deploy outcomes kept for `status`.
const HISTORY: usize = 10;

pub(super) struct Deploys {
    /// The last good version: what every worker should run, and what new
    /// workers start with.
    current: Release,
    previous: Option<Release>,
    /// Per handler: the version it ran before its last change (what
    /// `rollback NAME` puts back), and the last deploy that touched it.
    handler_previous: BTreeMap<String, Version>,
    handler_last: BTreeMap<String, DeployOutcome>,
    /// Counts successful rolls; 1 is the version the server started with.
    generation: u64,
    pub(super) compiling: Option<Compiling>,
    next_job: JobId,
    pub(super) roll: Option<Roll>,
    /// A trigger arrived while busy: read what it names afterwards.
    again: Option<Scope>,
    /// The compile running was started because a worker found the live
    /// artifact damaged: no worker is spawned until it ends, so none loads
    /// the damaged file.
    pub(super) repairing: bool,
    again_waiters: Vec<ControlId>,
    last: DeployOutcome,
    history: VecDeque<DeployOutcome>,
}

pub(super) struct Compiling {
    job: JobId,
    /// Asked for by a deploy trigger; false: only to rebuild a damaged
    /// artifact, which must not roll out whatever the file holds now.
    deploy: bool,
    scope: Scope,
    started: Instant,
    waiters: Vec<ControlId>,
}

pub(super) struct Roll {
    kind: DeployKind,
    started: Instant,
    waiters: Vec<ControlId>,
    target: Release,
    from: Release,
    /// Workers sent the version in this direction, so each is tried once.
    attempted: HashSet<WorkerId>,
    switched: usize,
    /// The worker loading now, and when it must have answered.
    awaiting: Option<(WorkerId, Instant)>,
    /// No worker was ready to be the canary: the roll waits for one until then.
    stalled_until: Option<Instant>,
    /// Set once the roll failed and is putting workers back on `from`.
    reverting: Option<DeployError>,
    /// The canary smoke-checks every handler, not only the changed ones.
    whole: bool,
}

impl Deploys {
    pub fn new(first: Release) -> Deploys {
        let last = DeployOutcome {
            kind: DeployKind::Start,
            version: Some(first.version.clone()),
            result: DeployResult::Started,
        };
        Deploys {
            current: first,
            previous: None,
            handler_previous: BTreeMap::new(),
            handler_last: BTreeMap::new(),
            generation: 1,
            compiling: None,
            next_job: 1,
            roll: None,
            again: None,
            repairing: false,
            again_waiters: Vec::new(),
            history: VecDeque::from([last.clone()]),
            last,
        }
    }

    pub fn busy(&self) -> bool {
        self.compiling.is_some() || self.roll.is_some()
    }

    pub fn current(&self) -> &Release {
        &self.current
    }

    /// (current version, previous version, generation)
    pub fn versions(&self) -> (&str, Option<&str>, u64) {
        (
            &self.current.version,
            self.previous.as_ref().map(|a| a.version.as_str()),
            self.generation,
        )
    }

    pub fn last(&self) -> &DeployOutcome {
        &self.last
    }

    pub fn history(&self) -> impl Iterator<Item = &DeployOutcome> {
        self.history.iter()
    }

    /// Every handler of the live app, for `status`.
    pub fn handler_statuses(&self) -> Vec<HandlerStatus> {
        self.current
            .app
            .handlers
            .iter()
            .map(|h| HandlerStatus {
                name: h.name().to_string(),
                version: h.version.id.clone(),
                routes: h.plan.routes.iter().map(|r| r.to_string()).collect(),
                source: h.plan.source.display().to_string(),
                previous: self.handler_previous.get(h.name()).map(|v| v.id.clone()),
                last_deploy: self.handler_last.get(h.name()).cloned(),
            })
            .collect()
    }

    /// Records, for each handler `to` changes against `from`, the outcome;
    /// when `to` went live, also the version it replaced. A handler new to
    /// the app has nothing to go back to, even if an earlier one of its
    /// name had; handlers no longer in the app are forgotten.
    fn record_handlers(
        &mut self,
        from: &Release,
        to: &Release,
        outcome: &DeployOutcome,
        live: bool,
    ) {
        for h in &to.app.handlers {
            let before = from.app.handler(h.name());
            if before.is_some_and(|b| b == h) {
                continue;
            }
            let name = h.name().to_string();
            self.handler_last.insert(name.clone(), outcome.clone());
            if !live {
                continue;
            }
            match before {
                None => {
                    self.handler_previous.remove(&name);
                }
                // A rebuilt artifact of the same file is no version to go back to.
                Some(b) if b.version.id != h.version.id => {
                    self.handler_previous.insert(name, b.version.clone());
                }
                Some(_) => {}
            }
        }
        if live {
            let app = &to.app;
            self.handler_previous
                .retain(|name, _| app.handler(name).is_some());
            self.handler_last
                .retain(|name, _| app.handler(name).is_some());
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let roll = self.roll.as_ref()?;
        roll.awaiting.map(|(_, t)| t).or(roll.stalled_until)
    }
}

impl Core {
    /// A file changed, SIGHUP, or `wcluster reload [NAME]`: compile what
    /// `scope` names.
    pub(super) fn trigger(&mut self, now: Instant, waiter: Option<ControlId>, scope: Scope) {
        if matches!(self.phase, Phase::Draining { .. } | Phase::Done) {
            if let Some(to) = waiter {
                self.refuse(to, Refusal::ShuttingDown);
            }
            return;
        }
        let d = &mut self.deploys;
        // A file of a handler the live app does not have (the manifest
        // named it, but that manifest did not go live): read everything.
        let scope = match scope {
            Scope::Handlers(names) if names.iter().any(|n| d.current.app.handler(n).is_none()) => {
                Scope::All
            }
            scope => scope,
        };
        if d.busy() {
            d.again = Some(match d.again.take() {
                Some(before) => before.merge(scope),
                None => scope,
            });
            d.again_waiters.extend(waiter);
            return;
        }
        let mut waiters = std::mem::take(&mut d.again_waiters);
        waiters.extend(waiter);
        self.start_compile(now, waiters, true, scope);
    }

    /// A worker found the live artifact damaged: compile the handler again
    /// (the cache rebuilds a damaged artifact) once nothing else compiles or
    /// rolls. Respawns wait for it (`repairing`).
    pub(super) fn repair(&mut self, now: Instant) {
        self.deploys.repairing = true;
        if !self.deploys.busy() {
            self.start_repair(now);
        }
    }

    /// Rebuilds the live app's artifacts from their files; the manifest is
    /// not read again, so a repair never rolls out a changed app.
    fn start_repair(&mut self, now: Instant) {
        let names = self
            .deploys
            .current
            .app
            .handlers
            .iter()
            .map(|h| h.name().to_string())
            .collect();
        self.start_compile(now, Vec::new(), false, Scope::Handlers(names));
    }

    fn start_compile(&mut self, now: Instant, waiters: Vec<ControlId>, deploy: bool, scope: Scope) {
        let d = &mut self.deploys;
        let job = d.next_job;
        d.next_job += 1;
        d.again = None;
        d.compiling = Some(Compiling {
            job,
            deploy,
            scope: scope.clone(),
            started: now,
            waiters,
        });
        let base = Box::new(d.current.app.clone());
        self.out.push(Effect::Compile { job, scope, base });
    }

    pub(super) fn compiled(&mut self, now: Instant, job: JobId, result: Result<Release, String>) {
        let d = &mut self.deploys;
        if d.compiling.as_ref().is_none_or(|c| c.job != job) {
            return;
        }
        let compiling = d.compiling.take().expect("checked above");
        if let Some(again) = d.again.take() {
            // A file changed again while this compiled: what was read may
            // be half of a write. Read both again instead of rolling this.
            let mut waiters = compiling.waiters;
            waiters.append(&mut d.again_waiters);
            let scope = if compiling.deploy {
                compiling.scope.merge(again)
            } else {
                again
            };
            self.start_compile(now, waiters, true, scope);
            return;
        }
        // Whatever this compile brings, respawns go on: one that finds the
        // artifact still damaged asks again (under its slot's backoff).
        d.repairing = false;
        if !compiling.deploy {
            self.repaired(result);
            return;
        }
        match result {
            Err(message) => {
                tracing::error!("deploy refused: {message}");
                let outcome = DeployOutcome {
                    kind: DeployKind::Deploy,
                    version: None,
                    result: DeployResult::Refused {
                        error: DeployError::Compile { message },
                    },
                };
                if let Scope::Handlers(names) = &compiling.scope {
                    for name in names {
                        self.deploys
                            .handler_last
                            .insert(name.clone(), outcome.clone());
                    }
                }
                self.finish_deploy(now, compiling.waiters, outcome);
            }
            Ok(target)
                if target.version == self.deploys.current.version
                    && self.all_ready_on(&target.version) =>
            {
                tracing::info!(version = %target.version, "handler unchanged: nothing to deploy");
                if target.digest != self.deploys.current.digest {
                    // Its artifact was rebuilt: new workers load the new file.
                    self.deploys.current = target.clone();
                }
                let outcome = DeployOutcome {
                    kind: DeployKind::Deploy,
                    version: Some(target.version),
                    result: DeployResult::Unchanged,
                };
                self.finish_deploy(now, compiling.waiters, outcome);
            }
            Ok(target) => {
                tracing::info!(
                    version = %target.version,
                    compiled = target.compiled,
                    "rolling out version {}",
                    target.version
                );
                // A manifest read again is checked as a whole: its canary
                // smoke-checks the handlers it keeps as well.
                let whole = compiling.scope == Scope::All && target.app.manifest;
                self.start_roll(
                    now,
                    DeployKind::Deploy,
                    compiling.started,
                    compiling.waiters,
                    (target, whole),
                );
            }
        }
    }

    /// `wcluster rollback`: the previous good version, through the same roll.
    pub(super) fn rollback(&mut self, now: Instant, to: ControlId) {
        if matches!(self.phase, Phase::Draining { .. } | Phase::Done) {
            return self.refuse(to, Refusal::ShuttingDown);
        }
        if self.deploys.busy() {
            return self.refuse(to, Refusal::Busy);
        }
        let Some(target) = self.deploys.previous.clone() else {
            return self.refuse(to, Refusal::NoPreviousVersion);
        };
        self.start_roll(now, DeployKind::Rollback, now, vec![to], (target, false));
    }

    /// `wcluster rollback NAME`: that handler's previous version, the rest
    /// of the app as it is, through the same roll.
    pub(super) fn rollback_handler(&mut self, now: Instant, to: ControlId, name: &str) {
        if matches!(self.phase, Phase::Draining { .. } | Phase::Done) {
            return self.refuse(to, Refusal::ShuttingDown);
        }
        if self.deploys.busy() {
            return self.refuse(to, Refusal::Busy);
        }
        let target = self
            .deploys
            .handler_previous
            .get(name)
            .and_then(|v| self.deploys.current.with_version(name, v.clone()));
        let Some(target) = target else {
            return self.refuse(to, Refusal::NoPreviousVersion);
        };
        self.start_roll(now, DeployKind::Rollback, now, vec![to], (target, false));
    }

    /// The end of a compile made only to rebuild the live artifact.
    fn repaired(&mut self, result: Result<Release, String>) {
        let current = &self.deploys.current.version;
        match result {
            Ok(target) if &target.version == current => {
                tracing::info!(version = %target.version, "artifact of version {current} rebuilt");
                self.deploys.current = target;
            }
            Ok(target) => tracing::error!(
                "cannot rebuild the damaged artifact of version {current}: the handler file \
                 now holds version {} (not deployed by this; deploy it with a reload)",
                target.version
            ),
            Err(message) => {
                tracing::error!(
                    "cannot rebuild the damaged artifact of version {current}: {message}"
                )
            }
        }
    }

    fn all_ready_on(&self, version: &str) -> bool {
        self.slots
            .iter()
            .filter(|s| s.state == WorkerState::Ready)
            .all(|s| s.version == version)
    }

    /// A worker is ready on an older version (it was spawned during a roll,
    /// or its slot was refilled): bring it up to date with a roll of its own.
    pub(super) fn catch_up(&mut self, now: Instant) {
        if self.deploys.busy() || self.all_ready_on(&self.deploys.current.version) {
            return;
        }
        let current = self.deploys.current.clone();
        self.start_roll(now, DeployKind::CatchUp, now, Vec::new(), (current, false));
    }

    fn start_roll(
        &mut self,
        now: Instant,
        kind: DeployKind,
        started: Instant,
        waiters: Vec<ControlId>,
        (target, whole): (Release, bool),
    ) {
        if kind != DeployKind::CatchUp {
            self.out.push(Effect::Announce(Announcement::RollStarted {
                version: target.version.clone(),
            }));
        }
        self.deploys.roll = Some(Roll {
            kind,
            started,
            waiters,
            from: self.deploys.current.clone(),
            target,
            attempted: HashSet::new(),
            switched: 0,
            awaiting: None,
            stalled_until: None,
            reverting: None,
            whole,
        });
        self.advance(now);
    }

    /// If the roll is waiting for `worker`'s answer, it stops waiting;
    /// then Some(whether the roll is turning back).
    fn stop_awaiting(&mut self, worker: WorkerId) -> Option<bool> {
        let roll = self.deploys.roll.as_mut()?;
        if roll.awaiting.map(|(w, _)| w) != Some(worker) {
            return None;
        }
        roll.awaiting = None;
        Some(roll.reverting.is_some())
    }

    /// A worker became ready: the roll may go on with it.
    pub(super) fn roll_worker_ready(&mut self, now: Instant) {
        self.advance(now);
    }

    pub(super) fn roll_loaded(&mut self, now: Instant, worker: WorkerId, version: String) {
        if self.stop_awaiting(worker) == Some(false)
            && let Some(roll) = &mut self.deploys.roll
            && version == roll.target.version
        {
            roll.switched += 1;
        }
        self.advance(now);
    }

    pub(super) fn roll_load_failed(
        &mut self,
        now: Instant,
        worker: WorkerId,
        version: String,
        message: String,
    ) {
        let Some(reverting) = self.stop_awaiting(worker) else {
            return;
        };
        if reverting {
            // It cannot go back to the last good version: replace it, so
            // that no worker keeps serving the refused one.
            tracing::error!(
                worker = worker.index,
                "worker refused the last good version {version} while rolling back: {message}; replacing it"
            );
            self.worker_gone(
                now,
                worker,
                super::Gone::ChannelBroken("refused the last good version".into()),
            );
            self.advance(now);
            return;
        }
        self.roll_failed(
            now,
            DeployError::WorkerRefused {
                worker: worker.index,
                message,
            },
        );
    }

    /// Called from `worker_gone`: if the roll was waiting for that worker,
    /// the roll fails (or, when already reverting, goes on without it).
    pub(super) fn roll_worker_lost(&mut self, now: Instant, worker: WorkerId) {
        let Some(reverting) = self.stop_awaiting(worker) else {
            return;
        };
        if reverting {
            tracing::error!(
                worker = worker.index,
                "worker lost while rolling back; its replacement starts on the last good version"
            );
            self.advance(now);
            return;
        }
        self.roll_failed(
            now,
            DeployError::WorkerLost {
                worker: worker.index,
            },
        );
    }

    /// The worker loading the version did not answer in time: it is killed
    /// and replaced, and the roll treats it as lost.
    pub(super) fn roll_deadline(&mut self, now: Instant) {
        let Some(roll) = &mut self.deploys.roll else {
            return;
        };
        if roll.stalled_until.is_some_and(|t| now >= t) {
            roll.stalled_until = None;
            let after_ms = self.settings.load_timeout.as_millis() as u64;
            self.roll_failed(now, DeployError::NoReadyWorker { after_ms });
            return;
        }
        let Some((worker, deadline)) = roll.awaiting else {
            return;
        };
        if now < deadline {
            return;
        }
        let after_ms = self.settings.load_timeout.as_millis() as u64;
        tracing::error!(
            worker = worker.index,
            "worker did not answer Load within {after_ms} ms: killing it"
        );
        roll.awaiting = None;
        let reverting = roll.reverting.is_some();
        self.worker_gone(
            now,
            worker,
            super::Gone::ChannelBroken("did not answer Load".into()),
        );
        if reverting {
            self.advance(now);
        } else {
            self.roll_failed(
                now,
                DeployError::WorkerTimedOut {
                    worker: worker.index,
                    after_ms,
                },
            );
        }
    }

    fn roll_failed(&mut self, now: Instant, error: DeployError) {
        let Some(roll) = &mut self.deploys.roll else {
            return;
        };
        tracing::error!(
            "roll of {} stopped: {error}; putting switched workers back on {}",
            roll.target.version,
            roll.from.version
        );
        roll.reverting = Some(error);
        roll.attempted.clear();
        self.advance(now);
    }

    /// Sends the roll's version to the next ready worker that needs it, or
    /// ends the roll when none does.
    fn advance(&mut self, now: Instant) {
        let Some(roll) = &mut self.deploys.roll else {
            return;
        };
        if roll.awaiting.is_some() {
            return;
        }
        let goal = if roll.reverting.is_some() {
            &roll.from
        } else {
            &roll.target
        };
        let next = self.slots.iter().enumerate().find_map(|(i, s)| {
            let id = s.id(i);
            (s.state == WorkerState::Ready
                && s.version != goal.version
                && !roll.attempted.contains(&id))
            .then_some(id)
        });
        if let Some(worker) = next {
            roll.stalled_until = None;
            roll.attempted.insert(worker);
            roll.awaiting = Some((worker, now + self.settings.load_timeout));
            // The canary: the first worker sent the new version.
            let canary = roll.reverting.is_none() && roll.switched == 0;
            let msg = ToWorker::Load {
                app: Box::new(goal.app.clone()),
                smoke_all: roll.whole && canary,
            };
            self.out.push(Effect::Send(worker, msg));
            return;
        }
        // A new version goes live only through a canary: while no worker has
        // taken it and some are still starting, wait for them (bounded).
        let unproven = roll.reverting.is_none()
            && roll.switched == 0
            && roll.target.version != self.deploys.current.version;
        if unproven {
            let starting = (0..self.target).any(|i| {
                self.slots
                    .get(i)
                    .is_none_or(|s| s.state != WorkerState::Ready)
            });
            if starting {
                roll.stalled_until
                    .get_or_insert(now + self.settings.load_timeout);
                return;
            }
        }
        let roll = self.deploys.roll.take().expect("checked above");
        self.finish_roll(now, roll);
    }

    fn finish_roll(&mut self, now: Instant, roll: Roll) {
        let ms = now.saturating_duration_since(roll.started).as_millis() as u64;
        let live = roll.reverting.is_none();
        let outcome = match roll.reverting {
            None => {
                let d = &mut self.deploys;
                if roll.target.version != d.current.version {
                    d.previous = Some(std::mem::replace(&mut d.current, roll.target.clone()));
                    d.generation += 1;
                }
                let workers = self
                    .slots
                    .iter()
                    .filter(|s| s.state == WorkerState::Ready && s.version == roll.target.version)
                    .count();
                if roll.kind != DeployKind::CatchUp {
                    self.out.push(Effect::Announce(Announcement::Rolled {
                        version: roll.target.version.clone(),
                        workers,
                        ms,
                    }));
                }
                DeployResult::Rolled {
                    generation: self.deploys.generation,
                    workers,
                    ms,
                }
            }
            Some(error) => DeployResult::RolledBack {
                error,
                kept: roll.from.version.clone(),
            },
        };
        let outcome = DeployOutcome {
            kind: roll.kind,
            version: Some(roll.target.version.clone()),
            result: outcome,
        };
        if roll.kind != DeployKind::CatchUp {
            self.deploys
                .record_handlers(&roll.from, &roll.target, &outcome, live);
        }
        if roll.kind != DeployKind::CatchUp {
            self.out.push(Effect::Announce(Announcement::RollEnded {
                serving: self.deploys.current.version.clone(),
            }));
        }
        tracing::info!(switched = roll.switched, "{outcome}");
        self.finish_deploy(now, roll.waiters, outcome);
    }

    /// Records the outcome, answers the waiters, and starts the deploy that
    /// was asked for meanwhile, if any.
    fn finish_deploy(&mut self, now: Instant, waiters: Vec<ControlId>, outcome: DeployOutcome) {
        let result = outcome.result.name().to_string();
        *self
            .counters
            .deploys
            .entry((outcome.kind, result))
            .or_default() += 1;
        self.counters.last_deploy = Some(now);
        let d = &mut self.deploys;
        if outcome.kind != DeployKind::CatchUp {
            d.last = outcome.clone();
        }
        d.history.push_back(outcome.clone());
        while d.history.len() > HISTORY {
            d.history.pop_front();
        }
        for to in waiters {
            self.out
                .push(Effect::Reply(to, Reply::Deploy(outcome.clone())));
        }
        if let Some(scope) = self.deploys.again.take() {
            self.trigger(now, None, scope);
        } else if self.deploys.repairing && !self.deploys.busy() {
            self.start_repair(now);
        }
    }

    /// Shutting down: deploys in progress end without an outcome; their
    /// waiters are told.
    pub(super) fn abandon_deploys(&mut self) {
        let d = &mut self.deploys;
        let mut waiters = std::mem::take(&mut d.again_waiters);
        d.again = None;
        if let Some(c) = d.compiling.take() {
            waiters.extend(c.waiters);
        }
        if let Some(r) = d.roll.take() {
            let outcome = DeployOutcome {
                kind: r.kind,
                version: Some(r.target.version.clone()),
                result: DeployResult::Abandoned,
            };
            for to in r.waiters {
                self.out
                    .push(Effect::Reply(to, Reply::Deploy(outcome.clone())));
            }
        }
        for to in waiters {
            self.refuse(to, Refusal::ShuttingDown);
        }
    }
}
