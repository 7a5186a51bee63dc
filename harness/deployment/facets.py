"""The facets (harness.target) of a deployment: each one Docker API calls on the
containers the deployment file names, every change recorded (harness.deployment.
docker_hosts.Changes) before it is made, every undo made only on the container that
was changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from harness.deployment.docker_hosts import (Changes, Containers, FileInContainer, Refused, read_file, started_at,
                                              to_undo, write_file)
from harness.deployment.ini import apply_overrides
from harness.errors import HarnessError
from harness.wait import wait_until

log = logging.getLogger(__name__)

READY_TIMEOUT = 180  # a Barbican container restarted under load takes a while to serve
STOP_GRACE = 10


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Readiness:
    """When a restarted container serves again: an API node answers on its URL (what
    the harness reaches), a worker's container runs."""

    def __init__(self, target):
        self.target = target

    def wait(self, role: str, container) -> None:
        containers: Containers = self.target.containers

        def exited() -> str | None:
            c = containers.get(role)
            return f"container {c.name} is {c.status}" if c.status in ("exited", "dead") else None

        def tail() -> str:
            return containers.get(role).logs(tail=20).decode(errors="replace")

        if role in self.target.deployment.spec.nodes:
            url = self.target.node(role).url
            sess = self.target.session()

            def serves() -> bool:
                r = sess.get(url + "/", raise_exc=False, authenticated=False, timeout=5)
                if r.status_code >= 500:
                    raise HarnessError(f"HTTP {r.status_code} on GET {url}/")
                return True

            wait_until(serves, timeout=READY_TIMEOUT, what=f"{role} ({container.name}) serving on {url}",
                       gave_up=exited, log=tail, interval=0.5)
        else:
            wait_until(lambda: containers.get(role).status == "running", timeout=READY_TIMEOUT,
                       what=f"{role} ({container.name}) running", gave_up=exited, log=tail, interval=0.5)


def _start_again(containers: Containers, role: str, c) -> None:
    """Start a stopped container, unpause a paused one, restart a running one."""
    c.reload()
    if c.status == "paused":
        containers.call(role, "unpause", c.unpause)
        c.reload()
    if c.status == "running":
        containers.call(role, "restart", lambda: c.restart(timeout=STOP_GRACE))
    else:
        containers.call(role, "start", c.start)


class DeploymentNodeControl:
    """Capability.NODE_CONTROL: docker kill / pause / unpause / stop / start of the API
    and worker containers; a restart waits until the node serves again."""

    def __init__(self, target):
        self.target = target
        self.containers: Containers = target.containers
        self.changes: Changes = target.changes
        self.ready = Readiness(target)

    def _barbican(self, role: str) -> str:
        if role not in self.target.deployment.barbican():
            raise HarnessError(f"no node or worker '{role}' in {self.target.name}; "
                               f"have: {', '.join(self.target.deployment.barbican())}")
        return role

    def _change(self, role: str, kind: str, action: str, fn) -> None:
        c = self.containers.get(self._barbican(role))
        self.changes.record(role, kind, self.containers.box(role), c.id)
        try:
            self.containers.call(role, action, lambda: fn(c))
        except Refused:
            # Nothing happened (e.g. the container was not running): nothing to undo, and
            # a heal must not start a container the harness did not stop. A call that
            # timed out stays recorded: it may have happened.
            self.changes.drop(role, kind)
            raise

    def kill(self, node: str) -> None:
        self._change(node, "stopped", "kill", lambda c: c.kill())

    def pause(self, node: str) -> None:
        self._change(node, "paused", "pause", lambda c: c.pause())

    def stop(self, node: str) -> None:
        self._change(node, "stopped", "stop", lambda c: c.stop(timeout=STOP_GRACE))

    def resume(self, node: str) -> None:
        c, _ = to_undo(self.containers, self.changes, self._barbican(node), "paused")
        if c is None:
            return
        c.reload()
        if c.status == "paused":
            self.containers.call(node, "unpause", c.unpause)
        self.changes.drop(node, "paused")

    def restart(self, node: str) -> None:
        """Bring back what the harness stopped or paused, or else restart the container
        as it runs (what an operator does after an HSM outage); wait until it serves. A
        stopped container the harness did not stop is left alone."""
        role = self._barbican(node)
        undone = False
        for kind in ("paused", "stopped"):
            c, entry = to_undo(self.containers, self.changes, role, kind)
            if entry is not None:
                undone = True
            if c is None:
                continue
            c.reload()
            if c.status == "paused":
                self.containers.call(role, "unpause", c.unpause)
            elif c.status != "running":  # a restart policy may have brought it back already
                self.containers.call(role, "start", c.start)
            self.ready.wait(role, c)
            self.changes.drop(role, kind)
        if not undone:
            c = self.containers.get(role)
            if c.status != "running":
                raise HarnessError(f"{role}: container {c.name} is {c.status} and the harness did not stop it: "
                                   "not started")
            self.containers.call(role, "restart", lambda: c.restart(timeout=STOP_GRACE))
            self.ready.wait(role, c)

    def workers(self) -> list[str]:
        return list(self.target.deployment.spec.workers)

    def kill_worker(self, worker: str) -> None:
        self.kill(worker)

    def restart_worker(self, worker: str) -> None:
        self.restart(worker)


