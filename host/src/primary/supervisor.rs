//! The worker table: spawning workers, their states, and replacing the ones
//! that die, with exponential backoff when they keep dying.

use std::os::fd::{AsFd, AsRawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::cli::LogFormat;
use crate::config::WorkerInit;
use crate::ipc::{self, Channel, ToPrimary, ToWorker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What the per-worker tasks report to the primary's loop. `generation` tells a
/// worker from the one that had its slot before.
#[derive(Debug)]
pub enum Event {
    Message {
        index: usize,
        generation: u64,
        msg: ToPrimary,
    },
    ChannelClosed {
        index: usize,
        generation: u64,
    },
    ProcessExited {
        index: usize,
        generation: u64,
        status: String,
    },
    Respawn {
        index: usize,
    },
}

pub struct Slot {
    pub state: WorkerState,
    /// The handler version the worker serves.
    pub version: String,
    /// Last counts the worker reported.
    pub requests: u64,
    pub in_flight: u32,
    pub generation: u64,
    pub pid: Option<u32>,
    /// The process has not been reaped yet.
    pub alive: bool,
    chan: Option<Arc<Channel>>,
    started: Instant,
    /// When the worker last said anything (it reports stats every second).
    last_seen: Instant,
    failures: u32,
}

pub struct Supervisor {
    slots: Vec<Slot>,
    events: mpsc::UnboundedSender<Event>,
    init: WorkerInit,
    log_format: LogFormat,
    next_gen: u64,
    pub shutting_down: bool,
}

/// A worker that lived this long before dying is not in a crash loop.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive quick deaths before the crash loop is reported as an error.
const CRASH_LOOP: u32 = 5;

impl Supervisor {
    pub fn new(
        count: usize,
        init: WorkerInit,
        log_format: LogFormat,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let slots = (0..count)
            .map(|_| Slot {
                state: WorkerState::Exited,
                version: String::new(),
                requests: 0,
                in_flight: 0,
                generation: 0,
                pid: None,
                alive: false,
                chan: None,
                started: Instant::now(),
                last_seen: Instant::now(),
                failures: 0,
            })
            .collect();
        Self {
            slots,
            events,
            init,
            log_format,
            next_gen: 1,
            shutting_down: false,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    pub fn is_ready(&self, index: usize) -> bool {
        self.slots[index].state == WorkerState::Ready
    }

    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| s.state == WorkerState::Ready)
    }

    pub fn any_alive(&self) -> bool {
        self.slots.iter().any(|s| s.alive)
    }

    pub fn channel(&self, index: usize) -> Option<&Arc<Channel>> {
        self.slots[index].chan.as_ref()
    }

    /// Starts the worker for slot `index` and sends it `Init`.
    ///
    /// Must run on the primary's only thread: the worker's end of the
    /// socketpair is inheritable between `make_inheritable` and the spawn,
    /// and PDEATHSIG fires when the spawning *thread* exits.
    pub fn spawn(&mut self, index: usize) -> Result<()> {
        let (ours, theirs) = ipc::pair().context("cannot create a worker channel")?;
        ipc::make_inheritable(theirs.as_fd())?;
        let exe = std::env::current_exe().context("cannot find the wcluster executable")?;
        let log_format = match self.log_format {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .arg("--channel-fd")
            .arg(theirs.as_raw_fd().to_string())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--log-format")
            .arg(log_format)
            // Its own process group: a terminal's Ctrl-C reaches the primary
            // alone, which then drains the workers in order.
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot spawn a worker process")?;
        drop(theirs);
        let chan = Arc::new(Channel::new(ours)?);
        let generation = self.next_gen;
        self.next_gen += 1;
        let pid = child.id();
        let slot = &mut self.slots[index];
        slot.state = WorkerState::Starting;
        slot.generation = generation;
        slot.pid = pid;
        slot.alive = true;
        slot.chan = Some(chan.clone());
        slot.started = Instant::now();
        slot.last_seen = slot.started;

        let mut init = self.init.clone();
        init.index = index;
        let events = self.events.clone();
        tokio::spawn(async move {
            if chan
                .send(&ToWorker::Init(Box::new(init)), None)
                .await
                .is_ok()
            {
                while let Ok(Some((msg, _))) = chan.recv::<ToPrimary>().await {
                    if events
                        .send(Event::Message {
                            index,
                            generation,
                            msg,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            events.send(Event::ChannelClosed { index, generation }).ok();
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            events
                .send(Event::ProcessExited {
                    index,
                    generation,
                    status,
                })
                .ok();
        });
        tracing::debug!(worker = index, pid, "worker spawned");
        Ok(())
    }

    pub fn mark_ready(&mut self, index: usize, generation: u64, version: String) -> bool {
        let slot = &mut self.slots[index];
        if slot.generation != generation || slot.state != WorkerState::Starting {
            return false;
        }
        slot.state = WorkerState::Ready;
        tracing::info!(worker = index, pid = slot.pid, %version, "worker ready");
        slot.version = version;
        slot.requests = 0;
        slot.in_flight = 0;
        true
    }

    /// The worker in `index` spoke: it is alive.
    pub fn seen(&mut self, index: usize, generation: u64) {
        let slot = &mut self.slots[index];
        if slot.generation == generation {
            slot.last_seen = Instant::now();
        }
    }

    /// Kills the workers that have said nothing for `timeout` (hung, or
    /// stopped with SIGSTOP); their exit then takes them out of rotation and
    /// brings a replacement, like any other death.
    pub fn kill_unresponsive(&mut self, timeout: Duration) {
        for (index, slot) in self.slots.iter().enumerate() {
            let live = matches!(slot.state, WorkerState::Starting | WorkerState::Ready);
            if !live || !slot.alive || slot.last_seen.elapsed() < timeout {
                continue;
            }
            if let Some(pid) = slot.pid {
                tracing::error!(
                    worker = index,
                    pid,
                    "worker unresponsive for {:?} (--liveness-timeout): killing it",
                    slot.last_seen.elapsed()
                );
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).ok();
            }
        }
    }

    /// Records what a worker reported, if it is still the one in the slot.
    pub fn update(&mut self, index: usize, generation: u64, f: impl FnOnce(&mut Slot)) {
        let slot = &mut self.slots[index];
        if slot.generation == generation {
            f(slot);
        }
    }

    /// The artifact new and replacement workers start with: the last good one.
    pub fn set_artifact(&mut self, path: std::path::PathBuf, version: String) {
        self.init.artifact = path;
        self.init.version = version;
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Takes a worker out of the rotation because its channel or process is
    /// gone, kills what is left of it, and schedules its replacement.
    /// Returns false when that had already happened.
    pub fn lost(&mut self, index: usize, generation: u64, why: &str) -> bool {
        let slot = &mut self.slots[index];
        if slot.generation != generation || slot.state == WorkerState::Exited {
            return false;
        }
        let expected = slot.state == WorkerState::Draining;
        slot.state = WorkerState::Exited;
        slot.chan = None;
        if let Some(pid) = slot.pid.filter(|_| slot.alive) {
            // A worker whose channel broke cannot be talked to: make sure it is gone.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).ok();
        }
        if expected || self.shutting_down {
            return true;
        }
        if slot.started.elapsed() >= HEALTHY_RUN {
            slot.failures = 0;
        }
        let delay = match slot.failures {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n.min(16))).min(MAX_BACKOFF),
        };
        slot.failures += 1;
        if slot.failures >= CRASH_LOOP {
            tracing::error!(
                worker = index,
                failures = slot.failures,
                "worker is crash-looping ({why}); next restart in {delay:?}"
            );
        } else {
            tracing::warn!(
                worker = index,
                pid = slot.pid,
                "worker lost ({why}); restarting in {delay:?}"
            );
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            events.send(Event::Respawn { index }).ok();
        });
        true
    }

    pub fn reaped(&mut self, index: usize, generation: u64) {
        let slot = &mut self.slots[index];
        if slot.generation == generation {
            slot.alive = false;
        }
    }

    /// Asks every worker to finish its requests and exit.
    pub async fn drain_all(&mut self) {
        self.shutting_down = true;
        for slot in &mut self.slots {
            if let Some(chan) = &slot.chan {
                slot.state = WorkerState::Draining;
                chan.send(&ToWorker::Drain, None).await.ok();
            }
        }
    }

    pub fn kill_all(&mut self) {
        for slot in &self.slots {
            if let Some(pid) = slot.pid.filter(|_| slot.alive) {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).ok();
            }
        }
    }
}
