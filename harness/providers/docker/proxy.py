"""The fault proxy in a container, and the links through it (proxy listener inside the
network -> the service's container)."""

from __future__ import annotations

from harness.errors import HarnessError
from harness.ports import free_port
from harness.providers.docker.network import HOST, LINK_PORTS, LINK_UPSTREAMS, PROXY_API_PORT
from harness.providers.docker.service import ContainerService


class DockerProxy(ContainerService):
    """The fault proxy (python -m harness.proxy) in a container: its API published on
    127.0.0.1, its link listeners on the environment's network only.

    harness.proxy binds to loopback only (right on a shared machine); inside a container
    that would make it unreachable, so the container runs it through a launcher that
    also accepts 0.0.0.0 (the container's private interfaces). Once harness.proxy
    accepts a bind address itself, the launcher reduces to `python -m harness.proxy`."""

    name = "proxy"
    role = "proxy"
    port_key, inner_port = "toxiproxy", PROXY_API_PORT

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
