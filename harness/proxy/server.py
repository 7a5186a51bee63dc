"""The server: the proxy collection behind the API, and the two ways to run it.

`run()` is the process (`python -m harness.proxy`): it stops cleanly on SIGTERM/SIGINT,
closing every listener and connection. `ServerThread` runs the same server on an event
loop in a background thread, for tests and benchmarks in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import threading
from pathlib import Path
from typing import Self

from harness.proxy import errors
from harness.proxy.api import Api
from harness.proxy.httpd import HttpServer
from harness.proxy.proxy import Proxy

log = logging.getLogger("harness.proxy")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


class ProxyServer:
    def __init__(self, seed: int | None = None):
        self.seed = new_seed() if seed is None else seed
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()
        self.http = HttpServer(Api(self).handle)
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"--host {host!r}: the API binds to 127.0.0.1 only (this harness exposes nothing)")
        self.port = await self.http.start(host, port)
        log.info("Toxiproxy-compatible API on %s:%d (seed %d)", host, self.port, self.seed)
        return self.port

    async def close(self) -> None:
        self.http.close()
        for proxy in self.proxies.values():
            proxy.stop()

    # -- the collection (the API holds `lock` around each call) ---------------------------
    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise errors.PROXY_NOT_FOUND
        return proxy

    async def create(self, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        if name in self.proxies:
            raise errors.PROXY_EXISTS
        proxy = Proxy(name, listen, upstream, self.seed)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def add_or_replace(self, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        """/populate: keep a proxy whose listen and upstream are the same (its enabled
        state and toxics too, as Toxiproxy), else replace it."""
        existing = self.proxies.get(name)
        if existing is not None:
            if not existing.differs(listen, upstream):
                return existing
            existing.stop()
            del self.proxies[name]
        return await self.create(name, listen, upstream, enabled)

    def delete(self, name: str) -> None:
        self.get(name).stop()
        del self.proxies[name]
        log.info("proxy %s: deleted", name)

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            try:
                await proxy.start()
            except errors.AlreadyStarted:
                pass
            proxy.reset_toxics()

    async def populate_file(self, path: Path) -> None:
        """Toxiproxy's -config: proxies to create at start (a JSON list as for /populate)."""
        for item in json.loads(path.read_text()):
            await self.add_or_replace(item["name"], item.get("listen", ""), item["upstream"],
                                      item.get("enabled", True))


async def serve(host: str, port: int, seed: int | None, config: Path | None = None,
                stop: asyncio.Event | None = None, ready=None) -> None:
    server = ProxyServer(seed)
    stop = stop or asyncio.Event()
    try:
        await server.start(host, port)
        if config is not None:
            await server.populate_file(config)
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        await server.close()
        log.info("stopped")


def run(host: str, port: int, seed: int | None = None, config: Path | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(host, port, seed, config, stop)

    asyncio.run(main())


class ServerThread:
    """The server on its own event loop in a daemon thread: `with ServerThread() as s:`
    gives `s.url`, `s.port` and `s.seed`; leaving the block stops it and its proxies."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int | None = None):
        self.host, self._port, self._seed = host, port, seed
        self.server: ProxyServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="harness.proxy", daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def seed(self) -> int:
        assert self.server is not None
        return self.server.seed

    def start(self, timeout: float = 10.0) -> Self:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"proxy server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"proxy server failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(server: ProxyServer) -> None:
                self.server = server
                self._ready.set()

            await serve(self.host, self._port, self._seed, None, self._stop, ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
        finally:
            self._ready.set()
