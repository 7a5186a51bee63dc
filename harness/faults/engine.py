"""Injecting and healing faults on an environment, with a journal that survives crashes.

    engine = FaultEngine(env)
    with engine.injected("kek_mismatch", {"node": "2"}):
        ...                       # healed on exit, on exceptions and on Ctrl-C
    engine.heal_all()             # what `barbican-harness heal` runs after a crash
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
import signal
import threading
from typing import Any, Iterator

from pydantic import ValidationError

from harness.faults import fault_class
from harness.faults.base import Fault, FaultError
from harness.faults.journal import CLOSED, Journal
from harness.target import traits_of
from harness.topology import validation_lines

log = logging.getLogger(__name__)


def _must_be_the_harness_own(target, fault: str, ref: str) -> None:
    """An API-state fault on a target the harness does not own changes only what the
    harness itself wrote there (names under a prefix of its writes journal)."""
    from harness.writes import Writes

    prefixes = Writes(target.run_dir).prefixes()
    r = target.session().get(ref, raise_exc=False, timeout=15)
    name = (r.json().get("name") or "") if r.status_code == 200 else ""
    if not any(name.startswith(p) for p in prefixes):
        raise FaultError(f"fault '{fault}': {ref} is not a resource this harness wrote on {target.name} "
                         f"(HTTP {r.status_code}, name {name!r}); pass --allow-destructive to change it anyway")


def make_fault(name: str, params: dict[str, Any] | None = None) -> Fault:
    cls = fault_class(name)
    try:
        return cls(cls.Params.model_validate(params or {}))
    except ValidationError as exc:
        allowed = ", ".join(f"{k} ({v})" for k, v in cls.parameters().items()) or "none"
        # One line (every refusal is one line): each bad field, then what is allowed.
        detail = "; ".join(validation_lines(exc, cls.Params))
        raise FaultError(f"fault '{name}': bad parameters: {detail}; parameters: {allowed}") from None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C while faults are injected, so `finally` heals run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Permission:
    """What a command allows on a target the harness does not own (an existing cloud or
    deployment); environments of the harness allow everything."""

    allow_destructive: bool = False  # anything beyond API calls on the harness's own data
    max_nodes: int = 1  # how many nodes one fault may touch


class FaultEngine:
    def __init__(self, env, permission: Permission | None = None):
        self.env = env
        self.permission = permission or Permission()
        self.journal = Journal(env.run_dir)

    def check(self, fault: Fault, refs: bool = True) -> None:
        """Everything that can refuse a fault, before anything is journaled or changed: a
        missing capability, backend or node; on a target the harness does not own, a change
        beyond the API or to data that is not the harness's own without --allow-destructive,
        and more nodes than --max-nodes."""
        traits = traits_of(self.env)
        fault.check(traits)
        if not self.env.foreign:
            return
        allowed = self.permission
        if fault.changes_beyond_api() and not allowed.allow_destructive:
            needs = ", ".join(sorted(c.value for c in fault.capabilities if c.value != "api"))
            raise FaultError(f"fault '{fault.name}' changes {self.env.name} beyond its API ({needs}): "
                             "pass --allow-destructive to allow it")
        touched = fault.scope(traits)
        if len(touched) > allowed.max_nodes:
            raise FaultError(f"fault '{fault.name}' touches {len(touched)} nodes ({', '.join(touched)}); "
                             f"--max-nodes is {allowed.max_nodes}")
        if refs and not allowed.allow_destructive:
            for ref in fault.refs():
                _must_be_the_harness_own(self.env, fault.name, ref)

    def _why_down(self) -> str | None:
        """Why an environment of the harness is not up (None when it is, or for a target
        the harness does not own: its liveness is not the harness's to judge)."""
        why_not_up = getattr(self.env, "why_not_up", None)
        return why_not_up() if why_not_up and not self.env.foreign else None

    def inject(self, name: str, params: dict[str, Any] | None = None) -> str:
        fault = make_fault(name, params)
        # Refused before the journal has an entry: a target that cannot take the fault is
        # left exactly as it was (a run that is down included: an inject would start nodes).
        if self._why_down() is not None:
            self.env.require_up(f"fault '{name}'")
        self.check(fault)
        fault_id = self.journal.begin(name, fault.params.model_dump())
        undo: dict[str, Any] = {}
        try:
            undo = fault.prepare(self.env)
            self.journal.mark(fault_id, "prepared", undo=undo)
            fault.inject(self.env, undo)
        except BaseException as exc:
            # A half-made fault is healed at once; the journal says what happened.
            self.journal.mark(fault_id, "inject_failed", error=f"{type(exc).__name__}: {exc}", undo=undo)
            if undo or isinstance(exc, KeyboardInterrupt):
                self._heal(fault_id, fault, undo)
            raise
        self.journal.mark(fault_id, "injected", undo=undo)
        return fault_id

    def _heal(self, fault_id: str, fault: Fault, undo: dict[str, Any]) -> None:
        why_down = self._why_down()
        if why_down is not None:
            self._close_on_a_run_that_is_down(fault_id, fault, undo, why_down)
            return
        self.journal.mark(fault_id, "healing")
        try:
            fault.heal(self.env, undo)
        except BaseException as exc:
            self.journal.mark(fault_id, "heal_failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self.journal.mark(fault_id, "healed")

    def _close_on_a_run_that_is_down(self, fault_id: str, fault: Fault, undo: dict[str, Any], why: str) -> None:
        """A heal on a run that is down reverts what is in files (configs, the token, shim
        rules) and starts nothing: a restart would leave a node that nothing owns. What
        needs a live service (the API, the database, a proxy) went down with the run."""
        self.journal.mark(fault_id, "healing", run_down=why)
        with self.env.offline():
            try:
                fault.heal(self.env, undo)
                left = ""
            except Exception as exc:  # noqa: BLE001 - its service is down with the run
                left = f"{type(exc).__name__}: {exc}"
        self.journal.mark(fault_id, "closed", run_down=why, **({"not_reverted": left} if left else {}))

    def heal(self, fault_id: str) -> None:
        entry = self.journal.entries().get(fault_id)
        if entry is None:
            raise FaultError(f"no fault '{fault_id}' in {self.journal.path}")
        if entry["state"] in CLOSED:
            return
        self._heal(fault_id, make_fault(entry["name"], entry["params"]), entry.get("undo", {}))

    def heal_all(self) -> list[str]:
        """Heal everything not healed, newest first (undo in reverse order)."""
        healed, errors = [], []
        for entry in sorted(self.journal.active(), key=lambda e: e["injected_at"], reverse=True):
            try:
                self.heal(entry["id"])
                healed.append(entry["id"])
            except Exception as exc:  # noqa: BLE001 - heal the rest, then report
                errors.append(f"{entry['id']}: {exc}")
        if errors:
            raise FaultError("some faults could not be healed:\n  " + "\n  ".join(errors))
        return healed

    def active(self) -> list[dict]:
        return self.journal.active()

    @contextlib.contextmanager
    def injected(self, name: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        with sigterm_as_interrupt():
            fault_id = self.inject(name, params)
            try:
                yield fault_id
            finally:
                self.heal(fault_id)
