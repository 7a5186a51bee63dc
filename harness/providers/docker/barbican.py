"""Barbican API nodes and the worker in containers (the harness's own Barbican in the
python image, another build in that build's image)."""

from __future__ import annotations

import time

from harness.ports import free_port
from harness.providers.docker.network import BARBICAN_PORT
from harness.providers.docker.service import ContainerService, render_for_container
from harness.services.barbican import BarbicanConfig, NodeAddress


class DockerBarbicanNode(NodeAddress, ContainerService):
    role = "barbican-api"
    inner_port = BARBICAN_PORT  # published on the port named after the node (port_key)

    def __init__(self, rt, config: BarbicanConfig, index: int, softhsm=None, shim=None):
        super().__init__(rt)
        self.config = config
        self.index = index
        self.name = self.port_key = f"barbican-{index}"
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

    def repick_ports(self) -> None:
        super().repick_ports()
        self.render()  # host_href names the published port

    def render(self) -> None:
        self.config.render(self.home, self.name, self.url, self.overrides, self.build)
        spec = self.ctx.topology.barbican
        render_for_container(self.ctx, "uwsgi.ini.j2", self.home / "uwsgi.ini", port=BARBICAN_PORT,
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
