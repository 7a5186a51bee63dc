"""Injecting and healing faults on an environment, with a journal that survives crashes.

    engine = FaultEngine(env)
    with engine.injected("kek_mismatch", {"node": "2"}):
        ...                       # healed on exit, on exceptions and on Ctrl-C
    engine.heal_all()             # what `barbican-harness heal` runs after a crash
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

from pydantic import ValidationError

from harness.faults import fault_class
from harness.faults.base import Fault, FaultError
from harness.faults.journal import Journal
from harness.target import traits_of
from harness.topology import describe_validation_error

log = logging.getLogger(__name__)


def make_fault(name: str, params: dict[str, Any] | None = None) -> Fault:
    cls = fault_class(name)
    try:
        return cls(cls.Params.model_validate(params or {}))
    except ValidationError as exc:
        allowed = ", ".join(f"{k} ({v})" for k, v in cls.parameters().items()) or "none"
        detail = describe_validation_error(f"fault {name}", exc, cls.Params).split("\n", 1)[-1]
        raise FaultError(f"fault '{name}': bad parameters\n{detail}\n  parameters: {allowed}") from None


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


class FaultEngine:
    def __init__(self, env):
        self.env = env
        self.journal = Journal(env.run_dir)

    def inject(self, name: str, params: dict[str, Any] | None = None) -> str:
        fault = make_fault(name, params)
        # Refused before the journal has an entry: a target that cannot take the fault
        # (a missing capability, backend or node) is left exactly as it was.
        fault.check(traits_of(self.env))
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
        self.journal.mark(fault_id, "healing")
        try:
            fault.heal(self.env, undo)
        except BaseException as exc:
            self.journal.mark(fault_id, "heal_failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self.journal.mark(fault_id, "healed")

    def heal(self, fault_id: str) -> None:
        entry = self.journal.entries().get(fault_id)
        if entry is None:
            raise FaultError(f"no fault '{fault_id}' in {self.journal.path}")
        if entry["state"] == "healed":
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
