//! The primary process: owns the listening socket, the worker processes,
//! the file watcher and the control socket; never runs guest code.
//!
//! Strategy: before anything binds, the handler is compiled (or found in the
//! cache) by a child process. Then this task, the shell, runs one loop:
//! every event becomes an `Input` for the control-plane core (core/), which
//! decides everything and answers with `Effect`s that the shell performs.
//! The shell's sources of inputs:
//! - worker tasks (processes.rs): each worker's messages, its channel
//!   closing, its process exiting; and compile tasks reporting back;
//! - the control socket (control/): status, reload, rollback, scale;
//! - signals (signal.rs): TERM/INT drain, HUP reload, TTIN/TTOU scale;
//! - the file watcher (watcher.rs); the core debounces;
//! - the listener, polled only while the core is accepting;
//! - the core's own next deadline (`poll_timeout`), as a `Tick`.
//!
//! Everything runs on one thread, so nothing here needs a lock, and the
//! shell holds only what the core cannot: sockets, processes, reply handles.

mod admin;
mod balancer;
pub mod control;
mod core;
mod listener;
mod metrics;
mod notify;
mod processes;
pub mod release;
mod watcher;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot, watch};

pub use control::client as control_client;

use crate::config::{Config, WorkerInit};
use crate::signal;
use control::protocol::Reply;
use core::{Announcement, ConnId, ControlId, Core, Effect, Gone, Input, Settings};
use processes::Processes;
use release::Scope;

/// Quiet time after the last file event before a deploy starts: a copy or
/// an editor's save is several events.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Beyond the smoke check's own timeout: how long loading and
/// pre-instantiating a version may take before the worker is replaced.
const LOAD_MARGIN: Duration = Duration::from_secs(10);

pub fn main(config: Config) -> Result<()> {
    // One thread: see Processes::spawn for why that matters.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    crate::runtime::capabilities::check(&config.defaults.grants)?;
    let config = Arc::new(config);
    let first = release::build(&config, &Scope::All, None).await?;
    tracing::info!(
        version = %first.version,
        compiled = first.compiled,
        ms = first.compile_time.as_millis() as u64,
        "`{}` ready: {}",
        config.source.path().display(),
        first.app.versions()
    );
    let listener = listener::listen(config.addr, config.backlog)?;
    let addr = listener.local_addr()?;
    let control_path = config
        .control
        .clone()
        .unwrap_or_else(|| control::default_path(addr.port()));
    let (control_tx, control) = mpsc::unbounded_channel();
    control::serve(&control_path, config.control.is_none(), control_tx.clone())?;
    let (health_tx, health) = watch::channel((false, false));
    if let Some(settings) = &config.admin {
        let bound = admin::serve(settings, health, control_tx)?;
        tracing::info!("admin endpoint: http://{bound}/ (healthz, readyz, metrics, status)");
    }
    let _cleanup = RemoveOnDrop(control_path.clone());
    let (watcher, file_events) = if config.watch {
        let (mut w, rx) = watcher::Watcher::new()?;
        if let Some(problem) = w.set(&release::watched(&config, &first.app)).first() {
            anyhow::bail!("{problem}");
        }
        (Some(w), rx)
    } else {
        (None, mpsc::unbounded_channel().1)
    };
    let signals = signal::listen()?;
    let (inputs_tx, inputs) = mpsc::unbounded_channel();
    let init = WorkerInit {
        index: 0,
        app: first.app.clone(),
        engine: config.engine.clone(),
        limits: config.limits.clone(),
        drain_timeout: config.drain_timeout,
        tls: config.tls.clone(),
    };
    let settings = Settings {
        workers: config.workers,
        max_workers: config.max_workers,
        load_timeout: config.smoke_timeout + LOAD_MARGIN,
        liveness_timeout: config.liveness_timeout,
        drain_timeout: config.drain_timeout,
        drain_delay: config.drain_delay,
        debounce: DEBOUNCE,
    };
    let first_version = first.version.clone();
    let (core, effects) = Core::new(settings, first, Instant::now());
    let mut shell = Shell {
        core,
        config: config.clone(),
        addr,
        control_path,
        listener: Some(listener),
        conns: HashMap::new(),
        next_conn: 1,
        replies: HashMap::new(),
        next_control: 1,
        procs: Processes::new(init, config.log_format, inputs_tx.clone()),
        inputs_tx,
        watcher,
        followed: first_version,
        health: health_tx,
        exit: None,
    };
    shell.perform_all(effects);
    shell.run(inputs, control, signals, file_events).await
}

/// What the core cannot hold: sockets, processes and reply handles.
struct Shell {
    core: Core,
    config: Arc<Config>,
    addr: std::net::SocketAddr,
    control_path: std::path::PathBuf,
    listener: Option<listener::Listener>,
    /// Connections accepted and not yet acknowledged by a worker.
    conns: HashMap<ConnId, TcpStream>,
    next_conn: ConnId,
    replies: HashMap<ControlId, oneshot::Sender<Reply>>,
    next_control: ControlId,
    procs: Processes,
    inputs_tx: mpsc::UnboundedSender<Input>,
    watcher: Option<watcher::Watcher>,
    /// The live version whose files are watched.
    followed: String,
    /// (ready, healthy), for the admin endpoint's probes.
    health: watch::Sender<(bool, bool)>,
    exit: Option<Result<(), core::StartFailure>>,
}

