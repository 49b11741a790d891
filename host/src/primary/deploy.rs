//! Redeploys: compile the new file once (in the compile child), then roll it
//! through the workers one at a time. The first worker is the canary; if any
//! worker refuses the new version (its smoke check failed) or dies while
//! loading it, the roll stops and the workers already switched go back to the
//! last good version. The cluster never stops serving.
//!
//! One deploy at a time: a trigger that arrives during one is remembered, and
//! when the deploy ends the file is read again, so the newest content wins.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::supervisor::{Supervisor, WorkerState};
use crate::config::Config;
use crate::ipc::ToWorker;
use crate::runtime::artifact::{self, Artifact};

/// Who is waiting for a deploy's outcome (`wcluster reload` / `rollback`).
pub type Waiter = oneshot::Sender<Value>;

pub struct Deploys {
    config: Arc<Config>,
    compiled_tx: mpsc::UnboundedSender<anyhow::Result<Artifact>>,
    /// The last good version: what every worker should run.
    pub current: Artifact,
    previous: Option<Artifact>,
    /// Counts successful rolls; 1 is the version the server started with.
    generation: u64,
    compiling: Option<Deploy>,
    roll: Option<Roll>,
    /// A trigger arrived while busy: read the file again afterwards.
    again: bool,
    again_waiters: Vec<Waiter>,
    last: Value,
}

/// One deploy in progress, from its trigger.
struct Deploy {
    started: Instant,
    waiters: Vec<Waiter>,
    what: &'static str,
}

struct Roll {
    deploy: Deploy,
    target: Artifact,
    from: Artifact,
    /// Slots sent this roll's current target, so each is tried once.
    attempted: HashSet<usize>,
    switched: usize,
    /// The worker loading right now: (slot, worker generation).
    awaiting: Option<(usize, u64)>,
    /// Set once the roll failed and is putting workers back on `from`.
    reverting: Option<String>,
}

impl Deploys {
    pub fn new(
        config: Arc<Config>,
        current: Artifact,
        compiled_tx: mpsc::UnboundedSender<anyhow::Result<Artifact>>,
    ) -> Self {
        let last = json!({"ok": true, "what": "start", "version": current.version});
        Self {
            config,
            compiled_tx,
            current,
            previous: None,
            generation: 1,
            compiling: None,
            roll: None,
            again: false,
            again_waiters: Vec::new(),
            last,
        }
    }

    fn busy(&self) -> bool {
        self.compiling.is_some() || self.roll.is_some()
    }

    /// The handler file changed (or a reload was asked for): compile it.
    pub fn trigger(&mut self, waiter: Option<Waiter>) {
        if self.busy() {
            self.again = true;
            self.again_waiters.extend(waiter);
            return;
        }
        let mut waiters: Vec<Waiter> = std::mem::take(&mut self.again_waiters);
        waiters.extend(waiter);
        self.compiling = Some(Deploy {
            started: Instant::now(),
            waiters,
            what: "deploy",
        });
        let config = self.config.clone();
        let tx = self.compiled_tx.clone();
        tokio::spawn(async move {
            let result = artifact::prepare(
                &config.handler,
                &config.cache_dir,
                &config.engine,
                &config.compile,
            )
            .await;
            tx.send(result).ok();
        });
    }

