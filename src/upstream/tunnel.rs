//! A dedicated connection to one target for a tunnel (a WebSocket
//! upgrade): TCP, then TLS when the upstream has it, within the connect
//! timeout, holding one of the target's `max-connections` for as long as
//! it lives. It never comes from or goes back to the pool: once upgraded it
//! carries opaque bytes. Only for `http1` upstreams.
//!
//! Not here: the HTTP exchange on it and the byte copying
//! (`crate::proxy::upgrade`).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
};

use super::{UpstreamError, Upstreams};
use crate::config::UpstreamProtocol;

/// Something to read and write bytes on.
pub(super) trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// An open connection to a target, holding its connection permit.
pub struct TunnelConn {
    io: Box<dyn TunnelIo>,
    _permit: OwnedSemaphorePermit,
    /// The target it goes to (`host:port`).
    pub target: String,
}

impl Upstreams {
    /// Open a connection for a tunnel to the next target of `upstream`
    /// (round-robin, as requests), without queueing: when the target has
    /// no connection to spare, [`UpstreamError::Overflow`].
    pub async fn connect_tunnel(&self, upstream: &str) -> Result<TunnelConn, UpstreamError> {
        let pool = self
            .get(upstream)
            .ok_or_else(|| UpstreamError::Unknown(upstream.to_string()))?;
        if pool.config.protocol != UpstreamProtocol::Http1 {
            return Err(UpstreamError::InvalidRequest {
                upstream: upstream.to_string(),
                detail: "upgrades are tunnelled only to http1 upstreams".into(),
            });
        }
        let (endpoint, target) = pool.pick();
        let authority =
            endpoint
                .authority
                .clone()
                .ok_or_else(|| UpstreamError::InvalidRequest {
                    upstream: upstream.to_string(),
                    detail: format!("invalid target {target:?}"),
                })?;
        let permit = endpoint
            .limit
            .try_tunnel_permit()
            .ok_or_else(|| UpstreamError::Overflow {
                upstream: upstream.to_string(),
                target: target.clone(),
                reason: "all connections busy (a tunnel does not queue)",
            })?;
        let connect_error = |source| UpstreamError::Connect {
            upstream: upstream.to_string(),
            target: target.clone(),
            source,
        };
        let connecting = async {
            let tcp = match endpoint.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(authority.as_str()).await,
            }
            .map_err(|e| connect_error(Box::new(e)))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn TunnelIo> = match &pool.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = tls.name_for(authority.host()).map_err(connect_error)?;
                    Box::new(
                        tls.connect(name, tcp)
                            .await
                            .map_err(|e| connect_error(Box::new(e)))?,
                    )
                }
            };
            Ok(io)
        };
        let timeout = pool.config.connect_timeout;
        let io = match tokio::time::timeout(timeout, connecting).await {
            Ok(io) => io?,
            Err(_) => {
                return Err(connect_error(
                    format!("no connection within {timeout:?}").into(),
                ));
            }
        };
        Ok(TunnelConn {
            io,
            _permit: permit,
            target,
        })
    }
}

impl AsyncRead for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
