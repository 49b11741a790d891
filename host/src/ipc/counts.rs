//! The one schema of the counters a worker keeps and the primary exports
//! (worker/metrics.rs counts, `WorkerCounts::add` sums, primary/metrics.rs
//! renders). A plain counter or gauge is one line in `plain!` below: its
//! field, its Prometheus name and kind, its help. Labels are enums, so the
//! label set is fixed here and no client or guest can grow it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a metric is, for the exposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A metric's name, help and kind.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

macro_rules! plain {
    ($( #[doc = $help:literal] $field:ident: $kind:ident $name:literal; )*) => {
        /// The unlabelled counters and gauges of one worker (or their sum).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
        pub struct Plain {
            $( #[doc = $help] #[serde(default)] pub $field: u64, )*
        }

        impl Plain {
            /// Every plain metric, in the order of `values`.
            pub const METRICS: &'static [Metric] = &[
                $( Metric { name: $name, help: $help, kind: Kind::$kind }, )*
            ];

            pub fn values(&self) -> Vec<u64> {
                vec![$( self.$field ),*]
            }

            fn add(&mut self, other: &Plain) {
                $( self.$field += other.$field; )*
            }
        }
    };
}

plain! {
    /// Connections the workers took.
    connections_accepted: Counter "wcluster_worker_connections_accepted_total";
    /// Client connections open in the workers.
    connections_open: Gauge "wcluster_connections_open";
}

macro_rules! label {
    ($(#[doc = $doc:literal])* $name:ident ($label:literal) { $( $variant:ident => $text:literal ),* $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// The label's name in the exposition.
            pub const LABEL: &'static str = $label;
            pub const ALL: &'static [$name] = &[$( $name::$variant ),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }
        }
    };
}

label! {
    /// Method classes, so a client cannot grow the label set with made-up
    /// methods.
    MethodClass("method") {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Delete => "DELETE",
        Patch => "PATCH",
        Options => "OPTIONS",
        Other => "other",
    }
}

label! {
    /// Why a guest call gave no response. A guest that runs out of
    /// --max-memory sees its allocation fail and most often traps: `trap`.
    FailureKind("cause") {
        Trap => "trap",
        Deadline => "deadline",
        NoResponse => "no_response",
        BadGateway => "bad_gateway",
    }
}

label! {
    /// Why a request was refused with 503.
    Rejection("reason") {
        QueueFull => "queue_full",
        QueueTimeout => "queue_timeout",
    }
}

pub const REQUESTS: Metric = Metric {
    name: "wcluster_http_requests_total",
    help: " Requests answered, by method class and status code.",
    kind: Kind::Counter,
};
pub const GUEST_FAILURES: Metric = Metric {
    name: "wcluster_guest_failures_total",
    help: " Guest calls that gave no response, by cause.",
    kind: Kind::Counter,
};
pub const REJECTED: Metric = Metric {
    name: "wcluster_requests_rejected_total",
    help: " Requests refused with 503, by reason.",
    kind: Kind::Counter,
};

pub const HANDLER_REQUESTS: Metric = Metric {
    name: "wcluster_handler_requests_total",
    help: "Requests each handler of the application answered, by status code.",
    kind: Kind::Counter,
};
pub const HANDLER_GUEST_FAILURES: Metric = Metric {
    name: "wcluster_handler_guest_failures_total",
    help: "Guest calls of each handler that gave no response, by why.",
    kind: Kind::Counter,
};

/// Upper bounds (seconds) of the request-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A worker's counters since it started; they only grow (the open
/// connections aside). The primary exports their sum over the workers and
/// the workers that are gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Requests answered, by method class and status code.
    pub requests: BTreeMap<MethodClass, BTreeMap<u16, u64>>,
    /// Requests per DURATION_BUCKETS bucket (not cumulative), and one more
    /// for the rest; the sum of their durations in seconds.
    pub duration_buckets: Vec<u64>,
    pub duration_sum: f64,
    pub guest_failures: BTreeMap<FailureKind, u64>,
    pub rejected: BTreeMap<Rejection, u64>,
    /// Per handler (its name from the manifest): requests by status, and
    /// guest failures.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerCounts>,
    #[serde(flatten)]
    pub plain: Plain,
}

/// One handler's part of a worker's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerCounts {
    pub requests: BTreeMap<u16, u64>,
    pub guest_failures: BTreeMap<FailureKind, u64>,
}

impl WorkerCounts {
    /// Adds `other` into these counts.
    pub fn add(&mut self, other: &WorkerCounts) {
        for (method, statuses) in &other.requests {
            let mine = self.requests.entry(*method).or_default();
            for (status, n) in statuses {
                *mine.entry(*status).or_default() += n;
            }
        }
        if self.duration_buckets.len() < other.duration_buckets.len() {
            self.duration_buckets
                .resize(other.duration_buckets.len(), 0);
        }
        for (mine, n) in self
            .duration_buckets
            .iter_mut()
            .zip(&other.duration_buckets)
        {
            *mine += n;
        }
        self.duration_sum += other.duration_sum;
        for (kind, n) in &other.guest_failures {
            *self.guest_failures.entry(*kind).or_default() += n;
        }
        for (why, n) in &other.rejected {
            *self.rejected.entry(*why).or_default() += n;
        }
        for (name, theirs) in &other.handlers {
            let mine = self.handlers.entry(name.clone()).or_default();
            for (status, n) in &theirs.requests {
                *mine.requests.entry(*status).or_default() += n;
            }
            for (kind, n) in &theirs.guest_failures {
                *mine.guest_failures.entry(*kind).or_default() += n;
            }
        }
        self.plain.add(&other.plain);
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Every plain field set to a distinct value, through the schema's own
    /// serialization (so a field added to `plain!` is covered unseen).
    pub fn numbered() -> Plain {
        let names = serde_json::to_value(Plain::default()).unwrap();
        let map: serde_json::Map<_, _> = names
            .as_object()
            .unwrap()
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), serde_json::json!(i as u64 + 1)))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    }

    #[test]
    fn every_plain_counter_is_described_summed_and_carried() {
        let one = numbered();
        assert_eq!(Plain::METRICS.len(), one.values().len());
        let mut sum = WorkerCounts::default();
        let counts = WorkerCounts {
            plain: one,
            ..Default::default()
        };
        sum.add(&counts);
        sum.add(&counts);
        let doubled: Vec<u64> = one.values().iter().map(|v| v * 2).collect();
        assert_eq!(sum.plain.values(), doubled);
        let json = serde_json::to_string(&sum).unwrap();
        assert_eq!(serde_json::from_str::<WorkerCounts>(&json).unwrap(), sum);
        for m in Plain::METRICS {
            assert!(m.name.starts_with("wcluster_") && !m.help.trim().is_empty());
        }
    }

    #[test]
    fn labels_travel_as_their_names() {
        let mut c = WorkerCounts::default();
        c.requests
            .entry(MethodClass::Other)
            .or_default()
            .insert(418, 1);
        c.guest_failures.insert(FailureKind::NoResponse, 2);
        c.rejected.insert(Rejection::QueueFull, 3);
        let json = serde_json::to_string(&c).unwrap();
        for text in [
            r#""other":{"418":1}"#,
            r#""no_response":2"#,
            r#""queue_full":3"#,
        ] {
            assert!(json.contains(text), "{json}");
        }
    }
}