    /// The compile child finished.
    pub fn on_compiled(&mut self, result: anyhow::Result<Artifact>, sup: &mut Supervisor) {
        let Some(deploy) = self.compiling.take() else {
            return;
        };
        match result {
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!("deploy refused: {error}");
                self.finish(
                    deploy,
                    json!({"ok": false, "what": "deploy", "error": error}),
                );
            }
            Ok(target) if target.version == self.current.version && self.all_on(sup, &target) => {
                tracing::info!(version = %target.version, "handler unchanged: nothing to deploy");
                self.finish(
                    deploy,
                    json!({"ok": true, "what": "deploy", "version": target.version, "unchanged": true}),
                );
            }
            Ok(target) => {
                tracing::info!(version = %target.version, compiled = target.compiled, "rolling out version {}", target.version);
                self.start_roll(deploy, target, sup);
            }
        }
    }

    /// `wcluster rollback`: the previous good version, through the same roll.
    pub fn rollback(&mut self, waiter: Waiter, sup: &mut Supervisor) {
        if self.busy() {
            waiter
                .send(json!({"ok": false, "error": "a deploy is in progress; try again when it ends"}))
                .ok();
            return;
        }
        let Some(target) = self.previous.clone() else {
            waiter
                .send(json!({"ok": false, "error": "no previous version to roll back to"}))
                .ok();
            return;
        };
        let deploy = Deploy {
            started: Instant::now(),
            waiters: vec![waiter],
            what: "rollback",
        };
        self.start_roll(deploy, target, sup);
    }

    fn all_on(&self, sup: &Supervisor, target: &Artifact) -> bool {
        sup.slots()
            .iter()
            .filter(|s| s.state == WorkerState::Ready)
            .all(|s| s.version == target.version)
    }

    fn start_roll(&mut self, deploy: Deploy, target: Artifact, sup: &mut Supervisor) {
        self.roll = Some(Roll {
            deploy,
            target,
            from: self.current.clone(),
            attempted: HashSet::new(),
            switched: 0,
            awaiting: None,
            reverting: None,
        });
        self.advance(sup);
    }

    /// A worker became ready: a roll may continue with it, and a worker that
    /// came up on an older version (spawned mid-roll) is brought up to date.
    pub fn on_ready(&mut self, sup: &mut Supervisor) {
        if self.roll.is_none() && !self.busy() && !self.all_on(sup, &self.current.clone()) {
            let deploy = Deploy {
                started: Instant::now(),
                waiters: Vec::new(),
                what: "catch-up",
            };
            self.start_roll(deploy, self.current.clone(), sup);
            return;
        }
        self.advance(sup);
    }

    pub fn on_loaded(&mut self, index: usize, worker_gen: u64, sup: &mut Supervisor) {
        let Some(roll) = &mut self.roll else { return };
        if roll.awaiting != Some((index, worker_gen)) {
            return;
        }
        roll.awaiting = None;
        if roll.reverting.is_none() {
            roll.switched += 1;
        }
        self.advance(sup);
    }

    pub fn on_load_failed(
        &mut self,
        index: usize,
        worker_gen: u64,
        error: &str,
        sup: &mut Supervisor,
    ) {
        let Some(roll) = &mut self.roll else { return };
        if roll.awaiting != Some((index, worker_gen)) {
            return;
        }
        roll.awaiting = None;
        let reason = format!(
            "worker {index} refused version {}: {error}",
            roll.target.version
        );
        self.fail(reason, sup);
    }

    /// A worker left the rotation; if it was loading, the roll fails.
    pub fn on_worker_lost(&mut self, index: usize, sup: &mut Supervisor) {
        let Some(roll) = &mut self.roll else { return };
        if roll.awaiting.map(|(i, _)| i) != Some(index) {
            return;
        }
        roll.awaiting = None;
        let reason = format!(
            "worker {index} exited while loading version {}",
            roll.target.version
        );
        self.fail(reason, sup);
    }

    fn fail(&mut self, reason: String, sup: &mut Supervisor) {
        let Some(roll) = &mut self.roll else { return };
        if roll.reverting.is_none() {
            tracing::error!(
                "roll stopped: {reason}; putting switched workers back on {}",
                roll.from.version
            );
            roll.reverting = Some(reason);
            roll.attempted.clear();
        } else {
            tracing::error!("while rolling back: {reason}");
        }
        self.advance(sup);
    }

    /// Sends the roll's version to the next worker that needs it, or ends it.
    fn advance(&mut self, sup: &mut Supervisor) {
        let Some(roll) = &mut self.roll else { return };
        if roll.awaiting.is_some() {
            return;
        }
        let goal = if roll.reverting.is_some() {
            &roll.from
        } else {
            &roll.target
        };
        let next = (0..sup.len()).find(|&i| {
            let s = sup.slot(i);
            s.state == WorkerState::Ready
                && s.version != goal.version
                && !roll.attempted.contains(&i)
        });
        if let Some(index) = next {
            roll.attempted.insert(index);
            let msg = ToWorker::Load {
                artifact: goal.path.clone(),
                version: goal.version.clone(),
            };
            let sent = sup.channel(index).map(|c| c.try_send(&msg, None));
            if let Some(Ok(())) = sent {
                roll.awaiting = Some((index, sup.slot(index).generation));
            } else {
                // Could not even tell it: count it as refused and go on.
                self.fail(
                    format!("worker {index} could not be sent the new version"),
                    sup,
                );
            }
            return;
        }
        let roll = self.roll.take().expect("checked above");
        let elapsed = roll.deploy.started.elapsed();
        match roll.reverting {
            None => {
                if roll.target.version != self.current.version {
                    self.previous = Some(self.current.clone());
                    self.current = roll.target.clone();
                    self.generation += 1;
                }
                sup.set_artifact(roll.target.path.clone(), roll.target.version.clone());
                let workers = sup
                    .slots()
                    .iter()
                    .filter(|s| s.version == roll.target.version)
                    .count();
                if roll.deploy.what != "catch-up" {
                    println!(
                        "wcluster: rolled to {} on {workers} workers in {} ms",
                        roll.target.version,
                        elapsed.as_millis()
                    );
                }
                tracing::info!(
                    version = %roll.target.version,
                    generation = self.generation,
                    ms = elapsed.as_millis() as u64,
                    "{} done",
                    roll.deploy.what
                );
                let outcome = json!({
                    "ok": true, "what": roll.deploy.what, "version": roll.target.version,
                    "generation": self.generation, "workers": workers, "ms": elapsed.as_millis() as u64,
                });
                self.finish(roll.deploy, outcome);
            }
            Some(reason) => {
                let outcome = json!({
                    "ok": false, "what": roll.deploy.what, "version": roll.target.version,
                    "error": reason, "kept": roll.from.version,
                });
                self.finish(roll.deploy, outcome);
            }
        }
    }

    /// Records the outcome, answers the waiters, and starts the deploy that
    /// was asked for meanwhile, if any.
    fn finish(&mut self, deploy: Deploy, outcome: Value) {
        if deploy.what != "catch-up" {
            self.last = outcome.clone();
        }
        for w in deploy.waiters {
            w.send(outcome.clone()).ok();
        }
        if std::mem::take(&mut self.again) {
            self.trigger(None);
        }
    }

    pub fn status(&self, sup: &Supervisor) -> Value {
        let workers: Vec<Value> = sup
            .slots()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "index": i, "pid": s.pid, "state": format!("{:?}", s.state).to_lowercase(),
                    "version": s.version, "requests": s.requests, "in_flight": s.in_flight,
                })
            })
            .collect();
        json!({
            "ok": true,
            "version": self.current.version,
            "generation": self.generation,
            "previous": self.previous.as_ref().map(|a| a.version.clone()),
            "deploying": self.busy(),
            "last_deploy": self.last,
            "workers": workers,
        })
    }
}
