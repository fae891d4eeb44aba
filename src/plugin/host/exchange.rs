//! `pylon:plugin/types` resources: the `request` and `response-view` a hook
//! reads on demand.
//!
//! For the length of one hook call the pipeline's request (and, in the
//! response phase, its response) is swapped into the store's [`Exchange`],
//! and the guest gets a borrowed handle. Each accessor copies only what it
//! returns into the guest, so a plugin that reads one header no longer pays
//! for lowering every header, the params and the client address on every
//! call. Swapping moves a few hundred bytes and allocates nothing.
//!
//! The handles carry no table entry: one store serves one call at a time, so
//! a handle can only mean "the request (or response) of the current call".
//! The component model ends every borrow before the call returns, and an
//! accessor called while nothing is lent traps rather than reading stale data.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wasmtime::component::Resource;

use crate::{
    pipeline::{PluginRequest, PluginResponse},
    plugin::{
        contract::current::pylon::plugin::types::{self, Request, ResponseView},
        convert::{self, headers_to_wit_owned},
        state::HostState,
    },
};

/// The handle rep of the one request (or response) a store can hold.
const REP: u32 = 0;

/// What a store lends its guest during a hook call.
pub(crate) struct Exchange {
    request: PluginRequest,
    response: PluginResponse,
    request_lent: bool,
    response_lent: bool,
    request_body: bool,
    response_body: bool,
}

