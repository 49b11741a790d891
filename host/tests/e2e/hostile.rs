//! Faults and hostile input: what one request or client does must not hurt
//! the others. Each test names the fault it plays.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

/// Sends raw bytes, returns what came back before EOF (or `wait` passed).
fn raw(server: &Server, bytes: &[u8], wait: Duration) -> String {
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(wait)).unwrap();
    let _ = conn.write_all(bytes);
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn guest_faults_fail_alone_and_memory_comes_back() {
    let server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "1",
            "--request-timeout",
            "3s",
            "--max-memory",
            "128MiB",
        ],
    );
    let worker = server.worker_pids()[0].1;
    let client = fresh_client();
    assert_eq!(get(&client, &server.url("/")).unwrap().0, 200);
    let before = rss_kb(worker);
    // Concurrent requests to the same worker keep succeeding throughout.
    let bystander = {
        let url = server.url("/");
        std::thread::spawn(move || {
            let client = keepalive_client();
            (0..200)
                .filter(|_| get(&client, &url) != Ok((200, "hello\n".into())))
                .count()
        })
    };
    for (path, want) in [
        ("/trap", 500),
        ("/recurse", 500),
        ("/hog", 500),
        ("/hog", 500),
        ("/loop", 504),
    ] {
        assert_eq!(get(&client, &server.url(path)).unwrap().0, want, "{path}");
    }
    let (status, _) = get(&client, &server.url("/flood")).unwrap();
    assert_eq!(status, 504);
    assert_eq!(bystander.join().unwrap(), 0, "bystander requests failed");
    let after = rss_kb(worker);
    assert!(
        after < before + 32 * 1024,
        "worker RSS grew from {before} KiB to {after} KiB after the memory hogs"
    );
    // The flood reached the log bounded, with a note of what was dropped.
    server.wait_for_events(Duration::from_secs(10), |events| {
        events.iter().any(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("more lines dropped"))
        })
    });
    let flood_lines = server
        .events(Some("guest"))
        .iter()
        .filter(|e| e["fields"]["message"] == "flooding the log")
        .count();
    assert_eq!(flood_lines, 1000);
    assert_eq!(server.worker_pids()[0].1, worker, "the worker was replaced");
}

#[test]
fn huge_and_broken_responses_end_cleanly() {
    let server = Server::start(
        &guests().echo,
        &["--workers", "1", "--request-timeout", "2s"],
    );
    // 1 GiB response: the deadline cuts it; the client sees a truncated body.
    let start = Instant::now();
    let resp = fresh_client().get(&server.url("/huge")).call().unwrap();
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let ended_with_error = loop {
        match body.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => total += n as u64,
            Err(_) => break true,
        }
    };
    assert!(start.elapsed() < Duration::from_secs(5));
    // Either all of it, or a cut the client can tell from a complete body.
    assert!(
        total == 1 << 30 || ended_with_error,
        "{total} bytes, then a clean end"
    );
    // A panic after the headers: the body is cut short, not completed.
    let resp = fresh_client()
        .get(&server.url("/panic-after-headers"))
        .call()
        .unwrap();
    let mut got = Vec::new();
    let read = resp.into_reader().read_to_end(&mut got);
    assert!(
        read.is_err(),
        "a response whose handler panicked must not look complete"
    );
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn saturated_worker_answers_503_with_retry_after() {
    let mut server = Server::start(
        &guests().testkit,
        &[
            "--workers",
            "1",
            "--max-concurrent",
            "2",
            "--queue-timeout",
            "200ms",
        ],
    );
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/slow?ms=1500");
            std::thread::spawn(move || get(&fresh_client(), &url))
        })
        .collect();
    server.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("slow request started")
    });
    let start = Instant::now();
    loop {
        // Wait for the second slow request to hold its slot too.
        let busy = server
            .lines()
            .iter()
            .filter(|l| l.contains("slow request started"))
            .count();
        if busy == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    match fresh_client().get(&server.url("/")).call() {
        Err(ureq::Error::Status(503, r)) => assert_eq!(r.header("retry-after"), Some("1")),
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the 503 was not quick"
    );
    for s in slow {
        assert_eq!(s.join().unwrap().unwrap().0, 200);
    }
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn connections_beyond_the_limit_wait_for_a_slot() {
    let server = Server::start(
        &guests().hello,
        &["--workers", "1", "--max-connections", "2"],
    );
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        assert!(c.read(&mut buf).unwrap() > 0);
        held.push(c);
    }
    // A third is neither served nor closed while the two are open...
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 256];
    match third.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a third connection was answered or closed: {other:?}"),
    }
    // ...and is served as soon as one of them closes.
    drop(held);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut resp = String::new();
    third.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
}

