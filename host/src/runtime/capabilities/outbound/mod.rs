//! Outbound HTTP for guests (`wasi:http/outgoing-handler`): denied unless
//! `--allow-outbound` grants the upstream, over one pooled client per
//! worker, with the guest's timeouts capped by flags and a cap on requests
//! in flight. wasmtime-wasi-http hands every request the guest sends to
//! `Outbound::send` (through the store's hooks, component.rs).
//!
//! A URL with credentials (`http://user:password@host/`) is refused:
//! wasmtime-wasi-http builds the Host header from the whole authority, so
//! they would go upstream as `Host: user:password@host`, and RFC 9110
//! (section 4.2.4) deprecates them. Logs show every URL through
//! [`Redacted`], which hides any userinfo.

mod body;
mod connector;
pub mod policy;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::config::OutboundGrant;
use crate::config::worker::redact_url;
use body::TimedBody;
use connector::{CONNECT_TIMEOUT, ConnectError, Connector};
use policy::{AllowList, Scheme};

/// What the hook returns: the response, and a future wasi-http drives for
/// the connection (the pool drives ours, so it is empty).
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
);

pub struct Outbound {
    allow: Arc<AllowList>,
    grant: OutboundGrant,
    /// None when nothing is allowed: no client, no TLS roots read.
    client: Option<Client<HttpsConnector<Connector>, WasiBody>>,
    in_flight: Arc<Semaphore>,
}

impl Outbound {
    pub fn new(grant: &OutboundGrant) -> Result<Self> {
        let allow = Arc::new(AllowList::parse(&grant.allow)?);
        let client = if allow.is_empty() {
            None
        } else {
            let connector = Connector {
                allow: allow.clone(),
                connect_timeout_cap: grant.connect_timeout,
            };
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls_config(grant.ca.as_deref())?)
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector);
            Some(
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(32)
                    .build(https),
            )
        };
        Ok(Self {
            allow,
            grant: grant.clone(),
            client,
            in_flight: Arc::new(Semaphore::new(grant.max_in_flight)),
        })
    }

    /// Sends one guest request, or refuses it with the WASI error code the
    /// guest will see.
    pub async fn send(
        self: Arc<Self>,
        req: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> wasmtime_wasi_http::Result<Sent> {
        let uri = req.uri().clone();
        let url = Redacted(&uri);
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => return Err(Error::HttpProtocolError),
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            tracing::warn!(
                %url,
                "outbound request to {url} refused: the URL carries credentials \
                 (user:password@), which would reach the upstream in its Host header; \
                 send them in an Authorization header"
            );
            return Err(Error::HttpRequestUriInvalid);
        }
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let client = match &self.client {
            Some(c) if self.allow.allows_url(scheme, host, port) => c,
            _ => {
                tracing::warn!(
                    %url,
                    "outbound request to {url} denied: not on the allow-list \
                     (grant it with --allow-outbound {}://{host}:{port})",
                    scheme.as_str()
                );
                return Err(Error::HttpRequestDenied);
            }
        };
        if req.method() == http::Method::CONNECT {
            return Err(Error::HttpRequestMethodInvalid);
        }
        let opts = options.unwrap_or_default();
        let capped = |guest: Option<Duration>, cap: Duration| guest.unwrap_or(cap).min(cap);
        let connect = capped(opts.connect_timeout, self.grant.connect_timeout);
        let first_byte = capped(opts.first_byte_timeout, self.grant.first_byte_timeout);
        let between = capped(opts.between_bytes_timeout, self.grant.between_bytes_timeout);

        let permit = tokio::time::timeout(connect, self.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| {
                tracing::warn!(
                    %url,
                    "outbound request to {url} refused: {} requests already in flight \
                     (--max-outbound)",
                    self.grant.max_in_flight
                );
                Error::ConnectionLimitReached
            })?
            .map_err(|_| Error::ConnectionLimitReached)?;
        let sent = CONNECT_TIMEOUT.scope(connect, client.request(req));
        // Time to first byte, counted from the start: connecting included.
        let resp = match tokio::time::timeout(first_byte, sent).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.failed(url, scheme, port, &e)),
            Err(_) => {
                tracing::info!(%url, "outbound request to {url}: no response within {first_byte:?}");
                return Err(Error::ConnectionReadTimeout);
            }
        };
        let resp = resp.map(|b| TimedBody::new(b, between, permit).boxed_unsync());
        Ok((resp, Box::new(async { Ok(()) })))
    }

    /// The WASI error code for a failed request, with one log line.
    fn failed(
        &self,
        url: Redacted<'_>,
        scheme: Scheme,
        port: u16,
        e: &hyper_util::client::legacy::Error,
    ) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(c) = err.downcast_ref::<ConnectError>() {
                return match c {
                    ConnectError::Denied { host, ip } => {
                        tracing::warn!(
                            %url,
                            "outbound request to {url} denied: {host} resolves to {ip}, an \
                             internal address (grant it explicitly with --allow-outbound {}://{}:{port})",
                            scheme.as_str(),
                            if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() }
                        );
                        Error::HttpRequestDenied
                    }
                    ConnectError::Dns(why) => {
                        tracing::info!(%url, "outbound request to {url}: {c}");
                        Error::DnsError {
                            rcode: Some(why.clone()),
                            info_code: None,
                        }
                    }
                    ConnectError::Timeout => Error::ConnectionTimeout,
                    ConnectError::Refused(_) => Error::ConnectionRefused,
                    ConnectError::BadUri => Error::HttpRequestUriInvalid,
                };
            }
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                tracing::info!(%url, "outbound request to {url}: TLS failed: {tls}");
                return match tls {
                    rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
                    _ => Error::TlsProtocolError,
                };
            }
            if let Some(h) = err.downcast_ref::<hyper::Error>() {
                tracing::info!(%url, "outbound request to {url} failed: {h}");
                return if h.is_incomplete_message() || h.is_closed() {
                    Error::ConnectionTerminated
                } else {
                    Error::HttpProtocolError
                };
            }
            // hyper-rustls wraps the handshake's error in io::Errors, whose
            // source() skips the error they wrap.
            source = match err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        tracing::info!(%url, "outbound request to {url} failed: {e:?}");
        Error::InternalError(Some(e.to_string()))
    }
}

