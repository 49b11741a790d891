//! Applications described by a manifest (`wcluster serve app.toml`): one
//! handler of three (a WASI 0.2 component, a WASI 0.3 one, a CGI module)
//! rolls five times under load while the others keep their versions; a
//! manifest edit swaps each worker's routing table whole; bad manifests and
//! handlers that fail their smoke check never go live; key-value buckets
//! are granted per handler; `reload NAME`/`rollback NAME` act on one
//! handler; metrics, the access log and readiness name handlers, and
//! guests see where they were mounted; a ConfigMap-style `..data` swap
//! changes the manifest and a handler at once; route conflicts and unknown
//! components are refused at start naming the line; a file two components
//! share rolls both; an absolute-form request is routed by its target's
//! host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// What examples/p3-hello answers on every path.
const P3: &str = "Hello, world, from WASI 0.3!\n";

/// site (catch-all, tests/handlers/versioned), p3 (exact `/p3`,
/// examples/p3-hello) and cgi (`/cgi/...`, tests/handlers/cgi).
const THREE: &str = r#"spin_manifest_version = 2

[[trigger.http]]
route = "/..."
component = "site"

[[trigger.http]]
route = "/p3"
component = "p3"

[[trigger.http]]
route = "/cgi/..."
component = "cgi"

[component.site]
source = "site.wasm"

[component.p3]
source = "p3.wasm"

[component.cgi]
source = "cgi.wasm"
"#;

/// site on every path but `/p3`, which p3 answers.
const SITE_AND_P3: &str = r#"spin_manifest_version = 2

[[trigger.http]]
route = "/..."
component = "site"

[[trigger.http]]
route = "/p3"
component = "p3"

[component.site]
source = "site.wasm"

[component.p3]
source = "p3.wasm"
"#;

