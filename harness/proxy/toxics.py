"""Toxics: what one is (its API shape) and what it does to one direction of one connection.

A `Toxic` is the configuration the API shows. A `Stage` is that toxic at work on one
link (one direction of one connection): links pass every chunk they read through their
stages in the order the toxics were added, as Toxiproxy chains its ToxicStubs.

Toxicity is decided once per connection and toxic: the stage draws `u` in [0, 1) from
an RNG seeded with (server seed, proxy, toxic, connection number) and applies while
`u < toxicity`. Toxiproxy rolls the global `math/rand` instead (and its `-seed` flag has
no effect), so a run cannot be replayed there; here the same seed and the same sequence
of connections give the same decisions, whatever the timing or the other proxies do.
Since `u` stays fixed, raising a toxic's toxicity only ever adds connections.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

from harness.proxy import errors

UPSTREAM = "upstream"  # client → server
DOWNSTREAM = "downstream"  # server → client
STREAMS = (UPSTREAM, DOWNSTREAM)

# Attributes per toxic type with their defaults (all integers, as Toxiproxy's Go structs).
ATTRIBUTES: dict[str, dict[str, int]] = {
    "noop": {},
    "latency": {"latency": 0, "jitter": 0},  # ms
    "bandwidth": {"rate": 0},  # KB/s (1 KB = 1000 bytes, as Toxiproxy computes it)
    "slow_close": {"delay": 0},  # ms
    "timeout": {"timeout": 0},  # ms; 0 = hold the connection until the toxic goes
    "reset_peer": {"timeout": 0},  # ms
    "limit_data": {"bytes": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},  # bytes, bytes, µs
}


@dataclass
class Toxic:
    name: str
    type: str
    stream: str = DOWNSTREAM
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"attributes": dict(self.attributes), "name": self.name, "type": self.type,
                "stream": self.stream, "toxicity": self.toxicity}


def parse_attributes(type_: str, given: object, current: dict[str, int]) -> dict[str, int]:
    """Merge the attributes of a request into `current`; unknown keys are ignored (as Go's
    JSON decoder does), a wrong type is a 400 like Toxiproxy's."""
    if given is None:
        return dict(current)
    if not isinstance(given, dict):
        raise errors.BAD_REQUEST_BODY.joined(
            f"json: cannot unmarshal {json_kind(given)} into Go struct field "
            f"ToxicWrapper.attributes of type toxics.{type_}")
    out = dict(current)
    for key in ATTRIBUTES[type_]:
        if key not in given or given[key] is None:
            continue
        value = given[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(value)} {value!r} into Go struct field "
                f"attributes.{key} of type int64")
        out[key] = value
    return out


def json_kind(value: object) -> str:
    """The JSON name of a value's type, for Go-style decode errors."""
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(type(value), "number")


# -- the data path -------------------------------------------------------------------------

class Chunk:
    """Bytes read from one socket, stamped with the loop time they were read at (latency is
    measured from there, so queued chunks do not add up their delays)."""

    __slots__ = ("data", "t")

    def __init__(self, data: bytes, t: float):
        self.data = data
        self.t = t


Emit = Callable[[Chunk], Awaitable[None]]


class LinkControl(Protocol):
    """What a stage may do to the connection it works on."""

    def close(self) -> None: ...  # FIN both sockets (after their buffered data)
    def reset(self) -> None: ...  # RST both sockets (SO_LINGER 0)


def stage_rng(seed: int, proxy: str, toxic: str, connection: int) -> random.Random:
    # A string seed is hashed with SHA-512: stable across processes and Python versions.
    return random.Random(f"{seed}/{proxy}/{toxic}/{connection}")


