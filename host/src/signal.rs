//! The only code that touches signals: turns them into events for the primary.

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// TERM or INT: stop accepting, drain, exit 0.
    Shutdown,
    /// HUP: deploy the handler file again.
    Reload,
    /// TTIN: one worker more.
    ScaleUp,
    /// TTOU: one worker less (never fewer than one).
    ScaleDown,
}

/// Starts listening for signals; events arrive on the returned channel.
pub fn listen() -> Result<mpsc::UnboundedReceiver<SignalEvent>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (kind, event) in [
        (SignalKind::terminate(), SignalEvent::Shutdown),
        (SignalKind::interrupt(), SignalEvent::Shutdown),
        (SignalKind::hangup(), SignalEvent::Reload),
        (
            SignalKind::from_raw(nix::libc::SIGTTIN),
            SignalEvent::ScaleUp,
        ),
        (
            SignalKind::from_raw(nix::libc::SIGTTOU),
            SignalEvent::ScaleDown,
        ),
    ] {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}
