//! The CGI end-to-end tests' handler: a WASI command module that routes on
//! PATH_INFO, one route per CGI convention under test.

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match path.as_str() {
        "/env" => {
            let mut vars: Vec<_> = std::env::vars().collect();
            vars.sort();
            let _ = write!(out, "Content-Type: text/plain\n\n");
            for (k, v) in vars {
                let _ = writeln!(out, "{k}={v}");
            }
        }
        "/not-found" => {
            let _ = write!(
                out,
                "Status: 404 Not Found\nContent-Type: text/plain\n\nnothing here\n"
            );
        }
        "/redirect" => {
            let _ = write!(out, "Location: /elsewhere\n\n");
        }
        "/headers" => {
            let got = std::env::var("HTTP_X_TEST").unwrap_or_default();
            let _ = write!(out, "X-Custom: yes\r\nX-Echo: {got}\r\n\r\nheaders\n");
        }
        "/echo" => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).expect("read stdin");
            let ct = std::env::var("CONTENT_TYPE").unwrap_or_default();
            let _ = write!(out, "Content-Type: {ct}\n\n");
            let _ = out.write_all(&body);
        }
        "/stream" => {
            let _ = write!(out, "Content-Type: text/plain\n\nfirst\n");
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(1500));
            let _ = writeln!(out, "second");
        }
        "/exit" => {
            eprintln!("cgi-testkit: giving up");
            std::process::exit(3);
        }
        "/malformed" => {
            let _ = write!(out, "this is not a header\n\nbody\n");
        }
        "/no-blank-line" => {
            let _ = writeln!(out, "Content-Type: text/plain");
        }
        "/loop" => loop {
            std::hint::black_box(0u64);
        },
        _ => {
            let _ = write!(out, "Content-Type: text/plain\n\nhello from CGI\n");
        }
    }
}
