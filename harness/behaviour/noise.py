"""Phase-level summaries: the part of a signature that is the build's behaviour, not jitter.

Two runs of one build differ in timing: how many probe rounds fit in a fault window, which
node answered first, a transient error landing in round 2 or in round 3, a latency a little
either side of a bucket's edge. A summary keeps, per phase (before / during / after the
fault), node and operation:

- the majority status (ties broken towards the more severe status, so a tie cannot flip)
  and the normalised message that came with it,
- the answered ratio as a band (most, some, none: a node restarting inside the fault
  window leaves one round or two unanswered, measured),
- the median latency (compared with a factor, not by bucket edges alone, and only in a
  phase with at least LATENCY_MIN_ROUNDS rounds on both sides: the one round before the
  fault, or the first after heal, waits on reconnects and warm-up, measured at 0.2-0.9 s),
- the log signatures seen in the phase (a set: the round they landed in does not count);

and for the run, the recovery after heal as a band (within 10 s, within 30 s, later,
never: whether the first round after heal or the second is good is jitter) plus whether a
restart was needed.
Round counts, round order and absolute times are left out.
"""

from __future__ import annotations

import statistics
from collections import Counter

from harness.behaviour.signature import NOT_SENT, RECORDED_PHASES, latency_bucket

GLOBAL = "-"  # the node name of operations that are not per node (Keystone token, orders)
# A latency difference counts when the phase medians fall in other buckets AND differ by
# this factor and this many seconds: one bucket edge crossed by jitter is not a change.
LATENCY_FACTOR = 2.0
LATENCY_MIN_DELTA_S = 0.5
LATENCY_MIN_ROUNDS = 3
RECOVERY_BANDS = ((10.0, "within 10 s"), (30.0, "within 30 s"))  # else "later"
# Time to the first good round after heal changes when it doubles and by this much: a heal
# that restarts nodes ends at 9-11 s either side of a band's edge (measured).
RECOVERY_MIN_DELTA_S = 10.0


def severity(status: str) -> int:
    """Higher is worse for a client; used only to break ties deterministically."""
    if status in ("200", "201", "202", "204", "ACTIVE"):
        return 0
    if status == "404":
        return 5
    if status.isdigit():
        return 3 if status.startswith("5") else 2
    if status == NOT_SENT:
        return 1
    return 4  # no answer at all


def band(ratio: float) -> str:
    if ratio >= 0.5:
        return "most"
    return "some" if ratio > 0 else "none"


def recovery_band(first_good_s: float | None) -> str:
    if first_good_s is None:
        return "never"
    for limit, name in RECOVERY_BANDS:
        if first_good_s <= limit:
            return name
    return "later"


def summarise(signature: dict) -> dict:
    """{"phases": {phase: {"node/op": {...}}}, "logs": {phase: {node: [...]}}, "recovery": {...}}"""
    cells: dict[str, dict[str, list[dict]]] = {p: {} for p in RECORDED_PHASES}
    logs: dict[str, dict[str, set]] = {p: {} for p in RECORDED_PHASES}
    rounds: Counter = Counter()
    for r in signature.get("rounds", []):
        phase = r["phase"]
        rounds[phase] += 1
        for node, ops in list(r.get("nodes", {}).items()) + [(GLOBAL, r.get("global", {}))]:
            for op, v in ops.items():
                cells[phase].setdefault(f"{node}/{op}", []).append(v)
        for node, sigs in r.get("logs", {}).items():
            logs[phase].setdefault(node, set()).update(sigs)
    phases = {}
    for phase, by_cell in cells.items():
        phases[phase] = {}
        for cell, values in sorted(by_cell.items()):
            counts = Counter(v["status"] for v in values)
            top = max(counts.items(), key=lambda kv: (kv[1], severity(kv[0]), kv[0]))[0]
            messages = Counter(v.get("message", "") for v in values if v["status"] == top)
            seconds = [v["seconds"] for v in values if v.get("seconds") is not None]
            median = round(statistics.median(seconds), 3) if seconds else None
            phases[phase][cell] = {"status": top, "statuses": dict(counts),
                                   "message": max(messages.items(), key=lambda kv: (kv[1], kv[0]))[0],
                                   "answered": band(sum(v["answered"] for v in values) / len(values)),
                                   "median_s": median, "latency": latency_bucket(median), "timed": len(seconds)}
    rec = signature.get("recovery") or {}
    recovery = {"band": recovery_band(rec.get("first_good_s")) if rec else "not recorded",
                "restart_needed": rec.get("restart_needed"), "first_good_s": rec.get("first_good_s")}
    return {"scenario": signature.get("scenario"), "build": signature.get("build"), "rounds": dict(rounds),
            "phases": phases, "logs": {p: {n: sorted(s) for n, s in v.items()} for p, v in logs.items()},
            "recovery": recovery}


def recovery_changed(a: dict, b: dict) -> bool:
    if a["band"] == b["band"]:
        return False
    x, y = a.get("first_good_s"), b.get("first_good_s")
    if x is None or y is None:
        return True  # recovered on one side only
    lo, hi = sorted((x, y))
    return hi - lo >= RECOVERY_MIN_DELTA_S and hi >= LATENCY_FACTOR * max(lo, 0.001)


def latency_changed(a: float | None, b: float | None, samples: int = LATENCY_MIN_ROUNDS) -> bool:
    """`samples`: the fewer timed rounds of the two sides."""
    if a is None or b is None or samples < LATENCY_MIN_ROUNDS or latency_bucket(a) == latency_bucket(b):
        return False
    lo, hi = sorted((a, b))
    return hi - lo >= LATENCY_MIN_DELTA_S and hi >= LATENCY_FACTOR * max(lo, 0.001)
