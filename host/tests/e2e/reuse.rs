//! Opt-in instance reuse that is safe or refused: a guest that returns
//! without a response gets its client a 500 at once and its instance
//! dropped; a handler that cannot serve a second request in one instance is
//! refused before it takes traffic; a reused instance's output carries the
//! id of the request it is serving.

use std::time::{Duration, Instant};

use crate::harness::*;

fn reuse_server(extra: &[&str]) -> Server {
    let mut args = vec!["--workers", "1", "--reuse-instances", "100"];
    args.extend_from_slice(extra);
    Server::start(&guests().echo, &args)
}

#[test]
fn no_response_in_reuse_mode_fails_at_once_and_drops_the_instance() {
    let mut server = reuse_server(&["--request-timeout", "20s"]);
    let count = || get(&fresh_client(), &server.url("/count")).unwrap();
    assert_eq!(count(), (200, "1\n".into()));
    assert_eq!(count(), (200, "2\n".into()), "the instance was not reused");
    for _ in 0..3 {
        let start = Instant::now();
        let (status, _) = get(&fresh_client(), &server.url("/forget")).unwrap();
        assert_eq!(status, 500);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // The instance that failed is gone: the next request starts afresh.
        assert_eq!(count(), (200, "1\n".into()));
    }
    server.wait_for_line(Duration::from_secs(5), |l| {
        l.contains("returned without setting a response")
    });
}

#[test]
fn a_handler_that_cannot_serve_twice_is_refused_with_reuse() {
    let echo = guests().echo.to_str().unwrap().to_string();
    let cache = cache_dir();
    let (ok, stderr) = run_to_exit(&[
        "serve",
        &echo,
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--reuse-instances",
        "100",
        "--smoke-path",
        "/once",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("second request to one instance")
            && stderr.contains("run it with --reuse-instances 0"),
        "{stderr}"
    );
    // Without reuse the same handler serves.
    let server = Server::start(&guests().echo, &["--workers", "1", "--smoke-path", "/once"]);
    assert_eq!(get(&fresh_client(), &server.url("/once")).unwrap().0, 200);
}

#[test]
fn a_reused_instance_labels_its_output_with_the_request_it_serves() {
    let server = Server::start(
        &guests().testkit,
        &["--workers", "1", "--reuse-instances", "100"],
    );
    for _ in 0..3 {
        assert_eq!(
            get(&fresh_client(), &server.url("/print")).unwrap(),
            (200, "printed\n".into())
        );
    }
    // The access-log line of the last request may still be on its way.
    server.wait_for_events(Duration::from_secs(5), |events| {
        events
            .iter()
            .filter(|e| e["target"] == "access" && e["fields"]["path"] == "/print")
            .count()
            == 3
    });
    let events = server.events(Some("guest"));
    let ids: Vec<String> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "testkit says hello on stdout")
        .map(|e| e["fields"]["request"].as_str().unwrap().to_string())
        .collect();
    let served: Vec<String> = server
        .access_log()
        .iter()
        .filter(|e| e["fields"]["path"] == "/print")
        .map(|e| e["fields"]["request"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, served, "guest lines: {ids:?}, requests: {served:?}");
}