#[test]
fn a_client_that_stops_reading_loses_its_connection_after_the_send_timeout() {
    let server = Server::start(
        &guests().echo,
        &[&ONE_SLOT[..], &["--request-timeout", "60s"]].concat(),
    );
    // 1 GiB that this client never reads: the socket buffers fill, and the
    // server's writes wait.
    let mut reader = TcpStream::connect(server.addr).unwrap();
    reader
        .write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The only slot is taken until the send timeout frees it.
    let mut next = TcpStream::connect(server.addr).unwrap();
    next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    next.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut resp = String::new();
    next.read_to_string(&mut resp)
        .expect("no answer within 15 s: the stalled reader kept the slot");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert!(
        closed_by_server(&mut reader, Instant::now(), Duration::from_secs(15)).is_some(),
        "the stalled connection was not closed"
    );
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let server = Server::start(&guests().echo, &["--workers", "1", "--max-body", "1KiB"]);
    let wait = Duration::from_secs(3);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(status_line(&raw(&server, big.as_bytes(), wait)).contains("431"));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(status_line(&raw(&server, many.as_bytes(), wait)).contains("431"));
    assert!(status_line(&raw(&server, b"GARBAGE\r\n\r\n", wait)).contains("400"));
    assert!(
        status_line(&raw(
            &server,
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            wait
        ))
        .contains("400")
    );
    assert!(
        status_line(&raw(
            &server,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
            wait
        ))
        .contains("400")
    );
    let over = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n{}",
        "b".repeat(2048)
    );
    assert!(status_line(&raw(&server, over.as_bytes(), wait)).contains("413"));
    let server_ok = get(&fresh_client(), &server.url("/")).unwrap().0;
    assert_eq!(server_ok, 200);
}

#[test]
fn smuggling_attempts_do_not_desync() {
    let server = Server::start(&guests().echo, &["--workers", "1"]);
    let wait = Duration::from_secs(3);
    // TE + CL: chunked wins (or the request is refused); the bytes after the
    // chunked body must never be read as a second request.
    let te_cl = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw(&server, te_cl, wait);
    let sl = status_line(&resp);
    assert!(sl.contains("400") || sl.contains("200"), "{resp}");
    let bad_chunk =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let resp = raw(&server, bad_chunk, wait);
    assert!(
        !status_line(&resp).contains("200") || !resp.contains("hello"),
        "{resp}"
    );
    let dup_chunked =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n";
    let resp = raw(&server, dup_chunked, wait);
    assert!(status_line(&resp).contains("400"), "{resp}");
    let not_final =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
    let resp = raw(&server, not_final, wait);
    assert!(status_line(&resp).contains("400"), "{resp}");
    // Whatever happened above, no request for /smuggled was ever served.
    server.wait_for_events(Duration::from_secs(5), |_| !server.access_log().is_empty());
    assert!(
        server
            .access_log()
            .iter()
            .all(|e| e["fields"]["path"] != "/smuggled"),
        "a smuggled request was served"
    );
}

