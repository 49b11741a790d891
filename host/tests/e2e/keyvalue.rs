//! wasi:keyvalue shared by every worker: concurrent increments from 4
//! workers add up exactly, with SQLite (kept across a restart) and with a
//! real redis-server (shared by two wcluster instances); with Redis stopped,
//! requests get an error within the deadline and the workers recover when
//! it is back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

const CLIENTS: usize = 32;

/// `total` concurrent `/incr?key=KEY` requests, spread over `servers`;
/// every answer must be a number. The first bad answer is reported after all
/// clients stop, so it ends the test's output rather than hiding in the
/// servers' logs.
fn increment_concurrently(servers: &[&Server], key: &str, total: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.url(&format!("/incr?key={key}")))
        .collect();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (next, url) = (next.clone(), urls[t % urls.len()].clone());
            std::thread::spawn(move || -> Result<(), String> {
                let agent = keepalive_client();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    match get(&agent, &url) {
                        Ok((200, body)) if body.trim().parse::<u64>().is_ok() => {}
                        other => return Err(format!("{url}: {other:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(failures.is_empty(), "increments failed: {failures:#?}");
}

fn value(server: &Server, key: &str) -> (u16, String) {
    get(&fresh_client(), &server.url(&format!("/get?key={key}"))).unwrap()
}

fn start_reach(extra: &[&str]) -> Server {
    let mut args = vec!["--workers", "4"];
    args.extend_from_slice(extra);
    Server::start(&guests().reach, &args)
}

#[test]
fn sqlite_increments_add_up_across_workers_and_survive_a_restart() {
    let state = scratch("kv-sqlite");
    let state_arg = state.to_str().unwrap();
    let mut server = start_reach(&["--state-dir", state_arg]);
    increment_concurrently(&[&server], "hits", 8000);
    assert_eq!(value(&server, "hits"), (200, "8000".into()));

    // The rest of the interface, as the WIT says.
    let agent = fresh_client();
    let post = |path: &str, body: &str| {
        agent
            .post(&server.url(path))
            .send_string(body)
            .map(|r| r.into_string().unwrap())
            .unwrap()
    };
    assert_eq!(post("/set?key=greeting", "hi there"), "ok\n");
    assert_eq!(post("/set-many", "a=1\nb=2\n"), "ok\n");
    let q = |path: &str| get(&agent, &server.url(path)).unwrap();
    assert_eq!(q("/get?key=greeting"), (200, "hi there".into()));
    assert_eq!(q("/exists?key=a"), (200, "true\n".into()));
    assert_eq!(
        q("/get-many?keys=a,zz,b"),
        (200, "a=1\nzz missing\nb=2\n".into())
    );
    assert_eq!(q("/keys"), (200, "a\nb\ngreeting\nhits\n".into()));
    assert_eq!(q("/delete-many?keys=a,b"), (200, "ok\n".into()));
    assert_eq!(q("/delete?key=greeting"), (200, "ok\n".into()));
    assert_eq!(q("/get?key=a"), (404, "missing\n".into()));
    // Buckets are separate; "" (wasmtime serve's) is "default".
    assert_eq!(q("/incr?key=hits&bucket=other"), (200, "1\n".into()));
    assert_eq!(q("/get?key=hits&bucket="), (200, "8000".into()));
    // Limits name their flag; a counter must hold a number.
    let long = "k".repeat(2000);
    let (status, body) = q(&format!("/get?key={long}"));
    assert!(
        status == 500 && body.contains("--keyvalue-max-key"),
        "{body}"
    );
    post("/set?key=word", "abc");
    let (status, body) = q("/incr?key=word");
    assert!(
        status == 500 && body.contains("not a decimal number"),
        "{body}"
    );

    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let server = start_reach(&["--state-dir", state_arg]);
    assert_eq!(value(&server, "hits"), (200, "8000".into()));
    assert!(state.join("keyvalue.sqlite3").is_file());
}

#[test]
fn a_state_file_that_is_not_sqlite_is_refused_at_start() {
    let state = scratch("kv-not-sqlite");
    std::fs::write(
        state.join("keyvalue.sqlite3"),
        b"these are not the pages of a database\n",
    )
    .unwrap();
    let out = wcluster()
        .arg("serve")
        .arg(&guests().reach)
        .args(["--addr", "127.0.0.1:0", "--workers", "1", "--state-dir"])
        .arg(&state)
        .arg("--cache-dir")
        .arg(state.join("cache"))
        .arg("--control")
        .arg(state.join("control.sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with a broken state file");
    assert!(
        stderr.contains("keyvalue.sqlite3") && stderr.contains("not a database"),
        "{stderr}"
    );
    // Nothing was overwritten.
    assert_eq!(
        std::fs::read(state.join("keyvalue.sqlite3")).unwrap(),
        b"these are not the pages of a database\n"
    );
}

/// A redis-server on a free loopback port, without persistence; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16, dir: &Path) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (scripts/setup.sh installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn redis_is_shared_by_two_instances_and_outages_fail_fast() {
    let dir = scratch("kv-redis");
    let redis = RedisServer::start(free_port(), &dir);
    let url = redis.url();
    let flags = [
        "--workers",
        "2",
        "--keyvalue",
        url.as_str(),
        "--keyvalue-timeout",
        "1s",
        "--request-timeout",
        "5s",
    ];
    let a = Server::start(&guests().reach, &flags);
    let b = Server::start(&guests().reach, &flags);
    increment_concurrently(&[&a, &b], "hits", 8000);
    assert_eq!(value(&a, "hits"), (200, "8000".into()));
    assert_eq!(value(&b, "hits"), (200, "8000".into()));

    // Redis down: an error response within the deadline, and a log line.
    let port = redis.port;
    drop(redis);
    for _ in 0..3 {
        let start = Instant::now();
        let (status, body) = get(&fresh_client(), &a.url("/incr?key=hits")).unwrap();
        assert_eq!(status, 500, "{body}");
        assert!(body.starts_with("error") && body.contains(&url), "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
    // Other routes are served meanwhile.
    assert_eq!(
        get(&fresh_client(), &a.url("/config?key=x")).unwrap().0,
        404
    );
    assert!(
        a.lines()
            .iter()
            .any(|l| l.contains("keyvalue increment failed"))
    );

    // Back (empty: no persistence): the same workers recover.
    let redis = RedisServer::start(port, &dir);
    let start = Instant::now();
    loop {
        let (status, body) = get(&fresh_client(), &a.url("/incr?key=again")).unwrap();
        if status == 200 {
            assert_eq!(body, "1\n");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never recovered: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(redis);
}
