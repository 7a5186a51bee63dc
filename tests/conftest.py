"""Shared helpers for the harness's own tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENTS = REPO / "environments"
CLI = [sys.executable, "-m", "harness.cli"]


def topology(name: str) -> Path:
    return ENVIRONMENTS / f"{name}.yaml"


def harness_cli(*args: str, timeout: float = 300, env: dict | None = None,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run `barbican-harness ARGS` as a user would (a separate process, with a timeout)."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy(), cwd=REPO, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"barbican-harness {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def project_resources(target, roles) -> set[str]:
    """Every secret and container in the projects of these roles (what a run on someone
    else's cloud must leave as it found it)."""
    refs = set()
    for role in roles:
        sess = target.session(role)
        for kind in ("secrets", "containers"):
            r = sess.get(target.nodes[0].url + f"/v1/{kind}", params={"limit": 200}, raise_exc=False, timeout=15)
            refs |= {item[f"{kind[:-1]}_ref"] for item in r.json().get(kind, [])}
    return refs


def cli_json(*args: str, timeout: float = 300) -> dict:
    return json.loads(harness_cli(*args, "--json", timeout=timeout, check=True).stdout)


@pytest.fixture
def env_of(barbican_env_pool):
    """env_of("simple-crypto") → the worker's shared Environment for that topology."""
    return lambda name: barbican_env_pool.get(topology(name))
