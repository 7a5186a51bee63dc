"""Two sets of scenario runs lined up: every difference in behaviour under the faults.

    diffs = compare(load_runs([baseline_dir]), load_runs([candidate_dir]))
    unaccepted = [d for d in diffs if not accepted(d, load_accept(path))]

Scenario by scenario, phase by phase (before / during / after the fault), node by node and
operation by operation, on the phase-level summaries of harness.behaviour.noise. With
several baseline runs of a scenario, the candidate is compared with the one it is closest
to (run-to-run noise of the baseline does not count against the candidate).

Each difference has a class, worst first:
  not-found   a read that failed (or worked) now answers 404: a client takes the secret
              for deleted; it looks like data loss
  outage      something that worked fails now, or stops answering at all
  changed     another error status or message, latency, answered ratio, log signature,
              recovery after heal
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from harness.behaviour import noise, signature
from harness.errors import HarnessError

CLASSES = ("not-found", "outage", "changed")
ACCEPT_KEYS = ("scenario", "phase", "node", "operation", "field", "before", "after", "reason")


@dataclass(frozen=True)
class Difference:
    scenario: str
    phase: str  # before | during | after | recovery | run
    node: str  # barbican-N, "-" for Keystone/orders, "" when not per node
    operation: str
    field: str  # status | message | answered | latency | logs | recovery | restart | present
    before: str
    after: str
    cls: str  # not-found | outage | changed
    meaning: str

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        where = "/".join(x for x in (self.node, self.operation) if x)
        return (f"[{self.cls}] {self.scenario} {self.phase} {where} {self.field}: "
                f"{self.before!r} -> {self.after!r}: {self.meaning}")


def load_runs(paths: list[Path]) -> dict[str, list[dict]]:
    """Signatures by scenario from run directories: a scenario run directory (holding
    behaviour.json) or a directory of them (one level down)."""
    out: dict[str, list[dict]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise HarnessError(f"{path}: not a directory (a scenario run directory, or one holding them)")
        files = [path / signature.FILE] if (path / signature.FILE).is_file() \
            else sorted(path.glob(f"*/{signature.FILE}"))
        if not files:
            raise HarnessError(f"{path}: no {signature.FILE} in it or in its subdirectories "
                               "(scenario runs of this harness write one)")
        for f in files:
            try:
                data = signature.load(f)
            except (OSError, ValueError) as exc:
                raise HarnessError(f"{f}: cannot read it: {exc}") from None
            out.setdefault(data["scenario"], []).append(data)
    return out


def _has_404(status: str) -> bool:
    return "404" in status.split("|")


def _ok(status: str) -> bool:
    return all(s in ("200", "201", "202", "204", "ACTIVE") for s in status.split("|"))


WRITES = ("store", "fresh_store")


def _status_meaning(op: str, before: str, after: str, answered_before: str, answered_after: str) -> tuple[str, str]:
    if _has_404(after) and not _has_404(before):
        if op == "consumed":
            return "not-found", ("a consumed secret answers 404 now: its consumer (Octavia, Nova, Cinder) takes it "
                                 "for deleted")
        if op in WRITES:
            return "not-found", ("a create answers 404 Not Found: a client takes the project or endpoint for gone "
                                 "(the same error-to-404 mapping hides reads' failures as deletions)")
        if _ok(before):
            return "not-found", "a read that worked now answers 404 Not Found: a client takes the secret for deleted"
        return "not-found", ("an error turned into 404 Not Found: a client takes the secret for deleted "
                             "(looks like data loss; the most dangerous change)")
    if answered_before != "none" and answered_after == "none":
        return "outage", "no answer at all any more: clients wait for a timeout instead of getting an error"
    if _ok(before) and not _ok(after):
        return "outage", "fails now where it worked: a new outage under this fault"
    if not _ok(before) and _ok(after):
        return "changed", "works now where it failed: the fault is handled or masked (check which)"
    return "changed", ("another error status: clients handle it differently (e.g. 503 is retried, 500 is not; "
                       "4xx blames the caller)")


def compare_one(name: str, base: dict, cand: dict) -> list[Difference]:
    """Differences between two phase-level summaries of one scenario."""
    diffs: list[Difference] = []
    for phase in signature.PHASES:
        b_cells, c_cells = base["phases"].get(phase, {}), cand["phases"].get(phase, {})
        if bool(b_cells) != bool(c_cells):
            diffs.append(Difference(name, phase, "", "", "present", "yes" if b_cells else "no",
                                    "yes" if c_cells else "no", "changed",
                                    "no probe round in this phase on one side (a round took the whole fault "
                                    "window, or the phase never came): not compared"))
            continue
        for cell in sorted(set(b_cells) | set(c_cells)):
            node, op = cell.split("/", 1)
            b, c = b_cells.get(cell), c_cells.get(cell)
            if b is None or c is None:
                diffs.append(Difference(name, phase, node, op, "present", "yes" if b else "no", "yes" if c else "no",
                                        "changed", "probed on one side only (another topology or a round missing)"))
                continue
            if b["status"] != c["status"]:
                cls, meaning = _status_meaning(op, b["status"], c["status"], b["answered"], c["answered"])
                diffs.append(Difference(name, phase, node, op, "status", b["status"], c["status"], cls, meaning))
            else:
                new_404 = any(_has_404(s) for s in c["statuses"]) and not any(_has_404(s) for s in b["statuses"])
                if new_404:
                    diffs.append(Difference(name, phase, node, op, "status (some rounds)",
                                            "|".join(sorted(b["statuses"])), "|".join(sorted(c["statuses"])),
                                            "not-found", "some rounds answer 404 Not Found now: a client may take "
                                            "the secret for deleted"))
                if b["message"] != c["message"]:
                    diffs.append(Difference(name, phase, node, op, "message", b["message"], c["message"], "changed",
                                            "same status, another error message (what clients and runbooks see)"))
            if b["answered"] != c["answered"] and b["status"] == c["status"]:
                diffs.append(Difference(name, phase, node, op, "answered", b["answered"], c["answered"],
                                        "outage" if c["answered"] == "none" else "changed",
                                        "the share of requests answered at all changed"))
            if noise.latency_changed(b["median_s"], c["median_s"], min(b["timed"], c["timed"])):
                slower = c["median_s"] > b["median_s"]
                diffs.append(Difference(name, phase, node, op, "latency", f"{b['latency']} ({b['median_s']} s)",
                                        f"{c['latency']} ({c['median_s']} s)", "changed",
                                        "slower under the fault" if slower else "faster under the fault"))
        b_logs, c_logs = base["logs"].get(phase, {}), cand["logs"].get(phase, {})
        for node in sorted(set(b_logs) | set(c_logs)):
            gone = sorted(set(b_logs.get(node, [])) - set(c_logs.get(node, [])))
            new = sorted(set(c_logs.get(node, [])) - set(b_logs.get(node, [])))
            for sig in gone:
                diffs.append(Difference(name, phase, node, "logs", "logs", sig, "-", "changed",
                                        "the logs no longer show this (an operator's grep finds nothing)"))
            for sig in new:
                diffs.append(Difference(name, phase, node, "logs", "logs", "-", sig, "changed",
                                        "the logs show this now"))
    br, cr = base["recovery"], cand["recovery"]
    if br["restart_needed"] != cr["restart_needed"]:
        worse = bool(cr["restart_needed"])
        diffs.append(Difference(name, "recovery", "", "", "restart", str(br["restart_needed"]),
                                str(cr["restart_needed"]), "outage" if worse else "changed",
                                "needs a restart after heal now (does not recover by itself)" if worse
                                else "recovers by itself now"))
    elif noise.recovery_changed(br, cr):
        diffs.append(Difference(name, "recovery", "", "", "recovery", br["band"], cr["band"], "changed",
                                "time from heal to the first good probe round changed"))
    return diffs


def compare(baseline: dict[str, list[dict]], candidate: dict[str, list[dict]]) -> list[Difference]:
    diffs: list[Difference] = []
    for name in sorted(set(baseline) | set(candidate)):
        if name not in baseline or name not in candidate:
            diffs.append(Difference(name, "run", "", "", "present", "yes" if name in baseline else "no",
                                    "yes" if name in candidate else "no", "changed",
                                    "the scenario ran on one side only: not compared"))
            continue
        base = [noise.summarise(s) for s in baseline[name]]
        for cand in (noise.summarise(s) for s in candidate[name]):
            diffs += min((compare_one(name, b, cand) for b in base), key=len)
    order = {c: i for i, c in enumerate(CLASSES)}
    return sorted(diffs, key=lambda d: (order[d.cls], d.scenario, d.phase, d.node, d.operation, d.field))


def load_accept(path: Path) -> list[dict]:
    """The accepted differences: a YAML list of mappings, each naming at least a scenario and
    a field; every key given must equal the difference's (before/after compare as text)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"{path}: cannot read it: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise HarnessError(f"{path}: expected a YAML list of accepted differences "
                           f"(mappings with {', '.join(ACCEPT_KEYS)})")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise HarnessError(f"{path}: item {i}: expected a mapping with {', '.join(ACCEPT_KEYS)}")
        unknown = sorted(set(item) - set(ACCEPT_KEYS))
        if unknown:
            raise HarnessError(f"{path}: item {i}: field '{unknown[0]}' is not allowed; "
                               f"allowed: {', '.join(ACCEPT_KEYS)}")
        missing = [k for k in ("scenario", "field") if k not in item]
        if missing:
            raise HarnessError(f"{path}: item {i}: field '{missing[0]}' is required")
    return data


