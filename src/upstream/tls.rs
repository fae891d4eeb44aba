//! TLS toward an upstream's targets: the handshake for HTTP/1.1
//! connections ([`h1`](super::h1) calls [`UpstreamTls::connect`]) and a
//! connector for hyper-util's HTTP/2 client (protocol `h2`, which must be
//! agreed by ALPN). Both use the upstream's one rustls config, so plugins'
//! outbound calls, which go through the same pools, verify the same way.
//!
//! The name sent as SNI and verified is the upstream's `server-name`, or
//! else the target's host (an IP address is verified against the
//! certificate's IP SANs).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::body::BoxError;

/// How one upstream speaks TLS.
#[derive(Clone)]
pub(super) struct UpstreamTls {
    connector: TlsConnector,
    /// The configured `server-name`, if any.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    pub(super) fn new(config: Arc<ClientConfig>, server_name: Option<ServerName<'static>>) -> Self {
        Self {
            connector: TlsConnector::from(config),
            server_name,
        }
    }

    /// The name to verify for a target whose host is `host`.
    pub(super) fn name_for(&self, host: &str) -> Result<ServerName<'static>, BoxError> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a name TLS can verify; set server-name").into())
    }

    /// The client handshake on `tcp`, verifying `name`.
    pub(super) async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

/// hyper-util's connector for HTTP/2 over TLS: TCP (hyper-util's own
/// connector, with its timeout and `TCP_NODELAY`), then the handshake,
/// which must select `h2`.
#[derive(Clone)]
pub(super) struct H2Connector {
    /// TCP to the endpoint's own address ([`super::resolve::Pinned`]).
    pub(super) tcp: HttpConnector<super::resolve::Pinned>,
    pub(super) tls: UpstreamTls,
}

impl tower_service::Service<Uri> for H2Connector {
    type Response = TokioIo<H2Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let name = self.tls.name_for(uri.host().unwrap_or_default());
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = name?;
            let tcp = tcp.await?.into_inner();
            let stream = tls.connect(name, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err("the upstream did not agree to HTTP/2 (ALPN h2)".into());
            }
            Ok(TokioIo::new(H2Stream(stream)))
        })
    }
}

/// A TLS stream on which ALPN chose `h2`.
pub(super) struct H2Stream(TlsStream<TcpStream>);

impl Connection for H2Stream {
    fn connected(&self) -> Connected {
        Connected::new().negotiated_h2()
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
