//! gRPC passthrough (issue 19.8) with a real tonic server behind the
//! gateway (an `h2c` upstream) and a real tonic client in front: unary,
//! server-streaming, client-streaming and bidirectional calls, the
//! upstream's status and message (trailers) reaching the client, and the
//! answers pylon gives itself as gRPC statuses (a plugin refusing a call,
//! an upstream timing out or down).
//!
//! No protobuf: the services exchange raw bytes through a pass-through
//! codec, so neither `protoc` nor generated code is needed.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use futures::{Stream, StreamExt, future::BoxFuture, stream::BoxStream};
use http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tonic::{
    Code, Request, Response, Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::harness::{TestGateway, plugin};

/// Messages are the bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// A tonic service from a closure.
struct Svc<F>(F);

impl<Req, Resp, F> tower_service::Service<Req> for Svc<F>
where
    F: FnMut(Req) -> BoxFuture<'static, Result<Resp, Status>>,
{
    type Response = Resp;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Resp, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Self::Future {
        (self.0)(req)
    }
}

type Msgs = BoxStream<'static, Result<Bytes, Status>>;

/// `Unary`: the message back; `fail` → NOT_FOUND "no such thing" (in
/// trailers after headers); `slow` → answers after 5 s.
fn unary_svc(r: Request<Bytes>) -> BoxFuture<'static, Result<Response<Bytes>, Status>> {
    Box::pin(async move {
        let m = r.into_inner();
        if m == "fail" {
            return Err(Status::not_found("no such thing"));
        }
        if m == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(Response::new(m))
    })
}

/// `Count`: `n` (a decimal) → messages "0" .. "n-1".
fn count_svc(r: Request<Bytes>) -> BoxFuture<'static, Result<Response<Msgs>, Status>> {
    Box::pin(async move {
        let n: usize = std::str::from_utf8(&r.into_inner())
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Status::invalid_argument("not a number"))?;
        let s: Msgs = futures::stream::iter((0..n).map(|i| Ok(Bytes::from(i.to_string())))).boxed();
        Ok(Response::new(s))
    })
}

/// `Join`: every message, concatenated.
fn join_svc(r: Request<Streaming<Bytes>>) -> BoxFuture<'static, Result<Response<Bytes>, Status>> {
    Box::pin(async move {
        let mut s = r.into_inner();
        let mut all = Vec::new();
        while let Some(m) = s.message().await? {
            all.extend_from_slice(&m);
        }
        Ok(Response::new(Bytes::from(all)))
    })
}

/// `Chat`: each message back as it comes, uppercased.
fn chat_svc(r: Request<Streaming<Bytes>>) -> BoxFuture<'static, Result<Response<Msgs>, Status>> {
    Box::pin(async move {
        let s: Msgs = r
            .into_inner()
            .map(|m| m.map(|b| Bytes::from(b.to_ascii_uppercase())))
            .boxed();
        Ok(Response::new(s))
    })
}

