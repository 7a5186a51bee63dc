"""Service log lines as evidence: with their time and process, and whether they are current.

oslo.log lines start with "YYYY-MM-DD HH:MM:SS.mmm PID LEVEL ...". A one-off diagnosis reads
a window (`since`), and a line is stale when it was written before the last heal the fault
journal records or by a process that no longer runs (a node restarted or reloaded since).
Lines written while the diagnosis probed are marked `during`: they are what the probes caused.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_HEAD = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) (\d+) ")


@dataclass(frozen=True)
class LogLine:
    node: str
    text: str
    at: dt.datetime | None = None  # local time, as oslo.log writes it
    pid: int | None = None
    during: bool = True  # written while this diagnosis probed (or since the last one)

    @classmethod
    def parse(cls, node: str, text: str, during: bool = True) -> "LogLine":
        m = _HEAD.match(text)
        if not m:
            return cls(node, text, None, None, during)
        try:
            at = dt.datetime.fromisoformat(m.group(1))
        except ValueError:
            at = None
        return cls(node, text, at, int(m.group(2)), during)

    def evidence(self) -> str:
        """'log NODE: [time] ...the end of the line': the time survives the cut."""
        when = f"[{self.at.isoformat(sep=' ', timespec='seconds')}] " if self.at else ""
        return f"log {self.node}: {when}{self.text.strip()[-200:]}"


def as_log_line(item) -> LogLine:
    """classify() takes LogLine or (node, text) pairs (the older shape)."""
    return item if isinstance(item, LogLine) else LogLine.parse(item[0], item[1])


def current(lines: list[LogLine], not_before: dt.datetime | None, alive=None) -> list[LogLine]:
    """Lines inside the window and from processes that still run (`alive(pid)`; None: not
    checkable, as for containers). A line without a timestamp (a traceback's continuation
    written raw) follows the line before it."""
    out: list[LogLine] = []
    keep = True
    for line in lines:
        if line.at is not None:
            keep = (not_before is None or line.at >= not_before) and \
                (alive is None or line.pid is None or alive(line.pid))
        if keep:
            out.append(line)
    return out


def local_naive(when: dt.datetime) -> dt.datetime:
    """An aware time as the naive local time log lines carry."""
    return when.astimezone().replace(tzinfo=None) if when.tzinfo else when
