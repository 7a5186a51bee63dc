"""The docker provider: assembles an environment's service containers from its topology,
brings them up in the shared order (harness.providers.sequence), records and adopts
them, restarts and signals them for faults, and removes everything on `down`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from harness import images
from harness.context import RunContext
from harness.errors import HarnessError
from harness.procs import ProcessRecord
from harness.progress import Progress
from harness.providers.docker import network
from harness.providers.docker.barbican import DockerBarbicanNode, DockerBarbicanWorker
from harness.providers.docker.containers import Runtime
from harness.providers.docker.database import DatabaseInside, DockerMariaDB, DockerSqlite
from harness.providers.docker.hsm import DockerShim, DockerSoftHSM
from harness.providers.docker.keystone import DockerKeystone, KeystoneInside
from harness.providers.docker.kmip import DockerKmip, KmipInside
from harness.providers.docker.proxy import DockerLinks, DockerProxy
from harness.providers.docker.rabbitmq import DockerRabbit, RabbitInside
from harness.providers.docker.service import ContainerService
from harness.providers.docker.vault import DockerVault, VaultInside
from harness.providers.sequence import StartSequence
from harness.services.barbican import BarbicanConfig
from harness.services.links import link_upstreams


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
        network.ensure_network(self.rt)
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
        network.disconnect(self.rt, name)

    def heal_partition(self, name: str) -> None:
        network.reconnect(self.rt, name)

    def down(self, timeout: float = 10.0) -> None:
        """Remove every container, network and volume labelled with this run."""
        self.rt.remove_all()
