"""One proxy: a listener on 127.0.0.1, its upstream, its toxics and its live connections.

Listeners bind to loopback only: the harness runs on shared machines and must not
expose anything. Toxiproxy's default (an empty `listen`: every interface) becomes
127.0.0.1:0 here, and any other host is refused with a 400 that says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
from itertools import count

from harness.proxy import errors
from harness.proxy.link import Connection
from harness.proxy.toxics import DOWNSTREAM, UPSTREAM, Toxic

log = logging.getLogger("harness.proxy")

LOOPBACK_NAMES = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1"}
UPSTREAM_CONNECT_TIMEOUT = 30.0


def split_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise errors.BAD_REQUEST_BODY.joined(f"{what} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def loopback_listen(value: str) -> str:
    """The normalised listen address ("127.0.0.1:PORT"), or a 400."""
    if not value:
        return "127.0.0.1:0"
    host, port = split_hostport(value, "listen")
    if host not in LOOPBACK_NAMES:
        raise errors.ApiError(
            f"listen address {value!r} is not allowed: this server binds proxies to 127.0.0.1 "
            "only (use 127.0.0.1:PORT or localhost:PORT; PORT 0 picks a free port)", 400)
    return f"{LOOPBACK_NAMES[host]}:{port}"


def check_upstream(value: str) -> str:
    # Toxiproxy accepts anything here and fails on each connection; an early 400 is kinder.
    split_hostport(value, "upstream")
    return value


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, seed: int):
        self.name = name
        self.listen = loopback_listen(listen)
        self.upstream = check_upstream(upstream)
        self.seed = seed
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}  # insertion order = chain order
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._numbers = count(1)
        self._generation = 0  # bumped on stop: a connection accepted before is dropped
        self._accepting: set[asyncio.Task] = set()

    def to_json(self) -> dict:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.to_json() for t in self.toxic_list()]}

    # -- listening ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.enabled:
            raise errors.AlreadyStarted(self.name)
        host, port = split_hostport(self.listen, "listen")
        try:
            self._server = await asyncio.start_server(self._spawn, host, port, reuse_address=True)
        except OSError as exc:
            # Toxiproxy answers a failed listen with 500 and Go's error text.
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise errors.ApiError(f"listen tcp {self.listen}: bind: {reason}", 500) from None
        self.listen = f"{host}:{self._server.sockets[0].getsockname()[1]}"
        self.enabled = True
        log.info("proxy %s: listening on %s, upstream %s", self.name, self.listen, self.upstream)

    def stop(self) -> None:
        """Down: stop listening (connects are refused) and close every live connection."""
        if not self.enabled:
            return
        self.enabled = False
        self._generation += 1
        if self._server is not None:
            self._server.close()  # closes the listening socket now
            self._server = None
        for task in list(self._accepting):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        log.info("proxy %s: stopped", self.name)

    def differs(self, listen: str, upstream: str) -> bool:
        return loopback_listen(listen) != self.listen or upstream != self.upstream

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        """Toxiproxy's ProxyUpdate: a new address restarts the proxy (dropping its
        connections); then `enabled` starts or stops it."""
        if self.differs(listen, upstream):
            listen, upstream = loopback_listen(listen), check_upstream(upstream)
            self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            self.stop()

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task rather than start_server's: Python 3.11 logs a spurious error when
        # its wrapper task is cancelled (proxy stopped while connecting upstream).
        task = asyncio.create_task(self._accept(reader, writer))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        number = next(self._numbers)
        host, port = split_hostport(self.upstream, "upstream")
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", port),
                                              UPSTREAM_CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("proxy %s: cannot connect to upstream %s: %s", self.name, self.upstream, exc)
            writer.close()
            return
        except asyncio.CancelledError:
            writer.close()
            raise
        if generation != self._generation or not self.enabled:
            writer.close()  # the proxy went down (or moved) while we were connecting
            upstream[1].close()
            return
        conn = Connection(self, number, (reader, writer), upstream)
        self.connections.add(conn)
        conn.start(list(self.toxics.values()))
        log.debug("proxy %s: connection %d from %s", self.name, number, conn.peer)

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)

    # -- toxics -------------------------------------------------------------------------
    def toxic_list(self) -> list[Toxic]:
        # Toxiproxy lists the upstream chain, then the downstream chain.
        return ([t for t in self.toxics.values() if t.stream == UPSTREAM]
                + [t for t in self.toxics.values() if t.stream == DOWNSTREAM])

    def add_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        for conn in list(self.connections):
            conn.links[toxic.stream].attach(toxic)
        log.info("proxy %s: toxic %s added: %s", self.name, toxic.name, toxic.to_json())

    def update_toxic(self, toxic: Toxic) -> None:
        for conn in list(self.connections):
            conn.links[toxic.stream].update(toxic.name)
        log.info("proxy %s: toxic %s updated: %s", self.name, toxic.name, toxic.to_json())

    def remove_toxic(self, name: str) -> None:
        toxic = self.toxics.pop(name)
        for conn in list(self.connections):
            conn.links[toxic.stream].detach(name)
        log.info("proxy %s: toxic %s removed", self.name, name)

    def reset_toxics(self) -> None:
        for name in list(self.toxics):
            self.remove_toxic(name)
