//! The worker's counters for the primary's /metrics: requests by method
//! class and status, their durations, guest failures. Cumulative; sent
//! whole with every `Stats` message, so a lost message loses nothing.

use std::sync::Mutex;
use std::time::Duration;

use crate::ipc::counts::{
    DURATION_BUCKETS, FailureKind, HandlerCounts, MethodClass, Rejection, WorkerCounts,
};

#[derive(Default)]
pub struct Counters {
    counts: Mutex<WorkerCounts>,
}

/// Method classes, so a client cannot grow the label set with made-up methods.
fn method_class(method: &http::Method) -> MethodClass {
    match *method {
        http::Method::GET => MethodClass::Get,
        http::Method::HEAD => MethodClass::Head,
        http::Method::POST => MethodClass::Post,
        http::Method::PUT => MethodClass::Put,
        http::Method::DELETE => MethodClass::Delete,
        http::Method::PATCH => MethodClass::Patch,
        http::Method::OPTIONS => MethodClass::Options,
        _ => MethodClass::Other,
    }
}

/// The handler's own counts. Its name comes from the manifest (the
/// request only chose among them), so the label set stays bounded.
fn handler_counts<'a>(c: &'a mut WorkerCounts, name: &str) -> &'a mut HandlerCounts {
    // Looked up by &str first: no allocation once the handler has counts.
    if !c.handlers.contains_key(name) {
        c.handlers
            .insert(name.to_string(), HandlerCounts::default());
    }
    c.handlers.get_mut(name).expect("inserted above")
}

impl Counters {
    fn with<R>(&self, f: impl FnOnce(&mut WorkerCounts) -> R) -> R {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One request answered (its head sent) after `took`, by `handler`
    /// (None: refused before one was chosen).
    pub fn request(
        &self,
        handler: Option<&str>,
        method: &http::Method,
        status: u16,
        took: Duration,
    ) {
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        let class = method_class(method);
        self.with(|c| {
            *c.requests
                .entry(class)
                .or_default()
                .entry(status)
                .or_default() += 1;
            if c.duration_buckets.len() <= DURATION_BUCKETS.len() {
                c.duration_buckets.resize(DURATION_BUCKETS.len() + 1, 0);
            }
            c.duration_buckets[bucket] += 1;
            c.duration_sum += secs;
            if let Some(name) = handler {
                *handler_counts(c, name).requests.entry(status).or_default() += 1;
            }
        });
    }

    /// A guest call that gave no response, and why.
    pub fn guest_failure(&self, handler: &str, why: FailureKind) {
        self.with(|c| {
            *c.guest_failures.entry(why).or_default() += 1;
            *handler_counts(c, handler)
                .guest_failures
                .entry(why)
                .or_default() += 1;
        });
    }

    pub fn connection(&self) {
        self.with(|c| c.plain.connections_accepted += 1);
    }

    /// The counters as they are now, with the gauges and refusals filled in.
    pub fn snapshot(&self, open: usize, rejected: (u64, u64)) -> WorkerCounts {
        let mut c = self.with(|c| c.clone());
        c.plain.connections_open = open as u64;
        let (full, waited) = rejected;
        c.rejected = [
            (Rejection::QueueFull, full),
            (Rejection::QueueTimeout, waited),
        ]
        .into();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_status_and_bucket() {
        let c = Counters::default();
        c.request(
            Some("api"),
            &http::Method::GET,
            200,
            Duration::from_micros(300),
        );
        c.request(
            Some("site"),
            &http::Method::GET,
            200,
            Duration::from_secs(9),
        );
        c.guest_failure("site", FailureKind::Trap);
        c.request(
            None,
            &http::Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::from_millis(3),
        );
        let s = c.snapshot(2, (1, 0));
        assert_eq!(s.requests[&MethodClass::Get][&200], 2);
        assert_eq!(s.requests[&MethodClass::Other][&404], 1);
        assert_eq!(s.duration_buckets[0], 1);
        assert_eq!(s.duration_buckets[DURATION_BUCKETS.len()], 1);
        assert_eq!(s.duration_buckets.iter().sum::<u64>(), 3);
        assert_eq!(s.plain.connections_open, 2);
        assert_eq!(s.rejected[&Rejection::QueueFull], 1);
        // Per handler: only requests a handler answered, under its name.
        assert_eq!(s.handlers["api"].requests[&200], 1);
        assert_eq!(s.handlers["site"].requests[&200], 1);
        assert_eq!(s.handlers["site"].guest_failures[&FailureKind::Trap], 1);
        assert_eq!(s.handlers.len(), 2);
    }
}
