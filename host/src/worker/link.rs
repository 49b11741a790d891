//! The worker's side of its channel to the primary (the primary's side is
//! primary/processes.rs): one method per message, and the rule that makes
//! the hand-off safe. The primary holds a copy of every connection it sends
//! until the worker acknowledges it, so acknowledgements must never wait
//! behind anything else:
//! - connections received back to back are acknowledged in one message
//!   (at most MAX_ACK_BATCH ids), before the worker waits for the next
//!   message and before it handles any message that is not a connection;
//! - every other message this link sends goes out after the
//!   acknowledgements pending at that moment (a message of another task
//!   may overtake acknowledgements whose send is still waiting: the
//!   primary needs them in order with connections, not with reports).

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use anyhow::{Result, bail};

use crate::config::WorkerInit;
use crate::ipc::{Channel, ToPrimary, ToWorker, WorkerCounts};
use crate::runtime::artifact::cache::DamagedArtifact;

/// Connections one acknowledgement names at most, so that a long burst is
/// still acknowledged as it goes and the message stays small.
const MAX_ACK_BATCH: usize = 64;

pub struct Link {
    chan: Channel,
    /// Received, not yet acknowledged.
    unacknowledged: Mutex<Vec<u64>>,
}

/// What the primary sent next.
pub enum Next {
    Conn {
        id: u64,
        fd: OwnedFd,
    },
    Other(ToWorker),
    /// A message that could not be read (logged; the channel goes on).
    Bad(std::io::Error),
    /// The primary is gone.
    Closed,
}

impl Link {
    pub fn new(fd: OwnedFd) -> std::io::Result<Link> {
        Ok(Link {
            chan: Channel::new(fd)?,
            unacknowledged: Mutex::new(Vec::new()),
        })
    }

    /// The first message: everything the worker needs to start.
    pub async fn init(&self) -> Result<Box<WorkerInit>> {
        match self.chan.recv::<ToWorker>().await? {
            Some((ToWorker::Init(init), _)) => Ok(init),
            Some((other, _)) => bail!("expected Init from the primary, got {other:?}"),
            None => bail!("the primary closed the channel before Init"),
        }
    }

    /// The next message from the primary. Pending acknowledgements go out
    /// first whenever this would wait, or the message is not a connection.
    /// An error is a failed send of acknowledgements: the channel is broken.
    pub async fn next(&self) -> std::io::Result<Next> {
        let next = match self.chan.try_recv::<ToWorker>() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.acknowledge().await?;
                self.chan.recv::<ToWorker>().await
            }
            other => other,
        };
        let next = match next {
            Ok(Some((ToWorker::Conn { id }, Some(fd)))) => return Ok(Next::Conn { id, fd }),
            Ok(Some((msg, _))) => Next::Other(msg),
            Ok(None) => Next::Closed,
            Err(e) => Next::Bad(e),
        };
        self.acknowledge().await?;
        Ok(next)
    }

    /// A connection from `next` is being served: acknowledged with the
    /// others received back to back (at once when the batch is full).
    pub async fn received(&self, id: u64) -> std::io::Result<()> {
        let full = {
            let mut pending = self.pending();
            pending.push(id);
            pending.len() >= MAX_ACK_BATCH
        };
        if full {
            self.acknowledge().await?;
        }
        Ok(())
    }

    /// The first version is loaded: send connections.
    pub async fn ready(&self, version: &str) -> std::io::Result<()> {
        self.send(&ToPrimary::Ready {
            version: version.to_string(),
        })
        .await
    }

    /// Loading the first version failed; the worker exits after this. A
    /// damaged artifact (its digest) is told apart, so the primary rebuilds it.
    pub async fn failed(&self, e: &anyhow::Error) {
        let error = format!("{e:#}");
        let msg = if e.chain().any(|c| c.is::<DamagedArtifact>()) {
            ToPrimary::ArtifactDamaged { error }
        } else {
            ToPrimary::Failed { error }
        };
        self.send(&msg).await.ok();
    }

    /// The outcome of a `Load`.
    pub async fn loaded(&self, version: String, outcome: &Result<()>) {
        let msg = match outcome {
            Ok(()) => ToPrimary::Loaded { version },
            Err(e) => ToPrimary::LoadFailed {
                version,
                error: format!("{e:#}"),
            },
        };
        self.send(&msg).await.ok();
    }

    /// The worker holds --max-connections connections, or has room again.
    /// Sent from synchronous code without waiting: the message is tiny and
    /// the channel almost never full; if it is, the next change says it
    /// again. (It does not flush acknowledgements: those may not be lost.)
    pub fn capacity(&self, full: bool) {
        self.chan.try_send(&ToPrimary::Capacity { full }, None).ok();
    }

    /// Requests started so far, in flight now, and the metrics' counters.
    pub async fn stats(
        &self,
        requests: u64,
        in_flight: u32,
        counts: WorkerCounts,
    ) -> std::io::Result<()> {
        self.send(&ToPrimary::Stats {
            requests,
            in_flight,
            counts: Box::new(counts),
        })
        .await
    }

    async fn send(&self, msg: &ToPrimary) -> std::io::Result<()> {
        self.acknowledge().await?;
        self.chan.send(msg, None).await
    }

    /// Tells the primary it may close its copies of the pending connections.
    async fn acknowledge(&self) -> std::io::Result<()> {
        let ids = std::mem::take(&mut *self.pending());
        if ids.is_empty() {
            return Ok(());
        }
        self.chan.send(&ToPrimary::Accepted { ids }, None).await
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.unacknowledged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Link, Channel) {
        let (primary, worker) = crate::ipc::pair().unwrap();
        (Link::new(worker).unwrap(), Channel::new(primary).unwrap())
    }

    async fn from_worker(primary: &Channel) -> ToPrimary {
        primary.recv::<ToPrimary>().await.unwrap().unwrap().0
    }

    #[tokio::test]
    async fn acknowledgements_go_out_before_any_other_message() {
        let (link, primary) = pair();
        link.received(1).await.unwrap();
        link.received(2).await.unwrap();
        link.stats(5, 0, WorkerCounts::default()).await.unwrap();
        assert!(matches!(
            from_worker(&primary).await,
            ToPrimary::Accepted { ids } if ids == [1, 2]
        ));
        assert!(matches!(
            from_worker(&primary).await,
            ToPrimary::Stats { requests: 5, .. }
        ));
    }

    #[tokio::test]
    async fn a_full_batch_is_acknowledged_at_once_and_any_other_message_flushes_the_rest() {
        let (link, primary) = pair();
        for id in 0..MAX_ACK_BATCH as u64 + 3 {
            link.received(id).await.unwrap();
        }
        let ToPrimary::Accepted { ids } = from_worker(&primary).await else {
            panic!("no acknowledgement");
        };
        assert_eq!(ids.len(), MAX_ACK_BATCH);
        // Nothing more to read: `next` would wait, so the last three go out.
        primary.send(&ToWorker::Report, None).await.unwrap();
        let ToPrimary::Accepted { ids } = ({
            let (next, ack) = tokio::join!(link.next(), from_worker(&primary));
            assert!(matches!(next.unwrap(), Next::Other(ToWorker::Report)));
            ack
        }) else {
            panic!("the rest was not acknowledged");
        };
        assert_eq!(ids, [64, 65, 66]);
    }
}
