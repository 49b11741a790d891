//! The application manifest (`wcluster serve app.toml`): Spin's manifest
//! format (`spin_manifest_version = 2`), so a Spin user reads it without a
//! manual, plus wcluster's own `[server]` table, per-component limits and
//! an optional `host` on each trigger.
//!
//! Every error names the file, the line and the field: fields are read as
//! `toml::Spanned` values and checked here rather than by serde, whose
//! messages could not say where the value was.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytesize::ByteSize;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use toml::{Spanned, Value};

use super::app::{AppPlan, HandlerLimits, HandlerPlan, HandlerSettings, Route};
use super::routes::{self, Router};
use super::{DirGrant, Reuse};

/// A manifest read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub plan: AppPlan,
    /// `[server]` as command-line flags (`("--max-workers", "4")`; a bare
    /// switch has an empty value), in manifest order. Flags given on the
    /// command line override them.
    pub server: Vec<(String, String)>,
}

/// Reads the manifest at `path` (absolute; at most `max_size` bytes) and
/// checks that the files and directories it names exist. `defaults` are the
/// settings the command-line flags give every handler.
pub fn load(path: &Path, defaults: &HandlerSettings, max_size: u64) -> Result<Manifest> {
    let text = read(path, max_size)?;
    let parsed = parse_with(&text, path, manifest_dir(path), defaults, &process_env)?;
    for check in &parsed.checks {
        check.run()?;
    }
    Ok(parsed.manifest)
}

/// The handler files the manifest at `path` names, by component, whether
/// or not they exist yet: what the primary watches besides the live ones.
pub fn sources(
    path: &Path,
    defaults: &HandlerSettings,
    max_size: u64,
) -> Result<Vec<(String, PathBuf)>> {
    let text = read(path, max_size)?;
    let parsed = parse_with(&text, path, manifest_dir(path), defaults, &process_env)?;
    Ok(parsed
        .manifest
        .plan
        .handlers
        .into_iter()
        .map(|h| (h.name, h.source))
        .collect())
}

/// Only `[server]`'s flags from the manifest at `path` (the whole file is
/// still checked for syntax): the flags decide the defaults [`load`] needs
/// (`max_memory` among them), so they are read first.
pub fn load_server(path: &Path, max_size: u64) -> Result<Vec<(String, String)>> {
    let text = read(path, max_size)?;
    parse_server(&text, path, manifest_dir(path))
}

/// [`load_server`] on text already read.
pub fn parse_server(text: &str, file: &Path, dir: &Path) -> Result<Vec<(String, String)>> {
    let doc = Doc { text, file };
    let raw = doc.deserialize()?;
    server_flags(&doc, dir, raw.server.unwrap_or_default())
}

fn read(path: &Path, max_size: u64) -> Result<String> {
    let bytes = crate::files::read_small(path, "manifest", max_size, "--max-config-size")?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "manifest `{}`: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn manifest_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// How a required variable's value is found: by the environment variable's
/// name, Err when it is set but unusable.
type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

fn process_env(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not UTF-8")),
    }
}

/// The manifest and the paths [`load`] must find on disk.
struct Parsed {
    manifest: Manifest,
    checks: Vec<PathCheck>,
}

fn parse_with(
    text: &str,
    file: &Path,
    dir: &Path,
    defaults: &HandlerSettings,
    env: EnvLookup<'_>,
) -> Result<Parsed> {
    let doc = Doc { text, file };
    let raw = doc.deserialize()?;
    check_version(&doc, raw.spin_manifest_version.as_ref())?;
    let variables = resolve_variables(&doc, raw.variables, env)?;
    let components = in_manifest_order(raw.component);
    if components.is_empty() {
        bail!(
            "{}: no [component.NAME]: an application needs at least one handler",
            file.display()
        );
    }
    let names = component_names(&doc, &components)?;
    let triggers = raw.trigger.unwrap_or_default();
    refuse_other_triggers(&doc, &triggers.other)?;
    let routes = trigger_routes(&doc, triggers.http, &names)?;
    let mut handlers = Vec::with_capacity(components.len());
    let mut checks = Vec::new();
    for (index, (name, component)) in components.into_iter().enumerate() {
        let own: Vec<Route> = routes
            .iter()
            .filter(|r| r.handler == index)
            .map(|r| r.route.clone())
            .collect();
        if own.is_empty() {
            return Err(doc.err(
                name.span(),
                format_args!(
                    "component `{}` has no [[trigger.http]] naming it: no request would reach it",
                    name.get_ref()
                ),
            ));
        }
        let at = At {
            doc: &doc,
            component: name.get_ref(),
        };
        let (settings, source) = handler(&at, dir, component, defaults, &variables, &mut checks)?;
        handlers.push(HandlerPlan {
            name: name.into_inner(),
            source,
            routes: own,
            settings,
        });
    }
    check_router(&doc, &routes, &handlers)?;
    let server = server_flags(&doc, dir, raw.server.unwrap_or_default())?;
    Ok(Parsed {
        manifest: Manifest {
            plan: AppPlan {
                handlers,
                manifest: true,
            },
            server,
        },
        checks,
    })
}

/// The text being read, for locating errors.
struct Doc<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Doc<'_> {
    fn deserialize(&self) -> Result<RawManifest> {
        toml::from_str(self.text).map_err(|e| {
            // toml's messages may span lines; one line reads better after `file:line:`.
            let message = e.message().trim().replace('\n', "; ");
            match e.span() {
                Some(span) => self.err(span, message),
                None => anyhow!("{}: {message}", self.file.display()),
            }
        })
    }

    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        before.iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// `file:line` of a span's start.
    fn at(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.file.display(), self.line(span.start))
    }

    fn err(&self, span: Range<usize>, why: impl Display) -> anyhow::Error {
        anyhow!("{}: {why}", self.at(span))
    }
}

/// A component being read: errors name it and the field.
struct At<'a> {
    doc: &'a Doc<'a>,
    component: &'a str,
}

