"""The environment's private network: the addresses services have inside it, the host's
way in (ports published on 127.0.0.1 only), and cutting one container off it (the
`partition` fault, harness.faults.docker_net)."""

from __future__ import annotations

from harness.errors import HarnessError

HOST = "127.0.0.1"  # where the host reaches the published ports

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


def network(rt):
    """The environment's network, or None when it does not exist (yet, or any more)."""
    import docker

    try:
        return rt.client.networks.get(rt.network_name)
    except docker.errors.NotFound:
        return None


def ensure_network(rt):
    net = network(rt)
    if net is None:
        net = rt.client.networks.create(rt.network_name, driver="bridge", labels=rt.labels,
                                        check_duplicate=True)
    return net


def _attached(rt, name: str, what: str):
    """The network, the service's container, and whether the one holds the other."""
    net = network(rt)
    c = rt.container(name)
    if net is None or c is None:
        raise HarnessError(f"{name}: no container or network to {what}")
    net.reload()
    return net, c, c.id in {x.id for x in net.containers}


def disconnect(rt, name: str) -> None:
    """Disconnect a service's container from the environment's network."""
    net, c, attached = _attached(rt, name, "partition")
    if attached:
        net.disconnect(c, force=True)


def reconnect(rt, name: str) -> None:
    """Connect it again under the same network alias."""
    net, c, attached = _attached(rt, name, "reconnect")
    if not attached:
        net.connect(c, aliases=[name])
