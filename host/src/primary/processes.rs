//! The shell's side of the workers: the processes and their channels. It
//! spawns a worker when the core says so and turns everything a worker does
//! into core inputs, through three tasks per worker:
//! - reader: the worker's messages, then `WorkerGone(ChannelClosed)`;
//! - writer: the core's messages to it, in order (`Init` first);
//! - reaper: waits for the process (or kills it) and reports `Exited`.
//!
//! Connection fds are not queued: `send_conn` tries once, without waiting,
//! and the core decides what a failure means.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::{Notify, mpsc};

use super::core::{Gone, Input, WorkerId};
use super::release::Release;
use crate::cli::LogFormat;
use crate::config::WorkerInit;
use crate::ipc::{self, Channel, ToPrimary, ToWorker};

struct Proc {
    chan: Arc<Channel>,
    outbox: mpsc::UnboundedSender<ToWorker>,
    kill: Arc<Notify>,
}

pub struct Processes {
    procs: HashMap<WorkerId, Proc>,
    inputs: mpsc::UnboundedSender<Input>,
    /// The settings every worker starts with; index and app vary.
    init: WorkerInit,
    log_format: LogFormat,
}

impl Processes {
    pub fn new(
        init: WorkerInit,
        log_format: LogFormat,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> Self {
        Self {
            procs: HashMap::new(),
            inputs,
            init,
            log_format,
        }
    }

    /// Starts the worker and sends it `Init`; returns its pid.
    ///
    /// Must run on the primary's only thread: the worker's end of the
    /// socketpair is inheritable between `make_inheritable` and the spawn,
    /// and PDEATHSIG fires when the spawning *thread* exits.
    pub fn spawn(&mut self, worker: WorkerId, release: &Release) -> Result<u32> {
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
        let pid = child.id().unwrap_or_default();
        let chan = Arc::new(Channel::new(ours)?);
        let (outbox, mut queued) = mpsc::unbounded_channel();
        let kill = Arc::new(Notify::new());

        let mut init = self.init.clone();
        init.index = worker.index;
        init.app = release.app.clone();
        outbox.send(ToWorker::Init(Box::new(init))).ok();

        let (c, tx) = (chan.clone(), self.inputs.clone());
        tokio::spawn(async move {
            while let Some(msg) = queued.recv().await {
                if let Err(e) = c.send(&msg, None).await {
                    tx.send(Input::WorkerGone(
                        worker,
                        Gone::ChannelBroken(e.to_string()),
                    ))
                    .ok();
                    return;
                }
            }
        });
        let (c, tx) = (chan.clone(), self.inputs.clone());
        tokio::spawn(async move {
            while let Ok(Some((msg, _))) = c.recv::<ToPrimary>().await {
                if tx.send(Input::FromWorker(worker, msg)).is_err() {
                    return;
                }
            }
            tx.send(Input::WorkerGone(worker, Gone::ChannelClosed)).ok();
        });
        let (k, tx) = (kill.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = k.notified() => {
                    // Through the Child, never a bare pid: a reaped pid may
                    // belong to another process by now.
                    child.start_kill().ok();
                    child.wait().await
                }
            };
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            tx.send(Input::WorkerGone(worker, Gone::Exited(status)))
                .ok();
        });
        self.procs.insert(worker, Proc { chan, outbox, kill });
        tracing::debug!(worker = worker.index, pid, "worker spawned");
        Ok(pid)
    }

    /// Sends a connection's fd without waiting: `WouldBlock` when the
    /// worker's channel is full, so one stuck worker cannot stall the loop.
    pub fn send_conn(
        &self,
        worker: WorkerId,
        id: u64,
        stream: &std::net::TcpStream,
    ) -> io::Result<()> {
        match self.procs.get(&worker) {
            Some(p) => p
                .chan
                .try_send(&ToWorker::Conn { id }, Some(stream.as_fd())),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "worker is gone",
            )),
        }
    }

    /// Queues a message for the worker, in order.
    pub fn send(&self, worker: WorkerId, msg: ToWorker) {
        if let Some(p) = self.procs.get(&worker) {
            p.outbox.send(msg).ok();
        }
    }

    /// Kills the worker; it is forgotten here at once, so nothing more is
    /// sent to it.
    pub fn kill(&mut self, worker: WorkerId) {
        if let Some(p) = self.procs.remove(&worker) {
            p.kill.notify_one();
        }
    }

    /// The process exited: forget it.
    pub fn reaped(&mut self, worker: WorkerId) {
        self.procs.remove(&worker);
    }
}
