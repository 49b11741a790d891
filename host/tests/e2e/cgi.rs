//! CGI-style WASI command modules: the conventions both ways, streaming,
//! and bad output.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::*;

fn cgi_server() -> Server {
    Server::start(
        &guests().cgi,
        &["--workers", "1", "--request-timeout", "2s"],
    )
}

fn no_redirects() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

#[test]
fn request_arrives_as_cgi_variables() {
    let server = cgi_server();
    let (status, body) = get(&fresh_client(), &server.url("/env?a=1&b=two")).unwrap();
    assert_eq!(status, 200);
    let env: HashMap<&str, &str> = body.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["GATEWAY_INTERFACE"], "CGI/1.1");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["QUERY_STRING"], "a=1&b=two");
    assert_eq!(env["SERVER_NAME"], "127.0.0.1");
    assert_eq!(env["SERVER_PORT"], server.addr.port().to_string());
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert!(env.contains_key("HTTP_USER_AGENT"), "{body}");
    assert!(
        !env.contains_key("HOME") && !env.contains_key("PATH"),
        "host env leaked: {body}"
    );
}

#[test]
fn body_on_stdin_and_headers_both_ways() {
    let server = cgi_server();
    let resp = fresh_client()
        .post(&server.url("/echo"))
        .set("content-type", "application/x-thing")
        .send_bytes(b"a body for stdin")
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("application/x-thing"));
    assert_eq!(resp.into_string().unwrap(), "a body for stdin");

    let resp = fresh_client()
        .get(&server.url("/headers"))
        .set("x-test", "from the client")
        .call()
        .unwrap();
    assert_eq!(resp.header("x-custom"), Some("yes"));
    assert_eq!(resp.header("x-echo"), Some("from the client"));
}

#[test]
fn a_chunked_body_over_the_limit_or_broken_never_reaches_stdin_as_complete() {
    let server = Server::start(&guests().cgi, &["--workers", "1", "--max-body", "1KiB"]);
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    let over = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}0\r\n\r\n"
    );
    let resp = raw_exchange(&server, over.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let broken = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nabcde\r\nzz\r\n";
    let resp = raw_exchange(&server, broken.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // Within the limit, the same framing is served.
    let fine = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nabcde\r\n0\r\n\r\n";
    let resp = raw_exchange(&server, fine.as_bytes());
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("abcde"),
        "{resp}"
    );
}

#[test]
fn status_and_location() {
    let server = cgi_server();
    assert_eq!(
        get(&fresh_client(), &server.url("/not-found")).unwrap(),
        (404, "nothing here\n".into())
    );
    match no_redirects().get(&server.url("/redirect")).call() {
        Ok(r) => {
            assert_eq!(r.status(), 302);
            assert_eq!(r.header("location"), Some("/elsewhere"));
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn output_is_streamed_as_written() {
    let server = cgi_server();
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    let start = Instant::now();
    write!(
        conn,
        "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first_at = None;
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_at.is_none() && String::from_utf8_lossy(&got).contains("first\n") {
            first_at = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("second\n"), "{text}");
    // The handler sleeps 1.5 s between its two lines: the first must have
    // reached the client long before the second was written.
    let first_at = first_at.unwrap();
    assert!(total >= Duration::from_millis(1400), "{total:?}");
    assert!(
        first_at + Duration::from_millis(1000) < total,
        "first line after {first_at:?} of {total:?}"
    );
}

#[test]
fn bad_output_is_a_502_and_the_worker_goes_on() {
    let server = cgi_server();
    let client = fresh_client();
    for path in ["/exit", "/malformed", "/no-blank-line"] {
        assert_eq!(get(&client, &server.url(path)).unwrap().0, 502, "{path}");
        assert_eq!(
            get(&client, &server.url("/")).unwrap(),
            (200, "hello from CGI\n".into())
        );
    }
    let start = Instant::now();
    assert_eq!(get(&client, &server.url("/loop")).unwrap().0, 504);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        get(&client, &server.url("/")).unwrap(),
        (200, "hello from CGI\n".into())
    );
    let lines = server.lines().join("\n");
    assert!(lines.contains("exited with status 3"), "{lines}");
    assert!(lines.contains("no colon"), "{lines}");
}

#[test]
fn builtin_handler_serves_without_a_file() {
    let cache = scratch("builtin");
    let mut child = wcluster()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--cache-dir",
        ])
        .arg(&cache)
        .arg("--control")
        .arg(cache.join("c.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim_start_matches("wcluster: listening on http://")
        .split_whitespace()
        .next()
        .unwrap();
    let got = get(&fresh_client(), &format!("http://{addr}/"));
    child.kill().unwrap();
    child.wait().unwrap();
    let (status, body) = got.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello from wcluster!"), "{body}");
}