impl At<'_> {
    fn err(&self, field: &str, span: Range<usize>, why: impl Display) -> anyhow::Error {
        anyhow!(
            "{}: component `{}`, `{field}`: {why}",
            self.doc.at(span),
            self.component
        )
    }
}

// ---------------------------------------------------------------------------
// The document as serde reads it. Fields whose type or meaning needs
// checking are `Spanned<Value>` so the check can name the line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: Option<Spanned<Value>>,
    // Spin's metadata: accepted so a Spin manifest reads, used nowhere.
    #[allow(dead_code)]
    application: Option<RawApplication>,
    server: Option<BTreeMap<Spanned<String>, Spanned<Value>>>,
    trigger: Option<Triggers>,
    #[serde(default)]
    component: BTreeMap<Spanned<String>, RawComponent>,
    #[serde(default)]
    variables: BTreeMap<Spanned<String>, RawVariable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawApplication {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    authors: Option<Vec<String>>,
}

/// `[[trigger.http]]` entries, and the names of any other trigger types
/// (read apart so that they can be refused by name, not as unknown fields).
#[derive(Default)]
struct Triggers {
    http: Vec<RawTrigger>,
    other: Vec<Spanned<String>>,
}

impl<'de> Deserialize<'de> for Triggers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TriggersVisitor)
    }
}

struct TriggersVisitor;

impl<'de> Visitor<'de> for TriggersVisitor {
    type Value = Triggers;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table of trigger types ([[trigger.http]])")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Triggers, A::Error> {
        let mut triggers = Triggers::default();
        while let Some(kind) = map.next_key::<Spanned<String>>()? {
            if kind.get_ref() == "http" {
                triggers.http = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
                triggers.other.push(kind);
            }
        }
        Ok(triggers)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    route: Spanned<Value>,
    component: Spanned<Value>,
    /// wcluster's extension: the route answers this host only.
    host: Option<Spanned<String>>,
    /// Spin's optional trigger id: accepted, unused.
    #[allow(dead_code)]
    id: Option<String>,
    executor: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: Spanned<Value>,
    /// Accepted for Spin's sake, unused.
    #[allow(dead_code)]
    description: Option<String>,
    /// Spin's build instructions: any table, unused.
    #[allow(dead_code)]
    build: Option<Value>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    key_value_stores: Vec<Spanned<String>>,
    #[serde(default)]
    environment: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<Value>>,
    #[serde(default)]
    variables: BTreeMap<Spanned<String>, Spanned<String>>,
    request_timeout: Option<Spanned<Value>>,
    max_body: Option<Spanned<Value>>,
    max_memory: Option<Spanned<Value>>,
    reuse_instances: Option<Spanned<Value>>,
    max_instance_concurrency: Option<Spanned<Value>>,
    smoke_path: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    /// Spin hides secret values from its logs; wcluster never logs
    /// wasi:config values, so there is nothing more to do.
    #[allow(dead_code)]
    #[serde(default)]
    secret: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: String,
    destination: String,
}

