"""`barbican-harness known-bugs`: which catalogued Barbican bugs does this Barbican have?

Each bug gets a status: present, absent, or not checkable (with why: a role or a flag
the probe needs, a condition that does not hold, or no API call can show it), and the
evidence. Results go to reports/runs/known-bugs-<cloud>-<time>/known-bugs.json (0700).
Every write is undone after its probe, and again at the end (also on an error or
Ctrl-C); a run first undoes what an earlier, killed run against the same target left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets as _rand
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.known_bugs.catalogue import BUGS, CATALOGUE, KnownBug
from harness.known_bugs.probes import NOT_CHECKABLE, PROBES, STATUSES, NotCheckable, Prober, Writes, judge

RESULTS_FILE = "known-bugs.json"
OWNER_FILE = "owner.json"  # which process runs it: its writes are not leftovers while it runs


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


@dataclass
class Cleanup:
    undone: int = 0
    left: list[str] = field(default_factory=list)

    def add(self, undone_and_left: tuple[int, list[str]]) -> None:
        self.undone += undone_and_left[0]
        self.left = undone_and_left[1]  # the latest pass retried everything still pending


def select(bug_ids: list[str] | None) -> list[KnownBug]:
    unknown = [b for b in bug_ids or [] if b not in CATALOGUE]
    if unknown:
        raise HarnessError(f"--bug {', '.join(unknown)}: no such known bug; known: {', '.join(CATALOGUE)}")
    return [b for b in BUGS if not bug_ids or b.id in bug_ids]


def summarise(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.status == s for f in findings) for s in STATUSES}


def new_run_dir(label: str) -> tuple[str, Path]:
    from harness.environment import runs_dir

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"known-bugs-{re.sub(r'[^A-Za-z0-9._-]+', '-', label)}-{stamp}-{_rand.token_hex(2)}"
    run_dir = runs_dir() / run_id
    run_dir.mkdir(parents=True, mode=0o700)
    os.chmod(run_dir, 0o700)  # mkdir's mode is masked by the umask
    (run_dir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return run_id, run_dir


def _running(run_dir: Path) -> bool:
    """Is the run that owns this directory still going (on this host)? Its writes are not
    leftovers then: a concurrent run must not delete them."""
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine's run: cannot tell, leave it alone
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def sweep_interrupted(prober: Prober, own_dir: Path) -> Cleanup:
    """Undo what earlier known-bugs runs against this target journaled and never undid."""
    swept = Cleanup()
    for run_dir in sorted(own_dir.parent.glob("known-bugs-*")):
        if run_dir == own_dir or not (run_dir / Writes.FILE).is_file() or _running(run_dir):
            continue
        writes = Writes(run_dir, prober.target.name)
        for entry in writes.pending():
            if entry.get("target") != prober.target.name:
                continue
            problem = prober.undo(entry, writes)
            swept.undone += problem is None
            swept.left += [problem] if problem else []
    return swept


def _max_microversion(prober: Prober) -> str | None:
    """What the API says of itself (the release is not exposed): its newest microversion."""
    r = prober.call("GET", "/", authenticated=False, headers={"OpenStack-API-Version": "key-manager 1.1",
                                                              "Accept": "application/json"})
    try:
        return r.json()["versions"][0]["max_version"]
    except Exception:  # noqa: BLE001 - an old release without microversions, or no answer
        return None


def run_known_bugs(target, label: str, bug_ids: list[str] | None = None, allow_quota_changes: bool = False,
                   progress: Callable[[str], None] = lambda line: None) -> dict:
    """Probe `target` for the selected bugs; the report (also written to the run directory).
    Ctrl-C stops the probing: the writes are undone and the report says interrupted."""
    bugs = select(bug_ids)
    run_id, run_dir = new_run_dir(label)
    prober = Prober(target, run_id, run_dir, allow_quota_changes=allow_quota_changes)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(), time.monotonic()
    findings: list[Finding] = []
    cleanup, swept = Cleanup(), Cleanup()
    interrupted, max_mv = False, None
    try:
        swept = sweep_interrupted(prober, run_dir)
        if swept.undone or swept.left:
            progress(f"undid {swept.undone} write(s) an interrupted earlier run left"
                     + (f"; could not undo: {'; '.join(swept.left)}" if swept.left else ""))
        max_mv = _max_microversion(prober)
        for bug in bugs:
            progress(f"probing {bug.id}")
            try:
                findings.append(probe_one(prober, bug))
            finally:
                cleanup.add(prober.cleanup())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        cleanup.add(prober.cleanup())
    report = {
        "kind": "known-bugs", "run_id": run_id, "run_dir": str(run_dir), "target": target.name,
        "endpoint": prober.base, "policy": target.policy, "backends": list(target.backends),
        "api_max_microversion": max_mv, "started": started, "seconds": round(time.monotonic() - t0, 1),
        "allow_quota_changes": allow_quota_changes, "interrupted": interrupted,
        "summary": summarise(findings), "findings": [f.to_dict() for f in findings],
        "cleanup": {"undone": cleanup.undone, "left": cleanup.left,
                    "from_interrupted_runs": {"undone": swept.undone, "left": swept.left}},
    }
    tmp = run_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(run_dir / RESULTS_FILE)
    return report
