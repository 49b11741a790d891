//! Which upstreams a guest may call: `--allow-outbound` patterns, and the
//! rule that keeps a host name from leading into the operator's own network.
//!
//! A pattern is `SCHEME://HOST[:PORT]`: SCHEME is `http`, `https` or `*`;
//! HOST a name (`api.example.com`), a wildcard (`*.example.com`, or `*` for
//! any name), an IP address (`10.1.2.3`, `[::1]`) or a range
//! (`10.0.0.0/8`); PORT a number or `*`, by default the scheme's (80, 443).
//!
//! The URL check alone is not enough: an allowed name may resolve to
//! 127.0.0.1 or 10.x (by mistake or by DNS rebinding). So every address a
//! connection is about to use is checked too, and one that is loopback,
//! private, link-local, unspecified or otherwise not public is refused
//! unless a pattern names that address or its range explicitly.

use std::net::IpAddr;

use anyhow::{Result, bail, ensure};
use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq)]
enum Host {
    /// Exact name, lowercase.
    Name(String),
    /// `*.suffix`: any name ending in `.suffix`.
    Subdomains(String),
    AnyName,
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    /// None: http and https.
    scheme: Option<Scheme>,
    host: Host,
    /// None: any port; Some(0): the scheme's default port.
    port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The parsed `--allow-outbound` list; empty denies everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowList(Vec<Pattern>);

impl AllowList {
    pub fn parse(patterns: &[String]) -> Result<Self> {
        patterns
            .iter()
            .map(|p| parse_pattern(p).map_err(|e| e.context(format!("--allow-outbound `{p}`"))))
            .collect::<Result<_>>()
            .map(AllowList)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a request to `scheme://host:port` may be made at all.
    pub fn allows_url(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let name = host.to_ascii_lowercase();
        self.0.iter().any(|p| {
            p.matches_port(scheme, port)
                && match (&p.host, ip) {
                    (Host::Net(net), Some(ip)) => net.contains(&ip),
                    (Host::Net(_), None) | (_, Some(_)) => false,
                    (Host::Name(n), None) => *n == name,
                    (Host::Subdomains(suffix), None) => {
                        name.len() > suffix.len() + 1
                            && name.ends_with(suffix.as_str())
                            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                    }
                    (Host::AnyName, None) => true,
                }
        })
    }

    /// Whether a connection for `scheme`/`port` may go to `ip`: any public
    /// address, or an internal one that a pattern names explicitly.
    pub fn allows_address(&self, scheme: Scheme, port: u16, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if is_public(ip) {
            return true;
        }
        self.0.iter().any(|p| {
            p.matches_port(scheme, port) && matches!(&p.host, Host::Net(net) if net.contains(&ip))
        })
    }
}

impl Pattern {
    fn matches_port(&self, scheme: Scheme, port: u16) -> bool {
        self.scheme.is_none_or(|s| s == scheme)
            && match self.port {
                None => true,
                Some(0) => port == scheme.default_port(),
                Some(p) => p == port,
            }
    }
}

fn parse_pattern(spec: &str) -> Result<Pattern> {
    let Some((scheme, rest)) = spec.split_once("://") else {
        bail!("expected SCHEME://HOST[:PORT], e.g. https://api.example.com");
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(Scheme::Http),
        "https" => Some(Scheme::Https),
        "*" => None,
        other => bail!("scheme `{other}` is not http, https or *"),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    ensure!(
        !rest.contains(['/', '?', '#', '@'])
            || rest.parse::<IpNet>().is_ok()
            || is_net_with_port(rest),
        "a pattern names a host and port, not a path, query or user"
    );
    let (host, port) = split_port(rest)?;
    ensure!(!host.is_empty(), "the host is empty");
    let host = if host == "*" {
        Host::AnyName
    } else if let Some(suffix) = host.strip_prefix("*.") {
        ensure!(
            !suffix.is_empty() && !suffix.contains('*'),
            "a wildcard is `*.` followed by a domain"
        );
        Host::Subdomains(suffix.to_ascii_lowercase())
    } else if let Ok(net) = host.parse::<IpNet>() {
        Host::Net(net.trunc())
    } else if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Host::Net(IpNet::from(ip))
    } else {
        ensure!(
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "`{host}` is not a host name, IP address or range"
        );
        Host::Name(host.to_ascii_lowercase())
    };
    if scheme.is_none() && port == Some(0) && matches!(host, Host::AnyName) {
        bail!("`*://*` would allow every upstream: name the hosts");
    }
    Ok(Pattern { scheme, host, port })
}

fn is_net_with_port(s: &str) -> bool {
    split_port(s).is_ok_and(|(h, _)| h.parse::<IpNet>().is_ok())
}

/// `host[:port]`, where host may be `[v6]` or a range; port None is `*`,
/// Some(0) the scheme's default.
fn split_port(s: &str) -> Result<(&str, Option<u16>)> {
    let (host, port) = if let Some(end) = s.strip_prefix('[').and_then(|r| r.find(']')) {
        let host = &s[..end + 2];
        (host, s[end + 2..].strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address or range has no port.
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => Some(0),
        Some("*") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => bail!("port `{p}` is not a number from 1 to 65535 or *"),
        },
    };
    Ok((host, port))
}

/// Addresses on the public internet; everything else (loopback, private,
/// link-local, unspecified, shared, documentation, multicast, ...) is the
/// operator's own network or nowhere.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0xdb8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> AllowList {
        AllowList::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_wildcards_and_ports() {
        let l = list(&[
            "https://api.example.com",
            "http://*.example.org:8080",
            "*://svc.internal:*",
        ]);
        assert!(l.allows_url(Scheme::Https, "API.example.com", 443));
        assert!(!l.allows_url(Scheme::Http, "api.example.com", 80));
        assert!(!l.allows_url(Scheme::Https, "api.example.com", 8443));
        assert!(l.allows_url(Scheme::Http, "a.b.example.org", 8080));
        assert!(!l.allows_url(Scheme::Http, "example.org", 8080));
        assert!(!l.allows_url(Scheme::Http, "badexample.org", 8080));
        assert!(l.allows_url(Scheme::Http, "svc.internal", 1234));
        assert!(l.allows_url(Scheme::Https, "svc.internal", 443));
        assert!(!l.allows_url(Scheme::Https, "other.internal", 443));
    }

