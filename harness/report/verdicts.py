"""verdict.json: one shape for every run that judges something (a scenario, a campaign,
an upgrade gate, a qualification), which the report turns into its verdict table, its
allure results and its junit cases.

    {"kind": "campaign", "name": "quick", "passed": false, "failures": ["..."],
     "checks": [{"suite": "incident", "name": "kek-mismatch-one-node", "passed": true,
                 "message": "...", "row": {...report columns...}, "details": {...}}, ...]}

The whole record of a run stays in its own file (scenario.json, campaign.json ...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.redact import mask

FILE = "verdict.json"


def short_verdict(v: dict | None) -> str:
    """A triage verdict as the tables show it: category / blast radius (nodes)."""
    if not v:
        return "-"
    nodes = v.get("affected_nodes")
    return f"{v.get('category')} / {v.get('blast_radius')}" + (f" ({', '.join(nodes)})" if nodes else "")


@dataclass
class Check:
    suite: str  # what kind of check: scenario, incident, round trip, conformance ...
    name: str
    passed: bool
    message: str  # one line: why it failed, or what was observed
    row: dict[str, Any] = field(default_factory=dict)  # the report table's columns
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerdictFile:
    kind: str
    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / FILE
        path.write_text(mask(json.dumps(asdict(self), indent=2, default=str)))
        return path

    @classmethod
    def read(cls, run_dir: Path) -> "VerdictFile | None":
        path = Path(run_dir) / FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(data["kind"], data["name"], data["passed"], data.get("failures", []),
                   [Check(**c) for c in data.get("checks", [])])
