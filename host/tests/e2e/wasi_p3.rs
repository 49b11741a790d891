//! WASI 0.3 handlers (`wasi:http/service@0.3.0`) beside 0.2 ones: the same
//! limits (an error within deadline + 1 s, the worker goes on serving),
//! bodies streamed both ways byte-exact, trailers, opt-in reuse with several
//! requests in one instance at once, rolls 0.2 ⇄ 0.3 under load with no
//! failed request, and a clear refusal of a component that is neither.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::*;

fn status_within(server: &Server, path: &str, limit: Duration) -> (u16, String) {
    let start = Instant::now();
    let answer = get(&fresh_client(), &server.url(path)).unwrap();
    assert!(start.elapsed() < limit, "{path} took {:?}", start.elapsed());
    answer
}

#[test]
fn p3_handlers_get_the_same_limits_and_stream_both_ways() {
    let mut server = Server::start(
        &guests().p3kit,
        &[
            "--workers",
            "1",
            "--request-timeout",
            "2s",
            "--max-memory",
            "64MiB",
            "--env",
            "GREETING=hi",
        ],
    );
    // The guest writes its body after `handle` returned. Read ahead while
    // the guest keeps producing it, a small response leaves whole, with a
    // length instead of chunks. That is best effort (a body that ends a
    // scheduler round late goes out chunked), so some of them, not each.
    let agent = keepalive_client();
    let whole = (0..20)
        .filter(|_| {
            let resp = agent.get(&server.url("/")).call().unwrap();
            let length = resp.header("content-length") == Some("20");
            assert_eq!(resp.into_string().unwrap(), "hello from WASI 0.3\n");
            length
        })
        .count();
    eprintln!("{whole} of 20 responses read ahead whole");
    assert!(whole >= 1, "no 0.3 response came with a Content-Length");
    server.wait_for_line(Duration::from_secs(5), |l| l.contains("p3kit: hello"));
    let hello = || get(&fresh_client(), &server.url("/")).unwrap();
    assert_eq!(
        get(&fresh_client(), &server.url("/env?name=GREETING")).unwrap(),
        (200, "hi\n".into())
    );

    // 10 MiB through the guest and back, byte for byte.
    let body: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (status, _, echoed) = post_full_duplex(server.addr, "/echo", body.clone());
    assert_eq!(status, 200);
    assert!(echoed == body, "echo differs: {} bytes back", echoed.len());

    // Failures: each answered within the deadline + 1 s, then served again.
    for (path, status) in [("/trap", 500), ("/loop", 504), ("/hog", 500)] {
        let (code, _) = status_within(&server, path, Duration::from_secs(3));
        assert_eq!(code, status, "{path}");
        assert_eq!(hello().0, 200, "after {path}");
    }
    assert_eq!(
        status_within(&server, "/slow?ms=300", Duration::from_secs(2)),
        (200, "slept 300 ms\n".into())
    );

    // Trailers reach an HTTP/1.1 client that asks for them.
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    assert!(raw.contains("body before trailers\n"), "{raw}");
    assert!(raw.ends_with("0\r\nx-checksum: abc123\r\n\r\n"), "{raw}");
}

#[test]
fn p3_reuse_serves_requests_at_once_in_one_instance() {
    let server = Server::start(
        &guests().p3kit,
        &[
            "--workers",
            "1",
            "--reuse-instances",
            "100",
            "--max-instance-concurrency",
            "8",
            "--request-timeout",
            "2s",
        ],
    );
    // A warm instance (idle instances live a second) takes the requests
    // that arrive while it serves, up to the cap.
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
    let url = server.url("/concurrent?ms=1000");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::sleep(Duration::from_millis(10));
            std::thread::spawn(move || get(&fresh_client(), &url).unwrap())
        })
        .collect();
    let most = clients
        .into_iter()
        .map(|c| {
            let (status, body) = c.join().unwrap();
            assert_eq!(status, 200, "{body}");
            body.trim()
                .strip_prefix("most at once: ")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert!(most > 1, "one instance never served two requests at once");
    // A reused instance that runs past the deadline is dropped; the next
    // request gets a fresh one.
    assert_eq!(
        status_within(&server, "/loop", Duration::from_secs(3)).0,
        504
    );
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap(),
        (200, "hello from WASI 0.3\n".into())
    );
}

