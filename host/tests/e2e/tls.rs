//! HTTPS (--tls-cert/--tls-key): HTTP/1.1 and HTTP/2 negotiated by ALPN,
//! the first-bytes deadline over the handshake, start-up errors, and a
//! certificate rotation under load without a failed request. Certificates
//! are made here (rcgen): a test CA and leaves for localhost/127.0.0.1
//! signed by it, so a client trusting the CA accepts the old and the new.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::harness::*;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate for localhost and 127.0.0.1: PEM cert, PEM key, DER.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wcluster e2e CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client configuration that trusts this CA only.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// The CA, a leaf, and the three files in a scratch directory.
struct Pki {
    ca: Ca,
    leaf: Leaf,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(name: &str) -> Pki {
    let dir = scratch(&format!("tls-{name}"));
    let ca = Ca::new();
    let leaf = ca.leaf();
    let (ca_file, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_file, ca.issuer.pem()).unwrap();
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    Pki {
        ca,
        leaf,
        ca_file,
        cert,
        key,
    }
}

fn start(pki: &Pki, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ];
    args.extend(extra);
    Server::start(&guests().hello, &args)
}

fn url(server: &Server, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", server.addr.port())
}

/// The leaf certificate a new connection is served (DER).
fn served_cert(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let certs: &[CertificateDer] = conn.peer_certificates().unwrap();
    certs[0].to_vec()
}

fn has_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// curl over HTTPS trusting only `ca`: (status, HTTP version, body).
fn curl(ca: &Path, url: &str, args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(ca)
        .args(args)
        .args(["-w", "\n%{http_code} %{http_version}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    (code.to_string(), version.to_string(), body.to_string())
}

#[test]
fn https_with_http1_and_http2_by_alpn() {
    let pki = pki("alpn");
    let server = start(&pki, &[]);
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.starts_with("wcluster: listening on https://127.0.0.1:")),
        "readiness line: {:?}",
        server.lines()
    );
    // A Rust client (HTTP/1.1 over rustls), trusting the test CA only.
    let agent = ureq::AgentBuilder::new()
        .tls_config(pki.ca.client())
        .timeout(Duration::from_secs(30))
        .build();
    let (status, body) = get(&agent, &url(&server, "/?name=tls")).unwrap();
    assert_eq!((status, body.as_str()), (200, "Hello, tls!\n"));
    // Plain HTTP to the HTTPS port is not served.
    assert!(get(&fresh_client(), &server.url("/")).is_err());
    if !has_curl() {
        eprintln!("curl is not installed: skipping the curl checks (scripts/setup.sh installs it)");
        return;
    }
    let (code, version, body) = curl(&pki.ca_file, &url(&server, "/"), &["--http1.1"]);
    assert_eq!((code.as_str(), version.as_str()), ("200", "1.1"));
    assert_eq!(body, "Hello, world!\n");
    let (code, version, _) = curl(&pki.ca_file, &url(&server, "/"), &["--http2"]);
    assert_eq!((code.as_str(), version.as_str()), ("200", "2"));
}

#[test]
fn a_private_key_other_users_can_read_is_served_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let pki = pki("key-mode");
    let warning = |l: &str| l.contains("readable by other users (mode 0644)");
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut server = start(&pki, &["--workers", "1"]);
    server.wait_for_line(Duration::from_secs(10), warning);
    drop(server);
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = start(&pki, &["--workers", "1"]);
    // The warning would come before the readiness line; give the log
    // thread time to write it anyway.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !server.lines().iter().any(|l| warning(l)),
        "a 0600 key was warned about"
    );
}

#[test]
fn the_first_bytes_deadline_bounds_the_handshake() {
    let pki = pki("deadline");
    let server = start(&pki, &["--workers", "1", "--header-timeout", "2s"]);
    let start = Instant::now();
    // Sends nothing at all.
    let silent = TcpStream::connect(server.addr).unwrap();
    // Stops in the middle of its ClientHello (a TLS record header only).
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    // Completes the handshake, then sends no request: the same deadline.
    let config = pki.ca.client();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    let mut shaken = TcpStream::connect(server.addr).unwrap();
    shaken
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut shaken).unwrap();
    }
    for (what, mut conn) in [
        ("silent", silent),
        ("partial ClientHello", partial),
        ("handshake only", shaken),
    ] {
        let Some(after) = closed_by_server(&mut conn, start, Duration::from_secs(6)) else {
            panic!("{what}: still open 6 s after it was made");
        };
        assert!(
            after >= Duration::from_millis(1500),
            "{what}: closed after {after:?}"
        );
    }
    let agent = ureq::AgentBuilder::new()
        .tls_config(pki.ca.client())
        .build();
    assert_eq!(get(&agent, &url(&server, "/")).unwrap().0, 200);
}

