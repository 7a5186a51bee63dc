"""The one conformance runner: the suites in conformance/ against a target, as a pytest
subprocess with a deadline, judged from its junit XML (not from its last line).

    result = run_conformance(env, ["conformance/api"], k="secret", out_dir=run_dir)
    result.ok, result.counts, result.failed_tests

Used by the campaign (a smoke on each environment), the upgrade gate (the API suite on
TO) and qualify-hsm (the secret API on the vendor's token). A target is an environment
of this harness (`--barbican-run`) or an existing cloud (`--barbican-cloud` with its
targets file). The child runs in its own process group and is killed whole on the
deadline or on Ctrl-C; its output is masked into a log next to the junit file.
"""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.procs import CommandError, run

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 1800.0


@dataclass
class ConformanceResult:
    suites: list[str]
    command: str
    exit_code: int | None  # None: killed on the deadline
    seconds: float
    junit: str
    log: str
    counts: dict[str, int] = field(default_factory=dict)  # tests, passed, failed, errors, skipped, xfailed
    failed_tests: list[str] = field(default_factory=list)
    error: str | None = None  # the suite could not run or finish

    @property
    def ok(self) -> bool:
        """Every test passed or is a known (xfail) Barbican bug, and at least one ran."""
        return (self.error is None and self.exit_code == 0 and self.counts.get("tests", 0) > 0)

    @property
    def summary(self) -> str:
        if self.error:
            return self.error
        c = self.counts
        return (f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('errors', 0)} errors, "
                f"{c.get('skipped', 0)} skipped, {c.get('xfailed', 0)} xfailed in {self.seconds:.0f} s")

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "summary": self.summary}


def run_conformance(target, suites: list[str], *, out_dir: Path, name: str = "conformance",
                    k: str | None = None, workers: int = 0, timeout: float = DEFAULT_TIMEOUT,
                    extra: list[str] | None = None) -> ConformanceResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    junit, log = out_dir / f"{name}.xml", out_dir / f"{name}.log"
    argv = [sys.executable, "-m", "pytest", *suites, *target.pytest_args(), "-q", "-p", "no:cacheprovider",
            f"--junitxml={junit}", *(["-k", k] if k else []),
            *(["-n", str(workers), "--dist", "loadgroup"] if workers else []), *(extra or [])]
    shown = "pytest " + " ".join(argv[3:])
    missing = [s for s in suites if not (REPO / s.split("::")[0]).exists()]
    if missing:
        return ConformanceResult(suites, shown, None, 0.0, str(junit), str(log),
                                 error=f"suite(s) not present: {', '.join(missing)}")
    junit.unlink(missing_ok=True)
    start = time.monotonic()
    env = {**os.environ}
    try:
        done = run(argv, timeout=timeout, what=shown, cwd=REPO, env=env, log_path=log, check=False)
        code, error = done.returncode, None
    except CommandError as exc:
        code, error = None, f"did not finish within {timeout:.0f} s: {str(exc).splitlines()[0]}"
    result = ConformanceResult(suites, shown, code, round(time.monotonic() - start, 1), str(junit), str(log),
                               error=error)
    result.counts, result.failed_tests = junit_counts(junit)
    if result.error is None and code not in (0, 1):
        # 2: interrupted or a usage error, 3: internal error, 4: bad options, 5: nothing collected.
        result.error = f"pytest exited {code} (see {log.name})"
    return result


def junit_counts(path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts by outcome and the failed test ids, from pytest's junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}, []
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    failed = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        test_id = f"{case.get('classname')}::{case.get('name')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(test_id)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(test_id)
        elif skipped is not None:
            counts["xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failed
