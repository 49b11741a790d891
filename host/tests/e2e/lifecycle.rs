//! Start-up and shutdown of the whole cluster: drain on SIGTERM, no orphans.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let mut server = Server::start(&guests().testkit, &["--workers", "2"]);
    let workers: Vec<u32> = server.worker_pids().into_iter().map(|(_, p)| p).collect();
    assert_eq!(workers.len(), 2);
    let url = server.url("/slow?ms=2000");
    let slow = std::thread::spawn(move || get(&fresh_client(), &url));
    server.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("slow request started")
    });
    server.signal(Signal::SIGTERM);
    server.wait_for_line(Duration::from_secs(10), |l| l.contains("shutting down"));
    // No new connections once draining has begun.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
    assert_eq!(slow.join().unwrap(), Ok((200, "slept 2000 ms\n".into())));
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the primary");
    }
}

#[test]
fn workers_die_with_a_killed_primary() {
    let mut server = Server::start(&guests().hello, &["--workers", "2"]);
    let workers: Vec<u32> = server.worker_pids().into_iter().map(|(_, p)| p).collect();
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|&p| alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "workers outlived the primary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