class DeploymentConfig:
    """Capability.CONFIG_WRITE: barbican.conf edited inside the container, then the
    container restarted.

    Before the first edit of a node (`keep`, in the fault's prepare) the original file
    is saved, owner and mode included, in <state>/config-originals/<node>.conf (0600: it
    holds the KEK and the database password); the journal records its path and sha256.
    Every override is applied to that original. `restart_with(node, {})` writes it back
    byte-identical, checks the hash, restarts, and only then forgets the saved copy."""

    def __init__(self, target):
        self.target = target
        self.containers: Containers = target.containers
        self.changes: Changes = target.changes
        self.ready = Readiness(target)
        self._overrides: dict[str, dict] = {}
        self.dir = target.run_dir / "config-originals"

    def _path(self, node: str) -> str:
        if node not in self.target.deployment.barbican():
            raise HarnessError(f"no node or worker '{node}' in {self.target.name}")
        return self.target.deployment.config_path(node)

    def keep(self, node: str) -> dict[str, Any]:
        entry = self.changes.get(node, "config")
        if entry is None:
            path = self._path(node)
            c = self.containers.get(node)
            original = self.containers.call(node, f"read {path} from", lambda: read_file(c, path))
            self.dir.mkdir(mode=0o700, exist_ok=True)
            saved = self.dir / f"{node}.conf"
            fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(original.data)
                f.flush()
                os.fsync(f.fileno())
            entry = self.changes.record(node, "config", self.containers.box(node), c.id, config=path,
                                        saved=str(saved), sha256=sha256(original.data),
                                        owner=[original.uid, original.gid, original.uname, original.gname],
                                        mode=original.mode)
        return {k: entry[k] for k in ("container", "container_id", "config", "saved", "sha256")}

    def _original(self, node: str, entry: dict) -> FileInContainer:
        data = Path(entry["saved"]).read_bytes()
        if sha256(data) != entry["sha256"]:
            raise HarnessError(f"{entry['saved']}: the saved original of {node}'s {entry['config']} does not "
                               f"match its recorded sha256 {entry['sha256'][:16]}...: not written anywhere")
        uid, gid, uname, gname = entry["owner"]
        return FileInContainer(data, entry["mode"], uid, gid, uname, gname)

    def overrides(self, node: str) -> dict[str, Any]:
        return dict(self._overrides.get(node, {}))

    def restart_with(self, node: str, overrides: dict[str, Any]) -> None:
        if not overrides:
            self._restore(node)
            return
        self.keep(node)
        entry = self.changes.get(node, "config")
        original = self._original(node, entry)
        edited = apply_overrides(original.data.decode(), overrides).encode()
        c = self.containers.get(node)
        if c.id != entry["container_id"]:
            raise HarnessError(f"{node}: container {entry['container']} was recreated since its config was saved; "
                               "not edited")
        self._write(node, c, entry["config"], edited, original)
        self._overrides[node] = dict(overrides)
        self._restart(node, c)
        # An entrypoint that copies the config in at start (Kolla's COPY_ALWAYS) undoes the edit.
        now = read_file(self.containers.get(node), entry["config"]).data
        if sha256(now) != sha256(edited):
            raise HarnessError(
                f"{node}: {entry['config']} in container {entry['container']} was rewritten when the container "
                "restarted (an entrypoint that copies the config in at start, e.g. Kolla's "
                "KOLLA_CONFIG_STRATEGY=COPY_ALWAYS): a config fault cannot be made by editing it there")

    def _write(self, node: str, c, path: str, data: bytes, like: FileInContainer) -> None:
        self.containers.call(node, f"write {path} in", lambda: write_file(c, path, data, like))
        back = self.containers.call(node, f"read {path} from", lambda: read_file(c, path))
        if sha256(back.data) != sha256(data):
            raise HarnessError(f"{node}: {path} in container {c.name} reads back with another hash after the write")

    def _restart(self, node: str, c) -> None:
        _start_again(self.containers, node, c)
        self.ready.wait(node, c)

    def _restore(self, node: str) -> None:
        c, entry = to_undo(self.containers, self.changes, node, "config")
        if c is None:
            if entry is not None:
                log.warning("%s: the original %s stays saved in %s", node, entry["config"], entry["saved"])
            return
        original = self._original(node, entry)
        current = self.containers.call(node, f"read {entry['config']} from", lambda: read_file(c, entry["config"]))
        changed = sha256(current.data) != entry["sha256"]
        if changed:
            self._write(node, c, entry["config"], original.data, original)
        started = started_at(c)
        # Restart when the file was edited, or the container started with an edit since the
        # config was kept; an inject that never got to the file changes nothing here.
        if changed or (started is not None and started > dt.datetime.fromisoformat(entry["at"])):
            self._restart(node, c)
        final = read_file(self.containers.get(node), entry["config"]).data
        if sha256(final) != entry["sha256"]:
            raise HarnessError(f"{node}: {entry['config']} in container {entry['container']} does not have the "
                               f"original's sha256 after the restore; the original stays in {entry['saved']}")
        self._overrides.pop(node, None)
        self.changes.drop(node, "config")
        Path(entry["saved"]).unlink(missing_ok=True)


