//! Checks of a request's head made before any guest runs. The Host rules of
//! RFC 9112 section 3.2: an HTTP/1.1 request without Host, with more than
//! one, or with one that is not a valid `host[:port]` is a 400. A request
//! must also name its host somehow (a guest is given an authority), and an
//! HTTP/2 Host must agree with :authority (RFC 9113 section 8.3.1).
//!
//! The authority a guest sees (a component's `authority`, CGI's
//! SERVER_NAME) is the target's when it has one (absolute form, HTTP/2
//! :authority), else Host's; this check makes sure one of them is valid.

use http::uri::Authority;
use http::{Request, StatusCode, Version, header};

/// The host a request is for, to route it: the target's, when it names one
/// (an absolute-form target, HTTP/2's :authority), which an origin server
/// must prefer over Host (RFC 9112 section 3.2.2); else a non-empty Host.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
    })
}

/// Why `req` must be refused before a guest sees it, if it must.
pub fn host_problem<B>(req: &Request<B>) -> Option<(StatusCode, &'static str)> {
    let bad = |why| Some((StatusCode::BAD_REQUEST, why));
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    let target = req.uri().authority();
    let Some(host) = host else {
        if req.version() == Version::HTTP_11 {
            return bad("no Host header");
        }
        if target.is_none() {
            return bad("the request names no host (no Host header, no authority in the target)");
        }
        return None;
    };
    let Ok(host) = host.to_str() else {
        return bad("the Host header is not valid");
    };
    if host.is_empty() {
        // Allowed by the grammar, but then the target must name the host.
        return match target {
            Some(_) => None,
            None => bad("the Host header is empty"),
        };
    }
    // host[:port] only: no user info, and a port that is a port.
    if host.parse::<Authority>().is_err() || host.contains('@') || !valid_port(host) {
        return bad("the Host header is not valid");
    }
    if req.version() == Version::HTTP_2
        && let Some(target) = target
        && !target.as_str().eq_ignore_ascii_case(host)
    {
        return bad("the Host header differs from :authority");
    }
    None
}

/// Whether the port of `host[:port]` (`[v6]:port` too), if any, is digits
/// naming a TCP port.
fn valid_port(authority: &str) -> bool {
    let after_v6 = authority
        .rfind(']')
        .map_or(authority, |i| &authority[i + 1..]);
    match after_v6.rsplit_once(':') {
        None => true,
        Some((_, "")) => true,
        Some((_, port)) => port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(version: Version, uri: &str, hosts: &[&[u8]]) -> Request<()> {
        let mut req = Request::get(uri).version(version).body(()).unwrap();
        for h in hosts {
            req.headers_mut()
                .append(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        req
    }

    fn check(version: Version, uri: &str, hosts: &[&[u8]]) -> Option<&'static str> {
        host_problem(&req(version, uri, hosts)).map(|(status, why)| {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            why
        })
    }

    const H1: Version = Version::HTTP_11;

    #[test]
    fn one_valid_host_passes() {
        for host in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1:80",
            b"[::1]:8080",
            b"[::1]",
            b"Example.COM",
        ] {
            assert_eq!(check(H1, "/", &[host]), None, "{host:?}");
        }
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(check(H1, "/", &[]), Some("no Host header"));
        // Even with the authority in the target (RFC 9112 section 3.2).
        assert_eq!(check(H1, "http://a.test/", &[]), Some("no Host header"));
        assert_eq!(
            check(H1, "/", &[b"a.test", b"a.test"]),
            Some("more than one Host header")
        );
        assert_eq!(
            check(H1, "http://a.test/", &[b"a.test", b"b.test"]),
            Some("more than one Host header")
        );
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for host in [
            &b"caf\xc3\xa9.test"[..],
            b"\xff\xfe",
            b"a b",
            b"user@a.test",
            b"a.test:port",
            b"a.test:99999",
            b"a.test/path",
            b"",
        ] {
            assert!(check(H1, "/", &[host]).is_some(), "{host:?}");
        }
        // An empty Host is fine when the target names the host.
        assert_eq!(check(H1, "http://a.test/", &[b""]), None);
        // In absolute form the target wins, but Host must still be valid.
        assert_eq!(check(H1, "http://a.test/", &[b"b.test"]), None);
        assert!(check(H1, "http://a.test/", &[b"\xff"]).is_some());
    }

    #[test]
    fn other_versions_need_a_host_somewhere() {
        assert_eq!(check(Version::HTTP_10, "/", &[b"a.test"]), None);
        assert!(check(Version::HTTP_10, "/", &[]).is_some());
        assert_eq!(check(Version::HTTP_2, "http://a.test/", &[]), None);
        assert!(check(Version::HTTP_2, "/", &[]).is_some());
        assert_eq!(check(Version::HTTP_2, "http://a.test/", &[b"A.test"]), None);
        assert_eq!(
            check(Version::HTTP_2, "http://a.test/", &[b"b.test"]),
            Some("the Host header differs from :authority")
        );
    }
}
