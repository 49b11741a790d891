//! Every ABI under every instance strategy it can run with keeps what a
//! request path must: the grants (an environment variable), the deadline
//! (a guest in `loop {}` gets a 504 and the worker serves on), a trap (a
//! 500, and its instance is not reused), the output labels (a guest's line
//! carries the id of the request it served), and the strategy itself
//! (state in a fresh instance never survives a request; in a reused one it
//! does, until the instance's drawn lifetime ends).

use std::time::{Duration, Instant};

use crate::harness::*;

/// One ABI × strategy: the handler, the flags, and its routes.
struct Case {
    name: &'static str,
    handler: fn() -> &'static std::path::Path,
    flags: &'static [&'static str],
    /// A route whose answer counts the requests its instance served.
    counter: &'static str,
    /// A route that traps, and the status it gets.
    trap: (&'static str, u16),
    /// A route that prints a line to stdout, and the line.
    print: (&'static str, &'static str),
    reused: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "0.2 fresh (the default)",
        handler: || &guests().testkit,
        flags: &[],
        counter: "/counter",
        trap: ("/trap", 500),
        print: ("/print", "testkit says hello on stdout"),
        reused: false,
    },
    Case {
        name: "0.2 reused one at a time",
        handler: || &guests().testkit,
        flags: &["--reuse-instances", "50"],
        counter: "/counter",
        trap: ("/trap", 500),
        print: ("/print", "testkit says hello on stdout"),
        reused: true,
    },
    Case {
        name: "0.3 fresh (--reuse-instances 0)",
        handler: || &guests().p3kit,
        flags: &["--reuse-instances", "0"],
        counter: "/count",
        trap: ("/trap", 500),
        print: ("/", "p3kit: hello"),
        reused: false,
    },
    Case {
        name: "0.3 reused one at a time (the default)",
        handler: || &guests().p3kit,
        flags: &[],
        counter: "/count",
        trap: ("/trap", 500),
        print: ("/", "p3kit: hello"),
        reused: true,
    },
    Case {
        name: "0.3 reused concurrently",
        handler: || &guests().p3kit,
        flags: &["--reuse-instances", "50", "--max-instance-concurrency", "4"],
        counter: "/count",
        trap: ("/trap", 500),
        print: ("/", "p3kit: hello"),
        reused: true,
    },
    Case {
        name: "CGI fresh",
        handler: || &guests().cgi,
        flags: &[],
        counter: "",
        trap: ("/exit", 502),
        print: ("/exit", "cgi-testkit: giving up"),
        reused: false,
    },
];

/// The number at the start of a counter's answer ("3\n", "request 3 in
/// this instance\n").
fn served(body: &str) -> u32 {
    let digits: String = body
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count in {body:?}"))
}

#[test]
fn every_abi_and_strategy_keeps_grants_deadlines_traps_and_labels() {
    for case in CASES {
        let mut args = vec![
            "--workers",
            "1",
            "--request-timeout",
            "2s",
            "--env",
            "WCLUSTER_GRANTED=yes",
        ];
        args.extend_from_slice(case.flags);
        let server = Server::start((case.handler)(), &args);
        let agent = keepalive_client();
        let name = case.name;

        // The grant reaches the guest.
        let (status, body) = get(&agent, &server.url("/env?name=WCLUSTER_GRANTED")).unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains("yes"), "{name}: {body}");

        // The strategy: state survives a request only in a reused instance.
        if !case.counter.is_empty() {
            let counts: Vec<u32> = (0..3)
                .map(|_| served(&get(&agent, &server.url(case.counter)).unwrap().1))
                .collect();
            if case.reused {
                assert!(counts.windows(2).any(|w| w[1] > w[0]), "{name}: {counts:?}");
            } else {
                assert_eq!(counts, [1, 1, 1], "{name}");
            }
        }

        // A trap fails its request, and its instance is not given back.
        let (trap, expected) = case.trap;
        assert_eq!(
            get(&agent, &server.url(trap)).unwrap().0,
            expected,
            "{name}"
        );
        if case.reused && !case.counter.is_empty() {
            // The instance that counted is gone: the next one starts at 1.
            let after = served(&get(&agent, &server.url(case.counter)).unwrap().1);
            assert_eq!(after, 1, "{name}: the trapped instance was reused");
        }

        // The deadline stops a guest in `loop {}`, and the worker serves on.
        let start = Instant::now();
        let (status, _) = get(&fresh_client(), &server.url("/loop")).unwrap();
        assert_eq!(status, 504, "{name}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{name}: {:?}",
            start.elapsed()
        );
        let (status, body) = get(&agent, &server.url("/env?name=WCLUSTER_GRANTED")).unwrap();
        assert_eq!(status, 200, "{name} after the deadline: {body}");

        // A guest's output carries the id of the request it served.
        let (print, line) = case.print;
        if !print.is_empty() {
            get(&agent, &server.url(print)).unwrap();
            server.wait_for_events(Duration::from_secs(5), |events| {
                events
                    .iter()
                    .filter(|e| e["target"] == "access" && e["fields"]["path"] == print)
                    .count()
                    >= 1
            });
            let served_by: Vec<String> = server
                .access_log()
                .iter()
                .filter(|e| e["fields"]["path"] == print)
                .map(|e| e["fields"]["request"].as_str().unwrap().to_string())
                .collect();
            let labelled: Vec<String> = server
                .events(Some("guest"))
                .iter()
                .filter(|e| e["fields"]["message"] == line)
                .map(|e| e["fields"]["request"].as_str().unwrap().to_string())
                .collect();
            let last = served_by.last().unwrap();
            assert!(
                labelled.contains(last),
                "{name}: the line of request {last} is labelled {labelled:?}"
            );
        }
    }
}

