"""Barbican: API nodes under uWSGI and the barbican-worker, all sharing one database,
one secret-store layout and (for pkcs11) one SoftHSM token.

Barbican reads its config only from fixed places at import time; each node gets its own
directory used as HOME, holding .barbican/barbican.conf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.ports import free_port
from harness.procs import run_command
from harness.services.base import Service

if TYPE_CHECKING:
    from harness.context import RunContext

# The plugins behind each topology backend: (secret store plugin, crypto plugin).
BACKEND_PLUGINS = {
    "simple_crypto": ("store_crypto", "simple_crypto"),
    "pkcs11": ("store_crypto", "p11_crypto"),
    "kmip": ("kmip_plugin", None),
    "vault": ("vault_plugin", None),
}


@dataclass
class StoreSection:
    name: str
    store_plugin: str
    crypto_plugin: str | None
    global_default: bool


class BarbicanConfig:
    """Renders barbican.conf for every Barbican process of the environment.

    `overrides` is how faults change one node: keys `keks` (list), `p11` (dict merged into
    [p11_crypto_plugin]), `single_store_crypto` (list: one store_crypto store on just these
    crypto plugins, as after a backend switch) and `debug` (bool).
    """

    def __init__(self, ctx, database, keystone, softhsm=None, kmip=None, rabbit=None, shim=None, links=None,
                 vault=None):
        self.ctx, self.database, self.keystone = ctx, database, keystone
        self.softhsm, self.kmip, self.rabbit, self.shim, self.vault = softhsm, kmip, rabbit, shim, vault
        # Barbican reaches Keystone, the DB, KMIP, Vault and the queue through these
        self.links = links

    def _via(self, link: str) -> int | None:
        return self.links.port(link) if self.links and link in self.links.upstreams else None

    def stores(self) -> list[StoreSection]:
        return [StoreSection(s.name, *BACKEND_PLUGINS[s.backend], s.global_default)
                for s in self.ctx.topology.stores]

    def env(self, home: Path, build=None) -> dict:
        env = self.ctx.environ(HOME=str(home))
        if self.softhsm:
            env.update(self.softhsm.env())
        if self.shim:
            env.update(self.shim.env())
        return (build or self.ctx.barbican_build).environ(env)

    def render(self, home: Path, node: str, host_href: str, overrides: dict | None = None, build=None) -> Path:
        """barbican.conf for one process; `build` (default: the environment's) decides the
        few lines that differ between releases."""
        o = overrides or {}
        build = build or self.ctx.barbican_build
        topo = self.ctx.topology
        stores = self.stores()
        crypto = [s.crypto_plugin for s in stores if s.crypto_plugin]
        multiple = topo.multiple_stores
        if "single_store_crypto" in o:
            crypto = o["single_store_crypto"]
            stores = [StoreSection("default", "store_crypto", crypto[0], True)]
            multiple = False
        p11 = None
        if self.softhsm:
            library = self.shim.library_path if self.shim else None
            p11 = {**self.softhsm.p11_options(library), **o.get("p11", {})}
        return self.ctx.render(
            "barbican.conf.j2", home / ".barbican" / "barbican.conf",
            run_id=self.ctx.run_id, node=node, host_href=host_href,
            log_file=self.ctx.logs_dir / f"{node}-app.log", debug=o.get("debug", False),
            db_url=self.database.url("barbican", port=self._via("db")),
            legacy_sql_connection=build.legacy_sql_connection,
            keystone_url=self.keystone.url_on(self._via("keystone")),
            service_password=self.ctx.secrets.barbican_service_password,
            token_cache_s=topo.barbican.token_cache_s,
            secure_rbac=topo.policy == "secure-rbac",
            multiple_stores=multiple, stores=stores, crypto_plugins=crypto,
            keks=o.get("keks", [self.ctx.secrets.kek]) if "simple_crypto" in topo.backends else [],
            p11=p11, kmip=self._kmip_options(),
            vault=self.vault.barbican_options(self._via("vault")) if self.vault else None,
            queue=topo.async_orders,
            transport_url=self.rabbit.transport_url(port=self._via("queue")) if self.rabbit else "",
        )

    def _kmip_options(self) -> dict | None:
        if not self.kmip:
            return None
        options = self.kmip.barbican_options()
        if self._via("kmip"):
            options["port"] = str(self._via("kmip"))
        return options

    def manage(self, home: Path, *args: str, timeout: float = 120, build=None) -> str:
        """barbican-manage as an operator runs it on this node (same config, same HSM env),
        from `build` (default: the environment's)."""
        build = build or self.ctx.barbican_build
        return run_command([build.bin("barbican-manage"), *args], env=self.env(home, build),
                           log_path=self.ctx.logs_dir / "barbican-manage.log", timeout=timeout,
                           what=f"barbican-manage {' '.join(args)}")


class NodeAddress:
    """Where an API node keeps its files and where the host reaches it: the same for a node
    run as a process and as a container (its port is then the published one)."""

    ctx: RunContext
    name: str

    @property
    def home(self) -> Path:
        return self.ctx.run_dir / "barbican" / self.name

    @property
    def port(self) -> int:
        return self.ctx.ports[self.name]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class BarbicanNode(NodeAddress, Service):
    """One Barbican API node."""

    def __init__(self, ctx, config: BarbicanConfig, index: int):
        super().__init__(ctx)
        self.config = config
        self.index = index
        self.name = f"barbican-{index}"
        self.overrides: dict = {}
        self.build = None  # None: the environment's build (a rolling upgrade sets one per node)
        ctx.ports.setdefault(self.name, free_port())

    def render(self) -> None:
        self.config.render(self.home, self.name, self.url, self.overrides, self.build)
        spec = self.ctx.topology.barbican
        self.ctx.render("uwsgi.ini.j2", self.home / "uwsgi.ini", port=self.port,
                        module="harness.wsgi.barbican_api:application", processes=spec.processes,
                        threads=spec.threads, procname=f"{self.name}-{self.ctx.run_id}")

    def start(self) -> None:
        build = self.build or self.ctx.barbican_build
        self.spawn([build.bin("uwsgi"), "--ini", str(self.home / "uwsgi.ini")],
                   env=self.config.env(self.home, build), cwd=self.home, ports=[self.port])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        # /healthcheck answers 200 even with a broken crypto backend: the environment
        # follows this with a real store+get per node (see Environment.verify_ready).
        self.wait_http(f"{self.url}/healthcheck", 200, timeout)

    def restart(self, overrides: dict | None = None, timeout: float = 60.0) -> None:
        """Restart with changed config (a fault) or the original one (overrides={})."""
        if overrides is not None:
            self.overrides = overrides
        self.stop()
        self.processes.clear()
        self.render()
        self.start()
        self.wait_healthy(timeout)

    def manage(self, *args: str, timeout: float = 120, build=None) -> str:
        """barbican-manage with this node's config, from `build` (default: the node's)."""
        return self.config.manage(self.home, *args, timeout=timeout, build=build or self.build)


class BarbicanWorker(Service):
    """barbican-worker: processes orders from the queue when [queue] enable = True."""

    def __init__(self, ctx, config: BarbicanConfig, index: int = 1):
        super().__init__(ctx)
        self.config = config
        self.name = f"barbican-worker-{index}"
        self.overrides: dict = {}  # the nodes' config changes that concern the worker too (KEKs)
        self.build = None

    @property
    def home(self) -> Path:
        return self.ctx.run_dir / "barbican" / self.name

    def render(self) -> None:
        self.config.render(self.home, self.name, "http://127.0.0.1", self.overrides, self.build)

    def start(self) -> None:
        build = self.build or self.ctx.barbican_build
        self.spawn([build.bin("barbican-worker")], env=self.config.env(self.home, build), cwd=self.home)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Ready = consuming its topic queue. An order cast before that is dropped by the
        broker (no queue bound yet) and stays PENDING for ever."""
        import time

        topic = "barbican.workers"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes[0].alive():
                raise self.fail("barbican-worker exited at start-up")
            if self.config.rabbit.consumers(topic) > 0:
                return
            time.sleep(0.2)
        raise self.fail(f"no consumer on queue '{topic}' within {timeout:.0f} s")
