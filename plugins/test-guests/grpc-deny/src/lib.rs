//! Test guest `grpc-deny`: a gRPC call (`content-type: application/grpc*`)
//! is refused with `Response::grpc_status(PermissionDenied, "calls to
//! <path> are not allowed: ünïcode")` (the message exercises the encoding);
//! anything else continues. Config: `{}`.

use pylon_plugin_sdk::{
    GrpcCode, Needs, Plugin, ReadRequest, Request, RequestAction, RequestEdits, Response, config,
    export_plugin,
};

struct GrpcDeny;

impl Plugin for GrpcDeny {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config::Empty {} = config::parse(text)?;
        Ok((GrpcDeny, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let grpc = req
            .header_str("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"));
        if !grpc {
            return RequestEdits::default().into();
        }
        let message = format!("calls to {} are not allowed: ünïcode", req.path());
        Response::grpc_status(GrpcCode::PermissionDenied, &message).into()
    }
}

export_plugin!(GrpcDeny);
