//! The TCP side of outbound connections: resolve the host, check each
//! address against the allow-list, connect to the first one allowed. The
//! check is on the address actually connected to, so a name that resolves
//! elsewhere between check and use (DNS rebinding) cannot slip through, and
//! pooled connections only ever lead to addresses that passed. TLS is
//! hyper-rustls's, wrapped around this.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::policy::{AllowList, Scheme};

tokio::task_local! {
    /// The connect timeout of the request being sent: the guest's, capped.
    /// hyper-util calls the connector while the request future is first
    /// polled, inside this scope; a connection it finishes later for the
    /// pool keeps the cap.
    pub static CONNECT_TIMEOUT: Duration;
}

/// Why a connection was not made; the hook maps each to a WASI error code.
#[derive(Debug)]
pub enum ConnectError {
    /// Resolves only to addresses the allow-list does not grant.
    Denied {
        host: String,
        ip: IpAddr,
    },
    Dns(String),
    Timeout,
    Refused(std::io::Error),
    BadUri,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Denied { host, ip } => {
                write!(f, "{host} resolves to {ip}, an address not granted")
            }
            ConnectError::Dns(e) => write!(f, "DNS lookup failed: {e}"),
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Refused(e) => write!(f, "connect failed: {e}"),
            ConnectError::BadUri => write!(f, "the URL has no host"),
        }
    }
}

impl std::error::Error for ConnectError {}

#[derive(Clone)]
pub struct Connector {
    pub allow: Arc<AllowList>,
    pub connect_timeout_cap: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = CONNECT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(self.connect_timeout_cap)
            .min(self.connect_timeout_cap);
        let allow = self.allow.clone();
        Box::pin(async move {
            tokio::time::timeout(timeout, connect(&allow, &uri))
                .await
                .unwrap_or(Err(ConnectError::Timeout))
        })
    }
}

async fn connect(allow: &AllowList, uri: &Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
    let scheme = if uri.scheme_str() == Some("https") {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let host = uri.host().ok_or(ConnectError::BadUri)?;
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| ConnectError::Dns(e.to_string()))?
            .collect(),
    };
    let mut last = None;
    for addr in &addrs {
        if !allow.allows_address(scheme, port, addr.ip()) {
            last.get_or_insert(ConnectError::Denied {
                host: host.to_string(),
                ip: addr.ip(),
            });
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                return Ok(TokioIo::new(stream));
            }
            Err(e) => last = Some(ConnectError::Refused(e)),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::Dns(format!("{host} has no address"))))
}
