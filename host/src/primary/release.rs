//! What the core rolls: an application whose handlers are all compiled.
//! Built here from the handler file or the manifest (a compile job), or by
//! the core itself from the live one (a rollback of one handler).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::app::{App, AppPlan, HandlerPlan, HandlerSpec, Route};
use crate::config::{Config, Source, manifest};
use crate::runtime::artifact;

/// One application version, as the core rolls it.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub app: App,
    /// The app's id: what workers report and logs show.
    pub version: String,
    /// The artifacts' digests: a release with the same version and other
    /// digests had an artifact rebuilt.
    pub digest: String,
    /// Whether building it compiled anything (false: all from the cache).
    pub compiled: bool,
    pub compile_time: Duration,
}

impl Release {
    pub fn new(app: App, compiled: bool, compile_time: Duration) -> Release {
        let digest = app
            .handlers
            .iter()
            .map(|h| h.version.digest.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Release {
            version: app.id.clone(),
            app,
            digest,
            compiled,
            compile_time,
        }
    }

    /// The live release with one handler put back on an earlier version;
    /// its routes and settings stay as they are now.
    pub fn with_version(&self, name: &str, version: crate::config::Version) -> Option<Release> {
        let mut spec = self.app.handler(name)?.clone();
        spec.version = version;
        Some(Release::new(
            self.app.with_handler(spec),
            false,
            Duration::ZERO,
        ))
    }
}

/// What a compile job reads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The handler file, or the manifest and every handler it names.
    All,
    /// Only these handlers' files; the manifest as the live release has it.
    Handlers(BTreeSet<String>),
}

impl Scope {
    pub fn handler(name: &str) -> Scope {
        Scope::Handlers(BTreeSet::from([name.to_string()]))
    }

    /// Both triggers in one job.
    pub fn merge(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Handlers(mut a), Scope::Handlers(b)) => {
                a.extend(b);
                Scope::Handlers(a)
            }
            _ => Scope::All,
        }
    }
}

/// The files whose changes deploy, with what a change to each reads
/// again: the one handler file; or the manifest, each handler file of the
/// live app (that handler alone), and each file the manifest on disk names
/// that the live app does not have under that name (a manifest not live
/// yet, perhaps waiting for that very file: everything).
pub fn watched(config: &Config, live: &App) -> Vec<(PathBuf, Scope)> {
    let path = match &config.source {
        Source::Handler(path) => return vec![(path.clone(), Scope::All)],
        Source::Manifest(path) => path,
    };
    let mut files = vec![(path.clone(), Scope::All)];
    files.extend(
        live.handlers
            .iter()
            .map(|h| (h.plan.source.clone(), Scope::handler(h.name()))),
    );
    // A manifest that cannot be read names nothing more; its own change
    // reads everything anyway.
    let on_disk =
        manifest::sources(path, &config.defaults, config.max_manifest_size).unwrap_or_default();
    for (name, source) in on_disk {
        if live.handler(&name).is_none_or(|h| h.plan.source != source) {
            files.push((source, Scope::All));
        }
    }
    files
}

/// Compiles what `scope` names (the cache answers for files that did not
/// change) into a release; `base` is the live app, for `Scope::Handlers`.
pub async fn build(config: &Config, scope: &Scope, base: Option<&App>) -> Result<Release> {
    let plans: Vec<(HandlerPlan, Option<&HandlerSpec>)> = match (scope, base) {
        (Scope::Handlers(names), Some(base)) => base
            .handlers
            .iter()
            .map(|h| {
                let keep = (!names.contains(h.name())).then_some(h);
                (h.plan.clone(), keep)
            })
            .collect(),
        _ => plan(config)?
            .handlers
            .into_iter()
            .map(|p| (p, None))
            .collect(),
    };
    let manifest = matches!(config.source, Source::Manifest(_));
    let (mut compiled, mut compile_time) = (false, Duration::ZERO);
    let mut handlers = Vec::with_capacity(plans.len());
    for (plan, keep) in plans {
        if let Some(spec) = keep {
            handlers.push(spec.clone());
            continue;
        }
        let artifact = artifact::prepare(
            &plan.source,
            &config.cache_dir,
            &config.engine,
            &config.compile,
        )
        .await
        .with_context(|| {
            if manifest {
                format!("handler `{}` ({})", plan.name, plan.source.display())
            } else {
                format!("handler `{}`", plan.source.display())
            }
        })?;
        compiled |= artifact.compiled;
        compile_time += artifact.compile_time;
        handlers.push(HandlerSpec {
            version: artifact.version(),
            plan,
        });
    }
    Ok(Release::new(
        App::new(handlers, manifest),
        compiled,
        compile_time,
    ))
}

/// The plan of the application: the one handler with the flags' settings,
/// or the manifest read again, each handler's grants checked as at start.
fn plan(config: &Config) -> Result<AppPlan> {
    let plan = match &config.source {
        Source::Handler(path) => AppPlan {
            handlers: vec![HandlerPlan {
                name: ONE_HANDLER.into(),
                source: path.clone(),
                routes: vec![Route::catch_all()],
                settings: config.defaults.clone(),
            }],
            manifest: false,
        },
        Source::Manifest(path) => {
            let m = manifest::load(path, &config.defaults, config.max_manifest_size)?;
            if m.server != config.manifest_server {
                tracing::warn!(
                    "{}: [server] changed; its settings take effect at the next start \
                     (routes, handlers and their settings deploy now)",
                    path.display()
                );
            }
            for h in &m.plan.handlers {
                crate::runtime::capabilities::check(&h.settings.grants)
                    .with_context(|| format!("{}: component `{}`", path.display(), h.name))?;
            }
            m.plan
        }
    };
    Ok(plan)
}

/// The name of the handler in the one-handler mode (metrics, status).
pub const ONE_HANDLER: &str = "main";
