//! /metrics: the core's snapshot (workers' counters, the primary's own) and
//! each worker's memory and CPU from /proc, as Prometheus text exposition
//! (the `prometheus` crate's text encoder, which `promtool check metrics`
//! reads without lint findings).

use std::collections::BTreeMap;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::control::protocol::{MetricsSnapshot, WorkerState};
use crate::ipc::WorkerCounts;
use crate::ipc::counts::{
    self, DURATION_BUCKETS, FailureKind, Kind, MethodClass, Plain, Rejection,
};

/// Families built one sample at a time.
#[derive(Default)]
struct Families(BTreeMap<String, MetricFamily>);

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        self.0.entry(name.to_string()).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(kind);
            f
        })
    }

    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.family(name, help, kind).mut_metric().push(m);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, help, MetricType::COUNTER, labels, value as f64);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, MetricType::GAUGE, labels, value);
    }
}

/// What /proc says of a process: resident bytes and CPU seconds.
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: utime and stime
    // are the 12th and 13th after it, rss the 22nd (in pages).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    let cpu =
        (rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?) / ticks as f64;
    let rss = rest.get(21)?.parse::<f64>().ok()? * page as f64;
    Some((rss, cpu))
}

/// The exposition text.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut f = Families::default();
    let mut total = s.retired.clone();
    for w in &s.workers {
        total.add(w);
    }
    requests(&mut f, &total);
    handlers(&mut f, &total, s);
    primary(&mut f, s);
    workers(&mut f, s);
    processes(&mut f, s);
    deploys(&mut f, s);
    encode(f)
}

/// The build and the primary's own connection counts.
fn primary(f: &mut Families, s: &MetricsSnapshot) {
    let info = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("wasmtime", WASMTIME_VERSION),
    ];
    f.gauge(
        "wcluster_build_info",
        "wcluster and wasmtime versions (always 1).",
        &info,
        1.0,
    );
    let c = [
        (
            "wcluster_connections_accepted_total",
            "Connections the primary accepted.",
            s.connections_accepted,
        ),
        (
            "wcluster_connections_handed_off_total",
            "Connections a worker acknowledged taking.",
            s.connections_handed_off,
        ),
        (
            "wcluster_connections_refused_total",
            "Connections accepted and closed unserved (when shutting down).",
            s.connections_refused,
        ),
    ];
    for (name, help, v) in c {
        f.counter(name, help, &[], v);
    }
}

/// Requests in flight, the hand-off queue, and the workers by state.
fn workers(f: &mut Families, s: &MetricsSnapshot) {
    let in_flight: u32 = s.status.workers.iter().map(|w| w.in_flight).sum();
    f.gauge(
        "wcluster_http_requests_in_flight",
        "Requests running in the workers now.",
        &[],
        in_flight as f64,
    );
    f.gauge(
        "wcluster_handoff_queue_length",
        "Connections accepted and waiting for a worker, or in transit to one.",
        &[],
        (s.status.queued_connections + s.status.connections_in_transit) as f64,
    );
    let restarts: u64 = s.status.workers.iter().map(|w| w.restarts).sum();
    f.counter(
        "wcluster_worker_restarts_total",
        "Workers replaced after dying.",
        &[],
        restarts,
    );
    for state in [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Draining,
    ] {
        let n = s.status.workers.iter().filter(|w| w.state == state).count();
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.gauge(
            "wcluster_workers",
            "Workers by state.",
            &[("state", &name)],
            n as f64,
        );
    }
    f.gauge(
        "wcluster_workers_target",
        "Workers asked for.",
        &[],
        s.status.target_workers as f64,
    );
}

/// Each worker process's memory and CPU, from /proc.
fn processes(f: &mut Families, s: &MetricsSnapshot) {
    for w in &s.status.workers {
        let Some((rss, cpu)) = w.pid.and_then(proc_usage) else {
            continue;
        };
        let index = w.index.to_string();
        f.gauge(
            "wcluster_worker_resident_memory_bytes",
            "Resident memory of each worker process.",
            &[("worker", &index)],
            rss,
        );
        f.counter_f(
            "wcluster_worker_cpu_seconds_total",
            "CPU time of each worker process.",
            &[("worker", &index)],
            cpu,
        );
    }
}

/// Deploys, the live version and the cluster's readiness.
fn deploys(f: &mut Families, s: &MetricsSnapshot) {
    for d in &s.deploys {
        f.counter(
            "wcluster_deploys_total",
            "Deploys by kind and outcome.",
            &[("kind", d.kind.name()), ("outcome", &d.outcome)],
            d.count,
        );
    }
    f.gauge(
        "wcluster_version_info",
        "The live handler version (always 1).",
        &[("version", &s.status.version)],
        1.0,
    );
    f.gauge(
        "wcluster_generation",
        "Successful rolls since start (1: the first version).",
        &[],
        s.status.generation as f64,
    );
    f.gauge(
        "wcluster_last_deploy_age_seconds",
        "Seconds since the last deploy ended.",
        &[],
        s.last_deploy_age_ms as f64 / 1000.0,
    );
    f.gauge(
        "wcluster_compile_duration_seconds",
        "How long the live version took to compile and check (near 0 from the cache).",
        &[],
        s.compile_ms as f64 / 1000.0,
    );
    f.gauge(
        "wcluster_ready",
        "1 while the cluster takes traffic (/readyz).",
        &[],
        if s.ready { 1.0 } else { 0.0 },
    );
}

