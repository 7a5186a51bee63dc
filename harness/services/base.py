"""The shape every service module follows."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import requests

from harness.context import RunContext
from harness.errors import MissingDependency, ServiceStartError
from harness.procs import RUN_MARKER, ManagedProcess, ProcessRecord


def require_binary(name: str, package: str, candidates: tuple[str, ...] = ()) -> str:
    """Path of a system program, or an error naming the Debian package to install."""
    for c in candidates:
        if Path(c).is_file():
            return c
    found = shutil.which(name)
    if not found:
        raise MissingDependency(name, package)
    return found


class Service:
    """A service of one environment.

    Lifecycle: `check()` (dependencies, before anything starts) → `prepare()` (configs,
    one-shot setup commands) → `start()` → `wait_healthy()` → `stop()`.
    """

    name: str = "service"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.processes: list[ManagedProcess] = []

    # -- to implement -------------------------------------------------------------------
    def check(self) -> None:
        """Raise MissingDependency naming the package when something is not installed."""

    def prepare(self) -> None:
        """Render configs and run one-shot setup commands."""

    def start(self) -> None:
        raise NotImplementedError

    def wait_healthy(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.ctx.logs_dir / f"{self.name}.log"

    def spawn(self, argv: list[str], *, env: dict | None = None, cwd: Path | None = None,
              ports: list[int] | None = None, name: str | None = None,
              stop_signal: int = signal.SIGTERM) -> ProcessRecord:
        env = dict(env) if env else self.ctx.environ()
        env[RUN_MARKER] = self.ctx.run_id
        proc = ManagedProcess(name or self.name, argv, self.ctx.logs_dir / f"{name or self.name}.log",
                              env=env, cwd=cwd, ports=ports, stop_signal=stop_signal)
        self.processes.append(proc)
        return proc.start()

    def adopt(self, record: ProcessRecord) -> None:
        """Take charge of a process started by an earlier harness process (from the state
        file): it can then be stopped and restarted like one started here."""
        proc = ManagedProcess(record.name, [], self.ctx.logs_dir / f"{record.name}.log", ports=record.ports,
                              stop_signal=record.stop_signal)
        proc.record = record
        self.processes.append(proc)

    def owns(self, process_name: str) -> bool:
        return process_name == self.name or process_name.startswith(self.name + "-")

    def records(self) -> list[ProcessRecord]:
        return [p.record for p in self.processes if p.record]

    def stop(self, timeout: float = 10.0) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout)

    def fail(self, message: str) -> ServiceStartError:
        tails = "\n".join(f"--- {p.log_path.name} (last lines)\n{p.log_tail(20)}" for p in self.processes)
        return ServiceStartError(f"{self.name}: {message}\n{tails}".rstrip())

    def wait_http(self, url: str, expect: int, timeout: float) -> None:
        """Poll until `url` answers `expect`; every request has its own short timeout."""
        wait_http(url, expect, timeout, exited=self._exited_process, fail=self.fail)

    def _exited_process(self) -> str | None:
        for proc in self.processes:
            if proc.popen is not None and proc.popen.poll() is not None:
                return f"process {proc.name} exited with {proc.popen.returncode}"
        return None


def wait_http(url: str, expect: int, timeout: float, *, exited: Callable[[], str | None],
              fail: Callable[[str], ServiceStartError]) -> None:
    """Poll until `url` answers `expect` (a service of either provider): `exited` names why
    waiting is pointless (the process or container is gone), `fail` makes the error with
    the service's log tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        reason = exited()
        if reason:
            raise fail(reason)
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == expect:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise fail(f"{url} did not answer {expect} within {timeout:.0f} s (last: {last})")
