//! The primary process: owns the listening socket, the worker table, the
//! balancer, the file watcher and the control socket; never runs guest code.
//!
//! Strategy: before anything binds, the handler is compiled (or found in the
//! cache) by a child process. Then one task, this one, runs a loop over:
//! - the listener: each accepted connection goes to the dispatcher, which
//!   sends its fd to the next ready worker and holds it until acknowledged;
//! - worker events, from two tasks per worker (supervisor.rs): channel
//!   messages (Ready, Accepted, Loaded, Stats, ...) and the process's exit;
//! - deploy triggers: the file watcher (watcher.rs, debounced here), SIGHUP
//!   (signal.rs) and `wcluster reload` (control.rs); a compile task reports
//!   back, and the roll (deploy.rs) advances on the workers' answers;
//! - control requests (status, reload, rollback) and TERM/INT, which drains.
//!
//! Everything runs on one thread, so the worker table needs no locks.

mod balancer;
mod control;
mod deploy;
mod dispatch;
mod supervisor;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use control::{Command as ControlCommand, client as control_client};

use crate::config::{Config, WorkerInit};
use crate::ipc::ToPrimary;
use crate::runtime::artifact;
use crate::signal::{self, SignalEvent};
use deploy::Deploys;
use dispatch::Dispatcher;
use supervisor::{Event, Supervisor};

/// Extra time, beyond --drain-timeout, before workers still alive are killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Quiet time after the last file event before a deploy starts: a copy or
/// an editor's save is several events.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the primary looks for hung workers.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