async fn dispatch(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(match req.uri().path() {
        "/t.Echo/Unary" => grpc.unary(Svc(unary_svc), req).await,
        "/t.Echo/Count" => grpc.server_streaming(Svc(count_svc), req).await,
        "/t.Echo/Join" => grpc.client_streaming(Svc(join_svc), req).await,
        "/t.Echo/Chat" => grpc.streaming(Svc(chat_svc), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// The test service `t.Echo` (the `*_svc` functions) on an h2c server.
async fn echo_server() -> SocketAddr {
    counting_echo_server().await.0
}

/// [`echo_server`], counting the calls it has received.
async fn counting_echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let counted = counted.clone();
            let svc = service_fn(move |req| {
                counted.fetch_add(1, Ordering::SeqCst);
                dispatch(req)
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

type Channel = tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>;

/// A tonic client speaking h2c to `addr`.
fn client(addr: SocketAddr) -> Channel {
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    tonic::client::Grpc::with_origin(http, format!("http://{addr}").parse().unwrap())
}

async fn unary<T>(c: &mut tonic::client::Grpc<T>, msg: &'static str) -> Result<Bytes, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: std::fmt::Debug,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    c.ready().await.unwrap();
    c.unary(
        Request::new(Bytes::from_static(msg.as_bytes())),
        PathAndQuery::from_static("/t.Echo/Unary"),
        Raw,
    )
    .await
    .map(Response::into_inner)
}

/// A gateway with upstream `g` (h2c) at `up` and route `r` for every path
/// (`route_extra` lines added), `top` TOML before.
async fn gateway(up: SocketAddr, top: &str, route_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{top}\n[upstreams.g]\ntargets = [\"{up}\"]\nprotocol = \"h2c\"\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"g\"\n{route_extra}\n"
    ))
    .await
}

#[tokio::test]
async fn all_four_kinds_of_call_pass_with_their_statuses() {
    let up = echo_server().await;
    let gw = gateway(up, "", "").await;
    let mut c = client(gw.addr);

    assert_eq!(unary(&mut c, "ping").await.unwrap(), "ping");
    // The upstream's own error status and message come through (trailers).
    let err = unary(&mut c, "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");

    c.ready().await.unwrap();
    let mut s = c
        .server_streaming(
            Request::new(Bytes::from_static(b"50")),
            PathAndQuery::from_static("/t.Echo/Count"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.push(String::from_utf8(m.to_vec()).unwrap());
    }
    assert_eq!(got, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());

    c.ready().await.unwrap();
    let parts = futures::stream::iter(["a", "bb", "ccc"].map(|p| Bytes::from_static(p.as_bytes())));
    let joined = c
        .client_streaming(
            Request::new(parts),
            PathAndQuery::from_static("/t.Echo/Join"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined, "abbccc");

    // Bidirectional: each answer arrives before the next message is sent.
    c.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing = tokio_stream_from(rx);
    let mut answers = c
        .streaming(
            Request::new(outgoing),
            PathAndQuery::from_static("/t.Echo/Chat"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from_static(word.as_bytes())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), answers.message())
            .await
            .expect("an answer while the call is open")
            .unwrap()
            .unwrap();
        assert_eq!(answer, word.to_ascii_uppercase());
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
    // The call ended with OK in its trailers.
    assert!(answers.trailers().await.unwrap().is_some());
}

/// The messages of `rx` as a stream (tonic wants a `Stream`).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Pin<Box<dyn Stream<Item = Bytes> + Send>> {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn answers_of_the_gateway_are_grpc_statuses() {
    let up = echo_server().await;
    // Route timeout 1 s: `slow` (5 s) is DEADLINE_EXCEEDED.
    let gw = gateway(up, "", "timeout = \"1s\"").await;
    let mut c = client(gw.addr);
    let err = unary(&mut c, "slow").await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.message(), "upstream timed out");

    // Nothing listens on the target: UNAVAILABLE.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = gateway(dead_addr, "", "").await;
    let mut c = client(gw.addr);
    let err = unary(&mut c, "ping").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn a_plugin_refusing_a_call_gives_a_grpc_status() {
    let up = echo_server().await;
    let top = format!("[plugins.auth-key]\ncomponent = {:?}\n", plugin("auth-key"));
    let route = "[[routes.plugins]]\nplugin = \"auth-key\"\n[routes.plugins.config]\n\
                 keys = [{ consumer = \"a\", sha256 = \"\
                 0000000000000000000000000000000000000000000000000000000000000000\" }]\n";
    let gw = gateway(up, &top, route).await;
    let mut c = client(gw.addr);
    let err = unary(&mut c, "ping").await.unwrap_err();
    // The plugin's 401 as gRPC: UNAUTHENTICATED, its body as the message.
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().is_empty());
}

#[tokio::test]
async fn the_sdk_helper_chooses_the_status_and_message() {
    let up = echo_server().await;
    let top = format!(
        "[plugins.grpc-deny]\ncomponent = {:?}\n",
        plugin("grpc-deny")
    );
    let route = "[[routes.plugins]]\nplugin = \"grpc-deny\"\n";
    let gw = gateway(up, &top, route).await;
    let mut c = client(gw.addr);
    let err = unary(&mut c, "ping").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "calls to /t.Echo/Unary are not allowed: ünïcode"
    );
}

#[tokio::test]
async fn answers_of_the_server_itself_are_grpc_statuses() {
    let up = echo_server().await;
    // No route for the call: UNIMPLEMENTED (from 404).
    let gw = TestGateway::start(&format!(
        "[upstreams.g]\ntargets = [\"{up}\"]\nprotocol = \"h2c\"\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/elsewhere\"\nupstream = \"g\"\n"
    ))
    .await;
    let err = unary(&mut client(gw.addr), "ping").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // The listener's stream idle timeout (1 s) passes while `slow` (5 s)
    // is awaited: the server's own 504 is DEADLINE_EXCEEDED.
    let gw = gateway(
        up,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nstream-idle-timeout = \"1s\"\n",
        "",
    )
    .await;
    let err = unary(&mut client(gw.gateway.local_addrs()[1]), "slow")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.message(), "stream idle timeout");

    // One call in flight at most: once the upstream has `slow`, another
    // call (its own connection) is UNAVAILABLE with the server's reason.
    let (up, calls) = counting_echo_server().await;
    let gw = gateway(
        up,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nmax-requests-in-flight = 1\n",
        "",
    )
    .await;
    let addr = gw.gateway.local_addrs()[1];
    let mut first = client(addr);
    let slow = tokio::spawn(async move { unary(&mut first, "slow").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow call never reached the upstream: {slow:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = unary(&mut client(addr), "ping").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "too many requests in flight");
    assert!(!slow.is_finished(), "the slow call was cut: {slow:?}");
    slow.abort();
}

/// A tower service sending requests over one HTTP/2 connection (tonic's
/// client needs one; hyper 1's `SendRequest` is not).
#[derive(Clone)]
struct H2Conn(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Conn {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<'static, Result<Self::Response, hyper::Error>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.0.send_request(req);
        Box::pin(fut)
    }
}

#[tokio::test]
async fn grpc_over_tls_to_the_gateway_reaches_an_h2c_upstream() {
    use crate::tls::{Pki, certs_toml, client_config, connect};
    let up = echo_server().await;
    let pki = Pki::new("grpc");
    let leaf = pki.issue("api", "api", &["api.test"], false);
    let gw = gateway(
        up,
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n{}\n",
            certs_toml(&[&leaf])
        ),
        "",
    )
    .await;
    let addr = gw.gateway.local_addrs()[1];
    let tls = connect(addr, "api.test", client_config(&pki, &[b"h2"], None))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut c = tonic::client::Grpc::with_origin(H2Conn(send), "https://api.test".parse().unwrap());
    assert_eq!(unary(&mut c, "ping").await.unwrap(), "ping");
    let err = unary(&mut c, "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
    // Streaming both ways over the TLS connection.
    c.ready().await.unwrap();
    let parts = futures::stream::iter(["x", "yy"].map(|p| Bytes::from_static(p.as_bytes())));
    let mut answers = c
        .streaming(
            Request::new(parts),
            PathAndQuery::from_static("/t.Echo/Chat"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = answers.message().await.unwrap() {
        got.push(m);
    }
    assert_eq!(got, ["X", "YY"]);
}
