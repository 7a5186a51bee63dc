"""The body of `barbican-harness upgrade-gate`: options checked before anything starts, the
summary (or the JSON report) printed, the exit code returned (0 PASS, 1 FAIL, 2 ERROR)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.upgrade.report import summary_text
from harness.upgrade.rolling import RollingPlan, parse_phase_limit


def upgrade_path(from_source: str | None, to_source: str | None, path: str | None) -> list[str]:
    """--from A --to B, or --path A,B,C (one or the other)."""
    if path:
        if from_source or to_source:
            raise HarnessError("upgrade-gate: give --path A,B,C or --from A --to B, not both")
        return [p.strip() for p in path.split(",") if p.strip()]
    if not from_source or not to_source:
        raise HarnessError("upgrade-gate: give --from SOURCE and --to SOURCE (or --path A,B,C)")
    return [from_source, to_source]


def rolling_plan(users: int, max_error_ratio: list[str], max_p95_ms: list[str], seed: int | None,
                 weight: list[str] = ()) -> RollingPlan:
    from harness.load_driver.cli import parse_weights

    limits = [parse_phase_limit(t, "error_ratio") for t in max_error_ratio]
    limits += [parse_phase_limit(t, "p95_ms") for t in max_p95_ms]
    plan = RollingPlan(users=users, seed=seed)
    plan.weights.update(parse_weights(list(weight)))
    if limits:
        plan.limits = limits
    return plan


def upgrade_gate_command(path: list[str], env_path: str | Path | None = None, *, provider: str | None = None,
                         from_config: str = "harness", break_mode: str = "none", rolling: RollingPlan | None = None,
                         conformance: bool = True, json_out: bool = False,
                         behaviour: bool = False, behaviour_accept: Path | None = None) -> int:
    import logging

    from rich.console import Console

    from harness.redact import mask
    from harness.upgrade.gate import run_gate

    if provider not in (None, "local", "docker"):
        raise HarnessError(f"--provider '{provider}': use local or docker")
    accept: list[dict] = []
    if behaviour_accept is not None:
        from harness.behaviour.diff import load_accept

        if not behaviour:
            raise HarnessError("--behaviour-accept is an option of --behaviour")
        accept = load_accept(behaviour_accept)  # a bad file is refused before anything starts
    # python-barbicanclient logs every 5xx answer; the gate reports them itself.
    logging.getLogger("barbicanclient").setLevel(logging.CRITICAL)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    report = run_gate(path, env_path, provider=provider, from_config=from_config, break_mode=break_mode,
                      conformance=conformance, rolling=rolling, echo=lambda msg: err.print(msg, markup=False))
    if json_out:
        print(mask(json.dumps(report.to_dict(), indent=2)))
    else:
        print(mask(summary_text(report)), end="")
    if behaviour and report.exit_code != 2:
        unaccepted = behaviour_gate(path[0], path[-1], accept, provider, err)
        if unaccepted and report.exit_code == 0:
            return 1
    return report.exit_code


def behaviour_gate(from_source: str, to_source: str, accept: list[dict], provider: str | None, err) -> int:
    """The behaviour diff between FROM and TO (harness.behaviour): the default scenario
    subset on each build, every difference printed; returns how many are not accepted."""
    from harness.behaviour import diff as bdiff

    report = bdiff.run_and_diff(from_source, to_source, bdiff.default_scenario_files(), accept, provider=provider)
    for line in bdiff.report_lines(report):
        err.print("behaviour FROM -> TO: " + line, markup=False)
    return report["unaccepted"]