/// Runs `wcluster serve` with `extra`, on an address this test holds bound:
/// the TLS check must fail before wcluster tries to bind (which would fail
/// with "address in use"). Returns stderr.
fn fails_before_binding(extra: &[&str]) -> String {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let cache = cache_dir();
    let hello = guests().hello.clone();
    let mut args = vec![
        "serve",
        hello.to_str().unwrap(),
        "--addr",
        &addr,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend(extra);
    let (ok, stderr) = run_to_exit(&args);
    assert!(
        !ok,
        "wcluster {args:?} should have failed; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("in use"), "{stderr}");
    stderr
}

#[test]
fn bad_tls_input_is_a_start_up_error_naming_the_file() {
    let pki = pki("errors");
    let dir = pki.cert.parent().unwrap();
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());

    let missing = dir.join("missing.pem");
    let err = fails_before_binding(&["--tls-cert", missing.to_str().unwrap(), "--tls-key", key]);
    assert!(
        err.contains("missing.pem`: no such file") && err.contains("--tls-cert"),
        "{err}"
    );

    let other = dir.join("other-key.pem");
    std::fs::write(&other, pki.ca.leaf().key).unwrap();
    let err = fails_before_binding(&["--tls-cert", cert, "--tls-key", other.to_str().unwrap()]);
    assert!(
        err.contains("other-key.pem` does not match the certificate") && err.contains("cert.pem"),
        "{err}"
    );

    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = fails_before_binding(&["--tls-cert", garbage.to_str().unwrap(), "--tls-key", key]);
    assert!(err.contains("garbage.pem`: not valid PEM"), "{err}");
    let err = fails_before_binding(&["--tls-cert", cert, "--tls-key", garbage.to_str().unwrap()]);
    assert!(err.contains("garbage.pem`: not valid PEM"), "{err}");

    let text = dir.join("text.pem");
    std::fs::write(&text, "hello\n").unwrap();
    let err = fails_before_binding(&["--tls-cert", text.to_str().unwrap(), "--tls-key", key]);
    assert!(err.contains("text.pem`: no certificate"), "{err}");
    let err = fails_before_binding(&["--tls-cert", cert, "--tls-key", text.to_str().unwrap()]);
    assert!(err.contains("text.pem`: no private key"), "{err}");

    let err = fails_before_binding(&["--tls-cert", cert]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let err = fails_before_binding(&["--tls-key", key]);
    assert!(err.contains("--tls-key needs --tls-cert"), "{err}");
}

#[test]
fn a_rotated_pair_is_served_to_new_connections_without_a_failed_request() {
    let pki = pki("rotation");
    let server = start(&pki, &["--workers", "2"]);
    let config = pki.ca.client();
    assert_eq!(served_cert(server.addr, &config), pki.leaf.der);

    // Keep-alive clients and clients that connect for every request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut builder = ureq::AgentBuilder::new()
                .tls_config(config.clone())
                .timeout(Duration::from_secs(30));
            if i >= 2 {
                builder = builder.max_idle_connections(0);
            }
            let agent = builder.build();
            let (stop, ok, errors, url) =
                (stop.clone(), ok.clone(), errors.clone(), url(&server, "/"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(&agent, &url) {
                        Ok((200, body)) if body == "Hello, world!\n" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => {
                            errors.lock().unwrap().push(format!("{status} {body:?}"))
                        }
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // The new pair is written over the old files, the certificate first:
    // until the key follows, the files do not match, and the workers keep
    // serving the old pair (with a warning).
    let new = pki.ca.leaf();
    std::fs::write(&pki.cert, &new.cert).unwrap();
    server.wait_for_events(Duration::from_secs(10), |events| {
        events.iter().any(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("still serving the previous certificate"))
        })
    });
    assert_eq!(served_cert(server.addr, &config), pki.leaf.der);
    std::fs::write(&pki.key, &new.key).unwrap();

    // Within a few polls, every worker serves the new one.
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the new certificate was not served"
        );
        if served_cert(server.addr, &config) == new.der {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed requests, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
    let reloaded = server
        .events(None)
        .iter()
        .filter(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("TLS certificate reloaded"))
        })
        .count();
    assert_eq!(reloaded, 2, "one reload line per worker");
}

#[test]
fn outbound_https_trusts_the_system_roots_and_outbound_ca() {
    let pki = pki("outbound");
    let upstream = start(&pki, &["--workers", "1"]);
    let port = upstream.addr.port();
    let allow = format!("https://127.0.0.1:{port}");
    let target = format!("https://127.0.0.1:{port}/?name=tls");
    let trusting = Server::start(
        &guests().reach,
        &[
            "--workers",
            "1",
            "--allow-outbound",
            &allow,
            "--outbound-ca",
            pki.ca_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        crate::outbound::fetch(&trusting, &target, ""),
        (200, "upstream 200 Hello, tls!\n".into())
    );
    // The test CA is in no system store.
    let system_only = Server::start(
        &guests().reach,
        &["--workers", "1", "--allow-outbound", &allow],
    );
    assert_eq!(
        crate::outbound::fetch(&system_only, &target, ""),
        (502, "error TlsCertificateError\n".into())
    );
}

/// Behind --tls-cert a guest sees the scheme it was reached by: `https` in
/// a 0.2 or 0.3 component's request, HTTPS=on for a CGI module.
#[test]
fn guests_see_the_https_scheme() {
    let pki = pki("scheme");
    let g = guests();
    let agent = ureq::AgentBuilder::new()
        .tls_config(pki.ca.client())
        .timeout(Duration::from_secs(30))
        .build();
    let tls = [
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
        "--workers",
        "1",
    ];
    for handler in [&g.testkit, &g.p3kit] {
        let server = Server::start(handler, &tls);
        assert_eq!(
            get(&agent, &url(&server, "/scheme")).unwrap(),
            (200, "https\n".into()),
            "{}",
            handler.display()
        );
        let plain = Server::start(handler, &["--workers", "1"]);
        assert_eq!(
            get(&fresh_client(), &plain.url("/scheme")).unwrap(),
            (200, "http\n".into())
        );
    }
    let server = Server::start(&g.cgi, &tls);
    let (status, env) = get(&agent, &url(&server, "/env")).unwrap();
    assert_eq!(status, 200);
    assert!(
        env.lines().any(|l| l == "HTTPS=on") && env.lines().any(|l| l == "REQUEST_SCHEME=https"),
        "{env}"
    );
}