/// Map keys come back sorted by name; the manifest's order is their
/// position in the text.
fn in_manifest_order<T>(map: BTreeMap<Spanned<String>, T>) -> Vec<(Spanned<String>, T)> {
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn check_version(doc: &Doc<'_>, version: Option<&Spanned<Value>>) -> Result<()> {
    match version {
        None => Ok(()),
        Some(v) if v.get_ref().as_integer() == Some(2) => Ok(()),
        Some(v) => Err(doc.err(
            v.span(),
            format_args!(
                "`spin_manifest_version` is {}: wcluster reads Spin's manifest version 2 only",
                v.get_ref()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------
// Variables and templates.

/// The prefix of the environment variable that gives a variable its value.
const VARIABLE_ENV_PREFIX: &str = "WCLUSTER_VARIABLE_";

fn resolve_variables(
    doc: &Doc<'_>,
    raw: BTreeMap<Spanned<String>, RawVariable>,
    env: EnvLookup<'_>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for (name, variable) in raw {
        let err = |why: String| {
            doc.err(
                name.span(),
                format_args!("variables `{}`: {why}", name.get_ref()),
            )
        };
        check_variable_name(name.get_ref()).map_err(err)?;
        let value = variable_value(name.get_ref(), &variable, env).map_err(err)?;
        values.insert(name.into_inner(), value);
    }
    Ok(values)
}

/// Lowercase, as Spin's; the environment variable is its uppercase form.
fn check_variable_name(name: &str) -> Result<(), String> {
    let shaped = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if shaped {
        Ok(())
    } else {
        Err("a name is lowercase letters, digits and `_`, starting with a letter".into())
    }
}

/// The environment overrides a default and must give a required value.
fn variable_value(name: &str, v: &RawVariable, env: EnvLookup<'_>) -> Result<String, String> {
    let var = format!("{VARIABLE_ENV_PREFIX}{}", name.to_ascii_uppercase());
    let from_env = env(&var)?;
    match (&v.default, v.required) {
        (Some(_), true) => Err("give `default` or `required = true`, not both".into()),
        (None, false) => Err("give it a `default` or `required = true`".into()),
        (Some(default), false) => Ok(from_env.unwrap_or_else(|| default.clone())),
        (None, true) => from_env.ok_or_else(|| {
            format!("required, and its value is not given: set the environment variable {var}")
        }),
    }
}

/// `text` with every `{{ name }}` replaced by that variable's value.
fn expand(text: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inside = &rest[start + 2..];
        let end = inside
            .find("}}")
            .ok_or_else(|| format!("`{{{{` without its `}}}}` in `{text}`"))?;
        let name = inside[..end].trim();
        let value = variables.get(name).ok_or_else(|| {
            format!("template `{{{{ {name} }}}}` names no variable; declare it in [variables]")
        })?;
        out.push_str(value);
        rest = &inside[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Components and triggers.

/// Names are metric labels and `wcluster reload NAME` arguments.
fn check_component_name(name: &str) -> Result<(), String> {
    let shaped = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "component name `{}`: 1 to 64 lowercase letters, digits, `-` and `_`, \
             starting with a letter",
            name.escape_default()
        ))
    }
}

fn component_names(
    doc: &Doc<'_>,
    components: &[(Spanned<String>, RawComponent)],
) -> Result<HashMap<String, usize>> {
    let mut names = HashMap::new();
    for (index, (name, _)) in components.iter().enumerate() {
        check_component_name(name.get_ref()).map_err(|why| doc.err(name.span(), why))?;
        names.insert(name.get_ref().clone(), index);
    }
    Ok(names)
}

fn refuse_other_triggers(doc: &Doc<'_>, other: &[Spanned<String>]) -> Result<()> {
    match other.first() {
        None => Ok(()),
        Some(kind) => Err(doc.err(
            kind.span(),
            format_args!(
                "[[trigger.{}]]: only http triggers ([[trigger.http]]) are supported",
                kind.get_ref()
            ),
        )),
    }
}

/// One `[[trigger.http]]`, read.
struct TriggerRoute {
    route: Route,
    handler: usize,
    /// The `route` value, for conflicts found later.
    span: Range<usize>,
}

fn trigger_routes(
    doc: &Doc<'_>,
    triggers: Vec<RawTrigger>,
    names: &HashMap<String, usize>,
) -> Result<Vec<TriggerRoute>> {
    let mut routes: Vec<TriggerRoute> = Vec::with_capacity(triggers.len());
    for trigger in triggers {
        let read = trigger_route(doc, &trigger, names)?;
        if let Some(first) = routes.iter().find(|r| r.route == read.route) {
            return Err(conflict(doc, names, first, &read));
        }
        routes.push(read);
    }
    Ok(routes)
}

fn trigger_route(
    doc: &Doc<'_>,
    trigger: &RawTrigger,
    names: &HashMap<String, usize>,
) -> Result<TriggerRoute> {
    let err = |field: &str, span: Range<usize>, why: String| {
        doc.err(span, format_args!("trigger.http, `{field}`: {why}"))
    };
    if let Some(executor) = &trigger.executor {
        check_executor(executor.get_ref()).map_err(|why| err("executor", executor.span(), why))?;
    }
    let host = match &trigger.host {
        Some(host) => {
            let parsed = routes::parse_host(host.get_ref());
            Some(parsed.map_err(|why| err("host", host.span(), why))?)
        }
        None => None,
    };
    let text = route_text(trigger.route.get_ref())
        .map_err(|why| err("route", trigger.route.span(), why))?;
    let mut route =
        routes::parse_route(text, None).map_err(|why| err("route", trigger.route.span(), why))?;
    route.host = host;
    let handler = trigger_component(trigger.component.get_ref(), names)
        .map_err(|why| err("component", trigger.component.span(), why))?;
    Ok(TriggerRoute {
        route,
        handler,
        span: trigger.route.span(),
    })
}

fn route_text(value: &Value) -> Result<&str, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Table(t) if t.contains_key("private") => {
            Err("private routes (`{ private = true }`) are not supported: \
             every component must be reachable by a route"
                .into())
        }
        other => Err(format!(
            "expected a route such as \"/api/...\", found {}",
            other.type_str()
        )),
    }
}

fn trigger_component(value: &Value, names: &HashMap<String, usize>) -> Result<usize, String> {
    match value {
        Value::String(name) => names
            .get(name)
            .copied()
            .ok_or_else(|| format!("component `{name}` is not defined (no [component.{name}])")),
        Value::Table(_) => Err(
            "inline components are not supported: define [component.NAME] and name it here".into(),
        ),
        other => Err(format!(
            "expected a component name, found {}",
            other.type_str()
        )),
    }
}

/// Spin's executors: the handler's ABI (wasi:http or CGI, which Spin calls
/// WAGI) is found from its file, so naming one changes nothing, and WAGI's
/// options have no equivalent.
fn check_executor(value: &Value) -> Result<(), String> {
    let kind = value
        .as_table()
        .filter(|t| t.len() == 1)
        .and_then(|t| t.get("type"));
    match kind.and_then(Value::as_str) {
        Some("spin" | "wagi") => Ok(()),
        _ => Err(
            "only { type = \"spin\" } or { type = \"wagi\" } without options; \
             wcluster finds the ABI from the handler file"
                .into(),
        ),
    }
}

fn conflict(
    doc: &Doc<'_>,
    names: &HashMap<String, usize>,
    first: &TriggerRoute,
    second: &TriggerRoute,
) -> anyhow::Error {
    let name = |index: usize| {
        names
            .iter()
            .find(|(_, i)| **i == index)
            .map_or("<unnamed>", |(name, _)| name.as_str())
    };
    let first_line = doc.line(first.span.start);
    let why = if first.handler == second.handler {
        format!(
            "route `{}` is claimed twice by `{}` (first on line {first_line})",
            second.route,
            name(second.handler)
        )
    } else {
        format!(
            "route `{}` is claimed by both `{}` (line {first_line}) and `{}`",
            second.route,
            name(first.handler),
            name(second.handler)
        )
    };
    doc.err(
        second.span.clone(),
        format_args!("trigger.http, `route`: {why}"),
    )
}

/// The routing table the workers will build, built once here so that a
/// manifest it would refuse is refused at load.
fn check_router(doc: &Doc<'_>, routes: &[TriggerRoute], handlers: &[HandlerPlan]) -> Result<()> {
    let table: Vec<(Route, usize)> = routes
        .iter()
        .map(|r| (r.route.clone(), r.handler))
        .collect();
    let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
    Router::build(&table, &names)
        .map(|_| ())
        .map_err(|why| anyhow!("{}: {why}", doc.file.display()))
}

// ---------------------------------------------------------------------------
// One handler's source, grants and limits.

/// A path the manifest names that must exist when it is loaded.
struct PathCheck {
    path: PathBuf,
    dir: bool,
    /// `file:line: component `x`, `field``.
    at: String,
}

impl PathCheck {
    fn run(&self) -> Result<()> {
        let (what, found) = match std::fs::metadata(&self.path) {
            Ok(meta) if self.dir => ("a directory", meta.is_dir()),
            Ok(meta) => ("a file", meta.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: `{}` does not exist", self.at, self.path.display())
            }
            Err(e) => bail!("{}: `{}`: {e}", self.at, self.path.display()),
        };
        if !found {
            bail!("{}: `{}` is not {what}", self.at, self.path.display());
        }
        Ok(())
    }
}

fn handler(
    at: &At<'_>,
    dir: &Path,
    raw: RawComponent,
    defaults: &HandlerSettings,
    variables: &BTreeMap<String, String>,
    checks: &mut Vec<PathCheck>,
) -> Result<(HandlerSettings, PathBuf)> {
    let source = component_source(at, dir, &raw.source)?;
    checks.push(PathCheck {
        path: source.clone(),
        dir: false,
        at: format!(
            "{}: component `{}`, `source`",
            at.doc.at(raw.source.span()),
            at.component
        ),
    });
    let mut settings = defaults.clone();
    grant(at, dir, &raw, variables, &mut settings, checks)?;
    settings.limits = limits(at, &raw, &defaults.limits)?;
    Ok((settings, source))
}

fn component_source(at: &At<'_>, dir: &Path, source: &Spanned<Value>) -> Result<PathBuf> {
    let err = |why: &str| at.err("source", source.span(), why);
    match source.get_ref() {
        Value::String(path) if path.is_empty() => Err(err("empty")),
        Value::String(path) => Ok(dir.join(path)),
        Value::Table(_) => Err(err(
            "a source table ({ url = ..., digest = ... }) is not supported: \
             download the file and name its path here",
        )),
        _ => Err(err("expected the handler file's path")),
    }
}

/// The component's capabilities, added to the flags' (`settings` holds them).
fn grant(
    at: &At<'_>,
    dir: &Path,
    raw: &RawComponent,
    variables: &BTreeMap<String, String>,
    settings: &mut HandlerSettings,
    checks: &mut Vec<PathCheck>,
) -> Result<()> {
    let grants = &mut settings.grants;
    let env = environment(at, &raw.environment)?;
    grants.env = merge(&grants.env, env);
    for entry in &raw.files {
        let mount = mount(at, dir, entry)?;
        checks.push(PathCheck {
            path: mount.host.clone(),
            dir: true,
            at: format!(
                "{}: component `{}`, `files`",
                at.doc.at(entry.span()),
                at.component
            ),
        });
        grants.dirs.push(mount);
    }
    for host in &raw.allowed_outbound_hosts {
        let pattern = expand(host.get_ref(), variables)
            .map_err(|why| at.err("allowed_outbound_hosts", host.span(), why))?;
        // Checked here, where its line is known, not only when the
        // primary builds the handler's capabilities.
        crate::runtime::capabilities::outbound::policy::AllowList::parse(std::slice::from_ref(
            &pattern,
        ))
        .map_err(|why| at.err("allowed_outbound_hosts", host.span(), format!("{why:#}")))?;
        grants.outbound.allow.push(pattern);
    }
    grants.keyvalue.buckets = Some(buckets(at, &raw.key_value_stores)?);
    let vars = config_vars(at, &raw.variables, variables)?;
    grants.config.vars = merge(&grants.config.vars, vars);
    Ok(())
}

/// `defaults` without the keys `own` sets, then `own`: the component's
/// value wins, and no key appears twice.
fn merge(defaults: &[(String, String)], own: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = defaults
        .iter()
        .filter(|(key, _)| !own.iter().any(|(k, _)| k == key))
        .cloned()
        .collect();
    merged.extend(own);
    merged
}

fn environment(
    at: &At<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<_> = raw.iter().collect();
    env.sort_by_key(|(key, _)| key.span().start);
    env.into_iter()
        .map(|(key, value)| {
            let name = key.get_ref();
            // Neither can pass through the environment block guests get.
            if name.is_empty() || name.contains(['=', '\0']) || value.get_ref().contains('\0') {
                return Err(at.err(
                    "environment",
                    key.span(),
                    format_args!(
                        "`{}`: a name is non-empty without `=`; neither holds NUL",
                        name.escape_default()
                    ),
                ));
            }
            Ok((name.clone(), value.get_ref().clone()))
        })
        .collect()
}

/// A `files` entry: a directory, read-only. Spin's plain strings are glob
/// patterns of files; here a string names a directory mounted at `/<it>`.
fn mount(at: &At<'_>, dir: &Path, entry: &Spanned<Value>) -> Result<DirGrant> {
    let err = |why: String| at.err("files", entry.span(), why);
    let (source, guest) = match entry.get_ref() {
        Value::String(source) => {
            check_plain_mount(source).map_err(err)?;
            (source.clone(), format!("/{}", source.trim_end_matches('/')))
        }
        Value::Table(table) => {
            let raw: RawMount = table
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| err(e.message().trim().to_string()))?;
            if !raw.destination.starts_with('/') {
                return Err(err(format!(
                    "destination `{}` must start with `/`",
                    raw.destination
                )));
            }
            (raw.source, raw.destination)
        }
        other => {
            return Err(err(format!(
                "expected a directory or {{ source = ..., destination = ... }}, found {}",
                other.type_str()
            )));
        }
    };
    if source.is_empty() {
        return Err(err("the source is empty".into()));
    }
    if source.contains(['*', '?', '[']) {
        return Err(err(format!(
            "`{source}`: glob patterns are not supported; name a directory"
        )));
    }
    Ok(DirGrant {
        host: dir.join(&source),
        guest,
    })
}

/// A plain string becomes the guest path too, so it must be one.
fn check_plain_mount(source: &str) -> Result<(), String> {
    let path = Path::new(source);
    let plain = path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{source}`: a plain string is a directory below the manifest's, mounted at the \
             same path; use {{ source = ..., destination = ... }} for any other"
        ))
    }
}

fn buckets(at: &At<'_>, raw: &[Spanned<String>]) -> Result<Vec<String>> {
    raw.iter()
        .map(|name| {
            check_bucket(name.get_ref())
                .map(|()| name.get_ref().clone())
                .map_err(|why| at.err("key_value_stores", name.span(), why))
        })
        .collect()
}

fn check_bucket(name: &str) -> Result<(), String> {
    let shaped = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "store `{}`: 1 to 64 letters, digits, `_`, `-` and `.`",
            name.escape_default()
        ))
    }
}

fn config_vars(
    at: &At<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    variables: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let mut entries: Vec<_> = raw.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
        .into_iter()
        .map(|(key, value)| {
            super::check_config_key(key.get_ref())
                .map_err(|e| at.err("variables", key.span(), e))?;
            let expanded = expand(value.get_ref(), variables).map_err(|why| {
                at.err(
                    "variables",
                    value.span(),
                    format_args!("`{}`: {why}", key.get_ref()),
                )
            })?;
            Ok((key.get_ref().clone(), expanded))
        })
        .collect()
}

/// The flags' limits with the component's own.
fn limits(at: &At<'_>, raw: &RawComponent, defaults: &HandlerLimits) -> Result<HandlerLimits> {
    let mut limits = defaults.clone();
    if let Some(v) = &raw.request_timeout {
        limits.timeout =
            duration(v.get_ref()).map_err(|why| at.err("request_timeout", v.span(), why))?;
    }
    if let Some(v) = &raw.max_body {
        limits.max_body =
            byte_size(v.get_ref()).map_err(|why| at.err("max_body", v.span(), why))?;
    }
    if let Some(v) = &raw.max_memory {
        limits.max_memory = memory(v.get_ref(), defaults.max_memory)
            .map_err(|why| at.err("max_memory", v.span(), why))?;
    }
    if let Some(v) = &raw.reuse_instances {
        limits.reuse =
            reuse(v.get_ref()).map_err(|why| at.err("reuse_instances", v.span(), why))?;
    }
    if let Some(v) = &raw.max_instance_concurrency {
        limits.max_instance_concurrency = concurrency(v.get_ref())
            .map_err(|why| at.err("max_instance_concurrency", v.span(), why))?;
    }
    if let Some(v) = &raw.smoke_path {
        limits.smoke.path =
            smoke_path(v.get_ref()).map_err(|why| at.err("smoke_path", v.span(), why))?;
    }
    Ok(limits)
}

fn duration(value: &Value) -> Result<Duration, String> {
    let text = value.as_str().ok_or_else(|| {
        format!(
            "expected a duration such as \"5s\", found {}",
            value.type_str()
        )
    })?;
    let d = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

fn byte_size(value: &Value) -> Result<u64, String> {
    match value {
        Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("{n}: a size cannot be negative"))
        }
        Value::String(text) => text
            .parse::<ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|e| format!("`{text}`: {e}")),
        other => Err(format!(
            "expected a size such as \"1MiB\" or a number of bytes, found {}",
            other.type_str()
        )),
    }
}

/// No handler may have more than the engine was built to give one.
fn memory(value: &Value, engine: u64) -> Result<u64, String> {
    let bytes = byte_size(value)?;
    if bytes == 0 {
        return Err("must be above zero".into());
    }
    if bytes > engine {
        return Err(format!(
            "{} is above --max-memory ({}), which the engine is built with and which \
             bounds every handler; raise --max-memory (or `max_memory` in [server])",
            ByteSize(bytes),
            ByteSize(engine)
        ));
    }
    Ok(bytes)
}

fn reuse(value: &Value) -> Result<Reuse, String> {
    match value {
        Value::String(text) => Reuse::parse(text),
        Value::Integer(n) => Reuse::parse(&n.to_string()),
        other => Err(format!(
            "expected \"0\", \"N\" or \"MIN-MAX\", found {}",
            other.type_str()
        )),
    }
}

fn concurrency(value: &Value) -> Result<u32, String> {
    match value.as_integer() {
        Some(n @ 1..=1024) => Ok(n as u32),
        Some(n) => Err(format!("{n}: must be between 1 and 1024")),
        None => Err(format!("expected a number, found {}", value.type_str())),
    }
}

/// It becomes the smoke request's URI.
fn smoke_path(value: &Value) -> Result<String, String> {
    let path = value
        .as_str()
        .ok_or_else(|| format!("expected a path, found {}", value.type_str()))?;
    if !path.starts_with('/') || !path.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "`{}` must start with `/` and hold only printable ASCII without spaces",
            path.escape_default()
        ));
    }
    Ok(path.to_string())
}

// ---------------------------------------------------------------------------
// [server]

/// The keys of `[server]`, each a `serve` flag (`_` for `-`).
const SERVER_KEYS: &[&str] = &[
    "addr",
    "workers",
    "max_workers",
    "admin",
    "admin_token_file",
    "tls_cert",
    "tls_key",
    "cache_dir",
    "state_dir",
    "keyvalue",
    "max_connections",
    "max_concurrent",
    "max_queued",
    "queue_timeout",
    "max_memory",
    "backlog",
    "drain_timeout",
    "drain_delay",
    "log_format",
    "no_watch",
    "liveness_timeout",
];

/// Keys whose value is a path: relative to the manifest, not to wherever
/// `serve` runs.
const SERVER_PATHS: &[&str] = &[
    "admin_token_file",
    "tls_cert",
    "tls_key",
    "cache_dir",
    "state_dir",
];

/// Switches: `true` is the bare flag, `false` leaves it out.
const SERVER_SWITCHES: &[&str] = &["no_watch"];

/// `--keyvalue redis-url-file:PATH` names a file too.
const URL_FILE: &str = "redis-url-file:";

fn server_flags(
    doc: &Doc<'_>,
    dir: &Path,
    server: BTreeMap<Spanned<String>, Spanned<Value>>,
) -> Result<Vec<(String, String)>> {
    let mut flags = Vec::new();
    for (key, value) in in_manifest_order(server) {
        let key_name = key.get_ref().as_str();
        if !SERVER_KEYS.contains(&key_name) {
            return Err(doc.err(
                key.span(),
                format_args!(
                    "[server]: unknown key `{}`; allowed: {}",
                    key_name.escape_default(),
                    SERVER_KEYS.join(", ")
                ),
            ));
        }
        let flag_value = server_value(key_name, value.get_ref(), dir)
            .map_err(|why| doc.err(value.span(), format_args!("[server], `{key_name}`: {why}")))?;
        if let Some(v) = flag_value {
            flags.push((format!("--{}", key_name.replace('_', "-")), v));
        }
    }
    Ok(flags)
}

/// The flag's value; None leaves the flag out.
fn server_value(key: &str, value: &Value, dir: &Path) -> Result<Option<String>, String> {
    let switch = SERVER_SWITCHES.contains(&key);
    match value {
        Value::Boolean(on) if switch => Ok(on.then(String::new)),
        _ if switch => Err(format!(
            "a switch: true or false, found {}",
            value.type_str()
        )),
        Value::Boolean(_) => Err("takes a value, not true or false".into()),
        Value::Integer(n) => Ok(Some(n.to_string())),
        Value::String(s) if SERVER_PATHS.contains(&key) => resolve(dir, s).map(Some),
        Value::String(s) if key == "keyvalue" => match s.strip_prefix(URL_FILE) {
            Some(file) => Ok(Some(format!("{URL_FILE}{}", resolve(dir, file)?))),
            None => Ok(Some(s.clone())),
        },
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// `path` relative to `dir`, as a flag's text.
fn resolve(dir: &Path, path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    let full = dir.join(path);
    full.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` is not UTF-8; give an absolute path", full.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigGrant, Grants, SmokeCheck};

    fn defaults() -> HandlerSettings {
        let mut grants = Grants {
            env: pairs(&[("LOG", "info"), ("TZ", "UTC")]),
            config: ConfigGrant {
                vars: pairs(&[("region", "eu")]),
                ..ConfigGrant::default()
            },
            dirs: vec![DirGrant {
                host: "/srv/shared".into(),
                guest: "/shared".into(),
            }],
            ..Grants::default()
        };
        grants.outbound.allow = vec!["https://flag.example".into()];
        HandlerSettings {
            grants,
            limits: HandlerLimits {
                timeout: Duration::from_secs(30),
                max_body: 10 << 20,
                max_memory: 128 << 20,
                reuse: Reuse::Default,
                max_instance_concurrency: 1,
                smoke: SmokeCheck {
                    path: "/".into(),
                    timeout: Duration::from_secs(10),
                },
            },
        }
    }

    fn env(name: &str) -> Result<Option<String>, String> {
        Ok(match name {
            "WCLUSTER_VARIABLE_TOKEN" => Some("s3cret".into()),
            "WCLUSTER_VARIABLE_REGION" => Some("us".into()),
            _ => None,
        })
    }

    fn no_env(_: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    fn parse_text(text: &str) -> Result<Manifest> {
        parse_with(
            text,
            Path::new("app.toml"),
            Path::new("/srv/app"),
            &defaults(),
            &env,
        )
        .map(|p| p.manifest)
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse_text(text).unwrap_err())
    }

    const FULL: &str = r#"spin_manifest_version = 2

[application]
name = "shop"
version = "1.0.0"
authors = ["someone"]

[server]
addr = "0.0.0.0:8080"
workers = 4
tls_cert = "cert.pem"
tls_key = "/etc/key.pem"
no_watch = true
keyvalue = "redis-url-file:redis.url"

[variables]
host = { default = "api.example.com" }
token = { required = true, secret = true }
region = { default = "eu" }

[[trigger.http]]
route = "/api/..."
component = "api"
host = "API.example.com"

[[trigger.http]]
route = "/..."
component = "web"

[[trigger.http]]
route = "/health"
component = "api"

[component.web]
source = "web.wasm"
files = [{ source = "static", destination = "/static" }, "assets"]
description = "the site"
[component.web.build]
command = "make"

[component.api]
source = "build/api.wasm"
allowed_outbound_hosts = ["https://{{ host }}"]
key_value_stores = ["default", "carts"]
environment = { LOG = "debug", MODE = "prod" }
request_timeout = "5s"
max_body = "1MiB"
max_memory = 67108864
reuse_instances = "0"
max_instance_concurrency = 4
smoke_path = "/health"
[component.api.variables]
api_url = "https://{{ host }}/v1"
token = "{{token}}"
region = "{{ region }}"
"#;

    #[test]
    fn a_full_manifest_reads_as_its_plan() {
        let m = parse_text(FULL).unwrap();
        assert!(m.plan.manifest);
        let names: Vec<&str> = m.plan.handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["web", "api"], "manifest order");

        let web = &m.plan.handlers[0];
        assert_eq!(web.source, Path::new("/srv/app/web.wasm"));
        assert_eq!(web.routes, [routes::parse_route("/...", None).unwrap()]);
        assert_eq!(web.settings.limits, defaults().limits);
        assert_eq!(web.settings.grants.env, defaults().grants.env);
        assert_eq!(web.settings.grants.keyvalue.buckets, Some(vec![]));
        assert_eq!(
            web.settings.grants.dirs[1..],
            [
                DirGrant {
                    host: "/srv/app/static".into(),
                    guest: "/static".into()
                },
                DirGrant {
                    host: "/srv/app/assets".into(),
                    guest: "/assets".into()
                },
            ]
        );

        let api = &m.plan.handlers[1];
        assert_eq!(api.source, Path::new("/srv/app/build/api.wasm"));
        assert_eq!(
            api.routes,
            [
                routes::parse_route("/api/...", Some("api.example.com")).unwrap(),
                routes::parse_route("/health", None).unwrap(),
            ]
        );
        let grants = &api.settings.grants;
        assert_eq!(
            grants.outbound.allow,
            ["https://flag.example", "https://api.example.com"]
        );
        assert_eq!(
            grants.keyvalue.buckets,
            Some(vec!["default".to_string(), "carts".to_string()])
        );
        assert_eq!(grants.dirs, defaults().grants.dirs);
        let limits = &api.settings.limits;
        assert_eq!(limits.timeout, Duration::from_secs(5));
        assert_eq!(limits.max_body, 1 << 20);
        assert_eq!(limits.max_memory, 64 << 20);
        assert_eq!(limits.reuse, Reuse::Never);
        assert_eq!(limits.max_instance_concurrency, 4);
        assert_eq!(limits.smoke.path, "/health");
        assert_eq!(limits.smoke.timeout, Duration::from_secs(10));

        assert_eq!(
            m.server,
            [
                ("--addr".to_string(), "0.0.0.0:8080".to_string()),
                ("--workers".into(), "4".into()),
                ("--tls-cert".into(), "/srv/app/cert.pem".into()),
                ("--tls-key".into(), "/etc/key.pem".into()),
                ("--no-watch".into(), String::new()),
                (
                    "--keyvalue".into(),
                    "redis-url-file:/srv/app/redis.url".into()
                ),
            ]
        );
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_component_environment_overrides_the_flags() {
        let m = parse_text(FULL).unwrap();
        assert_eq!(
            m.plan.handlers[1].settings.grants.env,
            pairs(&[("TZ", "UTC"), ("LOG", "debug"), ("MODE", "prod")])
        );
    }

    #[test]
    fn templates_expand_in_config_values() {
        let m = parse_text(FULL).unwrap();
        assert_eq!(
            m.plan.handlers[1].settings.grants.config.vars,
            pairs(&[
                ("api_url", "https://api.example.com/v1"),
                ("token", "s3cret"),
                // The environment overrides the variable's default, and the
                // component's key replaces the flag's.
                ("region", "us"),
            ])
        );
        let vars: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert_eq!(expand("x{{a}}y{{  a }}", &vars).unwrap(), "x1y1");
        assert_eq!(expand("no templates }}", &vars).unwrap(), "no templates }}");
        assert!(expand("{{ a", &vars).unwrap_err().contains("without its"));
        assert!(
            expand("{{ b }}", &vars)
                .unwrap_err()
                .contains("names no variable")
        );
    }

    const SMALL: &str = r#"[[trigger.http]]
route = "/..."
component = "web"

[component.web]
source = "web.wasm"
"#;

    #[test]
    fn a_minimal_manifest_takes_the_flags_settings() {
        let m = parse_text(SMALL).unwrap();
        let web = &m.plan.handlers[0];
        let mut expected = defaults();
        expected.grants.keyvalue.buckets = Some(vec![]);
        assert_eq!(web.settings, expected);
        assert!(m.server.is_empty());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = error("[[trigger.http]]\nroute = \"/...\ncomponent = \"web\"\n");
        assert!(e.starts_with("app.toml:2: "), "{e}");
    }

    #[test]
    fn unknown_fields_name_the_line_and_field() {
        let e = error(&format!("{SMALL}colour = \"blue\"\n"));
        assert!(e.starts_with("app.toml:7: "), "{e}");
        assert!(e.contains("`colour`"), "{e}");
        let e = error(&format!("{SMALL}max_body = true\n"));
        assert_eq!(
            e,
            "app.toml:7: component `web`, `max_body`: expected a size such as \"1MiB\" \
             or a number of bytes, found boolean"
        );
    }

    #[test]
    fn bad_routes_name_the_line() {
        let e = error(&SMALL.replace("\"/...\"", "\"/users/:id\""));
        assert!(e.starts_with("app.toml:2: trigger.http, `route`: "), "{e}");
        assert!(e.contains("not supported"), "{e}");
        let e = error(&SMALL.replace("route = \"/...\"", "route = { private = true }"));
        assert!(e.contains("private routes"), "{e}");
        let e = error(&format!(
            "{SMALL}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"web\"\nhost = \"a.com:80\"\n"
        ));
        assert!(e.starts_with("app.toml:10: trigger.http, `host`: "), "{e}");
    }

    #[test]
    fn conflicting_routes_name_both_components() {
        let text = format!(
            "{SMALL}[component.admin]\nsource = \"admin.wasm\"\n\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"admin\"\n"
        );
        let e = error(&text);
        assert_eq!(
            e,
            "app.toml:11: trigger.http, `route`: route `/...` is claimed by both `web` \
             (line 2) and `admin`"
        );
        let text = format!("{SMALL}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n");
        assert!(error(&text).contains("claimed twice by `web` (first on line 2)"));
    }

    #[test]
    fn a_trigger_must_name_a_defined_component() {
        let e = error(&SMALL.replace("component = \"web\"", "component = \"wbe\""));
        assert_eq!(
            e,
            "app.toml:3: trigger.http, `component`: component `wbe` is not defined \
             (no [component.wbe])"
        );
        let e = error(&SMALL.replace("component = \"web\"", "component = { source = \"x.wasm\" }"));
        assert!(e.contains("inline components"), "{e}");
    }

    #[test]
    fn every_component_needs_a_route() {
        let e = error(&format!(
            "{SMALL}[component.lost]\nsource = \"lost.wasm\"\n"
        ));
        assert_eq!(
            e,
            "app.toml:7: component `lost` has no [[trigger.http]] naming it: \
             no request would reach it"
        );
        assert!(error("").contains("no [component.NAME]"));
    }

    #[test]
    fn other_triggers_are_refused() {
        let e = error(&format!(
            "{SMALL}[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"web\"\n"
        ));
        assert!(e.starts_with("app.toml:7: "), "{e}");
        assert!(e.contains("only http triggers"), "{e}");
    }

    #[test]
    fn max_memory_is_bounded_by_the_engine() {
        let e = error(&format!("{SMALL}max_memory = \"1GiB\"\n"));
        assert!(
            e.starts_with("app.toml:7: component `web`, `max_memory`: "),
            "{e}"
        );
        assert!(e.contains("above --max-memory"), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let bad = |line: &str| error(&format!("{SMALL}{line}\n"));
        assert!(bad("max_instance_concurrency = 0").contains("between 1 and 1024"));
        assert!(bad("request_timeout = \"soon\"").contains("`request_timeout`"));
        assert!(bad("request_timeout = \"0s\"").contains("above zero"));
        assert!(bad("reuse_instances = \"5-2\"").contains("the range is empty"));
        assert!(bad("smoke_path = \"health\"").contains("must start with `/`"));
        assert!(bad("max_body = -1").contains("negative"));
        assert!(bad("source2 = 1").contains("unknown field"));
        assert!(bad("key_value_stores = [\"a b\"]").contains("store `a b`"));
        assert!(bad("files = [\"st*\"]").contains("glob"));
        assert!(bad("files = [\"../up\"]").contains("below the manifest"));
        assert!(
            bad("files = [{ source = \"s\", destination = \"d\" }]")
                .contains("must start with `/`")
        );
        let e = error(&SMALL.replace("source = \"web.wasm\"", "source = { url = \"https://x\" }"));
        assert!(e.contains("download the file"), "{e}");
        let e = bad("[component.web.variables]\n\"a b\" = \"1\"");
        assert!(
            e.starts_with("app.toml:8: component `web`, `variables`: "),
            "{e}"
        );
    }

    #[test]
    fn component_names_are_checked() {
        let e = error(&SMALL.replace("web", "Web"));
        assert!(e.starts_with("app.toml:5: component name `Web`"), "{e}");
    }

    #[test]
    fn a_missing_required_variable_names_its_environment_variable() {
        let text = format!("[variables]\napi_key = {{ required = true }}\n{SMALL}");
        let e = format!(
            "{:#}",
            parse_with(
                &text,
                Path::new("app.toml"),
                Path::new("/"),
                &defaults(),
                &no_env
            )
            .err()
            .unwrap()
        );
        assert_eq!(
            e,
            "app.toml:2: variables `api_key`: required, and its value is not given: \
             set the environment variable WCLUSTER_VARIABLE_API_KEY"
        );
        let e = error(&format!(
            "[variables]\nx = {{ default = \"1\", required = true }}\n{SMALL}"
        ));
        assert!(e.contains("not both"), "{e}");
        let e = error(&format!("[variables]\nX = {{ default = \"1\" }}\n{SMALL}"));
        assert!(e.contains("lowercase"), "{e}");
    }

    #[test]
    fn unknown_template_variables_name_the_line() {
        let e = error(&format!(
            "{SMALL}[component.web.variables]\nurl = \"{{{{ nope }}}}\"\n"
        ));
        assert_eq!(
            e,
            "app.toml:8: component `web`, `variables`: `url`: template `{{ nope }}` names no \
             variable; declare it in [variables]"
        );
    }

    #[test]
    fn the_manifest_version_must_be_2() {
        let e = error(&format!("spin_manifest_version = \"1\"\n{SMALL}"));
        assert!(e.starts_with("app.toml:1: "), "{e}");
        assert!(e.contains("version 2"), "{e}");
    }

    #[test]
    fn server_keys_become_flags() {
        let text = "[server]\nmax_workers = 8\nadmin_token_file = \"secrets/token\"\n\
                    no_watch = false\nlog_format = \"json\"\nkeyvalue = \"sqlite\"\n";
        assert_eq!(
            parse_server(text, Path::new("app.toml"), Path::new("/srv/app")).unwrap(),
            pairs(&[
                ("--max-workers", "8"),
                ("--admin-token-file", "/srv/app/secrets/token"),
                ("--log-format", "json"),
                ("--keyvalue", "sqlite"),
            ])
        );
    }

    #[test]
    fn bad_server_keys_name_the_line() {
        let e = error(&format!("{SMALL}[server]\nthreads = 4\n"));
        assert!(
            e.starts_with("app.toml:8: [server]: unknown key `threads`; allowed: addr,"),
            "{e}"
        );
        let e = error(&format!("{SMALL}[server]\nworkers = [1]\n"));
        assert!(
            e.starts_with("app.toml:8: [server], `workers`: expected"),
            "{e}"
        );
        assert!(error(&format!("{SMALL}[server]\nworkers = true\n")).contains("not true or false"));
        assert!(error(&format!("{SMALL}[server]\nno_watch = 1\n")).contains("a switch"));
    }

    #[test]
    fn load_checks_the_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(&path, format!("{SMALL}files = [\"static\"]\n")).unwrap();
        let e = format!("{:#}", load(&path, &defaults(), 1 << 20).unwrap_err());
        assert!(e.contains("app.toml:6: component `web`, `source`"), "{e}");
        std::fs::write(dir.path().join("web.wasm"), b"\0asm").unwrap();
        let e = format!("{:#}", load(&path, &defaults(), 1 << 20).unwrap_err());
        assert!(e.contains("app.toml:7: component `web`, `files`"), "{e}");
        std::fs::write(dir.path().join("static"), b"").unwrap();
        let e = format!("{:#}", load(&path, &defaults(), 1 << 20).unwrap_err());
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::remove_file(dir.path().join("static")).unwrap();
        std::fs::create_dir(dir.path().join("static")).unwrap();
        let m = load(&path, &defaults(), 1 << 20).unwrap();
        assert_eq!(m.plan.handlers[0].source, dir.path().join("web.wasm"));
        let e = format!("{:#}", load(&path, &defaults(), 10).unwrap_err());
        assert!(e.contains("--max-config-size"), "{e}");
    }
}
