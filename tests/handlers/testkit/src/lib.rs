//! The end-to-end tests' handler: one route per behaviour under test.

use std::time::Duration;

use wcluster_guest::{Request, Response, StatusCode, query_param};

fn handle(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let param = |name: &str| query_param(&req, name).map(str::to_string);
    match path.as_str() {
        // Stopped by a trap: the host must answer 500 and keep serving.
        "/trap" => panic!("testkit: trap requested"),
        // Never returns: the request deadline must stop it.
        "/loop" => loop {
            std::hint::black_box(0u64);
        },
        // Grows memory until the per-instance limit makes allocation fail.
        "/hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        // Unbounded recursion: a stack overflow, which wasmtime turns into a trap.
        "/recurse" => text(format!("{}\n", recurse(std::hint::black_box(1)))),
        // Prints without end: the host must bound what reaches its log.
        "/flood" => loop {
            println!("flooding the log");
        },
        // `mb` MiB of output without a newline: the log cap must count bytes.
        "/flood-bytes" => {
            let mb: usize = param("mb").and_then(|v| v.parse().ok()).unwrap_or(32);
            let chunk = vec![b'x'; 64 * 1024];
            let mut out = std::io::stdout().lock();
            for _ in 0..mb * 16 {
                std::io::Write::write_all(&mut out, &chunk).expect("write stdout");
            }
            text(format!("wrote {mb} MiB\n"))
        }
        // The authority the host gave the request.
        // The scheme the host gave the request (https behind --tls-cert).
        "/scheme" => text(format!("{}\n", req.uri().scheme_str().unwrap_or(""))),
        "/authority" => text(format!(
            "{}\n",
            req.uri().authority().map_or("", |a| a.as_str())
        )),
        // State kept in the instance: always 1 with a fresh instance per
        // request, counting up when instances are reused.
        "/counter" => {
            static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            text(format!("{n}\n"))
        }
        "/slow" => {
            let ms = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            // Tests wait for this line to know the request is in flight.
            println!("slow request started");
            std::thread::sleep(Duration::from_millis(ms));
            text(format!("slept {ms} ms\n"))
        }
        "/env" => {
            let name = param("name").unwrap_or_default();
            match std::env::var(&name) {
                Ok(v) => text(v),
                Err(_) => status(StatusCode::NOT_FOUND, format!("no variable {name}\n")),
            }
        }
        "/file" => {
            let p = param("path").unwrap_or_default();
            match std::fs::read_to_string(&p) {
                Ok(v) => text(v),
                Err(e) => status(StatusCode::FORBIDDEN, format!("cannot read {p}: {e}\n")),
            }
        }
        // Outbound network: a TCP connection to the address given.
        "/connect" => {
            let addr = param("addr").unwrap_or_default();
            match std::net::TcpStream::connect(&addr) {
                Ok(_) => text(format!("connected to {addr}\n")),
                Err(e) => status(
                    StatusCode::FORBIDDEN,
                    format!("cannot connect to {addr}: {e}\n"),
                ),
            }
        }
        "/print" => {
            println!("testkit says hello on stdout");
            eprintln!("testkit says hello on stderr");
            text("printed\n".into())
        }
        _ => text("hello\n".into()),
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    recurse(frame[3] + 1) + frame[7]
}

fn text(body: String) -> Response {
    Response::new(body.into_bytes())
}

fn status(code: StatusCode, body: String) -> Response {
    let mut r = text(body);
    *r.status_mut() = code;
    r
}

wcluster_guest::serve!(handle);
