"""Thin typed helpers over the bindings componentize-py generates for a pylon
plugin (``wit_world``): config parsing that refuses unknown keys, building
the records the hooks return, reading headers as text, and the ``kv`` and
``log`` imports with plain Python errors.

Everything here is a shortcut for what the bindings already offer; use the
bindings directly (``wit_world.imports.types``) for anything it does not
cover. Shipped by ``pylon plugin new --lang python``; keep a copy beside
``app.py``.
"""

import json
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports.types import (
    Header,
    HeaderOp,
    HeaderOp_Append,
    HeaderOp_Remove,
    HeaderOp_Set,
    Needs,
    Request,
    RequestAction,
    RequestAction_Continue,
    RequestAction_Respond,
    RequestEdits,
    Response,
    ResponseEdits,
)

Bytes = Union[str, bytes]
HeaderItems = Union[Mapping[str, Bytes], Iterable[Tuple[str, Bytes]]]


def _bytes(value: Bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _items(headers: Optional[HeaderItems]) -> Sequence[Tuple[str, Bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


# ------------------------------------------------------------------ config


def _closest(word: str, known: Iterable[str]) -> Optional[str]:
    """The known key within a typo's reach of ``word``, if any."""

    def distance(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        return row[len(b)]

    best = min(known, key=lambda k: distance(word, k), default=None)
    if best is None:
        return None
    return best if 0 < distance(word, best) <= max(1, (len(word) + 2) // 3) else None


# The config is JSON (written as TOML): name its types the way its author does.
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array", type(None): "null"}


def _json_type(kind: type) -> str:
    return _JSON_TYPES.get(kind, kind.__name__)


def parse_config(text: str, fields: Mapping[str, Tuple[type, Any]], plugin: str = "plugin") -> dict:
    """Parse the route's JSON config into a dict of ``fields``.

    ``fields`` maps each key to ``(type, default)``: ``(str, "free")``,
    ``(dict, {})``, ``(bool, True)``... A key with default ``...`` (Ellipsis)
    is required; one with default None is optional and may be ``null``. Blank text counts as ``{}``. Unknown keys, missing required
    keys and wrong types raise ``Err("invalid <plugin> config: <key>: ...")``,
    which refuses the config (return it from ``configure`` by raising).
    """
    def fail(message: str) -> Err:
        return Err(f"invalid {plugin} config: {message}")

    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise fail(f"not JSON ({e})")
    if not isinstance(raw, dict):
        raise fail("expected a JSON object")
    for key in raw:
        if key not in fields:
            expected = ", ".join(f"`{k}`" for k in fields) or "no keys"
            hint = _closest(key, fields)
            hint = f" (did you mean `{hint}`?)" if hint else ""
            raise fail(f"unknown field `{key}`, expected {expected}{hint}")
    out = {}
    for key, (kind, default) in fields.items():
        if key not in raw:
            if default is ...:
                raise fail(f"missing field `{key}`")
            out[key] = default
            continue
        value = raw[key]
        if value is None and default is None:
            out[key] = None
            continue
        # JSON has no int/bool distinction Python would respect: True is an int.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise fail(f"{key}: expected {_json_type(kind)}, got {_json_type(type(value))}")
        out[key] = value
    return out


# ------------------------------------------------------------------ request


def header(request: Request, name: str) -> Optional[str]:
    """The first value of header ``name`` as text (bytes that are not UTF-8
    are read as Latin-1, as HTTP allows), or None."""
    value = request.header(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


# ------------------------------------------------------------------ results


def needs(
    request_phase: bool = True,
    request_body: bool = False,
    response_phase: bool = False,
    response_body: bool = False,
    fixed_request_headers: Sequence[HeaderOp] = (),
    fixed_response_headers: Sequence[HeaderOp] = (),
) -> Needs:
    """What ``configure`` returns: by default the request phase only."""
    return Needs(
        request_phase=request_phase,
        request_body=request_body,
        response_phase=response_phase,
        response_body=response_body,
        fixed_request_headers=list(fixed_request_headers),
        fixed_response_headers=list(fixed_response_headers),
    )


def set_header(name: str, value: Bytes) -> HeaderOp:
    """Replace every value of ``name``."""
    return HeaderOp_Set(Header(name=name, value=_bytes(value)))


def append_header(name: str, value: Bytes) -> HeaderOp:
    """Add a value of ``name``, keeping the others."""
    return HeaderOp_Append(Header(name=name, value=_bytes(value)))


def remove_header(name: str) -> HeaderOp:
    """Remove every value of ``name``."""
    return HeaderOp_Remove(name)


def respond(status: int, body: Bytes = b"", headers: Optional[HeaderItems] = None) -> RequestAction:
    """Answer the client now: ``respond(400, "unknown tenant\\n")``. A text
    body without a content-type in ``headers`` is sent as ``text/plain``."""
    items = _items(headers)
    if body and not any(n.lower() == "content-type" for n, _ in items):
        items = [("content-type", "text/plain; charset=utf-8")] + list(items)
    return RequestAction_Respond(
        Response(
            status=status,
            headers=[Header(name=n.lower(), value=_bytes(v)) for n, v in items],
            body=_bytes(body) if body else None,
        )
    )


def proceed(
    headers: Sequence[HeaderOp] = (),
    path: Optional[str] = None,
    query: Optional[str] = None,
    upstream: Optional[str] = None,
    body: Optional[Bytes] = None,
    response_headers: Sequence[HeaderOp] = (),
) -> RequestAction:
    """Let the request go on with these edits (all optional)."""
    return RequestAction_Continue(
        RequestEdits(
            headers=list(headers),
            path=path,
            query=query,
            upstream=upstream,
            body=_bytes(body) if body is not None else None,
            response_headers=list(response_headers),
        )
    )


def no_response_edits() -> ResponseEdits:
    """What ``on_response`` returns to change nothing."""
    return ResponseEdits(status=None, headers=[], body=None)


# ------------------------------------------------------------------ imports


class KvError(Exception):
    """A kv call failed: ``kind`` is ``denied`` (capability not granted),
    ``unavailable`` (the store failed; ``str(e)`` says why) or
    ``not-a-number``."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"kv {kind}" + (f": {detail}" if detail else ""))
        self.kind = kind


def _kv_call(call, *args):
    try:
        return call(*args)
    except Err as e:
        err = e.value
        if isinstance(err, _kv.KvError_Denied):
            raise KvError("denied") from None
        if isinstance(err, _kv.KvError_Unavailable):
            raise KvError("unavailable", err.value) from None
        raise KvError("not-a-number") from None


def kv_get(key: str) -> Optional[bytes]:
    """The value under ``key`` or None; raises ``KvError``."""
    return _kv_call(_kv.get, key)


def kv_set(key: str, value: Bytes, ttl_ms: Optional[int] = None) -> None:
    """Store ``value`` (expiring after ``ttl_ms``); raises ``KvError``."""
    _kv_call(_kv.set, key, _bytes(value), ttl_ms)


def kv_incr(key: str, delta: int = 1, ttl_ms: Optional[int] = None) -> int:
    """Add ``delta`` atomically and return the new value; raises ``KvError``."""
    return _kv_call(_kv.incr, key, delta, ttl_ms)


def log(level: str, message: str) -> None:
    """Log at ``trace``, ``debug``, ``info``, ``warn`` or ``error`` (dropped
    unless the plugin is granted ``log``)."""
    _log.log(_log.Level[level.upper()], message)
