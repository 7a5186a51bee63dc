"""`barbican-harness known-bugs`: which catalogued Barbican bugs does this Barbican have?

Each bug gets a status: present, absent, or not checkable (with why: a role or a flag
the probe needs, a condition that does not hold, or no API call can show it), and the
evidence. Results go to reports/runs/known-bugs-<cloud>-<time>/known-bugs.json (0700).
Everything the probes write is named under the run id, recorded in the target's
writes journal (harness.writes) before the first write, deleted after each probe, and
swept by name at the end (also on an error or Ctrl-C); after a kill, `heal` does it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets as _rand
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.known_bugs.catalogue import BUGS, CATALOGUE, KnownBug
from harness.known_bugs.probes import NOT_CHECKABLE, PROBES, STATUSES, NotCheckable, Prober, judge

RESULTS_FILE = "known-bugs.json"


@dataclass
class Finding:
    bug: KnownBug
    status: str
    evidence: list[str]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        b = self.bug
        return {"id": b.id, "title": b.title, "status": self.status, "evidence": self.evidence,
                "seconds": round(self.seconds, 1), "present_means": b.present_means, "conditions": b.conditions,
                "measured_in": list(b.measured_in), "code_in": list(b.code_in), "pinned_by": list(b.pinned_by)}


def select(bug_ids: list[str] | None) -> list[KnownBug]:
    unknown = [b for b in bug_ids or [] if b not in CATALOGUE]
    if unknown:
        raise HarnessError(f"--bug {', '.join(unknown)}: no such known bug; known: {', '.join(CATALOGUE)}")
    return [b for b in BUGS if not bug_ids or b.id in bug_ids]


def summarise(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.status == s for f in findings) for s in STATUSES}


def new_run_dir(label: str) -> tuple[str, Path]:
    from harness.environment import make_run_dir, runs_dir

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"known-bugs-{re.sub(r'[^A-Za-z0-9._-]+', '-', label)}-{stamp}-{_rand.token_hex(2)}"
    run_dir = runs_dir() / run_id
    make_run_dir(run_dir)
    return run_id, run_dir


def probe_one(prober: Prober, bug: KnownBug) -> Finding:
    start = time.monotonic()
    if bug.not_checkable:
        return Finding(bug, NOT_CHECKABLE, [bug.not_checkable])
    try:
        status, evidence = judge(PROBES[bug.id](prober))
    except NotCheckable as exc:
        status, evidence = NOT_CHECKABLE, [str(exc)]
    except Exception as exc:  # noqa: BLE001 - one probe's failure must not stop the others
        status, evidence = NOT_CHECKABLE, [f"the probe failed: {type(exc).__name__}: {exc}"]
    return Finding(bug, status, evidence, time.monotonic() - start)


def _max_microversion(prober: Prober) -> str | None:
    """The API's newest microversion (GET / with a 1.1 header); None before microversions."""
    r = prober.call("GET", "/", authenticated=False, headers={"OpenStack-API-Version": "key-manager 1.1",
                                                              "Accept": "application/json"})
    try:
        return r.json()["versions"][0]["max_version"]
    except Exception:  # noqa: BLE001 - an old release without microversions, or no answer
        return None


def _deleters(prober: Prober) -> tuple[list[str], tuple[str, ...]]:
    """Who deletes what the run writes, and which kinds: orders only with a role allowed to."""
    try:
        return [prober.order_deleter()], ("containers", "secrets", "orders")
    except NotCheckable:
        return [prober.writer], ("containers", "secrets")


def run_known_bugs(target, label: str, bug_ids: list[str] | None = None, allow_quota_changes: bool = False,
                   progress: Callable[[str], None] = lambda line: None) -> dict:
    """Probe `target` for the selected bugs; the report (also written to the run directory).
    Ctrl-C stops the probing: the writes are undone and the report says interrupted."""
    from harness.targets import barbican_build
    from harness.writes import Writes, clean_up_recorded

    bugs = select(bug_ids)
    run_id, run_dir = new_run_dir(label)
    writes = Writes(target.run_dir)
    prober = Prober(target, run_id, writes, allow_quota_changes=allow_quota_changes)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(), time.monotonic()
    findings: list[Finding] = []
    deleted, problems, swept = 0, [], {}
    interrupted = False
    build, max_mv = barbican_build(target.session(), prober.base), _max_microversion(prober)
    try:
        roles, kinds = _deleters(prober)
        writes.open(run_id, roles, f"known-bugs {run_id}", kinds)  # before the first write
        for bug in bugs:
            progress(f"probing {bug.id}")
            try:
                findings.append(probe_one(prober, bug))
            finally:
                n, failed = prober.cleanup()
                deleted, problems = deleted + n, problems + failed
    except KeyboardInterrupt:
        interrupted = True
    finally:
        n, failed = prober.cleanup()
        deleted, problems = deleted + n, problems + failed
        # By name: anything the probes lost track of, a quota not restored yet; closes the record.
        swept = clean_up_recorded(target, writes, run_id)
    left = [] if run_id not in writes.open_records() else [
        f"writes under {run_id} not all undone ({swept}); `barbican-harness heal` retries them"] + problems
    report = {
        "kind": "known-bugs", "run_id": run_id, "run_dir": str(run_dir), "target": target.name,
        "endpoint": prober.base, "barbican_version": build, "api_max_microversion": max_mv,
        "policy": target.policy, "backends": list(target.backends),
        "started": started, "seconds": round(time.monotonic() - t0, 1),
        "allow_quota_changes": allow_quota_changes, "interrupted": interrupted,
        "summary": summarise(findings), "findings": [f.to_dict() for f in findings],
        "cleanup": {"deleted": deleted, "left": left, "swept_by_name": swept, "writes_journal": str(writes.path)},
    }
    tmp = run_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(run_dir / RESULTS_FILE)
    return report
