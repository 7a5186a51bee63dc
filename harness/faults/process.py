"""Process incidents: a node killed or frozen, the worker gone."""

from __future__ import annotations

from typing import Any

from harness.faults.base import Fault, Params, node_name
from harness.target import Capability

NODES = Capability.NODE_CONTROL


class NodeParams(Params):
    node: str = "1"


class NodeKill(Fault):
    """API node killed (SIGKILL: OOM killer, host loss): its clients get connection
    refused; the other nodes keep serving. Heal restarts it."""

    name = "node_kill"
    Params = NodeParams
    capabilities = frozenset({Capability.API, NODES})

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(NODES).kill(undo["node"])

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(NODES).restart(undo["node"])


class NodePause(Fault):
    """API node frozen (SIGSTOP: a hung VM, a stop-the-world pause): connections are
    accepted by the kernel but never answered, so only client timeouts save the caller."""

    name = "node_pause"
    Params = NodeParams
    capabilities = frozenset({Capability.API, NODES})

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(NODES).pause(undo["node"])

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(NODES).resume(undo["node"])


class WorkerDown(Fault):
    """barbican-worker down (async orders): POST /orders still answers 202 but orders
    stay PENDING with no secret_ref until a worker consumes the queue again."""

    name = "worker_down"
    capabilities = frozenset({Capability.API, NODES})
    needs_worker = True

    def prepare(self, env) -> dict[str, Any]:
        return {"workers": env.facet(NODES).workers()}

    def inject(self, env, undo: dict[str, Any]) -> None:
        for worker in undo["workers"]:
            env.facet(NODES).kill_worker(worker)

    def heal(self, env, undo: dict[str, Any]) -> None:
        for worker in undo["workers"]:
            env.facet(NODES).restart_worker(worker)
