//! The HTTP edge: connections that stall before or between requests, Host
//! headers a guest must never see, CGI variables a client could forge, and
//! guest output without newlines. Requests are written by hand where a
//! well-behaved client would not send them.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// The status code of a raw response.
fn status_of(resp: &str) -> &str {
    resp.split_whitespace().nth(1).unwrap_or("")
}

/// Whether a raw response's body has `line` as one of its lines (chunked
/// or not).
fn has_line(resp: &str, line: &str) -> bool {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines().any(|l| l == line)
}

#[test]
fn stalled_connections_are_closed_and_free_their_slots() {
    let server = Server::start(
        &guests().hello,
        &[
            "--workers",
            "1",
            "--max-connections",
            "20",
            "--header-timeout",
            "2s",
        ],
    );
    let start = Instant::now();
    // 14 that send nothing, 6 that stop in the middle of the HTTP/2 preface:
    // together they hold every slot of the worker.
    let mut stalled: Vec<(&str, TcpStream)> = (0..20)
        .map(|i| {
            let mut c = TcpStream::connect(server.addr).unwrap();
            if i % 3 == 0 {
                c.write_all(&PREFACE[..16]).unwrap();
                ("half a preface", c)
            } else {
                ("nothing", c)
            }
        })
        .collect();
    for (i, (sent, conn)) in stalled.iter_mut().enumerate() {
        let closed = closed_by_server(conn, start, Duration::from_secs(6));
        let Some(after) = closed else {
            panic!("connection {i} (sent {sent}) still open 6 s after it was made");
        };
        // Closed by the timeout, not refused for want of a slot.
        assert!(
            after >= Duration::from_millis(1500),
            "connection {i} (sent {sent}) closed after {after:?}"
        );
    }
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap().0,
        200,
        "a normal request after the stalled connections"
    );
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HTTP/2 connection that has sent its preface and SETTINGS and no
/// request. If `answer`, it acknowledges the server's SETTINGS and PINGs.
/// Returns (when the server closed it, after `since`; PINGs received).
fn idle_h2(addr: SocketAddr, answer: bool, limit: Duration) -> (Option<Duration>, usize) {
    let since = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(PREFACE).unwrap();
    c.write_all(&frame(SETTINGS, 0, &[])).unwrap();
    let mut pings = 0;
    loop {
        let Some(left) = (since + limit).checked_duration_since(Instant::now()) else {
            return (None, pings);
        };
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut head = [0u8; 9];
        let mut read_frame = || {
            c.read_exact(&mut head)?;
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0u8; len];
            c.read_exact(&mut payload)?;
            Ok::<_, std::io::Error>(payload)
        };
        let payload = match read_frame() {
            Ok(p) => p,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (None, pings);
            }
            Err(_) => return (Some(since.elapsed()), pings),
        };
        let (kind, flags) = (head[3], head[4]);
        if kind == PING && flags & ACK == 0 {
            pings += 1;
        }
        if answer && flags & ACK == 0 && (kind == PING || kind == SETTINGS) {
            let reply = if kind == PING { &payload[..] } else { &[][..] };
            let _ = c.write_all(&frame(kind, ACK, reply));
        }
    }
}

