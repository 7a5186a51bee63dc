"""Per-second request statistics: written by every Locust process, merged by the driver.

Why our own history and not Locust's `_stats_history.csv`: Locust's history rows carry
*sliding-window* figures (current RPS over ~10 s, "current" percentiles over the last
10 s), which smear a 10-15 s fault window over its neighbours. Here every request is
counted in the second it *started*, with its response time in a histogram (rounded the
way Locust rounds), its outcome and its error class; joining those seconds with the
fault windows' wall-clock times gives exact inside/outside figures. Locust's own CSV/HTML
are kept next to it as artefacts and for the merged totals.

This module never imports locust or gevent: the locustfile imports it (to write), the
driver and the report import it (to read) inside ordinary processes.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

AGGREGATED = "Aggregated"


def bucket_ms(rt: float) -> int:
    """Locust's rounding of response times (exact below 100 ms, 2 significant digits above)."""
    if rt < 100:
        return int(round(rt))
    if rt < 1000:
        return int(round(rt, -1))
    if rt < 10000:
        return int(round(rt, -2))
    return int(round(rt, -3))


def error_class(message: str | None, status: int | None = None) -> str:
    """'HTTP 500', 'ConnectionRefusedError', 'payload_mismatch', ... from a failure message.

    The locustfile marks failures as '<class>: <detail>' so that the class is the text
    before the first colon; anything else falls back to the HTTP status or 'error'."""
    if message:
        head = message.split(":", 1)[0].strip()
        if head and len(head) <= 60:
            return head
    if status:
        return f"HTTP {status}"
    return "error"


@dataclass
class Cell:
    """What happened in one second for one request name (or for all: AGGREGATED)."""

    n: int = 0
    f: int = 0
    rt_sum: float = 0.0
    hist: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    nodes: dict[str, list[int]] = field(default_factory=dict)  # node → [requests, failures]

    def add(self, other: "Cell") -> None:
        self.n += other.n
        self.f += other.f
        self.rt_sum += other.rt_sum
        self.hist.update(other.hist)
        self.errors.update(other.errors)
        for node, (n, f) in other.nodes.items():
            acc = self.nodes.setdefault(node, [0, 0])
            acc[0] += n
            acc[1] += f

    def percentile(self, q: float) -> float | None:
        return percentile(self.hist, self.n, q)

    @property
    def error_ratio(self) -> float:
        return self.f / self.n if self.n else 0.0


def percentile(hist: Counter, total: int, q: float) -> float | None:
    """Locust's percentile on a rounded histogram (same answer as its stats tables)."""
    if not total:
        return None
    wanted = int(total * q)
    processed = 0
    for rt in sorted(hist, reverse=True):
        processed += hist[rt]
        if total - processed <= wanted:
            return float(rt)
    return float(min(hist))


class SeriesRecorder:
    """In-process accumulator; `flush()` appends what it has to `<dir>/series-<pid>.jsonl`.

    Records are additive: a second may appear in several records (a slow request lands
    after its second was flushed) and readers sum them."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cells: dict[tuple[int, str, str], Cell] = {}
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / f"series-{os.getpid()}.jsonl"

    def add(self, start: float, name: str, method: str, rt_ms: float, failed: bool,
            error: str | None = None, node: str | None = None) -> None:
        key = (int(start), name, method)
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                cell = self._cells[key] = Cell()
            cell.n += 1
            cell.rt_sum += rt_ms
            cell.hist[bucket_ms(rt_ms)] += 1
            if failed:
                cell.f += 1
                cell.errors[error or "error"] += 1
            if node:
                acc = cell.nodes.setdefault(node, [0, 0])
                acc[0] += 1
                acc[1] += int(failed)

    def flush(self) -> int:
        with self._lock:
            cells, self._cells = self._cells, {}
        if not cells:
            return 0
        lines = []
        for (sec, name, method), c in sorted(cells.items()):
            lines.append(json.dumps({"t": sec, "name": name, "method": method, "n": c.n, "f": c.f,
                                     "rt_sum": round(c.rt_sum, 3), "hist": {str(k): v for k, v in c.hist.items()},
                                     "errors": dict(c.errors), "nodes": c.nodes}, separators=(",", ":")))
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")
        return len(lines)


@dataclass
class Series:
    """All processes' records merged: cells[(second, name)], plus AGGREGATED per second."""

    cells: dict[tuple[int, str], Cell]
    methods: dict[str, str]

    @classmethod
    def load(cls, directory: str | Path) -> "Series":
        cells: dict[tuple[int, str], Cell] = {}
        methods: dict[str, str] = {}
        for path in sorted(Path(directory).glob("series-*.jsonl")):
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a process killed mid-write leaves at most one partial line
                cell = Cell(rec["n"], rec["f"], rec.get("rt_sum", 0.0),
                            Counter({int(k): v for k, v in rec["hist"].items()}), Counter(rec.get("errors", {})),
                            {k: list(v) for k, v in rec.get("nodes", {}).items()})
                for name in (rec["name"], AGGREGATED):
                    cells.setdefault((rec["t"], name), Cell()).add(cell)
                methods[rec["name"]] = rec.get("method", "")
        return cls(cells, methods)

    @property
    def names(self) -> list[str]:
        return sorted({name for _, name in self.cells if name != AGGREGATED})

    @property
    def seconds(self) -> list[int]:
        return sorted({t for t, _ in self.cells})

    def merged(self, name: str, seconds: Iterable[int]) -> Cell:
        out = Cell()
        for t in seconds:
            cell = self.cells.get((t, name))
            if cell is not None:
                out.add(cell)
        return out

    def total(self, name: str = AGGREGATED) -> Cell:
        return self.merged(name, self.seconds)


def overlaps(second: int, start: float, end: float) -> bool:
    """Whether the second [s, s+1) overlaps the interval [start, end)."""
    return second + 1 > start and second < end
