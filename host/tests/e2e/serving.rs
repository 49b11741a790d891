//! The request flow: hand-off, round-robin, keep-alive, bodies, grants, logs.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::*;

#[test]
fn new_connections_are_spread_round_robin() {
    let g = guests();
    let server = Server::start(&g.hello, &["--workers", "2"]);
    let client = fresh_client();
    for i in 0..200 {
        let (status, body) = get(&client, &server.url(&format!("/?name=r{i}"))).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, format!("Hello, r{i}!\n").as_str())
        );
    }
    server.wait_for_events(Duration::from_secs(10), |_| {
        server.access_log().len() >= 200
    });
    let mut per_worker: HashMap<u64, usize> = HashMap::new();
    for e in server.access_log() {
        *per_worker
            .entry(e["fields"]["worker"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    for (worker, n) in per_worker {
        assert!((99..=101).contains(&n), "worker {worker} served {n} of 200");
    }
}

#[test]
fn concurrent_keepalive_clients_get_their_own_answers() {
    let g = guests();
    let server = Server::start(&g.hello, &["--workers", "2"]);
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let url = server.url("");
            std::thread::spawn(move || {
                let client = keepalive_client();
                for i in 0..100 {
                    let name = format!("t{t}-{i}");
                    let got = get(&client, &format!("{url}/?name={name}"));
                    assert_eq!(got, Ok((200, format!("Hello, {name}!\n"))));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.wait_for_events(Duration::from_secs(10), |_| {
        server.access_log().len() >= 5000
    });
    assert_eq!(server.access_log().len(), 5000);
}

#[test]
fn ten_mib_body_round_trips_byte_exact() {
    let g = guests();
    let server = Server::start(&g.echo, &["--workers", "1"]);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..10 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (status, headers, back) = post_full_duplex(server.addr, "/", data.clone());
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed body differs");
}

#[test]
fn body_over_the_limit_is_413() {
    let g = guests();
    let server = Server::start(&g.echo, &["--workers", "1", "--max-body", "1KiB"]);
    let err = keepalive_client()
        .post(&server.url("/"))
        .send_bytes(&[7u8; 4096])
        .unwrap_err();
    match err {
        ureq::Error::Status(code, _) => assert_eq!(code, 413),
        other => panic!("expected 413, got {other}"),
    }
}

#[test]
fn guests_get_only_what_is_granted() {
    let g = guests();
    let dir = scratch("grants");
    std::fs::write(dir.join("x.txt"), "granted file\n").unwrap();
    let client = fresh_client();

    let bare = Server::start(&g.testkit, &["--workers", "1"]);
    assert_eq!(get(&client, &bare.url("/env?name=HOME")).unwrap().0, 404);
    assert_eq!(get(&client, &bare.url("/env?name=PATH")).unwrap().0, 404);
    assert_eq!(
        get(&client, &bare.url("/file?path=/data/x.txt")).unwrap().0,
        403
    );
    drop(bare);

    let spec = format!("{}::/data", dir.display());
    let granted = Server::start(
        &g.testkit,
        &[
            "--workers",
            "1",
            "--env",
            "GREETING=hi there",
            "--dir",
            &spec,
        ],
    );
    assert_eq!(
        get(&client, &granted.url("/env?name=GREETING")).unwrap(),
        (200, "hi there".to_string())
    );
    assert_eq!(get(&client, &granted.url("/env?name=HOME")).unwrap().0, 404);
    assert_eq!(
        get(&client, &granted.url("/file?path=/data/x.txt")).unwrap(),
        (200, "granted file\n".to_string())
    );
    assert_eq!(
        get(&client, &granted.url("/file?path=/etc/passwd"))
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        get(&client, &granted.url("/file?path=/data/../../etc/passwd"))
            .unwrap()
            .0,
        403
    );
}

#[test]
fn guest_output_reaches_the_log_with_its_request_id() {
    let g = guests();
    let server = Server::start(&g.testkit, &["--workers", "1"]);
    assert_eq!(get(&fresh_client(), &server.url("/print")).unwrap().0, 200);
    server.wait_for_events(Duration::from_secs(10), |events| {
        events.iter().any(|e| {
            e["target"] == "guest"
                && e["fields"]["stream"] == "stdout"
                && e["fields"]["message"] == "testkit says hello on stdout"
                && e["fields"]["request"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("0-"))
        })
    });
    server.wait_for_events(Duration::from_secs(10), |_| !server.access_log().is_empty());
    let access = server.access_log();
    let line = access.last().unwrap();
    assert_eq!(line["fields"]["method"], "GET");
    assert_eq!(line["fields"]["path"], "/print");
    assert_eq!(line["fields"]["status"], 200);
    assert!(line["fields"]["duration_ms"].is_string() || line["fields"]["duration_ms"].is_number());
}

#[test]
fn sdk_streams_request_and_response_bodies() {
    let server = Server::start(&guests().streaming, &["--workers", "1"]);
    let client = keepalive_client();
    let (status, body) = get(&client, &server.url("/?n=4")).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "line 1\nline 2\nline 3\nline 4\n")
    );
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let sum = data.iter().fold(0u64, |s, &b| s + b as u64);
    let resp = client.post(&server.url("/")).send_bytes(&data).unwrap();
    assert_eq!(
        resp.into_string().unwrap(),
        format!("bytes={} sum={sum}\n", data.len())
    );
}

#[test]
fn instances_are_fresh_unless_reuse_is_asked_for() {
    let client = keepalive_client();
    let fresh = Server::start(&guests().testkit, &["--workers", "1"]);
    for _ in 0..5 {
        assert_eq!(
            get(&client, &fresh.url("/counter")).unwrap(),
            (200, "1\n".into())
        );
    }
    drop(fresh);
    let reuse = Server::start(
        &guests().testkit,
        &["--workers", "1", "--reuse-instances", "3"],
    );
    let counts: Vec<String> = (0..6)
        .map(|_| get(&client, &reuse.url("/counter")).unwrap().1)
        .collect();
    // One instance serves three requests, then a new one starts over.
    assert_eq!(counts, ["1\n", "2\n", "3\n", "1\n", "2\n", "3\n"]);
    // An instance that trapped is not used again: this one counted to 1,
    // then trapped; the next request starts over in a new one.
    assert_eq!(get(&client, &reuse.url("/counter")).unwrap().1, "1\n");
    assert_eq!(get(&client, &reuse.url("/trap")).unwrap().0, 500);
    assert_eq!(get(&client, &reuse.url("/counter")).unwrap().1, "1\n");
}