/// A scratch directory holding `files` (name, copied from) and `app.toml`
/// with `manifest`; the manifest's path.
fn app(test: &str, files: &[(&str, &Path)], manifest: &str) -> PathBuf {
    let dir = scratch(test);
    for (name, from) in files {
        std::fs::copy(from, dir.join(name)).unwrap();
    }
    let path = dir.join("app.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

/// The three handlers of [`THREE`], as copies in a scratch directory.
fn three_handlers(test: &str) -> PathBuf {
    let g = guests();
    app(
        test,
        &[
            ("site.wasm", &g.v1),
            ("p3.wasm", &g.p3_hello),
            ("cgi.wasm", &g.cgi),
        ],
        THREE,
    )
}

/// Replaces the manifest the way an editor or `mv` does: a new file
/// renamed over it.
fn edit_manifest(manifest: &Path, text: &str) {
    let next = manifest.with_file_name("next.toml");
    std::fs::write(&next, text).unwrap();
    rename_over(manifest, &next);
}

/// One handler's entry in a `status`.
fn handler<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["handlers"]
        .as_array()
        .unwrap_or_else(|| panic!("no handlers in {status:#}"))
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no handler `{name}` in {status:#}"))
}

fn handler_names(status: &Value) -> Vec<String> {
    status["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

fn version_of(status: &Value, name: &str) -> String {
    handler(status, name)["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn assert_all_workers_on(status: &Value, version: &str) {
    let workers = status["workers"].as_array().unwrap();
    assert!(!workers.is_empty(), "{status:#}");
    for w in workers {
        assert_eq!(w["version"], version, "{status:#}");
    }
    assert_eq!(status["version"], version, "{status:#}");
}

/// The `NAME=VALUE` lines of the CGI handler's `/env`.
fn cgi_env(body: &str) -> Vec<(&str, &str)> {
    body.lines().filter_map(|l| l.split_once('=')).collect()
}

fn cgi_var<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    cgi_env(body)
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The CGI handler's `/env`, mounted at `/cgi`.
fn is_cgi_env(body: &str) -> bool {
    cgi_var(body, "SCRIPT_NAME") == Some("/cgi") && cgi_var(body, "PATH_INFO") == Some("/env")
}

fn is_p3(body: &str) -> bool {
    body == P3
}

fn get_ok(server: &Server, path: &str) -> (u16, String) {
    get(&fresh_client(), &server.url(path)).unwrap()
}

#[test]
fn one_handler_rolls_five_times_under_mixed_load_and_the_others_keep_their_versions() {
    let g = guests();
    let manifest = three_handlers("manifest-roll-one");
    let site = manifest.with_file_name("site.wasm");
    let server = Server::start(&manifest, &["--workers", "2"]);
    let start = server.status();
    assert_eq!(handler_names(&start), ["site", "p3", "cgi"], "{start:#}");
    assert!(
        start["version"].as_str().unwrap().starts_with("app-"),
        "{start:#}"
    );
    let (site_v1, p3_v, cgi_v) = (
        version_of(&start, "site"),
        version_of(&start, "p3"),
        version_of(&start, "cgi"),
    );
    for name in ["site", "p3", "cgi"] {
        assert!(handler(&start, name)["last_deploy"].is_null(), "{start:#}");
        assert!(handler(&start, name)["previous"].is_null(), "{start:#}");
    }

    // Each URL has keep-alive clients and clients that connect every time.
    let traffic = [
        Traffic::start_at(server.url("/"), 3, 1, one_version),
        Traffic::start_at(server.url("/p3"), 2, 1, is_p3),
        Traffic::start_at(server.url("/cgi/env"), 2, 1, is_cgi_env),
    ];
    let mut site_now = site_v1.clone();
    let mut site_v2: Option<String> = None;
    for (i, (tag, from)) in [
        ("v2", &g.v2),
        ("v1", &g.v1),
        ("v2", &g.v2),
        ("v1", &g.v1),
        ("v2", &g.v2),
    ]
    .into_iter()
    .enumerate()
    {
        rename_over(&site, from);
        let version = server.wait_for_roll(i + 1);
        let s = server.status();
        assert_all_workers_on(&s, &version);
        let site_then = version_of(&s, "site");
        assert_ne!(site_then, site_now, "roll {} ({tag}): {s:#}", i + 1);
        assert_eq!(handler(&s, "site")["previous"], site_now.as_str(), "{s:#}");
        assert_eq!(
            handler(&s, "site")["last_deploy"]["outcome"],
            "rolled",
            "{s:#}"
        );
        match tag {
            "v1" => assert_eq!(site_then, site_v1, "v1 again is v1's version: {s:#}"),
            _ => assert_eq!(
                &site_then,
                site_v2.get_or_insert_with(|| site_then.clone()),
                "v2 again is v2's version: {s:#}"
            ),
        }
        for (name, v) in [("p3", &p3_v), ("cgi", &cgi_v)] {
            let h = handler(&s, name);
            assert_eq!(&h["version"], v.as_str(), "roll {}: {s:#}", i + 1);
            assert!(h["last_deploy"].is_null(), "roll {}: {s:#}", i + 1);
            assert!(h["previous"].is_null(), "roll {}: {s:#}", i + 1);
        }
        assert_eq!(
            handler(&s, "p3")["routes"],
            serde_json::json!(["/p3"]),
            "{s:#}"
        );
        site_now = site_then;
    }
    for (url, t) in ["/", "/p3", "/cgi/env"].into_iter().zip(traffic) {
        let bodies = t.bodies.clone();
        let ok = t.finish_clean();
        eprintln!(
            "{url}: {ok} requests, {} distinct bodies",
            bodies.lock().unwrap().len()
        );
        assert!(ok > 0, "no request to {url} succeeded");
    }
    assert_eq!(get_ok(&server, "/"), (200, "v2\n".into()));
    assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));
    assert_eq!(server.rolls().len(), 5, "{:?}", server.rolls());
}

/// Which routing table a response came from (see the test below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    T1,
    T2,
}

fn classify(path: &str, status: u16, body: &str) -> Option<Table> {
    match (path, status, body) {
        ("/p3", 200, P3) | ("/p3-new", 200, "v1\n") => Some(Table::T1),
        ("/p3", 200, "v1\n") | ("/p3-new", 200, P3) => Some(Table::T2),
        _ => None,
    }
}

/// What one client saw: the tables of each of its connections' responses,
/// in order, and every failure.
#[derive(Default)]
struct Seen {
    connections: Vec<Vec<Table>>,
    failures: Vec<String>,
}

/// A client alternating `GET /p3` and `GET /p3-new` on one HTTP/1.1
/// connection at a time (hyper's, so a connection is exactly one TCP
/// connection: a reconnect starts a new list), until `stop`.
fn table_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, t2: Arc<AtomicUsize>) -> Seen {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut seen = Seen::default();
        while !stop.load(Ordering::Relaxed) {
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    seen.failures.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (mut sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok(pair) => pair,
                    Err(e) => {
                        seen.failures.push(format!("handshake: {e}"));
                        continue;
                    }
                };
            let task = tokio::spawn(conn);
            let mut tables = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // The server may close a connection between requests
                // (`Connection: close`); the next one is a new connection.
                if sender.ready().await.is_err() {
                    break;
                }
                i += 1;
                let path = if i.is_multiple_of(2) {
                    "/p3-new"
                } else {
                    "/p3"
                };
                let req = hyper::Request::get(path)
                    .header("host", addr.to_string())
                    .body(Full::new(bytes::Bytes::new()))
                    .unwrap();
                let outcome = match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.into_body().collect().await {
                            Ok(b) => {
                                let body = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                                classify(path, status, &body)
                                    .ok_or_else(|| format!("{path}: {status} {body:?}"))
                            }
                            Err(e) => Err(format!("{path}: body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{path}: {e}")),
                };
                match outcome {
                    Ok(table) => {
                        if table == Table::T2 {
                            t2.fetch_add(1, Ordering::Relaxed);
                        }
                        tables.push(table);
                    }
                    Err(e) => {
                        seen.failures.push(e);
                        break;
                    }
                }
            }
            task.abort();
            seen.connections.push(tables);
        }
        seen
    })
}

