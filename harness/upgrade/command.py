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
    from harness.load.cli import parse_weights

    limits = [parse_phase_limit(t, "error_ratio") for t in max_error_ratio]
    limits += [parse_phase_limit(t, "p95_ms") for t in max_p95_ms]
    plan = RollingPlan(users=users, seed=seed)
    plan.weights.update(parse_weights(list(weight)))
    if limits:
        plan.limits = limits
    return plan


def upgrade_gate_command(path: list[str], env_path: str | Path | None = None, *, provider: str | None = None,
                         from_config: str = "harness", break_mode: str = "none", rolling: RollingPlan | None = None,
                         conformance: bool = True, json_out: bool = False) -> int:
    import logging

    from rich.console import Console

    from harness.redact import mask
    from harness.upgrade.gate import run_gate

    if provider not in (None, "local", "docker"):
        raise HarnessError(f"--provider '{provider}': use local or docker")
    # python-barbicanclient logs every 5xx answer; the gate reports them itself.
    logging.getLogger("barbicanclient").setLevel(logging.CRITICAL)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    report = run_gate(path, env_path, provider=provider, from_config=from_config, break_mode=break_mode,
                      conformance=conformance, rolling=rolling, echo=lambda msg: err.print(msg, markup=False))
    if json_out:
        print(mask(json.dumps(report.to_dict(), indent=2)))
    else:
        print(mask(summary_text(report)), end="")
    return report.exit_code