/// A reused instance serves a number of requests drawn in the range
/// `--reuse-instances MIN-MAX` gives, a new number for each instance.
#[test]
fn reused_instances_live_for_a_number_of_requests_drawn_in_the_range() {
    for (handler, counter) in [(&guests().testkit, "/counter"), (&guests().p3kit, "/count")] {
        let server = Server::start(handler, &["--workers", "1", "--reuse-instances", "2-5"]);
        let agent = keepalive_client();
        let counts: Vec<u32> = (0..60)
            .map(|_| served(&get(&agent, &server.url(counter)).unwrap().1))
            .collect();
        // Each instance's run: 1, 2, ... up to its lifetime. An instance
        // goes back to the pool when its guest call ends, which may be just
        // after the client has its response: the next request can then get
        // another instance, and two runs interleave. So each count must
        // extend some run (or start one), no run may pass the range, and
        // only the runs still open at the end may be shorter than it.
        let mut runs: Vec<u32> = Vec::new();
        for &c in &counts {
            if c == 1 {
                runs.push(1);
                continue;
            }
            let run = runs.iter_mut().rev().find(|r| **r == c - 1);
            let Some(run) = run else {
                panic!("{counter}: {c} extends no instance's run: {counts:?}")
            };
            *run = c;
        }
        assert!(
            runs.iter().all(|n| *n <= 5),
            "{counter}: runs {runs:?} past 5: {counts:?}"
        );
        let short = runs.iter().filter(|n| **n < 2).count();
        assert!(
            short <= 2,
            "{counter}: runs {runs:?} shorter than 2 (fresh instances?): {counts:?}"
        );
        let lifetimes: Vec<u32> = runs.iter().copied().filter(|n| *n >= 2).collect();
        let distinct: std::collections::BTreeSet<_> = lifetimes.iter().collect();
        assert!(
            distinct.len() >= 2,
            "{counter}: every instance lived {lifetimes:?}: not drawn at random"
        );
    }
}

/// The default for 0.3 is reuse, and the smoke check proves a version can
/// serve twice in one instance: a 0.3 handler that cannot is refused,
/// saying how to run it fresh.
#[test]
fn a_0_3_handler_is_reused_by_default_and_refused_if_it_cannot_serve_twice() {
    let server = Server::start(&guests().p3kit, &["--workers", "1"]);
    let agent = keepalive_client();
    let second = get(&agent, &server.url("/count")).unwrap().1;
    let third = get(&agent, &server.url("/count")).unwrap().1;
    assert!(
        served(&third) > served(&second) || served(&third) > 1,
        "{second} {third}"
    );
    drop(server);

    let p3kit = guests().p3kit.to_str().unwrap().to_string();
    let cache = cache_dir();
    let (ok, stderr) = run_to_exit(&[
        "serve",
        &p3kit,
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--smoke-path",
        "/trap-second",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("second request to one instance") && stderr.contains("--reuse-instances 0"),
        "{stderr}"
    );
    // Fresh, the same handler serves.
    let server = Server::start(
        &guests().p3kit,
        &[
            "--workers",
            "1",
            "--smoke-path",
            "/trap-second",
            "--reuse-instances",
            "0",
        ],
    );
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}
