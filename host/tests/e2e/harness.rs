//! Starts the real `wcluster` binary on port 0 with handlers built from
//! source, reads its readiness line and JSON logs, and kills it on drop
//! (printing its logs when the test failed).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Guests {
    pub hello: PathBuf,
    pub testkit: PathBuf,
    pub echo: PathBuf,
    /// tests/handlers/streaming: the guest SDK's streamed bodies.
    pub streaming: PathBuf,
    /// tests/handlers/versioned built as "v1", "v2", and "trap" (traps on
    /// every request, so it fails the deploy smoke check).
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub trap: PathBuf,
    /// tests/handlers/cgi: a WASI command module run CGI style.
    pub cgi: PathBuf,
    /// tests/handlers/reach: outbound HTTP, wasi:config and wasi:keyvalue,
    /// one route per operation.
    pub reach: PathBuf,
    /// examples/visits: the example that uses all three.
    pub visits: PathBuf,
    /// tests/handlers/p3kit: the WASI 0.3 (wasi:http/service) test handler.
    pub p3kit: PathBuf,
    /// examples/p3-hello: the WASI 0.3 example.
    pub p3_hello: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds the test handlers from source, once per test run.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "--target", "wasm32-wasip2", "--release"])
            .args([
                "-p",
                "hello",
                "-p",
                "testkit",
                "-p",
                "echo",
                "-p",
                "streaming",
                "-p",
                "reach",
                "-p",
                "visits",
                "-p",
                "p3kit",
                "-p",
                "p3-hello",
            ])
            .status()
            .expect("run cargo to build the test handlers");
        assert!(status.success(), "building the test handlers failed");
        let dir = target_dir().join("wasm32-wasip2/release");
        let copies = target_dir().join("e2e-guests");
        std::fs::create_dir_all(&copies).unwrap();
        let versioned = |tag: &str| {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace())
                .env("VERSIONED_TAG", tag)
                .args([
                    "build",
                    "--target",
                    "wasm32-wasip2",
                    "--release",
                    "-p",
                    "versioned",
                ])
                .status()
                .expect("run cargo to build the versioned handler");
            assert!(status.success(), "building versioned ({tag}) failed");
            let copy = copies.join(format!("versioned-{tag}.wasm"));
            std::fs::copy(dir.join("versioned.wasm"), &copy).unwrap();
            copy
        };
        Guests {
            hello: dir.join("hello.wasm"),
            testkit: dir.join("testkit.wasm"),
            echo: dir.join("echo.wasm"),
            streaming: dir.join("streaming.wasm"),
            reach: dir.join("reach.wasm"),
            visits: dir.join("visits.wasm"),
            p3kit: dir.join("p3kit.wasm"),
            p3_hello: dir.join("p3_hello.wasm"),
            cgi: {
                let status =
                    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                        .current_dir(workspace())
                        .args([
                            "build",
                            "--target",
                            "wasm32-wasip1",
                            "--release",
                            "-p",
                            "cgi-testkit",
                        ])
                        .status()
                        .expect("run cargo to build the CGI handler");
                assert!(status.success(), "building cgi-testkit failed");
                target_dir().join("wasm32-wasip1/release/cgi-testkit.wasm")
            },
            v1: versioned("v1"),
            v2: versioned("v2"),
            trap: versioned("trap"),
        }
    })
}

/// Shared by all tests, so each handler is compiled once per run.
pub fn cache_dir() -> PathBuf {
    target_dir().join("e2e-cache")
}

/// A scratch directory unique to one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir()
        .join("e2e-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn wcluster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wcluster"))
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub control: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

/// A control socket path unique to one server (short: sun_path is 108 bytes).
fn control_path() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("wcluster-e2e-{}-{n}.sock", std::process::id()))
}

impl Server {
    pub fn start(handler: &Path, extra: &[&str]) -> Server {
        Server::start_with_cache(handler, extra, &cache_dir())
    }

