//! Outbound HTTP from guests: an allowed upstream (a real wcluster the test
//! starts) answers through the guest; a host not on the list, and an allowed
//! name that resolves to 127.0.0.1 without an explicit grant, are denied with
//! the WASI error and one log line naming the flag; a stalled upstream is
//! cut at the timeout and the worker goes on serving. A URL with
//! credentials is refused and its password never logged, and an over-broad
//! pattern stops start-up.

use std::time::{Duration, Instant};

use crate::harness::*;

/// `/fetch?url=...` on the reach handler: (status, body).
pub fn fetch(server: &Server, url: &str, extra: &str) -> (u16, String) {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    get(
        &fresh_client(),
        &server.url(&format!("/fetch?url={encoded}{extra}")),
    )
    .unwrap()
}

/// An upstream serving `handler`, and the reach handler allowed to call it
/// (with `flags`): (upstream, reach, the upstream's port).
fn upstream_and_reach(handler: &std::path::Path, flags: &[&str]) -> (Server, Server, u16) {
    let upstream = Server::start(handler, &["--workers", "1"]);
    let port = upstream.addr.port();
    let allow = format!("http://127.0.0.1:{port}");
    let mut args = vec!["--workers", "1", "--allow-outbound", &allow];
    args.extend_from_slice(flags);
    let reach = Server::start(&guests().reach, &args);
    (upstream, reach, port)
}

#[test]
fn allowed_upstreams_answer_and_everything_else_is_denied() {
    let g = guests();
    let upstream = Server::start(&g.hello, &["--workers", "1"]);
    let port = upstream.addr.port();
    let other_port = port.wrapping_add(1).max(1024);
    let mut server = Server::start(
        &g.reach,
        &[
            "--workers",
            "1",
            "--allow-outbound",
            &format!("http://127.0.0.1:{port}"),
            // A name allowed, but it resolves to loopback and no pattern
            // grants 127.0.0.1 on that port.
            "--allow-outbound",
            &format!("http://localhost:{other_port}"),
        ],
    );
    let (status, body) = fetch(&server, &format!("http://127.0.0.1:{port}/?name=fleet"), "");
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200 Hello, fleet!\n")
    );
    // The pooled connection is reused for the next call.
    let (status, _) = fetch(&server, &format!("http://127.0.0.1:{port}/"), "");
    assert_eq!(status, 200);

    for (url, why) in [
        ("http://127.0.0.2:9/".to_string(), "not on the allow-list"),
        (
            format!("http://127.0.0.1:{other_port}/"),
            "not on the allow-list",
        ),
        ("https://example.com/".to_string(), "not on the allow-list"),
        (
            format!("http://localhost:{other_port}/"),
            "an internal address",
        ),
    ] {
        let (status, body) = fetch(&server, &url, "");
        assert_eq!(
            (status, body.as_str()),
            (502, "error HttpRequestDenied\n"),
            "{url}"
        );
        let line = server.wait_for_line(Duration::from_secs(5), |l| {
            l.contains("denied") && l.contains(&url)
        });
        assert!(
            line.contains(why) && line.contains("--allow-outbound"),
            "{url}: {line}"
        );
    }
    drop(upstream);
}

#[test]
fn without_a_grant_every_request_is_denied() {
    let g = guests();
    let upstream = Server::start(&g.hello, &["--workers", "1"]);
    let server = Server::start(&g.reach, &["--workers", "1"]);
    let (status, body) = fetch(&server, &format!("http://{}/", upstream.addr), "");
    assert_eq!((status, body.as_str()), (502, "error HttpRequestDenied\n"));
}

#[test]
fn a_stalled_upstream_is_cut_at_the_timeout_and_the_worker_goes_on() {
    let (_upstream, server, port) =
        upstream_and_reach(&guests().testkit, &["--outbound-first-byte-timeout", "1s"]);
    let stalled = format!("http://127.0.0.1:{port}/slow?ms=8000");
    // The flag's cap.
    let start = Instant::now();
    let (status, body) = fetch(&server, &stalled, "");
    let took = start.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (502, "error ConnectionReadTimeout\n")
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The guest's own, shorter timeout.
    let start = Instant::now();
    let (status, body) = fetch(&server, &stalled, "&first_byte_ms=200");
    assert_eq!(
        (status, body.as_str()),
        (502, "error ConnectionReadTimeout\n")
    );
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    // Still serving, upstream calls included.
    let (status, body) = fetch(&server, &format!("http://127.0.0.1:{port}/slow?ms=10"), "");
    assert_eq!((status, body.as_str()), (200, "upstream 200 slept 10 ms\n"));
}

#[test]
fn an_upstream_that_stalls_mid_body_is_cut_between_bytes() {
    let (_upstream, server, port) = upstream_and_reach(
        &guests().streaming,
        &["--outbound-between-bytes-timeout", "500ms"],
    );
    let (status, body) = fetch(
        &server,
        &format!("http://127.0.0.1:{port}/?n=3&pause=50"),
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200 line 1\nline 2\nline 3\n")
    );
    let start = Instant::now();
    let (status, body) = fetch(
        &server,
        &format!("http://127.0.0.1:{port}/?n=2&pause=5000"),
        "",
    );
    assert!(
        status == 502 && body.starts_with("error"),
        "{status} {body}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_url_with_credentials_is_refused_and_its_password_never_logged() {
    let (_upstream, mut server, port) = upstream_and_reach(&guests().hello, &[]);
    // On the allow-list or not, userinfo is refused before anything is sent
    // (it would reach the upstream as `Host: user:password@...`).
    for (url, shown) in [
        (
            format!("http://user:s3cret-pw@127.0.0.1:{port}/"),
            format!("http://***@127.0.0.1:{port}/"),
        ),
        (
            "http://user:s3cret-pw@127.0.0.2:9/x".to_string(),
            "http://***@127.0.0.2:9/x".to_string(),
        ),
    ] {
        let (status, body) = fetch(&server, &url, "");
        assert_eq!(
            (status, body.as_str()),
            (502, "error HttpRequestUriInvalid\n"),
            "{url}"
        );
        let line = server.wait_for_line(Duration::from_secs(5), |l| l.contains(&shown));
        assert!(line.contains("credentials"), "{line}");
    }
    // The access log holds the reach handler's own (percent-encoded) URL;
    // no line holds the password as the guest wrote it.
    let leaks: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("user:s3cret-pw"))
        .collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

#[test]
fn over_broad_patterns_stop_start_up() {
    let handler = guests().reach.to_str().unwrap();
    let cache = scratch("outbound-broad");
    for (pattern, why) in [
        ("http://*:*", "would allow every upstream"),
        ("http://0.0.0.0/0:*", "127.0.0.0/8, loopback"),
    ] {
        let (ok, stderr) = run_to_exit(&[
            "serve",
            handler,
            "--addr",
            "127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--allow-outbound",
            pattern,
        ]);
        assert!(
            !ok && stderr.contains(&format!("--allow-outbound `{pattern}`"))
                && stderr.contains(why),
            "{pattern}: {stderr}"
        );
    }
}
