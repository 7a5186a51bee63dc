"""Toxiproxy's HTTP API (2.x): routes, JSON in and out, status codes and error bodies.

Mirrors Shopify/toxiproxy api.go: same paths and methods (POST or PATCH to update), 201
on create/populate, 204 on delete/reset, 200 otherwise, `{"error","status"}` bodies,
403 for browsers (User-Agent "Mozilla/..."), gorilla/mux's plain-text 404 for unknown
paths and 405 for a known path with another method. /metrics is not served (Toxiproxy
serves it only when started with metrics flags).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from harness.proxy import errors
from harness.proxy.httpd import Request, Response
from harness.proxy.toxics import ATTRIBUTES, STREAMS, Toxic, json_kind, parse_attributes

if TYPE_CHECKING:
    from harness.proxy.server import ProxyServer

VERSION = "2.12.0"  # the Toxiproxy release whose API this follows


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode())


def _error(err: errors.ApiError) -> Response:
    # Go's http.Error appends a newline to the body.
    return Response(err.status, (json.dumps(err.to_json(), separators=(",", ":")) + "\n").encode())


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise errors.BAD_REQUEST_BODY.joined("EOF")  # what Go's decoder says on an empty body
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None


_PROXY_FIELDS = {"name": str, "listen": str, "upstream": str, "enabled": bool}


def _proxy_fields(obj: Any, defaults: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The proxy fields of a request over `defaults`; a JSON null leaves a field as it is
    (Go's decoder does the same)."""
    if not isinstance(obj, dict):
        raise errors.BAD_REQUEST_BODY.joined(
            f"json: cannot unmarshal {json_kind(obj)} into Go value of type toxiproxy.Proxy{where}")
    out = dict(defaults)
    for key, kind in _PROXY_FIELDS.items():
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            gotype = "bool" if kind is bool else "string"
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json.dumps(value)} into Go struct field Proxy.{key} of type {gotype}")
        out[key] = value
    return out


