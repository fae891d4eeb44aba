//! The 0.3.0 imports, each a thin adapter onto the current contract's host
//! implementation (`crate::plugin::host`): arguments converted in, results
//! converted out, no behaviour of its own.

use wasmtime::component::{HasSelf, Linker, Resource};

use super::{
    bindings::pylon::plugin::{clock, http_client, kv, log, types},
    convert::{each, handle},
};
use crate::plugin::{
    contract::current::pylon::plugin as current,
    host::{
        clock::{self as clock_host, ClockData, ClockView},
        http::{self as http_host, HttpData, HttpView},
        kv::{self as kv_host, KvData, KvView},
        log::{self as log_host, LogData, LogView},
    },
    state::{Exchange, HostState},
};

/// Add every 0.3.0 import to `linker`, beside the current ones.
pub(in crate::plugin::contract) fn add_to_linker(
    linker: &mut Linker<HostState>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<HostState, HasSelf<Exchange>>(linker, |s| &mut s.exchange)?;
    log::add_to_linker::<HostState, LogData>(linker, log_host::view)?;
    clock::add_to_linker::<HostState, ClockData>(linker, clock_host::view)?;
    kv::add_to_linker::<HostState, KvData>(linker, kv_host::view)?;
    http_client::add_to_linker::<HostState, HttpData>(linker, http_host::view)
}

impl types::Host for Exchange {}

impl types::HostRequest for Exchange {
    fn route(&mut self, r: Resource<types::Request>) -> wasmtime::Result<String> {
        current::types::HostRequest::route(self, handle(r))
    }

    fn method(&mut self, r: Resource<types::Request>) -> wasmtime::Result<String> {
        current::types::HostRequest::method(self, handle(r))
    }

    fn path(&mut self, r: Resource<types::Request>) -> wasmtime::Result<String> {
        current::types::HostRequest::path(self, handle(r))
    }

    fn query(&mut self, r: Resource<types::Request>) -> wasmtime::Result<Option<String>> {
        current::types::HostRequest::query(self, handle(r))
    }

    fn header(
        &mut self,
        r: Resource<types::Request>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        current::types::HostRequest::header(self, handle(r), name)
    }

    fn header_all(
        &mut self,
        r: Resource<types::Request>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        current::types::HostRequest::header_all(self, handle(r), name)
    }

    fn headers(&mut self, r: Resource<types::Request>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(each(current::types::HostRequest::headers(self, handle(r))?))
    }

    fn client_addr(&mut self, r: Resource<types::Request>) -> wasmtime::Result<String> {
        current::types::HostRequest::client_addr(self, handle(r))
    }

    fn scheme(&mut self, r: Resource<types::Request>) -> wasmtime::Result<String> {
        current::types::HostRequest::scheme(self, handle(r))
    }

    fn param(
        &mut self,
        r: Resource<types::Request>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        current::types::HostRequest::param(self, handle(r), name)
    }

    fn params(&mut self, r: Resource<types::Request>) -> wasmtime::Result<Vec<(String, String)>> {
        current::types::HostRequest::params(self, handle(r))
    }

    fn body(&mut self, r: Resource<types::Request>) -> wasmtime::Result<Option<Vec<u8>>> {
        current::types::HostRequest::body(self, handle(r))
    }

    fn drop(&mut self, r: Resource<types::Request>) -> wasmtime::Result<()> {
        current::types::HostRequest::drop(self, handle(r))
    }
}

impl types::HostResponseView for Exchange {
    fn status(&mut self, r: Resource<types::ResponseView>) -> wasmtime::Result<u16> {
        current::types::HostResponseView::status(self, handle(r))
    }

    fn header(
        &mut self,
        r: Resource<types::ResponseView>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        current::types::HostResponseView::header(self, handle(r), name)
    }

    fn header_all(
        &mut self,
        r: Resource<types::ResponseView>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        current::types::HostResponseView::header_all(self, handle(r), name)
    }

    fn headers(
        &mut self,
        r: Resource<types::ResponseView>,
    ) -> wasmtime::Result<Vec<types::Header>> {
        Ok(each(current::types::HostResponseView::headers(
            self,
            handle(r),
        )?))
    }

    fn body(&mut self, r: Resource<types::ResponseView>) -> wasmtime::Result<Option<Vec<u8>>> {
        current::types::HostResponseView::body(self, handle(r))
    }

    fn drop(&mut self, r: Resource<types::ResponseView>) -> wasmtime::Result<()> {
        current::types::HostResponseView::drop(self, handle(r))
    }
}

impl log::Host for LogView<'_> {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        current::log::Host::log(self, level.into(), message)
    }
}

impl clock::Host for ClockView<'_> {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        current::clock::Host::now_ms(self)
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        current::clock::Host::monotonic_ns(self)
    }
}

impl kv::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        Ok(current::kv::Host::get(self, key).await?)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        Ok(current::kv::Host::set(self, key, value, ttl_ms).await?)
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        Ok(current::kv::Host::delete(self, key).await?)
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        Ok(current::kv::Host::incr(self, key, delta, ttl_ms).await?)
    }
}

impl http_client::Host for HttpView<'_> {
    async fn send(
        &mut self,
        request: http_client::OutboundRequest,
    ) -> Result<http_client::Response, http_client::HttpError> {
        let response = current::http_client::Host::send(self, request.into()).await?;
        Ok(response.into())
    }

    async fn send_all(
        &mut self,
        requests: Vec<http_client::OutboundRequest>,
    ) -> Vec<Result<http_client::Response, http_client::HttpError>> {
        current::http_client::Host::send_all(self, each(requests))
            .await
            .into_iter()
            .map(|result| result.map(Into::into).map_err(Into::into))
            .collect()
    }
}
