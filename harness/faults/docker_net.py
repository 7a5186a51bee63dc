"""Network partition of one container (Docker provider only).

The node's container is disconnected from the environment's network (`docker network
disconnect`) and connected again on heal, under the same network alias. While it is cut
off, the node reaches neither the database nor Keystone, and clients reach it neither
(its published port leads nowhere: connections are refused or reset); the other nodes
keep serving. The local provider has no network to cut: there the fault is refused.
"""

from __future__ import annotations

from typing import Any

from harness.faults.base import Fault, Params, node_name
from harness.target import Capability

NETWORK = Capability.CONTAINER_NETWORK


class PartitionParams(Params):
    node: str = "1"


class Partition(Fault):
    """Network partition: one API node is cut off from the network (a switch port, a
    security-group change, a split between racks): its clients get connection errors,
    it can reach neither database nor Keystone, the other nodes keep serving. Heal
    reconnects it; it serves again without a restart. Docker provider only."""

    name = "partition"
    Params = PartitionParams
    capabilities = frozenset({Capability.API, NETWORK})

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(NETWORK).disconnect(undo["node"])

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(NETWORK).reconnect(undo["node"])