class Stage:
    """A toxic on one link. Waits are interruptible: when the toxic is removed the stage
    lets whatever it holds through at once (Toxiproxy: "don't drop data on the floor")."""

    def __init__(self, toxic: Toxic, link: LinkControl, rng: random.Random):
        self.toxic = toxic
        self.link = link
        self.rng = rng
        self.u = rng.random()
        self.removed = False
        self._waiter: asyncio.Future | None = None

    @property
    def active(self) -> bool:
        return not self.removed and self.u < self.toxic.toxicity

    @property
    def attrs(self) -> dict[str, int]:
        return self.toxic.attributes

    # -- lifecycle: the link calls these -------------------------------------------------
    def attach(self) -> None:
        """The toxic starts working on this link (connection start, or toxic added)."""

    def update(self) -> None:
        """The toxic's attributes or toxicity changed."""

    def detach(self) -> None:
        """The toxic was removed: stop, release what is held."""
        self.removed = True
        self.dispose()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)

    def dispose(self) -> None:
        """The connection is going away: cancel timers, no side effects."""

    # -- data ------------------------------------------------------------------------------
    async def data(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def eof(self) -> None:
        """The source finished; runs before the link passes the close on."""

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False when woken early because the toxic was removed."""
        if self.removed:
            return False
        if seconds <= 0:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = fut = loop.create_future()
        handle = loop.call_later(seconds, _resolve, fut, True)
        try:
            return await fut
        finally:
            handle.cancel()
            self._waiter = None


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Latency(Stage):
    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if self.active:
            delay = self.attrs["latency"]
            jitter = self.attrs["jitter"]
            if jitter > 0:
                delay += self.rng.randrange(-jitter, jitter)  # Go: rand.Int63n(2j) - j
            loop = asyncio.get_running_loop()
            if await self.sleep(chunk.t + delay / 1000 - loop.time()):
                chunk.t = loop.time()  # a later latency toxic counts from here
        await emit(chunk)


class Bandwidth(Stage):
    def __init__(self, *args):
        super().__init__(*args)
        self._next = 0.0  # when the link may send again, in loop time

    async def data(self, chunk: Chunk, emit: Emit) -> None:
        rate = self.attrs["rate"]
        if not self.active or rate <= 0:
            await emit(chunk)
            return
        loop = asyncio.get_running_loop()
        # Pieces of 100 ms worth of data, as Toxiproxy sends them, so a slow rate still
        # shows as a steady trickle rather than one burst per chunk.
        piece = max(1, rate * 100)
        data = chunk.data
        for off in range(0, len(data), piece):
            part = data[off:off + piece]
            now = loop.time()
            # Pacing against a running deadline: no drift from timer granularity and no
            # burst after an idle spell.
            self._next = max(self._next, now) + len(part) / (rate * 1000)
            if not await self.sleep(self._next - now):
                await emit(Chunk(data[off:], chunk.t))
                return
            await emit(Chunk(part, chunk.t))


class SlowClose(Stage):
    async def eof(self) -> None:
        if self.active:
            await self.sleep(self.attrs["delay"] / 1000)


class Timeout(Stage):
    """Drops all data; closes the connection after `timeout` ms (0: never, until removed).
    Removing it closes the connections it held, as Toxiproxy's Cleanup does: their
    requests are lost, and a client waiting for an answer would otherwise wait forever."""

    _timer: asyncio.TimerHandle | None = None

    def attach(self) -> None:
        self._arm()

    def update(self) -> None:
        self._arm()

    def _arm(self) -> None:
        self.dispose()
        timeout = self.attrs["timeout"]
        if self.active and timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(timeout / 1000, self.link.close)

    def detach(self) -> None:
        held = self.active
        super().detach()
        if held:
            self.link.close()

    def dispose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if not self.active:
            await emit(chunk)


class ResetPeer(Stage):
    """On the first data in its direction: wait `timeout` ms, then reset both sockets
    (SO_LINGER 0 → RST, unsent data discarded). Like Toxiproxy, an idle connection is
    not reset: the toxic acts on data."""

    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if not self.active:
            await emit(chunk)
            return
        if await self.sleep(self.attrs["timeout"] / 1000):
            self.link.reset()
            return
        await emit(chunk)  # removed while waiting


class LimitData(Stage):
    def __init__(self, *args):
        super().__init__(*args)
        self.sent = 0  # per link; kept when the toxic is updated, as Toxiproxy's state is

    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if not self.active:
            await emit(chunk)
            return
        remaining = self.attrs["bytes"] - self.sent
        if remaining > 0:
            part = chunk.data[:remaining]
            self.sent += len(part)
            await emit(Chunk(part, chunk.t))
        if self.attrs["bytes"] - self.sent <= 0:
            self.link.close()  # after what was emitted: close() flushes first


class Slicer(Stage):
    def cuts(self, n: int) -> list[int]:
        """Offsets that split n bytes into pieces of about average_size ± size_variation,
        halving recursively as Toxiproxy does (no small/large piece bias at either end).
        Clamped so that every split makes progress (Toxiproxy recurses forever on
        average_size 0)."""
        avg = max(1, self.attrs["average_size"])
        var = max(0, min(self.attrs["size_variation"], avg - 1))
        out = [0]
        stack = [(0, n)]
        while stack:
            start, end = stack.pop()
            if (end - start) - avg <= var:
                out.append(end)
                continue
            mid = start + (end - start) // 2
            if var > 0:
                mid += self.rng.randrange(-var, var)
            mid = min(max(mid, start + 1), end - 1)
            stack.append((mid, end))  # right pushed first: left is cut first
            stack.append((start, mid))
        return out

    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if not self.active:
            await emit(chunk)
            return
        data = chunk.data
        cuts = self.cuts(len(data))
        delay = self.attrs["delay"] / 1_000_000
        for a, b in pairwise(cuts):
            await emit(Chunk(data[a:b], chunk.t))
            if not await self.sleep(delay):
                if b < len(data):
                    await emit(Chunk(data[b:], chunk.t))
                return


STAGES: dict[str, type[Stage]] = {
    "noop": Stage,
    "latency": Latency,
    "bandwidth": Bandwidth,
    "slow_close": SlowClose,
    "timeout": Timeout,
    "reset_peer": ResetPeer,
    "limit_data": LimitData,
    "slicer": Slicer,
}
assert STAGES.keys() == ATTRIBUTES.keys()


def make_stage(toxic: Toxic, link: LinkControl, seed: int, proxy: str, connection: int) -> Stage:
    return STAGES[toxic.type](toxic, link, stage_rng(seed, proxy, toxic.name, connection))
