//! Redeploys: a new handler file rolls through the workers under load with
//! no failed request, and a bad one never goes live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

/// A handler file in a fresh directory, starting as a copy of `from`.
fn handler_file(test: &str, from: &Path) -> PathBuf {
    let path = scratch(test).join("handler.wasm");
    std::fs::copy(from, &path).unwrap();
    path
}

fn assert_all_workers_on(server: &Server, version: &str) {
    let status = server.status();
    let workers = status["workers"].as_array().unwrap();
    assert!(!workers.is_empty());
    for w in workers {
        assert_eq!(w["version"], version, "{status:#}");
    }
    assert_eq!(status["version"], version);
}

#[test]
fn twenty_redeploys_under_load_fail_no_request() {
    let g = guests();
    let file = handler_file("redeploy-load", &g.v1);
    let server = Server::start(&file, &["--workers", "2"]);
    let traffic = Traffic::start(&server, 32, 4, one_version);
    for i in 0..20 {
        let next = if i % 2 == 0 { &g.v2 } else { &g.v1 };
        if i % 4 < 2 {
            std::fs::copy(next, &file).unwrap(); // in place: truncate, then write
        } else {
            rename_over(&file, next);
        }
        let version = server.wait_for_roll(i + 1);
        assert_all_workers_on(&server, &version);
    }
    let bodies = traffic.bodies.clone();
    let ok = traffic.finish_clean();
    let bodies = bodies.lock().unwrap();
    assert!(
        bodies.keys().any(|b| b.starts_with("v1")) && bodies.keys().any(|b| b.starts_with("v2"))
    );
    eprintln!("redeploys under load: {ok} requests, bodies {bodies:?}");
    assert!(ok > 200, "only {ok} requests were made");
}

#[test]
fn request_in_flight_finishes_on_the_old_version() {
    let g = guests();
    let file = handler_file("in-flight", &g.v1);
    let mut server = Server::start(&file, &["--workers", "1"]);
    let url = server.url("/slow?ms=2000");
    let slow = std::thread::spawn(move || get(&fresh_client(), &url));
    server.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("slow request started on v1")
    });
    rename_over(&file, &g.v2);
    server.wait_for_roll(1);
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap(),
        (200, "v2\n".into())
    );
    assert_eq!(slow.join().unwrap(), Ok((200, "v1\n".into())));
}

#[test]
fn bad_versions_never_go_live() {
    let g = guests();
    let file = handler_file("bad-deploys", &g.v1);
    let server = Server::start(&file, &["--workers", "2"]);
    let v1 = server.status()["version"].as_str().unwrap().to_string();
    let traffic = Traffic::start(&server, 4, 2, |b| b.starts_with("v1"));
    let v2 = std::fs::read(&g.v2).unwrap();
    let wrong_world = b"(component)".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"\x00\x01 not wasm at all".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "truncated",
            v2[..v2.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "wrong world",
            wrong_world,
            "exports nothing; expected `wasi:http/incoming-handler@0.2.x`",
        ),
        (
            "traps on smoke check",
            std::fs::read(&g.trap).unwrap(),
            "smoke check",
        ),
    ];
    for (name, content, why) in cases {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, &content).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let status = server
            .wait_for_status(|s| deploy_error(&s["last_deploy"]).is_some_and(|e| e.contains(why)));
        assert_eq!(status["deploying"], false, "{name}");
        assert_all_workers_on(&server, &v1);
    }
    let ok = traffic.finish_clean();
    assert!(ok > 0);
    assert!(
        server.rolls().is_empty(),
        "a bad version went live: {:?}",
        server.rolls()
    );
}

#[test]
fn two_step_write_ends_on_the_whole_file() {
    use std::io::Write;
    let g = guests();
    let file = handler_file("two-step", &g.v1);
    let server = Server::start(&file, &["--workers", "2"]);
    let v2 = std::fs::read(&g.v2).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    f.write_all(&v2[..v2.len() / 3]).unwrap();
    f.flush().unwrap();
    // The half-written file is seen and refused before the rest arrives.
    server.wait_for_status(|s| deploy_error(&s["last_deploy"]).is_some());
    f.write_all(&v2[v2.len() / 3..]).unwrap();
    drop(f);
    let version = server.wait_for_roll(1);
    assert_all_workers_on(&server, &version);
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap(),
        (200, "v2\n".into())
    );
    assert_eq!(server.rolls().len(), 1);
}

#[test]
fn rollback_under_load() {
    let g = guests();
    let file = handler_file("rollback", &g.v1);
    let server = Server::start(&file, &["--workers", "2", "--no-watch"]);
    let v1 = server.status()["version"].as_str().unwrap().to_string();
    let traffic = Traffic::start(&server, 8, 2, one_version);
    rename_over(&file, &g.v2);
    let (ok, reply) = server.control("reload");
    assert!(ok, "{reply:#}");
    let v2 = reply["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_all_workers_on(&server, &v2);
    let (ok, reply) = server.control("rollback");
    assert!(ok, "{reply:#}");
    assert_eq!(reply["version"], v1.as_str());
    assert_all_workers_on(&server, &v1);
    assert_eq!(server.status()["previous"], v2.as_str());
    let served = traffic.finish_clean();
    assert!(served > 0);
}

#[test]
fn sighup_reloads() {
    let g = guests();
    let file = handler_file("sighup", &g.v1);
    let server = Server::start(&file, &["--workers", "2", "--no-watch"]);
    rename_over(&file, &g.v2);
    server.signal(Signal::SIGHUP);
    let version = server.wait_for_roll(1);
    assert_all_workers_on(&server, &version);
    assert_eq!(
        get(&fresh_client(), &server.url("/")).unwrap(),
        (200, "v2\n".into())
    );
    // The same file again is not a new version.
    let (ok, reply) = server.control("reload");
    assert!(ok && reply["outcome"] == "unchanged", "{reply:#}");
}

/// What the kubelet does to a ConfigMap or Secret volume: the file is a
/// symlink through `..data`, itself a symlink to a timestamped directory,
/// replaced by renaming `..data_tmp` over it, after which the old directory
/// is deleted. Every update must redeploy, not only the first.
#[test]
fn configmap_volume_updates_redeploy_every_time() {
    use std::os::unix::fs::symlink;
    let g = guests();
    let dir = scratch("configmap");
    let publish = |n: usize, from: &Path| {
        let stamp = format!("..2026_11_26_12_00_0{n}.000000{n}");
        std::fs::create_dir(dir.join(&stamp)).unwrap();
        std::fs::copy(from, dir.join(&stamp).join("handler.wasm")).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        stamp
    };
    let mut old = publish(1, &g.v1);
    symlink("..data/handler.wasm", dir.join("handler.wasm")).unwrap();
    let server = Server::start(&dir.join("handler.wasm"), &["--workers", "2"]);
    let traffic = Traffic::start(&server, 4, 2, one_version);
    for (i, (n, from)) in [(2, &g.v2), (3, &g.v1), (4, &g.v2)].into_iter().enumerate() {
        let stamp = publish(n, from);
        std::fs::remove_dir_all(dir.join(&old)).unwrap();
        old = stamp;
        let version = server.wait_for_roll(i + 1);
        assert_all_workers_on(&server, &version);
    }
    assert!(traffic.finish_clean() > 0);
    assert_eq!(server.rolls().len(), 3);
}