def accepted(d: Difference, accept: list[dict]) -> bool:
    fields = d.to_dict()
    return any(all(str(fields[k]) == str(v) for k, v in item.items() if k != "reason") for item in accept)


__all__ = ["Difference", "accepted", "compare", "compare_one", "load_accept", "load_runs"]


# The catalog subset run on a build source when none is named: one cheap fault per part
# of Barbican (database, simple_crypto KEK, PKCS#11 HSM), 9-11 s of timeline each.
DEFAULT_SCENARIOS = ("db-down", "kek-mismatch-one-node", "hsm-device-error-persistent")


def side_runs(side: str, scenario_files: list[Path], progress=None, provider: str | None = None) -> list[Path]:
    """BASELINE or CANDIDATE as run directories: a directory as it is; a build source
    (harness.builds.sources) is run on the scenarios given, and its run directories returned."""
    path = Path(side)
    if path.is_dir():
        return [path]
    from harness.builds import parse_source
    from harness.runner import run_many
    from harness.scenario import load_scenario

    spec = parse_source(side, what="diff-behaviour").spec
    results = run_many([load_scenario(f) for f in scenario_files], progress, provider=provider, barbican=spec)
    return [Path(r.run_dir) for r in results]


def default_scenario_files() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "scenarios"
    return [root / f"{n}.yaml" for n in DEFAULT_SCENARIOS]