#[test]
fn a_manifest_edit_adds_and_removes_routes_and_no_connection_sees_a_mixed_table() {
    let g = guests();
    let manifest = app(
        "manifest-tables",
        &[("site.wasm", &g.v1), ("p3.wasm", &g.p3_hello)],
        SITE_AND_P3,
    );
    let server = Server::start(&manifest, &["--workers", "2"]);
    assert_eq!(
        handler(&server.status(), "p3")["routes"],
        serde_json::json!(["/p3"])
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t2 = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (addr, stop, t2) = (server.addr, stop.clone(), t2.clone());
            std::thread::spawn(move || table_client(addr, stop, t2))
        })
        .collect();
    // Some traffic on the first table before the edit.
    std::thread::sleep(Duration::from_millis(300));
    edit_manifest(&manifest, &SITE_AND_P3.replace("\"/p3\"", "\"/p3-new\""));
    let version = server.wait_for_roll(1);
    // Enough traffic on the second table after the roll.
    let since = Instant::now();
    let before = t2.load(Ordering::Relaxed);
    while t2.load(Ordering::Relaxed) < before + 300 && since.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let connections: Vec<&Vec<Table>> = seen.iter().flat_map(|s| &s.connections).collect();
    for (n, tables) in connections.iter().enumerate() {
        if let Some(first_t2) = tables.iter().position(|t| *t == Table::T2) {
            let back = tables[first_t2..].iter().position(|t| *t == Table::T1);
            assert!(
                back.is_none(),
                "connection {n} saw the old table again {} responses after the new one: {tables:?}",
                back.unwrap_or(0)
            );
        }
    }
    let all: Vec<Table> = connections.iter().flat_map(|c| c.iter().copied()).collect();
    let (n1, n2) = (
        all.iter().filter(|t| **t == Table::T1).count(),
        all.iter().filter(|t| **t == Table::T2).count(),
    );
    eprintln!(
        "{} connections, {n1} responses from the first table, {n2} from the second",
        connections.len()
    );
    assert!(n1 > 0 && n2 > 0, "T1 {n1}, T2 {n2}");
    assert!(
        connections
            .iter()
            .any(|c| c.contains(&Table::T1) && c.contains(&Table::T2)),
        "no connection lived through the swap"
    );

    let s = server.status();
    assert_all_workers_on(&s, &version);
    assert_eq!(
        handler(&s, "p3")["routes"],
        serde_json::json!(["/p3-new"]),
        "{s:#}"
    );
    assert_eq!(
        handler(&s, "site")["routes"],
        serde_json::json!(["/..."]),
        "{s:#}"
    );
    assert_eq!(get_ok(&server, "/p3"), (200, "v1\n".into()));
    assert_eq!(get_ok(&server, "/p3-new"), (200, P3.into()));
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
        + 1
}

/// `deploy_error` of the status's `last_deploy`, once it holds `needle`.
fn wait_for_deploy_error(server: &Server, needle: &str) -> Value {
    server.wait_for_status(|s| deploy_error(&s["last_deploy"]).is_some_and(|e| e.contains(needle)))
}

#[test]
fn a_manifest_naming_a_handler_that_traps_on_its_smoke_check_is_refused_and_the_old_one_keeps_serving()
 {
    let g = guests();
    let manifest = app(
        "manifest-refused",
        &[
            ("site.wasm", &g.v1),
            ("p3.wasm", &g.p3_hello),
            ("bad.wasm", &g.trap),
        ],
        SITE_AND_P3,
    );
    let server = Server::start(&manifest, &["--workers", "2"]);
    let v0 = server.status()["version"].as_str().unwrap().to_string();
    let site = Traffic::start_at(server.url("/"), 2, 1, |b| b.starts_with("v1"));
    let p3 = Traffic::start_at(server.url("/p3"), 1, 1, is_p3);

    // A handler that traps on its smoke check.
    let with_bad = format!(
        "{SITE_AND_P3}\n[[trigger.http]]\nroute = \"/bad\"\ncomponent = \"bad\"\n\n\
         [component.bad]\nsource = \"bad.wasm\"\n"
    );
    edit_manifest(&manifest, &with_bad);
    let s = server.wait_for_status(|s| deploy_error(&s["last_deploy"]).is_some());
    let error = deploy_error(&s["last_deploy"]).unwrap();
    assert!(
        matches!(
            s["last_deploy"]["outcome"].as_str(),
            Some("rolled_back" | "refused")
        ),
        "{s:#}"
    );
    assert!(
        error.contains("`bad`"),
        "the error names no handler: {error}"
    );
    assert_eq!(s["deploying"], false, "{s:#}");
    assert_all_workers_on(&s, &v0);
    assert_eq!(handler_names(&s), ["site", "p3"], "{s:#}");
    assert_eq!(get_ok(&server, "/bad"), (200, "v1\n".into()));
    assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));

    // A TOML syntax error: an unterminated string.
    let broken = SITE_AND_P3.replace("route = \"/p3\"", "route = \"/p3");
    let line = line_of(&broken, "route = \"/p3");
    edit_manifest(&manifest, &broken);
    let s = wait_for_deploy_error(&server, &format!("app.toml:{line}:"));
    assert_eq!(s["last_deploy"]["outcome"], "refused", "{s:#}");
    assert_all_workers_on(&s, &v0);
    assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));

    // An unknown field.
    let unknown = SITE_AND_P3.replace(
        "source = \"p3.wasm\"",
        "source = \"p3.wasm\"\ncolour = \"blue\"",
    );
    let line = line_of(&unknown, "colour");
    edit_manifest(&manifest, &unknown);
    let s = wait_for_deploy_error(&server, &format!("app.toml:{line}:"));
    let error = deploy_error(&s["last_deploy"]).unwrap();
    assert!(error.contains("colour"), "{error}");
    assert_all_workers_on(&s, &v0);
    assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));

    // A good manifest again goes live.
    let fixed =
        format!("{SITE_AND_P3}\n[[trigger.http]]\nroute = \"/p3-too\"\ncomponent = \"p3\"\n");
    edit_manifest(&manifest, &fixed);
    server.wait_for_roll(1);
    assert_eq!(get_ok(&server, "/p3-too"), (200, P3.into()));
    assert!(site.finish_clean() > 0);
    assert!(p3.finish_clean() > 0);
    assert_eq!(server.rolls().len(), 1, "{:?}", server.rolls());
}