impl Shell {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut control: mpsc::UnboundedReceiver<control::Request>,
        mut signals: mpsc::UnboundedReceiver<signal::SignalEvent>,
        mut file_events: mpsc::UnboundedReceiver<Scope>,
    ) -> Result<()> {
        let ping = notify::watchdog_interval();
        let mut watchdog = tokio::time::interval(ping.unwrap_or(Duration::from_secs(3600)));
        while self.exit.is_none() {
            let deadline = self.core.poll_timeout();
            let accepting = self.core.accepting();
            // Biased, workers first: their queued reports are news that the
            // core must see before a tick judges their liveness.
            let input = tokio::select! {
                biased;
                Some(input) = inputs.recv() => input,
                Some(sig) = signals.recv() => Input::Signal(sig),
                Some((request, reply)) = control.recv() => {
                    let id = self.next_control;
                    self.next_control += 1;
                    self.replies.insert(id, reply);
                    Input::Control(id, request)
                }
                Some(scope) = file_events.recv() => Input::FileChanged(scope),
                accepted = accept(self.listener.as_ref(), accepting) => match accepted {
                    Ok(stream) => {
                        let id = self.next_conn;
                        self.next_conn += 1;
                        self.conns.insert(id, stream);
                        Input::Accepted(id)
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = sleep_until(deadline) => Input::Tick,
                _ = watchdog.tick(), if ping.is_some() => {
                    // The loop runs: systemd's watchdog may wait on.
                    notify::watchdog();
                    continue;
                }
            };
            self.feed(input);
        }
        Ok(self.exit.take().expect("loop ends on exit")?)
    }

    /// Hands one input to the core and performs the effects, feeding back
    /// what performing them reports (a failed send, a failed spawn) first.
    fn feed(&mut self, input: Input) {
        if let Input::WorkerGone(worker, Gone::Exited(_)) = &input {
            self.procs.reaped(*worker);
        }
        // A compile read the manifest on disk again: it may name new files.
        let compiled = matches!(input, Input::Compiled { .. });
        let effects = self.core.handle(Instant::now(), input);
        self.perform_all(effects);
        if compiled || self.core.live().version != self.followed {
            self.follow();
        }
        let now = (self.core.ready(), self.core.healthy());
        self.health
            .send_if_modified(|h| std::mem::replace(h, now) != now);
    }

    fn perform_all(&mut self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            if let Some(back) = self.perform(effect) {
                let more = self.core.handle(Instant::now(), back);
                for e in more.into_iter().rev() {
                    queue.push_front(e);
                }
            }
        }
    }

    /// Performs one effect; returns what the core must hear about it.
    fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn { worker, release } => match self.procs.spawn(worker, &release) {
                Ok(pid) => return Some(Input::Spawned { worker, pid }),
                Err(e) => {
                    return Some(Input::WorkerGone(
                        worker,
                        Gone::SpawnFailed(format!("{e:#}")),
                    ));
                }
            },
            Effect::SendConn { worker, conn } => {
                let stream = self.conns.get(&conn)?;
                if let Err(e) = self.procs.send_conn(worker, conn, stream) {
                    let full = e.kind() == io::ErrorKind::WouldBlock;
                    return Some(Input::ConnNotSent { conn, worker, full });
                }
            }
            Effect::CloseConn(conn) => {
                self.conns.remove(&conn);
            }
            Effect::Send(worker, msg) => self.procs.send(worker, msg),
            Effect::Kill(worker) => self.procs.kill(worker),
            Effect::Compile { job, scope, base } => {
                let config = self.config.clone();
                let tx = self.inputs_tx.clone();
                tokio::spawn(async move {
                    let result = release::build(&config, &scope, Some(&base))
                        .await
                        .map_err(|e| format!("{e:#}"));
                    tx.send(Input::Compiled { job, result }).ok();
                });
            }
            Effect::Reply(to, reply) => {
                if let Some(tx) = self.replies.remove(&to) {
                    tx.send(reply).ok();
                }
            }
            Effect::Announce(a) => self.announce(a),
            Effect::StopListening => self.listener = None,
            Effect::Exit(result) => self.exit = Some(result),
        }
        None
    }

    /// Watches the files of the live release, and those the manifest on
    /// disk names, from now on.
    fn follow(&mut self) {
        let live = self.core.live();
        self.followed = live.version.clone();
        let files = release::watched(&self.config, &live.app);
        if let Some(w) = &mut self.watcher {
            for problem in w.set(&files) {
                tracing::warn!("{problem}; changes there are not seen (reload to deploy them)");
            }
        }
    }

    /// A line on stdout for people and tests; systemd's state, if it asks.
    fn announce(&mut self, a: Announcement) {
        notify::announce(&a);
        match a {
            Announcement::Listening { workers } => {
                let plural = if workers == 1 { "worker" } else { "workers" };
                println!(
                    "wcluster: listening on {}://{} ({workers} {plural})",
                    if self.config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    self.addr
                );
                tracing::info!("control socket: {}", self.control_path.display());
            }
            Announcement::Rolled {
                version,
                workers,
                ms,
            } => {
                let plural = if workers == 1 { "worker" } else { "workers" };
                println!("wcluster: rolled to {version} on {workers} {plural} in {ms} ms");
            }
            Announcement::RollStarted { .. }
            | Announcement::RollEnded { .. }
            | Announcement::Draining => {}
        }
    }
}

/// The next connection, while `accepting`; otherwise never.
async fn accept(listener: Option<&listener::Listener>, accepting: bool) -> io::Result<TcpStream> {
    match listener {
        Some(l) if accepting => l.accept().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Removes the control socket when the primary exits normally.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}
