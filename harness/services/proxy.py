"""The fault proxy of an environment: our Toxiproxy-compatible server, or a real Toxiproxy.

`proxy_for(ctx)` picks: with TOXIPROXY_URL set (e.g. http://127.0.0.1:8474) the harness
drives that Toxiproxy and starts nothing; otherwise it runs `python -m harness.proxy` on
a free loopback port. Both answer the same API, and both hand out the same client:
toxiproxy-python, the one our users already have.

toxiproxy-python keeps its server address in class attributes (one server per
process) and sends its requests without a timeout; `toxiproxy_client()` points it at
our server and gives its requests a timeout, so a stuck proxy fails a step instead of
hanging the run.
"""

from __future__ import annotations

import hashlib
import os
import sys
from urllib.parse import urlsplit

import requests
import toxiproxy.api
from toxiproxy import Toxiproxy

from harness.context import RunContext
from harness.errors import HarnessError
from harness.ports import free_port
from harness.services.base import Service

HOST = "127.0.0.1"
API_TIMEOUT = 10.0  # s, for every request toxiproxy-python sends


class _RequestsWithTimeout:
    """Stands in for the `requests` module inside toxiproxy.api: the same calls, with a
    default timeout."""

    def __init__(self, timeout: float):
        self.timeout = timeout

    def get(self, url, **kw):
        kw.setdefault("timeout", self.timeout)
        return requests.get(url, **kw)

    def post(self, url, **kw):
        kw.setdefault("timeout", self.timeout)
        return requests.post(url, **kw)

    def delete(self, url, **kw):
        kw.setdefault("timeout", self.timeout)
        return requests.delete(url, **kw)


def api_address(api_url: str) -> tuple[str, int]:
    """(host, port) of a Toxiproxy API URL, or an error saying what shape is expected."""
    parts = urlsplit(api_url)
    try:
        port = parts.port or 8474
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or parts.path.strip("/") or port is None:
        raise HarnessError(f"Toxiproxy API URL {api_url!r}: expected http://HOST:PORT "
                           "(toxiproxy-python speaks plain HTTP, without a path prefix)")
    return parts.hostname, port


def toxiproxy_client(api_url: str, timeout: float = API_TIMEOUT) -> Toxiproxy:
    """A toxiproxy-python client for the Toxiproxy API at `api_url` (http://host:port).
    Note: toxiproxy-python is process-global, so the last client made wins."""
    host, port = api_address(api_url)
    toxiproxy.api.requests = _RequestsWithTimeout(timeout)
    client = Toxiproxy()
    client.update_api_consumer(host, port)
    return client


def default_seed(run_id: str) -> int:
    """A seed that follows from the run id, so a run's toxicity decisions can be replayed
    knowing the run alone."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big")


class ToxiproxyServer(Service):
    """Our Toxiproxy-compatible server (harness.proxy) as a process of the environment."""

    name = "toxiproxy"

    def __init__(self, ctx: RunContext, seed: int | None = None):
        super().__init__(ctx)
        self.seed = default_seed(ctx.run_id) if seed is None else seed

    def prepare(self) -> None:
        if "toxiproxy" not in self.ctx.ports:
            self.ctx.ports["toxiproxy"] = free_port(HOST)

    @property
    def port(self) -> int:
        return self.ctx.ports["toxiproxy"]

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.spawn([sys.executable, "-m", "harness.proxy", "--host", HOST, "--port", str(self.port),
                    "--seed", str(self.seed)], ports=[self.port])

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self.wait_http(f"{self.api_url}/version", 200, timeout)

    def client(self) -> Toxiproxy:
        return toxiproxy_client(self.api_url)


class ExternalToxiproxy(Service):
    """A Toxiproxy someone else runs (TOXIPROXY_URL): nothing to start or stop.
    Its toxicity is not seeded (Toxiproxy's -seed has no effect)."""

    name = "toxiproxy"

    def __init__(self, ctx: RunContext, url: str):
        super().__init__(ctx)
        self.url = url.rstrip("/")
        api_address(self.url)  # a malformed TOXIPROXY_URL fails here, not at first use
        self.seed: int | None = None

    @property
    def api_url(self) -> str:
        return self.url

    def start(self) -> None:
        pass

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self.wait_http(f"{self.api_url}/version", 200, timeout)

    def client(self) -> Toxiproxy:
        return toxiproxy_client(self.api_url)


def proxy_for(ctx: RunContext, seed: int | None = None) -> ToxiproxyServer | ExternalToxiproxy:
    url = os.environ.get("TOXIPROXY_URL", "").strip()
    if url:
        return ExternalToxiproxy(ctx, url)
    return ToxiproxyServer(ctx, seed)