class Api:
    def __init__(self, server: ProxyServer):
        self.server = server
        P, T = r"(?P<proxy>[^/]+)", r"(?P<toxic>[^/]+)"
        routes: list[tuple[str, dict[str, Callable[..., Awaitable[Response]]]]] = [
            ("/reset", {"POST": self.reset}),
            ("/version", {"GET": self.version}),
            ("/populate", {"POST": self.populate}),
            ("/proxies", {"GET": self.proxy_index, "POST": self.proxy_create}),
            (f"/proxies/{P}", {"GET": self.proxy_show, "POST": self.proxy_update,
                               "PATCH": self.proxy_update, "DELETE": self.proxy_delete}),
            (f"/proxies/{P}/toxics", {"GET": self.toxic_index, "POST": self.toxic_create}),
            (f"/proxies/{P}/toxics/{T}", {"GET": self.toxic_show, "POST": self.toxic_update,
                                          "PATCH": self.toxic_update, "DELETE": self.toxic_delete}),
        ]
        self.routes = [(re.compile(f"^{pattern}$"), methods) for pattern, methods in routes]

    async def handle(self, request: Request) -> Response:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(403, b"User agent not allowed\n", "text/plain; charset=utf-8")
        for pattern, methods in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                return Response(405, b"", "text/plain; charset=utf-8")
            # One change at a time, as Toxiproxy's collection mutex: a request never sees
            # a half-made proxy.
            async with self.server.lock:
                try:
                    return await handler(request, **match.groupdict())
                except errors.ApiError as err:
                    return _error(err)
        return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    # -- server ---------------------------------------------------------------------------
    async def version(self, request: Request) -> Response:
        # Toxiproxy answers {"version": "..."}; the extra keys tell the harness which
        # server it talks to and the seed that makes this run's toxicity replayable.
        body = {"version": VERSION, "implementation": "harness.proxy", "seed": self.server.seed}
        return Response(200, (json.dumps(body) + "\n").encode(), "application/json;charset=utf-8")

    async def reset(self, request: Request) -> Response:
        await self.server.reset()
        return Response(204)

    # -- proxies --------------------------------------------------------------------------
    async def proxy_index(self, request: Request) -> Response:
        return _json({name: p.to_json() for name, p in self.server.proxies.items()})

    async def proxy_create(self, request: Request) -> Response:
        fields = _proxy_fields(_decode(request.body), {"name": "", "listen": "", "upstream": "", "enabled": True})
        if not fields["name"]:
            raise errors.MISSING_FIELD.joined("name")
        if not fields["upstream"]:
            raise errors.MISSING_FIELD.joined("upstream")
        proxy = await self.server.create(**fields)
        return _json(proxy.to_json(), 201)

    async def populate(self, request: Request) -> Response:
        items = _decode(request.body)
        if not isinstance(items, list):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(items)} into Go value of type []struct")
        # All input is checked before any proxy is touched, as Toxiproxy does.
        specs = []
        for i, item in enumerate(items, 1):
            fields = _proxy_fields(item, {"name": "", "listen": "", "upstream": "", "enabled": True},
                                   f" (proxy {i})")
            if not fields["name"]:
                raise errors.MISSING_FIELD.joined(f"name at proxy {i}")
            if not fields["upstream"]:
                raise errors.MISSING_FIELD.joined(f"upstream at proxy {i}")
            specs.append(fields)
        done = []
        for fields in specs:
            try:
                done.append(await self.server.add_or_replace(**fields))
            except errors.ApiError as err:
                # The proxies made so far, with the error, under the error's status.
                body = {**err.to_json(), "proxies": [p.to_json() for p in done]}
                return _json(body, err.status)
        return _json({"proxies": [p.to_json() for p in done]}, 201)

    async def proxy_show(self, request: Request, proxy: str) -> Response:
        return _json(self.server.get(proxy).to_json())

    async def proxy_update(self, request: Request, proxy: str) -> Response:
        p = self.server.get(proxy)
        fields = _proxy_fields(_decode(request.body),
                               {"listen": p.listen, "upstream": p.upstream, "enabled": p.enabled})
        await p.update(fields["listen"], fields["upstream"], fields["enabled"])
        return _json(p.to_json())

    async def proxy_delete(self, request: Request, proxy: str) -> Response:
        self.server.delete(proxy)
        return Response(204)

    # -- toxics ---------------------------------------------------------------------------
    async def toxic_index(self, request: Request, proxy: str) -> Response:
        return _json([t.to_json() for t in self.server.get(proxy).toxic_list()])

    async def toxic_create(self, request: Request, proxy: str) -> Response:
        p = self.server.get(proxy)
        body = _decode(request.body)
        if not isinstance(body, dict):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(body)} into Go value of type toxics.ToxicWrapper")
        for key in ("name", "type", "stream"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise errors.BAD_REQUEST_BODY.joined(
                    f"json: cannot unmarshal {json.dumps(body[key])} into Go struct field ToxicWrapper.{key} of type string")
        toxicity = body.get("toxicity")
        if toxicity is None:
            toxicity = 1.0
        elif isinstance(toxicity, bool) or not isinstance(toxicity, (int, float)):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json.dumps(toxicity)} into Go struct field ToxicWrapper.toxicity of type float32")
        stream = (body.get("stream") or "downstream").lower()
        if stream not in STREAMS:
            raise errors.INVALID_STREAM
        type_ = body.get("type") or ""
        name = body.get("name") or f"{type_}_{stream}"
        if type_ not in ATTRIBUTES:
            raise errors.INVALID_TOXIC_TYPE
        if name in p.toxics:
            raise errors.TOXIC_EXISTS
        attributes = parse_attributes(type_, body.get("attributes"), ATTRIBUTES[type_])
        toxic = Toxic(name=name, type=type_, stream=stream, toxicity=float(toxicity), attributes=attributes)
        p.add_toxic(toxic)
        return _json(toxic.to_json())  # 200, not 201: Toxiproxy's ToxicCreate sets no status

    def _toxic(self, proxy: str, toxic: str) -> tuple[Any, Toxic]:
        p = self.server.get(proxy)
        t = p.toxics.get(toxic)
        if t is None:
            raise errors.TOXIC_NOT_FOUND
        return p, t

    async def toxic_show(self, request: Request, proxy: str, toxic: str) -> Response:
        return _json(self._toxic(proxy, toxic)[1].to_json())

    async def toxic_update(self, request: Request, proxy: str, toxic: str) -> Response:
        p, t = self._toxic(proxy, toxic)
        body = _decode(request.body)
        if not isinstance(body, dict):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(body)} into Go value of type struct")
        # Only attributes and toxicity change; name, type and stream stay (as Toxiproxy).
        attributes = parse_attributes(t.type, body.get("attributes"), t.attributes)
        toxicity = body.get("toxicity")
        if toxicity is not None and (isinstance(toxicity, bool) or not isinstance(toxicity, (int, float))):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json.dumps(toxicity)} into Go struct field .toxicity of type float32")
        t.attributes = attributes
        if toxicity is not None:
            t.toxicity = float(toxicity)
        p.update_toxic(t)
        return _json(t.to_json())

    async def toxic_delete(self, request: Request, proxy: str, toxic: str) -> Response:
        p, _ = self._toxic(proxy, toxic)
        p.remove_toxic(toxic)
        return Response(204)
