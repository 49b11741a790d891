//! An application: the handlers one server runs and the routes to them.
//! `wcluster serve handler.wasm` is an application of one handler that
//! every path reaches; `wcluster serve app.toml` (config/manifest.rs) names
//! several. Plain data: it travels to the workers in `Init` and `Load`, and
//! the primary's core rolls it as one value, so a worker swaps its whole
//! routing table at once.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// `crate::config::worker`, not `super::`: the fuzz target includes this file.
use crate::config::worker::{Grants, Reuse, SmokeCheck, Version};

/// What one handler may reach and how far a request into it may go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerSettings {
    pub grants: Grants,
    pub limits: HandlerLimits,
}

/// The limits a manifest may set per handler (the flags set the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerLimits {
    /// The request deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_body: u64,
    /// Linear memory one instance may grow to (at most --max-memory, the
    /// engine's, which bounds every handler).
    pub max_memory: u64,
    pub reuse: Reuse,
    pub max_instance_concurrency: u32,
    pub smoke: SmokeCheck,
}

/// Which requests reach a handler. `path` is `/` or starts with `/` and
/// has no trailing `/...`; `prefix` routes (`route = "/api/..."`) match
/// the path itself and everything below it, exact ones the path alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    /// Lowercase, without a port; None matches any host.
    pub host: Option<String>,
    pub path: String,
    pub prefix: bool,
}

impl Route {
    /// Every path, whatever the host: the one-handler mode's route.
    pub fn catch_all() -> Route {
        Route {
            host: None,
            path: "/".into(),
            prefix: true,
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}")?;
        }
        match (self.prefix, self.path.as_str()) {
            (true, "/") => f.write_str("/..."),
            (true, path) => write!(f, "{path}/..."),
            (false, path) => f.write_str(path),
        }
    }
}

/// A handler as a manifest (or the flags) describe it, before it is compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerPlan {
    /// Letters, digits, `-` and `_`: metrics labels and `wcluster reload
    /// NAME` use it.
    pub name: String,
    /// The handler file (absolute).
    pub source: PathBuf,
    pub routes: Vec<Route>,
    pub settings: HandlerSettings,
}

/// An application before its handlers are compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPlan {
    pub handlers: Vec<HandlerPlan>,
    /// Read from a manifest: guests are told where they were mounted.
    pub manifest: bool,
}

/// A handler compiled: its plan and the version workers load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerSpec {
    pub plan: HandlerPlan,
    pub version: Version,
}

impl HandlerSpec {
    pub fn name(&self) -> &str {
        &self.plan.name
    }
}

/// An application whose handlers are all compiled: what a worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// The one-handler mode: the handler's version; a manifest: a short
    /// hash over every handler's version, routes and settings. Two apps
    /// with one id serve alike.
    pub id: String,
    pub handlers: Vec<HandlerSpec>,
    pub manifest: bool,
}

impl App {
    pub fn new(handlers: Vec<HandlerSpec>, manifest: bool) -> App {
        let id = match handlers.as_slice() {
            [only] if !manifest => only.version.id.clone(),
            _ => {
                let mut h = Sha256::new();
                for spec in &handlers {
                    let text = serde_json::to_string(&(&spec.plan, &spec.version.id))
                        .expect("plain data serializes");
                    h.update(text.as_bytes());
                    h.update([0]);
                }
                let hex: String = h.finalize()[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("app-{hex}")
            }
        };
        App {
            id,
            handlers,
            manifest,
        }
    }

    pub fn handler(&self, name: &str) -> Option<&HandlerSpec> {
        self.handlers.iter().find(|h| h.name() == name)
    }

    /// This app with one handler's version replaced (a handler-only deploy
    /// or rollback); the other handlers and every route stay as they are.
    pub fn with_handler(&self, spec: HandlerSpec) -> App {
        let handlers = self
            .handlers
            .iter()
            .map(|h| {
                if h.name() == spec.name() {
                    spec.clone()
                } else {
                    h.clone()
                }
            })
            .collect();
        App::new(handlers, self.manifest)
    }

    /// `name version, name version, ...`: what status and logs show.
    pub fn versions(&self) -> String {
        self.handlers
            .iter()
            .map(|h| format!("{} {}", h.name(), h.version.id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::worker::{Reuse, SmokeCheck};

    fn spec(name: &str, version: &str) -> HandlerSpec {
        HandlerSpec {
            plan: HandlerPlan {
                name: name.into(),
                source: PathBuf::from(format!("/app/{name}.wasm")),
                routes: vec![Route::catch_all()],
                settings: HandlerSettings {
                    grants: Grants::default(),
                    limits: HandlerLimits {
                        timeout: Duration::from_secs(30),
                        max_body: 1024,
                        max_memory: 1 << 20,
                        reuse: Reuse::Default,
                        max_instance_concurrency: 1,
                        smoke: SmokeCheck {
                            path: "/".into(),
                            timeout: Duration::from_secs(10),
                        },
                    },
                },
            },
            version: Version {
                artifact: PathBuf::from(format!("/cache/{version}")),
                id: version.into(),
                digest: format!("d-{version}"),
            },
        }
    }

    #[test]
    fn one_handler_is_named_by_its_version_and_a_manifest_by_all_it_holds() {
        assert_eq!(App::new(vec![spec("main", "abc")], false).id, "abc");
        let app = App::new(vec![spec("a", "v1"), spec("b", "v1")], true);
        assert!(app.id.starts_with("app-"), "{}", app.id);
        assert_eq!(app, App::new(vec![spec("a", "v1"), spec("b", "v1")], true));
        // A version, a name or a route changes the id.
        let other = App::new(vec![spec("a", "v2"), spec("b", "v1")], true);
        assert_ne!(app.id, other.id);
        let renamed = App::new(vec![spec("a", "v1"), spec("c", "v1")], true);
        assert_ne!(app.id, renamed.id);
        let mut routed = spec("b", "v1");
        routed.plan.routes[0].path = "/b".into();
        assert_ne!(app.id, App::new(vec![spec("a", "v1"), routed], true).id);
    }

    #[test]
    fn with_handler_replaces_that_handler_alone() {
        let app = App::new(vec![spec("a", "v1"), spec("b", "v1")], true);
        let next = app.with_handler(spec("b", "v2"));
        assert_eq!(next.handler("a"), app.handler("a"));
        assert_eq!(next.handler("b").unwrap().version.id, "v2");
        assert_eq!(next.versions(), "a v1, b v2");
        assert_eq!(next.with_handler(spec("b", "v1")), app);
    }

    #[test]
    fn routes_print_as_a_manifest_writes_them() {
        let r = |host: Option<&str>, path: &str, prefix| Route {
            host: host.map(str::to_string),
            path: path.into(),
            prefix,
        };
        assert_eq!(r(None, "/", true).to_string(), "/...");
        assert_eq!(r(None, "/api", true).to_string(), "/api/...");
        assert_eq!(r(None, "/health", false).to_string(), "/health");
        assert_eq!(r(Some("a.example"), "/", true).to_string(), "a.example/...");
    }
}