class DeploymentNetwork:
    """Capability.CONTAINER_NETWORK: `docker network disconnect` of a node's container
    from every network it is on (its aliases and fixed address recorded first), and
    connect again with them. Host networking has no network to cut: refused."""

    def __init__(self, target):
        self.target = target
        self.containers: Containers = target.containers
        self.changes: Changes = target.changes

    def networks(self, node: str) -> dict[str, dict]:
        c = self.containers.get(node)
        mode = c.attrs.get("HostConfig", {}).get("NetworkMode", "")
        if mode == "host" or mode.startswith("container:"):
            raise HarnessError(f"{node}: container {c.name} uses {mode} networking: there is no container "
                               "network to disconnect (a partition needs a bridge network)")
        return c.attrs.get("NetworkSettings", {}).get("Networks") or {}

    def disconnect(self, node: str) -> None:
        nets = self.networks(node)
        c = self.containers.get(node)
        record = {name: {"aliases": [a for a in (n.get("Aliases") or []) if a not in (c.id[:12], c.name)],
                         "ipv4": ((n.get("IPAMConfig") or {}).get("IPv4Address") or None)}
                  for name, n in nets.items()}
        self.changes.record(node, "disconnected", self.containers.box(node), c.id, networks=record)
        client = self.target.hosts.client(self.containers.box(node).host)
        for name in record:
            self.containers.call(node, f"disconnect {name}",
                                 lambda: client.networks.get(name).disconnect(c, force=True))

    def reconnect(self, node: str) -> None:
        c, entry = to_undo(self.containers, self.changes, node, "disconnected")
        if c is None:
            return
        client = self.target.hosts.client(self.containers.box(node).host)
        c.reload()
        on = set(c.attrs.get("NetworkSettings", {}).get("Networks") or {})
        for name, n in entry["networks"].items():
            if name in on:
                continue
            kw = {"aliases": n["aliases"] or None}
            if n["ipv4"]:
                kw["ipv4_address"] = n["ipv4"]
            self.containers.call(node, f"connect {name}", lambda: client.networks.get(name).connect(c, **kw))
        self.changes.drop(node, "disconnected")


