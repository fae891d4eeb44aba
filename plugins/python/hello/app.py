"""hello-python: a minimal pylon plugin written in Python (componentize-py).

Config: ``{"greeting": "..."}`` (optional). Unknown keys, a non-string
greeting, or a greeting that is not a valid header value reject the config.

on-request adds the request header ``x-hello: <greeting>`` (default
``python``) and continues. The response phase is not used.

Build (scripts/build-plugins does this):
    componentize-py -d ../../../wit -w plugin componentize app -o hello-python.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    Header,
    HeaderOp_Set,
    Needs,
    Request,
    RequestAction,
    RequestAction_Continue,
    RequestEdits,
    ResponseEdits,
    ResponseView,
)

ALLOWED_KEYS = {"greeting"}

# One plugin value per Wasm instance, like the Rust SDK: set by configure.
_greeting: bytes | None = None


def _parse_config(text: str) -> bytes:
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise Err(f"invalid plugin config: not JSON ({e})")
    if not isinstance(config, dict):
        raise Err("invalid plugin config: expected a JSON object")
    unknown = sorted(set(config) - ALLOWED_KEYS)
    if unknown:
        names = ", ".join(f"`{k}`" for k in unknown)
        raise Err(f"invalid plugin config: unknown field {names}, expected `greeting`")
    greeting = config.get("greeting", "python")
    if not isinstance(greeting, str):
        raise Err("invalid plugin config: `greeting` must be a string")
    value = greeting.encode("utf-8")
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        raise Err("invalid plugin config: `greeting` contains a control character")
    if value != value.strip(b" \t"):
        raise Err("invalid plugin config: `greeting` has leading or trailing whitespace")
    return value


class Guest(exports.Guest):
    def configure(self, config: str) -> Needs:
        global _greeting
        _greeting = _parse_config(config)
        return Needs(
            request_phase=True,
            request_body=False,
            response_phase=False,
            response_body=False,
            fixed_request_headers=[],
            fixed_response_headers=[],
        )

    # `request` / `response` are borrowed resource handles, valid only during
    # the call: read the parts you need on demand (`request.header("x-a")`,
    # `request.path()`, `response.status()`, ...) and do not keep the handle.
    def on_request(self, request: Request) -> RequestAction:
        if _greeting is None:
            raise RuntimeError("hello-python: on-request called before configure")
        edits = RequestEdits(
            headers=[HeaderOp_Set(Header(name="x-hello", value=_greeting))],
            path=None,
            query=None,
            upstream=None,
            body=None,
            response_headers=[],
        )
        return RequestAction_Continue(edits)

    def on_response(self, request: Request, response: ResponseView) -> ResponseEdits:
        return ResponseEdits(status=None, headers=[], body=None)
