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
//! private, link-local, unspecified or otherwise not public ([`INTERNAL`])
//! is refused unless a pattern names that address or its range explicitly.
//!
//! Hence a pattern may not be broader than the operator can mean: a host of
//! `*` (every upstream), or a range that holds internal addresses along with
//! public ones (`0.0.0.0/0`, `::/0`, `100.0.0.0/8`), is refused whatever its
//! scheme and port. A range wholly inside the internal ones (`10.0.0.0/8`)
//! is the explicit grant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use anyhow::{Result, bail, ensure};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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
    match &host {
        Host::AnyName => bail!("a host of `*` would allow every upstream: name the hosts"),
        Host::Net(net) => {
            if let Some(internal) = mixed(net) {
                bail!(
                    "the range {net} would allow internal addresses ({}, {}) along with \
                     public ones: grant internal ranges in patterns of their own",
                    internal.net,
                    internal.what
                );
            }
            let unspecified: IpAddr = match net {
                IpNet::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpNet::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            // Connecting to 0.0.0.0 or :: reaches this machine's own
            // services, whatever the pattern seemed to mean.
            ensure!(
                !net.contains(&unspecified),
                "{net} holds the unspecified address {unspecified}, which connects to this \
                 machine itself: name 127.0.0.1 or ::1 if that is meant"
            );
        }
        Host::Name(_) | Host::Subdomains(_) => {}
    }
    Ok(Pattern { scheme, host, port })
}

/// When `net` holds both internal and public addresses, an internal range
/// inside it (the first of [`INTERNAL`], so loopback when there is one).
fn mixed(net: &IpNet) -> Option<&'static Internal> {
    if all_internal(net) {
        return None;
    }
    INTERNAL.iter().find(|r| net.contains(&r.net))
}

/// Whether every address of `net` is internal. CIDR ranges are nested or
/// disjoint, so `net` is either inside one internal range, or disjoint from
/// all of them (all public), or holds some: then each half is judged.
fn all_internal(net: &IpNet) -> bool {
    let mut holds_some = false;
    for r in INTERNAL.iter() {
        if r.net.contains(net) {
            return true;
        }
        holds_some |= net.contains(&r.net);
    }
    holds_some
        && net.prefix_len() < net.max_prefix_len()
        && net
            .subnets(net.prefix_len() + 1)
            .is_ok_and(|mut halves| halves.all(|half| all_internal(&half)))
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

/// Addresses on the public internet: those in no [`INTERNAL`] range.
fn is_public(ip: IpAddr) -> bool {
    !INTERNAL.iter().any(|r| r.net.contains(&ip))
}

/// A range that is the operator's own network or nowhere, and what it is.
struct Internal {
    net: IpNet,
    what: String,
}

/// IPv4 ranges that are not the public internet. Loopback first: the range
/// an over-broad pattern's error names when it holds it.
const INTERNAL_V4: [(&str, &str); 14] = [
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/8", "this network, unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, broadcast"),
];

/// IPv6 ranges that are not the public internet, besides those that embed
/// an internal IPv4 address.
const INTERNAL_V6: [(&str, &str); 8] = [
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("64:ff9b::/32", "NAT64"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local, deprecated"),
    ("ff00::/8", "multicast"),
];

/// Every internal range: the tables above, and each internal IPv4 range as
/// IPv6 embeds it (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`,
/// 6to4 `2002::/16`), so an embedded address is judged by its IPv4 one.
static INTERNAL: LazyLock<Vec<Internal>> = LazyLock::new(|| {
    let mut table = Vec::new();
    let mut push = |net: IpNet, what: String| table.push(Internal { net, what });
    for (net, what) in INTERNAL_V4.into_iter().chain(INTERNAL_V6) {
        push(net.parse().expect("a range"), what.to_string());
    }
    for (net, what) in INTERNAL_V4 {
        let net: Ipv4Net = net.parse().expect("a range");
        let (bits, len) = (u128::from(net.addr().to_bits()), net.prefix_len());
        for (embedded, len, how) in [
            ((0xffff << 32) | bits, 96 + len, "IPv4-mapped"),
            (bits, 96 + len, "IPv4-compatible"),
            ((0x2002 << 112) | (bits << 80), 16 + len, "6to4"),
        ] {
            let net = Ipv6Net::new(Ipv6Addr::from_bits(embedded), len).expect("a prefix");
            push(net.into(), format!("{what}, {how}"));
        }
    }
    table
});

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
            ("*://*:*", "every upstream"),
            ("http://*:*", "every upstream"),
            ("https://*", "every upstream"),
            ("http://*:8080", "every upstream"),
            ("http://0.0.0.0/0:*", "127.0.0.0/8"),
            ("*://0.0.0.0/0", "127.0.0.0/8"),
            ("http://0.0.0.0/1:*", "127.0.0.0/8"),
            ("http://::/0", "::1/128"),
            ("http://100.0.0.0/8", "100.64.0.0/10"),
            ("http://::ffff:0:0/96", "IPv4-mapped"),
            ("http://::/96", "::1/128, loopback"),
            ("http://2002::/16", "6to4"),
            ("http://0.0.0.0:8080", "unspecified address 0.0.0.0"),
            ("http://[::]:8080", "unspecified address ::"),
            ("*://0.0.0.0/8", "connects to this machine itself"),
        ] {
            let err = AllowList::parse(&[spec.to_string()]).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(why) && text.contains(spec), "{spec}: {text}");
        }
    }

    #[test]
    fn ranges_all_public_or_all_internal_are_explicit_grants() {
        let l = list(&[
            "http://10.0.0.0/8:*",
            "http://93.184.216.0/24",
            "http://fe80::/9",
            "http://::ffff:127.0.0.0/104",
            "http://224.0.0.0/3",
            "http://[::1]:8080",
        ]);
        assert!(l.allows_address(Scheme::Http, 9000, "10.9.8.7".parse().unwrap()));
        assert!(l.allows_address(Scheme::Http, 80, "fec0::1".parse().unwrap()));
        assert!(l.allows_url(Scheme::Http, "93.184.216.34", 80));
    }

    #[test]
    fn embedded_ipv4_and_site_local_addresses_are_internal() {
        let names = list(&["https://*.example.com"]);
        for ip in [
            // IPv4-compatible (::/96), judged by the IPv4 address.
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            // IPv4-mapped.
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            // 6to4 (2002::/16): 127.0.0.1, 10.0.0.1, 192.168.1.1.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            // Site-local (deprecated).
            "fec0::1",
            "feff::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!names.allows_address(Scheme::Https, 443, ip), "{ip}");
        }
        for ip in [
            "::93.184.216.34",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(names.allows_address(Scheme::Https, 443, ip), "{ip}");
        }
        // An explicit grant of the embedded range still works.
        let granted = list(&["http://[::127.0.0.1]:8080"]);
        assert!(granted.allows_address(Scheme::Http, 8080, "::127.0.0.1".parse().unwrap()));
    }
}
