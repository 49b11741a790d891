//! systemd: socket activation with the real `systemd-socket-activate`, and
//! the notification protocol read from a datagram socket the test owns.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn serves_on_the_socket_systemd_passes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_wcluster"))
        .arg("serve")
        .arg(&guests().hello)
        .args(["--workers", "1"])
        // Never bound: binding this would fail, so serving proves the
        // inherited socket is the one used.
        .args(["--addr", "192.0.2.1:80"]);
    let mut server = Server::spawn(cmd, &cache_dir());
    // systemd-socket-activate starts wcluster when the first client comes.
    let url = format!("http://127.0.0.1:{port}/?name=systemd");
    let first = std::thread::spawn(move || {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "nothing listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        get(&fresh_client(), &url)
    });
    server.wait_ready();
    assert_eq!(
        first.join().unwrap().unwrap(),
        (200, "Hello, systemd!\n".to_string())
    );
    assert_eq!(server.addr.port(), port);
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("the socket systemd passed")),
        "{:?}",
        server.lines()
    );
}

/// Notifications received on `sock` until `done` holds for them.
fn wait_for_notes(sock: &UnixDatagram, notes: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !done(notes) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "notifications so far: {notes:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn tells_systemd_ready_reloading_stopping_in_order_and_pings_the_watchdog() {
    let g = guests();
    let dir = scratch("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let file = dir.join("handler.wasm");
    std::fs::copy(&g.v1, &file).unwrap();
    let mut cmd = wcluster();
    cmd.arg("serve")
        .arg(&file)
        .args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-watch"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000");
    let mut server = Server::spawn(cmd, &cache_dir());
    server.wait_ready();
    let mut notes = Vec::new();
    wait_for_notes(&sock, &mut notes, |n| {
        n.iter().any(|m| m.contains("READY=1"))
    });
    wait_for_notes(&sock, &mut notes, |n| {
        n.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2
    });
    std::fs::copy(&g.v2, &file).unwrap();
    let (ok, reply) = server.control("reload");
    assert!(ok, "{reply:#}");
    wait_for_notes(&sock, &mut notes, |n| {
        n.iter().filter(|m| m.contains("READY=1")).count() >= 2
    });
    server.signal(Signal::SIGTERM);
    wait_for_notes(&sock, &mut notes, |n| {
        n.iter().any(|m| m.contains("STOPPING=1"))
    });
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    // The order, without the watchdog pings between.
    let states: Vec<&str> = notes
        .iter()
        .filter_map(|m| {
            ["READY=1", "RELOADING=1", "STOPPING=1"]
                .into_iter()
                .find(|s| m.lines().any(|l| l == *s))
        })
        .collect();
    assert_eq!(
        states,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|m| m.contains("STATUS=serving")),
        "{notes:?}"
    );
}
