//! systemd's notification protocol (when NOTIFY_SOCKET is set): READY once
//! every worker is ready, RELOADING ... READY around a roll, STOPPING on
//! drain, STATUS lines, and WATCHDOG pings when WATCHDOG_USEC asks for them.
//! Without NOTIFY_SOCKET every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use super::core::Announcement;

/// Tells systemd what an announcement means for the service's state.
pub fn announce(a: &Announcement) {
    let status;
    let states: Vec<NotifyState> = match a {
        Announcement::Listening { workers } => {
            let noun = if *workers == 1 { "worker" } else { "workers" };
            status = format!("serving on {workers} {noun}");
            vec![NotifyState::Ready, NotifyState::Status(&status)]
        }
        Announcement::RollStarted { version } => {
            status = format!("rolling out {version}");
            let mut v = vec![NotifyState::Reloading, NotifyState::Status(&status)];
            if let Ok(now) = NotifyState::monotonic_usec_now() {
                v.push(now);
            }
            v
        }
        Announcement::RollEnded { serving } => {
            status = format!("serving {serving}");
            vec![NotifyState::Ready, NotifyState::Status(&status)]
        }
        Announcement::Draining => vec![NotifyState::Stopping, NotifyState::Status("draining")],
        Announcement::Rolled { .. } => return,
    };
    send(&states);
}

/// How often to ping the watchdog: half of what systemd asks, if it asks.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}
