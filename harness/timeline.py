"""The one timeline: events on one clock, run on a thread of their own.

    events = [Event(at=10, fault="hsm_latency", params={"ms": 300}, heal_at=20)]
    timeline = Timeline(target, events, duration=30)
    timeline.start(); ...; timeline.stop(); timeline.join()

`Event` is the one event model: scenario files, `load --scenario`, the campaign's load
profiles and the upgrade gate's phases all use it. An event is a fault (injected at
`at`, healed at `heal_at`, or when the timeline ends) or an operator procedure
(`operation`, harness.operations, run once at `at`).

The timeline thread does nothing but act on time, so a caller that probes meanwhile
(the scenario runner, Locust) cannot delay an inject or a heal: each window records when
its action was planned and when it happened (`drift_s`). Every injected fault is healed
when the timeline ends, fails or is stopped (Ctrl-C and SIGTERM included, through the
fault engine's journal after a crash). The windows are what reports shade.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from harness.errors import HarnessError
from harness.faults.engine import FaultEngine

# A day: longer timelines are typing errors (`at: 1e9` would be a run of decades); soak
# runs repeat a timeline rather than stretch one.
MAX_TIMELINE_S = 86_400.0
OPERATIONS = ("rotate_simple_crypto_kek", "rotate_mkek_with_rewrap")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float = Field(ge=0, le=MAX_TIMELINE_S)  # seconds after the timeline starts
    fault: str | None = None
    operation: Literal[OPERATIONS] | None = None  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict)
    heal_at: float | None = Field(None, ge=0, le=MAX_TIMELINE_S)  # None: heal when the timeline ends

    @model_validator(mode="after")
    def _one_action(self):
        if (self.fault is None) == (self.operation is None):
            raise ValueError("each timeline event needs exactly one of 'fault' or 'operation'")
        if self.heal_at is not None and self.heal_at <= self.at:
            raise ValueError(f"heal_at ({self.heal_at}) must come after at ({self.at})")
        if self.operation and self.heal_at is not None:
            raise ValueError("an operation has no heal_at (it is not a fault)")
        return self

    @property
    def what(self) -> str:
        return self.fault or self.operation or "?"


EVENTS = TypeAdapter(list[Event])


def events_from(items: list[dict], where: str) -> list[Event]:
    """Validate a list of event mappings; errors name `where`, the item and the field."""
    from harness.topology import describe_validation_error

    try:
        events = EVENTS.validate_python(items)
    except ValidationError as exc:
        raise HarnessError(describe_validation_error(Path(where), exc, Event).replace(
            "invalid event", "invalid timeline")) from None
    from harness.faults.engine import make_fault

    for i, e in enumerate(events):
        if e.fault:
            try:
                make_fault(e.fault, {k: v for k, v in e.params.items() if not _is_ref(v)})
            except HarnessError as exc:
                raise HarnessError(f"{where}: timeline[{i}]: {exc}") from None
    return events


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("@")


def read_fault_timeline(path: Path) -> tuple[list[Event], float | None]:
    """The `timeline:` (and `duration:`) of a YAML file, e.g. a scenario file, for a run that
    has no seed data: faults only, no parameter naming a seeded item ("@secret[0]")."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("timeline"), list):
        raise HarnessError(f"{path}: expected a top-level 'timeline:' list of {{at, fault, params, heal_at}}")
    events = events_from(data["timeline"], str(path))
    for i, e in enumerate(events):
        if e.operation:
            raise HarnessError(f"{path}: timeline[{i}]: operations ({e.operation}) run only in scenarios "
                               "(barbican-harness run); this timeline takes faults")
        refs = sorted(k for k, v in e.params.items() if _is_ref(v))
        if refs:
            raise HarnessError(f"{path}: timeline[{i}]: params {refs} name seeded items, which only the "
                               "scenario runner makes")
    duration = data.get("duration")
    if duration is not None and not (isinstance(duration, (int, float)) and 0 < duration <= MAX_TIMELINE_S):
        raise HarnessError(f"{path}: field 'duration': seconds, more than 0 and at most {MAX_TIMELINE_S:g}")
    return events, float(duration) if duration is not None else None


def end_of(events: list[Event]) -> float:
    return max((max(e.at, e.heal_at or 0) for e in events), default=0.0)


@dataclass
class Window:
    """One event as it happened: planned and actual times on the timeline clock."""

    what: str  # the fault or operation
    params: dict[str, Any]
    kind: str = "fault"  # fault | operation
    fault_id: str | None = None
    planned_at: float = 0.0
    planned_heal_at: float | None = None
    injected_at: float | None = None  # seconds on the timeline clock: the inject began
    in_effect_at: float | None = None  # the inject returned (a node restarted ...): the fault holds
    heal_started_at: float | None = None
    healed_at: float | None = None  # the heal returned
    injected_wall: float | None = None  # time.time(), to line up with Locust's history
    healed_wall: float | None = None
    result: dict | None = None  # an operation's outcome
    error: str | None = None

    @property
    def fault(self) -> str:
        return self.what

    @property
    def drift_s(self) -> dict[str, float | None]:
        """How late each action started against its plan (a heal at the timeline's end
        had no plan of its own)."""
        inject = None if self.injected_at is None else round(self.injected_at - self.planned_at, 3)
        heal = None
        if self.heal_started_at is not None and self.planned_heal_at is not None:
            heal = round(self.heal_started_at - self.planned_heal_at, 3)
        return {"inject": inject, "heal": heal}

    def to_dict(self) -> dict:
        return {**asdict(self), "fault": self.what, "drift_s": self.drift_s}


# on_event(kind, window): kind is "injecting" (about to act), "inject", "heal" or "operation".
EventHook = Callable[[str, Window], None]


