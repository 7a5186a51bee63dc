"""One proxied connection: the client socket, the upstream socket, and a Link per direction.

A Link copies one direction: a reader task reads chunks into a queue, a pump task passes
each through the link's stages and writes it out. Two tasks (not one) so that reading
goes on while a stage holds a chunk: a latency toxic then delays every chunk by its
latency counted from when it was read, instead of adding the delays up (Toxiproxy's
buffered channels do the same).

Closing follows TCP: an EOF from one side is passed on as a half-close (shutdown(WR)) and
the connection ends once both directions have ended. Toxiproxy closes the whole
connection on the first EOF instead; half-closing is what a real network does and breaks
no client that works through Toxiproxy. Errors, disabling the proxy and the closing
toxics (timeout, limit_data) close both sockets; reset_peer resets both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
from typing import TYPE_CHECKING

from harness.proxy.toxics import DOWNSTREAM, UPSTREAM, Chunk, Stage, Toxic, make_stage

if TYPE_CHECKING:
    from harness.proxy.proxy import Proxy

log = logging.getLogger("harness.proxy")

READ_SIZE = 32 * 1024  # as Go's io.Copy
QUEUE_CHUNKS = 1024  # as the buffer of Toxiproxy's latency toxic
_EOF = object()  # the source ended cleanly
_ERROR = object()  # the source failed (reset, ...)


class Link:
    def __init__(self, conn: Connection, direction: str,
                 source: asyncio.StreamReader, dest: asyncio.StreamWriter):
        self.conn = conn
        self.direction = direction
        self.source = source
        self.dest = dest
        self.stages: list[Stage] = []  # replaced, never mutated: the pump works on a snapshot
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        self.tasks: list[asyncio.Task] = []
        self.done = False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._pump())]

    # -- toxics (also on live connections, as Toxiproxy applies them) -------------------
    def attach(self, toxic: Toxic) -> None:
        stage = make_stage(toxic, self.conn, self.conn.proxy.seed, self.conn.proxy.name, self.conn.number)
        self.stages = self.stages + [stage]
        stage.attach()

    def detach(self, name: str) -> None:
        for stage in self.stages:
            if stage.toxic.name == name:
                self.stages = [s for s in self.stages if s is not stage]
                stage.detach()
                return

    def update(self, name: str) -> None:
        for stage in self.stages:
            if stage.toxic.name == name:
                stage.update()

    def cancel(self) -> None:
        for stage in self.stages:
            stage.dispose()
        for task in self.tasks:
            task.cancel()

    # -- data path ----------------------------------------------------------------------
    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        end = _EOF
        try:
            while data := await self.source.read(READ_SIZE):
                await self.queue.put(Chunk(data, loop.time()))
        except (ConnectionError, OSError):
            end = _ERROR
        await self.queue.put(end)

    async def _pump(self) -> None:
        try:
            while True:
                chunk = await self.queue.get()
                if chunk is _EOF or chunk is _ERROR:
                    for stage in self.stages:
                        await stage.eof()  # slow_close
                    if chunk is _ERROR:
                        self.conn.close()
                    else:
                        self._finish()
                    return
                stages = self.stages
                if stages:
                    await self._emit(stages, 0, chunk)
                else:  # the common case, kept short: no toxic on this direction
                    self.dest.write(chunk.data)
                    await self.dest.drain()
        except (ConnectionError, OSError):
            self.conn.close()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug in a toxic: end this connection, keep the proxy
            # Without this the task dies with the exception unseen and both sockets stay
            # open: the client waits for data that never comes.
            log.exception("proxy %s: connection %d (%s): a toxic failed; closing both sockets",
                          self.conn.proxy.name, self.conn.number, self.direction)
            self.conn.close()

    async def _emit(self, stages: list[Stage], i: int, chunk: Chunk) -> None:
        if i == len(stages):
            self.dest.write(chunk.data)
            await self.dest.drain()
        else:
            await stages[i].data(chunk, functools.partial(self._emit, stages, i + 1))

    def _finish(self) -> None:
        self.done = True
        if self.dest.can_write_eof():
            self.dest.write_eof()  # after what is buffered
        self.conn.link_done()


class Connection:
    """A client of a proxy and its upstream; implements what toxics may do to it."""

    def __init__(self, proxy: Proxy, number: int,
                 client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]):
        self.proxy = proxy
        self.number = number  # nth connection of this proxy: the key of toxicity decisions
        self.writers = (client[1], upstream[1])
        self.links = {
            UPSTREAM: Link(self, UPSTREAM, client[0], upstream[1]),
            DOWNSTREAM: Link(self, DOWNSTREAM, upstream[0], client[1]),
        }
        self.closed = False
        peer = client[1].get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def start(self, toxics: list[Toxic]) -> None:
        for toxic in toxics:
            self.links[toxic.stream].attach(toxic)
        for link in self.links.values():
            link.start()

    def link_done(self) -> None:
        if all(link.done for link in self.links.values()):
            self.close()

    def close(self) -> None:
        """FIN both sockets once their buffered data is out; stop both links."""
        if self._end():
            for w in self.writers:
                w.close()

    def reset(self) -> None:
        """RST both sockets: linger 0 makes close() abort the connection."""
        if self._end():
            for w in self.writers:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.transport.abort()

    def _end(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        for link in self.links.values():
            link.cancel()
        self.proxy.forget(self)
        log.debug("proxy %s: connection %d from %s closed", self.proxy.name, self.number, self.peer)
        return True