/// A handle lent to an accessor outside any hook call: a host bug, turned
/// into a trap of that call rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` used outside the hook call it was lent to")]
pub(crate) struct NotLent(&'static str);

impl Exchange {
    /// An empty exchange for a store serving `route`.
    pub(crate) fn new(route: Arc<str>) -> Self {
        Self {
            request: PluginRequest {
                route,
                method: Method::GET,
                path: String::new(),
                query: None,
                headers: HeaderMap::new(),
                client_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                scheme: "http",
                client_identity: None,
                params: Vec::new(),
                body: None,
            },
            response: PluginResponse::new(StatusCode::OK),
            request_lent: false,
            response_lent: false,
            request_body: false,
            response_body: false,
        }
    }

    /// Take `req` in for a call and return the guest's handle to it; the body
    /// is visible only `with_body`. [`Self::give_back`] must follow.
    pub(crate) fn lend_request(
        &mut self,
        req: &mut PluginRequest,
        with_body: bool,
    ) -> Resource<Request> {
        std::mem::swap(&mut self.request, req);
        self.request_lent = true;
        self.request_body = with_body;
        Resource::new_borrow(REP)
    }

    /// Take `resp` in for a call, as [`Self::lend_request`] does.
    pub(crate) fn lend_response(
        &mut self,
        resp: &mut PluginResponse,
        with_body: bool,
    ) -> Resource<ResponseView> {
        std::mem::swap(&mut self.response, resp);
        self.response_lent = true;
        self.response_body = with_body;
        Resource::new_borrow(REP)
    }

    /// Hand back whatever was lent, after the call (also after a failed one).
    pub(crate) fn give_back(&mut self, req: &mut PluginRequest, resp: Option<&mut PluginResponse>) {
        if std::mem::take(&mut self.request_lent) {
            std::mem::swap(&mut self.request, req);
        }
        if let Some(resp) = resp
            && std::mem::take(&mut self.response_lent)
        {
            std::mem::swap(&mut self.response, resp);
        }
    }

    fn request(&self) -> wasmtime::Result<&PluginRequest> {
        if self.request_lent {
            Ok(&self.request)
        } else {
            Err(wasmtime::Error::new(NotLent("request")))
        }
    }

    fn response(&self) -> wasmtime::Result<&PluginResponse> {
        if self.response_lent {
            Ok(&self.response)
        } else {
            Err(wasmtime::Error::new(NotLent("response-view")))
        }
    }
}

/// The first value of `name`; an invalid name is simply absent.
fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

/// The buffered body, only when the plugin asked for it.
fn visible(body: &Option<Bytes>, asked: bool) -> Option<Vec<u8>> {
    body.as_ref().filter(|_| asked).map(|b| b.to_vec())
}

fn every(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

/// The current contract's `types` resources (older versions adapt onto
/// them in `contract`).
macro_rules! serve_types {
    ($t:ident) => {
        impl $t::Host for HostState {}

        impl $t::HostRequest for HostState {
            fn route(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.exchange.request()?.route.to_string())
            }

            fn method(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.exchange.request()?.method.as_str().to_owned())
            }

            fn path(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.exchange.request()?.path.clone())
            }

            fn query(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Option<String>> {
                Ok(self.exchange.request()?.query.clone())
            }

            fn header(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(first(&self.exchange.request()?.headers, &name))
            }

            fn header_all(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Vec<Vec<u8>>> {
                Ok(every(&self.exchange.request()?.headers, &name))
            }

            fn headers(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Vec<$t::Header>> {
                Ok(headers_to_wit_owned(&self.exchange.request()?.headers))
            }

            fn client_addr(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(convert::socket_addr_text(
                    self.exchange.request()?.client_addr,
                ))
            }

            fn scheme(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.exchange.request()?.scheme.to_owned())
            }

            fn client_identity(
                &mut self,
                _: Resource<$t::Request>,
            ) -> wasmtime::Result<Option<$t::ClientIdentity>> {
                let identity = &self.exchange.request()?.client_identity;
                Ok(identity.as_deref().map(convert::client_identity_to_wit))
            }

            fn param(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Option<String>> {
                Ok(self
                    .exchange
                    .request()?
                    .params
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone()))
            }

            fn params(
                &mut self,
                _: Resource<$t::Request>,
            ) -> wasmtime::Result<Vec<(String, String)>> {
                Ok(self.exchange.request()?.params.clone())
            }

            fn body(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Option<Vec<u8>>> {
                let body = &self.exchange.request()?.body;
                Ok(visible(body, self.exchange.request_body))
            }

            fn drop(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<()> {
                // Handles are only ever lent (borrowed); there is nothing to free.
                Ok(())
            }
        }

        impl $t::HostResponseView for HostState {
            fn status(&mut self, _: Resource<$t::ResponseView>) -> wasmtime::Result<u16> {
                Ok(self.exchange.response()?.status.as_u16())
            }

            fn header(
                &mut self,
                _: Resource<$t::ResponseView>,
                name: String,
            ) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(first(&self.exchange.response()?.headers, &name))
            }

            fn header_all(
                &mut self,
                _: Resource<$t::ResponseView>,
                name: String,
            ) -> wasmtime::Result<Vec<Vec<u8>>> {
                Ok(every(&self.exchange.response()?.headers, &name))
            }

            fn headers(
                &mut self,
                _: Resource<$t::ResponseView>,
            ) -> wasmtime::Result<Vec<$t::Header>> {
                Ok(headers_to_wit_owned(&self.exchange.response()?.headers))
            }

            fn body(&mut self, _: Resource<$t::ResponseView>) -> wasmtime::Result<Option<Vec<u8>>> {
                let body = &self.exchange.response()?.body;
                Ok(visible(body, self.exchange.response_body))
            }

            fn drop(&mut self, _: Resource<$t::ResponseView>) -> wasmtime::Result<()> {
                Ok(())
            }
        }
    };
}

serve_types!(types);

#[cfg(test)]
mod tests {
    use types::{HostRequest, HostResponseView};

    use super::*;
    use crate::{
        kv::MemoryKv,
        plugin::{HostServices, state::GuestContext},
        upstream::Upstreams,
    };

    fn state() -> HostState {
        let ctx = GuestContext {
            plugin: Arc::from("p"),
            route: Arc::from("r"),
            grants: Default::default(),
            kv_prefix: "p:".into(),
            kv_max_value: 1 << 20,
            stats: Default::default(),
            services: HostServices {
                kv: Arc::new(MemoryKv::new()),
                http: Arc::new(Upstreams::new(&Default::default(), 1)),
                clock: Default::default(),
            },
        };
        HostState::new(Arc::new(ctx), 1 << 20)
    }

    fn request() -> PluginRequest {
        let mut req = Exchange::new(Arc::from("r")).request;
        req.method = Method::POST;
        req.path = "/a".into();
        req.headers.append("x-a", "1".parse().unwrap());
        req.headers.append("x-a", "2".parse().unwrap());
        req.params = vec![("id".into(), "7".into())];
        req.body = Some(Bytes::from_static(b"hi"));
        req.scheme = "https";
        req.client_identity = Some(Arc::new(crate::tls::ClientIdentity {
            subject: "CN=alice".into(),
            dns_names: vec!["alice.test".into()],
            uris: vec!["spiffe://acme/alice".into()],
            sha256: "ab".repeat(32),
            not_after: 2_208_988_800,
        }));
        req
    }

    #[test]
    fn lent_parts_read_back_and_return_unchanged() {
        let mut s = state();
        let mut req = request();
        let mut resp = PluginResponse::new(StatusCode::CREATED);
        resp.body = Some(Bytes::from_static(b"out"));
        let r = s.exchange.lend_request(&mut req, false);
        let v = s.exchange.lend_response(&mut resp, true);
        assert!(req.path.is_empty(), "the request moved into the store");
        let b = |r: &Resource<Request>| Resource::<Request>::new_borrow(r.rep());
        assert_eq!(HostRequest::method(&mut s, b(&r)).unwrap(), "POST");
        assert_eq!(
            HostRequest::header(&mut s, b(&r), "X-A".into()).unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            HostRequest::header_all(&mut s, b(&r), "x-a".into()).unwrap(),
            [b"1".to_vec(), b"2".to_vec()]
        );
        assert_eq!(
            HostRequest::header(&mut s, b(&r), "bad name".into()).unwrap(),
            None
        );
        assert_eq!(
            HostRequest::param(&mut s, b(&r), "id".into()).unwrap(),
            Some("7".into())
        );
        assert_eq!(
            HostRequest::body(&mut s, b(&r)).unwrap(),
            None,
            "the body stays hidden unless asked for"
        );
        assert_eq!(HostRequest::scheme(&mut s, b(&r)).unwrap(), "https");
        let id = HostRequest::client_identity(&mut s, b(&r))
            .unwrap()
            .expect("the connection's identity");
        assert_eq!(
            (id.subject, id.dns_names, id.uris, id.sha256, id.not_after),
            (
                "CN=alice".to_owned(),
                vec!["alice.test".to_owned()],
                vec!["spiffe://acme/alice".to_owned()],
                "ab".repeat(32),
                2_208_988_800
            )
        );
        let bv = Resource::<ResponseView>::new_borrow(v.rep());
        assert_eq!(HostResponseView::status(&mut s, bv).unwrap(), 201);
        let bv = Resource::<ResponseView>::new_borrow(v.rep());
        assert_eq!(
            HostResponseView::body(&mut s, bv).unwrap(),
            Some(b"out".to_vec())
        );

        s.exchange.give_back(&mut req, Some(&mut resp));
        assert_eq!(req.path, "/a");
        assert_eq!(req.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(resp.status, StatusCode::CREATED);
        assert!(req.client_identity.is_some(), "the identity came back too");
        let err = HostRequest::method(&mut s, b(&r)).unwrap_err();
        assert!(err.downcast_ref::<NotLent>().is_some(), "{err}");
    }
}
