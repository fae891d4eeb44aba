//! WASI for components that import it (JavaScript, Python, C, and Rust's
//! `wasm32-wasip2` std): a context with no filesystem, no environment, no
//! arguments, no network (no sockets, no name lookup), and stdout/stderr
//! forwarded line by line to `tracing` with `route`, `plugin` and `stream`
//! fields under the target `pylon::plugin::stdio`.
//!
//! Only components that import some `wasi:*` interface are linked with it
//! (see `crate::plugin::loader`); the context itself is created on the
//! first WASI call a store makes.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{
    WasiCtxBuilder, WasiCtxView, WasiView,
    cli::{IsTerminal, StdoutStream},
    p2::{OutputStream, Pollable, StreamResult},
};

use crate::plugin::state::{HostState, WasiState};

/// Longest line buffered before it is emitted anyway.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// A store's WASI state: no filesystem, environment, arguments or network;
/// stdout and stderr as `tracing` lines.
fn new_state(route: &Arc<str>, plugin: &Arc<str>) -> WasiState {
    let stdout = TracingStdio {
        route: route.clone(),
        plugin: plugin.clone(),
        stream: "stdout",
    };
    let stderr = TracingStdio {
        stream: "stderr",
        ..stdout.clone()
    };
    let ctx = WasiCtxBuilder::new()
        .stdout(stdout)
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build();
    WasiState {
        ctx,
        table: ResourceTable::new(),
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (route, plugin) = (&self.ctx.route, &self.ctx.plugin);
        let wasi = self
            .wasi
            .get_or_insert_with(|| Box::new(new_state(route, plugin)));
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut wasi.table,
        }
    }
}

/// stdout or stderr of one plugin, as a `tracing` sink.
#[derive(Clone)]
struct TracingStdio {
    route: Arc<str>,
    plugin: Arc<str>,
    stream: &'static str,
}

impl IsTerminal for TracingStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TracingStdio {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Buffers bytes until a newline (or [`MAX_LINE_BYTES`]) and emits each
/// line as one event; a partial line is emitted when the stream is dropped.
/// Flushes do not emit: guests flush after every write, and `print("x")`
/// writes `x` and the newline separately.
struct LineWriter {
    sink: TracingStdio,
    buf: Vec<u8>,
}

impl LineWriter {
    fn new(sink: TracingStdio) -> Self {
        Self {
            sink,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.buf.len();
            match bytes[..bytes.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(nl) => {
                    self.buf.extend_from_slice(&bytes[..nl]);
                    self.emit();
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    let take = bytes.len().min(room);
                    self.buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.buf.len() == MAX_LINE_BYTES {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.buf);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let TracingStdio {
            route,
            plugin,
            stream,
        } = &self.sink;
        tracing::info!(target: "pylon::plugin::stdio", route = &**route, plugin = &**plugin, stream, "{line}");
        self.buf.clear();
    }

    fn flush_partial(&mut self) {
        if !self.buf.is_empty() {
            self.emit();
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_partial();
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().flush_partial();
        Poll::Ready(Ok(()))
    }
}