    #[test]
    fn addresses_and_ranges() {
        let l = list(&[
            "http://127.0.0.1:8080",
            "http://10.1.0.0/16",
            "https://[::1]:9443",
        ]);
        assert!(l.allows_url(Scheme::Http, "127.0.0.1", 8080));
        assert!(!l.allows_url(Scheme::Http, "127.0.0.1", 8081));
        assert!(l.allows_url(Scheme::Http, "10.1.200.3", 80));
        assert!(!l.allows_url(Scheme::Http, "10.2.0.1", 80));
        assert!(l.allows_url(Scheme::Https, "[::1]", 9443));
        // An IP pattern does not allow names, nor a name pattern an IP.
        assert!(!l.allows_url(Scheme::Http, "localhost", 8080));
        assert!(!list(&["http://localhost:8080"]).allows_url(Scheme::Http, "127.0.0.1", 8080));
    }

    #[test]
    fn internal_addresses_need_an_explicit_grant() {
        let names = list(&["http://localhost:8080", "https://*.example.com"]);
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!names.allows_address(Scheme::Http, 8080, ip), "{ip}");
        }
        assert!(names.allows_address(Scheme::Https, 443, "93.184.216.34".parse().unwrap()));
        assert!(names.allows_address(Scheme::Https, 443, "2606:2800::1".parse().unwrap()));
        let granted = list(&["http://localhost:8080", "http://127.0.0.1:8080"]);
        assert!(granted.allows_address(Scheme::Http, 8080, "127.0.0.1".parse().unwrap()));
        assert!(!granted.allows_address(Scheme::Http, 9090, "127.0.0.1".parse().unwrap()));
        assert!(!granted.allows_address(Scheme::Http, 8080, "127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (spec, why) in [
            ("api.example.com", "SCHEME://HOST"),
            ("ftp://x.com", "scheme `ftp`"),
            ("https://x.com/path", "not a path"),
            ("https://x.com:99999", "port `99999`"),
            ("https://", "host is empty"),
            ("https://*.", "wildcard"),
            ("https://ex ample.com", "not a host name"),
            ("*://*", "every upstream"),
        ] {
            let err = AllowList::parse(&[spec.to_string()]).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(why) && text.contains(spec), "{spec}: {text}");
        }
    }
}
