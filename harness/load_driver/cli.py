"""`barbican-harness load`: the command body, plus a stand-alone entry point with the same
options (`python -m harness.load_driver.cli ...`).

    barbican-harness load (--run ID | --env PATH) [--scenario X.yaml] --users N
        --spawn-rate R --duration T [--workers K] [--max-error-ratio X ...]
        [--max-p95-ms NAME=MS ...] [--seed S]

Exit code: 0 when every threshold holds, the ledger lost nothing and the run had no
error; 1 otherwise (each breach is printed with the threshold and the measured value);
2 for a usage error (HarnessError: bad duration, unknown fault, no environment ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional


from harness.errors import HarnessError
from harness.load_driver.thresholds import Threshold, parse_error_ratio, parse_p95
from harness.redact import mask
from harness.timeline import MAX_TIMELINE_S

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str | float | int, option: str = "--duration") -> float:
    """60, '60', '60s', '2m', '1h30m', '1m30s' → seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(str(text))
    if not m or not any(m.groups()) or not str(text).strip():
        raise HarnessError(f"{option} '{text}': expected seconds or e.g. 90s, 2m, 1h30m")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    value = h * 3600 + mi * 60 + s
    if not 0 < value <= MAX_TIMELINE_S:
        raise HarnessError(f"{option} '{text}': more than 0 s and at most {MAX_TIMELINE_S:g} s (a day)")
    return value


def build_thresholds(max_error_ratio: list[str], max_p95_ms: list[str]) -> list[Threshold]:
    return [parse_error_ratio(t) for t in max_error_ratio or []] + [parse_p95(t) for t in max_p95_ms or []]


def parse_weights(items: list[str]) -> dict[str, int]:
    """`--weight luks=8 --weight orders=0`: the mix of user classes (load/locustfile.py)."""
    from harness.load_driver.driver import DEFAULT_WEIGHTS

    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_WEIGHTS or not value.isdigit():
            raise HarnessError(f"--weight '{item}': expected NAME=N (N >= 0) with NAME one of "
                               f"{', '.join(DEFAULT_WEIGHTS)}")
        weights[name] = int(value)
    if weights and not any({**DEFAULT_WEIGHTS, **weights}.values()):
        raise HarnessError("--weight: every user class has weight 0, nothing would run")
    return weights


def load_command(run_id: Optional[str], env_path: Optional[Path], scenario: Optional[Path], users: int,
                 spawn_rate: float, duration: Optional[str], workers: int = 0,
                 max_error_ratio: list[str] | None = None, max_p95_ms: list[str] | None = None, *,
                 seed: Optional[int] = None, weight: list[str] | None = None, console=None, out=None,
                 target=None, permission=None, dry_run: bool = False, barbican: Optional[str] = None) -> int:
    """The body of `barbican-harness load`; returns the exit code (raises HarnessError on usage
    errors). `target`: a cloud or deployment opened by the caller (instead of --run/--env)."""
    from rich.console import Console

    from harness.environment import Environment
    from harness.load_driver.driver import run_load
    from harness.progress import RichProgress
    from harness.report import build_report
    from harness.timeline import read_fault_timeline

    console = console or Console(stderr=True, soft_wrap=True)
    out = out or Console(soft_wrap=True)
    # Numbers first: a bad one is refused before any environment is attached or brought up.
    if not spawn_rate > 0:
        raise HarnessError(f"--spawn-rate {spawn_rate:g}: users started per second, a number more than 0")
    if users < 1 or workers < 0:
        raise HarnessError(f"--users {users} / --workers {workers}: --users at least 1, --workers at least 0")
    if [bool(run_id), bool(env_path), target is not None].count(True) != 1:
        raise HarnessError("load: name exactly one target: --run RUN_ID (an environment that is up), "
                           "--env PATH (a topology to bring up for this load), --cloud NAME or --deployment FILE")
    if barbican and not env_path:
        raise HarnessError("load: --barbican chooses the build of the environment --env brings up; "
                           "a target that is up already runs its own")
    thresholds = build_thresholds(max_error_ratio or [], max_p95_ms or [])
    weights = parse_weights(weight or [])
    events, scenario_duration = read_fault_timeline(scenario) if scenario else ([], None)
    if duration is None and scenario_duration is None:
        raise HarnessError("load: --duration is required (or a scenario with a 'duration:')")
    seconds = parse_duration(duration) if duration is not None else scenario_duration
    if run_id:
        target = Environment.attach(run_id)
        target.require_up("load")
    if dry_run:
        if target is None:
            raise HarnessError("load: --dry-run plans a load on a target that is up (--run, --cloud, --deployment)")
        from harness.load_driver.driver import DEFAULT_WEIGHTS
        from harness.plan import load_plan

        out.print(load_plan(target, users, seconds, {**DEFAULT_WEIGHTS, **weights}, events, thresholds).render(),
                  markup=False, highlight=False)
        return 0
    with RichProgress(console) as progress:
        env = target if target is not None else Environment.up(env_path, progress=progress, barbican=barbican)
        try:
            result = run_load(env, users, spawn_rate, seconds, workers, events, thresholds, progress=progress,
                              seed=seed, weights=weights, permission=permission)
            with progress.step("report"):
                report = build_report(env.run_dir)
        finally:
            if env_path:
                with progress.step(f"environment down: {env.run_id}"):
                    env.down()
    return print_result(result, report, out)


