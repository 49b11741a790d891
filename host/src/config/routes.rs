//! The routing table: which handler a request reaches. Pure, no I/O.
//!
//! Routes are written in Spin's manifest syntax (`/...` catch-all,
//! `/api/...` prefix, `/exact`), optionally for one host. A lookup runs on
//! every request, so it never scans the routes: it probes hash maps with
//! slices of the request path, longest first, and allocates nothing unless
//! the Host header needs lowercasing.
//!
//! Mounts follow CGI (RFC 3875) and WSGI: SCRIPT_NAME is the mount and
//! never ends with `/` (the root is ""), PATH_INFO is the rest, and
//! `mount + path_info == path` always holds.

use std::borrow::Cow;
use std::collections::HashMap;

use super::app::Route;

/// The longest route accepted: a route is written by hand, so anything
/// longer is a mistake, and it bounds what a lookup probes.
const MAX_ROUTE_LEN: usize = 1024;

/// A DNS name is at most 253 characters.
const MAX_HOST_LEN: usize = 253;

/// A route as a manifest writes it (`/...`, `/api/...`, `/exact`), for
/// `host` (any host when None).
pub fn parse_route(text: &str, host: Option<&str>) -> Result<Route, String> {
    check_route_text(text)?;
    let (path, prefix) = match text.strip_suffix("/...") {
        Some("") => ("/", true),
        Some(base) => (base, true),
        // Spin treats `/a/` as `/a`; only the root keeps its slash.
        None if text.len() > 1 => (text.strip_suffix('/').unwrap_or(text), false),
        None => (text, false),
    };
    check_segments(text, path)?;
    let host = host.map(parse_host).transpose()?;
    Ok(Route {
        host,
        path: path.to_string(),
        prefix,
    })
}

/// What every route must be, before its segments are looked at.
fn check_route_text(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the route is empty; write `/...` to match every path".into());
    }
    if text.len() > MAX_ROUTE_LEN {
        return Err(format!(
            "the route is {} bytes long, over the limit of {MAX_ROUTE_LEN}",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "route `{}`: {c:?} is not allowed (only printable ASCII without spaces; \
             percent-encode anything else)",
            text.escape_default()
        ));
    }
    if !text.starts_with('/') {
        return Err(format!("route `{text}` must start with `/`"));
    }
    // Checked on the text, before a trailing `/` is dropped: `//` must
    // not become the root.
    if text.contains("//") {
        return Err(format!(
            "route `{text}`: empty segment (`//`); no normalized path has one"
        ));
    }
    // The request path a route is matched against never carries these.
    if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "route `{text}`: `{c}` is not allowed; a route matches the path only"
        ));
    }
    Ok(())
}

/// The segments of `path` (the route without its `/...`), which come from
/// `text` (for messages).
fn check_segments(text: &str, path: &str) -> Result<(), String> {
    if path == "/" {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        check_segment(text, segment)?;
    }
    Ok(())
}

fn check_segment(text: &str, segment: &str) -> Result<(), String> {
    match segment {
        "" => Err(format!(
            "route `{text}`: empty segment (`//`); no normalized path has one"
        )),
        "..." => Err(format!(
            "route `{text}`: `...` may only end a route (`/api/...`)"
        )),
        "." | ".." => Err(format!(
            "route `{text}`: `{segment}` segments are not allowed; write the path they stand for"
        )),
        s if s.starts_with(':') => Err(format!(
            "route `{text}`: parameter segments (`{s}`) are not supported; \
             use a prefix route (`/users/...`) and read the rest of the path"
        )),
        // Literal `*` would surprise anyone who meant Spin's wildcard or a glob.
        s if s.contains('*') => Err(format!(
            "route `{text}`: `*` is not supported; use a prefix route (`/files/...`)"
        )),
        _ => Ok(()),
    }
}

