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

use http::HeaderMap;
use wasmtime::component::Resource;

use crate::plugin::{
    contract::current::pylon::plugin::types,
    convert::{self, headers_to_wit_owned},
    state::Exchange,
};

/// The first value of `name`; an invalid name is simply absent.
fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
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
        impl $t::Host for Exchange {}

        impl $t::HostRequest for Exchange {
            fn route(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.request()?.route.to_string())
            }

            fn method(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.request()?.method.as_str().to_owned())
            }

            fn path(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.request()?.path.clone())
            }

            fn query(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Option<String>> {
                Ok(self.request()?.query.clone())
            }

            fn header(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(first(&self.request()?.headers, &name))
            }

            fn header_all(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Vec<Vec<u8>>> {
                Ok(every(&self.request()?.headers, &name))
            }

            fn headers(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Vec<$t::Header>> {
                Ok(headers_to_wit_owned(&self.request()?.headers))
            }

            fn client_addr(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(convert::socket_addr_text(self.request()?.client_addr))
            }

            fn scheme(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<String> {
                Ok(self.request()?.scheme.to_owned())
            }

            fn client_identity(
                &mut self,
                _: Resource<$t::Request>,
            ) -> wasmtime::Result<Option<$t::ClientIdentity>> {
                let identity = &self.request()?.client_identity;
                Ok(identity.as_deref().map(convert::client_identity_to_wit))
            }

            fn param(
                &mut self,
                _: Resource<$t::Request>,
                name: String,
            ) -> wasmtime::Result<Option<String>> {
                Ok(self
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
                Ok(self.request()?.params.clone())
            }

            fn body(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(self.request_body()?.map(|b| b.to_vec()))
            }

            fn drop(&mut self, _: Resource<$t::Request>) -> wasmtime::Result<()> {
                // Handles are only ever lent (borrowed); there is nothing to free.
                Ok(())
            }
        }

        impl $t::HostResponseView for Exchange {
            fn status(&mut self, _: Resource<$t::ResponseView>) -> wasmtime::Result<u16> {
                Ok(self.response()?.status.as_u16())
            }

            fn header(
                &mut self,
                _: Resource<$t::ResponseView>,
                name: String,
            ) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(first(&self.response()?.headers, &name))
            }

            fn header_all(
                &mut self,
                _: Resource<$t::ResponseView>,
                name: String,
            ) -> wasmtime::Result<Vec<Vec<u8>>> {
                Ok(every(&self.response()?.headers, &name))
            }

            fn headers(
                &mut self,
                _: Resource<$t::ResponseView>,
            ) -> wasmtime::Result<Vec<$t::Header>> {
                Ok(headers_to_wit_owned(&self.response()?.headers))
            }

            fn body(&mut self, _: Resource<$t::ResponseView>) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(self.response_body()?.map(|b| b.to_vec()))
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
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Method, StatusCode};
    use types::{HostRequest, HostResponseView, Request, ResponseView};

    use super::*;
    use crate::{
        pipeline::{PluginRequest, PluginResponse},
        plugin::state::{NotLent, empty_request},
    };

    /// What a store lends its guest, the view these accessors get.
    fn state() -> Exchange {
        Exchange::new(Arc::from("r"))
    }

    fn request() -> PluginRequest {
        let mut req = empty_request(Arc::from("r"));
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
        let r = s.lend_request(&mut req, false);
        let v = s.lend_response(&mut resp, true);
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

        s.give_back(&mut req, Some(&mut resp));
        assert_eq!(req.path, "/a");
        assert_eq!(req.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(resp.status, StatusCode::CREATED);
        assert!(req.client_identity.is_some(), "the identity came back too");
        let err = HostRequest::method(&mut s, b(&r)).unwrap_err();
        assert!(err.downcast_ref::<NotLent>().is_some(), "{err}");
    }
}
