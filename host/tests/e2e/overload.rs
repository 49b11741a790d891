//! Overload without collapse: requests over --max-concurrent wait their
//! turn, 503 only when the queue is full or the wait runs out, connections
//! over --max-connections wait in the listen backlog instead of being
//! accepted and closed, and the log stays quiet.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `n` clients at once, each sending one GET `path` on its own connection;
/// (status, Retry-After present, time taken) for each.
fn burst(server: &Server, n: usize, path: &str) -> Vec<(u16, bool, Duration)> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (url, barrier) = (server.url(path), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let (status, retry) = match fresh_client().get(&url).call() {
                    Ok(r) => (r.status(), r.header("retry-after").is_some()),
                    Err(ureq::Error::Status(code, r)) => (code, r.header("retry-after").is_some()),
                    Err(e) => panic!("transport error: {e}"),
                };
                (status, retry, start.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_burst_over_the_concurrency_cap_waits_its_turn() {
    let server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "1",
            "--max-concurrent",
            "8",
            "--queue-timeout",
            "20s",
        ],
    );
    let results = burst(&server, 400, "/slow?ms=20");
    let not_ok: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        not_ok.is_empty(),
        "{} of 400 failed: {:?}",
        not_ok.len(),
        &not_ok[..not_ok.len().min(3)]
    );
}

#[test]
fn a_full_queue_and_a_long_wait_get_503_with_retry_after() {
    let server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "1",
            "--max-concurrent",
            "2",
            "--max-queued",
            "16",
            "--queue-timeout",
            "300ms",
        ],
    );
    let results = burst(&server, 100, "/slow?ms=1000");
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(ok >= 2, "{results:?}");
    assert!(refused.len() >= 80, "{} refused", refused.len());
    for (status, retry_after, took) in &refused {
        assert_eq!(*status, 503);
        assert!(*retry_after, "a 503 without Retry-After");
        assert!(
            *took < Duration::from_millis(300 + 700),
            "a 503 came after {took:?}, past the queue timeout"
        );
    }
    // One summary line whose counts add up, not a line per refusal.
    server.wait_for_events(Duration::from_secs(15), |events| {
        events.iter().any(|e| e["target"] == "overload")
    });
    let summaries = server.events(Some("overload"));
    let counted: u64 = summaries
        .iter()
        .map(|e| {
            e["fields"]["rejected_queue_full"].as_u64().unwrap()
                + e["fields"]["rejected_queue_timeout"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(counted, refused.len() as u64, "{summaries:?}");
    let warnings = server
        .events(None)
        .into_iter()
        .filter(|e| e["level"] == "WARN")
        .count();
    assert!(warnings <= summaries.len() + 2, "{warnings} warning lines");
}

#[test]
fn a_keep_alive_client_sending_back_to_back_cannot_starve_others() {
    let server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "1",
            "--max-concurrent",
            "1",
            "--queue-timeout",
            "10s",
        ],
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hog = {
        let (url, stop) = (server.url("/slow?ms=30"), stop.clone());
        std::thread::spawn(move || {
            let client = keepalive_client();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(get(&client, &url).unwrap().0, 200);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let others = burst(&server, 5, "/slow?ms=30");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hogged = hog.join().unwrap();
    for (status, _, took) in &others {
        assert_eq!(*status, 200);
        // FIFO: each waits for at most the turns queued ahead of it.
        assert!(*took < Duration::from_secs(2), "waited {took:?}");
    }
    assert!(hogged > 5);
}

#[test]
fn connections_over_capacity_wait_in_the_backlog_and_are_all_served() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const CONNS: usize = 3000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard).unwrap();
    let server = Server::start(
        &guests().hello,
        &["--workers", "2", "--max-connections", "64"],
    );
    let addr = server.addr;
    let failures = Arc::new(Mutex::new(Vec::new()));
    // 60 clients, 50 connections each, all open at once: each connects and
    // sends its request, then the next; the responses are read at the end.
    let threads: Vec<_> = (0..CONNS / 50)
        .map(|_| {
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut open = Vec::new();
                for _ in 0..50 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    open.push(s);
                }
                for mut s in open {
                    let mut resp = String::new();
                    match s.read_to_string(&mut resp) {
                        Ok(_) if resp.starts_with("HTTP/1.1 200") => {}
                        Ok(_) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?}", resp.lines().next())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let warnings = server
        .events(None)
        .into_iter()
        .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
        .count();
    // At most the periodic overload summaries (one per worker per 10 s).
    assert!(warnings <= 10, "{warnings} warning lines");
    eprintln!("{CONNS} connections over 2 x 64 slots: all served, {warnings} warning lines");
}
