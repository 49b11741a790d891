//! Admission under load: how many requests run at once (--max-concurrent),
//! how many wait for a turn and for how long (--max-queued,
//! --queue-timeout), how many connections are open (--max-connections),
//! and the counts behind the periodic overload summary.
//!
//! A request over the concurrency cap waits in FIFO order (tokio's
//! semaphore hands a freed permit to its oldest waiter, so a keep-alive
//! connection sending back to back cannot starve the others) and gets 503
//! with Retry-After only when the queue is full or its wait ran out. A
//! connection over the connection cap is not closed: it waits for a slot,
//! and the worker tells the primary it is full, so the primary sends it no
//! more and, when every worker is full, stops accepting (clients wait in
//! the kernel's listen backlog).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::link::Link;
use crate::config::RequestLimits;

/// How often the overload summary is written (only when something happened).
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// --max-queued requests were already waiting.
    QueueFull,
    /// It waited --queue-timeout without getting a turn.
    Waited,
}

pub struct Requests {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    waiting: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
    queue_full: AtomicU64,
    waited_out: AtomicU64,
    queued_total: AtomicU64,
}

impl Requests {
    pub fn new(limits: &RequestLimits) -> Requests {
        Requests {
            permits: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            max_concurrent: limits.max_concurrent as usize,
            waiting: AtomicUsize::new(0),
            max_queued: limits.max_queued,
            queue_timeout: limits.queue_timeout,
            queue_full: AtomicU64::new(0),
            waited_out: AtomicU64::new(0),
            queued_total: AtomicU64::new(0),
        }
    }

    /// A turn to run, at once or after a wait bounded by --queue-timeout
    /// and by the request's own deadline (the wait counts toward it).
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::QueueFull);
        }
        self.queued_total.fetch_add(1, Ordering::Relaxed);
        let wait = self
            .queue_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let turn = tokio::time::timeout(wait, self.permits.clone().acquire_owned());
        let result = turn.await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.waited_out.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Waited)
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    /// Requests refused so far: (queue full, waited too long).
    pub fn rejected(&self) -> (u64, u64) {
        (
            self.queue_full.load(Ordering::Relaxed),
            self.waited_out.load(Ordering::Relaxed),
        )
    }
}

/// Open connections, bounded by --max-connections.
pub struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    /// What the primary was last told.
    full: AtomicBool,
    link: Arc<Link>,
    waited: AtomicU64,
    /// Received, and not yet holding a slot (their task has not run, or
    /// they wait for one): a drain must wait for them too.
    arriving: AtomicUsize,
}

/// One open connection's slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    owner: Arc<Connections>,
}

impl Connections {
    pub fn new(max: usize, link: Arc<Link>) -> Arc<Connections> {
        Arc::new(Connections {
            slots: Arc::new(Semaphore::new(max)),
            max,
            full: AtomicBool::new(false),
            link,
            waited: AtomicU64::new(0),
            arriving: AtomicUsize::new(0),
        })
    }

    /// A connection was received; `admit` will give it its slot.
    pub fn arriving(&self) {
        self.arriving.fetch_add(1, Ordering::Relaxed);
    }

    /// A slot for one more connection (announced with `arriving`): at
    /// once, or when one closes.
    pub async fn admit(self: &Arc<Self>) -> Slot {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                self.tell(true);
                match self.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => unreachable!("the connection semaphore is never closed"),
                }
            }
        };
        if self.slots.available_permits() == 0 {
            self.tell(true);
        }
        self.arriving.fetch_sub(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            owner: self.clone(),
        }
    }

    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Open, and received but not open yet.
    pub fn busy(&self) -> usize {
        self.open() + self.arriving.load(Ordering::Relaxed)
    }

    /// Tells the primary when fullness changes (edge-triggered).
    fn tell(&self, full: bool) {
        if self.full.swap(full, Ordering::Relaxed) != full {
            self.link.capacity(full);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.owner;
        // Some room (not just one slot) before saying so, so a worker at the
        // edge does not flap; +1: this slot is freed right after.
        let low_water = (c.max / 16).max(1);
        if c.full.load(Ordering::Relaxed) && c.slots.available_permits() + 1 >= low_water {
            c.tell(false);
        }
    }
}

/// Writes one line per SUMMARY_EVERY with what overload turned away or
/// held back since the last one, instead of a line per event.
pub fn spawn_summary(worker: usize, requests: Arc<Requests>, connections: Arc<Connections>) {
    tokio::spawn(async move {
        let mut last = (0, 0, 0, 0);
        let mut tick = tokio::time::interval(SUMMARY_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = (
                requests.queue_full.load(Ordering::Relaxed),
                requests.waited_out.load(Ordering::Relaxed),
                requests.queued_total.load(Ordering::Relaxed),
                connections.waited.load(Ordering::Relaxed),
            );
            if now == last {
                continue;
            }
            let (full, waited, queued, conns) = (
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2,
                now.3 - last.3,
            );
            tracing::warn!(
                target: "overload",
                worker,
                rejected_queue_full = full,
                rejected_queue_timeout = waited,
                queued = queued,
                connections_waited = conns,
                "overload in the last {SUMMARY_EVERY:?}: {} requests got 503 ({full} with the queue full, {waited} after waiting --queue-timeout), {queued} waited for a turn, {conns} connections waited for a slot (--max-connections)",
                full + waited
            );
            last = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: u32, max_queued: usize, queue_timeout: Duration) -> RequestLimits {
        RequestLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            h2_keepalive_interval: Duration::from_secs(1),
            h2_keepalive_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_concurrent,
            max_queued,
            queue_timeout,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_cap_waits_in_order_then_is_refused() {
        let r = Arc::new(Requests::new(&limits(1, 2, Duration::from_secs(5))));
        let far = Instant::now() + Duration::from_secs(3600);
        let first = r.admit(far).await.unwrap();
        let (a, b) = (r.clone(), r.clone());
        let second = tokio::spawn(async move { a.admit(far).await.map(|_| 2) });
        tokio::task::yield_now().await;
        let third = tokio::spawn(async move { b.admit(far).await.map(|_| 3) });
        tokio::task::yield_now().await;
        assert_eq!(r.admit(far).await.unwrap_err(), Refused::QueueFull);
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(2));
        // The second released its turn at once; the third gets it.
        assert_eq!(third.await.unwrap(), Ok(3));
        let hold = r.admit(far).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(r.admit(far).await.unwrap_err(), Refused::Waited);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(hold);
    }
}
