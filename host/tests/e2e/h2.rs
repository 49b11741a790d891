//! HTTP/2 (h2c, prior knowledge) and its known floods: rapid reset,
//! CONTINUATION flood, empty DATA frames. Frames are written by hand so the
//! tests can send what a well-behaved client never would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `method path`, scheme http, authority x (static table only).
fn request_block(post: bool) -> Vec<u8> {
    vec![if post { 0x83 } else { 0x82 }, 0x86, 0x84, 0x41, 0x01, b'x']
}

/// `GET /` on stream 1, in one HEADERS frame.
fn get_on_stream_1() -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block(false))
}

fn connect(server: &Server) -> TcpStream {
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(PREFACE).unwrap();
    c.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    c
}

/// Reads frames until EOF or error; the frame types seen.
fn drain_frames(c: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut kinds = Vec::new();
    let mut head = [0u8; 9];
    while start.elapsed() < limit {
        if c.read_exact(&mut head).is_err() {
            break;
        }
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        if c.read_exact(&mut payload).is_err() {
            break;
        }
        kinds.push(head[3]);
        if head[3] == GOAWAY {
            break;
        }
    }
    kinds
}

fn assert_still_serving(server: &Server) {
    assert_eq!(get(&fresh_client(), &server.url("/")).unwrap().0, 200);
}

#[test]
fn h2c_with_prior_knowledge_is_served() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let mut c = connect(&server);
    c.write_all(&get_on_stream_1()).unwrap();
    let start = Instant::now();
    let mut kinds = Vec::new();
    let mut head = [0u8; 9];
    while !kinds.contains(&DATA) && start.elapsed() < Duration::from_secs(10) {
        c.read_exact(&mut head).unwrap();
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        c.read_exact(&mut payload).unwrap();
        kinds.push(head[3]);
    }
    assert!(
        kinds.contains(&HEADERS) && kinds.contains(&DATA),
        "{kinds:?}"
    );
}

#[test]
fn rapid_reset_is_cut_off() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let mut c = connect(&server);
    let mut burst = Vec::new();
    for i in 0..20_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &request_block(false),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    // The server may close the connection before the burst is written.
    let wrote_all = c.write_all(&burst).is_ok();
    let kinds = drain_frames(&mut c, Duration::from_secs(10));
    assert!(
        kinds.contains(&GOAWAY) || !wrote_all,
        "20,000 reset streams were accepted without a GOAWAY"
    );
    assert_still_serving(&server);
}

#[test]
fn continuation_flood_is_cut_off() {
    let server = Server::start(&guests().hello, &["--workers", "1"]);
    let mut c = connect(&server);
    c.write_all(&frame(HEADERS, 0, 1, &request_block(false)))
        .unwrap();
    // Literal header fields without indexing, 1 KiB values, forever.
    let mut fragment = vec![0x00, 0x03, b'x', b'-', b'f', 0x7f, 0x81, 0x07];
    fragment.extend(std::iter::repeat_n(b'a', 1024)); // value length 1024 = 127 + 897
    let mut sent = 0usize;
    let start = Instant::now();
    let mut closed = false;
    while sent < 64 << 20 && start.elapsed() < Duration::from_secs(20) {
        if c.write_all(&frame(CONTINUATION, 0, 1, &fragment)).is_err() {
            closed = true;
            break;
        }
        sent += fragment.len();
    }
    let kinds = drain_frames(&mut c, Duration::from_secs(10));
    assert!(
        closed || kinds.contains(&GOAWAY),
        "{sent} bytes of CONTINUATION accepted"
    );
    assert_still_serving(&server);
}

#[test]
fn empty_data_frames_are_bounded() {
    let server = Server::start(
        &guests().echo,
        &["--workers", "1", "--request-timeout", "3s"],
    );
    let mut c = connect(&server);
    c.write_all(&frame(HEADERS, END_HEADERS, 1, &request_block(true)))
        .unwrap();
    let empty = frame(DATA, 0, 1, &[]);
    let burst: Vec<u8> = std::iter::repeat_n(empty, 200_000).flatten().collect();
    let start = Instant::now();
    let _ = c.write_all(&burst);
    // Meanwhile and after, the server answers others.
    assert_still_serving(&server);
    // The flooding request ends: at the deadline at the latest.
    let kinds = drain_frames(&mut c, Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_secs(15), "{kinds:?}");
    assert_still_serving(&server);
}

#[test]
fn a_stream_the_client_gives_no_window_is_abandoned_after_the_send_timeout() {
    let server = Server::start(&guests().hello, &ONE_SLOT);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.write_all(PREFACE).unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may send a byte of DATA.
    c.write_all(&frame(SETTINGS, 0, 0, &[0x00, 0x04, 0, 0, 0, 0]))
        .unwrap();
    c.write_all(&get_on_stream_1()).unwrap();
    let start = Instant::now();
    let closed = closed_by_server(&mut c, start, Duration::from_secs(15));
    assert!(
        closed.is_some(),
        "a stream with no window held its connection for 15 s"
    );
    // Its slot (the only one) is free again.
    assert_still_serving(&server);
}