class UrlDatabase:
    """Capability.DATABASE: the deployment file's host-reachable database URL."""

    def __init__(self, url: str):
        from sqlalchemy.engine import make_url

        self.url = make_url(url)

    def connect(self, database: str, timeout: float = 5.0):
        import pymysql

        # Barbican's database is whatever the URL names; other names are asked for as given.
        name = self.url.database if database == "barbican" and self.url.database else database
        return pymysql.connect(host=self.url.host, port=self.url.port or 3306, user=self.url.username,
                               password=self.url.password, database=name, connect_timeout=timeout,
                               read_timeout=timeout, write_timeout=timeout)


class DeploymentLogs:
    """Capability.SERVICE_LOGS: each Barbican container's log, from the Docker API (its
    output, or the log file inside it, read with `tail -c` through docker exec), copied
    as it grows into <state>/logs/<node>-app.log, where triage reads *-app.log files.
    A background thread follows from the moment the facet is first used."""

    INTERVAL = 1.0  # a docker exec per file-logged node and round: cheap, not free on 2 cores
    CHUNK = 4 << 20

    def __init__(self, target):
        self.target = target
        self.containers: Containers = target.containers
        self._dir = target.run_dir / "logs"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._since: dict[str, tuple[int, int]] = {}
        start = time.time()
        for role in target.deployment.barbican():
            self._since[role] = (int(start), int((start % 1) * 1e9))
        self._offsets: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def dir(self) -> Path:
        self._follow()
        return self._dir

    def app_logs(self) -> dict[str, Path]:
        self._follow()
        self.sync()
        return {role: self._dir / f"{role}-app.log" for role in self.target.deployment.barbican()}

    def _follow(self) -> None:
        with self._lock:
            if self._thread is None:
                self.sync()
                self._thread = threading.Thread(target=self._loop, name="deployment-logs", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - a host may be away for a while: keep following
                log.debug("following logs: %s", exc)

    def sync(self) -> None:
        for role in self.target.deployment.barbican():
            try:
                data = self._new(role)
            except HarnessError as exc:
                log.debug("%s: no log this round: %s", role, exc)
                continue
            if data:
                with open(self._dir / f"{role}-app.log", "ab") as f:
                    f.write(data)

    def _new(self, role: str) -> bytes:
        c = self.containers.get(role)
        source = self.target.deployment.log(role)
        if source == "stdout":
            return self._from_output(role, c)
        return self._from_file(role, c, source)

    def _from_output(self, role: str, c) -> bytes:
        secs, nanos = self._since[role]
        raw = self.containers.call(role, "logs of", lambda: c.logs(stdout=True, stderr=True, timestamps=True,
                                                                   since=secs + nanos / 1e9))
        out = []
        last = self._since[role]
        for line in raw.splitlines(keepends=True):
            stamp, _, text = line.partition(b" ")
            key = _stamp(stamp)
            if key is None or key <= self._since[role]:
                continue
            last = max(last, key)
            out.append(text)
        self._since[role] = last
        return b"".join(out)

    def _from_file(self, role: str, c, path: str) -> bytes:
        if c.status != "running":
            return b""
        offset = self._offsets.get(role)
        # The first look starts at the file's end: only what is logged from now on.
        script = ('size=$(wc -c < "$1" 2>/dev/null || echo 0); echo "$size"; '
                  '[ "$2" = - ] || [ "$2" -gt "$size" ] || tail -c +"$(($2 + 1))" "$1" | head -c "$3"')
        rc, (out, _) = self.containers.call(role, "read the log in", lambda: c.exec_run(
            ["sh", "-c", script, "sh", path, "-" if offset is None else str(offset), str(self.CHUNK)],
            demux=True))
        out = out or b""
        head, _, data = out.partition(b"\n")
        size = int(head.strip() or 0)
        if offset is None or size < offset:  # first look, or the file was rotated/truncated
            self._offsets[role] = size if offset is None else 0
            return b"" if offset is None else self._from_file(role, c, path)
        self._offsets[role] = offset + len(data)
        return data


def _stamp(text: bytes) -> tuple[int, int] | None:
    """Docker's RFC 3339 nanosecond timestamp as (seconds, nanoseconds)."""
    import calendar

    try:
        s = text.decode().rstrip("Z")
        head, _, frac = s.partition(".")
        secs = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return secs, int((frac + "000000000")[:9])
    except (ValueError, UnicodeDecodeError):
        return None