#[test]
fn a_handler_opens_only_the_key_value_buckets_it_names() {
    let g = guests();
    // Both from the one file: what differs is the grant.
    let manifest = app(
        "manifest-kv",
        &[("reach.wasm", &g.reach)],
        r#"spin_manifest_version = 2

[[trigger.http]]
route = "/incr"
component = "a"

[[trigger.http]]
route = "/incr"
component = "b"
host = "b.example"

[component.a]
source = "reach.wasm"
key_value_stores = ["default"]

[component.b]
source = "reach.wasm"
key_value_stores = ["other"]
"#,
    );
    let state = manifest.with_file_name("state");
    std::fs::create_dir(&state).unwrap();
    let server = Server::start(
        &manifest,
        &[
            "--workers",
            "2",
            "--keyvalue",
            "sqlite",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let agent = fresh_client();
    let as_a = |query: &str| get(&agent, &server.url(&format!("/incr?{query}"))).unwrap();
    let as_b = |query: &str| match agent
        .get(&server.url(&format!("/incr?{query}")))
        .set("Host", "b.example")
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let denied = |(status, body): (u16, String)| {
        assert_eq!(status, 500, "{body}");
        assert!(
            body.contains("access") && body.contains("denied"),
            "not wasi:keyvalue's access-denied: {body:?}"
        );
        assert!(body.trim().parse::<u64>().is_err(), "{body}");
    };

    assert_eq!(as_a("key=k"), (200, "1\n".into()));
    assert_eq!(as_a("key=k"), (200, "2\n".into()));
    assert_eq!(as_a("key=k&bucket=default"), (200, "3\n".into()));
    denied(as_a("key=k&bucket=other"));

    assert_eq!(as_b("key=k&bucket=other"), (200, "1\n".into()));
    assert_eq!(as_b("key=k&bucket=other"), (200, "2\n".into()));
    denied(as_b("key=k"));
    denied(as_b("key=k&bucket=default"));

    // Neither touched the other's data.
    assert_eq!(as_a("key=k"), (200, "4\n".into()));
    assert_eq!(as_b("key=k&bucket=other"), (200, "3\n".into()));
    let s = server.status();
    assert_eq!(
        handler(&s, "b")["routes"],
        serde_json::json!(["b.example/incr"]),
        "{s:#}"
    );
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("key_value_stores") && l.contains("other")),
        "the refusal is not logged"
    );
}

