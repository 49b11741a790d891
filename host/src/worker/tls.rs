//! HTTPS: the worker does each connection's TLS handshake (the primary
//! hands over raw TCP connections), with rustls and ALPN `h2` and
//! `http/1.1`; connection.rs wraps the stream before hyper sees it.
//!
//! Rotation: the certificate comes from a resolver holding the current pair.
//! A task polls the files' metadata every second and, when either changed,
//! loads the pair again with the start-up checks (config/tls.rs). A pair
//! that does not load (half written, a key that does not match the
//! certificate yet) leaves the current one serving, with one warning line,
//! until the files change again. Open connections are not touched: only
//! handshakes after the swap see the new certificate.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;

use crate::config::tls::{self, Loaded};

/// How often the files' metadata is looked at.
const POLL: Duration = Duration::from_secs(1);
/// A worker that starts while the files are being replaced waits this long
/// for a pair that loads before it gives up.
const START_PATIENCE: Duration = Duration::from_secs(5);

/// The acceptor for the worker's connections; starts the task that follows
/// the files.
pub async fn acceptor(worker: usize, cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor> {
    let files = Files { cert, key };
    let give_up = Instant::now() + START_PATIENCE;
    let (mut stamp, mut loaded) = files.clone().load().await;
    // The primary checked the pair at start-up (and logged its warnings);
    // it may be in the middle of a rotation now.
    let first = loop {
        match loaded {
            Ok(first) => break first,
            Err(e) if Instant::now() >= give_up => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                (stamp, loaded) = files.clone().load().await;
            }
        }
    };
    tracing::debug!(worker, "TLS certificate: {}", first.describe);
    let resolver = Arc::new(Resolver(RwLock::new(first.key)));
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(follow(worker, files, stamp, resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Hands every handshake the current pair.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

/// What says a file changed: its identity (a rename or a Kubernetes
/// secret's symlink swap gives a new inode), size and times. None: missing.
type Stamp = [Option<(u64, u64, u64, i64, i64, i64, i64)>; 2];

impl Files {
    fn stamp(&self) -> Stamp {
        [&self.cert, &self.key].map(|path| {
            std::fs::metadata(path).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
    }

    /// The stamp taken before reading, and the pair (off the event loop).
    async fn load(self) -> (Stamp, Result<Loaded>) {
        let run = tokio::task::spawn_blocking(move || {
            let stamp = self.stamp();
            (stamp, tls::load(&self.cert, &self.key))
        });
        match run.await {
            Ok(done) => done,
            Err(e) => (
                Default::default(),
                Err(anyhow::anyhow!("loading the TLS pair: {e}")),
            ),
        }
    }
}

/// Polls the files and swaps in a new pair that loads.
async fn follow(worker: usize, files: Files, mut seen: Stamp, resolver: Arc<Resolver>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let look = files.clone();
        let stamp = match tokio::task::spawn_blocking(move || look.stamp()).await {
            Ok(stamp) => stamp,
            Err(_) => continue,
        };
        if stamp == seen {
            continue;
        }
        let (stamp, loaded) = files.clone().load().await;
        seen = stamp;
        match loaded {
            Ok(loaded) => {
                *resolver.0.write().unwrap_or_else(|e| e.into_inner()) = loaded.key;
                tracing::info!(
                    worker,
                    "TLS certificate reloaded for new connections: {}",
                    loaded.describe
                );
                for warning in loaded.warnings {
                    tracing::warn!(worker, "{warning}");
                }
            }
            Err(e) => tracing::warn!(
                worker,
                "TLS files changed but do not load, still serving the previous certificate: {e:#}"
            ),
        }
    }
}
