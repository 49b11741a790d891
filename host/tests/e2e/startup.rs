//! Bad start-up input: a non-zero exit and a message naming the problem,
//! before anything binds.

use crate::harness::*;

fn serve_fails(handler: &std::path::Path, extra: &[&str]) -> String {
    let cache = scratch("startup-cache");
    let mut args = vec!["serve", handler.to_str().unwrap()];
    if !extra.contains(&"--addr") {
        args.extend(["--addr", "127.0.0.1:0"]);
    }
    args.extend(["--cache-dir", cache.to_str().unwrap()]);
    args.extend(extra);
    let (ok, stderr) = run_to_exit(&args);
    assert!(
        !ok,
        "wcluster {args:?} should have failed; stderr:\n{stderr}"
    );
    stderr
}

fn file(name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = scratch(&format!("startup-{name}")).join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn missing_handler() {
    let err = serve_fails(std::path::Path::new("/no/such/handler.wasm"), &[]);
    assert!(
        err.contains("/no/such/handler.wasm") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn not_wasm() {
    let path = file("notes.txt", b"hello, I am text");
    let err = serve_fails(&path, &[]);
    assert!(
        err.contains("notes.txt") && err.contains("not a WebAssembly file"),
        "{err}"
    );
}

#[test]
fn garbage_after_the_magic() {
    let path = file("garbage.wasm", b"\0asm\x0d\0\x01\0this is not a component");
    let err = serve_fails(&path, &[]);
    assert!(
        err.contains("garbage.wasm") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
}

#[test]
fn core_module_without_start() {
    let path = file("core.wat", b"(module)");
    let err = serve_fails(&path, &[]);
    assert!(
        err.contains("core.wat") && err.contains("does not export `_start`"),
        "{err}"
    );
}

#[test]
fn core_module_importing_beyond_wasi() {
    let path = file(
        "env-import.wat",
        br#"(module (import "env" "magic" (func)) (func (export "_start")))"#,
    );
    let err = serve_fails(&path, &[]);
    assert!(
        err.contains("env-import.wat") && err.contains("magic"),
        "{err}"
    );
}

#[test]
fn component_without_incoming_handler() {
    let path = file("empty.wat", b"(component)");
    let err = serve_fails(&path, &[]);
    assert!(
        err.contains("empty.wat")
            && err.contains("exports nothing; expected `wasi:http/incoming-handler@0.2.x`"),
        "{err}"
    );
}

#[test]
fn component_importing_the_unknown() {
    let path = file(
        "imports.wat",
        // Exports the right name, so the import is what is wrong.
        br#"(component
              (import "acme:nope/thing" (instance (export "f" (func))))
              (core module $m (func (export "h")))
              (core instance $i (instantiate $m))
              (func $h (canon lift (core func $i "h")))
              (instance $inst (export "handle" (func $h)))
              (export "wasi:http/incoming-handler@0.2.0" (instance $inst)))"#,
    );
    let err = serve_fails(&path, &[]);
    assert!(err.contains("acme:nope/thing"), "{err}");
}

#[test]
fn address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&guests().hello, &["--addr", &addr]);
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
}

#[test]
fn bad_flag_values() {
    let hello = &guests().hello;
    let err = serve_fails(hello, &["--workers", "0"]);
    assert!(err.contains("--workers"), "{err}");
    let err = serve_fails(hello, &["--dir", "/no/such/dir"]);
    assert!(
        err.contains("/no/such/dir") && err.contains("not a directory"),
        "{err}"
    );
}
