//! The command-line side: `wcluster status|reload|rollback|scale`. Prints
//! the reply as text (a table for status) or, with --json, as JSON; exits
//! non-zero when the server says the command failed.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};

use super::default_path;
use super::protocol::{Reply, Request, Status};
use crate::cli::ControlArgs;

pub fn client(request: Request, args: ControlArgs) -> Result<()> {
    let path = args.control.unwrap_or_else(|| default_path(args.port));
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach a wcluster at `{}` (is it running? pass --port or --control)",
            path.display()
        )
    })?;
    check_peer(&stream, &path)?;
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    let reply: Reply =
        serde_json::from_str(&answer).context("the server's answer is not a reply")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", text(&reply));
    }
    if reply.ok() {
        return Ok(());
    }
    match &reply {
        Reply::Refused { reason } => bail!("{reason}"),
        Reply::Deploy(d) => bail!("{d}"),
        _ => bail!("the server reported a failure"),
    }
}

/// Only a server run by this user (or root) is believed: anyone else
/// listening at the path could print a fake success.
fn check_peer(stream: &std::os::unix::net::UnixStream, path: &std::path::Path) -> Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let peer = getsockopt(stream, PeerCredentials).context("cannot check the server's user")?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() != me && peer.uid() != 0 {
        bail!(
            "the process at `{}` runs as uid {}, not as this user (uid {me}) or root; not trusting it",
            path.display(),
            peer.uid()
        );
    }
    Ok(())
}

/// The reply for a person to read.
fn text(reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => status_table(s),
        Reply::Deploy(d) if d.ok() => format!("{d}\n"),
        // Failures are printed once, as the error.
        Reply::Deploy(_) | Reply::Refused { .. } => String::new(),
        Reply::Scale(s) if s.deferred => format!(
            "scaling to {} workers when the current roll ends\n",
            s.target
        ),
        Reply::Scale(s) => format!("scaling to {} workers\n", s.target),
        Reply::Metrics(m) => serde_json::to_string_pretty(m).unwrap_or_default() + "\n",
    }
}

/// A manifest's handlers: version, routes, and the last deploy of each.
fn handler_table(s: &Status) -> String {
    let mut out = format!(
        "{:<16}  {:<12}  {:<12}  {:<30}  {}\n",
        "HANDLER", "VERSION", "PREVIOUS", "ROUTES", "LAST DEPLOY"
    );
    for h in &s.handlers {
        out += &format!(
            "{:<16}  {:<12}  {:<12}  {:<30}  {}\n",
            h.name,
            h.version,
            h.previous.as_deref().unwrap_or("-"),
            h.routes.join(" "),
            h.last_deploy
                .as_ref()
                .map_or("-".to_string(), |d| d.to_string())
        );
    }
    out + "\n"
}

fn status_table(s: &Status) -> String {
    let mut out = format!(
        "version {} (generation {}{}){}\n",
        s.version,
        s.generation,
        s.previous
            .as_deref()
            .map(|p| format!(", previous {p}"))
            .unwrap_or_default(),
        if s.deploying { ", deploying" } else { "" }
    );
    out += &format!(
        "workers: {} wanted{}\n",
        s.target_workers,
        s.pending_target
            .map(|n| format!(" ({n} after the current roll)"))
            .unwrap_or_default()
    );
    out += &format!("last deploy: {}\n\n", s.last_deploy);
    if s.handlers.len() > 1 || s.handlers.iter().any(|h| h.name != "main") {
        out += &handler_table(s);
    }
    out += &format!(
        "{:>6}  {:>8}  {:<9}  {:<12}  {:>10}  {:>9}  {:>8}\n",
        "WORKER", "PID", "STATE", "VERSION", "REQUESTS", "IN FLIGHT", "RESTARTS"
    );
    for w in &s.workers {
        let state = serde_json::to_value(w.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out += &format!(
            "{:>6}  {:>8}  {:<9}  {:<12}  {:>10}  {:>9}  {:>8}\n",
            w.index,
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            state,
            if w.version.is_empty() {
                "-"
            } else {
                &w.version
            },
            w.requests,
            w.in_flight,
            w.restarts
        );
    }
    if s.queued_connections + s.connections_in_transit > 0 {
        out += &format!(
            "\nconnections: {} waiting for a worker, {} in transit\n",
            s.queued_connections, s.connections_in_transit
        );
    }
    out
}