#[test]
fn status_reload_and_rollback_act_on_one_handler() {
    let g = guests();
    let manifest = three_handlers("manifest-control");
    let site = manifest.with_file_name("site.wasm");
    let server = Server::start(&manifest, &["--workers", "2", "--no-watch"]);
    let start = server.status();
    let (site_v1, p3_v, cgi_v) = (
        version_of(&start, "site"),
        version_of(&start, "p3"),
        version_of(&start, "cgi"),
    );
    let others_unchanged = |s: &Value| {
        assert_eq!(version_of(s, "p3"), p3_v, "{s:#}");
        assert_eq!(version_of(s, "cgi"), cgi_v, "{s:#}");
        assert!(handler(s, "p3")["last_deploy"].is_null(), "{s:#}");
        assert!(handler(s, "cgi")["last_deploy"].is_null(), "{s:#}");
    };

    rename_over(&site, &g.v2);
    let (ok, reply) = server.control("reload site");
    assert!(ok, "{reply:#}");
    assert_eq!(reply["outcome"], "rolled", "{reply:#}");
    let s = server.status();
    assert_all_workers_on(&s, reply["version"].as_str().unwrap());
    let site_v2 = version_of(&s, "site");
    assert_ne!(site_v2, site_v1);
    assert_eq!(handler(&s, "site")["previous"], site_v1.as_str(), "{s:#}");
    others_unchanged(&s);
    assert_eq!(get_ok(&server, "/"), (200, "v2\n".into()));

    let (ok, reply) = server.control("rollback site");
    assert!(ok, "{reply:#}");
    let s = server.status();
    assert_all_workers_on(&s, reply["version"].as_str().unwrap());
    assert_eq!(s["version"], start["version"], "the app is as it started");
    assert_eq!(version_of(&s, "site"), site_v1, "{s:#}");
    assert_eq!(handler(&s, "site")["previous"], site_v2.as_str(), "{s:#}");
    others_unchanged(&s);
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));

    // site.wasm on disk is v2 still: reloading another handler leaves it.
    let (ok, reply) = server.control("reload p3");
    assert!(ok, "{reply:#}");
    assert_eq!(reply["outcome"], "unchanged", "{reply:#}");
    assert_eq!(version_of(&server.status(), "site"), site_v1);
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));

    for cmd in ["reload nope", "rollback nope"] {
        let (ok, reply) = server.control(cmd);
        assert!(!ok, "{cmd}: {reply:#}");
        assert_eq!(
            reply["reason"]["why"], "unknown_handler",
            "{cmd}: {reply:#}"
        );
        assert_eq!(reply["reason"]["name"], "nope", "{cmd}: {reply:#}");
        assert_eq!(
            reply["reason"]["known"],
            serde_json::json!(["site", "p3", "cgi"]),
            "{cmd}: {reply:#}"
        );
    }
    // No previous version of p3: nothing to roll back to.
    let (ok, reply) = server.control("rollback p3");
    assert!(!ok, "{reply:#}");
    assert_eq!(reply["reason"]["why"], "no_previous_version", "{reply:#}");

    let out = wcluster()
        .arg("status")
        .arg("--control")
        .arg(&server.control)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text
        .lines()
        .position(|l| l.starts_with("HANDLER"))
        .unwrap_or_else(|| panic!("no HANDLER table:\n{text}"));
    let rows: Vec<Vec<&str>> = text.lines().collect::<Vec<_>>()[header + 1..header + 4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (row, (name, route)) in
        rows.iter()
            .zip([("site", "/..."), ("p3", "/p3"), ("cgi", "/cgi/...")])
    {
        assert_eq!(row.first(), Some(&name), "{text}");
        assert!(row.contains(&route), "{text}");
    }
    assert!(text.contains(&site_v1), "{text}");
}

