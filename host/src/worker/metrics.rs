//! The worker's counters for the primary's /metrics: requests by method
//! class and status, their durations, guest failures. Cumulative; sent
//! whole with every `Stats` message, so a lost message loses nothing.

use std::sync::Mutex;
use std::time::Duration;

use crate::ipc::messages::{DURATION_BUCKETS, WorkerCounts};

#[derive(Default)]
pub struct Counters {
    counts: Mutex<WorkerCounts>,
}

/// Method classes, so a client cannot grow the label set with made-up methods.
fn method_class(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Counters {
    fn with<R>(&self, f: impl FnOnce(&mut WorkerCounts) -> R) -> R {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One request answered (its head sent) after `took`.
    pub fn request(&self, method: &http::Method, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        let class = method_class(method);
        self.with(|c| {
            // Looked up before inserting: no allocation per request.
            match c.requests.get_mut(class) {
                Some(statuses) => *statuses.entry(status).or_default() += 1,
                None => {
                    c.requests.insert(class.to_string(), [(status, 1)].into());
                }
            }
            if c.duration_buckets.len() <= DURATION_BUCKETS.len() {
                c.duration_buckets.resize(DURATION_BUCKETS.len() + 1, 0);
            }
            c.duration_buckets[bucket] += 1;
            c.duration_sum += secs;
        });
    }

    /// A guest call that gave no response, and why (trap, deadline, ...).
    pub fn guest_failure(&self, why: &str) {
        self.with(|c| *c.guest_failures.entry(why.to_string()).or_default() += 1);
    }

    pub fn connection(&self) {
        self.with(|c| c.connections_accepted += 1);
    }

    /// The counters as they are now, with the gauges and refusals filled in.
    pub fn snapshot(&self, open: usize, rejected: (u64, u64)) -> WorkerCounts {
        let mut c = self.with(|c| c.clone());
        c.connections_open = open as u64;
        (c.rejected_queue_full, c.rejected_queue_timeout) = rejected;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_status_and_bucket() {
        let c = Counters::default();
        c.request(&http::Method::GET, 200, Duration::from_micros(300));
        c.request(&http::Method::GET, 200, Duration::from_secs(9));
        c.request(
            &http::Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::from_millis(3),
        );
        let s = c.snapshot(2, (1, 0));
        assert_eq!(s.requests["GET"][&200], 2);
        assert_eq!(s.requests["other"][&404], 1);
        assert_eq!(s.duration_buckets[0], 1);
        assert_eq!(s.duration_buckets[DURATION_BUCKETS.len()], 1);
        assert_eq!(s.duration_buckets.iter().sum::<u64>(), 3);
        assert_eq!((s.connections_open, s.rejected_queue_full), (2, 1));
    }
}