pub fn main(config: Config) -> Result<()> {
    // One thread: see Supervisor::spawn for why that matters.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let config = Arc::new(config);
    let first = artifact::prepare(
        &config.handler,
        &config.cache_dir,
        &config.engine,
        &config.compile,
    )
    .await?;
    tracing::info!(
        version = %first.version,
        compiled = first.compiled,
        ms = first.compile_time.as_millis() as u64,
        "handler `{}` ready",
        config.handler.display()
    );
    let listener = bind(config.addr)?;
    let addr = listener.local_addr()?;
    let control_path = config
        .control
        .clone()
        .unwrap_or_else(|| control::default_path(addr.port()));
    let mut control = control::serve(&control_path)?;
    let _cleanup = RemoveOnDrop(control_path.clone());
    let (_watcher, mut file_events) = if config.watch {
        let (w, rx) = watcher::watch(&config.handler)?;
        (Some(w), rx)
    } else {
        (None, mpsc::unbounded_channel().1)
    };
    let mut signals = signal::listen()?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let init = WorkerInit {
        index: 0,
        artifact: first.path.clone(),
        version: first.version.clone(),
        engine: config.engine.clone(),
        limits: config.limits.clone(),
        grants: config.grants.clone(),
        drain_timeout: config.drain_timeout,
        smoke: config.smoke.clone(),
        reuse_instances: config.reuse_instances,
    };
    let mut sup = Supervisor::new(config.workers, init, config.log_format, tx);
    for i in 0..sup.len() {
        sup.spawn(i)?;
    }

    // Start-up: every worker must load the handler before we announce.
    while !sup.all_ready() {
        tokio::select! {
            Some(ev) = events.recv() => match ev {
                Event::Message { index, generation, msg: ToPrimary::Ready { version } } => {
                    sup.mark_ready(index, generation, version);
                }
                Event::Message { index, msg: ToPrimary::Failed { error }, .. } => {
                    sup.kill_all();
                    bail!("worker {index} could not load the handler: {error}");
                }
                Event::ChannelClosed { index, .. } | Event::ProcessExited { index, .. } => {
                    sup.kill_all();
                    bail!("worker {index} exited during start-up");
                }
                _ => {}
            },
            Some(SignalEvent::Shutdown) = signals.recv() => {
                sup.kill_all();
                return Ok(());
            }
        }
    }
    println!(
        "wcluster: listening on http://{addr} ({} workers)",
        sup.len()
    );
    tracing::info!("control socket: {}", control_path.display());

    let (compiled_tx, mut compiled) = mpsc::unbounded_channel();
    let mut deploys = Deploys::new(config.clone(), first, compiled_tx);
    let mut dispatch = Dispatcher::new();
    let mut debounce: Option<Instant> = None;
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match stream.into_std() {
                    Ok(stream) => dispatch.dispatch(&mut sup, stream),
                    Err(e) => tracing::warn!("cannot take an accepted connection: {e}"),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(ev) = events.recv() => on_event(ev, &mut sup, &mut dispatch, &mut deploys)?,
            Some(()) = file_events.recv() => debounce = Some(Instant::now() + DEBOUNCE),
            _ = sleep_until(debounce) => {
                debounce = None;
                tracing::info!("handler file changed");
                deploys.trigger(None);
            }
            Some(result) = compiled.recv() => deploys.on_compiled(result, &mut sup),
            Some((cmd, reply)) = control.recv() => match cmd {
                ControlCommand::Status => { reply.send(deploys.status(&sup)).ok(); }
                ControlCommand::Reload => deploys.trigger(Some(reply)),
                ControlCommand::Rollback => deploys.rollback(reply, &mut sup),
            },
            _ = liveness.tick() => sup.kill_unresponsive(config.liveness_timeout),
            Some(sig) = signals.recv() => match sig {
                SignalEvent::Shutdown => break,
                SignalEvent::Reload => {
                    tracing::info!("SIGHUP: reloading");
                    deploys.trigger(None);
                }
            },
        }
        if !dispatch.is_idle() {
            dispatch.flush(&mut sup);
        }
    }

    // Drain: stop accepting, let the workers finish, exit 0.
    drop(listener);
    tracing::info!(
        "shutting down: draining workers (up to {:?})",
        config.drain_timeout
    );
    sup.drain_all().await;
    let deadline = Instant::now() + config.drain_timeout + KILL_GRACE;
    while sup.any_alive() {
        tokio::select! {
            Some(ev) = events.recv() => on_event(ev, &mut sup, &mut dispatch, &mut deploys)?,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("workers still running after the drain timeout: killing them");
                sup.kill_all();
                break;
            }
        }
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn on_event(
    ev: Event,
    sup: &mut Supervisor,
    dispatch: &mut Dispatcher,
    deploys: &mut Deploys,
) -> Result<()> {
    let mut lost = |sup: &mut Supervisor, index, generation, why: &str| {
        if sup.lost(index, generation, why) {
            dispatch.reclaim(index);
            deploys.on_worker_lost(index, sup);
        }
    };
    match ev {
        Event::Message {
            index,
            generation,
            msg,
        } => {
            sup.seen(index, generation);
            match msg {
                ToPrimary::Accepted { id } => dispatch.accepted(id),
                ToPrimary::Ready { version } => {
                    if sup.mark_ready(index, generation, version) {
                        deploys.on_ready(sup);
                    }
                }
                ToPrimary::Failed { error } => {
                    tracing::error!(worker = index, "worker could not load the handler: {error}");
                    lost(sup, index, generation, "load failed");
                }
                ToPrimary::Loaded { version } => {
                    sup.update(index, generation, |s| s.version = version);
                    deploys.on_loaded(index, generation, sup);
                }
                ToPrimary::LoadFailed { error, .. } => {
                    deploys.on_load_failed(index, generation, &error, sup);
                }
                ToPrimary::Stats {
                    requests,
                    in_flight,
                } => sup.update(index, generation, |s| {
                    s.requests = requests;
                    s.in_flight = in_flight;
                }),
            }
        }
        Event::ChannelClosed { index, generation } => {
            lost(sup, index, generation, "channel closed")
        }
        Event::ProcessExited {
            index,
            generation,
            status,
        } => {
            lost(sup, index, generation, &format!("exited: {status}"));
            sup.reaped(index, generation);
        }
        Event::Respawn { index } => {
            if !sup.shutting_down {
                sup.spawn(index)?;
            }
        }
    }
    Ok(())
}

fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Lets a restarted wcluster bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Removes the control socket when the primary exits normally.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}
