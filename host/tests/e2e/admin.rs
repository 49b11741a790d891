//! The admin endpoint: health and readiness as a load balancer reads them
//! (readiness flips the moment SIGTERM arrives), metrics that add up to what
//! a client sent and that promtool accepts, and the typed status.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

fn status_of(url: &str) -> u16 {
    match get(&fresh_client(), url) {
        Ok((code, _)) => code,
        Err(_) => 0,
    }
}

#[test]
fn readiness_flips_at_sigterm_while_requests_in_flight_finish() {
    let mut server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "2",
            "--admin",
            "127.0.0.1:0",
            "--drain-delay",
            "1s",
        ],
    );
    let (readyz, healthz) = (
        admin_url(&mut server, "/readyz"),
        admin_url(&mut server, "/healthz"),
    );
    assert_eq!(status_of(&readyz), 200);
    assert_eq!(status_of(&healthz), 200);
    let url = server.url("/slow?ms=2000");
    let slow = std::thread::spawn(move || get(&fresh_client(), &url));
    server.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("slow request started")
    });
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    while status_of(&readyz) != 503 {
        assert!(
            signalled.elapsed() < Duration::from_millis(100),
            "/readyz still 200 {:?} after SIGTERM",
            signalled.elapsed()
        );
    }
    eprintln!("readyz 503 {:?} after SIGTERM", signalled.elapsed());
    // --drain-delay: still serving while balancers notice.
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
    assert_eq!(status_of(&healthz), 200);
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success());
}

