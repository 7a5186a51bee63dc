"""The container runtime of one environment: the daemon, the labels every container,
network and volume carries, and running containers (long-running, one-shot, `exec` in a
running one), each with a timeout; removing what carries a run's label."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import images, redact
from harness.context import RunContext
from harness.errors import ServiceStartError
from harness.procs import RUN_MARKER
from harness.providers.docker.network import HOST, ensure_network

LABEL_RUN = "barbican-harness.run"
LABEL_SERVICE = "barbican-harness.service"
LABEL_ROLE = "barbican-harness.role"


def run_labels(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_id}


def container_name(run_id: str, service: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)
    return f"bh-{safe}-{service}"


class Runtime:
    """The daemon, the network and the labels of one environment."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._client = None
        self.images: dict[str, str] = {}
        self.lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            self._client = images.docker_client()
        return self._client

    @property
    def labels(self) -> dict[str, str]:
        return run_labels(self.ctx.run_id)

    @property
    def network_name(self) -> str:
        return container_name(self.ctx.run_id, "net")

    @property
    def run_dir(self) -> str:
        return str(self.ctx.run_dir.resolve())

    def volume(self, purpose: str):
        """A named volume of this environment (created on first use)."""
        import docker

        name = container_name(self.ctx.run_id, purpose)
        try:
            return self.client.volumes.get(name)
        except docker.errors.NotFound:
            return self.client.volumes.create(name, labels={**self.labels, LABEL_ROLE: purpose})

    def container(self, service: str):
        import docker

        try:
            return self.client.containers.get(container_name(self.ctx.run_id, service))
        except docker.errors.NotFound:
            return None

    def containers(self) -> list[dict]:
        return _list_containers(self.client, {"label": f"{LABEL_RUN}={self.ctx.run_id}"})

    def run(self, service: str, image: str, argv: list[str], *, role: str, env: dict | None = None,
            ports: dict[int, int] | None = None, alias: str | None = None, volumes: dict | None = None,
            stop_signal: str = "SIGTERM", log: Path | None = None, raw: bool = False):
        """Create and start one container: on the environment's network (alias = `alias`),
        the run directory mounted at the same path, output appended to `log`."""
        name = container_name(self.ctx.run_id, service)
        environment = {RUN_MARKER: self.ctx.run_id, **(env or {})}
        command = argv
        if not raw:
            log = log or self.ctx.logs_dir / f"{service}.log"
            environment["HARNESS_LOG"] = str(log)
            command = ["sh", "-c", 'exec "$@" >>"$HARNESS_LOG" 2>&1', "sh", *argv]
        mounts = {self.run_dir: {"bind": self.run_dir, "mode": "rw"}, **(volumes or {})}
        published = {f"{inner}/tcp": (HOST, outer) for inner, outer in (ports or {}).items()}
        net = ensure_network(self)
        kwargs = dict(
            name=name, hostname=alias or service, detach=True, environment=environment,
            volumes=mounts, ports=published, stop_signal=stop_signal, working_dir=self.run_dir,
            labels={**self.labels, LABEL_SERVICE: service, LABEL_ROLE: role},
            network=net.name,
            networking_config={net.name: self.client.api.create_endpoint_config(aliases=[alias or service])},
        )
        old = self.container(service)
        if old is not None:
            old.remove(force=True)
        return self.client.containers.run(image, command, **kwargs)

    def one_shot(self, service: str, image: str, argv: list[str], *, env: dict | None = None,
                 volumes: dict | None = None, timeout: float = 300, what: str = "") -> str:
        """Run a command in a fresh container of the environment, wait, remove it; its output
        goes to <logs>/<service>.log (masked); a failure raises with the tail."""
        what = what or " ".join(argv[:3])
        log = self.ctx.logs_dir / f"{service}.log"
        c = self.run(service, image, argv, role="one-shot", env=env, volumes=volumes, raw=True)
        try:
            try:
                result = c.wait(timeout=timeout)
            except Exception:  # noqa: BLE001 - requests' ReadTimeout and friends
                raise ServiceStartError(f"{what}: no answer after {timeout:.0f} s") from None
            output = redact.mask(c.logs(stdout=True, stderr=True).decode(errors="replace"))
        finally:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - down removes it by label anyway
                pass
        with open(log, "a") as f:
            f.write(f"$ {redact.mask(' '.join(argv))}\n{output}\n[exit {result.get('StatusCode')}]\n")
        if result.get("StatusCode") != 0:
            tail = "\n".join(output.splitlines()[-15:])
            raise ServiceStartError(f"{what} failed (exit {result.get('StatusCode')}):\n{tail}")
        return output

    def exec(self, service: str, argv: list[str], *, env: dict | None = None, what: str = "",
             log: Path | None = None) -> str:
        """Run a command in a running container (an operator's `docker exec`)."""
        what = what or " ".join(argv[:3])
        c = self.container(service)
        if c is None or c.status != "running":
            raise ServiceStartError(f"{what}: container of {service} is not running")
        rc, out = c.exec_run(argv, environment=env or {}, workdir=self.run_dir)
        output = redact.mask((out or b"").decode(errors="replace"))
        with open(log or self.ctx.logs_dir / f"{service}-exec.log", "a") as f:
            f.write(f"$ {redact.mask(' '.join(argv))}\n{output}\n[exit {rc}]\n")
        if rc != 0:
            tail = "\n".join(output.splitlines()[-15:])
            raise ServiceStartError(f"{what} failed (exit {rc}):\n{tail}")
        return output

    def remove_all(self) -> dict[str, int]:
        """Remove every container, network and volume labelled with this run."""
        return remove_labelled(self.client, self.ctx.run_id)


def _list_containers(client, flt: dict) -> list[dict]:
    """Containers as the list endpoint returns them (no per-container inspect, which
    races with containers being removed meanwhile)."""
    return client.api.containers(all=True, filters=flt)


def remove_labelled(client, run_id: str) -> dict[str, int]:
    """Remove the containers (with their anonymous volumes), networks and volumes that
    carry `barbican-harness.run=<run_id>`. Idempotent."""
    import docker

    flt = {"label": f"{LABEL_RUN}={run_id}"}
    containers = _list_containers(client, flt)

    def remove(c: dict) -> None:
        try:
            client.api.remove_container(c["Id"], force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    if containers:
        with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
            list(pool.map(remove, containers))
    # Containers being created in this very moment (by a process killed mid-call) show
    # up late: look again once.
    for c in _list_containers(client, flt):
        remove(c)
    networks = client.api.networks(filters=flt)
    for net in networks:
        try:
            client.api.remove_network(net["Id"])
        except docker.errors.NotFound:
            pass
    volumes = client.api.volumes(filters=flt).get("Volumes") or []
    for vol in volumes:
        try:
            client.api.remove_volume(vol["Name"], force=True)
        except docker.errors.NotFound:
            pass
    return {"containers": len(containers), "networks": len(networks), "volumes": len(volumes)}


def labelled(client, run_id: str | None = None) -> dict[str, list[str]]:
    """Names of what carries the harness's run label (of one run, or of any run)."""
    flt = {"label": f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN}
    return {"containers": sorted(c["Names"][0].lstrip("/") for c in _list_containers(client, flt)),
            "networks": sorted(n["Name"] for n in client.api.networks(filters=flt)),
            "volumes": sorted(v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or [])}
