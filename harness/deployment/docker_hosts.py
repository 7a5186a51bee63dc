"""The Docker side of a deployment: one client per Docker host, the containers by name,
files inside them, and the record of what the harness changed on which container.

Every container is reached through the Docker API of its host (`docker_host`: a unix
socket, tcp:// or ssh://, as DOCKER_HOST takes them; ssh:// goes through the system's
ssh client, so ~/.ssh/config and agents apply).

The change record (changes.json in the target's state directory) is written *before*
each change, naming the container by its id. Undoing a change acts only on a container
that still has that id: if the container is gone or was recreated since (a redeploy),
the harness touches nothing there and says so. That is how a journal entry whose inject
may never have run (state `prepared`) can never restart or edit anything it did not
change itself.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.errors import HarnessError

log = logging.getLogger(__name__)

API_TIMEOUT = 60  # seconds per Docker API call (stop/restart add their own grace period)


class HostUnreachable(HarnessError):
    """A Docker host does not answer: nothing was changed there."""


class ContainerGone(HarnessError):
    """The container is not on its host (any more)."""


class Refused(HarnessError):
    """The Docker daemon answered and refused the call: nothing was changed."""


def _docker_errors():
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class DockerHosts:
    """A Docker SDK client per DOCKER_HOST value, made (and pinged) on first use."""

    def __init__(self, tls: dict | None = None, base_dir: Path | None = None):
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()
        self._tls = tls
        self._base = base_dir

    def client(self, host: str):
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._connect(host)
            return self._clients[host]

    def _connect(self, host: str):
        import docker

        kwargs: dict = {"base_url": host, "timeout": API_TIMEOUT}
        if host.startswith("ssh://"):
            kwargs["use_ssh_client"] = True  # the system ssh: its config, keys and agent
        elif host.startswith("tcp://") and self._tls:
            from docker.tls import TLSConfig

            rel = (lambda p: str((self._base / p) if self._base and not os.path.isabs(p) else p))
            kwargs["tls"] = TLSConfig(client_cert=(rel(self._tls["client_cert"]), rel(self._tls["client_key"])),
                                      ca_cert=rel(self._tls["ca_cert"]), verify=True)
            kwargs["base_url"] = host.replace("tcp://", "https://", 1)
        try:
            client = docker.DockerClient(**kwargs)
            client.ping()
        except _docker_errors() as exc:
            raise HostUnreachable(f"Docker host {host} does not answer ({type(exc).__name__}: {exc})") from None
        return client


@dataclass(frozen=True)
class Box:
    """One container of the deployment: what the deployment file calls it, where it runs."""

    role: str        # barbican-1, barbican-worker-1, keystone, database, rabbitmq
    container: str   # the container's name on its host
    host: str        # DOCKER_HOST value

    def describe(self) -> str:
        return f"container {self.container} ({self.role}) on {self.host}"


class Containers:
    """The deployment's containers through their hosts' Docker APIs."""

    def __init__(self, hosts: DockerHosts, boxes: dict[str, Box]):
        self.hosts = hosts
        self.boxes = boxes

    def box(self, role: str) -> Box:
        if role not in self.boxes:
            raise HarnessError(f"the deployment has no '{role}'; it has: {', '.join(self.boxes)}")
        return self.boxes[role]

    def get(self, role: str):
        """The container, fresh from its host; ContainerGone or HostUnreachable otherwise."""
        import docker

        box = self.box(role)
        client = self.hosts.client(box.host)
        try:
            return client.containers.get(box.container)
        except docker.errors.NotFound:
            raise ContainerGone(f"no {box.describe()}") from None
        except _docker_errors() as exc:
            raise HostUnreachable(f"{box.describe()}: {type(exc).__name__}: {exc}") from None

    def call(self, role: str, what: str, fn):
        """Run one Docker API call on a container; its failure names the container."""
        import docker

        try:
            return fn()
        except HarnessError:
            raise
        except docker.errors.APIError as exc:
            raise Refused(f"{what} {self.box(role).describe()}: {exc.explanation or exc}") from None
        except _docker_errors() as exc:
            raise HarnessError(f"{what} {self.box(role).describe()}: {type(exc).__name__}: {exc}") from None


# -- files inside a container ---------------------------------------------------------------

@dataclass(frozen=True)
class FileInContainer:
    data: bytes
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str


def read_file(container, path: str) -> FileInContainer:
    """A regular file inside a container (running or not), with its owner and mode."""
    stream, _ = container.get_archive(path)
    buf = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buf) as tar:
        member = tar.next()
        if member is None or not member.isfile():
            raise HarnessError(f"{path} in container {container.name} is not a regular file")
        data = tar.extractfile(member).read()
        return FileInContainer(data, member.mode, member.uid, member.gid, member.uname, member.gname)


def write_file(container, path: str, data: bytes, like: FileInContainer) -> None:
    """Replace a file inside a container, keeping the owner and mode it had."""
    p = PurePosixPath(path)
    info = tarfile.TarInfo(p.name)
    info.size, info.mode, info.uid, info.gid = len(data), like.mode, like.uid, like.gid
    info.uname, info.gname = like.uname, like.gname
    info.mtime = int(dt.datetime.now().timestamp())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    if not container.put_archive(str(p.parent), buf.getvalue()):
        raise HarnessError(f"could not write {path} in container {container.name}")


# -- what the harness changed -----------------------------------------------------------------

class Changes:
    """changes.json: per node, each change the harness made (stopped, paused, config,
    disconnected) with the container's id at the time. Written before the change."""

    FILE = "changes.json"

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / self.FILE
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _write(self, data: dict) -> None:
        tmp = self.path.with_name(f".{self.FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def record(self, role: str, kind: str, box: Box, container_id: str, **data) -> dict:
        with self._lock:
            all_ = self._read()
            entry = {"container": box.container, "host": box.host, "container_id": container_id,
                     "at": dt.datetime.now(dt.timezone.utc).isoformat(), **data}
            all_.setdefault(role, {})[kind] = entry
            self._write(all_)
            return entry

    def get(self, role: str, kind: str) -> dict | None:
        with self._lock:
            return self._read().get(role, {}).get(kind)

    def drop(self, role: str, kind: str) -> None:
        with self._lock:
            all_ = self._read()
            all_.get(role, {}).pop(kind, None)
            if role in all_ and not all_[role]:
                del all_[role]
            self._write(all_)

    def all(self) -> dict:
        with self._lock:
            return self._read()


def started_at(container) -> dt.datetime | None:
    """When the container's current process started (None if it never did)."""
    text = container.attrs.get("State", {}).get("StartedAt") or ""
    if not text or text.startswith("0001-"):
        return None
    # Docker gives nanoseconds; Python parses microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def to_undo(containers: Containers, changes: Changes, role: str, kind: str):
    """The container a recorded change is undone on, or None when there is nothing the
    harness may touch: no such change recorded (the inject never got that far), the
    container is gone, or it was recreated since (another id). A host that does not
    answer raises: the change stays recorded for the next heal."""
    entry = changes.get(role, kind)
    if entry is None:
        return None, None
    try:
        c = containers.get(role)
    except ContainerGone:
        log.warning("%s: %s is gone since the harness changed it (%s): nothing to undo there",
                    role, entry["container"], kind)
        changes.drop(role, kind)
        return None, entry
    if c.id != entry["container_id"]:
        log.warning("%s: container %s was recreated since the harness changed it (%s; id %s, now %s): "
                    "the harness does not touch it", role, entry["container"], kind,
                    entry["container_id"][:12], c.id[:12])
        changes.drop(role, kind)
        return None, entry
    return c, entry
