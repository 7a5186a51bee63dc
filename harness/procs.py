"""Local processes: start in their own session, record, stop by process group.

Why process groups: uWSGI forks workers and RabbitMQ starts Erlang helpers; killing the
group takes them all. Why create_time in the record: `down` may run long after `up`
(even after the CLI was SIGKILLed), and a recycled PID must never be killed.
PID 1 on our CI machines does not reap orphans, so a dead orphan stays a zombie: a zombie
counts as stopped (it holds no port, file or memory).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from harness.errors import ServiceStartError
from harness.redact import mask

# Every process the harness starts for an environment carries this variable with the
# run id, so `down` finds even a process started in the instant before a crash recorded it.
RUN_MARKER = "BARBICAN_HARNESS_RUN"


@dataclass
class ProcessRecord:
    name: str
    pid: int
    create_time: float
    ports: list[int] = field(default_factory=list)
    # The signal this program stops cleanly on (PyKMIP's server ignores SIGTERM until its
    # next 10 s accept() timeout but stops at once on SIGINT).
    stop_signal: int = signal.SIGTERM

    def to_dict(self) -> dict:
        return asdict(self)


def is_running(pid: int, create_time: float | None = None) -> bool:
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return False  # the PID was recycled
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_stopped(pgid: int) -> bool:
    """Every live process of the group is stopped (SIGSTOP took effect on each)."""
    members = _group_members(pgid)
    try:
        return bool(members) and all(p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
                                     for p in members)
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return out


def stop_record(rec: ProcessRecord, timeout: float = 10.0, sig: int | None = None) -> None:
    """Stop a recorded process and everything in its process group (SIGKILL after timeout)."""
    sig = rec.stop_signal if sig is None else sig
    if not is_running(rec.pid, rec.create_time) and not _group_members(rec.pid):
        return
    try:
        os.killpg(rec.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not _group_members(rec.pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(rec.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _group_members(rec.pid):
        _reap(rec.pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    # Only succeeds when we are the parent; elsewhere the zombie stays (see module doc).
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class ManagedProcess:
    """A long-running service process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None, ports: list[int] | None = None,
                 stop_signal: int = signal.SIGTERM):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.ports = ports or []
        self.stop_signal = stop_signal
        self.popen: subprocess.Popen | None = None
        self.record: ProcessRecord | None = None

    def start(self) -> ProcessRecord:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ServiceStartError(f"{self.name}: cannot run {self.argv[0]}: {exc}") from None
        finally:
            log.close()
        ct = psutil.Process(self.popen.pid).create_time()
        self.record = ProcessRecord(self.name, self.popen.pid, ct, list(self.ports), int(self.stop_signal))
        return self.record

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.record is not None and is_running(self.record.pid, self.record.create_time)

    def stop(self, timeout: float = 10.0) -> None:
        if self.record:
            stop_record(self.record, timeout)
        if self.popen:
            try:
                self.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return mask("\n".join(text.splitlines()[-lines:]))


class CommandError(ServiceStartError):
    """A one-shot command failed or did not finish in time (the message has its tail)."""


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], *, timeout: float, what: str | None = None, env: dict | None = None,
        cwd: Path | str | None = None, input: str | None = None, log_path: Path | None = None,
        stream: Callable[[str], None] | None = None, check: bool = True,
        error: type[Exception] = CommandError) -> Completed:
    """The one way the harness runs a one-shot command.

    The child gets a session of its own, its output is read by threads (so a child that
    prints nothing still times out), and on the deadline its whole process group is
    killed. `input` goes to its stdin (how secrets reach a command: never on its command
    line). `stream` sees every output line as it comes; `log_path` gets the masked command
    line, output and exit code. With `check`, a non-zero exit raises `error` with the end
    of the output; a timeout always raises."""
    what = what or " ".join(argv[:3])
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                start_new_session=True, text=True, errors="replace")
    except (FileNotFoundError, PermissionError) as exc:
        raise error(f"{what}: cannot run {argv[0]}: {exc}") from None
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def pump(name: str, pipe) -> None:
        for line in pipe:
            out[name].append(line)
            if stream is not None:
                stream(line.rstrip("\n"))
        pipe.close()

    readers = [threading.Thread(target=pump, args=(n, getattr(proc, n)), daemon=True) for n in out]
    for r in readers:
        r.start()
    if input is not None:
        try:
            proc.stdin.write(input)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if timed_out or proc.poll() is None:  # also on Ctrl-C: nothing is left running
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    for r in readers:
        r.join(timeout=5)  # a grandchild holding the pipe must not hold us
    stdout, stderr = "".join(out["stdout"]), "".join(out["stderr"])
    output = mask(stdout + stderr)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ {mask(' '.join(map(str, argv)))}\n{output}\n[exit {proc.returncode}]\n")
    tail = "\n".join(output.splitlines()[-15:])
    if timed_out:
        raise error(f"{what}: no answer after {timeout:.0f} s (killed)\n{tail}".rstrip())
    if check and proc.returncode != 0:
        raise error(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return Completed(list(map(str, argv)), proc.returncode, stdout, stderr)


def run_command(argv: list[str], *, log_path: Path, env: dict | None = None, cwd: Path | None = None,
                timeout: float = 120.0, what: str | None = None, input: str | None = None) -> str:
    """A service's one-shot set-up command (keystone-manage, barbican-manage ...): output
    logged (masked), stdout returned, a failure raised with the tail of the output."""
    return run(argv, timeout=timeout, what=what, env=env, cwd=cwd, input=input, log_path=log_path).stdout


def marked_processes(run_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(RUN_MARKER) == run_id:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_marked(run_id: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every live process carrying the run's marker. Returns their PIDs."""
    procs = marked_processes(run_id)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=2)
    return [p.pid for p in procs]