#[test]
fn metrics_access_log_and_readiness_name_every_handler() {
    let g = guests();
    let manifest = app(
        "manifest-metrics",
        &[("p3.wasm", &g.p3_hello), ("cgi.wasm", &g.cgi)],
        r#"spin_manifest_version = 2

[[trigger.http]]
route = "/p3"
component = "p3"

[[trigger.http]]
route = "/cgi/..."
component = "cgi"

[component.p3]
source = "p3.wasm"

[component.cgi]
source = "cgi.wasm"
"#,
    );
    let mut server = Server::start(&manifest, &["--workers", "2", "--admin", "127.0.0.1:0"]);
    let (metrics, readyz) = (
        admin_url(&mut server, "/metrics"),
        admin_url(&mut server, "/readyz"),
    );

    let (status, body) = get_ok(&server, "/nothing");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no route matches"), "{body}");
    // The root is not routed either: no catch-all.
    assert_eq!(get_ok(&server, "/").0, 404);
    for _ in 0..3 {
        assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));
    }
    let (status, body) = get_ok(&server, "/cgi/env");
    assert_eq!(status, 200, "{body}");
    assert_eq!(cgi_var(&body, "SCRIPT_NAME"), Some("/cgi"), "{body}");
    assert_eq!(cgi_var(&body, "PATH_INFO"), Some("/env"), "{body}");
    // A client cannot say where the handler was mounted.
    let body = fresh_client()
        .get(&server.url("/cgi/env"))
        .set("X-Wcluster-Mount", "/evil")
        .set("X-Wcluster-Path-Info", "/evil-too")
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(
        cgi_var(&body, "HTTP_X_WCLUSTER_MOUNT"),
        Some("/cgi"),
        "{body}"
    );
    assert_eq!(
        cgi_var(&body, "HTTP_X_WCLUSTER_PATH_INFO"),
        Some("/env"),
        "{body}"
    );
    assert!(!body.contains("/evil"), "{body}");
    assert_eq!(cgi_var(&body, "SCRIPT_NAME"), Some("/cgi"), "{body}");

    let text = get(&fresh_client(), &metrics).unwrap().1;
    let handler_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wcluster_handler_requests_total{"))
        .collect();
    assert!(
        handler_lines.contains(&r#"wcluster_handler_requests_total{handler="p3",code="200"} 3"#),
        "{handler_lines:#?}"
    );
    assert!(
        handler_lines.contains(&r#"wcluster_handler_requests_total{handler="cgi",code="200"} 2"#),
        "{handler_lines:#?}"
    );
    assert!(
        handler_lines
            .iter()
            .all(|l| l.contains(r#"handler="p3""#) || l.contains(r#"handler="cgi""#)),
        "a handler label for an unrouted request: {handler_lines:#?}"
    );
    assert!(
        !handler_lines.iter().any(|l| l.contains("code=\"404\"")),
        "{handler_lines:#?}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"wcluster_http_requests_total{method="GET",code="404"} 2"#),
        "the 404s are not counted:\n{text}"
    );

    server.wait_for_events(Duration::from_secs(10), |_| server.access_log().len() >= 7);
    let log = server.access_log();
    let handler_of = |path: &str| -> Vec<(Value, Value)> {
        log.iter()
            .filter(|e| e["fields"]["path"] == path)
            .map(|e| {
                (
                    e["fields"]["handler"].clone(),
                    e["fields"]["status"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        handler_of("/nothing"),
        [(Value::from("-"), Value::from(404))],
        "{log:#?}"
    );
    assert_eq!(handler_of("/p3").len(), 3, "{log:#?}");
    assert!(
        handler_of("/p3")
            .iter()
            .all(|h| *h == (Value::from("p3"), Value::from(200))),
        "{log:#?}"
    );
    assert_eq!(
        handler_of("/cgi/env"),
        [
            (Value::from("cgi"), Value::from(200)),
            (Value::from("cgi"), Value::from(200))
        ],
        "{log:#?}"
    );
    assert_eq!(get(&fresh_client(), &readyz).unwrap().0, 200);
}

#[test]
fn a_configmap_swap_changes_the_manifest_and_a_handler_file_at_once() {
    use std::os::unix::fs::symlink;
    let g = guests();
    let dir = scratch("manifest-configmap");
    let publish = |stamp: &str, site: &Path, manifest: &str| {
        let at = dir.join(stamp);
        std::fs::create_dir(&at).unwrap();
        std::fs::write(at.join("app.toml"), manifest).unwrap();
        std::fs::copy(site, at.join("site.wasm")).unwrap();
        std::fs::copy(&g.p3_hello, at.join("p3.wasm")).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    publish("..2026_v1", &g.v1, SITE_AND_P3);
    for name in ["app.toml", "site.wasm", "p3.wasm"] {
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    let server = Server::start(&dir.join("app.toml"), &["--workers", "2"]);
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));
    let p3 = Traffic::start_at(server.url("/p3"), 2, 1, is_p3);

    // The new manifest and the new site arrive in one swap.
    let v2 = format!("{SITE_AND_P3}\n[[trigger.http]]\nroute = \"/p3-also\"\ncomponent = \"p3\"\n");
    publish("..2026_v2", &g.v2, &v2);
    std::fs::remove_dir_all(dir.join("..2026_v1")).unwrap();
    let version = server.wait_for_roll(1);
    let s = server.status();
    assert_all_workers_on(&s, &version);
    assert_eq!(get_ok(&server, "/"), (200, "v2\n".into()));
    assert_eq!(get_ok(&server, "/p3-also"), (200, P3.into()));
    assert_eq!(
        handler(&s, "p3")["routes"],
        serde_json::json!(["/p3", "/p3-also"]),
        "{s:#}"
    );

    // And the next swap too (only the site changes this time).
    publish("..2026_v3", &g.v1, &v2);
    std::fs::remove_dir_all(dir.join("..2026_v2")).unwrap();
    let version = server.wait_for_roll(2);
    assert_all_workers_on(&server.status(), &version);
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));
    assert_eq!(get_ok(&server, "/p3-also"), (200, P3.into()));
    assert!(p3.finish_clean() > 0);
}

#[test]
fn conflicting_routes_and_unknown_components_are_refused_at_start() {
    let g = guests();
    let cache = cache_dir();
    let serve = |manifest: &Path| {
        let control = manifest.with_file_name("control.sock");
        run_to_exit(&[
            "serve",
            manifest.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ])
    };

    let conflict = r#"spin_manifest_version = 2

[[trigger.http]]
route = "/api/..."
component = "one"

[[trigger.http]]
route = "/api/..."
component = "two"

[component.one]
source = "one.wasm"

[component.two]
source = "two.wasm"
"#;
    let manifest = app(
        "manifest-conflict",
        &[("one.wasm", &g.v1), ("two.wasm", &g.v2)],
        conflict,
    );
    let (ok, stderr) = serve(&manifest);
    assert!(!ok, "{stderr}");
    let second = conflict.match_indices("route =").nth(1).unwrap().0;
    let line = conflict[..second].lines().count() + 1;
    assert!(stderr.contains(&format!("app.toml:{line}:")), "{stderr}");
    assert!(
        stderr.contains("`one`") && stderr.contains("`two`"),
        "{stderr}"
    );
    assert!(stderr.contains("/api/..."), "{stderr}");

    let ghost = SITE_AND_P3.replace("component = \"p3\"", "component = \"ghost\"");
    let manifest = app(
        "manifest-ghost",
        &[("site.wasm", &g.v1), ("p3.wasm", &g.p3_hello)],
        &ghost,
    );
    let (ok, stderr) = serve(&manifest);
    assert!(!ok, "{stderr}");
    let line = line_of(&ghost, "ghost");
    assert!(stderr.contains(&format!("app.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("`ghost`"), "{stderr}");

    // A source that is not there is named with its line too.
    let missing = SITE_AND_P3.replace("p3.wasm", "missing.wasm");
    let manifest = app("manifest-missing", &[("site.wasm", &g.v1)], &missing);
    let (ok, stderr) = serve(&manifest);
    assert!(!ok, "{stderr}");
    let line = line_of(&missing, "missing.wasm");
    assert!(stderr.contains(&format!("app.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("missing.wasm"), "{stderr}");
}

#[test]
fn a_handler_file_shared_by_two_components_rolls_both_and_a_bad_one_is_refused() {
    let g = guests();
    let text = format!(
        "{SITE_AND_P3}\n[[trigger.http]]\nroute = \"/alt/...\"\ncomponent = \"alt\"\n\n\
         [component.alt]\nsource = \"site.wasm\"\n"
    );
    let manifest = app(
        "manifest-shared",
        &[("site.wasm", &g.v1), ("p3.wasm", &g.p3_hello)],
        &text,
    );
    let site = manifest.with_file_name("site.wasm");
    let server = Server::start(&manifest, &["--workers", "2"]);
    let start = server.status();
    let (v1, p3_v) = (version_of(&start, "site"), version_of(&start, "p3"));
    assert_eq!(version_of(&start, "alt"), v1, "{start:#}");

    rename_over(&site, &g.v2);
    let version = server.wait_for_roll(1);
    let s = server.status();
    assert_all_workers_on(&s, &version);
    let v2 = version_of(&s, "site");
    assert_ne!(v2, v1);
    assert_eq!(version_of(&s, "alt"), v2, "{s:#}");
    assert_eq!(version_of(&s, "p3"), p3_v, "{s:#}");
    assert_eq!(get_ok(&server, "/"), (200, "v2\n".into()));
    assert_eq!(get_ok(&server, "/alt/x"), (200, "v2\n".into()));

    // A version that traps on its smoke check: rolled back, recorded on
    // the handlers it was for, and on no other.
    rename_over(&site, &g.trap);
    let s = server.wait_for_status(|s| deploy_error(&s["last_deploy"]).is_some());
    assert_eq!(s["last_deploy"]["outcome"], "rolled_back", "{s:#}");
    assert_all_workers_on(&s, &version);
    for name in ["site", "alt"] {
        let h = handler(&s, name);
        assert_eq!(h["version"], v2.as_str(), "{s:#}");
        assert_eq!(h["previous"], v1.as_str(), "{s:#}");
        assert_eq!(h["last_deploy"]["outcome"], "rolled_back", "{s:#}");
    }
    assert!(handler(&s, "p3")["last_deploy"].is_null(), "{s:#}");
    let error = deploy_error(&s["last_deploy"]).unwrap();
    assert!(
        error.contains("`site`") || error.contains("`alt`"),
        "the error names no handler: {error}"
    );

    // Not a WebAssembly file at all: refused before any worker sees it.
    std::fs::write(&site, b"not wasm").unwrap();
    let s = wait_for_deploy_error(&server, "not a WebAssembly file");
    assert_eq!(s["last_deploy"]["outcome"], "refused", "{s:#}");
    assert_all_workers_on(&s, &version);
    assert_eq!(get_ok(&server, "/alt/y"), (200, "v2\n".into()));
    assert_eq!(get_ok(&server, "/p3"), (200, P3.into()));
    assert_eq!(server.rolls().len(), 1, "{:?}", server.rolls());
}

/// RFC 9112 section 3.2.2: an origin server that receives a request in
/// absolute form (`GET http://host/path`) must take the host from the
/// target, not from the Host header; wcluster itself accepts an empty Host
/// there because "the target must name the host".
#[test]
fn an_absolute_form_request_is_routed_by_the_host_its_target_names() {
    let g = guests();
    let manifest = app(
        "manifest-absolute",
        &[("a.wasm", &g.v1), ("b.wasm", &g.v2)],
        r#"spin_manifest_version = 2

[[trigger.http]]
route = "/..."
component = "a"

[[trigger.http]]
route = "/..."
component = "b"
host = "b.example"

[component.a]
source = "a.wasm"

[component.b]
source = "b.wasm"
"#,
    );
    let server = Server::start(&manifest, &["--workers", "1"]);
    let exchange = |head: &str| {
        let out = raw_exchange(
            &server,
            format!("{head}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = out.split(' ').nth(1).unwrap_or("").to_string();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    };
    // The Host header routes an origin-form request.
    assert_eq!(exchange("GET /x HTTP/1.1\r\nHost: b.example").1, "v2\n");
    assert_eq!(exchange("GET /x HTTP/1.1\r\nHost: a.example").1, "v1\n");
    // HTTP/1.0 without Host: the target's host.
    assert_eq!(exchange("GET http://b.example/x HTTP/1.0").1, "v2\n");
    // An empty Host is accepted because the target names the host: it
    // must be that host's handler that answers.
    let (status, body) = exchange("GET http://b.example/x HTTP/1.1\r\nHost: ");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "v2\n"),
        "`GET http://b.example/x` with an empty Host reached another host's handler"
    );
    // A Host that names another host: the target's host, or refused.
    let (status, body) = exchange("GET http://b.example/x HTTP/1.1\r\nHost: a.example");
    assert!(
        (status == "200" && body == "v2\n") || status == "400",
        "`GET http://b.example/x` with `Host: a.example` reached a.example's handler: \
         {status} {body:?}"
    );
}

/// The files a manifest names are watched whether or not it went live: a
/// handler file that did not exist yet, or a new file for a handler whose
/// first version was refused, deploys when it is written.
#[test]
fn files_named_by_a_manifest_that_did_not_go_live_are_watched() {
    let g = guests();
    let manifest = app(
        "manifest-watch-pending",
        &[("site.wasm", &g.v1), ("p3.wasm", &g.p3_hello)],
        SITE_AND_P3,
    );
    let dir = manifest.parent().unwrap().to_path_buf();
    let server = Server::start(&manifest, &["--workers", "2"]);
    // `c` names a file that is not there yet: refused, and watched.
    edit_manifest(
        &manifest,
        &format!(
            "{SITE_AND_P3}\n[[trigger.http]]\nroute = \"/c\"\ncomponent = \"c\"\n\n[component.c]\nsource = \"c.wasm\"\n"
        ),
    );
    wait_for_deploy_error(&server, "c.wasm");
    assert_eq!(get_ok(&server, "/c"), (200, "v1\n".into()), "the old table");
    rename_over(&dir.join("c.wasm"), &g.v2);
    server.wait_for_status(|s| handler_names(s).contains(&"c".to_string()));
    assert_eq!(get_ok(&server, "/c"), (200, "v2\n".into()));
    // `site` moves to a new file whose first version traps: refused; the
    // live site's file is another, yet a fix to the new one deploys.
    let moved = SITE_AND_P3.replace("site.wasm", "site-next.wasm");
    let with_c = format!(
        "{moved}\n[[trigger.http]]\nroute = \"/c\"\ncomponent = \"c\"\n\n[component.c]\nsource = \"c.wasm\"\n"
    );
    std::fs::copy(&g.trap, dir.join("site-next.wasm")).unwrap();
    let refused = server.rolls().len();
    edit_manifest(&manifest, &with_c);
    wait_for_deploy_error(&server, "smoke check");
    assert_eq!(server.rolls().len(), refused, "nothing rolled");
    assert_eq!(get_ok(&server, "/"), (200, "v1\n".into()));
    rename_over(&dir.join("site-next.wasm"), &g.v2);
    server.wait_for_status(|s| {
        handler(s, "site")["source"]
            .as_str()
            .is_some_and(|p| p.ends_with("site-next.wasm"))
    });
    assert_eq!(get_ok(&server, "/"), (200, "v2\n".into()));
}

/// Without a manifest there is no mount, and nothing a client sends may
/// pass for one (the guest SDK's `route_path` trusts the header).
#[test]
fn the_one_handler_mode_drops_client_sent_mount_headers() {
    let server = Server::start(&guests().cgi, &["--workers", "1"]);
    let body = fresh_client()
        .get(&server.url("/env"))
        .set("X-Wcluster-Mount", "/evil")
        .set("X-Wcluster-Path-Info", "/admin")
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(!body.contains("HTTP_X_WCLUSTER"), "{body}");
    assert_eq!(cgi_var(&body, "SCRIPT_NAME"), Some(""), "{body}");
    assert_eq!(cgi_var(&body, "PATH_INFO"), Some("/env"), "{body}");
}

/// Each handler has its own limits: one file under two hosts, one with a
/// short deadline and a small body limit; and a memory limit below what a
/// handler needs refuses it.
#[test]
fn each_handler_has_its_own_deadline_body_and_memory_limits() {
    let g = guests();
    let manifest = app(
        "manifest-limits",
        &[("kit.wasm", &g.testkit)],
        r#"spin_manifest_version = 2

[[trigger.http]]
route = "/slow"
component = "patient"

[[trigger.http]]
route = "/slow"
component = "hasty"
host = "hasty.example"

[component.patient]
source = "kit.wasm"

[component.hasty]
source = "kit.wasm"
request_timeout = "300ms"
max_body = "16"
"#,
    );
    let server = Server::start(&manifest, &["--workers", "1"]);
    let agent = fresh_client();
    let send = |host: &str, body: &[u8]| match agent
        .post(&server.url("/slow?ms=800"))
        .set("Host", host)
        .send_bytes(body)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(send("other.example", b""), 200, "the default deadline");
    assert_eq!(send("hasty.example", b""), 504, "its own 300ms");
    assert_eq!(send("other.example", &[b'x'; 100]), 200);
    assert_eq!(send("hasty.example", &[b'x'; 100]), 413, "its own 16 bytes");
    // A 0.3 handler is smoke-checked before it serves; 64 KiB is one page,
    // less than its initial memory, so it is refused and names the limit.
    let dir = scratch("manifest-memory");
    std::fs::copy(&g.p3_hello, dir.join("p3.wasm")).unwrap();
    let path = dir.join("app.toml");
    std::fs::write(
        &path,
        "[[trigger.http]]\nroute = \"/...\"\ncomponent = \"p3\"\n\n[component.p3]\nsource = \"p3.wasm\"\nmax_memory = \"64KiB\"\n",
    )
    .unwrap();
    let cache = cache_dir();
    let (ok, stderr) = run_to_exit(&[
        "serve",
        path.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("handler `p3`") && stderr.contains("exceeds memory limits"),
        "{stderr}"
    );
}
