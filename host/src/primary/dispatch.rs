//! Hands accepted connections to workers. The primary keeps its copy of each
//! connection's fd until the worker acknowledges it, so a worker that dies
//! during the hand-off loses nothing: the connection goes to another worker.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;

use super::balancer::RoundRobin;
use super::supervisor::Supervisor;
use crate::ipc::ToWorker;

/// Connections held while no worker is ready, before new ones are refused.
const MAX_QUEUED: usize = 4096;

pub struct Dispatcher {
    balancer: RoundRobin,
    next_id: u64,
    in_transit: HashMap<u64, (usize, TcpStream)>,
    queue: VecDeque<TcpStream>,
}

impl Dispatcher {
    pub fn new() -> Self {
        Self {
            balancer: RoundRobin::new(),
            next_id: 1,
            in_transit: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// Sends `stream` to the next ready worker, or queues it until one is.
    pub fn dispatch(&mut self, sup: &mut Supervisor, stream: TcpStream) {
        for _ in 0..sup.len() {
            let Some(index) = self.balancer.pick(sup.len(), |i| sup.is_ready(i)) else {
                break;
            };
            let Some(chan) = sup.channel(index) else {
                continue;
            };
            let id = self.next_id;
            match chan.try_send(&ToWorker::Conn { id }, Some(stream.as_fd())) {
                Ok(()) => {
                    self.next_id += 1;
                    self.in_transit.insert(id, (index, stream));
                    return;
                }
                // Its channel is full: the worker is behind; try the next one.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    let generation = sup.slot(index).generation;
                    if sup.lost(index, generation, &format!("channel send failed: {e}")) {
                        self.reclaim(index);
                    }
                }
            }
        }
        if self.queue.len() >= MAX_QUEUED {
            tracing::warn!(
                "no worker can take a connection and {MAX_QUEUED} are queued: closing one"
            );
            return;
        }
        self.queue.push_back(stream);
    }

    /// The worker owns connection `id` now: close the primary's copy.
    pub fn accepted(&mut self, id: u64) {
        self.in_transit.remove(&id);
    }

    /// A worker is gone: the connections it never acknowledged go back in
    /// the queue, to be sent to another worker.
    pub fn reclaim(&mut self, index: usize) {
        let ids: Vec<u64> = self
            .in_transit
            .iter()
            .filter(|(_, (w, _))| *w == index)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, stream)) = self.in_transit.remove(&id) {
                self.queue.push_back(stream);
            }
        }
    }

    /// Retries the queued connections.
    pub fn flush(&mut self, sup: &mut Supervisor) {
        for _ in 0..self.queue.len() {
            if !(0..sup.len()).any(|i| sup.is_ready(i)) {
                return;
            }
            if let Some(stream) = self.queue.pop_front() {
                self.dispatch(sup, stream);
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }
}
