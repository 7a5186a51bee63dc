"""One long-running container of the environment seen as a service (what every
Docker* service builds on): start, stop, restart, signals as container operations,
readiness waits, and config files rendered to listen inside the container."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import psutil

from harness.context import RunContext
from harness.errors import HarnessError, ServiceStartError
from harness.ports import free_port
from harness.procs import ProcessRecord, log_tail
from harness.providers.docker.containers import Runtime
from harness.providers.docker.network import AMQP_PORT
from harness.services.base import wait_http


def _bind_any(text: str) -> str:
    """The uWSGI and RabbitMQ templates bind 127.0.0.1 (right for the local provider); in
    a container the service must listen on the container's interface to be reachable.
    (Once the templates take a `bind` value, which the calls below already pass, this
    finds nothing left to rewrite.)"""
    text = re.sub(r"(?m)^([\w-]*socket\s*=\s*)127\.0\.0\.1:", r"\g<1>0.0.0.0:", text)
    return re.sub(r"(?m)^(listeners\.tcp\.default\s*=\s*)127\.0\.0\.1:\d+", rf"\g<1>{AMQP_PORT}", text)


def render_for_container(ctx: RunContext, template: str, dest: Path, *, must_contain: str, **values) -> Path:
    ctx.render(template, dest, bind="0.0.0.0", **values)
    text = dest.read_text()
    patched = _bind_any(text)
    if patched != text:
        fd = os.open(dest, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            f.write(patched)
    if not re.search(must_contain, patched, re.MULTILINE):
        raise HarnessError(f"harness/templates/{template} no longer renders a line matching {must_contain!r} "
                           "for a container (it must listen on 0.0.0.0, not only 127.0.0.1): "
                           "harness/providers/docker/service.py _bind_any needs updating")
    return dest


class ContainerProcess:
    """A container seen as a process (what faults and `status` look at): `record` is its
    main process on this host, when the daemon runs on this machine."""

    def __init__(self, service: ContainerService):
        self.service = service
        self.popen = None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def record(self) -> ProcessRecord | None:
        return self.service.record()

    @property
    def log_path(self) -> Path:
        return self.service.log_path

    def alive(self) -> bool:
        return self.service.running()

    def stop(self, timeout: float = 10.0) -> None:
        self.service.stop(timeout)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


class ContainerService:
    """One long-running container of the environment."""

    name = "service"
    role = "service"
    image_name = "python"
    stop_signal = "SIGTERM"
    # Its published port, if any: its name in ctx.ports (the port on 127.0.0.1) and the
    # port it listens on inside the container.
    port_key: str | None = None
    inner_port: int | None = None

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.ctx = rt.ctx
        self._process = ContainerProcess(self)

    # what the rest of the harness looks at -------------------------------------------
    @property
    def processes(self) -> list[ContainerProcess]:
        return [self._process] if self.container() is not None else []

    @property
    def log_path(self) -> Path:
        return self.ctx.logs_dir / f"{self.name}.log"

    def container(self):
        return self.rt.container(self.name)

    def running(self) -> bool:
        c = self.container()
        return c is not None and c.status == "running"

    def host_ports(self) -> list[int]:
        return [self.ctx.ports[self.port_key]] if self.port_key else []

    def record(self) -> ProcessRecord | None:
        """The container's main process as a ProcessRecord, only when that process is
        visible here (same machine, same PID namespace as the daemon)."""
        c = self.container()
        if c is None:
            return None
        pid = int(c.attrs.get("State", {}).get("Pid") or 0)
        if pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                if c.id not in f.read():
                    return None
            create_time = psutil.Process(pid).create_time()
        except (OSError, psutil.Error):
            return None
        return ProcessRecord(self.name, pid, create_time, self.host_ports(),
                             int(getattr(signal, self.stop_signal)))

    def records(self) -> list[ProcessRecord]:
        rec = self.record()
        return [rec] if rec else []

    def owns(self, process_name: str) -> bool:
        return process_name == self.name

    # lifecycle ---------------------------------------------------------------------------
    def check(self) -> None:
        pass

    def prepare(self) -> None:
        pass

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def volumes(self) -> dict:
        return {}

    def published(self) -> dict[int, int]:
        return {self.inner_port: self.ctx.ports[self.port_key]} if self.port_key else {}

    def start(self) -> None:
        """Start the container, or start it again when it exists (after a kill)."""
        c = self.container()
        if c is not None:
            c.reload()
            if c.status == "paused":
                c.unpause()
            if c.status != "running":
                c.start()
            return
        for attempt in range(5):
            try:
                self.rt.run(self.name, self.rt.images[self.image_name], self.argv(), role=self.role,
                            env=self.env(), ports=self.published(), alias=self.alias, volumes=self.volumes(),
                            stop_signal=self.stop_signal)
                return
            except Exception as exc:
                if "port is already allocated" not in str(exc) and "address already in use" not in str(exc) \
                        or attempt == 4:
                    raise
                self.repick_ports()

    def repick_ports(self) -> None:
        """A published port was taken between picking and binding: pick again."""
        if self.port_key:
            self.ctx.ports[self.port_key] = free_port()

    @property
    def alias(self) -> str:
        return self.name

    def stop(self, timeout: float = 10.0) -> None:
        c = self.container()
        if c is None:
            return
        c.reload()
        if c.status == "paused":
            c.unpause()
        if c.status == "running":
            c.stop(timeout=int(timeout))

    def restart(self, timeout: float = 10.0) -> None:
        c = self.container()
        if c is None:
            self.start()
            return
        c.reload()
        if c.status == "paused":
            c.unpause()
        c.restart(timeout=int(timeout))

    def signal(self, sig: int) -> None:
        """A signal as a container operation: SIGKILL = kill, SIGSTOP = pause (cgroup
        freezer), SIGCONT = unpause; anything else is delivered to the main process."""
        c = self.container()
        if c is None:
            raise HarnessError(f"{self.name}: no container")
        c.reload()
        if sig == signal.SIGSTOP:
            if c.status == "running":
                c.pause()
        elif sig == signal.SIGCONT:
            if c.status == "paused":
                c.unpause()
        elif c.status in ("running", "paused"):
            if c.status == "paused":
                c.unpause()
            c.kill(signal=signal.Signals(sig).name)

    def fail(self, message: str) -> ServiceStartError:
        tail = log_tail(self.log_path, 20)
        state = ""
        c = self.container()
        if c is not None:
            c.reload()
            st = c.attrs.get("State", {})
            state = f" (container {st.get('Status')}, exit code {st.get('ExitCode')})"
        return ServiceStartError(f"{self.name}: {message}{state}\n--- {self.log_path.name} (last lines)\n{tail}".rstrip())

    def _exited(self) -> bool:
        c = self.container()
        if c is None:
            return True
        c.reload()
        return c.status in ("exited", "dead", "created") and c.attrs.get("State", {}).get("FinishedAt", "0001")[:4] != "0001"

    def wait_http(self, url: str, expect: int, timeout: float) -> None:
        wait_http(url, expect, timeout, exited=lambda: "container exited" if self._exited() else None,
                  fail=self.fail)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        pass
