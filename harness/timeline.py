"""A fault timeline on one clock: at t inject a fault, at t' heal it (or never).

Used by the scenario runner and by the load driver alongside Locust. Every injected
fault is healed when the timeline ends, fails, or is interrupted (Ctrl-C, SIGTERM).
The windows (when each fault was really in effect) are what reports shade.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from harness.faults.engine import FaultEngine


@dataclass
class TimelineEvent:
    at: float  # seconds after the timeline starts
    fault: str
    params: dict[str, Any] = field(default_factory=dict)
    heal_at: float | None = None  # None: heal when the timeline ends


@dataclass
class Window:
    fault: str
    params: dict[str, Any]
    fault_id: str | None = None
    injected_at: float | None = None  # seconds on the timeline clock
    healed_at: float | None = None
    injected_wall: float | None = None  # time.time(), to line up with Locust's history
    healed_wall: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class TimelineRunner(threading.Thread):
    """Runs the events in a thread; `stop()` (or the end of `duration`) heals the rest."""

    def __init__(self, env, events: list[TimelineEvent], duration: float,
                 on_event: Callable[[str, Window], None] = lambda kind, w: None):
        super().__init__(daemon=True, name="fault-timeline")
        self.engine = FaultEngine(env)
        self.events = sorted(events, key=lambda e: e.at)
        self.duration = duration
        self.on_event = on_event
        self.windows = [Window(e.fault, e.params) for e in self.events]
        self.t0: float | None = None
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 is not None else 0.0

    def _sleep_until(self, t: float) -> bool:
        """False when stopped early."""
        return not self._halt.wait(max(0.0, t - self.now()))

    def run(self) -> None:
        self.t0 = time.monotonic()
        actions = [(e.at, "inject", i) for i, e in enumerate(self.events)]
        actions += [(e.heal_at, "heal", i) for i, e in enumerate(self.events) if e.heal_at is not None]
        actions.sort(key=lambda a: (a[0], a[1] == "inject"))
        try:
            for t, kind, i in actions:
                if not self._sleep_until(t):
                    break
                self._do(kind, i)
            self._sleep_until(self.duration)
        except BaseException as exc:  # noqa: BLE001 - reported by join(); heal still runs
            self.error = exc
        finally:
            self.heal_all()

    def _do(self, kind: str, i: int) -> None:
        w, e = self.windows[i], self.events[i]
        if kind == "inject":
            w.injected_at, w.injected_wall = self.now(), time.time()
            try:
                w.fault_id = self.engine.inject(e.fault, e.params)
            except Exception as exc:  # noqa: BLE001 - recorded; the timeline goes on
                w.error = f"{type(exc).__name__}: {exc}"
            self.on_event("inject", w)
        elif w.fault_id and w.healed_at is None:
            self.engine.heal(w.fault_id)
            w.healed_at, w.healed_wall = self.now(), time.time()
            self.on_event("heal", w)

    def heal_all(self) -> None:
        for w in reversed(self.windows):
            if w.fault_id and w.healed_at is None:
                self.engine.heal(w.fault_id)
                w.healed_at, w.healed_wall = self.now(), time.time()
                self.on_event("heal", w)

    def stop(self) -> None:
        self._halt.set()