def print_result(result, report: Path, out) -> int:
    from rich.table import Table

    from harness.progress import print_table

    table = Table(title=f"load {result.out_dir.name}: thresholds")
    for col in ("threshold", "result", "measured"):
        table.add_column(col)
    for v in result.verdicts:
        shown = (f"{len(v.checks)} checks held" if v.passed else
                 f"{len(v.breaches)} of {len(v.checks)} checks breached (below)")
        table.add_row(v.threshold.label, "[green]PASS[/green]" if v.passed else "[red]BREACHED[/red]", shown)
    if result.verdicts:
        print_table(out, table)
    for v in result.breached:
        for c in v.breaches:
            out.print(f"BREACH: {mask(c.message)}", markup=False, highlight=False)
    led = result.ledger
    if led is not None:
        state = "nothing lost" if led.get("ok") else "DATA LOSS"
        out.print(f"ledger: {state}: {led.get('verified', 0)}/{led.get('acknowledged', 0)} acknowledged creates "
                  f"read back, lost {len(led.get('lost', []))}, corrupted {len(led.get('corrupted', []))}, "
                  f"resurrected {len(led.get('resurrected', []))}, unexpected {len(led.get('unexpected', []))}",
                  markup=False, highlight=False)
    for e in result.errors:
        out.print(f"run error: {mask(e)}", markup=False, highlight=False)
    agg = result.phase_stats.get("all", {}).get("Aggregated", {})
    out.print(f"requests: {agg.get('requests', 0)}, failures: {agg.get('failures', 0)}; "
              f"results: {result.out_dir / 'result.json'}", markup=False, highlight=False)
    out.print(f"report: {report}", markup=False, highlight=False)
    return 0 if result.ok else 1


def main() -> None:
    """`python -m harness.load_driver.cli`: the same options as `barbican-harness load`."""
    import sys

    import typer
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)

    def load(run_id: Optional[str] = typer.Option(None, "--run", help="Run id of an environment that is up"),
             env_path: Optional[Path] = typer.Option(None, "--env", help="Topology to bring up (and down after)"),
             scenario: Optional[Path] = typer.Option(None, "--scenario", help="YAML with a top-level timeline:"),
             users: int = typer.Option(..., "--users", min=1),
             spawn_rate: float = typer.Option(..., "--spawn-rate"),
             duration: Optional[str] = typer.Option(None, "--duration", help="60, 90s, 2m ..."),
             workers: int = typer.Option(0, "--workers", min=0, help="Locust workers (0: one process)"),
             max_error_ratio: list[str] = typer.Option([], "--max-error-ratio", help="(inside:|outside:)(NAME=)RATIO"),
             max_p95_ms: list[str] = typer.Option([], "--max-p95-ms", help="(inside:|outside:)NAME=MS"),
             seed: Optional[int] = typer.Option(None, "--seed")) -> None:
        try:
            code = load_command(run_id, env_path, scenario, users, spawn_rate, duration, workers, max_error_ratio,
                                max_p95_ms, seed=seed, console=console)
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2)
        raise typer.Exit(code)

    try:
        typer.run(load)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
