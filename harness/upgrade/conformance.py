"""conformance/api against the environment the gate upgraded (a subprocess with a timeout;
its junit XML gives the counts)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CONFORMANCE_TIMEOUT = float(os.environ.get("BARBICAN_HARNESS_UPGRADE_CONFORMANCE_TIMEOUT", "1800"))
# With --barbican-run every conformance test is in one xdist group (one environment with
# project-wide state such as quotas), so `-n 2 --dist loadgroup` runs them on one worker
# anyway. With pytest 9.2.0 + pytest-xdist 3.8.0 xdist_group is silently ignored (xdist
# sets item._nodeid, pytest 9.2 reads item._id): `-n 2` then spreads the suite over two
# workers and the quota tests race (measured: ~100 failures on a healthy 23.0.0).
CONFORMANCE_WORKERS = os.environ.get("BARBICAN_HARNESS_UPGRADE_CONFORMANCE_WORKERS", "1")


def run_conformance(env, timeout: float = CONFORMANCE_TIMEOUT) -> dict:
    """conformance/api against the running environment, as a subprocess with a timeout."""
    from harness.environment import reports_dir

    suite = REPO / "conformance" / "api"
    if not suite.is_dir():
        # The step "new secrets on TO (every node and store)" is then the only smoke test.
        return {"ran": False, "ok": True, "reason": f"{suite} does not exist"}
    junit = env.run_dir / "upgrade-conformance.xml"
    log_path = env.ctx.logs_dir / "upgrade-conformance.log"
    argv = [sys.executable, "-m", "pytest", "conformance/api", "--barbican-run", env.run_id, "-q",
            "-n", CONFORMANCE_WORKERS, "--dist", "loadgroup", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    start = time.monotonic()
    environ = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(reports_dir())}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=environ, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, timed_out = None, True
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    out = {"ran": True, "command": " ".join(argv[1:]), "exit_code": rc, "timed_out": timed_out,
           "seconds": round(time.monotonic() - start, 1), "log": str(log_path), "junit": str(junit)}
    out.update(_junit_counts(junit))
    out["ok"] = rc == 0
    tail = log_path.read_text(errors="replace").splitlines()
    out["last_line"] = next((line for line in reversed(tail) if line.strip()), "")
    return out


def _junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts["failed_tests"] = failed[:50]
    return counts
