//! A fleet of three real nodes, each in a network namespace of its own,
//! behind a real HAProxy that health-checks `/readyz`, under continuous
//! mixed load through HAProxy: a rolling redeploy and a rolling restart fail
//! no request; a node killed with SIGKILL fails at most the requests it had
//! in flight. The namespaces come from scripts/fleet.sh, which removes them
//! again however the test ends.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

const NODES: usize = 3;
const KEEPALIVE: usize = 4;
const FRESH: usize = 2;

fn fleet_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet.sh")
}

fn fleet_sh(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(fleet_script())
        .args(args)
        .output()
        .expect("run scripts/fleet.sh")
}

/// The namespaces, the bridge, HAProxy and the nodes; all of it is removed
/// on drop, also when the test fails.
struct Fleet {
    name: String,
    prefix: String,
    dir: PathBuf,
    haproxy: Option<Child>,
    listen: String,
    nodes: Vec<Option<Server>>,
}

impl Fleet {
    /// None when this machine does not let the test make network namespaces.
    fn up() -> Option<Fleet> {
        let pid = std::process::id();
        let name = format!("wcf{}", pid % 100_000);
        let probe = Command::new("ip")
            .args(["netns", "add", &format!("{name}-probe")])
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("{name}-probe")])
                    .status();
            }
            Ok(out) => {
                eprintln!(
                    "fleet test skipped: `ip netns add` is not permitted here ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("fleet test skipped: cannot run `ip` ({e})");
                return None;
            }
        }
        let prefix = format!("10.213.{}", 20 + pid % 200);
        let fleet = Fleet {
            name,
            prefix,
            dir: scratch("fleet"),
            haproxy: None,
            listen: String::new(),
            nodes: Vec::new(),
        };
        let out = fleet_sh(&["net-up", &fleet.name, &NODES.to_string(), &fleet.prefix]);
        assert!(
            out.status.success(),
            "fleet.sh net-up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(fleet)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    fn handler(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("handler.wasm")
    }

    /// Starts node `i` (1-based) in its namespace and waits until it listens.
    fn start_node(&mut self, i: usize) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{i}", self.name)])
            .arg(env!("CARGO_BIN_EXE_wcluster"))
            .arg("serve")
            .arg(self.handler(i))
            .args(["--addr", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"])
            .args(["--workers", "1", "--drain-delay", "1s"])
            .args(["--drain-timeout", "20s"]);
        let mut server = Server::spawn(cmd, &cache_dir());
        server.wait_ready();
        if self.nodes.len() < i {
            self.nodes.resize_with(i, || None);
        }
        self.nodes[i - 1] = Some(server);
    }

    fn node(&mut self, i: usize) -> &mut Server {
        self.nodes[i - 1].as_mut().unwrap()
    }

    fn start_haproxy(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.listen = format!("127.0.0.1:{port}");
        let stats = self.dir.join("haproxy.sock");
        let out = fleet_sh(&[
            "haproxy-config",
            &self.name,
            &NODES.to_string(),
            &self.prefix,
            &self.listen,
            stats.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        let config = self.dir.join("haproxy.cfg");
        std::fs::write(&config, &out.stdout).unwrap();
        let log = std::fs::File::create(self.dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run haproxy (scripts/setup.sh installs it)");
        self.haproxy = Some(child);
    }

    /// HAProxy's view of each node, from its stats socket: (name, status
    /// such as UP or DOWN, requests sent, retries, redispatches).
    fn servers(&self) -> Vec<(String, String, u64, u64, u64)> {
        let Ok(mut sock) = UnixStream::connect(self.dir.join("haproxy.sock")) else {
            return Vec::new();
        };
        sock.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        sock.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (sv, status, stot, wretr, wredis) = (
            col("svname"),
            col("status"),
            col("stot"),
            col("wretr"),
            col("wredis"),
        );
        let num = |s: &str| s.parse().unwrap_or(0);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > wredis && f[sv].starts_with(&self.name))
            .map(|f| {
                (
                    f[sv].to_string(),
                    f[status].to_string(),
                    num(f[stot]),
                    num(f[wretr]),
                    num(f[wredis]),
                )
            })
            .collect()
    }

    /// Waits until HAProxy reports node `i` with `status` (UP or DOWN).
    fn wait_for_haproxy(&self, i: usize, status: &str) {
        let name = format!("{}-{i}", self.name);
        let start = Instant::now();
        loop {
            let servers = self.servers();
            if servers.iter().any(|s| s.0 == name && s.1 == status) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "HAProxy never saw {name} {status}: {servers:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            let _ = h.kill();
            let _ = h.wait();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(self.dir.join("haproxy.log"));
                eprintln!("---- haproxy output ----\n{}", log.unwrap_or_default());
            }
        }
        self.nodes.clear();
        let out = fleet_sh(&["net-down", &self.name]);
        if !out.status.success() {
            eprintln!(
                "fleet.sh net-down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn failed_so_far(traffic: &Traffic) -> usize {
    traffic.errors.lock().unwrap().len()
}

#[test]
fn rolling_redeploy_restart_and_kill_behind_haproxy() {
    let g = guests();
    let Some(mut fleet) = Fleet::up() else {
        return;
    };
    for i in 1..=NODES {
        std::fs::create_dir_all(fleet.node_dir(i)).unwrap();
        std::fs::copy(&g.v1, fleet.handler(i)).unwrap();
        fleet.start_node(i);
    }
    fleet.start_haproxy();
    for i in 1..=NODES {
        fleet.wait_for_haproxy(i, "UP");
    }
    let traffic = Traffic::start_at(
        format!("http://{}/", fleet.listen),
        KEEPALIVE,
        FRESH,
        one_version,
    );
    std::thread::sleep(Duration::from_millis(500));

    // 1. A new handler reaches the nodes one at a time, as a ConfigMap
    // update reaches pods; each node rolls it with its own canary.
    for i in 1..=NODES {
        rename_over(&fleet.handler(i), &g.v2);
        let version = fleet.node(i).wait_for_roll(1);
        let status = fleet.node(i).status();
        assert_eq!(status["version"], version.as_str(), "{status:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let after_redeploy = (
        traffic.ok.load(std::sync::atomic::Ordering::Relaxed),
        failed_so_far(&traffic),
    );
    assert_eq!(
        after_redeploy.1,
        0,
        "rolling redeploy failed requests: {:?}",
        traffic.errors.lock().unwrap()
    );

    // 2. Each node in turn: SIGTERM (readiness flips, HAProxy takes it out,
    // it drains and exits), then started again.
    for i in 1..=NODES {
        fleet.node(i).signal(Signal::SIGTERM);
        fleet.wait_for_haproxy(i, "DOWN");
        let exit = fleet.node(i).wait_exit(Duration::from_secs(30));
        assert!(exit.success(), "node {i} exited with {exit:?}");
        fleet.start_node(i);
        fleet.wait_for_haproxy(i, "UP");
    }
    let after_restart = (
        traffic.ok.load(std::sync::atomic::Ordering::Relaxed),
        failed_so_far(&traffic),
    );
    assert_eq!(
        after_restart.1,
        0,
        "rolling restart failed requests: {:?}",
        traffic.errors.lock().unwrap()
    );

    // 3. SIGKILL: no drain; HAProxy finds out from failed connections and
    // health checks. Each client has at most one request in flight.
    std::thread::sleep(Duration::from_millis(500));
    fleet.node(2).signal(Signal::SIGKILL);
    fleet.node(2).wait_exit(Duration::from_secs(10));
    fleet.wait_for_haproxy(2, "DOWN");
    fleet.start_node(2);
    fleet.wait_for_haproxy(2, "UP");
    std::thread::sleep(Duration::from_millis(500));

    let servers = fleet.servers();
    let (ok, errors) = traffic.finish();
    eprintln!(
        "fleet: {} ok / 0 failed in the rolling redeploy; {} ok / 0 failed in the rolling restart; \
         {} ok / {} failed after SIGKILL; HAProxy (node, status, requests, retries, redispatches): {servers:?}",
        after_redeploy.0,
        after_restart.0 - after_redeploy.0,
        ok - after_restart.0,
        errors.len(),
    );
    assert!(
        errors.len() <= KEEPALIVE + FRESH,
        "a SIGKILL failed more than the requests in flight: {errors:?}"
    );
    for s in &servers {
        assert!(
            s.2 > 0,
            "HAProxy sent node {} no requests: {servers:?}",
            s.0
        );
    }
}
