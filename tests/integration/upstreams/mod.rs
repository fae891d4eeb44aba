//! Upstreams that survive failure (issue 19): retries to another target,
//! what must not be retried, the retry budget, passive ejection, active
//! health checks, balancing and load shedding, against real servers on
//! loopback.
//!
//! This file holds the targets that can be killed, the gateways and the
//! admin readings the tests below share.

mod balancing;
mod dns;
mod health;
mod retries;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};

use crate::harness::{TestGateway, admin_get};

/// A route `r` on every path to upstream `u`, with `extra` route lines.
fn route_to_u(extra: &str) -> String {
    format!("[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{extra}\n")
}

/// An address nothing listens on (a port just freed).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A server answering `name` that can be killed with every connection it
/// has (as a crashed process would), and started again on the same port.
struct Killable {
    addr: SocketAddr,
    name: &'static str,
    hits: Arc<AtomicUsize>,
    delay: Duration,
    conns: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Killable {
    async fn start(name: &'static str, delay: Duration) -> Killable {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(l, name, delay)
    }

    /// Serve on `l`.
    fn on(l: TcpListener, name: &'static str, delay: Duration) -> Killable {
        let k = Killable {
            addr: l.local_addr().unwrap(),
            name,
            hits: Arc::default(),
            delay,
            conns: Arc::default(),
        };
        k.serve(l);
        k
    }

    fn serve(&self, l: TcpListener) {
        let mut set = JoinSet::new();
        let (hits, name, delay) = (self.hits.clone(), self.name, self.delay);
        let conns = self.conns.clone();
        set.spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                let svc = service_fn(move |_req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            name.as_bytes(),
                        ))))
                    }
                });
                if let Some(set) = conns.lock().unwrap().as_mut() {
                    set.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        });
        *self.conns.lock().unwrap() = Some(set);
    }

    /// Close the listener and every connection.
    fn kill(&self) {
        if let Some(mut set) = self.conns.lock().unwrap().take() {
            set.abort_all();
            drop(set);
        }
    }

    async fn restart(&self) {
        self.kill();
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(&gw.gateway, "/metrics").await.1
}

async fn upstreams_json(gw: &TestGateway) -> serde_json::Value {
    serde_json::from_str(&admin_get(&gw.gateway, "/admin/upstreams").await.1).unwrap()
}

fn with_admin(toml: &str) -> String {
    format!("[admin]\naddress = \"127.0.0.1:0\"\n\n{toml}")
}

/// A gateway (with the admin API) whose upstream `u` has targets `a` and
/// `b` (and the `extra` upstream lines), route `r` on every path to it.
async fn two_target_gateway(
    a: impl std::fmt::Display,
    b: impl std::fmt::Display,
    extra: &str,
) -> TestGateway {
    TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{a}\", \"{b}\"]\n{extra}\n{}",
        route_to_u("")
    )))
    .await
}