/// A URL as logs show it: any userinfo (`user:password@`) and any query
/// (which may carry a token) become `***`, by the same rule as every URL
/// wcluster prints (`redact_url`); only the authority is given to it, so an
/// `@` in the path is left alone.
#[derive(Clone, Copy)]
struct Redacted<'a>(&'a http::Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        let scheme = uri
            .scheme_str()
            .map(|s| format!("{s}://"))
            .unwrap_or_default();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        write!(
            f,
            "{}{}",
            redact_url(&format!("{scheme}{authority}")),
            uri.path()
        )?;
        match uri.query() {
            Some(_) => write!(f, "?***"),
            None => Ok(()),
        }
    }
}

/// The system's trust roots (what curl trusts), plus `--outbound-ca`.
fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("--outbound-ca `{}`", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--outbound-ca `{}` holds no PEM certificate",
            path.display()
        );
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("--outbound-ca `{}`", path.display()))?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::config::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_hide_credentials() {
        for (url, shown) in [
            (
                "http://user:pw@example.com:8080/a?b=c",
                "http://***@example.com:8080/a?***",
            ),
            ("https://token@example.com", "https://***@example.com/"),
            ("http://example.com/a?token=t", "http://example.com/a?***"),
            ("http://example.com/a@b", "http://example.com/a@b"),
            ("http://[::1]:8080/", "http://[::1]:8080/"),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(Redacted(&uri).to_string(), shown, "{url}");
        }
    }
}