class Timeline(threading.Thread):
    """Runs events on time, on its own thread; `stop()` (or the end of `duration`) heals
    what is still injected. `resolve` turns a parameter value into what the fault gets
    (a scenario's "@secret[0]" into its href); `seed` gives event i the seed `seed + i`
    for faults that draw random numbers and were given none (a run replays)."""

    def __init__(self, target, events: list[Event], duration: float, *,
                 on_event: EventHook = lambda kind, w: None,
                 resolve: Callable[[Any], Any] = lambda v: v, seed: int | None = None,
                 operation: Callable[[str], dict] | None = None, permission=None,
                 stretch: bool = False):
        super().__init__(daemon=True, name="fault-timeline")
        self.target = target
        self.engine = FaultEngine(target, permission)
        self.events = list(events)
        self.duration = duration
        # stretch: the end moves by how late the events ran, so the tail after the last
        # one keeps its planned length (a rolling upgrade's "all on TO" phase).
        self.stretch = stretch
        self.on_event = on_event
        self.resolve = resolve
        self.seed = seed
        self.operation = operation or (lambda name: _run_operation(target, name))
        self.windows = [Window(e.what, dict(e.params), "fault" if e.fault else "operation",
                               planned_at=e.at, planned_heal_at=e.heal_at) for e in self.events]
        self.t0: float | None = None
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 is not None else 0.0

    def lateness(self) -> float:
        """How late the event that began last began against its plan (0 when on time): what
        the time after it lacks, unless the end moves."""
        begun = [w for w in self.windows if w.injected_at is not None]
        last = max(begun, key=lambda w: w.injected_at, default=None)
        return max(0.0, last.injected_at - last.planned_at) if last else 0.0

    def end(self) -> float:
        """When the timeline ends, on its clock: `duration`, or later when it stretches."""
        return self.duration + (self.lateness() if self.stretch else 0.0)

    def active(self) -> list[Window]:
        """Faults in effect now (injected, not yet healed)."""
        return [w for w in self.windows if w.in_effect_at is not None and w.healed_at is None]

    def _sleep_until(self, t: float) -> bool:
        """False when stopped early."""
        return not self._halt.wait(max(0.0, t - self.now()))

    def run(self) -> None:
        self.t0 = time.monotonic()
        try:
            for t, kind, i in plan(self.events):
                if not self._sleep_until(self._due(t, kind, i)):
                    break
                self._do(kind, i)
            self._sleep_until(self.end())
        except BaseException as exc:  # noqa: BLE001 - reported by join(); heal still runs
            self.error = exc
        finally:
            self.heal_all()

    def _due(self, t: float, kind: str, i: int) -> float:
        """A fault holds for its planned span (heal_at - at) even when its inject took
        longer than planned (a container that needs 30 s to serve again): its heal waits,
        and the heal drift says so. Otherwise the fault would never be seen in effect."""
        w, e = self.windows[i], self.events[i]
        if kind != "heal" or w.in_effect_at is None or e.heal_at is None:
            return t
        return max(t, w.in_effect_at + (e.heal_at - e.at))

    def _params(self, i: int) -> dict[str, Any]:
        e = self.events[i]
        return seeded_params(e.fault, {k: self.resolve(v) for k, v in e.params.items()},
                             None if self.seed is None else self.seed + i)

    def _do(self, kind: str, i: int) -> None:
        w, e = self.windows[i], self.events[i]
        if kind == "inject" and e.operation:
            self.on_event("injecting", w)
            w.injected_at, w.injected_wall = self.now(), time.time()
            try:
                w.result = self.operation(e.operation)
            except Exception as exc:  # noqa: BLE001 - recorded; the timeline goes on
                w.error = f"{type(exc).__name__}: {exc}"
            w.healed_at, w.healed_wall = self.now(), time.time()
            self.on_event("operation", w)
        elif kind == "inject":
            self.on_event("injecting", w)
            w.injected_at, w.injected_wall = self.now(), time.time()
            try:
                w.fault_id = self.engine.inject(e.fault, self._params(i))
                w.in_effect_at = self.now()
            except Exception as exc:  # noqa: BLE001 - recorded; the timeline goes on
                w.error = f"{type(exc).__name__}: {exc}"
            self.on_event("inject", w)
        elif w.fault_id and w.healed_at is None:
            self._heal(w)

    def _heal(self, w: Window) -> None:
        w.heal_started_at = self.now()
        self.engine.heal(w.fault_id)
        w.healed_at, w.healed_wall = self.now(), time.time()
        self.on_event("heal", w)

    def heal_all(self) -> None:
        for w in reversed(self.windows):
            if w.fault_id and w.healed_at is None:
                self._heal(w)

    def stop(self) -> None:
        self._halt.set()


def seeded_params(fault: str | None, params: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """A fault with random draws (a `seed` parameter) gets `seed` unless its params set one."""
    from harness.faults import fault_class

    if seed is None or fault is None or "seed" not in fault_class(fault).Params.model_fields \
            or params.get("seed") is not None:
        return params
    return {**params, "seed": seed}


def plan(events: list[Event]) -> list[tuple[float, str, int]]:
    """The actions in the order they happen: by time; at the same time a heal comes before
    an inject (a window closing at t must not overlap one opening at t), then by position."""
    actions = [(e.at, "inject", i) for i, e in enumerate(events)]
    actions += [(e.heal_at, "heal", i) for i, e in enumerate(events) if e.heal_at is not None]
    return sorted(actions, key=lambda a: (a[0], a[1] == "inject", a[2]))


def _run_operation(target, name: str) -> dict:
    from harness import operations

    return getattr(operations, name)(target)
