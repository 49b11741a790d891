//! wasi:config values from flags and a TOML file reach the guest; a changed
//! file goes live with the next deploy; a bad file stops start-up with its
//! name and line; an --env variable the host lacks is skipped with a warning.

use crate::harness::*;

#[test]
fn values_reach_the_guest_and_a_deploy_picks_up_the_file() {
    let g = guests();
    let dir = scratch("config-values");
    let file = dir.join("app.toml");
    std::fs::write(
        &file,
        "greeting = \"one\"\n[db]\nhost = \"db.internal\"\nport = 5432\n",
    )
    .unwrap();
    let handler = dir.join("handler.wasm");
    std::fs::copy(&g.reach, &handler).unwrap();
    let server = Server::start(
        &handler,
        &[
            "--workers",
            "2",
            "--config-file",
            file.to_str().unwrap(),
            "--config",
            "mode=test",
            "--env",
            "WCLUSTER_SURELY_UNSET_VAR",
            // The next version (examples/visits) counts in the store.
            "--keyvalue",
            "sqlite",
        ],
    );
    let q = |path: &str| get(&fresh_client(), &server.url(path)).unwrap();
    assert_eq!(q("/config?key=greeting"), (200, "one\n".into()));
    assert_eq!(q("/config?key=db.port"), (200, "5432\n".into()));
    assert_eq!(q("/config?key=nope"), (404, "missing nope\n".into()));
    assert_eq!(
        q("/config-all"),
        (
            200,
            "db.host=db.internal\ndb.port=5432\ngreeting=one\nmode=test\n".into()
        )
    );
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("WCLUSTER_SURELY_UNSET_VAR") && l.contains("no such variable"))
    );

    // A new file goes live with the next deploy (here: a new handler).
    std::fs::write(&file, "greeting = \"two\"\n").unwrap();
    assert_eq!(q("/config?key=greeting"), (200, "one\n".into()));
    rename_over(&handler, &g.visits);
    server.wait_for_roll(1);
    let (status, body) = q("/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("two, visitor #"), "{body}");
}

#[test]
fn a_bad_config_file_or_key_stops_start_up() {
    let g = guests();
    let dir = scratch("config-bad");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "ok = 1\nbroken = = 2\n").unwrap();
    let handler = g.reach.to_str().unwrap();
    let (ok, stderr) = run_to_exit(&["serve", handler, "--config-file", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("line 2"),
        "{stderr}"
    );
    let (ok, stderr) = run_to_exit(&["serve", handler, "--config", "no value"]);
    assert!(!ok && stderr.contains("--config `no value`"), "{stderr}");
    let (ok, stderr) = run_to_exit(&["serve", handler, "--allow-outbound", "ftp://x.com"]);
    assert!(!ok && stderr.contains("scheme `ftp`"), "{stderr}");
    let (ok, stderr) = run_to_exit(&["serve", handler, "--keyvalue", "memcached://x"]);
    assert!(
        !ok && stderr.contains("--keyvalue `memcached://x`"),
        "{stderr}"
    );
}

#[test]
fn a_config_file_that_is_no_regular_file_or_too_large_refuses_the_deploy() {
    let g = guests();
    let dir = scratch("config-hostile");
    let file = dir.join("app.toml");
    std::fs::write(&file, "greeting = \"one\"\n").unwrap();
    let handler = dir.join("handler.wasm");
    std::fs::copy(&g.reach, &handler).unwrap();
    let server = Server::start(
        &handler,
        &[
            "--workers",
            "1",
            "--no-watch",
            "--config-file",
            file.to_str().unwrap(),
            "--max-config-size",
            "1KiB",
        ],
    );
    let greeting = || get(&fresh_client(), &server.url("/config?key=greeting")).unwrap();
    // Each attempt deploys another handler build, so the deploy is not
    // "unchanged"; the config file is what refuses it.
    let attempts = [
        (&g.hello, "not a regular file"),
        (&g.testkit, "over the limit of 1024 (--max-config-size)"),
    ];
    for (i, (next, why)) in attempts.into_iter().enumerate() {
        std::fs::remove_file(&file).unwrap();
        if i == 0 {
            // A FIFO nobody writes to: opening it for reading would block.
            nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        } else {
            std::fs::write(&file, format!("k = \"{}\"\n", "v".repeat(2000))).unwrap();
        }
        rename_over(&handler, next);
        let start = std::time::Instant::now();
        let (ok, reply) = server.control("reload");
        assert!(!ok, "deployed with a bad config file: {reply:#}");
        let error = deploy_error(&reply).unwrap_or_default();
        assert!(error.contains(why), "{reply:#}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the refusal took {:?}",
            start.elapsed()
        );
        // The version before goes on serving, with its values.
        assert_eq!(greeting(), (200, "one\n".into()));
    }
}