    /// `start` with a cache directory of the test's own.
    pub fn start_with_cache(handler: &Path, extra: &[&str], cache: &Path) -> Server {
        let mut cmd = wcluster();
        cmd.arg("serve")
            .arg(handler)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra);
        let mut server = Server::spawn(cmd, cache);
        server.wait_ready();
        server
    }

    /// Starts `cmd` (a `wcluster serve ...`, or a program that runs one)
    /// with JSON logs, the cache and a control socket of its own, without
    /// waiting for it to be ready.
    pub fn spawn(mut cmd: Command, cache: &Path) -> Server {
        let control = control_path();
        cmd.args(["--log-format", "json", "--cache-dir"])
            .arg(cache)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wcluster");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            control,
            lines,
        }
    }

    /// Waits for the readiness line and learns the address from it.
    pub fn wait_ready(&mut self) {
        let server = self;
        let line = server.wait_for_line(Duration::from_secs(120), |l| {
            l.starts_with("wcluster: listening on http")
        });
        let addr = line
            .trim_start_matches("wcluster: listening on ")
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('/');
        server.addr = addr.parse().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many output lines so far, and the lines from the `from`th on:
    /// cheap on a long log, unlike `lines`.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn lines_from(&self, from: usize) -> Vec<String> {
        self.lines.lock().unwrap()[from..].to_vec()
    }

    /// Waits for a line matching `pred`; panics (with the logs) on timeout
    /// or if the server exits first.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("wcluster exited ({status}):\n{}", self.lines().join("\n"));
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for a log line"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON log events, optionally only those of one target.
    pub fn events(&self, target: Option<&str>) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| target.is_none_or(|t| v["target"] == t))
            .collect()
    }

    pub fn access_log(&self) -> Vec<Value> {
        self.events(Some("access"))
    }

    /// Waits until `pred` holds for the log events.
    pub fn wait_for_events(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        while !pred(&self.events(None)) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for log events"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the newest process in each worker slot, from the logs.
    pub fn worker_pids(&self) -> Vec<(u64, u32)> {
        let mut pids = std::collections::BTreeMap::new();
        for e in self.events(None) {
            if e["fields"]["message"] == "worker ready" {
                let w = e["fields"]["worker"].as_u64().unwrap();
                let pid = e["fields"]["pid"].as_u64().unwrap() as u32;
                pids.insert(w, pid);
            }
        }
        pids.into_iter().collect()
    }

    /// Runs `wcluster CMD --json` (status, reload, rollback, "scale N")
    /// against this server; (success, the JSON it printed).
    pub fn control(&self, cmd: &str) -> (bool, Value) {
        let out = wcluster()
            .args(cmd.split_whitespace())
            .arg("--json")
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "wcluster {cmd} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    }

    pub fn status(&self) -> Value {
        self.control("status").1
    }

    /// The versions named by `wcluster: rolled to VERSION ...` lines so far.
    pub fn rolls(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("wcluster: rolled to "))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect()
    }

    /// Waits for the `n`th roll and returns its version.
    pub fn wait_for_roll(&self, n: usize) -> String {
        let start = Instant::now();
        loop {
            if let Some(v) = self.rolls().get(n - 1) {
                return v.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no roll #{n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `status` until `pred` holds.
    pub fn wait_for_status(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "status never matched: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the primary.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "wcluster did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- wcluster output ----\n{}", self.lines().join("\n"));
        }
    }
}

/// A body from exactly one version of tests/handlers/versioned: `v1` or
/// `v2`, with the body length on POST.
pub fn one_version(body: &str) -> bool {
    let Some(rest) = body.strip_suffix('\n') else {
        return false;
    };
    let mut parts = rest.split(' ');
    matches!(parts.next(), Some("v1" | "v2"))
        && parts.next().is_none_or(|n| n.parse::<usize>().is_ok())
        && parts.next().is_none()
}

/// Replaces the file by writing a temporary one and renaming it over
/// (what `mv` and most editors do).
pub fn rename_over(target: &Path, from: &Path) {
    let tmp = target.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// Clients hammering a server on background threads, recording every
/// response that is not a 200 with a body `accept` takes.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub ok: Arc<std::sync::atomic::AtomicUsize>,
    pub errors: Arc<Mutex<Vec<String>>>,
    pub bodies: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
}

impl Traffic {
    /// `keepalive` clients on persistent connections and `fresh` ones that
    /// connect for every request; each alternates a GET and a POST.
    pub fn start(
        server: &Server,
        keepalive: usize,
        fresh: usize,
        accept: fn(&str) -> bool,
    ) -> Traffic {
        Traffic::start_at(server.url("/"), keepalive, fresh, accept)
    }

    /// `start`, against any URL (a load balancer in front of servers).
    pub fn start_at(
        url: String,
        keepalive: usize,
        fresh: usize,
        accept: fn(&str) -> bool,
    ) -> Traffic {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let threads = (0..keepalive + fresh)
            .map(|t| {
                let (stop, ok, errors, bodies) =
                    (stop.clone(), ok.clone(), errors.clone(), bodies.clone());
                let url = url.clone();
                std::thread::spawn(move || {
                    let client = if t < keepalive {
                        keepalive_client()
                    } else {
                        fresh_client()
                    };
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let result = if i.is_multiple_of(2) {
                            client.post(&url).send_bytes(&vec![b'x'; 100 + t])
                        } else {
                            client.get(&url).call()
                        };
                        let outcome = match result {
                            Ok(r) => {
                                let status = r.status();
                                match r.into_string() {
                                    Ok(body) if status == 200 && accept(&body) => Ok(body),
                                    Ok(body) => Err(format!("{status} {body:?}")),
                                    Err(e) => Err(format!("body: {e}")),
                                }
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        match outcome {
                            Ok(body) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *bodies.lock().unwrap().entry(body).or_default() += 1;
                            }
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            threads,
            ok,
            errors,
            bodies,
        }
    }

    /// Stops the clients, asserts that none failed; responses accepted.
    pub fn finish_clean(self) -> usize {
        let (ok, errors) = self.finish();
        assert!(
            errors.is_empty(),
            "{} failed requests, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        ok
    }

    /// Stops the clients; (responses accepted, errors).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), errors)
    }
}

/// The error of a deploy outcome (status's `last_deploy`, or a reply) that
/// failed, as text; None when it did not fail.
/// One worker with one connection slot and a 2 s --send-timeout: what the
/// slow-client tests need to see a slot held and freed.
pub const ONE_SLOT: [&str; 6] = [
    "--workers",
    "1",
    "--max-connections",
    "1",
    "--send-timeout",
    "2s",
];

/// `path` on the admin endpoint (--admin 127.0.0.1:0), whose address the
/// primary's log line names.
pub fn admin_url(server: &mut Server, path: &str) -> String {
    let line = server.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("admin endpoint: http://")
    });
    let addr = line
        .split("admin endpoint: http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    format!("http://{addr}{path}")
}

/// Whether every worker in a `status` is ready.
pub fn all_ready(status: &Value) -> bool {
    status["workers"]
        .as_array()
        .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
}

/// Sends `bytes` on a new connection and returns all that came back (the
/// request should say `Connection: close`), waiting at most 10 s.
pub fn raw_exchange(server: &Server, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

pub fn deploy_error(outcome: &Value) -> Option<String> {
    matches!(outcome["outcome"].as_str(), Some("refused" | "rolled_back"))
        .then(|| outcome["error"].to_string())
}

/// A test that fails with traffic running must not leave its clients
/// hammering a dead server through the tests after it.
impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// An HTTP client that opens a new connection for every request.
/// POSTs `data` to `path` with a full-duplex client (hyper's), which reads
/// the response while it still sends: a streaming echo answers while the body
/// is arriving, so a client that sends everything before reading deadlocks
/// once the body outgrows the sockets' buffers. Status, headers, body back.
pub fn post_full_duplex(
    addr: SocketAddr,
    path: &str,
    data: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/octet-stream")
            .body(Full::new(bytes::Bytes::from(data)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let back = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status.as_u16(), parts.headers, back)
    })
}

pub fn fresh_client() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout(Duration::from_secs(60))
        .build()
}

/// A keep-alive HTTP client.
pub fn keepalive_client() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .max_idle_connections_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
}

/// GET returning (status, body); transport errors are Err.
pub fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    match agent.get(url).call() {
        Ok(r) => Ok((r.status(), r.into_string().map_err(|e| e.to_string())?)),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `wcluster` to completion (it must exit within 60 s); (success, stderr).
pub fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = wcluster()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("wcluster {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the server closes `conn` (EOF or reset), at most `limit`
/// after `since`; how long after `since` that was, None if it was still
/// open. Whatever the server sends meanwhile is read and dropped.
pub fn closed_by_server(
    conn: &mut std::net::TcpStream,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    use std::io::{ErrorKind, Read};
    let mut buf = [0u8; 4096];
    loop {
        let left = (since + limit).checked_duration_since(Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}
