//! Connections from accept to a worker: round-robin over the ready workers,
//! held (the shell keeps the fd) until the worker acknowledges, reclaimed
//! and sent to another worker if that one is lost first.

use super::{ConnId, Core, Effect, WorkerId};

/// Connections waiting for a worker before the shell stops accepting (the
/// kernel's listen backlog holds the next ones).
pub(super) const MAX_QUEUED: usize = 4096;

impl Core {
    /// Sends `conn` to the next ready worker, or queues it until one is.
    pub(super) fn dispatch(&mut self, conn: ConnId) {
        let len = self.slots.len();
        let picked = {
            let slots = &self.slots;
            self.balancer.pick(len, |i| {
                slots[i].state == super::WorkerState::Ready
                    && !slots[i].full
                    && !slots[i].at_capacity
            })
        };
        match picked {
            Some(index) => {
                let worker = self.slots[index].id(index);
                self.in_transit.insert(conn, worker);
                self.out.push(Effect::SendConn { worker, conn });
            }
            None => self.queue.push_back(conn),
        }
    }

    /// The shell could not send `conn`: a full channel means that worker is
    /// behind (skip it until it speaks), anything else that it is gone.
    pub(super) fn conn_not_sent(
        &mut self,
        now: std::time::Instant,
        conn: ConnId,
        worker: WorkerId,
        full: bool,
    ) {
        if self.in_transit.get(&conn) != Some(&worker) {
            return;
        }
        self.in_transit.remove(&conn);
        self.queue.push_front(conn);
        if full {
            if let Some(slot) = self.slot_of(worker) {
                slot.full = true;
            }
        } else {
            self.worker_gone(
                now,
                worker,
                super::Gone::ChannelBroken("sending a connection failed".into()),
            );
        }
    }

    /// The worker owns connection `id` now: the shell closes its copy.
    pub(super) fn conn_accepted(&mut self, worker: WorkerId, id: ConnId) {
        if self.in_transit.get(&id) == Some(&worker) {
            self.in_transit.remove(&id);
            self.counters.handed_off += 1;
            self.out.push(Effect::CloseConn(id));
        }
    }

    /// A worker is gone: the connections it never acknowledged go to the
    /// front of the queue, in their order, for another worker.
    pub(super) fn reclaim(&mut self, worker: WorkerId) {
        let mut ids: Vec<ConnId> = self
            .in_transit
            .iter()
            .filter(|&(_, w)| *w == worker)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids.into_iter().rev() {
            self.in_transit.remove(&id);
            self.queue.push_front(id);
        }
    }

    /// Hands out queued connections while some worker can take them.
    pub(super) fn flush_queue(&mut self) {
        while !self.queue.is_empty() && (0..self.slots.len()).any(|i| self.is_ready(i)) {
            let conn = self.queue.pop_front().expect("checked non-empty");
            self.dispatch(conn);
        }
    }
}
