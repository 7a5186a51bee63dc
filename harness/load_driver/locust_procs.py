"""Locust as subprocesses: one headless process, or a master and K workers, all bound to
127.0.0.1. Locust monkey-patches with gevent, so it never runs inside the harness's
(or pytest's) process. Each process is its own session: stopping it stops its group."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import harness
from harness.errors import HarnessError
from harness.ports import free_port
from harness.procs import ManagedProcess
from harness.wait import wait_until

LOCUSTFILE = Path(harness.__file__).resolve().parent.parent / "load" / "locustfile.py"


class LocustError(HarnessError):
    """Locust did not start, crashed, or did not stop in time."""


class LocustProcesses:
    def __init__(self, out_dir: Path, environ: dict, *, users: int, spawn_rate: float,
                 host: str, workers: int = 0, stop_timeout: float = 30, locustfile: Path = LOCUSTFILE):
        if not locustfile.is_file():
            raise LocustError(f"locustfile not found: {locustfile}")
        self.out_dir = out_dir
        self.environ = environ
        self.workers = workers
        self.stop_timeout = stop_timeout
        self.master_port = free_port() if workers else None
        common = [sys.executable, "-m", "locust", "-f", str(locustfile), "--loglevel", "INFO"]
        # No -t: the locustfile ends the run itself (see _end_after there) so that the
        # merged statistics include the workers' last reports.
        master = [*common, "--headless", "-u", str(users), "-r", f"{spawn_rate:g}",
                  "--stop-timeout", f"{stop_timeout:g}", "--csv", str(out_dir / "locust"), "--csv-full-history",
                  "--html", str(out_dir / "locust.html"), "--only-summary", "--exit-code-on-error", "0",
                  "--host", host, "--logfile", str(out_dir / "locust-master.log")]
        if workers:
            master += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(self.master_port),
                       "--expect-workers", str(workers), "--expect-workers-max-wait", "90"]
        self.master = ManagedProcess("locust-master" if workers else "locust", master,
                                     out_dir / "locust-master.out", env=environ, cwd=out_dir)
        self.worker_procs = [
            ManagedProcess(f"locust-worker-{i + 1}",
                           [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(self.master_port),
                            "--logfile", str(out_dir / f"locust-worker-{i + 1}.log")],
                           out_dir / f"locust-worker-{i + 1}.out", env=environ, cwd=out_dir)
            for i in range(workers)]

    @property
    def all(self) -> list[ManagedProcess]:
        return [self.master, *self.worker_procs]

    def start(self) -> None:
        self.master.start()
        for w in self.worker_procs:
            w.start()

    def pids(self) -> dict[str, int]:
        return {p.name: p.record.pid for p in self.all if p.record}

    def wait_started(self, marker: Path, timeout: float) -> float:
        """Wall-clock time the load started (written by the locustfile on test_start)."""
        def exited() -> str | None:
            dead = next((p for p in self.all if not p.alive()), None)
            return None if dead is None else \
                f"{dead.name} exited (exit {dead.popen.returncode if dead.popen else '?'}):\n{self.tail(dead)}"

        started = wait_until(lambda: marker.exists() and marker.read_text().strip(), timeout=timeout,
                             interval=0.05, what="Locust starts the load", gave_up=exited,
                             log=lambda: self.tail(self.master), error=LocustError)
        return float(started)

    def wait(self, timeout: float, extra=lambda: 0.0) -> int | None:
        """Wait for the master (then the workers); None when it had to be killed. `extra()`
        adds seconds to the timeout as the run goes (a load that stretches)."""
        start = time.monotonic()
        while time.monotonic() < start + timeout + extra() and self.master.alive():
            time.sleep(0.2)
        if self.master.alive():
            self.stop()
            return None
        code = self.master.popen.returncode if self.master.popen else None
        # Workers quit when the master tells them; give them a moment, then stop them.
        worker_deadline = time.monotonic() + 20
        while time.monotonic() < worker_deadline and any(w.alive() for w in self.worker_procs):
            time.sleep(0.2)
        for w in self.worker_procs:
            if w.alive():
                w.stop(timeout=5)
        return code

    def stop(self) -> None:
        """SIGTERM (Locust writes its reports on it), SIGKILL after a grace period."""
        for p in self.all:
            if p.record and p.alive():
                p.stop(timeout=10)

    def worker_codes(self) -> list[int | None]:
        return [w.popen.returncode if w.popen else None for w in self.worker_procs]

    @staticmethod
    def tail(p: ManagedProcess, lines: int = 25) -> str:
        return p.log_tail(lines)