#[test]
fn idle_http2_connections_are_pinged_and_closed() {
    let server = Server::start(
        &guests().hello,
        &[
            "--workers",
            "1",
            "--h2-keepalive-interval",
            "1s",
            "--h2-keepalive-timeout",
            "1s",
            "--idle-timeout",
            "5s",
        ],
    );
    let addr = server.addr;
    let answering = std::thread::spawn(move || idle_h2(addr, true, Duration::from_secs(10)));
    // Silent: PINGed after 1 s, closed when the PING goes unanswered for 1 s
    // more, long before the idle timeout.
    let (closed, pings) = idle_h2(addr, false, Duration::from_secs(10));
    let closed = closed.expect("an unanswering HTTP/2 connection was never closed");
    assert!(pings >= 1, "no PING before the close");
    assert!(
        closed < Duration::from_millis(4000),
        "closed after {closed:?}"
    );
    // Answering PINGs keeps a connection open only until the idle timeout.
    let (closed, pings) = answering.join().unwrap();
    let closed = closed.expect("an idle HTTP/2 connection was never closed");
    assert!(pings >= 1, "no PING on the idle connection");
    assert!(
        closed >= Duration::from_millis(4500) && closed < Duration::from_secs(9),
        "closed after {closed:?}"
    );
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

fn cgi_env_of(body: &str) -> HashMap<&str, &str> {
    body.lines().filter_map(|l| l.split_once('=')).collect()
}

#[test]
fn cgi_drops_header_names_with_underscores() {
    let server = Server::start(&guests().cgi, &["--workers", "1"]);
    let resp = fresh_client()
        .get(&server.url("/env"))
        .set("X-Forwarded-For", "10.0.0.1")
        .set("X_Forwarded_For", "6.6.6.6")
        .set("X_Remote_User", "admin")
        .set("X-Plain", "kept")
        .call()
        .unwrap();
    let body = resp.into_string().unwrap();
    let env = cgi_env_of(&body);
    assert_eq!(env.get("HTTP_X_FORWARDED_FOR"), Some(&"10.0.0.1"), "{body}");
    assert_eq!(env.get("HTTP_X_REMOTE_USER"), None, "{body}");
    assert_eq!(env.get("HTTP_X_PLAIN"), Some(&"kept"), "{body}");
}

/// The guest log events of the request to `path` (its first), once the
/// request's log is complete (or 10 s passed).
fn guest_log_of(server: &Server, path: &str) -> Vec<Value> {
    let start = Instant::now();
    let request = loop {
        let found = server
            .access_log()
            .into_iter()
            .find(|e| e["fields"]["path"] == path);
        if let Some(e) = found {
            break e["fields"]["request"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no access log line for {path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let of_request = || -> Vec<Value> {
        server
            .events(Some("guest"))
            .into_iter()
            .filter(|e| e["fields"]["request"] == request)
            .collect()
    };
    // The summary comes when the guest's output streams are dropped.
    while start.elapsed() < Duration::from_secs(10)
        && !of_request().iter().any(|e| e["level"] == "WARN")
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    of_request()
}

#[test]
fn guest_output_without_newlines_is_capped_in_bytes() {
    let server = Server::start(&guests().testkit, &["--workers", "1"]);
    let (status, body) = get(&fresh_client(), &server.url("/flood-bytes?mb=32")).unwrap();
    assert_eq!((status, body.as_str()), (200, "wrote 32 MiB\n"));
    let events = guest_log_of(&server, "/flood-bytes");
    let logged: usize = events
        .iter()
        .filter(|e| e["level"] == "INFO")
        .map(|e| e["fields"]["message"].as_str().unwrap_or("").len())
        .sum();
    assert!(
        logged <= (1 << 20) + (64 << 10),
        "{logged} bytes of guest output in the log (cap: 1 MiB)"
    );
    assert!(logged >= 1 << 20, "only {logged} bytes logged");
    let summary = events
        .iter()
        .find_map(|e| {
            e["fields"]["message"]
                .as_str()
                .filter(|m| m.contains("more bytes dropped"))
        })
        .expect("no summary of the dropped bytes");
    let dropped: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(dropped >= (31 << 20) - (64 << 10), "{summary}");
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn bad_host_headers_are_refused_before_any_guest_runs() {
    let server = Server::start(&guests().testkit, &["--workers", "1"]);
    let cases: [(&str, &[u8]); 5] = [
        (
            "no Host",
            b"GET /print HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "no Host, absolute form",
            b"GET http://a.test/print HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        ("no Host, HTTP/1.0", b"GET /print HTTP/1.0\r\n\r\n"),
        (
            "a Host that is not UTF-8",
            b"GET /print HTTP/1.1\r\nHost: caf\xe9.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host headers",
            b"GET /print HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let resp = raw_exchange(&server, request);
        assert_eq!(status_of(&resp), "400", "{what}: {resp}");
    }
    // One good request, so its log shows what a guest that ran leaves.
    let resp = raw_exchange(
        &server,
        b"GET /print HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&resp), "200", "{resp}");
    server.wait_for_events(Duration::from_secs(10), |events| {
        events.iter().filter(|e| e["target"] == "access").count() == 6
    });
    let statuses: Vec<_> = server
        .access_log()
        .iter()
        .map(|e| e["fields"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [400, 400, 400, 400, 400, 200]);
    let printed = server
        .events(Some("guest"))
        .iter()
        .filter(|e| e["fields"]["message"] == "testkit says hello on stdout")
        .count();
    assert_eq!(printed, 1, "a guest ran for a refused request");
    let lines = server.lines().join("\n");
    assert!(!lines.contains("handler failed"), "{lines}");

    // A CGI module would run without a Host (SERVER_NAME made up): not anymore.
    let cgi = Server::start(&guests().cgi, &["--workers", "1"]);
    let resp = raw_exchange(&cgi, b"GET /exit HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&resp), "400", "{resp}");
    cgi.wait_for_events(Duration::from_secs(10), |events| {
        events.iter().any(|e| e["target"] == "access")
    });
    let lines = cgi.lines().join("\n");
    assert!(!lines.contains("giving up"), "the CGI module ran: {lines}");
}

#[test]
fn cgi_and_components_take_the_authority_from_the_same_place() {
    let component = Server::start(&guests().testkit, &["--workers", "1"]);
    let cgi = Server::start(&guests().cgi, &["--workers", "1"]);
    // Absolute form: the target's authority, whatever Host says.
    let resp = raw_exchange(
        &component,
        b"GET http://example.org:9999/authority HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert!(has_line(&resp, "example.org:9999"), "{resp}");
    let resp = raw_exchange(
        &cgi,
        b"GET http://example.org:9999/env HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        cgi_env_of(&resp).get("SERVER_NAME"),
        Some(&"example.org"),
        "{resp}"
    );
    // Origin form: Host.
    let resp = raw_exchange(
        &component,
        b"GET /authority HTTP/1.1\r\nHost: a.test:81\r\nConnection: close\r\n\r\n",
    );
    assert!(has_line(&resp, "a.test:81"), "{resp}");
    let resp = raw_exchange(
        &cgi,
        b"GET /env HTTP/1.1\r\nHost: a.test:81\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        cgi_env_of(&resp).get("SERVER_NAME"),
        Some(&"a.test"),
        "{resp}"
    );
}
