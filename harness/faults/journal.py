"""The fault journal: one JSON line per event in the run directory.

An entry is written *before* a fault is injected, so a crash mid-inject still leaves a
record that `heal` finds. States: injecting → injected → healing → healed (or
heal_failed), or closed (healed on a run that was down: files reverted, nothing started). Secrets never enter the journal: undo data holds references, file paths
and config overrides only (KEKs and PINs stay in secrets.json).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
#: States after which a fault is no longer in effect.
CLOSED = ("healed", "closed")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Journal:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "faults.jsonl"

    def _append(self, event: dict) -> None:
        with _lock, open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()

    def begin(self, name: str, params: dict) -> str:
        fault_id = f"{name}-{_rand.token_hex(3)}"
        self._append({"id": fault_id, "name": name, "params": params, "state": "injecting", "time": _now()})
        return fault_id

    def mark(self, fault_id: str, state: str, **extra: Any) -> None:
        self._append({"id": fault_id, "state": state, "time": _now(), **extra})

    def entries(self) -> dict[str, dict]:
        """Latest view per fault id (events folded in order)."""
        faults: dict[str, dict] = {}
        if not self.path.exists():
            return faults
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            entry = faults.setdefault(event["id"], {"undo": {}})
            history = entry.setdefault("history", [])
            history.append({"state": event["state"], "time": event["time"]})
            entry.update({k: v for k, v in event.items() if k != "time"})
            if event["state"] == "injecting":
                entry["injected_at"] = event["time"]
        return faults

    def active(self) -> list[dict]:
        """Faults that may still be in effect (anything not healed)."""
        return [e for e in self.entries().values() if e["state"] not in CLOSED]