/// The value of the sample `name{labels}` in exposition text.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn metrics_add_up_and_promtool_accepts_them() {
    let mut server = Server::start(
        &guests().testkit,
        &["--workers", "2", "--admin", "127.0.0.1:0"],
    );
    let metrics = admin_url(&mut server, "/metrics");
    let client = fresh_client();
    for _ in 0..37 {
        assert_eq!(get(&client, &server.url("/hello")).unwrap().0, 200);
    }
    for _ in 0..13 {
        let r = client.post(&server.url("/hello")).send_bytes(b"x");
        assert_eq!(r.map(|r| r.status()).unwrap_or(0), 200);
    }
    for _ in 0..4 {
        assert_eq!(get(&client, &server.url("/trap")).unwrap().0, 500);
    }
    let resp = fresh_client().get(&metrics).call().unwrap();
    assert!(resp.content_type().starts_with("text/plain"));
    let text = resp.into_string().unwrap();
    assert_eq!(
        sample(
            &text,
            r#"wcluster_http_requests_total{method="GET",code="200"}"#
        ),
        37.0
    );
    assert_eq!(
        sample(
            &text,
            r#"wcluster_http_requests_total{method="POST",code="200"}"#
        ),
        13.0
    );
    assert_eq!(
        sample(
            &text,
            r#"wcluster_http_requests_total{method="GET",code="500"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(&text, "wcluster_http_request_duration_seconds_count"),
        54.0
    );
    assert_eq!(
        sample(&text, r#"wcluster_guest_failures_total{cause="trap"}"#),
        4.0
    );
    assert_eq!(sample(&text, r#"wcluster_workers{state="ready"}"#), 2.0);
    assert_eq!(sample(&text, "wcluster_connections_handed_off_total"), 54.0);
    assert!(
        sample(
            &text,
            r#"wcluster_worker_resident_memory_bytes{worker="0"}"#
        ) > 1e6
    );
    assert_eq!(sample(&text, "wcluster_ready"), 1.0);
    // A worker that dies takes no counts with it.
    let (_, victim) = server.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    server.wait_for_status(|s| all_ready(s) && s["workers"][0]["restarts"] == 1);
    let text = fresh_client()
        .get(&metrics)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(
        sample(
            &text,
            r#"wcluster_http_requests_total{method="GET",code="200"}"#
        ),
        37.0
    );
    assert_eq!(sample(&text, "wcluster_worker_restarts_total"), 1.0);
    // The format is what Prometheus reads, with no lint findings.
    let (clean, findings) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(clean, "promtool check metrics: {findings}\n{text}");
}

/// A raw HTTP/1.1 request to the admin port: the status code.
fn admin_request(url: &str, method: &str, headers: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let path = &url[url.find(addr).unwrap() + addr.len()..];
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_admin_port_answers_get_only_and_shows_status_to_the_token() {
    let dir = scratch("admin-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").unwrap();
    let mut server = Server::start(
        &guests().hello,
        &[
            "--workers",
            "2",
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let status = admin_url(&mut server, "/status");
    let metrics = admin_url(&mut server, "/metrics");
    assert_eq!(admin_request(&metrics, "POST", ""), 405);
    assert_eq!(admin_request(&status, "DELETE", ""), 405);
    assert_eq!(admin_request(&metrics, "GET", ""), 200);
    assert_eq!(admin_request(&metrics, "HEAD", ""), 200);
    assert_eq!(admin_request(&status, "GET", ""), 401);
    let wrong = "Authorization: Bearer s3cret-admin-token-0123456780\r\n";
    assert_eq!(admin_request(&status, "GET", wrong), 401);
    // With the token, /status is the typed status, as `wcluster status
    // --json` prints it.
    let body = fresh_client()
        .get(&status)
        .set("Authorization", "Bearer s3cret-admin-token-0123456789")
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reply"], "status");
    assert_eq!(body["workers"].as_array().unwrap().len(), 2);
    // Without a token file, /status is not served at all.
    let mut open = Server::start(
        &guests().hello,
        &["--workers", "1", "--admin", "127.0.0.1:0"],
    );
    let status = admin_url(&mut open, "/status");
    assert_eq!(admin_request(&status, "GET", ""), 403);
    assert_eq!(
        admin_request(&admin_url(&mut open, "/readyz"), "GET", ""),
        200
    );
}

#[test]
fn idle_admin_clients_cannot_use_up_the_primarys_descriptors() {
    let mut server = Server::start(
        &guests().hello,
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--admin-max-connections",
            "4",
        ],
    );
    let healthz = admin_url(&mut server, "/healthz");
    let addr = healthz
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds(server.pid());
    let idle: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = fds(server.pid()).saturating_sub(before);
    assert!(
        held <= 5,
        "{held} descriptors held for 40 idle admin clients (cap 4)"
    );
    // The main port serves meanwhile, and a probe gets in at once: an idle
    // client makes room for it.
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
    let start = Instant::now();
    assert_eq!(status_of(&healthz), 200);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the probe waited {:?}",
        start.elapsed()
    );
    drop(idle);
}

/// Runs a command with `input` on its stdin: (success, stdout and stderr).
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String);
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text += &String::from_utf8_lossy(&out.stderr);
        (out.status.success() && text.trim().is_empty(), text)
    }
}

#[test]
fn a_burst_of_new_connections_is_acknowledged_in_full() {
    // More connections at once than one acknowledgement names (64), so the
    // worker acknowledges them in several messages, some of many.
    const CLIENTS: usize = 150;
    let mut server = Server::start(
        &guests().testkit,
        &["--workers", "1", "--admin", "127.0.0.1:0"],
    );
    let metrics = admin_url(&mut server, "/metrics");
    let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, start) = (server.url("/hello"), start.clone());
            std::thread::spawn(move || {
                start.wait();
                get(&fresh_client(), &url).map(|(code, _)| code)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), Ok(200));
    }
    // Every connection was acknowledged: the primary holds none of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(&fresh_client(), &metrics).unwrap().1;
        let handed_off = sample(&text, "wcluster_connections_handed_off_total");
        let held = sample(&text, "wcluster_handoff_queue_length");
        if handed_off == CLIENTS as f64 && held == 0.0 {
            assert_eq!(
                sample(&text, "wcluster_connections_accepted_total"),
                CLIENTS as f64
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handed_off} of {CLIENTS} connections acknowledged, {held} still held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