def run_and_diff(baseline: str, candidate: str, scenario_files: list[Path], accept: list[dict],
                 progress=None, provider: str | None = None) -> dict:
    """Both sides as run directories (a build source is run first), compared; diff.json is
    written into a new run directory, named in the report's `out_dir`."""
    import datetime as dt
    import secrets as _rand

    from harness.environment import runs_dir

    sides = [side_runs(s, scenario_files, progress, provider) for s in (baseline, candidate)]
    out_dir = runs_dir() / f"behaviour-diff-{dt.datetime.now():%Y%m%d-%H%M%S}-{_rand.token_hex(2)}"
    return {**diff_behaviour(sides[0], sides[1], accept, out_dir), "out_dir": str(out_dir)}


def report_lines(report: dict) -> list[str]:
    """One line per difference (accepted ones say so), then the count."""
    lines = [("accepted " if row["accepted"] else "") + Difference(
        **{k: v for k, v in row.items() if k != "accepted"}).line() for row in report["differences"]]
    lines.append(f"{len(report['differences'])} difference(s) in {len(report['scenarios'])} scenario(s), "
                 f"{report['unaccepted']} not accepted; {Path(report['out_dir']) / 'diff.json'}")
    return lines


def diff_behaviour(baseline: list[Path], candidate: list[Path], accept: list[dict], out_dir: Path) -> dict:
    """Compare, write diff.json into `out_dir`, and return it."""
    import json

    base, cand = load_runs(baseline), load_runs(candidate)
    diffs = compare(base, cand)
    rows = [{**d.to_dict(), "accepted": accepted(d, accept)} for d in diffs]
    report = {"baseline": [str(p) for p in baseline], "candidate": [str(p) for p in candidate],
              "scenarios": sorted(set(base) | set(cand)), "differences": rows,
              "unaccepted": sum(not r["accepted"] for r in rows)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diff.json").write_text(json.dumps(report, indent=1))
    return report
