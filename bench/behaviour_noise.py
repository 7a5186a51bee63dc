"""Run-to-run noise of behaviour signatures, and what one signature run costs.

Runs the chosen scenarios REPEAT times each on one environment per topology (the same
build), then prints per scenario: the wall time of one run, the probe rounds per phase
(min-max over the runs), the raw disagreement (rounds lined up by index, the share of
node/operation cells whose status differs between two runs: what a round-by-round diff
would report), and the differences left after the phase-level noise filter (the gate's
figure: it must be 0).

    .venv/bin/python bench/behaviour_noise.py [--scenario db-down ...] [--repeat 3]
    .venv/bin/python bench/behaviour_noise.py --dirs reports/runs/scenario-db-down-*   # runs already made
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from harness.behaviour import diff, signature
from harness.behaviour.diff import DEFAULT_SCENARIOS

REPO = Path(__file__).resolve().parent.parent


def raw_disagreement(a: dict, b: dict) -> float:
    """Share of (round index, node/op) cells, over the rounds both runs have, whose status differs."""
    cells = same = 0
    for ra, rb in zip(a["rounds"], b["rounds"]):
        for node in set(ra["nodes"]) & set(rb["nodes"]):
            for op in set(ra["nodes"][node]) & set(rb["nodes"][node]):
                cells += 1
                same += ra["nodes"][node][op]["status"] == rb["nodes"][node][op]["status"]
    return 0.0 if not cells else round(1 - same / cells, 3)


def report(by_scenario: dict[str, list[tuple[Path, float | None]]]) -> None:
    for name, runs in sorted(by_scenario.items()):
        sigs = [signature.load(p) for p, _ in runs]
        phases = {}
        for s in sigs:
            for r in s["rounds"]:
                phases.setdefault(r["phase"], []).append(None)
        counts = {ph: sorted(sum(r["phase"] == ph for r in s["rounds"]) for s in sigs) for ph in phases}
        raw = [raw_disagreement(a, b) for a, b in itertools.combinations(sigs, 2)]
        filtered = [len(diff.compare({name: [a]}, {name: [b]})) for a, b in itertools.combinations(sigs, 2)]
        walls = [w for _, w in runs if w is not None]
        print(f"{name}: {len(sigs)} runs"
              + (f", {sum(walls) / len(walls):.1f} s per run" if walls else "")
              + "; rounds per phase " + ", ".join(f"{ph} {c[0]}-{c[-1]}" for ph, c in counts.items())
              + f"; raw round-by-round disagreement {min(raw, default=0):.1%}-{max(raw, default=0):.1%}"
              + f"; phase-level differences per pair {filtered}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", help="scenario name (default: the diff's default subset)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dirs", nargs="*", type=Path, help="analyse these scenario run directories instead")
    args = ap.parse_args()
    by_scenario: dict[str, list[tuple[Path, float | None]]] = {}
    if args.dirs is not None:
        if not args.dirs:
            ap.error("--dirs: no run directories given")
        for d in args.dirs:
            by_scenario.setdefault(signature.load(d)["scenario"], []).append((d, None))
        report(by_scenario)
        return
    from harness.environment import Environment
    from harness.runner import run_scenario
    from harness.scenario import load_scenario

    scenarios = [load_scenario(REPO / "scenarios" / f"{n}.yaml") for n in (args.scenario or DEFAULT_SCENARIOS)]
    by_env: dict[Path, list] = {}
    for s in scenarios:
        by_env.setdefault(s.environment_path(), []).append(s)
    for path, group in by_env.items():
        env = Environment.up(path)
        try:
            for s in group:
                for _ in range(args.repeat):
                    start = time.monotonic()
                    result = run_scenario(s, env=env)
                    by_scenario.setdefault(s.name, []).append((Path(result.run_dir), time.monotonic() - start))
        finally:
            env.down()
    report(by_scenario)


if __name__ == "__main__":
    main()
