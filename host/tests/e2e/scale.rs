//! Scaling while serving: `wcluster scale N` and SIGTTIN/SIGTTOU add and
//! drain workers under keep-alive load without failing a request.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::*;

fn ready_workers(s: &Value) -> usize {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .count()
}

/// Waits until exactly `n` workers exist and all are ready.
fn wait_for_workers(server: &Server, n: usize) -> Value {
    server.wait_for_status(|s| s["workers"].as_array().unwrap().len() == n && ready_workers(s) == n)
}

/// The worker indexes that served requests since the access log had `from` lines.
fn served_by(server: &Server, from: usize) -> std::collections::BTreeSet<u64> {
    server.access_log()[from..]
        .iter()
        .filter_map(|e| e["fields"]["worker"].as_u64())
        .collect()
}

#[test]
fn scale_up_and_down_under_keep_alive_load_fails_nothing() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let traffic = Traffic::start(&server, 16, 2, |b| b.starts_with("Hello"));
    let (ok, reply) = server.control("scale 4");
    assert!(ok, "{reply:#}");
    assert_eq!(reply["target"], 4);
    let s = wait_for_workers(&server, 4);
    assert_eq!(s["target_workers"], 4);
    let seen = server.access_log().len();
    std::thread::sleep(Duration::from_millis(1500));
    let workers = served_by(&server, seen);
    assert!(
        workers.contains(&2) && workers.contains(&3),
        "new workers got no traffic: {workers:?}"
    );
    let (ok, reply) = server.control("scale 1");
    assert!(ok, "{reply:#}");
    wait_for_workers(&server, 1);
    let seen = server.access_log().len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        served_by(&server, seen),
        [0].into(),
        "drained workers still serve"
    );
    let ok = traffic.finish_clean();
    eprintln!("scale 2 -> 4 -> 1 under load: {ok} requests, 0 failed");
    // Out of range is refused with the range in the message.
    let (ok, reply) = server.control("scale 0");
    assert!(!ok);
    assert_eq!(reply["reason"]["why"], "workers_out_of_range", "{reply:#}");
}

#[test]
fn sigttin_and_sigttou_add_and_remove_one_worker() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let traffic = Traffic::start(&server, 8, 2, |b| b.starts_with("Hello"));
    server.signal(Signal::SIGTTIN);
    wait_for_workers(&server, 2);
    server.signal(Signal::SIGTTIN);
    wait_for_workers(&server, 3);
    server.signal(Signal::SIGTTOU);
    wait_for_workers(&server, 2);
    server.signal(Signal::SIGTTOU);
    server.signal(Signal::SIGTTOU); // the floor is one worker
    wait_for_workers(&server, 1);
    let ok = traffic.finish_clean();
    assert!(ok > 0);
    assert_eq!(server.status()["target_workers"], 1);
}

#[test]
fn status_counts_are_fresh_and_readable() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let agent = fresh_client();
    for _ in 0..10 {
        assert_eq!(get(&agent, &server.url("/")).unwrap().0, 200);
    }
    // No waiting for the periodic report: status asks the workers.
    let s = server.status();
    let total: u64 = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10, "{s:#}");
    // Without --json: a table a person reads.
    let out = wcluster()
        .args(["status", "--control"])
        .arg(&server.control)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("WORKER") && text.contains("ready"), "{text}");
    assert!(
        text.lines().filter(|l| l.contains(" ready ")).count() == 2,
        "{text}"
    );
}