/// A route's host as a manifest writes it: lowercased, one trailing dot
/// dropped. Ports and wildcards are refused: a route matches any port.
pub fn parse_host(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(format!("host `{host}` is empty"));
    }
    if name.contains(':') {
        return Err(format!(
            "host `{host}`: leave out the port; a route matches its host on any port"
        ));
    }
    if name.contains('*') {
        return Err(format!(
            "host `{host}`: wildcards are not supported; name each host"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "host `{}`: {c:?} is not allowed (letters, digits, `-` and `.`; \
             write an internationalized name in its xn-- form)",
            host.escape_default()
        ));
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "host `{}...` is longer than {MAX_HOST_LEN} characters",
            name.get(..32).unwrap_or(name)
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "host `{host}` has an empty label (`..` or a leading `.`)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// A request's Host header or :authority as a route's host is written:
/// without its port and trailing dot, lowercase. Borrowed unless it has
/// uppercase letters. None when no route could match it (an IPv6 literal).
fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    if host.starts_with('[') {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// The handler a request reaches and where that handler is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub handler: usize,
    /// CGI's SCRIPT_NAME: the route's path for a prefix route, the whole
    /// path for an exact one; never ends with `/`, so the root is "".
    pub mount: &'a str,
}

impl Match<'_> {
    /// CGI's PATH_INFO: what follows the mount in `path` (the path this
    /// match was looked up with), so that `mount + path_info == path`.
    pub fn path_info<'p>(&self, path: &'p str) -> &'p str {
        path.get(self.mount.len()..).unwrap_or("")
    }
}

/// The routes of one host class (one host, or every host).
#[derive(Debug, Clone, Default)]
struct Table {
    exact: HashMap<String, usize>,
    /// Keyed by the route's path without `/...`; the catch-all is apart.
    prefix: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl Table {
    /// Whether the slot for `route` was free (it is taken now).
    fn insert(&mut self, route: &Route, handler: usize) -> Result<(), usize> {
        let slot = match (route.prefix, route.path.as_str()) {
            (true, "/") => return claim(&mut self.catch_all, handler),
            (true, path) => self.prefix.entry(path.to_string()),
            (false, path) => self.exact.entry(path.to_string()),
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(e) => Err(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(handler);
                Ok(())
            }
        }
    }

    /// Longest path first; at one length an exact route before a prefix.
    fn lookup(&self, path: &str) -> Option<Match<'_>> {
        if let Some((key, &handler)) = self.exact.get_key_value(path) {
            let mount = if key == "/" { "" } else { key.as_str() };
            return Some(Match { handler, mount });
        }
        if !self.prefix.is_empty()
            && let Some(m) = self.lookup_prefix(path)
        {
            return Some(m);
        }
        self.catch_all.map(|handler| Match { handler, mount: "" })
    }

    /// The path itself, then each part of it that ends before a `/`.
    fn lookup_prefix(&self, path: &str) -> Option<Match<'_>> {
        let mut end = path.len();
        while end > 0 {
            if let Some((key, &handler)) = self.prefix.get_key_value(&path[..end]) {
                return Some(Match {
                    handler,
                    mount: key.as_str(),
                });
            }
            end = path[..end].rfind('/')?;
        }
        None
    }
}

fn claim(slot: &mut Option<usize>, handler: usize) -> Result<(), usize> {
    match *slot {
        Some(other) => Err(other),
        None => {
            *slot = Some(handler);
            Ok(())
        }
    }
}

/// Which handler each request reaches: built once per application, looked
/// up on every request.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Routes for one host (keys lowercase, without port or trailing dot).
    hosts: HashMap<String, Table>,
    /// Routes for any host.
    any: Table,
}

impl Router {
    /// Every request reaches `handler` (tests: the one-handler mode builds
    /// its catch-all route like any other).
    #[cfg(test)]
    fn single(handler: usize) -> Router {
        let mut router = Router::default();
        router.any.catch_all = Some(handler);
        router
    }

    /// The table for `routes` (each with its handler's index into `names`);
    /// two claims on one route are refused, naming both handlers.
    pub fn build(routes: &[(Route, usize)], names: &[&str]) -> Result<Router, String> {
        let name = |i: usize| names.get(i).copied().unwrap_or("<unnamed>");
        let mut router = Router::default();
        for (route, handler) in routes {
            check_built_route(route)?;
            let table = match &route.host {
                Some(host) => router.hosts.entry(host.clone()).or_default(),
                None => &mut router.any,
            };
            if let Err(first) = table.insert(route, *handler) {
                return Err(if first == *handler {
                    format!("route `{route}` is claimed twice by `{}`", name(first))
                } else {
                    format!(
                        "route `{route}` is claimed by both `{}` and `{}`",
                        name(first),
                        name(*handler)
                    )
                });
            }
        }
        Ok(router)
    }

