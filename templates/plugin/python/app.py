"""{{name}}: a pylon plugin.

Answers 401 to a request without an ``x-tenant`` header, and tags every
other request with ``x-tier: <tier>`` from the config before it goes on.

Config (JSON, from the gateway's TOML): ``{"tier": "gold"}``; ``tier`` is
optional (default ``free``), any other key rejects the config, so a typo is
caught when the gateway loads, not on the first request.

``wit_world`` is generated from ``wit/`` by componentize-py at build time
(``pylon plugin build``); run ``componentize-py -d wit -w plugin bindings .``
to see it. ``pylon_plugin.py`` beside this file has thin shortcuts over it
(``parse_config``, ``header``, ``respond``, ``proceed``, ``set_header``,
``kv_get``, ``log``); this file spells the records out instead.
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
    RequestAction_Respond,
    RequestEdits,
    Response,
    ResponseEdits,
    ResponseView,
)

# One instance serves one request at a time; configure runs first.
_tier = b"free"


def _parse_config(text: str) -> bytes:
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise Err(f"invalid config: not JSON ({e})")
    if not isinstance(config, dict):
        raise Err("invalid config: expected a JSON object")
    unknown = sorted(set(config) - {"tier"})
    if unknown:
        raise Err(f"invalid config: unknown field `{unknown[0]}`, expected `tier`")
    tier = config.get("tier", "free")
    if not isinstance(tier, str):
        raise Err("invalid config: `tier` must be a string")
    value = tier.encode("utf-8")
    if any(b < 0x20 or b == 0x7F for b in value):
        raise Err("invalid config: `tier` contains a control character")
    return value


class Guest(exports.Guest):
    def configure(self, config: str) -> Needs:
        global _tier
        _tier = _parse_config(config)
        return Needs(
            request_phase=True,
            request_body=False,
            response_phase=False,
            response_body=False,
            fixed_request_headers=[],
            fixed_response_headers=[],
        )

    # `request` is a borrowed handle, valid only during the call: read the
    # parts you need (`request.header("x-a")`, `request.path()`, ...).
    def on_request(self, request: Request) -> RequestAction:
        if request.header("x-tenant") is None:
            return RequestAction_Respond(
                Response(
                    status=401,
                    headers=[Header(name="content-type", value=b"text/plain")],
                    body=b"missing x-tenant header\n",
                )
            )
        return RequestAction_Continue(
            RequestEdits(
                headers=[HeaderOp_Set(Header(name="x-tier", value=_tier))],
                path=None,
                query=None,
                upstream=None,
                body=None,
                response_headers=[],
            )
        )

    def on_response(self, request: Request, response: ResponseView) -> ResponseEdits:
        return ResponseEdits(status=None, headers=[], body=None)
