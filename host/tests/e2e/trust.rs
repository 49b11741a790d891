//! Trust boundaries of files and sockets: what the handler path, the
//! artifact cache and the control socket may be, and what happens when they
//! are something else; and running out of file descriptors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::*;

/// `wcluster CMD --json`, killed if it takes longer than `limit`;
/// None when it did not finish in time.
fn control_within(server: &Server, cmd: &str, limit: Duration) -> Option<(bool, Value)> {
    let control = server.control.clone();
    let cmd = cmd.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let child = wcluster()
        .arg(&cmd)
        .arg("--json")
        .arg("--control")
        .arg(&control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        tx.send((out.status.success(), json)).ok();
    });
    match rx.recv_timeout(limit) {
        Ok(r) => Some(r),
        Err(_) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).ok();
            None
        }
    }
}

/// Waits (status answering within 1 s every time) until the last deploy
/// failed with `why`.
fn wait_for_refusal(server: &Server, why: &str) -> Value {
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let (_, s) = control_within(server, "status", Duration::from_secs(1))
            .expect("status did not answer within 1 s");
        assert!(t.elapsed() < Duration::from_secs(1));
        if deploy_error(&s["last_deploy"]).is_some_and(|e| e.contains(why)) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no refusal: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `wcluster serve hello` with this cache and `extra`, expected to refuse
/// to start; (success, stderr).
fn serve_hello_to_exit(cache: &Path, extra: &[&str]) -> (bool, String) {
    let hello = guests().hello.to_str().unwrap().to_string();
    let mut args = vec!["serve", &hello, "--addr", "127.0.0.1:0", "--cache-dir"];
    args.push(cache.to_str().unwrap());
    args.extend(extra);
    run_to_exit(&args)
}

#[test]
fn a_fifo_or_dev_zero_as_handler_is_refused_and_stalls_nothing() {
    let g = guests();
    let file = scratch("fifo").join("handler.wasm");
    std::fs::copy(&g.v1, &file).unwrap();
    let server = Server::start(&file, &["--workers", "2"]);
    let traffic = Traffic::start(&server, 8, 2, |b| b.starts_with("v1"));
    std::fs::remove_file(&file).unwrap();
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    wait_for_refusal(&server, "FIFO");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    wait_for_refusal(&server, "character device");
    // Nothing was stuck meanwhile: the workers are the same, all ready.
    let s = server.status();
    assert!(all_ready(&s), "{s:#}");
    assert_eq!(s["generation"], 1);
    let ok = traffic.finish_clean();
    assert!(ok > 0);
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    let dir = scratch("open-cache").join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, stderr) = serve_hello_to_exit(&dir, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("writable by other users") && stderr.contains("chmod 700"),
        "{stderr}"
    );
}

/// The artifact of `hello` in a cache directory of its own (filled by one
/// start of the server).
fn cached_artifact(test: &str) -> (PathBuf, PathBuf) {
    let cache = scratch(test).join("cache");
    let mut server = Server::start_with_cache(&guests().hello, &["--workers", "1"], &cache);
    server.signal(Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(20));
    let artifact = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact in the cache");
    (cache, artifact)
}

#[test]
fn a_planted_artifact_is_refused_and_a_damaged_one_is_rebuilt() {
    let (cache, artifact) = cached_artifact("planted");
    // Another user's file under the handler's name: refused, with its path.
    nix::unistd::chown(&artifact, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let (ok, stderr) = serve_hello_to_exit(&cache, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("not a private file") && stderr.contains(artifact.to_str().unwrap()),
        "{stderr}"
    );
    // Ours, but its code bytes overwritten: not loaded; compiled again.
    nix::unistd::chown(&artifact, Some(nix::unistd::geteuid()), None).unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b = 0xcc;
    }
    std::fs::write(&artifact, &bytes).unwrap();
    let server = Server::start_with_cache(&guests().hello, &["--workers", "1"], &cache);
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("does not match the digest")),
        "the damaged artifact was not noticed"
    );
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
    assert_ne!(
        std::fs::read(&artifact).unwrap(),
        bytes,
        "it was not rebuilt"
    );
}