    /// The handler `path` on `host` reaches: a route for that host beats
    /// every route for any host; then the longest path; then exact before
    /// prefix. `host` is the Host header or :authority as received.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Match<'_>> {
        if let Some(m) = self.lookup_host(host, path) {
            return Some(m);
        }
        self.any.lookup(path)
    }

    fn lookup_host(&self, host: Option<&str>, path: &str) -> Option<Match<'_>> {
        if self.hosts.is_empty() {
            return None;
        }
        let host = normalize_host(host?)?;
        self.hosts.get(host.as_ref())?.lookup(path)
    }
}

/// A route built by hand rather than by [`parse_route`] could otherwise
/// never match, silently.
fn check_built_route(route: &Route) -> Result<(), String> {
    let path = &route.path;
    let shaped = path == "/" || (path.starts_with('/') && !path.ends_with('/'));
    if !shaped {
        return Err(format!(
            "route path `{}` must be `/` or start with `/` and not end with it",
            path.escape_default()
        ));
    }
    match &route.host {
        Some(host) if parse_host(host).as_deref() != Ok(host.as_str()) => Err(format!(
            "route host `{}` is not a lowercase host name without port",
            host.escape_default()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(text: &str) -> Route {
        parse_route(text, None).unwrap()
    }

    fn hosted(text: &str, host: &str) -> Route {
        parse_route(text, Some(host)).unwrap()
    }

    fn err(text: &str) -> String {
        parse_route(text, None).unwrap_err()
    }

    #[test]
    fn spin_syntax_parses() {
        assert_eq!(
            route("/..."),
            Route {
                host: None,
                path: "/".into(),
                prefix: true
            }
        );
        assert_eq!(
            route("/api/..."),
            Route {
                host: None,
                path: "/api".into(),
                prefix: true
            }
        );
        assert_eq!(
            route("/a/b/..."),
            Route {
                host: None,
                path: "/a/b".into(),
                prefix: true
            }
        );
        assert_eq!(
            route("/exact"),
            Route {
                host: None,
                path: "/exact".into(),
                prefix: false
            }
        );
        assert_eq!(
            route("/"),
            Route {
                host: None,
                path: "/".into(),
                prefix: false
            }
        );
    }

    #[test]
    fn a_trailing_slash_is_dropped_from_exact_routes() {
        assert_eq!(route("/a/").path, "/a");
        assert!(!route("/a/").prefix);
        assert_eq!(route("/a/b/").path, "/a/b");
    }

    #[test]
    fn bad_routes_say_why() {
        assert!(err("").contains("empty"));
        assert!(err("api").contains("must start with `/`"));
        assert!(err("/.../a").contains("`...` may only end"));
        assert!(err("/a/.../b").contains("`...` may only end"));
        assert!(err("/users/:id").contains("not supported"));
        assert!(err("/files/*").contains("`*` is not supported"));
        assert!(err("/a//b").contains("`//`"));
        assert!(err("//").contains("`//`"));
        assert!(err("/a//").contains("`//`"));
        assert!(err("/a/./b").contains("`.`"));
        assert!(err("/a/../b").contains("`..`"));
        assert!(err("/a b").contains("not allowed"));
        assert!(err("/caf\u{e9}").contains("not allowed"));
        assert!(err("/a\tb").contains("not allowed"));
        assert!(err("/a?b=1").contains("path only"));
        assert!(err(&format!("/{}", "a".repeat(1024))).contains("limit of 1024"));
        assert!(parse_route(&format!("/{}", "a".repeat(1023)), None).is_ok());
    }

    #[test]
    fn hosts_are_lowercased_and_checked() {
        assert_eq!(
            hosted("/...", "API.Example.COM.").host.as_deref(),
            Some("api.example.com")
        );
        let bad = |h: &str| parse_route("/...", Some(h)).unwrap_err();
        assert!(bad("").contains("empty"));
        assert!(bad(".").contains("empty"));
        assert!(bad("a.com:8080").contains("port"));
        assert!(bad("*.a.com").contains("wildcards"));
        assert!(bad("a_b.com").contains("not allowed"));
        assert!(bad("a..com").contains("empty label"));
        assert!(bad(&"a".repeat(300)).contains("longer than"));
    }

    fn router(routes: &[(Route, usize)]) -> Router {
        Router::build(routes, &["zero", "one", "two", "three"]).unwrap()
    }

    fn hit(r: &Router, host: Option<&str>, path: &str) -> Option<(usize, String)> {
        r.lookup(host, path)
            .map(|m| (m.handler, m.mount.to_string()))
    }

    #[test]
    fn a_prefix_matches_itself_and_below_but_not_beside() {
        let r = router(&[(route("/api/..."), 0)]);
        assert_eq!(hit(&r, None, "/api"), Some((0, "/api".into())));
        assert_eq!(hit(&r, None, "/api/"), Some((0, "/api".into())));
        assert_eq!(hit(&r, None, "/api/x/y"), Some((0, "/api".into())));
        assert_eq!(hit(&r, None, "/apix"), None);
        assert_eq!(hit(&r, None, "/"), None);
    }

    #[test]
    fn the_catch_all_matches_everything() {
        let r = router(&[(route("/..."), 1)]);
        for path in ["/", "/a", "/a/b/", "*", ""] {
            assert_eq!(hit(&r, None, path), Some((1, String::new())), "{path}");
        }
        assert_eq!(
            hit(&Router::single(3), Some("x.com"), "/q"),
            Some((3, String::new()))
        );
    }

    #[test]
    fn exact_matches_only_its_path() {
        let r = router(&[(route("/a"), 0), (route("/"), 1)]);
        assert_eq!(hit(&r, None, "/a"), Some((0, "/a".into())));
        assert_eq!(hit(&r, None, "/a/"), None);
        assert_eq!(hit(&r, None, "/a/b"), None);
        assert_eq!(hit(&r, None, "/"), Some((1, String::new())));
        assert_eq!(hit(&r, None, "/b"), None);
    }

    #[test]
    fn the_longest_path_wins_and_exact_beats_prefix() {
        let r = router(&[
            (route("/..."), 0),
            (route("/a/..."), 1),
            (route("/a/b/..."), 2),
            (route("/a/b"), 3),
        ]);
        assert_eq!(hit(&r, None, "/a/b"), Some((3, "/a/b".into())));
        assert_eq!(hit(&r, None, "/a/b/c"), Some((2, "/a/b".into())));
        assert_eq!(hit(&r, None, "/a/bc"), Some((1, "/a".into())));
        assert_eq!(hit(&r, None, "/x"), Some((0, String::new())));
    }

    #[test]
    fn a_host_route_beats_every_hostless_one() {
        let r = router(&[
            (route("/a/b"), 0),
            (hosted("/...", "x.com"), 1),
            (hosted("/c", "y.com"), 2),
        ]);
        assert_eq!(hit(&r, Some("x.com"), "/a/b"), Some((1, String::new())));
        assert_eq!(
            hit(&r, Some("X.COM.:8080"), "/a/b"),
            Some((1, String::new()))
        );
        assert_eq!(hit(&r, Some("y.com"), "/a/b"), Some((0, "/a/b".into())));
        assert_eq!(hit(&r, Some("y.com:1"), "/c"), Some((2, "/c".into())));
        assert_eq!(hit(&r, None, "/c"), None);
        assert_eq!(hit(&r, Some("[::1]:80"), "/a/b"), Some((0, "/a/b".into())));
    }

    #[test]
    fn lowercase_hosts_are_not_copied() {
        assert!(matches!(
            normalize_host("a.com:80"),
            Some(Cow::Borrowed("a.com"))
        ));
        assert!(matches!(
            normalize_host("a.com."),
            Some(Cow::Borrowed("a.com"))
        ));
        assert_eq!(normalize_host("A.com").as_deref(), Some("a.com"));
    }

    #[test]
    fn path_info_is_the_rest_after_the_mount() {
        let r = router(&[
            (route("/api/..."), 0),
            (route("/"), 1),
            (route("/x"), 2),
            (route("/..."), 3),
        ]);
        for path in ["/api", "/api/", "/api/v1/x", "/", "/x", "/y/z", "*"] {
            let m = r.lookup(None, path).unwrap();
            assert_eq!(format!("{}{}", m.mount, m.path_info(path)), path);
            assert!(!m.mount.ends_with('/'));
        }
        let m = r.lookup(None, "/api/v1").unwrap();
        assert_eq!(m.path_info("/api/v1"), "/v1");
        assert_eq!(r.lookup(None, "/").unwrap().path_info("/"), "/");
        assert_eq!(r.lookup(None, "/x").unwrap().path_info("/x"), "");
    }

    #[test]
    fn conflicts_name_both_handlers() {
        let names = ["api", "admin"];
        let e =
            Router::build(&[(route("/api/..."), 0), (route("/api/..."), 1)], &names).unwrap_err();
        assert_eq!(e, "route `/api/...` is claimed by both `api` and `admin`");
        let e = Router::build(&[(route("/"), 0), (route("/"), 0)], &names).unwrap_err();
        assert_eq!(e, "route `/` is claimed twice by `api`");
        let e = Router::build(&[(route("/..."), 1), (route("/..."), 0)], &names).unwrap_err();
        assert!(e.contains("both `admin` and `api`"), "{e}");
        let e = Router::build(
            &[(hosted("/a", "x.com"), 0), (hosted("/a", "X.com"), 1)],
            &names,
        )
        .unwrap_err();
        assert!(e.contains("x.com/a"), "{e}");
        // Exact and prefix on one path, or one route on two hosts, coexist.
        Router::build(
            &[
                (route("/a"), 0),
                (route("/a/..."), 1),
                (hosted("/a", "x.com"), 1),
            ],
            &names,
        )
        .unwrap();
    }

    #[test]
    fn hand_built_routes_are_checked() {
        let bad = Route {
            host: None,
            path: "/a/".into(),
            prefix: true,
        };
        assert!(Router::build(&[(bad, 0)], &["a"]).is_err());
        let bad = Route {
            host: Some("A.com".into()),
            path: "/".into(),
            prefix: true,
        };
        assert!(Router::build(&[(bad, 0)], &["a"]).is_err());
    }

    /// What `lookup` must answer, by the rules, over every route.
    fn reference(routes: &[(Route, usize)], host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.and_then(normalize_host);
        routes
            .iter()
            .filter(|(r, _)| match &r.host {
                Some(h) => host.as_deref() == Some(h.as_str()),
                None => true,
            })
            .filter(|(r, _)| {
                if r.prefix {
                    r.path == "/"
                        || path == r.path
                        || path
                            .strip_prefix(r.path.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                } else {
                    path == r.path
                }
            })
            .max_by_key(|(r, _)| (r.host.is_some(), r.path.len(), !r.prefix))
            .map(|(_, i)| *i)
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "ab"])
    }

    fn any_route() -> impl Strategy<Value = Route> {
        (
            prop::collection::vec(segment(), 0..4),
            any::<bool>(),
            prop::sample::select(vec![None, Some("x.com"), Some("y.com")]),
        )
            .prop_map(|(segments, prefix, host)| Route {
                host: host.map(String::from),
                path: format!("/{}", segments.join("/")),
                prefix,
            })
    }

    fn request_path() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 0..5), any::<bool>()).prop_map(|(segments, slash)| {
            let path = format!("/{}", segments.join("/"));
            if slash && path != "/" {
                format!("{path}/")
            } else {
                path
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn lookup_agrees_with_the_rules(
            candidates in prop::collection::vec(any_route(), 0..12),
            requests in prop::collection::vec(
                (request_path(), prop::sample::select(vec![None, Some("x.com"), Some("Y.com:80"), Some("z.com")])),
                1..20,
            ),
        ) {
            // Duplicates are refused by build; keep the first claim.
            let mut routes: Vec<(Route, usize)> = Vec::new();
            for (i, r) in candidates.into_iter().enumerate() {
                if !routes.iter().any(|(seen, _)| *seen == r) {
                    routes.push((r, i));
                }
            }
            let names: Vec<String> = (0..12).map(|i| format!("h{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let router = Router::build(&routes, &names).unwrap();
            for (path, host) in &requests {
                let got = router.lookup(*host, path);
                prop_assert_eq!(got.map(|m| m.handler), reference(&routes, *host, path));
                if let Some(m) = got {
                    prop_assert_eq!(format!("{}{}", m.mount, m.path_info(path)), path.clone());
                }
            }
        }
    }
}
