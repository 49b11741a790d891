//! Every example handler, built from source by scripts/build-examples.sh
//! (which installs the toolchains), served by the real binary: a GET and a
//! POST with a body each.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let out = root.join("target/examples");
        let status = Command::new(root.join("scripts/build-examples.sh"))
            .arg(&out)
            .status()
            .expect("run scripts/build-examples.sh");
        assert!(status.success(), "building the examples failed");
        out
    });
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Serves `file`, then checks a GET and a POST against what the example says.
fn serves(file: &str, get_want: &str, post_want: &str) {
    let server = Server::start(&example(file), &["--workers", "1"]);
    let client = fresh_client();
    let (status, body) = get(&client, &server.url("/hello?x=1")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(get_want), "GET: {body:?} lacks {get_want:?}");
    let resp = client
        .post(&server.url("/greet"))
        .set("content-type", "application/json")
        .send_string(r#"{"name":"wcluster","times":2}"#);
    let (status, body) = match resp {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST: {e}"),
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(post_want),
        "POST: {body:?} lacks {post_want:?}"
    );
}

#[test]
fn rust_hello() {
    serves("rust-hello.wasm", "Hello, world!", "Hello, world!");
}

#[test]
fn rust_json() {
    let server = Server::start(&example("rust-json.wasm"), &["--workers", "1"]);
    let client = fresh_client();
    let (status, body) = get(&client, &server.url("/")).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""service":"rust-json""#), "{body}");
    assert_eq!(get(&client, &server.url("/nowhere")).unwrap().0, 404);
    let resp = client
        .post(&server.url("/greet"))
        .send_string(r#"{"name":"wcluster","times":2}"#)
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.into_string().unwrap(),
        r#"{"message":"Hello, wcluster! Hello, wcluster!","length":33}"#
    );
    match client.post(&server.url("/greet")).send_string("not json") {
        Err(ureq::Error::Status(400, r)) => assert!(r.into_string().unwrap().contains("error")),
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn python() {
    serves(
        "python.wasm",
        "Hello from Python! path=/hello?x=1 body=0",
        "Hello from Python! path=/greet body=29",
    );
}

#[test]
fn python_on_wasi_0_3() {
    serves(
        "python-p3.wasm",
        "Hello from Python on WASI 0.3! path=/hello?x=1 body=0",
        "Hello from Python on WASI 0.3! path=/greet body=29",
    );
}

#[test]
fn javascript() {
    serves(
        "javascript.wasm",
        "Hello from JavaScript! GET /hello?x=1",
        r#"Hello from JavaScript! POST /greet body={"name":"wcluster","times":2}"#,
    );
}

#[test]
fn c() {
    serves(
        "c.wasm",
        "Hello from C! GET /hello?x=1",
        "body: {\"name\":\"wcluster\",\"times\":2}\n29 bytes",
    );
}

#[test]
fn assemblyscript() {
    serves(
        "assemblyscript.wasm",
        "Hello from AssemblyScript! GET /hello?x=1",
        r#"body: {"name":"wcluster","times":2}"#,
    );
}

#[test]
fn wat() {
    serves("wat.wat", "Hello from wcluster!", "Hello from wcluster!");
}

/// The JavaScript example cannot serve a second request in one instance
/// (componentize-js: "respondWith can't be called twice"): with reuse it is
/// refused before it takes traffic, never served as a storm of 504s.
#[test]
fn javascript_with_reuse_is_refused() {
    let js = example("javascript.wasm");
    let cache = cache_dir();
    let (ok, stderr) = run_to_exit(&[
        "serve",
        js.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--reuse-instances",
        "1000",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("run it with --reuse-instances 0"),
        "{stderr}"
    );
}

/// examples/app as shipped (its handler paths pointed at this build's
/// target directory): each handler at its route, the visit counter in its
/// one bucket, the API below its mount.
#[test]
fn the_example_app_serves_each_handler_at_its_route() {
    // build-examples builds the three Rust 0.2 handlers, guests() p3-hello.
    let built = example("rust-hello.wasm");
    guests();
    let target = built.parent().unwrap().parent().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(root.join("examples/app/app.toml")).unwrap();
    let text = text.replace("../../target/", &format!("{}/", target.display()));
    let dir = scratch("example-app");
    let manifest = dir.join("app.toml");
    std::fs::write(&manifest, text).unwrap();
    let state = dir.join("state");
    let server = Server::start(
        &manifest,
        &["--workers", "1", "--state-dir", state.to_str().unwrap()],
    );
    let client = fresh_client();
    let (status, body) = get(&client, &server.url("/?name=app")).unwrap();
    assert_eq!((status, body.as_str()), (200, "Hello, app!\n"));
    let (status, body) = get(&client, &server.url("/api/")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rust-json"), "{body}");
    let greeting = client
        .post(&server.url("/api/greet"))
        .send_string(r#"{"name":"app"}"#)
        .unwrap()
        .into_string()
        .unwrap();
    assert!(greeting.contains("Hello, app!"), "{greeting}");
    for n in 1..=2 {
        let (status, body) = get(&client, &server.url("/visits")).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("#{n}")), "{body}");
    }
    let (status, body) = get(&client, &server.url("/p3")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("WASI 0.3"), "{body}");
    let names: Vec<String> = server.status()["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["site", "api", "visits", "p3"]);
}
