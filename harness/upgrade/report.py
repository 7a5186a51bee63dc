"""The gate's report: one record per run (GateReport) with one record per hop (HopReport),
written to the run directory as upgrade-gate.json (read by harness.report for report.html)
and upgrade-gate.txt (the human summary, also what the command prints)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

JSON_FILE = "upgrade-gate.json"
TEXT_FILE = "upgrade-gate.txt"


@dataclass
class HopReport:
    from_build: str  # Build.label
    to_build: str
    mode: str  # "offline" (every node stopped) or "rolling"
    ok: bool = False
    preflight: dict = field(default_factory=dict)
    db_revision: dict = field(default_factory=dict)  # before / after
    versions: dict = field(default_factory=dict)  # node → what GET /?build says after the hop
    verification: dict = field(default_factory=dict)
    unreadable_secrets: dict[str, str] = field(default_factory=dict)
    new_operations: dict = field(default_factory=dict)
    rolling: dict = field(default_factory=dict)  # phases, zero_downtime, load (rolling hops)
    failures: list[str] = field(default_factory=list)


@dataclass
class GateReport:
    path: list[str]  # the sources, FROM first
    topology: str
    provider: str = "local"
    from_config: str = "harness"
    break_mode: str = "none"
    rolling: bool = False
    run_id: str | None = None
    run_dir: str | None = None
    verdict: str = "ERROR"
    exit_code: int = 2
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    seconds: float = 0.0
    builds: list[dict] = field(default_factory=list)  # Build.describe() per source
    steps: list[dict] = field(default_factory=list)
    from_versions: dict = field(default_factory=dict)
    seeded: dict = field(default_factory=dict)
    from_verification: dict = field(default_factory=dict)
    hops: list[HopReport] = field(default_factory=list)
    conformance: dict = field(default_factory=dict)
    zero_downtime: bool | None = None  # rolling gates only
    report_html: str | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def from_version(self) -> str:
        return self.builds[0]["label"] if self.builds else self.path[0]

    @property
    def to_version(self) -> str:
        return self.builds[-1]["label"] if len(self.builds) == len(self.path) else self.path[-1]

    def to_dict(self) -> dict:
        return {**asdict(self), "from_version": self.from_version, "to_version": self.to_version}

    def write(self) -> None:
        if not self.run_dir or not Path(self.run_dir).is_dir():
            return
        from harness.redact import mask

        run_dir = Path(self.run_dir)
        (run_dir / JSON_FILE).write_text(mask(json.dumps(self.to_dict(), indent=2)))
        (run_dir / TEXT_FILE).write_text(mask(summary_text(self)))


def _phase_lines(rolling: dict) -> list[str]:
    lines = [f"    {'phase':<32} {'window (s)':>13} {'requests':>8} {'failed':>6} {'error ratio':>11} "
             f"{'p95 ms':>7}  result"]
    for p in rolling.get("phases", []):
        window = f"{p['from_s']:.0f}–{p['to_s']:.0f}" if p.get("to_s") is not None else "–"
        p95 = "–" if p.get("p95_ms") is None else f"{p['p95_ms']:.0f}"
        why = "" if p["ok"] else ": " + "; ".join(p.get("breaches", []) + ([p["error"]] if p.get("error") else []))
        lines.append(f"    {p['phase'][:32]:<32} {window:>13} {p['requests']:>8} {p['failures']:>6} "
                     f"{p['error_ratio']:>11.4f} {p95:>7}  {'ok' if p['ok'] else 'BREACHED'}{why}")
    load = rolling.get("load") or {}
    led = load.get("ledger") or {}
    if led:
        lines.append(f"    load ledger: {led.get('verified', 0)}/{led.get('acknowledged', 0)} writes acknowledged "
                     f"during the rollout read back on TO; lost {len(led.get('lost', []))}, corrupted "
                     f"{len(led.get('corrupted', []))}")
    lines.append(f"    zero-downtime: {'yes' if rolling.get('zero_downtime') else 'no'}")
    return lines


def summary_text(report: GateReport) -> str:
    mode = "rolling under load" if report.rolling else "every node stopped"
    lines = [(f"Upgrade gate: Barbican {' → '.join(b['label'] for b in report.builds) or ' → '.join(report.path)} "
              f"on {report.topology} ({report.provider}, {mode}; from-config {report.from_config}, "
              f"break {report.break_mode})")]
    if report.run_id:
        lines.append(f"  run {report.run_id}")
    for b in report.builds:
        how = "harness venv" if b.get("own") else ("cached" if b.get("cached") else
                                                    f"installed in {b.get('install_seconds')} s")
        commit = f", commit {b['commit']}" if b.get("commit") else ""
        lines.append(f"  build {b['label']}: {b['source']}{commit}; {b['prefix']} ({how})"
                     + (f"; image {b['image']}" if b.get("image") else ""))
    for s in report.steps:
        lines.append(f"  {'✓' if s['ok'] else '✗'} {s['step']} ({s['seconds']} s)"
                     + (f": {s['error']}" if s.get("error") else ""))
    if report.seeded:
        lines.append(f"  seeded {report.seeded['count']} secrets: per store {report.seeded['per_store']}, "
                     f"per type {report.seeded['per_type']}")
    for i, hop in enumerate(report.hops, 1):
        ver = hop.verification
        lines.append(f"  hop {i}: {hop.from_build} → {hop.to_build} ({hop.mode}): schema "
                     f"{hop.db_revision.get('before')} → {hop.db_revision.get('after', '-')}; read back "
                     f"{ver.get('verified', 0)}/{ver.get('acknowledged', 0)} byte-identical; new secrets "
                     f"{'ok' if hop.new_operations.get('ok') else hop.new_operations.get('errors', 'not tried')}"
                     + (f"; server errors: {'; '.join(ver['server_errors'])}" if ver.get("server_errors") else ""))
        if hop.rolling:
            lines += _phase_lines(hop.rolling)
        if hop.unreadable_secrets:
            lines.append(f"    secrets TO could no longer decrypt ({len(hop.unreadable_secrets)}):")
            lines += [f"      {ref}  {why}" for ref, why in hop.unreadable_secrets.items()]
    c = report.conformance
    if c.get("ran"):
        lines.append(f"  conformance/api: {c.get('summary')} (exit {c.get('exit_code')})")
    elif c:
        lines.append(f"  conformance/api not run: {c.get('reason')}")
    for f in report.failures:
        lines.append(f"  - {f}")
    if report.report_html:
        lines.append(f"  report: {report.report_html}")
    lines.append(f"{report.verdict} ({report.seconds} s, exit {report.exit_code})"
                 + ("" if report.zero_downtime is None else f"; zero-downtime: {'yes' if report.zero_downtime else 'no'}"))
    return "\n".join(lines) + "\n"
