//! Guest faults and worker deaths: the failing request gets an error, the
//! worker (or its replacement) goes on serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

const DEADLINE: Duration = Duration::from_secs(2);

fn faulty_server(workers: &str) -> Server {
    Server::start(
        &guests().testkit,
        &[
            "--workers",
            workers,
            "--request-timeout",
            "2s",
            "--max-memory",
            "64MiB",
        ],
    )
}

fn assert_fails_then_recovers(server: &Server, path: &str, want: u16) {
    let client = fresh_client();
    let start = Instant::now();
    let (status, _) = get(&client, &server.url(path)).unwrap();
    let took = start.elapsed();
    assert_eq!(status, want, "{path}");
    assert!(
        took <= DEADLINE + Duration::from_secs(1),
        "{path} took {took:?}"
    );
    assert_eq!(get(&client, &server.url("/")).unwrap().0, 200);
}

#[test]
fn trap_is_a_500_and_the_worker_goes_on() {
    let server = faulty_server("1");
    assert_fails_then_recovers(&server, "/trap", 500);
}

#[test]
fn memory_hog_is_stopped_at_the_limit() {
    let server = faulty_server("1");
    assert_fails_then_recovers(&server, "/hog", 500);
}

#[test]
fn missing_response_is_a_500() {
    let server = Server::start(&guests().echo, &["--workers", "1"]);
    assert_fails_then_recovers(&server, "/no-response", 500);
}

#[test]
fn infinite_loop_hits_the_deadline_without_blocking_its_worker() {
    let server = faulty_server("1");
    let url = server.url("/loop");
    let looping = std::thread::spawn(move || {
        let start = Instant::now();
        let got = get(&fresh_client(), &url).unwrap().0;
        (got, start.elapsed())
    });
    // The only worker is busy looping; its other requests must still run.
    let client = fresh_client();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &server.url("/")).unwrap(),
            (200, "hello\n".into())
        );
    }
    assert!(!looping.is_finished(), "the loop request ended too early");
    let (status, took) = looping.join().unwrap();
    assert_eq!(status, 504);
    assert!(
        took <= DEADLINE + Duration::from_secs(1),
        "loop took {took:?}"
    );
    assert_fails_then_recovers(&server, "/", 200);
}

#[test]
fn killed_worker_is_replaced_and_others_keep_serving() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let victim = server.worker_pids()[0].1;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let url = server.url("/");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = fresh_client();
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match get(&client, &url) {
                    Ok((200, _)) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    server.wait_for_events(Duration::from_secs(10), |_| server.access_log().len() >= 20);
    let killed_at = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    // The replacement takes slot 0 and serves.
    let served_by_replacement = |_: &[serde_json::Value]| {
        server.access_log().iter().any(|e| {
            e["fields"]["worker"] == 0 && e["fields"]["pid"].as_u64() != Some(victim as u64)
        })
    };
    server.wait_for_events(Duration::from_secs(10), served_by_replacement);
    let replaced_in = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.join().unwrap();
    assert!(!alive(victim));
    assert!(
        replaced_in < Duration::from_secs(1),
        "replacement served after {replaced_in:?}"
    );
    // One request at a time: only the one in flight on the victim may fail.
    assert!(failed <= 1, "{failed} requests failed ({ok} ok)");
    assert!(ok > 20);
}