#[test]
fn an_artifact_damaged_while_serving_is_rebuilt_for_the_next_worker() {
    let (cache, artifact) = cached_artifact("damaged-live");
    let mut server = Server::start_with_cache(&guests().hello, &["--workers", "2"], &cache);
    // The cached file is replaced by damaged bytes (a new file: the running
    // workers keep the code they mapped).
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b = 0xcc;
    }
    let damaged = artifact.with_extension("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::rename(&damaged, &artifact).unwrap();
    // A worker dies; its replacement finds the damage, the primary compiles
    // the handler again, and the slot fills without a crash loop.
    let (_, victim) = server.worker_pids()[1];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    server.wait_for_line(Duration::from_secs(30), |l| {
        l.contains("compiling the handler again")
    });
    let s = server.wait_for_status(all_ready);
    let restarts = s["workers"][1]["restarts"].as_u64().unwrap();
    assert!(restarts <= 2, "{restarts} restarts: {s:#}");
    assert_ne!(
        std::fs::read(&artifact).unwrap(),
        bytes,
        "it was not rebuilt"
    );
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn the_compiled_bytes_are_the_hashed_bytes() {
    let g = guests();
    let dir = scratch("exact-bytes");
    let cache = dir.join("cache");
    let file = dir.join("handler.wasm");
    std::fs::copy(&g.v1, &file).unwrap();
    let server = Server::start_with_cache(&file, &["--workers", "1", "--no-watch"], &cache);
    // A reload, and a rename over the file while it is read and compiled.
    for i in 0..10 {
        let next = if i % 2 == 0 { &g.v2 } else { &g.v1 };
        let control = server.control.clone();
        let reload = std::thread::spawn(move || {
            wcluster()
                .args(["reload", "--json", "--control"])
                .arg(&control)
                .output()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(i * 3));
        rename_over(&file, next);
        reload.join().unwrap();
    }
    drop(server);
    // Whatever the cache holds now is named after its content: a new server
    // on each genuine file serves that file's code.
    for (from, body) in [(&g.v1, "v1\n"), (&g.v2, "v2\n")] {
        std::fs::copy(from, &file).unwrap();
        let server = Server::start_with_cache(&file, &["--workers", "1", "--no-watch"], &cache);
        assert_eq!(
            get(&fresh_client(), &server.url("/")).unwrap(),
            (200, body.to_string())
        );
    }
}

#[test]
fn a_control_path_that_is_not_a_socket_is_left_alone() {
    let dir = scratch("control-file");
    let path = dir.join("precious.txt");
    std::fs::write(&path, "keep me").unwrap();
    let (ok, stderr) = serve_hello_to_exit(&cache_dir(), &["--control", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn a_reply_from_another_users_socket_is_not_trusted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a listener as another user");
        return;
    }
    let dir = scratch("spoof");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("fake.sock");
    // A listener run as nobody that claims every command succeeded.
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(8)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b'{"reply":"deploy","kind":"deploy","version":"fake","outcome":"rolled","generation":9,"workers":1,"ms":1}\n')
    except OSError:
        pass
    c.close()
"#;
    let mut fake = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&path)
        .spawn()
        .expect("setpriv and python3");
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fake server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = wcluster()
        .args(["reload", "--control"])
        .arg(&path)
        .output()
        .unwrap();
    fake.kill().ok();
    fake.wait().ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a fake reply was believed");
    assert!(stderr.contains("not trusting it"), "{stderr}");
}

#[test]
fn the_control_socket_is_private_and_refuses_other_users() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let mode = std::fs::metadata(&server.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped the peer check: needs root to run a client as another user");
        return;
    }
    // Were the mode lost (a chmod, a directory others can reach between
    // bind and chmod), the server still answers only its own user and root.
    std::fs::set_permissions(&server.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_wcluster"))
        .args(["scale", "3", "--control"])
        .arg(&server.control)
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another user scaled the server");
    assert!(
        stderr.contains("uid 65534 may not control this server"),
        "{stderr}"
    );
    assert_eq!(server.status()["workers"].as_array().map(Vec::len), Some(1));
}

/// The primary's open file descriptors, and a way to cap them.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sets the soft limit of open files of `pid` (the hard one stays).
fn set_nofile(pid: u32, soft: usize) {
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
}

/// The soft limit of open files of `pid`.
fn nofile(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_control_socket_outlives_emfile_and_idle_clients() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let pid = server.pid();
    let limit = nofile(pid);
    // No descriptor left: accepting a control connection fails (EMFILE).
    set_nofile(pid, open_fds(pid));
    let waiting = {
        let control = server.control.clone();
        std::thread::spawn(move || {
            wcluster()
                .args(["status", "--json", "--control"])
                .arg(&control)
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    set_nofile(pid, limit);
    let out = waiting.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Clients that connect and say nothing are closed, and do not lock
    // others out for long.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.control).unwrap())
        .collect();
    let t = Instant::now();
    let answered = control_within(&server, "status", Duration::from_secs(10));
    assert!(
        answered.is_some_and(|(ok, _)| ok),
        "status blocked by idle clients"
    );
    eprintln!("status with 40 idle control clients: {:?}", t.elapsed());
    for mut c in idle {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            c.read(&mut buf).unwrap_or(0),
            0,
            "an idle client was never closed"
        );
    }
}

#[test]
fn a_respawn_that_cannot_get_descriptors_is_retried() {
    let server = Server::start(&guests().hello, &["--workers", "2"]);
    let pid = server.pid();
    let (_, victim) = server.worker_pids()[0];
    let limit = nofile(pid);
    set_nofile(pid, open_fds(pid).saturating_sub(4));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(pid), "the primary died when a respawn failed");
    set_nofile(pid, limit);
    let s = server.wait_for_status(all_ready);
    assert!(s["workers"][0]["restarts"].as_u64().unwrap() >= 1, "{s:#}");
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}