/// One sample per label value, zero where nothing was counted yet.
fn labelled<'a>(
    f: &mut Families,
    m: counts::Metric,
    label: &str,
    values: impl Iterator<Item = (&'a str, Option<&'a u64>)>,
) {
    for (value, n) in values {
        f.counter(
            m.name,
            m.help.trim(),
            &[(label, value)],
            n.copied().unwrap_or(0),
        );
    }
}

/// The families as text exposition.
fn encode(f: Families) -> String {
    let mut out = Vec::new();
    // A labelled family has no samples until its first event (no request
    // served yet), and the encoder refuses an empty family.
    let families: Vec<MetricFamily> =
        f.0.into_values()
            .filter(|family| !family.get_metric().is_empty())
            .collect();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding into memory does not fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

impl Families {
    fn counter_f(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, MetricType::COUNTER, labels, value);
    }
}

/// Requests, durations, guest failures, refusals and the plain counters,
/// summed over workers: all driven by the schema (ipc/counts.rs).
fn requests(f: &mut Families, t: &WorkerCounts) {
    let m = counts::REQUESTS;
    let help = m.help.trim();
    for &method in MethodClass::ALL {
        for (status, n) in t.requests.get(&method).into_iter().flatten() {
            let code = status.to_string();
            let labels = [(MethodClass::LABEL, method.as_str()), ("code", &code)];
            f.counter(m.name, help, &labels, *n);
        }
    }
    let mut h = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for (i, upper) in DURATION_BUCKETS.iter().enumerate() {
        cumulative += t.duration_buckets.get(i).copied().unwrap_or(0);
        let mut b = Bucket::default();
        b.set_upper_bound(*upper);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let count: u64 = t.duration_buckets.iter().sum();
    h.set_bucket(buckets);
    h.set_sample_count(count);
    h.set_sample_sum(t.duration_sum);
    let mut metric = Metric::default();
    metric.set_histogram(h);
    f.family(
        "wcluster_http_request_duration_seconds",
        "Time from a request's arrival to its response head.",
        MetricType::HISTOGRAM,
    )
    .mut_metric()
    .push(metric);
    let failures = FailureKind::ALL
        .iter()
        .map(|k| (k.as_str(), t.guest_failures.get(k)));
    labelled(f, counts::GUEST_FAILURES, FailureKind::LABEL, failures);
    let rejected = Rejection::ALL
        .iter()
        .map(|r| (r.as_str(), t.rejected.get(r)));
    labelled(f, counts::REJECTED, Rejection::LABEL, rejected);
    for (m, value) in Plain::METRICS.iter().zip(t.plain.values()) {
        let kind = match m.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        };
        f.sample(m.name, m.help.trim(), kind, &[], value as f64);
    }
}

/// Each handler's requests and failures: the `handler` label's values are
/// the live manifest's names, never anything a request chose (workers keep
/// the counts of handlers a deploy removed; they are not shown).
fn handlers(f: &mut Families, t: &WorkerCounts, s: &MetricsSnapshot) {
    let live = |name: &str| s.status.handlers.iter().any(|h| h.name == name);
    for (name, c) in t.handlers.iter().filter(|(name, _)| live(name)) {
        let m = counts::HANDLER_REQUESTS;
        for (status, n) in &c.requests {
            let code = status.to_string();
            let labels = [("handler", name.as_str()), ("code", &code)];
            f.counter(m.name, m.help, &labels, *n);
        }
        let m = counts::HANDLER_GUEST_FAILURES;
        for kind in FailureKind::ALL {
            let n = c.guest_failures.get(kind).copied().unwrap_or(0);
            let labels = [
                ("handler", name.as_str()),
                (FailureKind::LABEL, kind.as_str()),
            ];
            f.counter(m.name, m.help, &labels, n);
        }
    }
}

/// The wasmtime this wcluster embeds.
const WASMTIME_VERSION: &str = "50.0.1";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::counts::tests::numbered;

    /// What adding a plain counter takes: its line in `plain!` (and its
    /// use). Summing and rendering follow from the schema, as this shows
    /// for every line there.
    #[test]
    fn every_plain_counter_in_the_schema_is_rendered() {
        let counts = WorkerCounts {
            plain: numbered(),
            ..Default::default()
        };
        let mut f = Families::default();
        requests(&mut f, &counts);
        let text = encode(f);
        for (m, value) in Plain::METRICS.iter().zip(counts.plain.values()) {
            assert!(
                text.contains(&format!("\n{} {value}\n", m.name)),
                "{} in\n{text}",
                m.name
            );
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            assert!(
                text.contains(&format!("# TYPE {} {kind}", m.name)),
                "{text}"
            );
        }
    }
}
