//! Chaos: redeploys while workers are killed at random moments (the canary
//! in the middle of its smoke check among them), with scaling and control
//! commands in between, under mixed load. Afterwards the cluster must have
//! converged, and the only failed requests are ones in flight on killed
//! workers.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// A small xorshift: random enough for timings, seeded and printed so a
/// failing run can be repeated with WCLUSTER_CHAOS_SEED.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("WCLUSTER_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("chaos seed: {seed} (WCLUSTER_CHAOS_SEED to repeat)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn live_pids(status: &Value) -> Vec<u32> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready" || w["state"] == "starting")
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Converged: no roll, every wanted worker ready on the current version.
fn converged(s: &Value) -> bool {
    let workers = s["workers"].as_array().unwrap();
    s["deploying"] == false
        && s["pending_target"].is_null()
        && workers.len() as u64 == s["target_workers"].as_u64().unwrap()
        && workers
            .iter()
            .all(|w| w["state"] == "ready" && w["version"] == s["version"])
}

#[test]
fn redeploys_kills_and_scaling_under_load_converge() {
    let g = guests();
    let dir = scratch("chaos");
    let file = dir.join("handler.wasm");
    std::fs::copy(&g.v1, &file).unwrap();
    // A slow smoke check widens the window for killing the canary in it.
    let server = Server::start(&file, &["--workers", "3", "--smoke-path", "/slow?ms=1000"]);
    const KEEPALIVE: usize = 12;
    const FRESH: usize = 4;
    let traffic = Traffic::start(&server, KEEPALIVE, FRESH, one_version);
    let mut rng = Rng::new();
    let mut kills = 0;
    let start = Instant::now();
    let mut canaries_killed = 0;
    for i in 0..20 {
        let next = if i % 2 == 0 { &g.v2 } else { &g.v1 };
        if i % 7 == 6 {
            // The canary, killed in the middle of its smoke check: it is
            // the first ready worker, and its smoke request logs a line.
            // First the file's content goes live (a kill may have stopped
            // its roll), so that the other version surely rolls.
            server.wait_for_status(converged);
            let (ok, reply) = server.control("reload");
            assert!(ok, "{reply:#}");
            let s = server.wait_for_status(converged);
            let next = if std::fs::read(&file).unwrap() == std::fs::read(&g.v1).unwrap() {
                &g.v2
            } else {
                &g.v1
            };
            let canary = s["workers"][0]["pid"].as_u64().unwrap() as i32;
            // Only the new lines are searched: the log is long by now, and
            // the kill must land within the smoke check's second.
            let from = server.line_count();
            rename_over(&file, next);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !server
                .lines_from(from)
                .iter()
                .any(|l| l.contains(r#""request":"smoke""#))
            {
                assert!(Instant::now() < deadline, "no smoke check seen");
                std::thread::sleep(Duration::from_millis(5));
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(canary),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            kills += 1;
            let s = server.wait_for_status(|s| s["deploying"] == false);
            let lost = s["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["outcome"] == "rolled_back" && d["error"]["cause"] == "worker_lost");
            assert!(lost, "the roll did not stop for its lost canary: {s:#}");
            canaries_killed += 1;
            continue;
        }
        rename_over(&file, next);
        // Somewhere in the debounce, the compile, the canary's smoke check
        // or the rest of the roll.
        std::thread::sleep(Duration::from_millis(150 + rng.below(500)));
        if rng.below(3) != 0 {
            let pids = live_pids(&server.status());
            if !pids.is_empty() {
                let pid = pids[rng.below(pids.len() as u64) as usize];
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .ok();
                kills += 1;
            }
        }
        match i % 5 {
            1 => assert!(server.control("scale 4").0),
            3 => assert!(server.control("scale 2").0),
            4 => {
                server.control("rollback"); // refused while busy: fine
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
    }
    server.wait_for_status(converged);
    // The file may hold a version whose roll a kill stopped: deploy what
    // it holds, then one more deploy must reach every worker.
    let (ok, reply) = server.control("reload");
    assert!(ok, "{reply:#}");
    let status = server.wait_for_status(converged);
    let current = status["version"].as_str().unwrap().to_string();
    let before = server.rolls().len();
    let next = if std::fs::read(&file).unwrap() == std::fs::read(&g.v1).unwrap() {
        &g.v2
    } else {
        &g.v1
    };
    rename_over(&file, next);
    server.wait_for_roll(before + 1);
    let status = server.wait_for_status(converged);
    assert_ne!(status["version"].as_str().unwrap(), current);
    let (ok, errors) = traffic.finish();
    eprintln!(
        "chaos: {:?}, {ok} requests, {kills} workers killed ({canaries_killed} canaries mid-smoke-check), {} failed: {:?}",
        start.elapsed(),
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // Only transport errors (a connection cut by a kill), never an HTTP
    // error status or a wrong body; at most one per client per kill.
    for e in &errors {
        assert!(
            !e.contains("status code") && !e.starts_with(|c: char| c.is_ascii_digit()),
            "an HTTP error response: {e}"
        );
    }
    assert!(
        errors.len() <= kills * (KEEPALIVE + FRESH),
        "{} failures for {kills} kills",
        errors.len()
    );
    assert!(ok > 500, "only {ok} requests");
}
