"""{{name}}: a pylon plugin.

Answers 401 to a request without an ``x-tenant`` header, and tags every
other request with ``x-tier: <tier>`` from the config before it goes on.

Config (JSON, from the gateway's TOML): ``{"tier": "gold"}``; ``tier`` is
optional (default ``free``), any other key rejects the config, so a typo is
caught when the gateway loads, not on the first request.

``pylon_plugin.py`` beside this file has thin typed shortcuts over the
bindings (``parse_config``, ``header``, ``respond``, ``proceed``,
``set_header``, ``kv_get``, ``log``, ...). The bindings themselves,
``wit_world``, are generated from ``wit/`` by componentize-py at build time
(``pylon plugin build``); run ``componentize-py -d wit -w plugin bindings .``
to see them, and use them directly for anything the helpers do not cover.
"""

from componentize_py_types import Err
from pylon_plugin import needs, no_response_edits, parse_config, proceed, respond, set_header
from wit_world import exports
from wit_world.imports.types import Needs, Request, RequestAction, ResponseEdits, ResponseView

# The config's keys: (type, default).
FIELDS = {"tier": (str, "free")}

# One instance serves one request at a time; configure runs first.
_tier = "free"


class Guest(exports.Guest):
    def configure(self, config: str) -> Needs:
        global _tier
        tier = parse_config(config, FIELDS, "{{name}}")["tier"]
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in tier):
            raise Err("invalid {{name}} config: tier: contains a control character")
        _tier = tier
        # The request phase only: no body, no response phase.
        return needs()

    # `request` is a borrowed handle, valid only during the call: read the
    # parts you need (`request.header("x-a")`, `request.path()`, ...).
    def on_request(self, request: Request) -> RequestAction:
        if request.header("x-tenant") is None:
            return respond(401, "missing x-tenant header\n", {"content-type": "text/plain"})
        return proceed(headers=[set_header("x-tier", _tier)])

    def on_response(self, request: Request, response: ResponseView) -> ResponseEdits:
        return no_response_edits()
