"""The network links Barbican depends on, each through the fault proxy:

  keystone  API nodes → Keystone (token validation)
  db        API nodes and worker → MariaDB
  kmip      API nodes → PyKMIP server
  vault     API nodes and worker → OpenBao (Barbican's vault_plugin)
  queue     API nodes and worker → RabbitMQ

Clients (the harness, Locust, a person) talk to Keystone and the API nodes directly, so a
Keystone outage is what production sees: tokens already validated keep working from
Barbican's cache, new ones cannot be validated."""

from __future__ import annotations

from harness.ports import free_port

HOST = "127.0.0.1"


def link_upstreams(topology) -> dict[str, str]:
    """The links a topology has: link name -> the port key of its upstream service."""
    links = {"keystone": "keystone"}
    if topology.database == "mariadb":
        links["db"] = "mariadb"
    if "kmip" in topology.backends:
        links["kmip"] = "kmip"
    if "vault" in topology.backends:
        links["vault"] = "vault"
    if topology.async_orders:
        links["queue"] = "rabbitmq_amqp"
    return links


class Links:
    def __init__(self, ctx, proxy):
        self.ctx = ctx
        self.proxy = proxy
        self.upstreams: dict[str, str] = {}

    def add(self, name: str, upstream_port_key: str) -> None:
        """Declare a link; its upstream port is read from ctx.ports when populating."""
        self.upstreams[name] = upstream_port_key
        self.ctx.ports.setdefault(f"link-{name}", free_port())

    def port(self, name: str) -> int:
        return self.ctx.ports[f"link-{name}"]

    def populate(self) -> None:
        self.proxy.client().populate([
            {"name": name, "listen": f"{HOST}:{self.port(name)}",
             "upstream": f"{HOST}:{self.ctx.ports[key]}", "enabled": True}
            for name, key in self.upstreams.items()])

    def get(self, name: str):
        """The toxiproxy-python Proxy object of a link (for faults)."""
        if name not in self.upstreams:
            from harness.errors import HarnessError

            raise HarnessError(f"this environment has no '{name}' link; links: {sorted(self.upstreams)}")
        return self.proxy.client().get_proxy(name)