#[test]
fn p3_reuse_one_request_at_a_time_by_default() {
    let server = Server::start(
        &guests().p3kit,
        &[
            "--workers",
            "1",
            "--reuse-instances",
            "3",
            "--request-timeout",
            "2s",
        ],
    );
    let agent = keepalive_client();
    let counts: Vec<String> = (0..6)
        .map(|_| get(&agent, &server.url("/count")).unwrap().1)
        .collect();
    // One instance serves three requests in turn, then a fresh one does.
    let n = |i| format!("request {i} in this instance\n");
    assert_eq!(counts, [n(1), n(2), n(3), n(1), n(2), n(3)]);
    // Requests that overlap get instances of their own.
    let url = server.url("/concurrent?ms=300");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&fresh_client(), &url).unwrap())
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), (200, "most at once: 1\n".into()));
    }
    // An instance that trapped or ran past the deadline is not given back.
    assert_eq!(get(&agent, &server.url("/trap")).unwrap().0, 500);
    assert_eq!(
        status_within(&server, "/loop", Duration::from_secs(3)).0,
        504
    );
    let (status, body) = get(&agent, &server.url("/count")).unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("request "), "{body}");
}

fn either_hello(body: &str) -> bool {
    body == "Hello, world!\n" || body == "Hello, world, from WASI 0.3!\n"
}

#[test]
fn rolls_between_0_2_and_0_3_under_load_fail_no_request() {
    let g = guests();
    let file = scratch("p3-rolls").join("handler.wasm");
    std::fs::copy(&g.hello, &file).unwrap();
    let server = Server::start(&file, &["--workers", "2"]);
    let traffic = Traffic::start(&server, 8, 2, either_hello);
    for i in 0..4 {
        let next = if i % 2 == 0 { &g.p3_hello } else { &g.hello };
        rename_over(&file, next);
        server.wait_for_roll(i + 1);
        std::thread::sleep(Duration::from_millis(300));
    }
    let bodies = traffic.bodies.clone();
    let ok = traffic.finish_clean();
    let bodies = bodies.lock().unwrap();
    assert!(
        bodies.contains_key("Hello, world, from WASI 0.3!\n"),
        "{bodies:?}"
    );
    assert!(bodies.contains_key("Hello, world!\n"), "{bodies:?}");
    eprintln!("0.2 <-> 0.3 rolls under load: {ok} requests, bodies {bodies:?}");
}

#[test]
fn a_component_that_is_neither_is_refused_with_what_it_exports() {
    let dir = scratch("p3-neither");
    let empty = dir.join("empty.wat");
    std::fs::write(&empty, "(component)").unwrap();
    let (ok, stderr) = run_to_exit(&["serve", empty.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("exports nothing")
            && stderr.contains("wasi:http/incoming-handler@0.2.x")
            && stderr.contains("wasi:http/handler@0.3.x"),
        "{stderr}"
    );
    let other = dir.join("other.wat");
    std::fs::write(
        &other,
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (export "run" (func $f)))"#,
    )
    .unwrap();
    let (ok, stderr) = run_to_exit(&["serve", other.to_str().unwrap()]);
    assert!(!ok && stderr.contains("exports run;"), "{stderr}");
}

#[test]
fn p3_request_bodies_are_held_to_the_limit() {
    let server = Server::start(&guests().p3kit, &["--workers", "1", "--max-body", "1KiB"]);
    // Declared too long: refused before any guest runs.
    match fresh_client()
        .post(&server.url("/echo"))
        .send_bytes(&[7u8; 4096])
    {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 413),
        other => panic!("expected 413, got {other:?}"),
    }
    // Undeclared (chunked): the guest's stream fails at the limit, so the
    // echo never comes back whole.
    let echoed = fresh_client()
        .post(&server.url("/echo"))
        .send(std::io::Cursor::new(vec![7u8; 4096]))
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let mut body = Vec::new();
            r.into_reader()
                .read_to_end(&mut body)
                .map(|_| body)
                .map_err(|e| e.to_string())
        });
    assert!(
        !echoed.as_ref().is_ok_and(|b| b.len() >= 4096),
        "the whole body came back: {} bytes",
        echoed.map(|b| b.len()).unwrap_or(0)
    );
    // And the worker goes on serving.
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap(),
        (200, "hello from WASI 0.3\n".into())
    );
}
