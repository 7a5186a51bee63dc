"""Load thresholds: error ratio and p95 per request name, inside and outside fault windows.

    Threshold("error_ratio", 0.01, phase="outside")           steady state: < 1 % errors
    Threshold("p95_ms", 800, name="secret.get_payload")       inside and outside windows

A threshold's `phase` is "inside" (seconds overlapping any fault window), "outside"
(the other seconds) or "all", which is checked *separately* inside and outside: a run
with faults gets two verdicts per request name, never one figure averaging them away.
`name` "*" means every request name and the aggregate of all.

Command-line syntax (parse_error_ratio / parse_p95): `[PHASE:]VALUE` and
`[PHASE:]NAME=MS`, e.g. `--max-error-ratio outside:0.01 --max-p95-ms secret.create=500`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from harness.errors import HarnessError
from harness.load_driver.series import AGGREGATED

PHASES = ("all", "inside", "outside")
METRICS = {"error_ratio": "max error ratio", "p95_ms": "max p95 (ms)"}


@dataclass(frozen=True)
class Threshold:
    metric: Literal["error_ratio", "p95_ms"]
    limit: float
    name: str = "*"
    phase: Literal["all", "inside", "outside"] = "all"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise HarnessError(f"threshold metric '{self.metric}': use one of {', '.join(METRICS)}")
        if self.phase not in PHASES:
            raise HarnessError(f"threshold phase '{self.phase}': use one of {', '.join(PHASES)}")
        if self.limit < 0:
            raise HarnessError(f"threshold {self.metric}: limit must be >= 0, got {self.limit}")
        if self.metric == "error_ratio" and self.limit > 1:
            # A ratio above 1 can never be breached: a threshold that checks nothing.
            raise HarnessError(f"threshold error_ratio: a ratio between 0 and 1, got {self.limit:g}")

    @property
    def label(self) -> str:
        flag = "max-error-ratio" if self.metric == "error_ratio" else "max-p95-ms"
        scope = "" if self.phase == "all" else f"{self.phase}:"
        target = "" if self.name == "*" else f"{self.name}="
        value = f"{self.limit:g}"
        return f"{flag} {scope}{target}{value}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


@dataclass
class Check:
    """One threshold applied to one request name in one phase."""

    name: str
    phase: str  # inside | outside
    measured: float | None
    requests: int
    failures: int
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    threshold: Threshold
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def breaches(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def message(self) -> str:
        if self.passed:
            return f"{self.threshold.label}: passed ({len(self.checks)} checks)"
        return "; ".join(c.message for c in self.breaches)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold.to_dict(), "passed": self.passed, "message": self.message,
                "checks": [c.to_dict() for c in self.checks]}


def _split_phase(text: str) -> tuple[str, str]:
    head, sep, rest = text.partition(":")
    if sep and head in PHASES:
        return head, rest
    return "all", text


def parse_error_ratio(text: str) -> Threshold:
    """`0.01`, `outside:0.01`, `inside:secret.create=0.5`."""
    phase, rest = _split_phase(text.strip())
    name, sep, value = rest.rpartition("=")
    try:
        ratio = float(value)
    except ValueError:
        raise HarnessError(f"--max-error-ratio '{text}': expected [PHASE:][NAME=]RATIO, e.g. outside:0.01") from None
    if not 0 <= ratio <= 1:
        raise HarnessError(f"--max-error-ratio '{text}': RATIO must be between 0 and 1 (0.01 is 1 %), "
                           f"PHASE one of {', '.join(PHASES)}")
    return Threshold("error_ratio", ratio, name if sep else "*", phase)


def parse_p95(text: str) -> Threshold:
    """`secret.create=500`, `inside:*=2000`, `800` (every name)."""
    phase, rest = _split_phase(text.strip())
    name, sep, value = rest.rpartition("=")
    try:
        return Threshold("p95_ms", float(value), name if sep else "*", phase)
    except ValueError:
        raise HarnessError(f"--max-p95-ms '{text}': expected [PHASE:]NAME=MS, e.g. secret.create=500") from None


def evaluate(thresholds: list[Threshold], phase_stats: dict[str, dict[str, dict]],
             window_faults: list[str]) -> list[Verdict]:
    """`phase_stats[phase][name]` = {requests, failures, error_ratio, p95_ms} for phase in
    inside/outside (see driver.phase_stats); `window_faults` names the faults of the run."""
    verdicts = []
    faults = ", ".join(dict.fromkeys(window_faults)) or "none"
    where = {"inside": f"inside fault windows ({faults})", "outside": "outside fault windows"}
    for th in thresholds:
        verdict = Verdict(th)
        phases = ("inside", "outside") if th.phase == "all" else (th.phase,)
        for phase in phases:
            stats = phase_stats.get(phase, {})
            names = (sorted(n for n in stats if n != AGGREGATED) + [AGGREGATED]) if th.name == "*" else [th.name]
            for name in names:
                s = stats.get(name)
                if not s or not s["requests"]:
                    verdict.checks.append(Check(name, phase, None, 0, 0, True,
                                                f"{th.label}: no '{name}' requests {where[phase]}"))
                    continue
                if th.metric == "error_ratio":
                    measured = s["error_ratio"]
                    passed = measured <= th.limit
                    top = sorted(s.get("errors", {}).items(), key=lambda kv: -kv[1])[:3]
                    errors = f"; errors: {', '.join(f'{k} x{v}' for k, v in top)}" if top else ""
                    shown = (f"measured error ratio {measured:.4f} ({s['failures']}/{s['requests']} requests failed"
                             f"{errors}) > limit {th.limit:g}")
                else:
                    measured = s["p95_ms"]
                    passed = measured is not None and measured <= th.limit
                    shown = f"measured p95 {measured:.0f} ms > limit {th.limit:g} ms over {s['requests']} requests"
                msg = (f"threshold '{th.label}' breached by '{name}' {where[phase]}: {shown}" if not passed else
                       f"{th.label}: '{name}' {where[phase]} ok ({measured:.4g})")
                verdict.checks.append(Check(name, phase, measured, s["requests"], s["failures"], passed, msg))
        verdicts.append(verdict)
    return verdicts
