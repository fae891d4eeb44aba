"""tenant-router: route each request to its tenant's upstream.

The tenant comes from a request header (``x-tenant`` by default). Its
upstream is looked up in the kv store under ``tenant:<id>`` (so tenants can
be added or moved at run time, without a reload), else in the config's
``tenants`` table (the defaults). The request then goes to that upstream,
with the tenant id (lowercased) and, optionally, the chosen upstream in
headers for the upstream to see. A request naming no tenant, an invalid
one, or one known nowhere is answered 400; with ``fallback-upstream`` an
unknown tenant goes there instead.

Config (JSON from the gateway's TOML; unknown keys are refused)::

    {"tenants": {"acme": "orders-eu"},      # defaults: tenant -> upstream
     "header": "x-tenant",                  # where the tenant id is
     "kv-prefix": "tenant:",                # kv key = prefix + tenant id
     "fallback-upstream": null,             # unknown tenants: 400, or here
     "upstream-header": null}               # e.g. "x-tenant-upstream"

Needs the ``kv`` capability for run-time tenants (without it, or when the
store is unavailable, the config's table is used and a warning logged);
``log`` for that warning.
"""

import re

from pylon_plugin import (
    KvError,
    header,
    kv_get,
    log,
    needs,
    no_response_edits,
    parse_config,
    proceed,
    respond,
    set_header,
)
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Needs, Request, RequestAction, ResponseEdits, ResponseView

# A tenant id: what may reach a kv key and a header.
TENANT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# An upstream name as the gateway's config allows them (and no more).
UPSTREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}")

FIELDS = {
    "tenants": (dict, {}),
    "header": (str, "x-tenant"),
    "kv-prefix": (str, "tenant:"),
    "fallback-upstream": (str, None),
    "upstream-header": (str, None),
}


class Settings:
    def __init__(self, text: str):
        raw = parse_config(text, FIELDS, "tenant-router")
        problems = []
        self.tenants = {}
        for tenant, upstream in raw["tenants"].items():
            if not TENANT.fullmatch(tenant):
                problems.append(f"tenants: {tenant[:64]!r} is not a tenant id (lowercase letters, digits, `.`, `_`, `-`; at most 64)")
            elif not isinstance(upstream, str) or not UPSTREAM.fullmatch(upstream):
                problems.append(f"tenants.{tenant}: {str(upstream)[:64]!r} is not an upstream name")
            else:
                self.tenants[tenant] = upstream
        self.header = raw["header"].lower()
        if not HEADER.fullmatch(self.header):
            problems.append(f"header: {raw['header'][:64]!r} is not a header name")
        self.kv_prefix = raw["kv-prefix"]
        if len(self.kv_prefix) > 64:
            problems.append("kv-prefix: at most 64 characters")
        self.fallback = raw["fallback-upstream"]
        if self.fallback is not None and not UPSTREAM.fullmatch(self.fallback):
            problems.append(f"fallback-upstream: {self.fallback[:64]!r} is not an upstream name")
        self.upstream_header = raw["upstream-header"] and raw["upstream-header"].lower()
        if self.upstream_header is not None and not HEADER.fullmatch(self.upstream_header):
            problems.append(f"upstream-header: {raw['upstream-header'][:64]!r} is not a header name")
        if problems:
            raise Err("invalid tenant-router config: " + "; ".join(problems))


# One instance serves one request at a time; configure runs first.
settings: Settings = None  # type: ignore[assignment]
# Warn about the kv store once per instance, not per request.
kv_warned = False


def lookup(tenant: str):
    """The tenant's upstream: kv first, then the config; None if unknown."""
    global kv_warned
    try:
        stored = kv_get(settings.kv_prefix + tenant)
    except KvError as e:
        if not kv_warned:
            log("warn", f"tenant-router: {e}; using the config's tenants only")
            kv_warned = True
        stored = None
    if stored is not None:
        name = stored.decode("utf-8", "replace").strip()
        if UPSTREAM.fullmatch(name):
            return name
        log("warn", f"tenant-router: kv entry for {tenant!r} is not an upstream name; ignored")
    return settings.tenants.get(tenant)


class Guest(exports.Guest):
    def configure(self, config: str) -> Needs:
        global settings
        settings = Settings(config)
        return needs()

    def on_request(self, request: Request) -> RequestAction:
        raw = header(request, settings.header)
        if raw is None:
            return respond(400, f"missing {settings.header} header\n")
        tenant = raw.strip().lower()
        if not TENANT.fullmatch(tenant):
            return respond(400, f"invalid {settings.header} header\n")
        upstream = lookup(tenant) or settings.fallback
        if upstream is None:
            return respond(400, f"unknown tenant: {tenant}\n")
        edits = [set_header(settings.header, tenant)]
        if settings.upstream_header:
            edits.append(set_header(settings.upstream_header, upstream))
        return proceed(headers=edits, upstream=upstream)

    def on_response(self, request: Request, response: ResponseView) -> ResponseEdits:
        return no_response_edits()
