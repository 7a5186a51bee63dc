"""Reports of a run directory (reports/runs/<run_id>/).

    build_report(run_dir) -> run_dir/report.html      one self-contained page
                              run_dir/allure-results/   environment.properties, categories.json,
                                                        one result per threshold / ledger check
                              run_dir/junit.xml         one testcase per load threshold
    latest_report() -> the newest report.html

Inputs: state.json (the environment), verdict.json (harness.report.verdicts) of a scenario,
a campaign or a gate, and
every load run under load/*/result.json (harness.load_driver). The environment's secrets are
registered with the redactor first and every file written goes through redact.mask.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.redact import mask
from harness.report.verdicts import VerdictFile

REPORT = "report.html"


RESULT_GLOBS = ("result.json", "load/result.json", "load/*/result.json")


def _resolve(run: str | Path) -> Path:
    """A directory as given (an environment's run dir, a campaign dir, a load out dir),
    else a run id."""
    path = Path(run)
    if path.is_dir():
        return path.resolve()
    from harness.environment import find_run_dir, runs_dir

    # A scenario or campaign id names a directory with a verdict.json but no state.json.
    named = runs_dir() / str(run)
    if (named / "verdict.json").is_file():
        return named.resolve()
    return find_run_dir(run)


def _register_secrets(run_dir: Path) -> None:
    secrets = run_dir / "secrets.json"
    if secrets.is_file():
        from harness.context import EnvSecrets

        try:
            EnvSecrets.load(secrets)  # registers every password, KEK and PIN with the redactor
        except (OSError, ValueError, TypeError):
            pass


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_runs(run_dir: Path) -> list[dict]:
    """Every load run's result.json under `run_dir` (itself, load/, load/*/), newest first,
    each with `_id` (its directory name) and `_rel` (its directory relative to run_dir)."""
    paths = {p.resolve() for pattern in RESULT_GLOBS for p in run_dir.glob(pattern)}
    out = []
    for path in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True):
        data = _read_json(path)
        if isinstance(data, dict) and "params" in data:
            data["_id"] = path.parent.name
            data["_rel"] = path.parent.relative_to(run_dir.resolve()).as_posix()
            data["out_dir"] = str(path.parent)
            out.append(data)
    return out


def build_report(run_dir: str | Path) -> Path:
    from harness.report import allure, page

    run_dir = _resolve(run_dir)
    _register_secrets(run_dir)
    state = _read_json(run_dir / "state.json") or {}
    verdict = VerdictFile.read(run_dir)
    loads = load_runs(run_dir)
    gate = _read_json(run_dir / "upgrade-gate.json")  # harness.upgrade's report, when the run was a gate
    html = page.render(run_dir, state, verdict, loads, gate)
    out = run_dir / REPORT
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(mask(html))
    tmp.replace(out)

    results = run_dir / "allure-results"
    results.mkdir(exist_ok=True)
    facts = loads[0].get("environment", {}) if loads else _facts_from_state(state)
    allure.write_environment(results, facts, [r["params"].get("seed") for r in loads])
    (results / "categories.json").write_text(json.dumps(allure.categories(), indent=1))
    run_id = state.get("run_id") or run_dir.name
    allure.write_results(results, run_id, loads, verdict)
    allure.write_junit(run_dir / "junit.xml", run_id, loads, verdict)
    return out


def _facts_from_state(state: dict) -> dict:
    topo = state.get("topology") or {}
    build = state.get("build") or {}
    barbican_version = build.get("version", "unknown") + (f" ({build['source']})" if build.get("kind", "pypi") != "pypi"
                                                           else "")
    return {"run_id": state.get("run_id", ""), "topology": topo.get("name", ""), "provider": state.get("provider", ""),
            "backends": [s.get("backend", "") for s in topo.get("stores", [])], "policy": topo.get("policy", ""),
            "barbican_version": barbican_version, "nodes": state.get("nodes", [])}


def latest_report(runs: str | Path | None = None) -> Path:
    """The newest report.html under the runs directory."""
    from harness.environment import runs_dir

    base = Path(runs) if runs else runs_dir()
    found = sorted(base.glob(f"*/{REPORT}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise HarnessError(f"no {REPORT} under {base}: build one with `barbican-harness report RUN_ID` "
                           f"(or run `barbican-harness load`)")
    return found[-1]


__all__ = ["build_report", "latest_report", "load_runs"]