#[test]
fn slowloris_does_not_stop_normal_clients() {
    let server = Server::start(
        &guests().hello,
        &["--workers", "2", "--header-timeout", "1s"],
    );
    let mut slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut c = TcpStream::connect(server.addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            c
        })
        .collect();
    let client = fresh_client();
    for _ in 0..20 {
        assert_eq!(get(&client, &server.url("/")).unwrap().0, 200);
    }
    // Each trickling connection is closed at the header timeout.
    let start = Instant::now();
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let _ = c.write_all(b"a");
        let n = c.read(&mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn stopped_worker_is_replaced() {
    let server = Server::start(
        &guests().hello,
        &["--workers", "2", "--liveness-timeout", "2s"],
    );
    let victim = server.worker_pids()[0].1;
    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    let client = fresh_client();
    let mut failures = 0;
    let start = Instant::now();
    while server.worker_pids()[0].1 == victim {
        if get(&client, &server.url("/")).map(|r| r.0) != Ok(200) {
            failures += 1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the stopped worker was never replaced"
        );
    }
    assert!(!alive(victim), "the stopped worker was not killed");
    // Only a request already accepted by the stopped worker may fail.
    assert!(failures <= 1, "{failures} requests failed");
    for _ in 0..10 {
        assert_eq!(get(&client, &server.url("/")).unwrap().0, 200);
    }
}

#[test]
fn crash_loop_is_reported_and_the_primary_stays_up() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let start = Instant::now();
    let mut killed = 0;
    while killed < 6 {
        let pid = server.worker_pids()[0].1;
        if alive(pid) {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
            killed += 1;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
        // Wait for the replacement (with its growing backoff).
        while server.worker_pids()[0].1 == pid {
            assert!(start.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let lines = server.lines().join("\n");
    assert!(lines.contains("crash-looping"), "no crash loop reported");
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn connections_in_transit_to_a_dying_worker_go_to_another() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let victim = server.worker_pids()[0].1;
    // Stopped, the worker cannot acknowledge the connections sent to it:
    // they stay in transit, held by the primary.
    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let url = server.url(&format!("/?name=c{i}"));
            std::thread::spawn(move || get(&fresh_client(), &url))
        })
        .collect();
    // Let every connection reach a worker (half of them the stopped one).
    server.wait_for_events(Duration::from_secs(10), |_| server.access_log().len() >= 3);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap(), Ok((200, format!("Hello, c{i}!\n"))));
    }
}

#[test]
fn compile_bomb_is_stopped_by_the_child_limits() {
    let g = guests();
    let dir = scratch("bomb");
    let file = dir.join("handler.wasm");
    std::fs::copy(&g.hello, &file).unwrap();
    let server = Server::start(&file, &["--workers", "1", "--compile-timeout", "1s"]);
    let primary_rss = rss_kb(server.pid());
    // Many large functions: seconds of compiling, far past the 1 s limit.
    let mut wat = String::from("(module (func (export \"_start\"))\n");
    for _ in 0..20_000 {
        wat.push_str("(func (result i32) i32.const 1");
        for _ in 0..200 {
            wat.push_str(" i32.const 2 i32.add");
        }
        wat.push_str(")\n");
    }
    wat.push(')');
    let tmp = dir.join("bomb.tmp");
    std::fs::write(&tmp, wat).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let status = server.wait_for_status(|s| {
        deploy_error(&s["last_deploy"]).is_some_and(|e| e.contains("--compile-timeout"))
    });
    assert_eq!(status["workers"][0]["state"], "ready");
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
    // The compiling happened elsewhere: the primary did not grow.
    assert!(rss_kb(server.pid()) < primary_rss + 16 * 1024);
}

#[test]
fn guests_cannot_reach_out() {
    let dir = scratch("escape");
    std::fs::write(dir.join("ok.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("{}::/data", dir.display());
    let server = Server::start(&guests().testkit, &["--workers", "1", "--dir", &spec]);
    let client = fresh_client();
    let url = |p: &str| server.url(p);
    assert_eq!(
        get(&client, &url("/file?path=/data/ok.txt")).unwrap(),
        (200, "inside\n".into())
    );
    for path in [
        "/data/link",
        "/data/etc/passwd",
        "/data/../etc/passwd",
        "/etc/passwd",
    ] {
        assert_eq!(
            get(&client, &url(&format!("/file?path={path}"))).unwrap().0,
            403,
            "{path}"
        );
    }
    let addr = listener.local_addr().unwrap();
    let (status, body) = get(&client, &url(&format!("/connect?addr={addr}"))).unwrap();
    assert_eq!(status, 403, "{body}");
}

#[test]
fn slow_request_body_ends_at_the_deadline() {
    let server = Server::start(
        &guests().testkit,
        &["--workers", "1", "--request-timeout", "2s"],
    );
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"POST /env HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly ten b")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_still_serving_h1(&server);
}

#[test]
fn module_over_the_size_limit_is_refused() {
    let (ok, err) = run_to_exit(&[
        "serve",
        guests().hello.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--max-module-size",
        "1MiB",
        "--cache-dir",
        scratch("size-limit").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("hello.wasm") && err.contains("--max-module-size"),
        "{err}"
    );
}

fn assert_still_serving_h1(server: &Server) {
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}
