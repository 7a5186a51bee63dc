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


def cli_json(*args: str, timeout: float = 300) -> dict:
    return json.loads(harness_cli(*args, "--json", timeout=timeout, check=True).stdout)


@pytest.fixture
def env_of(barbican_env_pool):
    """env_of("simple-crypto") → the worker's shared Environment for that topology."""
    return lambda name: barbican_env_pool.get(topology(name))
