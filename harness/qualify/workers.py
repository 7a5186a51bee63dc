"""Child processes of the qualification. A PKCS#11 module runs in a process of its own so
that a module which crashes (SIGSEGV without locking, an abort in a vendor library) or
hangs cannot take the qualification down, and so that the module is initialised afresh.

    answer = call_worker("harness.qualify.checks", "concurrency-worker", spec, timeout=240, secret=pin)

The child is `python -m MODULE KIND`; the JSON `spec` goes to its stdin (PINs included:
never on a command line), it answers one JSON document on its last stdout line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.procs import CommandError, run

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerAnswer:
    answer: dict[str, Any] | None     # the child's JSON answer (None: it gave none)
    why: str | None = None            # why there is no answer (timeout, crash, exit code + output tail)
    signal: str | None = None         # the signal that killed the child (SIGSEGV ...)
    timed_out: bool = False


def worker_env() -> dict[str, str]:
    """The caller's environment (the module's own variables included) for a child Python,
    without pytest-xdist's variables (a child pytest must not think it is a worker)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST")) and k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def call_worker(module: str, kind: str, spec: dict[str, Any], *, timeout: float, secret: str | None = None,
                argv_prefix: tuple[str, ...] = (), stream: Callable[[str], None] | None = None,
                extra_env: dict[str, str] | None = None) -> WorkerAnswer:
    """Run `python -m module kind` (after `argv_prefix`, e.g. an `unshare` command line)."""
    argv = [*argv_prefix, sys.executable, "-m", module, kind]
    try:
        proc = run(argv, timeout=timeout, what=f"{module} {kind}", input=json.dumps(spec),
                   env={**worker_env(), **(extra_env or {})},
                   cwd=REPO, check=False, stream=stream)
    except CommandError:
        return WorkerAnswer(None, f"did not finish within {timeout:.0f} s", timed_out=True)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return WorkerAnswer(None, f"the module crashed the process ({name})", name)
    try:
        return WorkerAnswer(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        return WorkerAnswer(None, f"exited {proc.returncode}: {tail.replace(secret, '***') if secret else tail}")


def serve(workers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], usage: str) -> int:
    """The child side: `python -m MODULE KIND` reads the spec, prints the answer."""
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind not in workers:
        sys.exit(f"usage: python -m {usage} {'|'.join(workers)}  (internal; use `barbican-harness qualify-hsm` "
                 f"or the pytest suite in conformance/backend)")
    spec = json.loads(sys.stdin.read())
    print(json.dumps(workers[kind](spec)), flush=True)
    return 0
